
# Copyright (c) byok contributors

# pg_byok enable is crash-safe and resumable (DESIGN.md section 1): it is
# killed with SIGKILL at many points while it encrypts a stock cluster
# holding ~240 MB, then run to completion.  The result must verify clean
# (pg_byok verify), start with byok, and hold exactly the data it held
# before (row counts and md5 of the tables, pg_amcheck), with no *.byok.tmp
# file, no journal and nothing but the keyring left in byok/.
#
# Kill points:
#   - deterministic, with strace's syscall fault injection (skipped when
#     strace is not installed): at the write of a new root key file; at the
#     first rename of an encrypted temp file (journal written, no rename
#     done: a resume must roll the journaled temp files forward); in the
#     middle of that roll-forward;
#   - random: when the temp file of one of the big tables has reached a
#     random fraction of its size, after a random 2-220 ms, and as soon as
#     the journal names a big table.
#
# While enable is interrupted, the cluster is "enabling": pg_byok status
# says so, pg_byok verify refuses, and a server with byok refuses to start.
#
# Also: enable on an already encrypted cluster is a no-op that changes no
# file, and enable refuses a running server and a cluster that was not shut
# down cleanly, without writing a keyring.

use strict;
use warnings;

use Digest::SHA;
use File::Find;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);

use ByokTest;

my $MIN_KILLS_ENABLING = 5;

# Every regular file below $dir: { relative path => [sha256, mtime, size] }.
sub tree_state
{
	my ($dir) = @_;
	my %state;
	find(
		{
			no_chdir => 1,
			wanted   => sub {
				return unless -f $File::Find::name;
				(my $rel = $File::Find::name) =~ s{^\Q$dir\E/}{};
				my @st  = stat($File::Find::name);
				my $sha = Digest::SHA->new(256);
				$sha->addfile($File::Find::name, 'b');
				$state{$rel} = [ $sha->hexdigest, $st[9], $st[7] ];
			}
		},
		$dir);
	return \%state;
}

# Files below $dir whose path matches $re (relative paths, sorted).
sub files_matching
{
	my ($dir, $re) = @_;
	my @found;
	return () unless -d $dir;
	find(
		{
			no_chdir => 1,
			wanted   => sub {
				return
				  unless -f $File::Find::name && $File::Find::name =~ $re;
				(my $rel = $File::Find::name) =~ s{^\Q$dir\E/}{};
				push @found, $rel;
			}
		},
		$dir);
	return sort @found;
}

# Paths named by "commit PATH" lines of the enable journal.
sub journaled
{
	my ($pgdata) = @_;
	my $j = "$pgdata/byok/enable.journal";
	return () unless -e $j;
	return map { /^commit (.*)$/ ? ($1) : () } split /\n/, slurp_file($j);
}

my $node    = new_stock_node('resume', conf => "autovacuum = off\n");
my $pgdata  = $node->data_dir;
my $rootkey = root_key_path('resume');

###########################################################################
# Refusals: running server, not cleanly shut down
###########################################################################

$node->start;

my ($rc, $out, $err) =
  pg_byok('enable', '-D', $pgdata, '--root-key-file', $rootkey);
is($rc, 1, 'enable refuses a running server');
like(
	$err,
	qr/the server is running, or postmaster\.pid was left behind/,
	'enable says the server is running');
ok(!-e "$pgdata/byok/keyring", 'no keyring written for a running server');

# ~240 MB: four 50 MB tables, an index, and 150 small tables so that enable
# works through several batches (64 files each).
$node->safe_psql(
	'postgres', q{
	CREATE TABLE big1 AS SELECT i AS id, md5(i::text) AS h, repeat('x', 100) AS pad
	  FROM generate_series(1, 300000) i;
	CREATE TABLE big2 AS SELECT * FROM big1;
	CREATE TABLE big3 AS SELECT * FROM big1;
	CREATE TABLE big4 AS SELECT id, md5(h) AS h, repeat('y', 100) AS pad FROM big1;
	CREATE INDEX big1_h ON big1 (h);
	DO $$ BEGIN
	  FOR i IN 1 .. 150 LOOP
	    EXECUTE format('CREATE TABLE small%s AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, %s) g', i, i * 10);
	  END LOOP;
	END $$;
	VACUUM;
	CHECKPOINT;
});

my $digest_sql = join(
	" || ' ' || ",
	map {
		"(SELECT count(*) || ':' || md5(string_agg(md5(t::text), '' ORDER BY id)) FROM $_ t)"
	} qw(big1 big2 big3 big4 small1 small75 small150));
