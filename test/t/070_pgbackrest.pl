# byok with real pgBackRest (Debian's pgbackrest package), every command as
# docs/pgbackrest.md gives it: stanza-create, check, archive-push and
# archive-get with the default settings (archive-header-check on), full,
# diff and incr backups with page-checksum verification on a
# --data-checksums cluster, restore into a new directory, PITR to a time,
# restore as a streaming standby, and the backup-key restore path
# (pg_byok restore-prepare --use-backup-key) after the disk key is deleted.
# The repository, decompressed, holds no marker; a stock cluster's does.
# The checks are not vacuous: pgBackRest reports a corrupted page of a byok
# cluster, and archive-push rejects a segment of another cluster.
use strict;
use warnings;

use File::Find;
use File::Path qw(make_path);
use File::Basename qw(dirname);
use File::Copy qw(copy);
use IO::Uncompress::Gunzip qw(gunzip $GunzipError);
use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use ByokTest;

my $t0 = time;
my ($pgbackrest) = grep { -x $_ } map { "$_/pgbackrest" } split /:/, $ENV{PATH};
die 'pgbackrest is not installed (scripts/install-deps.sh installs it)' unless $pgbackrest;

my $emu = start_emulator();
my $disk = kpctl($emu, 'create-key', '--name', 'disk-key');
my $backup = kpctl($emu, 'create-key', '--name', 'backup-key');
my $marker = random_marker();

# --- pgBackRest's own files: every path under the test's directory -----------------
my $br = PostgreSQL::Test::Utils::tempdir('pgbackrest');
my $conf = "$br/pgbackrest.conf";
my $repo = "$br/repo";
make_path("$br/log", "$br/lock", "$br/spool", $repo);

# Run pgbackrest with the test's configuration; returns (rc, stdout, stderr).
sub pgbr
{
	my @cmd = ($pgbackrest, "--config=$conf", @_);
	my ($out, $err) = ('', '');
	note('running: ' . join(' ', @cmd));
	IPC::Run::run(\@cmd, '<', \undef, '>', \$out, '2>', \$err);
	my $rc = $? >> 8;
	note("pgbackrest exit $rc\n$out$err");
	return ($rc, $out, $err);
}

my $kms = "\nbyok.kms_endpoint = '$emu->{url}'\n"
  . "byok.iam_endpoint = '$emu->{url}'\n"
  . "byok.api_key_file = '$emu->{apikey_file}'\n"
  . "byok.kms_ca_file = '$emu->{ca_file}'\n"
  . "byok.kms_timeout = 2\nbyok.kms_poll_interval = 1\n";

my $primary = PostgreSQL::Test::Cluster->new('br_primary');
$primary->init(allows_streaming => 1, extra => ['--data-checksums']);
$primary->append_conf('postgresql.conf',
	$kms . "byok.key_crn = '$disk->{crn}'\nbyok.backup_key_crn = '$backup->{crn}'\n");
my ($rc, $out, $err) = pg_byok('enable', '-D', $primary->data_dir);
is($rc, 0, 'primary encrypted under the disk key and the backup key') or diag("$out\n$err");
$primary->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'byok'
archive_mode = on
archive_command = '$pgbackrest --config=$conf --stanza=main archive-push %p'
});

my $stock = new_stock_node('br_stock', allows_streaming => 1, extra => ['--data-checksums']);
$stock->append_conf('postgresql.conf', qq{
archive_mode = on
archive_command = '$pgbackrest --config=$conf --stanza=stock archive-push %p'
});

# The configuration docs/pgbackrest.md gives, with the test's paths; nothing
# about archive-header-check or checksum-page: their defaults (on) apply.
{
	open(my $fh, '>', $conf) or die "$conf: $!";
	print $fh "[global]\n"
	  . "repo1-path=$repo\n"
	  . "repo1-retention-full=2\n"
	  . "start-fast=y\n"
	  . "archive-timeout=60\n"
	  . "log-path=$br/log\n"
	  . "lock-path=$br/lock\n"
	  . "spool-path=$br/spool\n"
	  . "log-level-console=info\n\n";
	for my $s ([ 'main', $primary ], [ 'stock', $stock ])
	{
		my ($name, $node) = @$s;
		print $fh "[$name]\n"
		  . 'pg1-path=' . $node->data_dir . "\n"
		  . 'pg1-port=' . $node->port . "\n"
		  . 'pg1-socket-path=' . $node->host . "\n\n";
	}
	close $fh;
}

