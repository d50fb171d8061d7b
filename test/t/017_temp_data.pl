
# Copyright (c) byok contributors

# Nothing a user wrote reaches disk in clear: a random marker is driven
# through every path by which PostgreSQL puts user data in files other than
# relation files and WAL --
#
#   a sort spilling past work_mem (default tablespace and a second one),
#   CREATE INDEX past maintenance_work_mem, CLUSTER, VACUUM FULL, a parallel
#   hash join that spills (shared fileset), a WITH HOLD cursor, a large
#   materialized CTE, NOTIFY payloads held by a listener in an open
#   transaction, logical decoding (test_decoding over pg_recvlogical) of a
#   transaction larger than logical_decoding_work_mem, a PREPARE TRANSACTION
#   whose GID holds the marker, and pg_stat_statements with the marker in a
#   utility statement --
#
# and the whole data directory (tablespaces included) is scanned while the
# spill files exist, again after a clean stop, and again after the watchdog
# locked the cluster: no hit.  The same workload on a stock node finds the
# marker in every file class named, so the scan is proven able to see them.
# Every result is checked on the encrypted node: the data read back from
# those files is the data written.
use strict;
use warnings;

use File::Find;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use ByokTest;

my @recvs;
END { for my $r (@recvs) { eval { $r->kill_kill; $r->finish } } }

my $marker = random_marker();
note "marker: $marker";
my $nrows = 40000;

# The file classes the workload fills, as paths relative to the data
# directory (tablespace files appear below pg_tblspc/).
my %classes = (
	'sort temp file'          => qr{^base/pgsql_tmp/pgsql_tmp\d+\.\d+$},
	'tablespace temp file'    => qr{^pg_tblspc/\d+/[^/]+/pgsql_tmp/pgsql_tmp\d+\.\d+$},
	'shared fileset'          => qr{^base/pgsql_tmp/pgsql_tmp\d+\.\d+\.fileset/},
	'NOTIFY queue'            => qr{^pg_notify/[0-9A-F]+$},
	'decoding spill file'     => qr{^pg_replslot/s1/xid-\d+-lsn-[0-9A-F]+-[0-9A-F]+\.spill$},
	'two-phase state file'    => qr{^pg_twophase/[0-9A-F]+$},
	'statement texts'         => qr{^pg_stat_tmp/pgss_query_texts\.stat$},);

my $common_conf = qq{
wal_level = logical
max_prepared_transactions = 5
max_wal_senders = 4
max_replication_slots = 4
logical_decoding_work_mem = 64kB
work_mem = 64kB
maintenance_work_mem = 1MB
max_parallel_maintenance_workers = 0
max_worker_processes = 12
max_parallel_workers = 8
autovacuum = off
};

# Files below the data directory that exist now, relative, non-empty.
sub data_files
{
	my ($node) = @_;
	my $dir = $node->data_dir;
	my @files;
	find(
		{
			wanted => sub {
				return unless -f $_ && -s _;
				(my $rel = $File::Find::name) =~ s{^\Q$dir\E/}{};
				push @files, $rel;
			},
			follow      => 1,
			follow_skip => 2,
			no_chdir    => 1
		},
		$dir);
	return @files;
}

# Which of %classes have a file now.
sub classes_present
{
	my ($node) = @_;
	my @files = data_files($node);
	my %have;
	for my $c (keys %classes)
	{
		$have{$c} = 1 if grep { $_ =~ $classes{$c} } @files;
	}
	return %have;
}

