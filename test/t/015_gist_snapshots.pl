
# Copyright (c) byok contributors

# Disk snapshots taken while a GiST index is built.
#
# A GiST build that does not WAL-log its pages as it goes (PostgreSQL 15:
# every build; the whole index is WAL-logged at the end) stamps every page
# it writes with the constant GistBuildLSN.  With shared_buffers small
# against the index, pages are evicted, read back, changed and written again
# -- several versions of one block, all with the same page LSN.  An attacker
# who snapshots the index file repeatedly during the build XORs two versions
# of a block: with a stream cipher keyed by (LSN, relation, block) the
# keystream cancels and index keys written into free space show up in
# clear.  The keys (marker, md5 of the row number, row number) come in
# random order relative to the heap, so the build keeps going back to leaf
# pages it has already written out.
#
# The test snapshots the new index file every ~20 ms while CREATE INDEX
# USING gist runs, then for every block, XORs every pair of distinct stored
# versions and searches the XOR for the key marker.  It asserts that there
# are no hits, that enough pairs of distinct versions with the same page LSN
# were collected for the test to mean something, that the finished index
# works and that the marker is not at rest.

use strict;
use warnings;

use Digest::SHA qw(sha1);
use POSIX ':sys_wait_h';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);

use ByokTest;

my $PAGE = 8192;
my $ROWS = 60000;
my $MIN_PAIRS = 20;
my $MAX_GAP = 8;
my $MARKER = 'GISTMARKER';

my $node = new_encrypted_node(
	'gist',
	conf => join("\n",
		'shared_buffers = 1MB',
		'autovacuum = off',
		'checkpoint_timeout = 1h',
		'max_wal_size = 1GB',
		''));
$node->start;

$node->safe_psql(
	'postgres', qq{
	CREATE EXTENSION btree_gist;
	CREATE TABLE g (id int, v text);
	INSERT INTO g
	  SELECT n, '$MARKER-' || md5(n::text) || '-' || n
	  FROM generate_series(1, $ROWS) n;
	CHECKPOINT;
});

my $dbdir = $node->data_dir . '/'
  . $node->safe_psql('postgres',
	"SELECT regexp_replace(pg_relation_filepath('g'), '/[^/]*\$', '')");

sub list_files
{
	opendir(my $dh, $dbdir) or die "opendir $dbdir: $!";
	my %f = map { $_ => 1 } grep { /^\d+$/ } readdir $dh;
	closedir $dh;
	return \%f;
}

my $before = list_files();

# CREATE INDEX in the background (a forked psql).
my $build_sql =
  "SET maintenance_work_mem = '64MB'; CREATE INDEX g_v_gist ON g USING gist (v) WITH (buffering = on)";
my $build_log = $PostgreSQL::Test::Utils::tmp_check . '/gist_build.out';
my $pid = fork();
die "fork: $!" unless defined $pid;
if ($pid == 0)
{
	open(STDOUT, '>', $build_log) or die;
	open(STDERR, '>&', \*STDOUT) or die;
	exec('psql', '-X', '-v', 'ON_ERROR_STOP=1', '-h', $node->host, '-p',
		$node->port, '-d', 'postgres', '-c', $build_sql)
	  or die "exec psql: $!";
}

# versions{file}{block} = [ distinct pages, in the order first seen ]
my %versions;
my %seen;
my $snapshots = 0;
my $t0 = time;
my $status;
while (1)
{
	my $done = waitpid($pid, WNOHANG);
	if ($done == $pid)
	{
		$status = $?;
		last;
	}
	my $now = list_files();
	for my $f (grep { !$before->{$_} } sort keys %$now)
	{
		open(my $fh, '<:raw', "$dbdir/$f") or next;
		local $/;
		my $data = <$fh>;
		close $fh;
		next unless defined $data;
		for (my $blk = 0; ($blk + 1) * $PAGE <= length($data); $blk++)
		{
			my $p = substr($data, $blk * $PAGE, $PAGE);
			next if $p eq ("\0" x $PAGE);
			push @{ $versions{$f}{$blk} }, $p
			  unless $seen{$f}{$blk}{ sha1($p) }++;
		}
	}
	$snapshots++;
	die 'CREATE INDEX takes too long' if time - $t0 > 120;
	usleep(20_000);
}
my $build_secs = time - $t0;
is($status, 0, 'CREATE INDEX USING gist succeeded')
  or diag(slurp_file($build_log));