$primary->start;
$primary->safe_psql('postgres', 'CREATE EXTENSION byok');
is($primary->safe_psql('postgres', 'SHOW data_checksums'), 'on', 'the primary has data checksums');

($rc, $out, $err) = pgbr('--stanza=main', 'stanza-create');
is($rc, 0, 'pgbackrest stanza-create') or diag("$out\n$err");
($rc, $out, $err) = pgbr('--stanza=main', 'check');
is($rc, 0, 'pgbackrest check: archive-push of a byok WAL segment with the header check') or diag("$out\n$err");
like($out, qr/WAL segment \S+ successfully archived to/, 'check saw its segment archived');

# --- workload and the three kinds of backup ------------------------------------------
$primary->safe_psql('postgres', qq{
	CREATE TABLE t (id int PRIMARY KEY, v text, big text, at timestamptz DEFAULT clock_timestamp());
	ALTER TABLE t ALTER COLUMN big SET STORAGE EXTERNAL;
	CREATE INDEX t_v ON t (v);
});
my $batch = sub {
	my ($from, $to, $what) = @_;
	$primary->safe_psql('postgres',
		"INSERT INTO t (id, v, big) SELECT g, '$marker $what ' || g, "
		  . "CASE WHEN g % 50 = 0 THEN repeat('$marker', 400) END FROM generate_series($from, $to) g");
};

# A backup of the given type: it succeeds, pgBackRest verified page checksums
# of the relation files it copied and found no error.  Returns its label.
sub backup_ok
{
	my ($type) = @_;
	my ($rc, $out, $err) = pgbr('--stanza=main', "--type=$type", 'backup');
	is($rc, 0, "pgbackrest backup --type=$type") or diag("$out\n$err");
	my ($label) = $out =~ /new backup label = (\S+)/;
	ok(defined $label, "$type backup: label $label") or return undef;
	unlike("$out$err", qr/invalid page checksum|page misalignment/,
		"$type backup: pgBackRest reports no checksum error");
	my $manifest = slurp_file("$repo/backup/main/$label/backup.manifest");
	my $checked = () = $manifest =~ /"checksum-page":true/g;
	my $failed = () = $manifest =~ /"checksum-page":false/g;
	cmp_ok($checked, '>', 0, "$type backup: page checksums verified in $checked files");
	is($failed, 0, "$type backup: no file failed its page checksums");
	return $label;
}

