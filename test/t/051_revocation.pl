# Revoked access locks the cluster after byok.revoked_access_grace (poll
# interval 1 s, request timeout 2 s, grace 6 s): access back within the
# grace is audited and nothing happens; authorization removed (401) and the
# API key deleted (IAM BXNIM0415E) lock; a watchdog that cannot run locks
# after the same grace; and after every lock, access back -> the cluster
# starts and every committed row is there.  byok.revoked_access_grace = -1
# warns at start and never locks.
use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use ByokTest;

my $poll = 1;
my $timeout = 2;
my $grace = 6;
# the documented bound (docs/key-lifecycle.md): detection within one poll
# and one request, then the grace, then one more poll's request
my $bound = $poll + $timeout + $grace + $timeout;

my $emu = start_emulator();
my $key = kpctl($emu, 'create-key', '--name', 'revocable-root');
my $apikey = slurp_file($emu->{apikey_file});

my $node = PostgreSQL::Test::Cluster->new('revocable');
$node->init;
$node->append_conf('postgresql.conf', qq{
byok.key_crn = '$key->{crn}'
byok.kms_endpoint = '$emu->{url}'
byok.iam_endpoint = '$emu->{url}'
byok.api_key_file = '$emu->{apikey_file}'
byok.kms_ca_file = '$emu->{ca_file}'
byok.kms_timeout = $timeout
byok.kms_poll_interval = $poll
byok.revoked_access_grace = $grace
});
my ($rc, $out, $err) = pg_byok('enable', '-D', $node->data_dir);
is($rc, 0, 'cluster encrypted under the Key Protect key') or diag("$out\n$err");
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'byok'\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION byok; CREATE TABLE committed (id int PRIMARY KEY)');
ok($node->poll_query_until('postgres', "SELECT kms_status = 'ok' FROM byok_status()"), 'watchdog running, status ok');
is($node->safe_psql('postgres', "SHOW byok.revoked_access_grace"), "${grace}s", 'grace set');

sub pm_pid
{
	return slurp_file($node->data_dir . '/postmaster.pid') =~ /^(\d+)/ ? $1 : undef;
}

# --- access removed, back within the grace: audit, no lock ------------------------------
my $offset = -s $node->logfile;
my $t0 = time;
kpctl($emu, 'set-access', $apikey, '--access', 'none');
my $seen = wait_for(10, sub {
	$node->safe_psql('postgres', "SELECT kms_status = 'revoked' AND revoked_since IS NOT NULL FROM byok_status()") eq 't' });
