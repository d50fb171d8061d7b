
# Copyright (c) byok contributors

# A torn write of the WAL frontier page.
#
# PostgreSQL rewrites the partly filled last WAL page at every flush: commit A
# is flushed (and acknowledged) on page P, then commit B is written to the
# same page P.  If the system crashes while the second write is in progress,
# the disk may hold the new version of some 512-byte sectors of P and the old
# version of the others.  On stock PostgreSQL that is harmless for A: the
# bytes of A are identical in both versions, so whatever sector mix survives,
# A is there after crash recovery (B may be lost; it was never acknowledged
# in the torn world).  An encryption that changes every byte of a page on
# each rewrite breaks that: the first sector (with its header) of one
# version and the later sectors of the other decrypt to garbage and commit A,
# already acknowledged, disappears -- or, when the checkpoint record lies on
# the torn page, the server cannot start at all.
#
# The test takes the stored (encrypted) frontier page after commit A (v1)
# and after commit B (v2), stops the server with "pg_ctl stop -m immediate"
# and, for the tear point T = every 512-byte sector boundary 512 .. 7680
# (4096 included), stores v2[0:T] || v1[T:8192] in the segment, starts the
# server and checks that commit A is there.  Commit A starts in the second
# 4 KiB half of the page, so most tear points put A's sectors in the old
# version.  A second variant runs a CHECKPOINT just before commit A, so that
# the checkpoint record pg_control points to is on the torn page too: the
# server must start and A must be there.

use strict;
use warnings;

use File::Path qw(rmtree);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::RecursiveCopy;
use PostgreSQL::Test::Utils;
use Test::More;

use ByokTest;

my $PAGE = 8192;
my $SECTOR = 512;

my $node = new_encrypted_node(
	'torn',
	conf => join("\n",
		'wal_level = minimal',
		'max_wal_senders = 0',
		'fsync = on',
		'autovacuum = off',
		'checkpoint_timeout = 1h',
		'max_wal_size = 1GB',
		'log_min_messages = info',
		''));
$node->start;

is($node->safe_psql('postgres', 'SHOW wal_segment_size'), '16MB',
	'16MB WAL segments (the segment file name computation below assumes it)');
my $SEGSIZE = 16 * 1024 * 1024;

sub lsn_num
{
	my ($lsn) = @_;
	my ($hi, $lo) = split m{/}, $lsn;
	return hex($hi) * 2**32 + hex($lo);
}

sub insert_lsn
{
	return lsn_num($node->safe_psql('postgres', 'SELECT pg_current_wal_insert_lsn()'));
}

sub flush_lsn
{
	return lsn_num($node->safe_psql('postgres', 'SELECT pg_current_wal_flush_lsn()'));
}

# Segment file and offset in it of the WAL page starting at LSN $pagestart.
sub page_location
{
	my ($pagestart) = @_;
	my $tli = $node->safe_psql('postgres', 'SELECT timeline_id FROM pg_control_checkpoint()');
	my $segno = int($pagestart / $SEGSIZE);
	my $name = sprintf('%08X%08X%08X', $tli, int($segno / 256), $segno % 256);
	return ($node->data_dir . "/pg_wal/$name", $pagestart % $SEGSIZE);
}

sub read_page
{
	my ($file, $off) = @_;
	open(my $fh, '<:raw', $file) or die "open $file: $!";
	sysseek($fh, $off, 0) or die "seek $file: $!";
	my $n = sysread($fh, my $buf, $PAGE);
	die "short read of $file at $off" unless defined $n && $n == $PAGE;
	close $fh;
	return $buf;
}

sub write_page
{
	my ($file, $off, $buf) = @_;
	open(my $fh, '+<:raw', $file) or die "open $file: $!";
	sysseek($fh, $off, 0) or die "seek $file: $!";
	my $n = syswrite($fh, $buf);
	die "short write of $file at $off" unless defined $n && $n == $PAGE;
	close $fh;
	return;
}

# Emit WAL (non-transactional logical messages, not flushed) until the
# insert point lies at page offset [$lo, $hi].
sub pad_to
{
	my ($lo, $hi) = @_;
	for (1 .. 500)
	{
		my $off = insert_lsn() % $PAGE;
		return if $off >= $lo && $off <= $hi;
		my $need = ($lo + 64 - $off) % $PAGE;
		my $payload = $need >= 400 ? $need - 250 : 1;
		$node->safe_psql('postgres',
			"SELECT pg_logical_emit_message(false, 'pad', repeat('p', $payload))");
	}
	die "could not pad WAL to page offset $lo..$hi";
}

