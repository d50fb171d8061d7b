# Encrypted WAL: point-in-time recovery from a base backup plus the archive
# across a primary restart, a key rotation (Key Protect emulator) and a
# crash; the restored cluster writes on its new timeline and survives a
# crash there.  (Format 1 also audited its CTR keystream here; format 2's
# XTS has no keystream to reuse: test/unit/test_crypto.c checks the
# torn-write property of WAL pages, 013_torn_wal.pl the real thing.)
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ByokTest;

my $marker = random_marker();
my $emu = start_emulator();
my $key = kpctl($emu, 'create-key', '--name', 'pitr-root');
my $kms = "\nbyok.key_crn = '$key->{crn}'\n"
  . "byok.kms_endpoint = '$emu->{url}'\n"
  . "byok.iam_endpoint = '$emu->{url}'\n"
  . "byok.api_key_file = '$emu->{apikey_file}'\n"
  . "byok.kms_ca_file = '$emu->{ca_file}'\n";

my $primary = PostgreSQL::Test::Cluster->new('pitr_primary');
$primary->init(allows_streaming => 1, has_archiving => 1);
$primary->append_conf('postgresql.conf', $kms);
my ($rc, $out, $err) = pg_byok('enable', '-D', $primary->data_dir);
is($rc, 0, 'primary encrypted under the Key Protect key') or diag("$out\n$err");
$primary->append_conf('postgresql.conf', "shared_preload_libraries = 'byok'\ncommit_delay = 0\n");
$primary->start;
$primary->safe_psql('postgres', 'CREATE EXTENSION byok; CREATE TABLE t (id int, batch text, at timestamptz DEFAULT clock_timestamp())');

$primary->backup('base', backup_options => [ '-X', 'fetch' ]);

sub batch
{
	my ($name, $from, $to) = @_;
	# many small commits: the last WAL page is rewritten at every flush
	for my $i ($from .. $to)
	{
		$primary->safe_psql('postgres', "INSERT INTO t (id, batch) VALUES ($i, '$name')");
	}
	$primary->safe_psql('postgres', "INSERT INTO t (id, batch) SELECT g, '$name bulk' FROM generate_series(1, 500) g");
}

batch('A', 1, 40);
$primary->safe_psql('postgres', "INSERT INTO t (id, batch) SELECT g, 'A $marker' FROM generate_series(1, 100) g");
$primary->restart;
batch('B', 41, 80);
my $old_version = $primary->safe_psql('postgres', 'SELECT key_version FROM byok_status()');
my $new_version = $primary->safe_psql('postgres', 'SELECT byok_rotate_key()');
isnt($new_version, $old_version, 'key rotated between the batches');
$primary->stop('immediate');                     # a crash: recovery
$primary->start;
batch('C', 81, 120);
my $target = $primary->safe_psql('postgres', 'SELECT clock_timestamp()');
$primary->safe_psql('postgres', 'SELECT pg_sleep(0.2)');
batch('D', 121, 160);
my $expected = $primary->safe_psql('postgres',
	"SELECT count(*) FROM t WHERE at <= '$target'");
is($expected, 120 + 3 * 500 + 100, 'rows up to the target: batches A, B and C');

my $last_seg = $primary->safe_psql('postgres', 'SELECT pg_walfile_name(pg_current_wal_lsn())');
$primary->safe_psql('postgres', 'SELECT pg_switch_wal()');
$primary->poll_query_until('postgres', "SELECT last_archived_wal >= '$last_seg' FROM pg_stat_archiver")
  or die 'archiving did not catch up';

# --- PITR into a fresh data directory ---------------------------------------------
my $restored = PostgreSQL::Test::Cluster->new('pitr_restored');
$restored->init_from_backup($primary, 'base', has_restoring => 1);
$restored->append_conf('postgresql.conf',
	"recovery_target_time = '$target'\nrecovery_target_action = 'promote'\n");
$restored->start;
$restored->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()')
  or die 'PITR did not finish';
is($restored->safe_psql('postgres', 'SELECT count(*) FROM t'), $expected,
	'PITR across a restart, a rotation and a crash: every row up to the target');
is($restored->safe_psql('postgres', "SELECT count(*) FROM t WHERE batch LIKE 'D%'"), '0',
	'and none after it');
is($restored->safe_psql('postgres', "SELECT string_agg(DISTINCT batch, ',' ORDER BY batch) FROM t"),
	"A,A $marker,A bulk,B,B bulk,C,C bulk", 'all batches before the target are there');
$restored->safe_psql('postgres', "INSERT INTO t (id, batch) VALUES (0, 'after PITR')");
$restored->stop('immediate');                    # and a crash on the new timeline
$restored->start;
is($restored->safe_psql('postgres', "SELECT count(*) FROM t WHERE batch = 'after PITR'"), '1',
	'restored cluster writes on its new timeline and survives a crash');
$restored->stop;
$primary->stop;

# pg_byok verify on both, after a clean stop: every WAL page of the restored
# cluster's new timeline (the first segment of which PostgreSQL made by
# copying the old timeline's segment up to the switch point) decrypts
($rc, $out, $err) = pg_byok('verify', '-D', $restored->data_dir);
is($rc, 0, 'pg_byok verify: restored cluster after PITR and promotion is clean')
  or diag($out . $err);
($rc, $out, $err) = pg_byok('verify', '-D', $primary->data_dir);
is($rc, 0, 'pg_byok verify: primary is clean') or diag($out . $err);

# at rest: the archive, the base backup and both data directories
is_deeply([ scan_at_rest($primary->archive_dir, $marker) ], [], 'archive: no marker in any archived segment');
is_deeply([ scan_at_rest($primary->backup_dir . '/base', $marker) ], [], 'base backup: no marker');
is_deeply([ scan_at_rest($primary->data_dir, $marker) ], [], 'primary: no marker');
is_deeply([ scan_at_rest($restored->data_dir, $marker) ], [], 'restored cluster: no marker');

stop_emulator($emu);
done_testing();
