# Stock PostgreSQL tools on encrypted WAL through "pg_byok exec -D DATADIR --
# TOOL ARGS...": pg_receivewal and pg_basebackup -X stream write ciphertext
# as they go (scanned while pg_receivewal runs), pg_waldump prints exactly
# what stock pg_waldump prints on the same WAL decrypted by the server,
# pg_verifybackup passes on -X fetch and -X stream backups, pg_rewind
# re-attaches an old primary after a failover, pg_resetwal writes an
# encrypted segment, pg_archivecleanup works; and the refusals (WAL under
# another key, compressed output, a rewind between clusters that do not
# share key material, a tool that is not served).
use strict;
use warnings;

use Cwd qw(abs_path);
use File::Copy;
use File::Path qw(make_path);
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ByokTest;

my $marker = random_marker();

# Run a command; returns (exit code, stdout, stderr).
sub run_cmd
{
	my @cmd = @_;
	my ($out, $err) = ('', '');
	note('running: ' . join(' ', @cmd));
	IPC::Run::run(\@cmd, '<', \undef, '>', \$out, '2>', \$err);
	my $rc = $? & 127 ? 128 + ($? & 127) : $? >> 8;
	note("exit $rc\nstderr: $err") if $rc != 0;
	return ($rc, $out, $err);
}

# how many files match a glob pattern (glob in scalar context is an iterator)
sub nfiles
{
	my @f = glob($_[0]);
	return scalar @f;
}

# bytes 20..23 of the first page of a segment file: 0 = plaintext
sub first_page_marker
{
	my ($path) = @_;
	open(my $fh, '<:raw', $path) or die "$path: $!";
	read($fh, my $hdr, 24) == 24 or die "$path: short read";
	close $fh;
	return unpack('V', substr($hdr, 20, 4));
}

my $primary = new_encrypted_node('primary', allows_streaming => 1,
	conf => "wal_log_hints = on\nwal_keep_size = 256MB\nmax_prepared_transactions = 5\n");
$primary->start;
my $pgdata = $primary->data_dir;
my @conn = ('-h', $primary->host, '-p', $primary->port);
$primary->safe_psql('postgres', qq{
	CREATE TABLE t (id int PRIMARY KEY, v text);
	INSERT INTO t SELECT g, '$marker base ' || g FROM generate_series(1, 1000) g;
});

# --- not served, no "--" ----------------------------------------------------------
my ($rc, $out, $err) = pg_byok('exec', '-D', $pgdata, '--', 'cat', '/etc/hostname');
isnt($rc, 0, 'exec refuses a tool it does not serve');
like($err, qr/pg_byok exec does not run "cat"/, 'exec names the tool it refuses');

# a served tool with the library but without keys does not run
($rc, $out, $err) = run_cmd('env', 'LD_PRELOAD=' . `pg_config --pkglibdir` =~ s/\s+$//r . '/byok_fe.so',
	'pg_waldump', '--version');
isnt($rc, 0, 'pg_waldump with byok_fe.so preloaded but no keys does not run');
like($err, qr/pg_waldump: error: byok: pg_waldump was started with byok_fe.so but without keys/,
	'... and says why');
unlike($out, qr/pg_waldump \(PostgreSQL\)/, '... before it does anything');

# --- pg_receivewal, scanned while it runs; stock pg_receivewal as the control -------
my $tmp = abs_path(PostgreSQL::Test::Utils::tempdir());
my $enc_dir = "$tmp/recv_enc";
my $plain_dir = "$tmp/recv_plain";
make_path($enc_dir, $plain_dir);
$primary->backup('bk_recv');    # a later restore replays pg_receivewal's output

my ($r_out, $r_err, $p_out, $p_err) = ('', '', '', '');
my $recv_enc = IPC::Run::start(
	[ 'pg_byok', 'exec', '-D', $pgdata, '--', 'pg_receivewal', '-D', $enc_dir, @conn, '-n', '--synchronous' ],
	'<', \undef, '>', \$r_out, '2>', \$r_err);
my $recv_plain = IPC::Run::start(
	[ 'pg_receivewal', '-D', $plain_dir, @conn, '-n', '--synchronous' ],
	'<', \undef, '>', \$p_out, '2>', \$p_err);
