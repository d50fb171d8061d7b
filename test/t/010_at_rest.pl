
# Copyright (c) byok contributors

# At rest: a workload puts a random marker into every kind of relation
# storage -- heap rows, out-of-line TOAST, btree / GIN / GiST / SP-GiST /
# hash / BRIN indexes, an unlogged table and its index, a temporary table
# whose local buffers overflowed to disk, a materialized view, a sequence
# name and a table comment (system catalogs), a role name and a database
# comment (shared catalogs), in two databases and in a second tablespace --
# then CHECKPOINTs.  On an encrypted node the at-rest scanner must find the
# marker in no relation file.  The same workload on a stock node is the
# control: there the marker must show up in each of those files, proving
# that the workload really put it on disk and that the scanner sees it.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use ByokTest;

my $marker = random_marker();
note "marker: $marker";

# Files the scan leaves out, relative to the data directory.  Everything
# else -- in particular every relation file under base/, global/ and
# pg_tblspc/ -- must be clean.
my @exclude = (
	# (pg_wal/ is scanned: WAL segments are encrypted too; so are temporary
	# files, pg_notify, pg_twophase and statement texts: 017_temp_data.pl.)
	# The server log is out of scope (DESIGN.md section 1) -- with
	# PostgreSQL::Test::Cluster it is written outside the data directory,
	# but a logging_collector would put it here.
	qr{^(log|pg_log)/},
	qr{^current_logfiles$},);

# The workload run in each database.  The marker is ASCII letters, digits and '_', safe in
# literals and (double-quoted) identifiers.
my $workload_sql = qq{
CREATE EXTENSION btree_gist;

CREATE TABLE heap_m (id int PRIMARY KEY, v text, tags text[], doc tsvector,
                     big text);
-- EXTERNAL: out of line and uncompressed, so the marker reaches the TOAST
-- table verbatim.
ALTER TABLE heap_m ALTER COLUMN big SET STORAGE EXTERNAL;
INSERT INTO heap_m
  SELECT i, '$marker-' || i, ARRAY['$marker', 'tag' || i],
         ('$marker w' || i)::tsvector,
         CASE WHEN i % 10 = 0 THEN repeat('$marker ', 150) END
    FROM generate_series(1, 2000) i;
CREATE INDEX heap_m_v_btree ON heap_m (v);
CREATE INDEX heap_m_tags_gin ON heap_m USING gin (tags);
CREATE INDEX heap_m_doc_gin ON heap_m USING gin (doc);
CREATE INDEX heap_m_v_gist ON heap_m USING gist (v);
CREATE INDEX heap_m_doc_gist ON heap_m USING gist (doc);
CREATE INDEX heap_m_v_spgist ON heap_m USING spgist (v);
CREATE INDEX heap_m_v_hash ON heap_m USING hash (v);
CREATE INDEX heap_m_v_brin ON heap_m USING brin (v) WITH (pages_per_range = 4);
-- some churn, then VACUUM: free space and visibility map forks
UPDATE heap_m SET v = v || '-u' WHERE id % 7 = 0;
DELETE FROM heap_m WHERE id % 11 = 0;
VACUUM heap_m;
COMMENT ON TABLE heap_m IS 'comment $marker';

CREATE UNLOGGED TABLE unl_m (id int, v text);
INSERT INTO unl_m SELECT i, '$marker-unlogged-' || i FROM generate_series(1, 1000) i;
CREATE INDEX unl_m_v ON unl_m (v);

CREATE SEQUENCE "seq_$marker";
SELECT nextval('"seq_$marker"');

CREATE MATERIALIZED VIEW mv_m AS SELECT id, v || '-mv' AS v FROM heap_m;
CREATE INDEX mv_m_v ON mv_m (v);

CREATE TABLE ts_m (id int, v text) TABLESPACE byok_ts;
INSERT INTO ts_m SELECT i, '$marker-ts-' || i FROM generate_series(1, 1000) i;
CREATE INDEX ts_m_v ON ts_m (v) TABLESPACE byok_ts;
};

# Relations whose files must show the marker on the stock node; name =>
# regclass expression.  Not there: heap_m_doc_gist (tsvector GiST keys are
# hashes), heap_m_v_hash (hash codes), heap_m_v_spgist (a radix tree may keep
# only parts of the string), the sequence's own file (no name since PG 10).
my %marker_rels = (
	heap          => q{'heap_m'},
	toast         => q{(SELECT reltoastrelid FROM pg_class WHERE oid = 'heap_m'::regclass)},
	btree         => q{'heap_m_v_btree'},
	gin_array     => q{'heap_m_tags_gin'},
	gin_tsvector  => q{'heap_m_doc_gin'},
	gist          => q{'heap_m_v_gist'},
	brin          => q{'heap_m_v_brin'},
	unlogged      => q{'unl_m'},
	unlogged_idx  => q{'unl_m_v'},
	matview       => q{'mv_m'},
	matview_idx   => q{'mv_m_v'},
	tblspc_heap   => q{'ts_m'},
	tblspc_idx    => q{'ts_m_v'},
	pg_class      => q{'pg_class'},          # sequence name
	pg_description => q{'pg_description'},  # table comment
);
# Shared catalogs, under global/.
my %marker_shared_rels = (
	pg_authid        => q{'pg_authid'},        # role name
	pg_shdescription => q{'pg_shdescription'}, # database comment
);
# Relations with storage that must be encrypted (byok_relation_encrypted).
my @enc_rels = (
	(map { $marker_rels{$_} } sort keys %marker_rels),
	q{'heap_m_pkey'}, q{'heap_m_doc_gist'}, q{'heap_m_v_spgist'},
	q{'heap_m_v_hash'}, qq{'"seq_$marker"'});