sub setup_sql
{
	my ($tsdir) = @_;
	return qq{
CREATE EXTENSION pg_stat_statements;
CREATE TABLESPACE ts LOCATION '$tsdir';
-- Waits while the file byok_hold exists in the data directory, when asked
-- to (byoktest.hold) and at the last row: every earlier row has been
-- sorted, hashed or spilled by then.
CREATE FUNCTION hold_here(v text) RETURNS text LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS \$\$
BEGIN
  IF v = '$marker-last' AND current_setting('byoktest.hold', true) = 'on' THEN
    WHILE (pg_stat_file('byok_hold', true)).size IS NOT NULL LOOP
      PERFORM pg_sleep(0.05);
    END LOOP;
  END IF;
  RETURN v;
END \$\$;
CREATE TABLE a (id int, v text);
INSERT INTO a SELECT i, '$marker-' || lpad(i::text, 6, '0') || repeat('x', 20)
  FROM generate_series(1, $nrows) i;
INSERT INTO a VALUES ($nrows + 1, '$marker-last');
CREATE TABLE b AS SELECT * FROM a;
CREATE TABLE t_ci AS SELECT * FROM a;
CREATE TABLE t_cl AS SELECT * FROM a;
CREATE INDEX cl_idx ON t_cl ((hold_here(v)));
CREATE TABLE t_vf AS SELECT * FROM a;
CREATE INDEX vf_idx ON t_vf ((hold_here(v)));
ANALYZE;
CREATE TABLE dec (id int, v text);
CREATE TABLE prep (id int, v text);
CREATE PROCEDURE p(t text) LANGUAGE sql AS \$\$ SELECT 1 \$\$;
SELECT 'slot' FROM pg_create_logical_replication_slot('s1', 'test_decoding');
};
}

# Start every holder; return them (name => BackgroundPsql) once all hold
# their files, with the pg_recvlogical handle.
sub start_holders
{
	my ($node, $recv_out) = @_;
	my %h;
	my $mk = sub {
		my $s = $node->background_psql('postgres', on_error_stop => 1);
		$s->set_query_timer_restart();
		return $s;
	};

	open(my $fh, '>', $node->data_dir . '/byok_hold') or die "byok_hold: $!";
	close $fh;

	# cursors: sort (default tablespace and ts), WITH HOLD, materialized CTE
	$h{sort} = $mk->();
	$h{sort}->query_safe(
		"BEGIN; DECLARE c1 CURSOR FOR SELECT v FROM a ORDER BY v DESC; FETCH 1 FROM c1");
	$h{sort_ts} = $mk->();
	$h{sort_ts}->query_safe("SET temp_tablespaces = 'ts'");
	$h{sort_ts}->query_safe(
		"BEGIN; DECLARE c2 CURSOR FOR SELECT v FROM b ORDER BY v; FETCH 1 FROM c2");
	$h{hold} = $mk->();
	$h{hold}->query_safe("DECLARE h1 CURSOR WITH HOLD FOR SELECT id, v FROM a");
	$h{cte} = $mk->();
	$h{cte}->query_safe(
		"BEGIN; DECLARE c3 CURSOR FOR WITH m AS MATERIALIZED (SELECT v FROM a) "
		  . "SELECT (SELECT count(*) FROM m), v FROM m; FETCH 1 FROM c3");

	# maintenance: CREATE INDEX, CLUSTER, VACUUM FULL, each held at the last row
	for my $job (
		[ 'create_index', "CREATE INDEX ci_idx ON t_ci ((hold_here(v)))" ],
		[ 'cluster', "SET enable_indexscan = off; CLUSTER t_cl USING cl_idx" ],
		[ 'vacuum_full', "VACUUM FULL t_vf" ],
		[
			'hash_join',
			"SET max_parallel_workers_per_gather = 2; SET parallel_setup_cost = 0; "
			  . "SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0; "
			  . "SET enable_mergejoin = off; SET enable_nestloop = off; SET enable_parallel_hash = on; "
			  . "SELECT count(*) FROM a JOIN b ON a.v = b.v WHERE hold_here(a.v) IS NOT NULL"
		])
	{
		my ($name, $sql) = @$job;
		$h{$name} = $mk->();
		$h{$name}->query_safe("SET byoktest.hold = 'on'");
		$h{$name}->query_until(qr/started\n/, "\\echo started\n$sql;\n");
	}

	# NOTIFY: a listener inside a transaction keeps the queue from advancing
	$h{listener} = $mk->();
	$h{listener}->query_safe("LISTEN chan");
	$h{listener}->query_safe("BEGIN; SELECT 1");
	$node->safe_psql('postgres',
		"SELECT count(pg_notify('chan', '$marker card=4111-1111-1111-' || i || ' ' || repeat('p', 150))) "
		  . "FROM generate_series(1, 3000) i");

	# logical decoding of an open transaction larger than logical_decoding_work_mem
	my $recv = IPC::Run::start(
		[
			'pg_recvlogical', '-d', $node->connstr('postgres'), '-S', 's1',
			'--start', '-f', $recv_out, '-F', '1'
		],
		'<', \undef, '>', \my $rout, '2>', \my $rerr);
	push @recvs, $recv;
	$h{decode} = $mk->();
	$h{decode}->query_safe(
		"BEGIN; INSERT INTO dec SELECT i, '$marker-dec-' || i || repeat('d', 100) FROM generate_series(1, 5000) i");

	# a prepared transaction whose GID holds the marker, its state file
	# written by a checkpoint; a statement text for pg_stat_statements with
	# the marker in a table's name.  Not in a constant or a column alias:
	# since 16, pg_stat_statements replaces constants (CALL arguments
	# too) with $1 and leaves aliases out of the query id, so a
	# "SELECT 1 AS ..." would only count under the text of the earlier
	# "SELECT 1 AS \"$marker-pre\"".  A new table is a new query id.
	$node->safe_psql('postgres',
		"BEGIN; INSERT INTO prep VALUES (1, 'prepared row'); PREPARE TRANSACTION 'gid-$marker'");
	$node->safe_psql('postgres',
		"CALL p('$marker-utility'); CREATE TABLE \"$marker-utility\" (x int); SELECT count(*) FROM \"$marker-utility\"");
	$node->safe_psql('postgres', 'CHECKPOINT');

	# wait: four sessions (or their workers) held, the spill file written
	my $held = $node->poll_query_until('postgres',
		"SELECT count(DISTINCT coalesce(leader_pid, pid)) >= 4 FROM pg_stat_activity WHERE wait_event = 'PgSleep'");
	ok($held, 'CREATE INDEX, CLUSTER, VACUUM FULL and the parallel hash join hold at their last row');
	my $ok = 0;
	for (1 .. 300)
	{
		my %have = classes_present($node);
		if (keys %have == keys %classes) { $ok = 1; last; }
		usleep(100_000);
	}
	my %have = classes_present($node);
	ok($ok, 'every file class exists: ' . join(', ', sort keys %have))
	  or diag('missing: ' . join(', ', grep { !$have{$_} } sort keys %classes));
	return (\%h, $recv);
}