my $before  = $node->safe_psql('postgres', "SELECT $digest_sql");
my %relpath = map {
	$_ => $node->safe_psql('postgres', "SELECT pg_relation_filepath('$_')")
} qw(big1 big2 big3 big4);
note 'database size: '
  . $node->safe_psql('postgres',
	'SELECT pg_size_pretty(pg_database_size(current_database()))');

$node->stop('immediate');
($rc, $out, $err) =
  pg_byok('enable', '-D', $pgdata, '--root-key-file', $rootkey);
is($rc, 1, 'enable refuses a cluster that was not shut down cleanly');
like(
	$err,
	qr/cluster must be shut down cleanly to be encrypted/,
	'enable says the cluster must be shut down cleanly');
like($err, qr/cluster state is "in production"/,
	'enable reports the pg_control state');
ok(!-e "$pgdata/byok/keyring", 'no keyring written for an unclean cluster');

# recover, then shut down cleanly
$node->start;
is($node->safe_psql('postgres', "SELECT $digest_sql"),
	$before, 'data intact after crash recovery');
$node->stop;

###########################################################################
# Kill enable again and again
###########################################################################

my $kills          = 0;
my $kills_enabling = 0;
my %states;
my @kill_points;
my $checked_refusals = 0;
my @enable_cmd =
  ('pg_byok', 'enable', '-P', '-D', $pgdata, '--root-key-file', $rootkey);