ok(defined wait_for(30, sub { nfiles("$enc_dir/*.partial") && nfiles("$plain_dir/*.partial") }),
	'both pg_receivewal runs have a .partial segment') or diag("$r_err\n$p_err");

$primary->safe_psql('postgres',
	"INSERT INTO t SELECT g, '$marker received ' || g FROM generate_series(1001, 3000) g");
my $lsn = $primary->safe_psql('postgres', 'SELECT pg_current_wal_lsn()');
ok(defined wait_for(30, sub { my @hits = scan_at_rest($plain_dir, $marker); @hits > 0 }),
	'control: stock pg_receivewal writes the marker in clear') or diag($p_err);
ok(defined wait_for(30, sub {
	$primary->safe_psql('postgres',
		"SELECT bool_and(flush_lsn >= '$lsn') AND count(*) = 2 FROM pg_stat_replication") eq 't' }),
	'both pg_receivewal runs flushed the inserts');
is_deeply([ scan_at_rest($enc_dir, $marker) ], [],
	'pg_receivewal through exec, scanned while it runs: no marker in its output');

my $seg = $primary->safe_psql('postgres', 'SELECT pg_walfile_name(pg_current_wal_lsn())');
$primary->safe_psql('postgres', 'SELECT pg_switch_wal()');
ok(defined wait_for(30, sub { -f "$enc_dir/$seg" && -f "$plain_dir/$seg" }),
	"both pg_receivewal runs completed segment $seg");
is_deeply([ scan_at_rest($enc_dir, $marker) ], [], 'pg_receivewal output: still no marker after a completed segment');
isnt(first_page_marker("$enc_dir/$seg"), 0, 'pg_receivewal through exec: the segment\'s pages carry the page marker');
is(first_page_marker("$plain_dir/$seg"), 0, 'control: stock pg_receivewal writes plaintext pages');

# --- pg_waldump: exec on ciphertext == stock on the server's own decryption ---------
my ($rc_a, $stock_dump) = run_cmd('pg_waldump', '-p', $plain_dir, $seg, $seg);
is($rc_a, 0, 'stock pg_waldump on the plaintext stream');
like($stock_dump, qr/rmgr: Heap .*desc: INSERT/, 'the stream has the inserts');
($rc, $out, $err) = pg_byok('exec', '-D', $pgdata, '--', 'pg_waldump', '-p', "$pgdata/pg_wal", $seg, $seg);
is($rc, 0, 'pg_waldump through exec on the server\'s encrypted pg_wal') or diag($err);
ok($out eq $stock_dump, 'its output equals stock pg_waldump\'s on the decrypted stream, byte for byte');
($rc, $out, $err) = pg_byok('exec', '-D', $pgdata, '--', 'pg_waldump', '-p', $enc_dir, $seg, $seg);
ok($rc == 0 && $out eq $stock_dump, 'pg_waldump through exec on pg_receivewal\'s encrypted output: the same')
  or diag($err);
($rc, $out, $err) = pg_byok('waldump', '-D', $pgdata, '--', $seg, $seg);
ok($rc == 0 && $out eq $stock_dump, 'pg_byok waldump (the alias) prints the same') or diag($err);
my ($rc_s, $raw_dump, $raw_err) = run_cmd('pg_waldump', '-p', "$pgdata/pg_wal", $seg, $seg);
unlike($raw_dump, qr/desc: INSERT/, 'control: stock pg_waldump on the encrypted segment decodes no insert');