# One variant: returns after all tear points were checked.
sub run_variant
{
	my ($label, $with_checkpoint) = @_;
	my $table = $with_checkpoint ? 'tc' : 'tn';

	$node->safe_psql('postgres',
		"CREATE TABLE $table (id int, v text);"
		  . "INSERT INTO $table SELECT g, 'before ' || g FROM generate_series(1, 3) g;"
		  . 'CHECKPOINT;'
		  # touch the heap page again after the checkpoint, so that commit A
		  # and B carry no full-page image (in the checkpoint variant A does:
		  # a small one, the page holds 4 short rows)
		  . "INSERT INTO $table VALUES (4, 'before 4');");

	my ($file, $off, $v1, $v2, $page, $a_start, $ckpt);
	my $ok = 0;
	for my $attempt (1 .. 5)
	{
		# Start the interesting records a little after the middle of a page.
		pad_to(4096 + 64, 4096 + 600);
		if ($with_checkpoint)
		{
			$node->safe_psql('postgres', 'CHECKPOINT');
			$ckpt = lsn_num($node->safe_psql('postgres',
				'SELECT checkpoint_lsn FROM pg_control_checkpoint()'));
		}
		$a_start = insert_lsn();
		$node->safe_psql('postgres', "INSERT INTO $table VALUES (1001, 'commit A $label')");
		my $flush_a = flush_lsn();
		$page = int(($flush_a - 1) / $PAGE) * $PAGE;
		($file, $off) = page_location($page);
		$v1 = read_page($file, $off);

		$node->safe_psql('postgres', "INSERT INTO $table VALUES (1002, 'commit B $label')");
		my $flush_b = flush_lsn();
		$v2 = read_page($file, $off);

		my $first = $with_checkpoint ? $ckpt : $a_start;
		if (   int($first / $PAGE) * $PAGE == $page
			&& $first % $PAGE >= 4096
			&& int(($flush_b - 1) / $PAGE) * $PAGE == $page)
		{
			note sprintf('%s: attempt %d: page %X, %scommit A at page offset %d, '
				  . 'A flushed to %d, B flushed to %d', $label, $attempt, $page,
				$with_checkpoint ? sprintf('checkpoint record at %d, ', $ckpt % $PAGE) : '',
				$a_start % $PAGE, $flush_a % $PAGE || $PAGE, $flush_b % $PAGE || $PAGE);
			$ok = 1;
			last;
		}
		note "$label: attempt $attempt did not put A and B on one page past its middle; again";
	}
	ok($ok, "$label: the records of the test are on one WAL page, in its second half")
	  or return;
	isnt($v1, $v2, "$label: the stored frontier page changed when commit B was written");

	$node->stop('immediate');
	my $saved = $node->backup_dir . "/saved_$table";
	rmtree($saved);
	PostgreSQL::Test::RecursiveCopy::copypath($node->data_dir, $saved);
	# The tear is already on disk: the recoveries below need no fsync (which
	# only guards against an operating system crash), and without it they
	# are much faster (no fsync of the whole data directory at each start).
	PostgreSQL::Test::Utils::append_to_file("$saved/postgresql.conf", "fsync = off\n");

	my @tears = (4096, grep { $_ != 4096 } map { $_ * $SECTOR } 1 .. ($PAGE / $SECTOR - 1));
	my @lost;
	for my $t (@tears)
	{
		rmtree($node->data_dir);
		PostgreSQL::Test::RecursiveCopy::copypath($saved, $node->data_dir);
		chmod(0700, $node->data_dir);
		write_page($file, $off, substr($v2, 0, $t) . substr($v1, $t));

		my $log_off = -s $node->logfile;
		my $started = $node->start(fail_ok => 1);
		my $log = slurp_file($node->logfile, $log_off);
		if (!$started)
		{
			my ($why) = $log =~ /^.*(PANIC|FATAL):\s*(.*)$/m ? ("$1: $2") : ('(no PANIC/FATAL line)');
			ok(0, "$label, torn at $t: the server starts") or diag($why);
			push @lost, "$t (no start)";
			next;
		}
		unlike($log, qr/PANIC/, "$label, torn at $t: no PANIC in the server log");
		my $cnt = $node->safe_psql('postgres', "SELECT count(*) FROM $table WHERE id = 1001");
		is($cnt, '1', "$label, torn at $t: acknowledged commit A survived crash recovery")
		  or push @lost, "$t (A lost)";
		is($node->safe_psql('postgres', "SELECT count(*) FROM $table WHERE id <= 4"), '4',
			"$label, torn at $t: the earlier rows are there");
		$node->stop('immediate');
	}
	diag("$label: tear points that failed: @lost") if @lost;

	# leave the node as it was before the tear, recovered, for the next variant
	rmtree($node->data_dir);
	PostgreSQL::Test::RecursiveCopy::copypath($saved, $node->data_dir);
	chmod(0700, $node->data_dir);
	rmtree($saved);
	$node->append_conf('postgresql.conf', "fsync = on\n");
	$node->start;
	is($node->safe_psql('postgres', "SELECT count(*) FROM $table WHERE id IN (1001, 1002)"),
		'2', "$label: untorn, both commits are recovered");
	return;
}

run_variant('no checkpoint', 0);
run_variant('checkpoint on the torn page', 1);

$node->stop;
done_testing();