# Let the holders finish; return their results.
sub release_holders
{
	my ($node, $h, $recv) = @_;
	my %r;
	unlink($node->data_dir . '/byok_hold');
	for my $name (qw(create_index cluster vacuum_full hash_join))
	{
		$r{$name} = $h->{$name}->query_safe('SELECT 1');
	}
	$r{sort} = $h->{sort}->query_safe('FETCH FORWARD 3 FROM c1; COMMIT');
	$r{sort_ts} = $h->{sort_ts}->query_safe('FETCH FORWARD 3 FROM c2; COMMIT');
	$r{hold} = $h->{hold}->query_safe("MOVE ABSOLUTE 29999 IN h1; FETCH 1 FROM h1; CLOSE h1");
	$r{cte} = $h->{cte}->query_safe('FETCH FORWARD 1 FROM c3; COMMIT');
	$r{listener} = $h->{listener}->query_safe('COMMIT');
	$r{listener} .= $h->{listener}->query_safe('SELECT 1');
	$h->{decode}->query_safe('COMMIT');
	$r{decode_committed} = 1;
	$_->quit for values %$h;
	return %r;
}

sub wait_recv
{
	my ($recv, $file, $want) = @_;
	my $n = 0;
	for (1 .. 600)
	{
		if (open(my $fh, '<', $file))
		{
			local $/;
			my $c = <$fh>;
			close $fh;
			$n = () = $c =~ /\Q$marker\E-dec-/g;
			last if $n >= $want;
		}
		usleep(100_000);
	}
	$recv->signal('TERM');
	$recv->finish;
	return $n;
}

