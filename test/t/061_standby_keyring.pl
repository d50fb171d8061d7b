# Standbys follow every keyring change: a primary and two streaming standbys
# under a Key Protect key (emulator).  Setting the backup key, byok_rotate_key(),
# a rotation in Key Protect synced by the watchdog and changing the backup key
# each reach both standbys through the WAL (byok's custom resource manager):
# their keyring files are byte-identical to the primary's after replay, after
# a standby restart and after a promotion.  A base backup taken from the
# other standby restores with the backup key alone; deleting the disk key
# locks the primary and every standby.
use strict;
use warnings;

use File::Compare;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use ByokTest;

my $emu = start_emulator();
my $disk = kpctl($emu, 'create-key', '--name', 'disk-key');
my $backup1 = kpctl($emu, 'create-key', '--name', 'backup-key-1');
my $backup2 = kpctl($emu, 'create-key', '--name', 'backup-key-2');
my $marker = random_marker();

my $kms = "\nbyok.kms_endpoint = '$emu->{url}'\n"
  . "byok.iam_endpoint = '$emu->{url}'\n"
  . "byok.api_key_file = '$emu->{apikey_file}'\n"
  . "byok.kms_ca_file = '$emu->{ca_file}'\n"
  . "byok.kms_timeout = 2\nbyok.kms_poll_interval = 1\n";

my $primary = PostgreSQL::Test::Cluster->new('sk_primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', $kms . "byok.key_crn = '$disk->{crn}'\n");
my ($rc, $out, $err) = pg_byok('enable', '-D', $primary->data_dir);
is($rc, 0, 'enable under the disk key') or diag("$out\n$err");
$primary->append_conf('postgresql.conf', "shared_preload_libraries = 'byok'\n");
$primary->start;
$primary->safe_psql('postgres', 'CREATE EXTENSION byok');
$primary->safe_psql('postgres', 'CREATE EXTENSION pg_walinspect');
$primary->safe_psql('postgres', qq{
	CREATE TABLE t (id int, v text);
	INSERT INTO t SELECT g, '$marker ' || g FROM generate_series(1, 1000) g;
});

# two streaming standbys, made before any keyring change
$primary->backup('bk');
my @standbys;
for my $name ('sk_standby1', 'sk_standby2')
{
	my $s = PostgreSQL::Test::Cluster->new($name);
	$s->init_from_backup($primary, 'bk', has_streaming => 1);
	$s->start;
	push @standbys, $s;
}
my ($standby1, $standby2) = @standbys;
$primary->wait_for_catchup($_) for @standbys;
is($standby2->safe_psql('postgres', 'SELECT count(*) FROM t'), '1000', 'standbys stream');

my $keyring = sub { slurp_file($_[0]->data_dir . '/byok/keyring') };
my $start_lsn = $primary->safe_psql('postgres', 'SELECT pg_current_wal_lsn()');

# Both standbys' keyrings become byte-identical to the primary's.
sub standbys_follow
{
	my ($what) = @_;
	my $want = $keyring->($primary);
	$primary->wait_for_catchup($_) for @standbys;
	for my $s (@standbys)
	{
		my $same = wait_for(10, sub { $keyring->($s) eq $want });
		ok(defined $same, "$what: " . $s->name . "'s keyring is byte-identical to the primary's")
		  or diag("primary:\n$want\n" . $s->name . ":\n" . $keyring->($s));
	}
}

