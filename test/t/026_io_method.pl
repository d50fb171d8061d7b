
# Copyright (c) byok contributors

# PostgreSQL 18 reads relation pages asynchronously; byok decrypts them in
# md.c's AIO completion callback (src/hooks.c).  For every io_method 18 has
# -- worker (the default), sync and io_uring -- an encrypted cluster with
# data checksums (18's initdb default):
#
#   * starts and says the encryption is active, or (io_uring only, where the
#     kernel or the build does not offer it) is refused at start;
#   * reads back, after a restart (so every page comes from disk through
#     the AIO read path), exactly what was written, a sequential scan, an
#     index scan and a temporary table included, with pages_decrypted > 0
#     and no checksum failure;
#   * survives an immediate stop (crash) and recovers the same data;
#   * holds the marker in no file of its data directory.
#
# On 15 and 17 there is no io_method: the test is skipped.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use ByokTest;

my ($major) = `pg_config --version` =~ /^PostgreSQL (\d+)/;
plan skip_all => 'io_method exists from PostgreSQL 18 on' if !$major || $major < 18;

my $q_sum = q{SELECT count(*) || ' ' || md5(string_agg(v, ',' ORDER BY i)) FROM t};
my $q_idx = q{SET enable_seqscan = off; SELECT v FROM t WHERE i = 4321};

for my $method (qw(worker sync io_uring))
{
	my $marker = random_marker();
	my $node = new_encrypted_node("aio_$method",
		conf => "io_method = $method\nshared_buffers = 1MB\ntemp_buffers = 800kB\n");
	$node->rotate_logfile;
	my $started = $node->start(fail_ok => 1);
	my $log = slurp_file($node->logfile);
	if (!$started)
	{
		# only io_uring may be unavailable, and then PostgreSQL says so
		is($method, 'io_uring', "$method: refused only if it is io_uring");
		like($log, qr/FATAL:.*io_uring|io_method/i, "$method: the refusal names the setting");
		next;
	}
	like($log, qr/byok: cluster encryption active .*data checksums on/,
		"$method: encryption active, data checksums on (18's default)");
	is($node->safe_psql('postgres', 'SHOW io_method'), $method, "$method: in force");

	$node->safe_psql('postgres', qq{
		CREATE EXTENSION byok;
		CREATE TABLE t (i int PRIMARY KEY, v text);
		INSERT INTO t SELECT g, '$marker ' || g || repeat('x', 200) FROM generate_series(1, 20000) g;
		CHECKPOINT;
	});
	my $expected = $node->safe_psql('postgres', $q_sum);
	my $row = $node->safe_psql('postgres', $q_idx);
	like($row, qr/^\Q$marker\E 4321x/, "$method: the index finds the row before the restart");

	# restart: 1MB of shared buffers, ~5MB of table: every scan reads from disk
	$node->restart;
	is($node->safe_psql('postgres', $q_sum), $expected, "$method: a sequential scan reads back the data");
	is($node->safe_psql('postgres', $q_idx), $row, "$method: an index scan reads back the row");
	is( $node->safe_psql(
			'postgres', q{
		CREATE TEMP TABLE tt AS SELECT i, v FROM t;
		SELECT count(*) || ' ' || md5(string_agg(v, ',' ORDER BY i)) FROM tt}),
		$expected,
		"$method: a temporary table bigger than temp_buffers reads back the data");
	my ($decrypted, $failures) = split /\|/,
	  $node->safe_psql('postgres', 'SELECT pages_decrypted, checksum_failures FROM byok_status()');
	cmp_ok($decrypted, '>', 500, "$method: pages were decrypted ($decrypted)");
	is($failures, '0', "$method: no checksum failure");

	# crash: recovery reads and writes through the same paths
	$node->safe_psql('postgres',
		"INSERT INTO t SELECT g, '$marker ' || g || repeat('x', 200) FROM generate_series(20001, 25000) g");
	$expected = $node->safe_psql('postgres', $q_sum);
	$node->stop('immediate');
	$node->start;
	is($node->safe_psql('postgres', $q_sum), $expected, "$method: the data survives a crash");
	$node->stop;

	is_deeply([ scan_at_rest($node->data_dir, $marker) ], [],
		"$method: the marker is in no file of the data directory");
}

done_testing();
