# Encrypted WAL: at rest (data directory, archive, base backups), streaming
# standbys built with pg_basebackup -X stream and -X fetch, promotion and a
# crash after it, pg_resetwal, pg_byok waldump.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ByokTest;

my $marker = random_marker();

my $primary = new_encrypted_node('primary', allows_streaming => 1, has_archiving => 1);
$primary->append_conf('postgresql.conf', "wal_keep_size = 256MB\n");
$primary->start;

# a workload that leaves the marker in every kind of WAL record
$primary->safe_psql('postgres', qq{
	CREATE EXTENSION byok;
	CREATE TABLE t (id int PRIMARY KEY, v text, big text);
	ALTER TABLE t ALTER COLUMN big SET STORAGE EXTERNAL;
	CREATE INDEX t_v ON t (v);
	INSERT INTO t SELECT g, '$marker ' || g, repeat('$marker', 300) FROM generate_series(1, 2000) g;
	UPDATE t SET v = v || ' updated' WHERE id % 10 = 0;
	CREATE UNLOGGED TABLE u AS SELECT g AS id, '$marker' AS v FROM generate_series(1, 100) g;
	COMMENT ON TABLE t IS 'comment $marker';
	CREATE SEQUENCE "seq_$marker";
	CHECKPOINT;
	INSERT INTO t SELECT g, '$marker after checkpoint ' || g, NULL FROM generate_series(2001, 3000) g;
});
my $count = sub { $_[0]->safe_psql('postgres', 'SELECT count(*) FROM t') };
is($count->($primary), '3000', 'workload written');

# backups while the primary is busy: -X stream (plaintext WAL in the backup,
# encrypted when the standby starts) and -X fetch (ciphertext from the server)
$primary->backup('bk_stream');
$primary->backup('bk_fetch', backup_options => [ '-X', 'fetch' ]);

# one record first: right after a backup the insert position can sit exactly
# on a segment boundary, where pg_switch_wal() does nothing and 17's
# pg_walfile_name() names the next, still empty, segment
$primary->safe_psql('postgres', 'SELECT txid_current()');
my $last_seg = $primary->safe_psql('postgres', 'SELECT pg_walfile_name(pg_current_wal_lsn())');
$primary->safe_psql('postgres', 'SELECT pg_switch_wal(); CHECKPOINT;');
$primary->poll_query_until('postgres',
	"SELECT last_archived_wal >= '$last_seg' FROM pg_stat_archiver")
  or die 'archiving did not happen';
my @archived = glob($primary->archive_dir . '/0*');
ok(@archived > 0, 'segments archived (' . scalar(@archived) . ')');

is_deeply([ scan_at_rest($primary->data_dir, $marker) ], [],
	'primary: marker in no file under the data directory, pg_wal included');
is_deeply([ scan_at_rest($primary->archive_dir, $marker) ], [],
	'archive: marker in no archived segment');
is_deeply([ scan_at_rest($primary->backup_dir . '/bk_fetch', $marker) ], [],
	'base backup with -X fetch: ciphertext WAL, no marker anywhere');

# -X stream receives the WAL over the replication protocol (plaintext, as in
# every peer): the backup's pg_wal holds plaintext until a server starts on it
my @stream_hits = scan_at_rest($primary->backup_dir . '/bk_stream', $marker);
ok(!grep({ !m{^pg_wal/} } @stream_hits),
	'base backup with -X stream: relation files are ciphertext (only pg_wal may hold plaintext)');

# control: on a stock cluster the same kind of write is readable in pg_wal
{
	my $stock = new_stock_node('stock');
	$stock->start;
	$stock->safe_psql('postgres', "CREATE TABLE t AS SELECT '$marker' AS v FROM generate_series(1, 10)");
	$stock->stop;
	ok(scalar(grep({ m{^pg_wal/} } scan_at_rest($stock->data_dir, $marker))) > 0,
		'control: a stock cluster\'s pg_wal shows the marker to the scanner');
}

# --- standbys ----------------------------------------------------------------------
my $s_stream = PostgreSQL::Test::Cluster->new('standby_stream');
$s_stream->init_from_backup($primary, 'bk_stream', has_streaming => 1);
my $s_fetch = PostgreSQL::Test::Cluster->new('standby_fetch');
$s_fetch->init_from_backup($primary, 'bk_fetch', has_streaming => 1);
my $offset = -s $s_stream->logfile;
$s_stream->start;
$s_fetch->start;
like(slurp_file($s_stream->logfile, $offset),
	qr/byok: encrypted \d+ plaintext WAL pages in \d+ segments/,
	'-X stream standby: the plaintext segments are encrypted at start');

