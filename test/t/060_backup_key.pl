# Backups under their own key: byok.backup_key_crn wraps the key material a
# second time; a backup restores into a new deployment with the backup key
# alone after the disk key is deleted (PITR included); deleting the backup
# key shreds the backups but not the live cluster; the backup key's
# rotation is synced; setting, changing and removing it is online.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use ByokTest;

my $emu = start_emulator();
my $disk = kpctl($emu, 'create-key', '--name', 'disk-key');
my $backup = kpctl($emu, 'create-key', '--name', 'backup-key');
my $marker = random_marker();

my $kms = "\nbyok.kms_endpoint = '$emu->{url}'\n"
  . "byok.iam_endpoint = '$emu->{url}'\n"
  . "byok.api_key_file = '$emu->{apikey_file}'\n"
  . "byok.kms_ca_file = '$emu->{ca_file}'\n"
  . "byok.kms_timeout = 2\nbyok.kms_poll_interval = 1\n";

my $primary = PostgreSQL::Test::Cluster->new('bk_primary');
$primary->init(allows_streaming => 1, has_archiving => 1);
$primary->append_conf('postgresql.conf',
	$kms . "byok.key_crn = '$disk->{crn}'\nbyok.backup_key_crn = '$backup->{crn}'\n");
my ($rc, $out, $err) = pg_byok('enable', '-D', $primary->data_dir);
is($rc, 0, 'enable under the disk key and the backup key') or diag("$out\n$err");
like($out, qr/also wrapped by backup key \Q$backup->{crn}\E/, 'enable says so');
is(keyring_field($primary, 'backup_key_crn'), $backup->{crn}, 'keyring carries the backup key copy');
$primary->append_conf('postgresql.conf', "shared_preload_libraries = 'byok'\n");
$primary->start;
$primary->safe_psql('postgres', 'CREATE EXTENSION byok');
is($primary->safe_psql('postgres', 'SELECT backup_key_crn, key_crn FROM byok_status()'),
	"$backup->{crn}|$disk->{crn}", 'byok_status shows both keys');
like($primary->safe_psql('postgres', "SELECT string_agg(kind, ',' ORDER BY kind) FROM byok_key_associations()"),
	qr/backup key/, 'byok_key_associations lists the backup key');

$primary->safe_psql('postgres', qq{
	CREATE TABLE t (id int, v text, at timestamptz DEFAULT clock_timestamp());
	INSERT INTO t (id, v) SELECT g, '$marker before backup' FROM generate_series(1, 1000) g;
});
$primary->backup('bk', backup_options => [ '-X', 'fetch' ]);
$primary->safe_psql('postgres', "INSERT INTO t (id, v) SELECT g, '$marker after backup' FROM generate_series(1001, 2000) g");
my $target = $primary->safe_psql('postgres', 'SELECT clock_timestamp()');
$primary->safe_psql('postgres', "SELECT pg_sleep(0.2); INSERT INTO t (id, v) SELECT g, 'after target' FROM generate_series(2001, 2500) g");
my $seg = $primary->safe_psql('postgres', 'SELECT pg_walfile_name(pg_current_wal_lsn())');
$primary->safe_psql('postgres', 'SELECT pg_switch_wal(); CHECKPOINT;');
$primary->poll_query_until('postgres', "SELECT last_archived_wal >= '$seg' FROM pg_stat_archiver") or die;

is_deeply([ scan_at_rest($primary->backup_dir . '/bk', $marker) ], [], 'backup directory: no marker');
is_deeply([ scan_at_rest($primary->archive_dir, $marker) ], [], 'WAL archive: no marker');
like(slurp_file($primary->backup_dir . '/bk/byok/keyring'), qr/^backup_wrapped_key = \S+/m,
	'the backup carries the backup-key copy in its keyring');