# ------------------------------------------------------------------------------
# The control: a stock node.  Every class must show the marker in clear.
# ------------------------------------------------------------------------------
{
	my $tsdir = PostgreSQL::Test::Utils::tempdir();
	my $stock = new_stock_node('stock_temp', conf => $common_conf
		  . "shared_preload_libraries = 'pg_stat_statements'\n");
	$stock->start;
	$stock->safe_psql('postgres', setup_sql($tsdir));
	my $recv_out = PostgreSQL::Test::Utils::tempdir() . '/recv.out';
	my ($h, $recv) = start_holders($stock, $recv_out);
	my @hits = scan_at_rest($stock->data_dir, $marker);
	my %releases = release_holders($stock, $h, $recv);
	wait_recv($recv, $recv_out, 5000);
	for my $c (sort keys %classes)
	{
		ok((grep { /^([^:]+):/ && $1 =~ $classes{$c} } @hits),
			"stock: the marker is in clear in a $c");
	}
	$stock->stop;
	my @after = scan_at_rest($stock->data_dir, $marker);
	ok((grep { m{^pg_stat/pg_stat_statements\.stat:} } @after),
		'stock: the marker is in clear in pg_stat_statements\' saved texts after a clean stop');
	ok((grep { m{^pg_twophase/} } @after),
		'stock: the marker (GID) is in clear in pg_twophase after a clean stop');
}

# ------------------------------------------------------------------------------
# The encrypted node, with Key Protect (so that it can be locked).
# ------------------------------------------------------------------------------
my $emu = start_emulator();
my $key = kpctl($emu, 'create-key', '--name', 'temp-data-root');
my $node = PostgreSQL::Test::Cluster->new('enc_temp');
$node->init;
$node->append_conf('postgresql.conf', $common_conf . qq{
byok.key_crn = '$key->{crn}'
byok.kms_endpoint = '$emu->{url}'
byok.iam_endpoint = '$emu->{url}'
byok.api_key_file = '$emu->{apikey_file}'
byok.kms_ca_file = '$emu->{ca_file}'
byok.kms_timeout = 2
byok.kms_poll_interval = 1
log_statement = 'mod'
log_min_duration_statement = 0
});

# Before byok: a prepared transaction and saved statement texts, in clear.
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'pg_stat_statements'\n");
$node->start;
$node->safe_psql('postgres', qq{
CREATE EXTENSION pg_stat_statements;
CREATE TABLE pre_prep (v text);
CREATE PROCEDURE p0(t text) LANGUAGE sql AS \$\$ SELECT 1 \$\$;
CALL p0('$marker-pre');
SELECT 1 AS "$marker-pre";
BEGIN; INSERT INTO pre_prep VALUES ('before byok'); PREPARE TRANSACTION 'gid0-$marker';
CHECKPOINT;
});
$node->stop;
ok((grep { m{^pg_twophase/} } scan_at_rest($node->data_dir, $marker)),
	'before byok: the GID is in clear in pg_twophase');

my ($rc, $out, $err) = pg_byok('enable', '-D', $node->data_dir);
is($rc, 0, 'cluster encrypted under the Key Protect key') or diag("$out\n$err");
like($out, qr/encrypted 2 files in pg_twophase and pg_stat under the durable file key/,
	'enable encrypts the two-phase state file and the saved statement texts');
my @pre = scan_at_rest($node->data_dir, $marker);
is_deeply(\@pre, [], 'after enable: no marker in the data directory') or diag(join("\n", @pre));
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'byok,pg_stat_statements'\n");
$node->start;
is($node->safe_psql('postgres', "SELECT gid FROM pg_prepared_xacts"), "gid0-$marker",
	'the transaction prepared before byok survived enable');