$primary->safe_psql('postgres',
	"INSERT INTO t SELECT g, '$marker streamed ' || g, NULL FROM generate_series(3001, 4000) g");
$primary->wait_for_catchup($s_stream);
$primary->wait_for_catchup($s_fetch);
is($count->($s_stream), '4000', '-X stream standby caught up');
is($count->($s_fetch), '4000', '-X fetch standby caught up');
is($s_fetch->safe_psql('postgres', "SELECT count(*) FROM t WHERE big LIKE '%$marker%'"),
	'2000', 'standby reads TOAST replayed from encrypted WAL');

for my $s ($s_stream, $s_fetch)
{
	$s->safe_psql('postgres', 'CHECKPOINT');
	is_deeply([ scan_at_rest($s->data_dir, $marker) ], [],
		$s->name . ': marker in no file under its data directory, pg_wal included');
}

# --- promotion, writes, crash ---------------------------------------------------------
$s_stream->promote;
$s_stream->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()') or die;
$s_stream->safe_psql('postgres',
	"INSERT INTO t SELECT g, '$marker promoted ' || g, NULL FROM generate_series(4001, 4500) g");
is($s_stream->safe_psql('postgres', 'SELECT timeline_id FROM pg_control_checkpoint()') ne '1' ||
	$s_stream->safe_psql('postgres', "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)") eq '00000002',
	1, 'promoted to a new timeline');
$s_stream->stop('immediate');
$s_stream->start;
is($count->($s_stream), '4500', 'promoted standby: survives an immediate stop, writes kept');
$s_stream->safe_psql('postgres', 'CHECKPOINT');
is_deeply([ scan_at_rest($s_stream->data_dir, $marker) ], [],
	'promoted standby: no marker at rest');
$s_stream->stop;

my ($rc, $out, $err) = pg_byok('verify', '-D', $s_stream->data_dir);
is($rc, 0, 'promoted standby: pg_byok verify (pages and WAL)') or diag("$out\n$err");
like($out, qr/verified \d+ WAL segments, [1-9]\d* WAL pages/, 'verify looked at WAL pages');

# --- pg_byok waldump -------------------------------------------------------------------
my @segs = sort glob($s_stream->data_dir . '/pg_wal/0000000[0-9]*');
my ($seg) = grep { m{/00000002[0-9A-F]{16}$} } @segs;
$seg //= $segs[-1];
(my $segname = $seg) =~ s{.*/}{};
($rc, $out, $err) = pg_byok('waldump', '-D', $s_stream->data_dir, '--', $segname);
like($out, qr/rmgr: Heap .*desc: INSERT/, "pg_byok waldump shows the records of $segname");
my ($wout, $werr) = ('', '');
IPC::Run::run([ 'pg_waldump', $seg ], '>', \$wout, '2>', \$werr);
unlike($wout, qr/rmgr: Heap/, 'plain pg_waldump on the raw segment finds no records');
like($werr, qr/error/, 'plain pg_waldump on the raw segment fails');

# --- pg_resetwal ------------------------------------------------------------------------
$s_fetch->promote;
$s_fetch->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()') or die;
$s_fetch->stop;
command_ok([ 'pg_resetwal', '-f', '-D', $s_fetch->data_dir ], 'pg_resetwal on an encrypted cluster');
$offset = -s $s_fetch->logfile;
$s_fetch->start;
like(slurp_file($s_fetch->logfile, $offset), qr/byok: encrypted \d+ plaintext WAL pages/,
	'the segment pg_resetwal wrote is encrypted at start');
is($count->($s_fetch), '4000', 'cluster starts after pg_resetwal, data intact');
$s_fetch->safe_psql('postgres', "INSERT INTO t VALUES (9999, 'after resetwal', NULL)");
$s_fetch->stop;
($rc, $out, $err) = pg_byok('verify', '-D', $s_fetch->data_dir);
is($rc, 0, 'after pg_resetwal: pg_byok verify finds no plaintext WAL page') or diag("$out\n$err");

$primary->stop;
($rc, $out, $err) = pg_byok('verify', '-D', $primary->data_dir);
is($rc, 0, 'primary: pg_byok verify') or diag("$out\n$err");

done_testing();
