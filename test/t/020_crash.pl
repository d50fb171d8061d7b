
# Copyright (c) byok contributors

# Crash safety: an encrypted cluster under a pgbench load is stopped with
# "pg_ctl stop -m immediate" (every server process gets SIGQUIT and exits at
# once, no checkpoint, no shutdown record) twenty times, at a random moment
# each time, and restarted.  After each crash recovery:
#
#   - pgbench's balance invariant holds: every committed TPC-B-like
#     transaction adds the same delta to one account, one teller, one branch
#     and one history row, so sum(abalance) = sum(tbalance) = sum(bbalance)
#     = sum(delta).  A page lost, torn, decrypted with the wrong keystream or
#     written half-encrypted breaks it (or the next check).
#   - pg_amcheck --heapallindexed finds nothing wrong in any relation of the
#     database, catalogs included: every heap page decrypts to a valid page
#     and every index entry points at a heap tuple that exists.
#   - an unlogged table, reset from its init fork by crash recovery, is
#     empty and usable.
#
# shared_buffers is small (16MB against ~30MB of pgbench data), so pages are
# evicted and written -- encrypted -- all through the run, not only at
# checkpoints; checkpoint_timeout is 30s, so some runs crash with dirty
# pages on disk from a checkpoint in progress.  At the end the cluster is
# stopped cleanly and pg_byok verify checks every page of every relation,
# and the at-rest scanner checks that a marker written into every pgbench
# account row is in no relation file.

use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);

use ByokTest;

my $CRASHES = 20;

my $node = new_encrypted_node(
	'crash',
	conf => join("\n",
		'shared_buffers = 16MB',
		'checkpoint_timeout = 30s',
		'max_wal_size = 64MB',
		'log_min_messages = info',
		''));
$node->start;

my $marker = random_marker();
note "marker: $marker";

$node->command_ok([ 'pgbench', '-i', '-s', '2', '-q', 'postgres' ],
	'pgbench -i -s 2');
$node->safe_psql(
	'postgres', qq{
	CREATE EXTENSION amcheck;
	-- every account row carries the marker, so every heap page of the
	-- biggest table holds it in plaintext
	UPDATE pgbench_accounts SET filler = '$marker';
	VACUUM ANALYZE pgbench_accounts;
	CREATE UNLOGGED TABLE unl (id int PRIMARY KEY, v text);
	CHECKPOINT;
});

my $invariant_sql = q{
	SELECT (SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts) || ' ' ||
	       (SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers)  || ' ' ||
	       (SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches) || ' ' ||
	       (SELECT coalesce(sum(delta), 0)    FROM pgbench_history)  || ' ' ||
	       (SELECT count(*) FROM pgbench_history) || ' ' ||
	       (SELECT count(*) FROM pgbench_accounts)
};

# Balance invariant and amcheck; returns the number of history rows.
sub check_cluster
{
	my ($label, $after_crash) = @_;

	my $res = $node->safe_psql('postgres', $invariant_sql);
	my ($a, $t, $b, $h, $nhist, $naccounts) = split / /, $res;
	ok( $a == $t && $t == $b && $b == $h,
		"$label: sum(abalance)=$a = sum(tbalance)=$t = sum(bbalance)=$b = sum(delta)=$h"
	);
	is($naccounts, 200000, "$label: pgbench_accounts has all its rows");

	if ($after_crash)
	{
	my ($stdout, $stderr) = ('', '');
	my $ok = $node->psql(
		'postgres',
		'SELECT count(*) FROM unl; INSERT INTO unl VALUES (1, \'x\'); '
		  . 'SELECT count(*) FROM unl; TRUNCATE unl;',
		stdout => \$stdout,
		stderr => \$stderr);
	is($ok . ':' . join(',', split /\n/, $stdout),
		'0:0,1', "$label: unlogged table reset from its init fork and usable")
	  or diag($stderr);
	}

	my ($out, $err) = ('', '');
	my $h_am = IPC::Run::run(
		[
			'pg_amcheck', '-h', $node->host, '-p', $node->port,
			'--heapallindexed', 'postgres'
		],
		'<', \undef, '>', \$out, '2>', \$err);
	my $rc = $? >> 8;
	ok($rc == 0 && $out eq '' && $err eq '',
		"$label: pg_amcheck --heapallindexed is clean")
	  or diag("pg_amcheck exit $rc\nstdout: $out\nstderr: $err");
	return $nhist;
}

check_cluster('before the first crash', 0);

my $total_hist = 0;
my $recoveries = 0;
for my $i (1 .. $CRASHES)
{
	# the unlogged table gets fresh rows each round, so the reset is real
	$node->safe_psql('postgres',
		"INSERT INTO unl SELECT i, '$marker' || i FROM generate_series(1, 2000) i"
	);

	my ($out, $err) = ('', '');
	my $bench = IPC::Run::start(
		[
			'pgbench', '-h', $node->host, '-p', $node->port,
			'-c', '4', '-j', '2', '-T', '30', '-n', 'postgres'
		],
		'<', \undef, '>', \$out, '2>', \$err);

	my $sleep = 0.5 + rand(1.5);
	usleep(int($sleep * 1_000_000));
	note sprintf('crash %d after %.2f s of pgbench', $i, $sleep);

	my $log_offset = -s $node->logfile;
	$node->stop('immediate');

	# pgbench loses its connections and errors out; its status is moot
	eval {
		$bench->kill_kill(grace => 2) if $bench->pumpable;
		$bench->finish;
	};

	$node->start;
	$recoveries++
	  if $node->log_contains(
		qr/database system was interrupted|database system was not properly shut down/,
		$log_offset);
	my $nhist = check_cluster("crash $i", 1);
	$total_hist = $nhist;
}

is($recoveries, $CRASHES, "every restart ran crash recovery ($CRASHES)");
cmp_ok($total_hist, '>', 100,
	"pgbench committed transactions across the crashes ($total_hist history rows)"
);

# No plaintext at rest after all this, and every page decrypts and checks
# out.  (WAL encryption is tested by its own suite.)
$node->safe_psql('postgres', 'CHECKPOINT');
$node->stop;
my @hits = scan_at_rest($node->data_dir, $marker,
	exclude => [ qr{(^|/)pgsql_tmp/}, qr{^pg_stat(_tmp)?/} ]);
is_deeply(\@hits, [], 'marker is in no relation file after the crashes');

my ($rc, $stdout, $stderr) = pg_byok('verify', '-D', $node->data_dir);
is($rc, 0, 'pg_byok verify passes after the crashes');
like($stdout, qr/: 0 bad files/, 'pg_byok verify reports 0 bad files');

done_testing();