is($node->safe_psql('postgres',
		"SELECT count(*) > 0 FROM pg_stat_statements WHERE query LIKE '%$marker-pre%'"),
	't', 'statement texts saved before byok survived enable');
$node->safe_psql('postgres', "COMMIT PREPARED 'gid0-$marker'");
is($node->safe_psql('postgres', 'SELECT v FROM pre_prep'), 'before byok', 'and it commits');
$node->safe_psql('postgres', 'DROP EXTENSION pg_stat_statements');
like(slurp_file($node->logfile),
	qr/WARNING:  byok: the server log is not encrypted, and these settings put statement texts in it: log_statement = mod, log_min_duration_statement = 0\n.*HINT:  See "Keeping row data out of the server log" in byok's docs\/security.md\./,
	'start-up WARNING names the settings that log statement texts');
my $tsdir = PostgreSQL::Test::Utils::tempdir();
$node->safe_psql('postgres', setup_sql($tsdir));

my $recv_out = PostgreSQL::Test::Utils::tempdir() . '/recv.out';
my ($h, $recv) = start_holders($node, $recv_out);
my @hits = scan_at_rest($node->data_dir, $marker);
is_deeply(\@hits, [], 'encrypted: no marker anywhere in the data directory or tablespace while every spill file exists')
  or diag(join("\n", @hits));

# What came back from those files is what went in.
my %expect;
$expect{sort} = $node->safe_psql('postgres', 'SELECT v FROM a ORDER BY v DESC OFFSET 1 LIMIT 3');
$expect{sort_ts} = $node->safe_psql('postgres', 'SELECT v FROM b ORDER BY v OFFSET 1 LIMIT 3');
$expect{hold} = $node->safe_psql('postgres', 'SELECT id, v FROM a WHERE id = 30000');
my %r = release_holders($node, $h, $recv);
is($r{sort}, $expect{sort}, 'sort spilled to a temp file reads back in order');
is($r{sort_ts}, $expect{sort_ts}, 'sort spilled into the second tablespace reads back in order');
is($r{hold}, $expect{hold}, 'WITH HOLD cursor reads back row 30000');
is($r{cte}, ($nrows + 1) . "|$marker-" . sprintf('%06d', 2) . ('x' x 20), 'materialized CTE reads back');
is($r{hash_join}, ($nrows + 1) . "\n1", 'parallel hash join over spilled batches counts every row')
  or diag($r{hash_join});
is($node->safe_psql('postgres',
		"SET enable_seqscan = off; SELECT count(*) FROM t_ci WHERE hold_here(v) >= '$marker'"),
	$nrows + 1, 'index built from spilled runs finds every row');
is($node->safe_psql('postgres', "SELECT count(*), count(DISTINCT v) FROM t_cl"),
	($nrows + 1) . '|' . ($nrows + 1), 'CLUSTER through a spilled sort kept every row');
is($node->safe_psql('postgres', "SET enable_seqscan = off; SELECT count(*) FROM t_vf WHERE hold_here(v) >= '$marker'"),
	$nrows + 1, 'VACUUM FULL rebuilt its index from spilled runs');
my $notifications = () = $r{listener} =~ /Asynchronous notification "chan" with payload "\Q$marker\E card=4111-1111-1111-\d+ p{150}"/g;
is($notifications, 3000, 'the listener received all 3000 payloads intact from pg_notify');
is(wait_recv($recv, $recv_out, 5000), 5000,
	'logical decoding replayed the 5000-row transaction from its spill files');
like(slurp_file($node->logfile), qr/^(?!.*could not read from reorderbuffer spill file)/s,
	'no spill file read error in the log');

# A clean stop: pg_twophase and pg_stat_statements' saved texts remain.
$node->stop;
my %have = classes_present($node);
ok($have{'two-phase state file'}, 'after a clean stop: the prepared transaction\'s state file is there');
ok(-s $node->data_dir . '/pg_stat/pg_stat_statements.stat', 'after a clean stop: saved statement texts are there');
@hits = scan_at_rest($node->data_dir, $marker);
is_deeply(\@hits, [], 'encrypted: no marker after a clean stop') or diag(join("\n", @hits));