my $temp_sql = qq{
CREATE TEMP TABLE tmp_m (id int, v text);
INSERT INTO tmp_m
  SELECT i, '$marker-temp-' || i || repeat('x', 400) FROM generate_series(1, 6000) i;
CREATE INDEX tmp_m_v ON tmp_m (v);
SELECT count(*) FROM tmp_m WHERE v LIKE '$marker%';
};

# Runs the workload on a started node; returns the background session that
# holds the temporary table (still open) and a hash: label => path of the
# relation's main fork relative to the data directory.
sub run_workload
{
	my ($node, $tsdir) = @_;
	my %path;

	mkdir $tsdir or die "mkdir $tsdir: $!";
	$node->safe_psql('postgres',
		"CREATE TABLESPACE byok_ts LOCATION '$tsdir'");
	$node->safe_psql('postgres', 'CREATE DATABASE db2');
	$node->safe_psql('postgres',
		qq{CREATE ROLE "role_$marker"; COMMENT ON DATABASE db2 IS 'dbcomment $marker';}
	);

	for my $db ('postgres', 'db2')
	{
		$node->safe_psql($db, $workload_sql);
		is( $node->safe_psql($db,
				"SELECT count(*) FROM heap_m WHERE big LIKE '%$marker%'"),
			'182', "$db: workload wrote TOASTed rows");
		for my $label (sort keys %marker_rels)
		{
			$path{"$db/$label"} = $node->safe_psql($db,
				"SELECT pg_relation_filepath($marker_rels{$label})");
		}
	}
	for my $label (sort keys %marker_shared_rels)
	{
		$path{"global/$label"} = $node->safe_psql('postgres',
			"SELECT pg_relation_filepath($marker_shared_rels{$label})");
	}

	# A temporary table bigger than temp_buffers (100 buffers = 800 kB, to be
	# set before the session first touches a temporary table): most of its
	# pages have been written out to its file by the time the INSERT ends.
	my $bg = $node->background_psql('postgres');
	$bg->query_safe('SET temp_buffers = 100');
	is($bg->query_safe($temp_sql), '6000', 'temporary table filled');
	$path{'postgres/temp'} =
	  $bg->query_safe(q{SELECT pg_relation_filepath('tmp_m')});
	like($path{'postgres/temp'}, qr{^base/\d+/t\d+_\d+$},
		'temporary table file path');

	$node->safe_psql('postgres', 'CHECKPOINT');
	return ($bg, \%path);
}

# Hits (strings "path: encoding") that belong to the file at $relpath,
# any segment or fork of it.
sub hits_in
{
	my ($hits, $relpath) = @_;
	return grep { m{^\Q$relpath\E(_\w+)?(\.\d+)?: } } @$hits;
}

# ---------------------------------------------------------------------
# Control: a stock node.
# ---------------------------------------------------------------------
my $stock = new_stock_node('stock');
$stock->start;
my $stock_ts = "$PostgreSQL::Test::Utils::tmp_check/stock_ts";
my ($stock_bg, $stock_path) = run_workload($stock, $stock_ts);

# Scanned twice: running, with the temporary table's session open, and
# after a clean stop -- CHECKPOINT does not write unlogged relations' buffers,
# the shutdown checkpoint does.
my @stock_hits_running =
  scan_at_rest($stock->data_dir, $marker, exclude => \@exclude);
$stock_bg->quit;
$stock->stop;
my @stock_hits_stopped =
  scan_at_rest($stock->data_dir, $marker, exclude => \@exclude);
note "stock node hits, running:\n" . join("\n", @stock_hits_running);
note "stock node hits, stopped:\n" . join("\n", @stock_hits_stopped);

for my $label (sort keys %$stock_path)
{
	my $hits =
	  $label =~ /temp/ ? \@stock_hits_running : \@stock_hits_stopped;
	my @h = hits_in($hits, $stock_path->{$label});
	ok(scalar(@h) > 0,
		"control: marker found on the stock node in $label ($stock_path->{$label})");
}
ok(scalar(grep { m{^pg_wal/} } @stock_hits_stopped) > 0,
	'control: marker found in the stock node\'s WAL');
my @stock_ts_hits = scan_at_rest($stock_ts, $marker);
ok(scalar(@stock_ts_hits) > 0,
	'control: marker found in the stock node\'s tablespace directory');