# --- set the backup key on the primary (ALTER SYSTEM is not replicated) -----------------
$primary->safe_psql('postgres', "ALTER SYSTEM SET byok.backup_key_crn = '$backup1->{crn}'");
$primary->reload;
ok(defined wait_for(10, sub { (keyring_field($primary, 'backup_key_crn') // '') eq $backup1->{crn} }),
	'primary: the backup key is set online');
standbys_follow('backup key set');
is(keyring_field($standby2, 'backup_key_crn'), $backup1->{crn}, 'the standby keyring carries the backup key');
like(slurp_file($standby1->logfile),
	qr/byok audit: \{"action":"byok.keyring.replay","crn":"\Q$disk->{crn}\E".*"outcome":"success".*"detail":"applied the keyring change in the WAL at [0-9A-F]+\/[0-9A-F]+ \(standby\); backup key \Q$backup1->{crn}\E/,
	'standby audit: byok.keyring.replay');
like(slurp_file($primary->logfile), qr/byok: keyring change written to the WAL at [0-9A-F]+\/[0-9A-F]+; standbys apply it on replay/,
	'primary log: the change is WAL-logged');

# --- byok_rotate_key() on the primary -------------------------------------------------
my $v_before = keyring_field($primary, 'key_version');
my $v_rotated = $primary->safe_psql('postgres', 'SELECT byok_rotate_key()');
isnt($v_rotated, $v_before, 'byok_rotate_key: new key version');
standbys_follow('byok_rotate_key()');
is(keyring_field($standby1, 'key_version'), $v_rotated, 'the standby keyring has the rotated version');

# a standby refuses to change its keyring itself
my ($ret, $stdout, $stderr) = $standby2->psql('postgres', 'SELECT byok_rotate_key()');
like($stderr, qr/ERROR:  byok_rotate_key\(\) cannot run on a server in recovery: its keyring follows the primary's/,
	'byok_rotate_key() on a standby: refused');
($ret, $stdout, $stderr) = $standby2->psql('postgres', 'SELECT byok_rewrap()');
like($stderr, qr/ERROR:  byok_rewrap\(\) cannot run on a server in recovery/, 'byok_rewrap() on a standby: refused');

# --- rotation in Key Protect, synced by the primary's watchdog ----------------------------
kpctl($emu, 'rotate', $disk->{id});
my $v_kp = kpctl($emu, 'key', $disk->{id})->{keyVersion}{id};
ok(defined wait_for(10, sub { (keyring_field($primary, 'key_version') // '') eq $v_kp }),
	'primary watchdog synced the rotation');
standbys_follow('rotation synced by the watchdog');
is(keyring_field($standby2, 'key_version'), $v_kp, 'the standby keyring has the Key Protect version');

# --- change the backup key -------------------------------------------------------------
$primary->safe_psql('postgres', "ALTER SYSTEM SET byok.backup_key_crn = '$backup2->{crn}'");
$primary->reload;
ok(defined wait_for(10, sub { (keyring_field($primary, 'backup_key_crn') // '') eq $backup2->{crn} }),
	'primary: the backup key is changed online');
standbys_follow('backup key changed');
is(keyring_field($standby1, 'backup_key_crn'), $backup2->{crn}, 'the standby keyring has the new backup key');

# in-memory state follows too
$primary->wait_for_catchup($_) for @standbys;
is($standby2->safe_psql('postgres', 'SELECT key_version, backup_key_crn, backup_key_version FROM byok_status()'),
	$primary->safe_psql('postgres', 'SELECT key_version, backup_key_crn, backup_key_version FROM byok_status()'),
	'byok_status on the standby shows the primary\'s key and backup key versions');

# the standby's own byok.backup_key_crn (empty: ALTER SYSTEM is not replicated) is only reported
ok(defined wait_for(10, sub { slurp_file($standby2->logfile) =~
	/WARNING:  byok key watchdog: byok.backup_key_crn on this standby \(empty\) differs from the backup key in the keyring it replays/ }),
	'standby watchdog reports its differing byok.backup_key_crn instead of changing its keyring');
unlike(slurp_file($standby2->logfile), qr/byok audit: \{"action":"byok.backup.(set|remove)"/,
	'the standby watchdog never changed the keyring itself');

# the rmgr: records named byok/KEYRING, description without key material
my $records = $primary->safe_psql('postgres', qq{
	SELECT count(*), bool_and(description LIKE 'keyring % bytes; key_version %'), bool_or(description LIKE '%wrapped%')
	FROM pg_get_wal_records_info('$start_lsn', pg_current_wal_flush_lsn())
	WHERE resource_manager = 'byok' AND record_type = 'KEYRING'});
like($records, qr/^[4-9]\|t\|f$|^\d\d+\|t\|f$/, "pg_walinspect: byok/KEYRING records ($records)");

# pg_byok waldump reads WAL with byok's records (PostgreSQL 15's pg_waldump names a
# custom resource manager by its id)
($rc, $out, $err) = pg_byok('waldump', '-D', $standby2->data_dir);
like($out, qr/rmgr: custom151 /, 'pg_byok waldump on a standby shows the keyring records') or diag($err);

# --- restart a standby: still the same keyring -----------------------------------------
$standby1->restart;
is($keyring->($standby1), $keyring->($primary), 'standby restarted: keyring still byte-identical');
is($standby1->safe_psql('postgres', 'SELECT count(*) FROM t'), '1000', 'restarted standby serves');

# --- promote standby 1 (its own byok.backup_key_crn set like the primary's first) --------
$standby1->append_conf('postgresql.conf', "byok.backup_key_crn = '$backup2->{crn}'\n");
$standby1->reload;
$primary->safe_psql('postgres', "INSERT INTO t SELECT g, '$marker ' || g FROM generate_series(1001, 2000) g");
$primary->wait_for_catchup($_) for @standbys;
$standby1->promote;
$standby1->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()') or die 'promotion failed';
$standby1->safe_psql('postgres', "INSERT INTO t SELECT g, 'promoted' FROM generate_series(2001, 2100) g");
sleep 2;	# two watchdog polls on the promoted server
is($keyring->($standby1), $keyring->($primary), 'promoted standby: keyring still the primary\'s');
$standby1->restart;
is($standby1->safe_psql('postgres', 'SELECT count(*), max(key_version) FROM t, byok_status()'),
	"2100|$v_kp", 'promoted standby restarts under the replicated keyring');

# --- a base backup from the other standby carries the backup key --------------------------
$primary->safe_psql('postgres', 'CHECKPOINT');
$primary->wait_for_catchup($standby2);
$standby2->backup('from_standby', backup_options => [ '-X', 'fetch' ]);
my $bk_keyring = slurp_file($standby2->backup_dir . '/from_standby/byok/keyring');
like($bk_keyring, qr/^backup_key_crn = \Q$backup2->{crn}\E$/m, 'backup from the standby: keyring has the backup key');
like($bk_keyring, qr/^backup_wrapped_key = \S+$/m, 'and the material wrapped by it');

# --- delete the disk key: everyone locks -----------------------------------------------------
my %pm;
for my $n ($primary, $standby1, $standby2)
{
	$pm{ $n->name } = slurp_file($n->data_dir . '/postmaster.pid') =~ /^(\d+)/ ? $1 : 0;
}
kpctl($emu, 'delete', $disk->{id}, '--force');
for my $n ($primary, $standby1, $standby2)
{
	ok(defined wait_for(15, sub { !kill(0, $pm{ $n->name }) }), $n->name . ': disk key deleted: LOCKED');
	ok(-f $n->data_dir . '/byok/lock', $n->name . ': lock file written');
	like(slurp_file($n->logfile), qr/byok: LOCKED: the Key Protect key (has been deleted|was not found)/, $n->name . ': log says LOCKED');
	$n->_update_pid(0);
}

# --- restore the standby's backup with the backup key alone -----------------------------------
my $new_disk = kpctl($emu, 'create-key', '--name', 'new-disk-key');
my $restored = PostgreSQL::Test::Cluster->new('sk_restored');
$restored->init_from_backup($standby2, 'from_standby');
unlink($restored->data_dir . '/standby.signal');
($rc, $out, $err) = pg_byok('restore-prepare', '-D', $restored->data_dir,
	'--key-crn', $new_disk->{crn}, '--use-backup-key');
is($rc, 0, 'restore-prepare --use-backup-key') or diag("$out\n$err");
like($out, qr/unwrapped the key material with backup key \Q$backup2->{crn}\E/, 'it used the backup key');
$restored->start;
$restored->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()') or die 'restore did not finish';
is($restored->safe_psql('postgres', 'SELECT count(*) FROM t'), '2000', 'restored from the standby\'s backup: every row');
is(keyring_field($restored, 'key_crn'), $new_disk->{crn}, 'restored keyring is bound to its new disk key');
$restored->restart;
is($restored->safe_psql('postgres', 'SELECT key_crn FROM byok_status()'), $new_disk->{crn},
	'the restored deployment starts again under its new disk key');
is_deeply([ scan_at_rest($standby2->backup_dir . '/from_standby', $marker) ], [], 'the standby\'s backup: no marker at rest');
$restored->stop;

stop_emulator($emu);
done_testing();