ok(defined $seen, 'authorization removed (401): status revoked, with since-when (' . ($seen // 'never') . ' s)');
kpctl($emu, 'set-access', $apikey, '--access', 'manager');
ok($node->poll_query_until('postgres', "SELECT kms_status = 'ok' AND revoked_since IS NULL FROM byok_status()"),
	'access back: status ok');
my $back_after = time - $t0;
cmp_ok($back_after, '<', $grace, "access came back within the grace ($back_after s)");
sleep($grace + 2);
is($node->safe_psql('postgres', 'SELECT 1 + 1'), '2', 'still serving after the grace: not locked');
ok(!-e $node->data_dir . '/byok/lock', 'no lock file');
my $log = slurp_file($node->logfile, $offset);
like($log, qr/WARNING:  byok key watchdog: access to the Key Protect key was revoked: .*\n(.*\n)*?.*HINT:  The cluster locks in $grace s \(byok.revoked_access_grace\) unless access comes back/,
	'log: WARNING revoked, with the grace');
like($log, qr/byok audit: \{"action":"byok.kms.access_revoked".*"outcome":"failure".*HTTP 401.*the cluster locks in $grace s/,
	'audit: byok.kms.access_revoked');
like($log, qr/byok audit: \{"action":"byok.kms.access_restored".*"outcome":"success".*not locked/,
	'audit: byok.kms.access_restored');
like($log, qr/LOG:  byok key watchdog: access to the Key Protect key is back after [\d.]+ s; the cluster is not locked/,
	'log: access back, not locked');

# --- a writer, the lock, and the rows --------------------------------------------------------
my $committed_file = "$PostgreSQL::Test::Utils::tmp_check/committed.txt";
my $round = 0;
sub start_writer
{
	unlink $committed_file;
	my $first = 100_000 * ++$round;
	my $last = $first + 99_999;
	my ($h, $p) = ($node->host, $node->port);
	return IPC::Run::start(
		[
			'bash', '-c',
			"for i in \$(seq $first $last); do psql -X -q -h '$h' -p $p -d postgres -c \"INSERT INTO committed VALUES (\$i)\" "
			  . ">/dev/null 2>&1 && echo \$i >> '$committed_file'; done"
		]);
}

sub expect_lock
{
	my ($what, $action, $reason_re, $limit, $after_lock) = @_;
	my $pm = pm_pid();
	my $off = -s $node->logfile;
	my $writer = start_writer();
	sleep 1;
	my $t = time;
	$action->();
	# locked: the watchdog (or its monitor) logs the decision, then the
	# immediate shutdown stops the cluster
	my $locked = wait_for($limit + 20, sub { slurp_file($node->logfile, $off) =~ /byok: LOCKED: / });
	$locked = time - $t if defined $locked;
	$after_lock->() if $after_lock;
	my $stopped = wait_for(20, sub { !kill(0, $pm) });
	$stopped = time - $t if defined $stopped;
	note(sprintf('%s: LOCKED %.2f s after the action, cluster stopped after %.2f s; bound %d s',
			$what, $locked // -1, $stopped // -1, $limit));
	ok(defined $locked && $locked <= $limit,
		"$what: locked within $limit s (" . (defined $locked ? sprintf('%.2f', $locked) : 'never') . ' s)');
	ok(defined $stopped, "$what: the cluster stopped");
	$writer->kill_kill;
	eval { $writer->finish };
	$node->_update_pid(0);
	like(slurp_file($node->logfile, $off), qr/byok: LOCKED: $reason_re; shutting the cluster down immediately/,
		"$what: log says LOCKED and why");
	like(slurp_file($node->logfile, $off), qr/byok audit: \{"action":"byok.lock".*"outcome":"success".*"detail":"$reason_re/,
		"$what: audit byok.lock");
	ok(-e $node->data_dir . '/byok/lock', "$what: lock file written");
	return $locked;
}

sub start_fails_locked
{
	my ($what, $reason_re) = @_;
	my $off = -s $node->logfile;
	ok(!$node->start(fail_ok => 1), "$what: a start while access is still revoked fails");
	like(slurp_file($node->logfile, $off), qr/FATAL:  cluster is locked: $reason_re/,
		"$what: the FATAL says the cluster is locked and why");
}

sub expect_unlock
{
	my ($what) = @_;
	my $off = -s $node->logfile;
	$node->start;
	like(slurp_file($node->logfile, $off), qr/byok: cluster unlocked: the Key Protect key is usable again/,
		"$what: pg_ctl start works and unlocks");
	ok(!-e $node->data_dir . '/byok/lock', "$what: lock file removed");
	my @ids = split /\n/, (-e $committed_file ? slurp_file($committed_file) : '');
	cmp_ok(scalar(@ids), '>', 0, "$what: the writer committed rows before the lock");
	is($node->safe_psql('postgres',
			'SELECT count(*) FROM unnest(ARRAY[' . join(',', @ids) . ']::int[]) AS i WHERE i NOT IN (SELECT id FROM committed)'),
		'0', "$what: every one of the " . scalar(@ids) . ' committed rows is there');
	ok($node->poll_query_until('postgres', "SELECT kms_status = 'ok' FROM byok_status()"), "$what: status ok");
}

my $revoked_re = 'access to the Key Protect key was revoked and did not come back within byok.revoked_access_grace \(6 s\)';

# --- authorization removed: 401 until the grace is over --------------------------------------
expect_lock('authorization removed (401)', sub { kpctl($emu, 'set-access', $apikey, '--access', 'none') },
	$revoked_re, $bound);
start_fails_locked('authorization removed', 'access to the Key Protect key was revoked');
kpctl($emu, 'set-access', $apikey, '--access', 'manager');
expect_unlock('authorization back');

# --- the API key deleted: IAM answers BXNIM0415E once the token expires ------------------------
expect_lock('API key deleted (BXNIM0415E)', sub {
		kpctl($emu, 'revoke-apikey', $apikey);
		kpctl($emu, 'advance-clock', '3700');	# the token byok holds expires
	}, $revoked_re, $bound);
like(slurp_file($node->logfile), qr/byok audit: \{"action":"byok.kms.access_revoked".*BXNIM0415E/,
	'API key deleted: audited with IAM\'s BXNIM0415E');
start_fails_locked('API key deleted', 'access to the Key Protect key was revoked');
my $new = kpctl($emu, 'add-apikey', '--access', 'manager');
open(my $fh, '>', $emu->{apikey_file}) or die $!;
print $fh $new->{apikey};
close $fh;
chmod 0600, $emu->{apikey_file};
$apikey = $new->{apikey};
expect_unlock('a new API key');

# --- the watchdog cannot run: stale heartbeat, then the lock --------------------------------
my $wd = $node->safe_psql('postgres', 'SELECT watchdog_pid FROM byok_status()');
$offset = -s $node->logfile;
# stale after 3 intervals without a poll, locked a grace later; the monitor
# looks once a second (documented bound), plus 2 s for a loaded machine
my $stale_bound = 3 * $poll + $grace + 2 + 2;
expect_lock('watchdog stopped (SIGSTOP)', sub {
		kill 'STOP', $wd;
		my $st = wait_for(10, sub {
			$node->safe_psql('postgres', 'SELECT watchdog_stale FROM byok_status()') eq 't' });
		ok(defined $st, 'stopped watchdog: byok_status says watchdog_stale (' . ($st // 'never') . ' s)');
		my ($r, $o, $e) = $node->psql('postgres', 'SELECT heartbeat_age > 3 FROM byok_status()');
		is($o, 't', 'byok_status: heartbeat age over 3 intervals');
		like($e, qr/WARNING:  byok key watchdog heartbeat is stale: no sign of life for [\d.]+ s/,
			'byok_status raises the stale WARNING');
	}, 'the key watchdog has not polled Key Protect for \d+ s: it cannot run, and the grace byok.revoked_access_grace \(6 s\) is over',
	$stale_bound,
	sub { kill 'CONT', $wd });
$log = slurp_file($node->logfile, $offset);
like($log, qr/WARNING:  byok key watchdog heartbeat is stale/, 'the monitor logged the stale heartbeat');
like($log, qr/byok audit: \{"action":"byok.watchdog.stale"/, 'audit: byok.watchdog.stale');
expect_unlock('watchdog running again');

# --- -1: never, with a WARNING at every start ------------------------------------------------
$node->append_conf('postgresql.conf', "byok.revoked_access_grace = -1\n");
$offset = -s $node->logfile;
$node->restart;
like(slurp_file($node->logfile, $offset),
	qr/WARNING:  byok.revoked_access_grace = -1: this cluster keeps serving after its Key Protect access is revoked/,
	'-1: a WARNING at start');
kpctl($emu, 'set-access', $apikey, '--access', 'none');
ok($node->poll_query_until('postgres', "SELECT kms_status = 'revoked' FROM byok_status()"), '-1: status revoked');
sleep($grace + 2);
is($node->safe_psql('postgres', 'SELECT count(*) > 0 FROM committed'), 't', '-1: still serving after the grace');
kpctl($emu, 'set-access', $apikey, '--access', 'manager');
$offset = -s $node->logfile;
$node->restart;
like(slurp_file($node->logfile, $offset), qr/WARNING:  byok.revoked_access_grace = -1/, '-1: the WARNING again at the next start');
$node->stop;

stop_emulator($emu);
done_testing();