# --- the backup key's rotation is synced --------------------------------------------
my $bk_before = keyring_field($primary, 'backup_key_version');
kpctl($emu, 'rotate', $backup->{id});
my $bk_new = kpctl($emu, 'key', $backup->{id})->{keyVersion}{id};
ok(defined wait_for(5, sub { (keyring_field($primary, 'backup_key_version') // '') eq $bk_new }),
	'rotation of the backup key synced by the watchdog');
like(slurp_file($primary->logfile), qr/syncing KMS state: backup key \Q$backup->{crn}\E was rotated/,
	'log: syncing KMS state (backup key)');
isnt(keyring_field($primary, 'backup_key_version'), $bk_before, 'backup key version changed');

# --- delete the disk key: the cluster locks ------------------------------------------
my $pm = slurp_file($primary->data_dir . '/postmaster.pid') =~ /^(\d+)/ ? $1 : 0;
kpctl($emu, 'delete', $disk->{id}, '--force');
ok(defined wait_for(10, sub { !kill(0, $pm) }), 'disk key deleted: the primary locks');
$primary->_update_pid(0);

# --- restore the backup into a new deployment with the backup key ------------------------
my $new_disk = kpctl($emu, 'create-key', '--name', 'new-disk-key');
my $restored = PostgreSQL::Test::Cluster->new('bk_restored');
$restored->init_from_backup($primary, 'bk', has_restoring => 1);
($rc, $out, $err) = pg_byok('restore-prepare', '-D', $restored->data_dir,
	'--key-crn', $new_disk->{crn}, '--use-backup-key');
is($rc, 0, 'restore-prepare --use-backup-key') or diag("$out\n$err");
like($out, qr/unwrapped the key material with backup key \Q$backup->{crn}\E/, 'it used the backup key');
is(keyring_field($restored, 'key_crn'), $new_disk->{crn}, 'the copy is now wrapped by its new disk key');
is(keyring_field($restored, 'backup_key_crn'), $backup->{crn}, 'and keeps the backup key binding');
$restored->append_conf('postgresql.conf',
	"recovery_target_time = '$target'\nrecovery_target_action = 'promote'\n");
$restored->start;
$restored->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()') or die 'PITR did not finish';
is($restored->safe_psql('postgres', 'SELECT count(*) FROM t'), '2000',
	'PITR with the backup key: every row up to the target');
is($restored->safe_psql('postgres', "SELECT count(*) FROM t WHERE v = 'after target'"), '0',
	'and none after it');
is($restored->safe_psql('postgres', 'SELECT key_crn FROM byok_status()'), $new_disk->{crn},
	'the restored deployment runs under its new disk key');

# --- setting, changing, removing the backup key online -----------------------------------
my $backup2 = kpctl($emu, 'create-key', '--name', 'backup-key-2');
$restored->safe_psql('postgres', "ALTER SYSTEM SET byok.backup_key_crn = '$backup2->{crn}'");
$restored->reload;
ok(defined wait_for(5, sub { (keyring_field($restored, 'backup_key_crn') // '') eq $backup2->{crn} }),
	'backup key changed online');
like(slurp_file($restored->logfile), qr/byok audit: \{"action":"byok.backup.set","crn":"\Q$backup2->{crn}\E".*"detail":"replaces backup key \Q$backup->{crn}\E"\}/,
	'audit: byok.backup.set');
$restored->safe_psql('postgres', "ALTER SYSTEM SET byok.backup_key_crn = ''");
$restored->reload;
ok(defined wait_for(5, sub { (keyring_field($restored, 'backup_key_crn') // 'x') eq '' }),
	'backup key removed online');
like(slurp_file($restored->logfile), qr/byok audit: \{"action":"byok.backup.remove"/, 'audit: byok.backup.remove');
$restored->safe_psql('postgres', "ALTER SYSTEM SET byok.backup_key_crn = '$backup->{crn}'");
$restored->reload;
ok(defined wait_for(5, sub { (keyring_field($restored, 'backup_key_crn') // '') eq $backup->{crn} }),
	'backup key set online');

# --- delete the backup key: the live cluster serves on, the backups are shredded ----------
kpctl($emu, 'delete', $backup->{id}, '--force');
ok($restored->poll_query_until('postgres', "SELECT backup_key_state = 'destroyed' FROM byok_status()"),
	'backup key deleted: byok_status shows it');
sleep 2;
is($restored->safe_psql('postgres', 'SELECT count(*) FROM t'), '2000',
	'the live cluster keeps serving under its own disk key');
like(slurp_file($restored->logfile), qr/WARNING:  byok key watchdog: backup key \Q$backup->{crn}\E is destroyed/,
	'log warns that backups can no longer be restored with it');

my $again = PostgreSQL::Test::Cluster->new('bk_again');
$again->init_from_backup($primary, 'bk', has_restoring => 1);
my $another = kpctl($emu, 'create-key', '--name', 'another-disk-key');
($rc, $out, $err) = pg_byok('restore-prepare', '-D', $again->data_dir,
	'--key-crn', $another->{crn}, '--use-backup-key');
isnt($rc, 0, 'restoring the old backup with the deleted backup key fails');
like($err, qr/pg_byok: error: could not unwrap the cluster key with the backup key: the Key Protect key has been deleted\npg_byok: detail: Key CRN \Q$backup->{crn}\E/,
	'with a clear error naming the deleted backup key');

# --- the same key as disk and backup key: warned ------------------------------------------
$restored->safe_psql('postgres', "ALTER SYSTEM SET byok.backup_key_crn = '$new_disk->{crn}'");
$restored->reload;
ok(defined wait_for(5, sub { (keyring_field($restored, 'backup_key_crn') // '') eq $new_disk->{crn} }),
	'backup key = disk key set');
like($restored->safe_psql('postgres',
		"SELECT description FROM byok_key_associations() WHERE kind = 'warning'"),
	qr/the backup key is the disk key: deleting it shreds the cluster and every backup together/,
	'byok_key_associations warns when the backup key is the disk key');
like(slurp_file($restored->logfile), qr/WARNING:  byok.backup_key_crn names the same key as byok.key_crn/,
	'and the log warns');
$restored->stop;

# a malformed backup key CRN stops the server, naming the right setting
$restored->append_conf('postgresql.conf', "byok.backup_key_crn = '$backup->{id}'\n");
{
	my $auto = $restored->data_dir . '/postgresql.auto.conf';
	my $text = slurp_file($auto);
	$text =~ s/^byok\.backup_key_crn = .*\n//mg;
	open(my $fh, '>', $auto) or die $!;
	print $fh $text;
	close $fh;
}
my $offset = -s $restored->logfile;
ok(!$restored->start(fail_ok => 1), 'bare key id as byok.backup_key_crn: refused');
like(slurp_file($restored->logfile, $offset),
	qr/FATAL:  invalid value for parameter "byok.backup_key_crn": invalid key CRN/,
	'the FATAL names byok.backup_key_crn');

stop_emulator($emu);
done_testing();