# They read back after a restart (the durable file key).
$node->start;
is($node->safe_psql('postgres', "SELECT gid FROM pg_prepared_xacts"), "gid-$marker",
	'the prepared transaction survived the restart with its GID');
is($node->safe_psql('postgres',
		"SELECT count(*) > 0 FROM pg_stat_statements WHERE query LIKE '%$marker-utility%'"),
	't', 'pg_stat_statements kept the statement text across the restart');

# The watchdog locks the cluster while temp files exist.
my $sess = $node->background_psql('postgres', on_error_stop => 0);
$sess->set_query_timer_restart();
$sess->query_safe("BEGIN; DECLARE c9 CURSOR FOR SELECT v FROM a ORDER BY v DESC; FETCH 1 FROM c9");
my $listener = $node->background_psql('postgres', on_error_stop => 0);
$listener->set_query_timer_restart();
$listener->query_safe("LISTEN chan");
$listener->query_safe("BEGIN; SELECT 1");
$node->safe_psql('postgres',
	"SELECT count(pg_notify('chan', '$marker again ' || i || repeat('q', 150))) FROM generate_series(1, 3000) i");
kpctl($emu, 'delete', $key->{id}, '--force');
my $locked = 0;
for (1 .. 300)
{
	if (slurp_file($node->logfile) =~ /byok: LOCKED: /) { $locked = 1; last; }
	usleep(100_000);
}
ok($locked, 'the key deleted: the watchdog locked the cluster');
for (1 .. 300)
{
	last unless -f $node->data_dir . '/postmaster.pid';
	usleep(100_000);
}
ok(!-f $node->data_dir . '/postmaster.pid', 'the locked cluster shut down');
eval { $sess->quit };
eval { $listener->quit };
$node->_update_pid(0);
@hits = scan_at_rest($node->data_dir, $marker);
is_deeply(\@hits, [], 'encrypted: no marker after the lock') or diag(join("\n", @hits));

# The key back: everything committed (and prepared) is there.
kpctl($emu, 'advance-clock', '31');
kpctl($emu, 'restore', $key->{id});
$node->start;
$node->safe_psql('postgres', "COMMIT PREPARED 'gid-$marker'");
is($node->safe_psql('postgres', 'SELECT v FROM prep'), 'prepared row',
	'after the lock: the prepared transaction commits');
is($node->safe_psql('postgres', 'SELECT count(*) FROM dec'), '5000', 'after the lock: the decoded rows are there');

# rotate-data-key re-encrypts the durable files under the new material
$node->safe_psql('postgres',
	"BEGIN; INSERT INTO prep VALUES (2, 'prepared before rotation'); PREPARE TRANSACTION 'gid2-$marker'");
$node->safe_psql('postgres', 'CHECKPOINT');
$node->stop;
($rc, $out, $err) = pg_byok('rotate-data-key', '-D', $node->data_dir);
is($rc, 0, 'rotate-data-key') or diag("$out\n$err");
like($out, qr/encrypted 2 files in pg_twophase and pg_stat under the durable file key/,
	'rotate-data-key re-encrypts the two-phase state file and the saved statement texts');
@hits = scan_at_rest($node->data_dir, $marker);
is_deeply(\@hits, [], 'no marker after rotate-data-key') or diag(join("\n", @hits));
$node->start;
$node->safe_psql('postgres', "COMMIT PREPARED 'gid2-$marker'");
is($node->safe_psql('postgres', 'SELECT v FROM prep WHERE id = 2'), 'prepared before rotation',
	'after rotate-data-key: the prepared transaction commits');
is($node->safe_psql('postgres',
		"SELECT count(*) > 0 FROM pg_stat_statements WHERE query LIKE '%$marker-utility%'"),
	't', 'after rotate-data-key: pg_stat_statements kept its texts');
$node->stop;
stop_emulator($emu);

done_testing();