# ---------------------------------------------------------------------
# The encrypted node.
# ---------------------------------------------------------------------
my $node = new_encrypted_node('enc', has_archiving => 1, allows_streaming => 1);
$node->start;
my $enc_ts = "$PostgreSQL::Test::Utils::tmp_check/enc_ts";
my ($bg, $path) = run_workload($node, $enc_ts);

# Scans the data directory and the tablespace directory, which must both be
# clean.
sub check_clean
{
	my ($when) = @_;
	my @hits = scan_at_rest($node->data_dir, $marker, exclude => \@exclude);
	is_deeply(\@hits, [],
		"encrypted node, $when: marker in no file of the data directory")
	  or diag("hits:\n" . join("\n", @hits));
	my @ts_hits = scan_at_rest($enc_ts, $marker);
	is_deeply(\@ts_hits, [],
		"encrypted node, $when: marker in no file of the tablespace")
	  or diag("hits:\n" . join("\n", @ts_hits));
	return;
}

# Push the WAL of the workload into the archive as well.
my $last_seg = $node->safe_psql('postgres', 'SELECT pg_walfile_name(pg_current_wal_lsn())');
$node->safe_psql('postgres', 'SELECT pg_switch_wal(); CHECKPOINT;');
$node->poll_query_until('postgres', "SELECT last_archived_wal >= '$last_seg' FROM pg_stat_archiver")
  or die 'archiving did not catch up';
my @archived = glob($node->archive_dir . '/0*');
ok(@archived > 0, 'encrypted node: ' . scalar(@archived) . ' WAL segments archived');
is_deeply([ scan_at_rest($node->archive_dir, $marker) ], [],
	'encrypted node: marker in no archived WAL segment');

# The first scan runs while the session with the temporary table is open.
check_clean('running');
# The temporary table's file exists and got the overflow (it is not clean
# merely because it is empty).
my $temp_file = $node->data_dir . '/' . $path->{'postgres/temp'};
ok(-s $temp_file > 800 * 1024,
	'encrypted node: temporary table file holds the overflow ('
	  . (-s $temp_file // 'missing') . ' bytes)');

# What the server says about it.
for my $db ('postgres', 'db2')
{
	$node->safe_psql($db, 'CREATE EXTENSION byok');
	for my $rel (@enc_rels)
	{
		is($node->safe_psql($db, "SELECT byok_relation_encrypted($rel)"),
			't', "$db: byok_relation_encrypted($rel)");
	}
}
is($node->safe_psql('postgres',
		'SELECT hooks_installed, enabled FROM byok_status()'),
	't|t', 'byok_status: enabled, hooks installed');
is($bg->query_safe(q{SELECT byok_relation_encrypted('tmp_m')}),
	't', 'byok_relation_encrypted(temporary table)');
is($bg->query_safe(q{SELECT byok_relation_encrypted('tmp_m_v')}),
	't', 'byok_relation_encrypted(temporary table index)');
is($bg->query_safe(
		"SELECT count(*), sum(length(v)) FROM tmp_m WHERE v LIKE '$marker%'"),
	'6000|' . eval {
		my $sum = 0;
		$sum += length($marker) + length("-temp-$_") + 400 for 1 .. 6000;
		$sum;
	},
	'temporary table reads back after its pages went through the disk');

# byok_relation_encrypted flushed every buffer of the relations it looked at
# (the temporary ones included): look again.
$node->safe_psql('postgres', 'CHECKPOINT');
check_clean('after flushing the temporary table');

$bg->quit;

# After a clean stop: the shutdown checkpoint wrote the unlogged tables.
$node->stop;
check_clean('stopped');

my ($rc, $out, $err) =
  pg_byok('verify', '-D', $node->data_dir, '--root-key-file',
	root_key_path('enc'));
is($rc, 0, 'pg_byok verify succeeds after a clean stop')
  or diag("stdout:\n$out\nstderr:\n$err");

# The data reads back after the restart.
$node->start;
for my $db ('postgres', 'db2')
{
	is( $node->safe_psql($db,
			"SELECT count(*), count(big) FROM heap_m WHERE v LIKE '$marker-%' AND (big IS NULL OR big = repeat('$marker ', 150))"
		),
		'1819|182',
		"$db: heap and TOAST read back after restart");
	is( $node->safe_psql($db,
			"SELECT count(*) FROM unl_m WHERE v LIKE '$marker-unlogged-%'"),
		'1000', "$db: unlogged table reads back after a clean restart");
	is( $node->safe_psql($db,
			"SELECT count(*) FROM ts_m WHERE v LIKE '$marker-ts-%'"),
		'1000', "$db: tablespace table reads back after restart");
	is( $node->safe_psql($db,
			"SET enable_seqscan = off; SELECT count(*) FROM heap_m WHERE v = '$marker-1'"),
		'1', "$db: btree lookup after restart");
}
$node->stop;

done_testing();