# The state after a kill; checks the refusals the first time it is
# "enabling".
sub after_kill
{
	my ($what, $status, $eout, $eerr) = @_;

	$kills++;
	my $killed = ($status & 127) == 9 || ($status >> 8) == 128 + 9;
	my ($src, $sout, $serr) = pg_byok('status', '-D', $pgdata);
	my $state =
	    $sout =~ /^keyring state:\s+(\S+)/m ? $1
	  : $sout =~ /^encryption:\s+off/m      ? 'no keyring'
	  :                                       "status exit $src";
	$states{$state}++;
	my @tmp = files_matching($pgdata, qr/\.byok\.tmp$/);
	my ($progress) = ($eerr =~ /.*\r([^\r]*MB[^\r]*)/s);
	my @j = journaled($pgdata);
	note sprintf(
		'kill %d %s: %s, state %s, %d temp files, %d journaled, progress %s',
		$kills, $what,
		$killed ? 'killed by SIGKILL' : "not killed (status $status)",
		$state, scalar(@tmp), scalar(@j), $progress // 'none');
	push @kill_points, $what;
	diag("pg_byok enable was not killed ($what):\n$eout$eerr")
	  unless $killed;
	$kills_enabling++ if $killed && $state eq 'enabling';

	if ($state eq 'enabling' && !$checked_refusals)
	{
		$checked_refusals = 1;
		like(
			$sout,
			qr/^encryption:\s+incomplete \(pg_byok enable was interrupted\)/m,
			'status: encryption incomplete after the kill');

		my ($vrc, $vout, $verr) = pg_byok('verify', '-D', $pgdata);
		is($vrc, 1, 'verify refuses an interrupted enable');
		like(
			$verr,
			qr/is not finished \(keyring state "enabling"\); run pg_byok enable/,
			'verify says encryption is not finished');

		# a server with byok must refuse this half-encrypted cluster
		my $conf = slurp_file("$pgdata/postgresql.conf");
		$node->append_conf('postgresql.conf',
			"shared_preload_libraries = 'byok'\nbyok.root_key_file = '$rootkey'\n"
		);
		my $log_offset = -s $node->logfile;
		ok(!$node->start(fail_ok => 1),
			'the server with byok refuses to start while enable is unfinished');
		ok( $node->log_contains(
				qr/FATAL:\s+encryption of this cluster is not finished/,
				$log_offset),
			'the server says encryption is not finished');
		open(my $fh, '>', "$pgdata/postgresql.conf") or die $!;
		print $fh $conf;
		close $fh;
	}
	return ($killed, $state, \@tmp);
}

# strace must read pg_byok's syscall arguments (-P), which a non-dumpable
# process refuses; the test build of pg_byok stays dumpable when asked.
$ENV{BYOK_TEST_DUMPABLE} = 1;

# Run enable under strace, SIGKILLed on entry to the given system call.
sub strace_kill
{
	my ($what, @strace_args) = @_;
	my ($eout, $eerr) = ('', '');
	IPC::Run::run(
		[ 'strace', '-f', '-qq', '-o', '/dev/null', @strace_args, @enable_cmd ],
		'<', \undef, '>', \$eout, '2>', \$eerr);
	return ($eout, $eerr, after_kill($what, $?, $eout, $eerr));
}

# Relation files as pg_byok enable orders them (by path; it encrypts them in
# that order, in batches).
sub relation_files
{
	my @rel = files_matching($pgdata,
		qr{/(global|base/\d+)/\d+(_(fsm|vm|init))?(\.\d+)?$});
	return sort @rel;
}

my $have_strace = system('strace -o /dev/null true >/dev/null 2>&1') == 0;
SKIP:
{
	skip 'strace (with ptrace permission) is not available', 8
	  unless $have_strace;

	# 1. SIGKILL at the first write(2) of a new enable: the one that writes
	# the new root key file.  No keyring yet, nothing encrypted; whatever
	# is left of the root key file must not stop a rerun.
	strace_kill('at the first write (of the new root key file)',
		'-e', 'trace=write', '-e', 'inject=write:signal=KILL:when=1');
	note 'root key file after the kill: '
	  . (-e $rootkey ? (-s $rootkey) . ' bytes' : 'absent');
	ok(!-e "$pgdata/byok/keyring", 'no keyring yet');

	# 2. SIGKILL on the rename of the first encrypted temp file over its
	# relation file: the journal names a whole batch, whose temp files are
	# all still there.
	my @first = relation_files();
	my @k2 = (
		'-P', "$pgdata/$first[0].byok.tmp",
		'-e', 'trace=rename', '-e', 'inject=rename:signal=KILL:when=1');
	my ($eout, $eerr, $killed, $state, $tmp) = strace_kill(
		"at the rename of $first[0].byok.tmp, the first temp file", @k2);
	if (!is( $eerr =~ /root key file "[^"]*" is invalid/ ? 'refused' : 'resumed',
			'resumed',
			'enable resumes after a kill while it created the root key file'))
	{
		diag("enable after the kill:\n$eout$eerr");
		# work around (nothing is encrypted yet): remove the root key file
		unlink $rootkey or die "unlink $rootkey: $!";
		($eout, $eerr, $killed, $state, $tmp) = strace_kill(
			"at the rename of $first[0].byok.tmp, the first temp file (after removing the left-over root key file)",
			@k2);
	}
	is($state, 'enabling', 'state is enabling');
	my @j = sort(journaled($pgdata));
	cmp_ok(scalar(@j), '>', 2, 'the journal names a batch');
	is_deeply(
		[ map { s/\.byok\.tmp$//r } @$tmp ],
		\@j,
		'every journaled file, and only those, still has its temp file');

	# 3. SIGKILL in the middle of the roll-forward of that batch: a resume
	# renames the journaled temp files first, in order; kill it at the
	# third.
	my $ntmp = @$tmp;
	($eout, $eerr, $killed, $state, $tmp) = strace_kill(
		"at the rename of $j[2].byok.tmp, the third of the roll-forward",
		'-P', "$pgdata/$j[2].byok.tmp",
		'-e', 'trace=rename', '-e', 'inject=rename:signal=KILL:when=1');
	is($state, 'enabling', 'state is enabling');
	is(scalar(@$tmp), $ntmp - 2,
		'the roll-forward was interrupted after two renames');
	my %jset = map { $_ => 1 } journaled($pgdata);
	is_deeply([ grep { !$jset{ s/\.byok\.tmp$//r } } @$tmp ],
		[], 'every remaining temp file is journaled');
}

# Random kill points, in this order: when the temp file of the first big
# table not yet encrypted has reached a random fraction of its size (deep inside a
# batch, with finished temp files not yet journaled), by time (reading the
# keyring, the first batches), and last as soon as the journal names the
# last big table not yet journaled.
my @plan = (
	[ 'tmp',  0.05 + rand(0.25) ],
	[ 'time', 2 + int(rand(10)) ],
	[ 'time', 20 + int(rand(200)) ],
	[ 'tmp',  0.30 + rand(0.30) ],
	[ 'tmp',  0.60 + rand(0.35) ],
	[ 'tmp',  0.10 + rand(0.80) ],
	[ 'journal' ],);

for my $p (@plan)
{
	my %done = map { $_ => 1 } journaled($pgdata);
	my @todo = grep { !$done{$_} } sort values %relpath;
	if ($p->[0] ne 'time' && !@todo)
	{
		note 'every big table is encrypted already; kill point skipped';
		next;
	}
	# the first big table still to do: killing inside it leaves the
	# others for the next kill points
	my $rel =
	    $p->[0] eq 'tmp'     ? $todo[0]
	  : $p->[0] eq 'journal' ? $todo[-1]
	  :                        undef;

	my ($eout, $eerr) = ('', '');
	my $t0 = time;
	my $h =
	  IPC::Run::start(\@enable_cmd, '<', \undef, '>', \$eout, '2>', \$eerr);
	my $what;
	if ($p->[0] eq 'time')
	{
		usleep($p->[1] * 1000);
		$what = "after $p->[1] ms";
	}
	else
	{
		my $file = "$pgdata/$rel";
		my $target =
		  $p->[0] eq 'tmp' ? int($p->[1] * (-s $file) / 8192) * 8192 : 0;
		my $deadline = $t0 + 30;
		# a temp file left by the previous kill is removed by the resume
		# before this run writes its own: wait for that
		my $fresh = 0;
		while (time < $deadline)
		{
			if ($p->[0] eq 'tmp')
			{
				my $sz = -s "$file.byok.tmp";
				$fresh = 1 if !defined $sz || $sz < $target;
				last if $fresh && defined $sz && $sz >= $target;
			}
			else
			{
				last if grep { $_ eq $rel } journaled($pgdata);
			}
			$h->pump_nb;
			last unless $h->pumpable;
			usleep(200);
		}
		$what =
		  $p->[0] eq 'tmp'
		  ? sprintf('when %s.byok.tmp reached %d of %d bytes',
			$rel, $target, -s $file)
		  : "when the journal named $rel";
		$what .= sprintf(' (%.0f ms)', (time - $t0) * 1000);
	}
	eval { $h->signal('KILL') };
	eval { $h->finish };
	my ($killed) = after_kill($what, $h->full_result(0), $eout, $eerr);
	last unless $killed;
}

cmp_ok($kills_enabling, '>=', $MIN_KILLS_ENABLING,
	"enable was killed mid-run (state enabling) at least $MIN_KILLS_ENABLING times ($kills kills: "
	  . join(', ', map { "$_=$states{$_}" } sort keys %states) . ')');
cmp_ok($kills_enabling, '>=', $kills * 0.6,
	'most kills left the cluster in state enabling');
my %distinct = map { $_ => 1 } @kill_points;
is(scalar(keys %distinct), scalar(@kill_points),
	'every kill at a different point: ' . join('; ', @kill_points));

# Now let it finish.
($rc, $out, $err) =
  pg_byok('enable', '-D', $pgdata, '--root-key-file', $rootkey);
is($rc, 0, 'enable completes after the kills');
like($out, qr/resumed/,      'enable says it resumed');
like($out, qr/is encrypted/, 'enable says the cluster is encrypted');

is_deeply([ files_matching($pgdata, qr/\.byok\.tmp$/) ],
	[], 'no *.byok.tmp files remain');
ok(!-e "$pgdata/byok/enable.journal", 'the enable journal is gone');
is_deeply([ files_matching("$pgdata/byok", qr/./) ],
	['keyring'], 'byok/ holds only the keyring');

($rc, $out, $err) = pg_byok('status', '-D', $pgdata);
is($rc, 0, 'status succeeds');
like($out, qr/^encryption:\s+on$/m,         'status: encryption on');
like($out, qr/^keyring state:\s+enabled$/m, 'status: keyring state enabled');

($rc, $out, $err) = pg_byok('verify', '-D', $pgdata);
is($rc, 0, 'verify passes after the interrupted and resumed enable');
like($out, qr/: 0 bad files/, 'verify: 0 bad files');

###########################################################################
# A second enable is a no-op
###########################################################################

my $state_before = tree_state($pgdata);
($rc, $out, $err) =
  pg_byok('enable', '-D', $pgdata, '--root-key-file', $rootkey);
is($rc, 0, 'enable on an encrypted cluster succeeds');
like(
	$out,
	qr/cluster "\Q$pgdata\E" is already encrypted/,
	'enable says the cluster is already encrypted');
is_deeply(tree_state($pgdata), $state_before,
	'enable on an encrypted cluster changed no file (content and mtime)');

###########################################################################
# The encrypted cluster starts with byok and holds the same data
###########################################################################

$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'byok'\nbyok.root_key_file = '$rootkey'\n");
my $log_offset = -s $node->logfile;
$node->start;
ok($node->log_contains(qr/byok: cluster encryption active/, $log_offset),
	'byok is active');
is($node->safe_psql('postgres', "SELECT $digest_sql"),
	$before, 'counts and md5 of the tables match the plaintext cluster');
is( $node->safe_psql(
		'postgres', q{SELECT count(*) FROM pg_class WHERE relname LIKE 'small%'}),
	'150',
	'all small tables are there');
$node->safe_psql('postgres', 'CREATE EXTENSION amcheck');
my ($amout, $amerr) = ('', '');
IPC::Run::run(
	[
		'pg_amcheck', '-h', $node->host, '-p', $node->port,
		'--heapallindexed', 'postgres'
	],
	'<', \undef, '>', \$amout, '2>', \$amerr);
is($? >> 8, 0, 'pg_amcheck --heapallindexed is clean')
  or diag("$amout\n$amerr");
$node->stop;

done_testing();