# interrupting the alias leaves nothing behind (it used to decrypt into /tmp)
my @before = glob('/tmp/pg_byok_waldump.* ' . ($ENV{TMPDIR} // '/tmp') . '/pg_byok_waldump.*');
my ($k_out, $k_err) = ('', '');
my $dump = IPC::Run::start([ 'pg_byok', 'waldump', '-D', $pgdata ], '<', \undef, '>', \$k_out, '2>', \$k_err);
wait_for(10, sub { eval { $dump->pump_nb }; length($k_out) > 0 });
$dump->kill_kill;
my @after = glob('/tmp/pg_byok_waldump.* ' . ($ENV{TMPDIR} // '/tmp') . '/pg_byok_waldump.*');
is(scalar(@after), scalar(@before), 'pg_byok waldump killed while it runs: no temporary directory left');

# --- refusals ---------------------------------------------------------------------------
my $other = new_encrypted_node('other');
$other->start;
$other->safe_psql('postgres', 'CREATE TABLE o AS SELECT 1 AS x');
$other->stop;
($rc, $out, $err) = pg_byok('exec', '-D', $other->data_dir, '--', 'pg_waldump', '-p', "$pgdata/pg_wal", $seg, $seg);
isnt($rc, 0, 'pg_waldump with another cluster\'s keys fails');
like($err, qr/byok: WAL segment ".*$seg" is encrypted under another key/, '... saying the segment is under another key');
unlike($out, qr/desc: INSERT/, '... and shows no record');

my $gz_dir = "$tmp/recv_gz";
make_path($gz_dir);
($rc, $out, $err) = run_cmd('timeout', '60', 'pg_byok', 'exec', '-D', $pgdata, '--', 'pg_receivewal',
	'-D', $gz_dir, @conn, '-n', '--compress=gzip:1');
isnt($rc, 0, 'pg_receivewal --compress through exec fails');
like($err, qr/byok: refusing to write ".*\.gz\.partial"/, '... refusing to write compressed WAL');
is_deeply([ scan_at_rest($gz_dir, $marker) ], [], '... and wrote no WAL');

# --- pg_basebackup -X stream through exec; pg_verifybackup on -X stream and -X fetch ---
# A backup streams the WAL written while it runs (it starts in a fresh segment):
# a writer commits marker rows throughout both backups, exec's and stock's.
my ($w_out, $w_err) = ('', '');
my $writer = IPC::Run::start(
	[ 'psql', '-X', '-q', '-d', $primary->connstr('postgres'), '-c',
		"DO \$\$ BEGIN FOR i IN 1..400 LOOP INSERT INTO t VALUES (100000 + i, '$marker during backup ' || i); COMMIT; PERFORM pg_sleep(0.02); END LOOP; END \$\$" ],
	'<', \undef, '>', \$w_out, '2>', \$w_err);
wait_for(30, sub { $primary->safe_psql('postgres', 'SELECT count(*) FROM t WHERE id > 100000') > 0 });
my $bk_stream = $primary->backup_dir . '/exec_stream';
($rc, $out, $err) = pg_byok('exec', '-D', $pgdata, '--', 'pg_basebackup', '-D', $bk_stream, @conn,
	'-X', 'stream', '--checkpoint', 'fast', '--no-sync');
is($rc, 0, 'pg_basebackup -X stream through exec') or diag($err);
$primary->backup('stock_stream');
my $during = $primary->safe_psql('postgres', 'SELECT count(*) FROM t WHERE id > 100000');
$writer->finish;
ok($during < 400, "the writer was still committing after both backups ($during of 400 rows)");
is_deeply([ scan_at_rest($bk_stream, $marker) ], [], 'its output holds no marker, pg_wal included');
my @stock_hits = scan_at_rest($primary->backup_dir . '/stock_stream', $marker);
ok(scalar(grep { m{^pg_wal/} } @stock_hits) > 0,
	'control: stock pg_basebackup -X stream, same writer, leaves the marker in pg_wal');
$primary->backup('fetch', backup_options => [ '-X', 'fetch' ]);
my $bk_fetch = $primary->backup_dir . '/fetch';
for my $bk ([ '-X stream', $bk_stream ], [ '-X fetch', $bk_fetch ])
{
	($rc, $out, $err) = pg_byok('exec', '-D', $pgdata, '--', 'pg_verifybackup', $bk->[1]);
	is($rc, 0, "pg_verifybackup through exec on the $bk->[0] backup") or diag($err);
	like($out, qr/backup successfully verified/, "... backup successfully verified ($bk->[0])");
}
($rc, $out, $err) = run_cmd('pg_verifybackup', $bk_fetch);
isnt($rc, 0, 'control: stock pg_verifybackup fails on the encrypted WAL');

# --- pg_receivewal's output restores a server ----------------------------------------
$recv_enc->signal('TERM');
$recv_plain->signal('TERM');
$recv_enc->finish;
$recv_plain->finish;
my $restored = PostgreSQL::Test::Cluster->new('restored');
$restored->init_from_backup($primary, 'bk_recv');
$restored->append_conf('postgresql.conf', "restore_command = 'cp \"$enc_dir/%f\" \"%p\"'\n");
$restored->set_recovery_mode;
$restored->start;
ok($restored->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()'), 'restored from pg_receivewal\'s segments');
is($restored->safe_psql('postgres', "SELECT count(*) FROM t WHERE v LIKE '$marker received %'"),
	'2000', 'every row received by pg_receivewal through exec was replayed');
$restored->stop;

# --- pg_rewind: failover, writes on both, rewind the old primary, re-attach ----------
$primary->backup('bk_standby');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'bk_standby', has_streaming => 1);
$standby->start;
$primary->wait_for_catchup($standby, 'replay', $primary->lsn('insert'));
$standby->promote;
$standby->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()') or die;
$standby->safe_psql('postgres', qq{
	INSERT INTO t SELECT g, '$marker new primary ' || g FROM generate_series(5001, 6000) g;
	UPDATE t SET v = v || ' updated on the new primary' WHERE id % 7 = 0;
	BEGIN;
	INSERT INTO t VALUES (9001, '$marker prepared');
	PREPARE TRANSACTION 'gid $marker';
	CHECKPOINT;
});
# the state file is named by the xid in 8 hex digits on 15, by epoch and
# xid in 16 from 17 on
my $xid_hex = $standby->safe_psql('postgres',
	"SELECT upper(lpad(to_hex(transaction::text::bigint), 8, '0')) FROM pg_prepared_xacts");
my @twophase = grep { -s $_ } glob($standby->data_dir . "/pg_twophase/*$xid_hex");
is(scalar(@twophase), 1,
	'the new primary has a prepared transaction in a pg_twophase file for pg_rewind to copy');
$primary->safe_psql('postgres', qq{
	INSERT INTO t SELECT g, '$marker lost ' || g FROM generate_series(7001, 8000) g;
	UPDATE t SET v = v || ' lost update' WHERE id % 5 = 0;
});
# not shut down cleanly, as after a failover: pg_rewind first runs
# "postgres --single" for crash recovery (byok.so does the server's side; the
# frontend library steps aside in it)
$primary->stop('immediate');
my $source = $standby->connstr('postgres');

# control: stock pg_rewind recovers the target (postgres --single), then fails
# on its encrypted WAL before it changes anything
($rc, $out, $err) = run_cmd('pg_rewind', '-D', $pgdata, "--source-server=$source");
isnt($rc, 0, 'control: stock pg_rewind cannot read the encrypted WAL of the old primary');
like($err, qr/WAL record/, '... it fails on a WAL record');
$primary->start;
$primary->safe_psql('postgres',
	"INSERT INTO t SELECT g, '$marker lost again ' || g FROM generate_series(8001, 8100) g");
$primary->stop('immediate');

($rc, $out, $err) = pg_byok('exec', '-D', $other->data_dir, '--', 'pg_rewind', '-n', '-D', $pgdata,
	"--source-server=$source");
isnt($rc, 0, 'pg_rewind through exec with keys of another cluster is refused');
like($err, qr/the target of pg_rewind \(.*\) is encrypted under other key material than the keyring of/,
	'... saying the target is under other key material');
($rc, $out, $err) = pg_byok('exec', '-D', $pgdata, '--', 'pg_rewind', '-n', '-D', $pgdata,
	'--source-pgdata=' . $other->data_dir);
isnt($rc, 0, 'pg_rewind from a cluster with other key material is refused');
like($err, qr/the source of pg_rewind \(.*\) is encrypted under other key material than the keyring of/,
	'... saying the source is under other key material');

copy("$pgdata/postgresql.conf", "$tmp/primary.conf") or die;
($rc, $out, $err) = pg_byok('exec', '-D', $pgdata, '--', 'pg_rewind', '-D', $pgdata,
	"--source-server=$source");
is($rc, 0, 'pg_rewind through exec from the new primary') or diag($err);
like($err . $out, qr/Done!/, 'pg_rewind says Done!');
like($err, qr/executing ".*postgres" for target server to complete crash recovery/,
	'... after crash recovery in postgres --single, run with byok_fe.so preloaded');
like($err, qr/byok: cluster encryption active/, '... where byok.so did the server\'s encryption');
ok(nfiles("$pgdata/pg_twophase/*") > 0, 'pg_rewind copied the two-phase state file');
is_deeply([ scan_at_rest("$pgdata/pg_twophase", $marker) ], [],
	'... encrypted: no GID in clear (the server decrypts such files for pg_read_binary_file)');
copy("$tmp/primary.conf", "$pgdata/postgresql.conf") or die;
$primary->enable_streaming($standby);
$primary->start;
is($primary->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't', 'the old primary runs as a standby');

my $new_lsn = $standby->lsn('insert');
ok($primary->poll_query_until('postgres', "SELECT pg_last_wal_replay_lsn() >= '$new_lsn'"),
	'the old primary replays the new primary\'s WAL');
$standby->safe_psql('postgres', "COMMIT PREPARED 'gid $marker'");
$new_lsn = $standby->lsn('insert');
$primary->poll_query_until('postgres', "SELECT pg_last_wal_replay_lsn() >= '$new_lsn'") or die;
my $rows = "SELECT string_agg(id || ':' || v, ',' ORDER BY id) FROM t";
my $want = $standby->safe_psql('postgres', $rows);
ok($primary->safe_psql('postgres', $rows) eq $want, 'every row of the new primary is on the rewound standby, as it is there');
is($primary->safe_psql('postgres', "SELECT v FROM t WHERE id = 9001"), "$marker prepared",
	'... the prepared transaction, committed after the rewind, included');
is($primary->safe_psql('postgres', "SELECT count(*) FROM t WHERE v LIKE '%lost%'"), '0',
	'the writes of the old primary after the failover are gone');
$standby->safe_psql('postgres', 'CHECKPOINT');
$primary->safe_psql('postgres', 'CHECKPOINT');
is_deeply([ scan_at_rest($pgdata, $marker) ], [], 'rewound old primary: no marker at rest');
is_deeply([ scan_at_rest($standby->data_dir, $marker) ], [], 'new primary: no marker at rest');
$primary->stop;
$standby->stop;

# --- pg_resetwal, pg_archivecleanup -----------------------------------------------------
($rc, $out, $err) = pg_byok('exec', '-D', $other->data_dir, '--', 'pg_resetwal', '-D', $other->data_dir);
is($rc, 0, 'pg_resetwal through exec') or diag($err);
my ($newest) = reverse sort grep { m{/[0-9A-F]{24}$} } glob($other->data_dir . '/pg_wal/*');
isnt(first_page_marker($newest), 0, 'pg_resetwal through exec wrote an encrypted segment');
$other->start;
is($other->safe_psql('postgres', 'SELECT x FROM o'), '1', 'the server starts on it');
$other->stop;

my $arch = "$tmp/archive";
make_path($arch);
# pg_archivecleanup reads names only: older segments, the received one, a .partial after it
copy("$enc_dir/$seg", "$arch/$seg") or die;
my $keep = $seg;
for my $n (1, 2)
{
	my $older = sprintf('%s%08X', substr($seg, 0, 16), hex(substr($seg, 16, 8)) - $n);
	copy("$enc_dir/$seg", "$arch/$older") or die;
}
my $partial = sprintf('%s%08X.partial', substr($seg, 0, 16), hex(substr($seg, 16, 8)) + 1);
copy("$enc_dir/$seg", "$arch/$partial") or die;
($rc, $out, $err) = pg_byok('exec', '-D', $other->data_dir, '--', 'pg_archivecleanup', $arch, $keep);
is($rc, 0, 'pg_archivecleanup through exec') or diag($err);
is_deeply([ sort map { s{.*/}{}r } glob("$arch/*") ], [ $keep, $partial ],
	'it removed the segments before the one named, and only those');

done_testing();