note sprintf('%d snapshots in %.1f s', $snapshots, $build_secs);

my $idxfile = $node->safe_psql('postgres', "SELECT pg_relation_filepath('g_v_gist')");
(my $idxname = $idxfile) =~ s{.*/}{};
ok(exists $versions{$idxname}, "snapshots of the index file $idxfile were taken");

# Every pair of distinct versions of a block.
my ($pairs, $same_lsn_pairs, $blocks_multi) = (0, 0, 0);
my @hits;
my $v = $versions{$idxname} // {};
for my $blk (sort { $a <=> $b } keys %$v)
{
	my @pages = @{ $v->{$blk} };
	$blocks_multi++ if @pages > 1;
	for my $i (0 .. $#pages - 1)
	{
		# every pair, up to 16 versions; beyond that (a slow machine takes
		# many snapshots) each version against the next $MAX_GAP, which keeps
		# the work linear and still compares the versions closest in time
		my $last = @pages <= 16 ? $#pages : ($i + $MAX_GAP < $#pages ? $i + $MAX_GAP : $#pages);
		for my $j ($i + 1 .. $last)
		{
			$pairs++;
			$same_lsn_pairs++
			  if substr($pages[$i], 0, 8) eq substr($pages[$j], 0, 8);
			my $x = $pages[$i] ^ $pages[$j];
			for my $pat ($MARKER, substr($MARKER, 0, 8), substr("$MARKER-", -8))
			{
				my $at = index($x, $pat);
				if ($at >= 0)
				{
					push @hits, "block $blk offset $at ($pat)";
					last;
				}
			}
		}
	}
}
note "$blocks_multi blocks with several versions, $pairs pairs, $same_lsn_pairs with the same pd_lsn";
cmp_ok($same_lsn_pairs, '>=', $MIN_PAIRS,
	"enough pairs of distinct versions of a block with the same page LSN ($same_lsn_pairs)");
is(scalar(@hits), 0, 'no XOR of two stored versions of an index block shows the key marker')
  or diag(scalar(@hits) . " hits in $pairs pairs, first: "
	  . join(', ', @hits[ 0 .. ($#hits < 4 ? $#hits : 4) ]));

# the index works
my $probe = "$MARKER-" . $node->safe_psql('postgres', "SELECT md5('12345')") . '-12345';
like(
	$node->safe_psql('postgres',
		"SET enable_seqscan = off; EXPLAIN (COSTS OFF) SELECT id FROM g WHERE v = '$probe'"),
	qr/g_v_gist/, 'the query uses the GiST index');
is( $node->safe_psql('postgres',
		"SET enable_seqscan = off; SELECT id FROM g WHERE v = '$probe'"),
	'12345', 'the index finds the row');
my $range = "v >= '$MARKER-0' AND v < '$MARKER-1'";
my $expected = $node->safe_psql('postgres',
	"SELECT count(*) FROM g WHERE substr(v, 1, 12) = '$MARKER-0'");
cmp_ok($expected, '>', 0, 'some keys fall in the range');
is( $node->safe_psql('postgres',
		"SET enable_seqscan = off; SET enable_bitmapscan = off; "
		  . "SELECT count(*) FROM g WHERE $range"),
	$expected, 'an index range scan returns the right rows');

# nothing at rest
$node->safe_psql('postgres', 'CHECKPOINT');
my $idxdata = slurp_file($node->data_dir . "/$idxfile");
ok(length($idxdata) > 0 && index($idxdata, $MARKER) < 0,
	'the marker is not in the finished index file');
is_deeply([ scan_at_rest($node->data_dir, $MARKER) ], [],
	'the marker is nowhere at rest in the data directory');

$node->stop;
unlink $build_log;
done_testing();