$batch->(1, 1000, 'full');
my $full = backup_ok('full');
$batch->(1001, 2000, 'diff');
my $diff = backup_ok('diff');
$batch->(2001, 3000, 'incr');
$primary->safe_psql('postgres', 'UPDATE t SET v = v || \' updated\' WHERE id % 7 = 0');
my $incr = backup_ok('incr');
like($diff // '', qr/^\Q$full\E_\d{8}-\d{6}D$/, 'the diff backup is on the full one');
like($incr // '', qr/^\Q$full\E_\d{8}-\d{6}I$/, 'the incr backup is on it too');

($rc, $out, $err) = pgbr('--stanza=main', '--output=json', 'info');
is($rc, 0, 'pgbackrest info');
my $info = eval { decode_json($out) } // [];
is(join(',', map { $_->{type} } @{ $info->[0]{backup} // [] }), 'full,diff,incr', 'info lists full, diff, incr');

like(slurp_file("$repo/backup/main/$full/backup.manifest"), qr{^pg_data/byok/keyring=}m,
	'the keyring travels with the backup (pg_data/byok/keyring in the manifest)');

# the recovery target, then rows after it
my $target = $primary->safe_psql('postgres', 'SELECT clock_timestamp()');
$primary->safe_psql('postgres', 'SELECT pg_sleep(0.3)');
$batch->(3001, 3500, 'after target');
my $seg = $primary->safe_psql('postgres', 'SELECT pg_walfile_name(pg_current_wal_lsn())');
$primary->safe_psql('postgres', 'SELECT pg_switch_wal()');
$primary->poll_query_until('postgres', "SELECT last_archived_wal >= '$seg' FROM pg_stat_archiver")
  or die 'archiving did not catch up';
is($primary->safe_psql('postgres', 'SELECT failed_count FROM pg_stat_archiver'), '0',
	'archive-push never failed');

# A restored node: pgbackrest restore into the empty data directory of a new
# node (extra restore options given), then the node's own port and socket,
# and no archiving (it would push into the primary's stanza).
sub restore_node
{
	my ($name, @opts) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	make_path($node->data_dir, { mode => 0700 });
	chmod 0700, $node->data_dir;
	my ($rc, $out, $err) = pgbr('--stanza=main', '--pg1-path=' . $node->data_dir, @opts, 'restore');
	is($rc, 0, "pgbackrest restore @opts into $name") or diag("$out\n$err");
	$node->append_conf('postgresql.conf',
		'port = ' . $node->port . "\nunix_socket_directories = '" . $node->host . "'\narchive_mode = off\n");
	return $node;
}

# --- PITR to a time --------------------------------------------------------------------
my $pitr = restore_node('br_pitr', '--type=time', "--target=$target", '--target-action=promote');
like(slurp_file($pitr->data_dir . '/postgresql.auto.conf'),
	qr/^restore_command = '\Q$pgbackrest\E --config=\Q$conf\E .*--stanza=main archive-get %f "%p"'/m,
	'restore wrote a restore_command that calls pgbackrest archive-get');
$pitr->start;
$pitr->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()') or die 'PITR did not finish';
is($pitr->safe_psql('postgres', 'SELECT count(*) FROM t'), '3000',
	'PITR: every row committed before the target');
is($pitr->safe_psql('postgres', "SELECT count(*) FROM t WHERE v LIKE '%after target%'"), '0',
	'PITR: none after it');
is($pitr->safe_psql('postgres', "SELECT count(*) FROM t WHERE big LIKE '%$marker%'"), '60',
	'PITR: TOAST replayed from archived WAL reads back');
like(slurp_file($pitr->logfile), qr/restored log file "[0-9A-F]{24}" from archive/,
	'PITR: WAL came through archive-get');
my $relpath = $pitr->safe_psql('postgres', "SELECT pg_relation_filepath('t')");
$pitr->stop;
# pg_byok verify on the promoted copy: the new timeline's first segment was
# made by PostgreSQL's XLogFileCopy, which leaves stale copies of the old
# timeline's last page beyond the end of the WAL (encrypted, never read)
{
	my ($vrc, $vout, $verr) = pg_byok('verify', '-D', $pitr->data_dir);
	is($vrc, 0, 'PITR: pg_byok verify is clean after promotion') or diag($vout . $verr);
}

# --- restore as a standby: replays from the archive, then streams -----------------------
my $standby = restore_node('br_standby', '--type=standby',
	'--recovery-option=primary_conninfo=' . $primary->connstr . ' application_name=br_standby');
ok(-f $standby->data_dir . '/standby.signal', 'restore --type=standby wrote standby.signal');
$standby->start;
$primary->wait_for_catchup($standby);
is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't', 'the standby is in recovery');
$batch->(3501, 4000, 'streamed');
$primary->wait_for_catchup($standby);
is($standby->safe_psql('postgres', 'SELECT count(*) FROM t'), '4000', 'the standby has every row');
is($standby->safe_psql('postgres', 'SELECT status FROM pg_stat_wal_receiver'), 'streaming',
	'the standby streams from the primary');
like(slurp_file($standby->logfile), qr/restored log file "[0-9A-F]{24}" from archive/,
	'the standby replayed archived WAL through archive-get first');
$standby->stop;

# --- the repository holds only ciphertext ------------------------------------------------
# Every file of a stanza's part of the repository, gzip files decompressed
# into a mirror, so that the scanner sees what pgBackRest stored.
sub repo_plain
{
	my ($stanza) = @_;
	my $mirror = "$br/plain-$stanza";
	my $n = 0;
	for my $part ('backup', 'archive')
	{
		find({ no_chdir => 1, wanted => sub {
			return unless -f $_;
			(my $rel = $_) =~ s{^\Q$repo\E/}{};
			my $dst = "$mirror/$rel";
			make_path(dirname($dst));
			if ($rel =~ s/\.gz$//)
			{
				gunzip($_ => "$mirror/$rel", BinModeOut => 1) or die "gunzip $_: $GunzipError";
				$n++;
			}
			else
			{
				copy($_, $dst) or die "copy $_: $!";
			}
		} }, "$repo/$part/$stanza");
	}
	return ($mirror, $n);
}

$seg = $primary->safe_psql('postgres', 'SELECT pg_walfile_name(pg_current_wal_lsn())');
$primary->safe_psql('postgres', 'SELECT pg_switch_wal(); CHECKPOINT');
$primary->poll_query_until('postgres', "SELECT last_archived_wal >= '$seg' FROM pg_stat_archiver") or die;
my ($plain, $ngz) = repo_plain('main');
cmp_ok($ngz, '>', 100, "repository: $ngz compressed files decompressed for the scan");
is_deeply([ scan_at_rest("$repo/backup/main", $marker) ], [], 'repository backups as stored: no marker');
is_deeply([ scan_at_rest("$repo/archive/main", $marker) ], [], 'repository archive as stored: no marker');
is_deeply([ scan_at_rest("$plain/backup/main", $marker) ], [], 'repository backups decompressed: no marker');
is_deeply([ scan_at_rest("$plain/archive/main", $marker) ], [], 'repository archive decompressed: no marker');
like(slurp_file((glob("$plain/backup/main/$full/pg_data/byok/keyring"))[0]), qr/^backup_wrapped_key = \S+/m,
	'the keyring in the repository carries the backup-key copy');

# control: a stock cluster backed up the same way shows the marker to the scanner
$stock->start;
$stock->safe_psql('postgres',
	"CREATE TABLE t AS SELECT g AS id, '$marker stock ' || g AS v FROM generate_series(1, 1000) g; CHECKPOINT");
($rc, $out, $err) = pgbr('--stanza=stock', 'stanza-create');
is($rc, 0, 'stock: stanza-create') or diag("$out\n$err");
($rc, $out, $err) = pgbr('--stanza=stock', '--type=full', 'backup');
is($rc, 0, 'stock: full backup') or diag("$out\n$err");
$stock->safe_psql('postgres', "INSERT INTO t SELECT g, '$marker stock wal' FROM generate_series(1, 100) g");
$seg = $stock->safe_psql('postgres', 'SELECT pg_walfile_name(pg_current_wal_lsn())');
$stock->safe_psql('postgres', 'SELECT pg_switch_wal()');
$stock->poll_query_until('postgres', "SELECT last_archived_wal >= '$seg' FROM pg_stat_archiver") or die;
my ($stock_plain) = repo_plain('stock');
ok(scalar(grep { m{/pg_data/base/} } scan_at_rest("$stock_plain/backup/stock", $marker)) > 0,
	'control: a stock cluster\'s backup in the repository shows the marker');
my @stock_wal_hits = scan_at_rest("$stock_plain/archive/stock", $marker);
ok(@stock_wal_hits > 0, 'control: a stock cluster\'s archived WAL shows the marker');

# the header check is real: a segment of another cluster is refused
{
	my ($stock_seg) = sort glob($stock->data_dir . '/pg_wal/0000000100000000000000[0-9A-F][0-9A-F]');
	my $foreign = "$br/foreign/0000000100000000000000F0";
	make_path("$br/foreign");
	copy($stock_seg, $foreign) or die "copy: $!";
	my $sys_stock = $stock->safe_psql('postgres', 'SELECT system_identifier FROM pg_control_system()');
	my $sys_main = $primary->safe_psql('postgres', 'SELECT system_identifier FROM pg_control_system()');
	($rc, $out, $err) = pgbr('--stanza=main', 'archive-push', $foreign);
	isnt($rc, 0, 'archive-push of another cluster\'s segment into the byok stanza fails');
	my ($major) = `pg_config --version` =~ /^PostgreSQL (\d+)/;
	like("$out$err", qr/WAL file '\Q$foreign\E' version $major, system-id $sys_stock do not match stanza version $major, system-id $sys_main/,
		'the header check read both system identifiers');
	ok(!glob("$repo/archive/main/*/0000000100000000/0000000100000000000000F0*"), 'and the segment is not in the archive');
}
$stock->stop;

# --- the page-checksum check is real: a corrupted page of a byok cluster is reported ----
# (an offline backup of the stopped PITR copy, first intact, then with one
# flipped byte in block 1 of t; offline, pgBackRest checks pages only when
# asked: --checksum-page)
{
	open(my $fh, '>>', $conf) or die;
	print $fh "[copy]\npg1-path=" . $pitr->data_dir . "\n";
	close $fh;
	($rc, $out, $err) = pgbr('--stanza=copy', '--no-online', 'stanza-create');
	is($rc, 0, 'copy: stanza-create --no-online') or diag("$out\n$err");
	($rc, $out, $err) = pgbr('--stanza=copy', '--no-online', '--checksum-page', '--type=full', 'backup');
	is($rc, 0, 'copy: offline backup of the intact byok copy') or diag("$out\n$err");
	unlike("$out$err", qr/invalid page checksum/, 'intact copy: every page passes pgBackRest\'s checksum check');
	my $manifest = slurp_file("$repo/backup/copy/latest/backup.manifest");
	my $checked = () = $manifest =~ /"checksum-page":true/g;
	cmp_ok($checked, '>', 0, "intact copy: page checksums verified in $checked files");

	my $file = $pitr->data_dir . "/$relpath";
	open(my $rf, '+<:raw', $file) or die "$file: $!";
	sysseek($rf, 8192 + 4000, 0);
	sysread($rf, my $b, 1);
	sysseek($rf, 8192 + 4000, 0);
	syswrite($rf, chr(ord($b) ^ 0x55));
	close $rf;
	sleep 1;    # backup labels are by the second
	($rc, $out, $err) = pgbr('--stanza=copy', '--no-online', '--checksum-page', '--type=full', 'backup');
	like("$out$err", qr/WARN: invalid page checksum found in file \Q$file\E at page 1\b/,
		'corrupted copy: pgBackRest reports the corrupted page');
}

# --- the backup-key restore path: the disk key is gone ----------------------------------
$seg = $primary->safe_psql('postgres', 'SELECT pg_walfile_name(pg_current_wal_lsn())');
$primary->safe_psql('postgres', 'SELECT pg_switch_wal()');
$primary->poll_query_until('postgres', "SELECT last_archived_wal >= '$seg' FROM pg_stat_archiver") or die;
my $pm = slurp_file($primary->data_dir . '/postmaster.pid') =~ /^(\d+)/ ? $1 : 0;
kpctl($emu, 'delete', $disk->{id}, '--force');
ok(defined wait_for(10, sub { !kill(0, $pm) }), 'disk key deleted: the primary locks');
$primary->_update_pid(0);

my $new_disk = kpctl($emu, 'create-key', '--name', 'new-disk-key');
my $restored = restore_node('br_backupkey');
($rc, $out, $err) = pg_byok('restore-prepare', '-D', $restored->data_dir,
	'--key-crn', $new_disk->{crn}, '--use-backup-key');
is($rc, 0, 'pg_byok restore-prepare --use-backup-key on a pgBackRest restore') or diag("$out\n$err");
like($out, qr/unwrapped the key material with backup key \Q$backup->{crn}\E/, 'it used the backup key');
$restored->start;
$restored->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()') or die 'recovery did not finish';
is($restored->safe_psql('postgres', 'SELECT count(*) FROM t'), '4000',
	'restored with the backup key alone: every row, replayed through archive-get');
is($restored->safe_psql('postgres', 'SELECT key_crn FROM byok_status()'), $new_disk->{crn},
	'the restored deployment runs under its new disk key');
$restored->stop;

note(sprintf('070_pgbackrest: %.0f s', time - $t0));
stop_emulator($emu);
done_testing();
