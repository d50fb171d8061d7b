# The key watchdog (poll interval 1 s): rotation synced, degraded while Key
# Protect is down, strict mode, its own health in byok_status, back after
# SIGTERM (3x) and SIGKILL (3x), no lock held across a hung Key Protect call
# (byok_status answers, a cancel ends byok_rotate_key), and the lock when
# the key is deleted or disabled -- with every committed transaction back
# once the key is usable again.
use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use ByokTest;

my $emu = start_emulator();
my $key = kpctl($emu, 'create-key', '--name', 'watched-root');
my $key_id = $key->{id};

my $node = PostgreSQL::Test::Cluster->new('watched');
$node->init;
$node->append_conf('postgresql.conf', qq{
byok.key_crn = '$key->{crn}'
byok.kms_endpoint = '$emu->{url}'
byok.iam_endpoint = '$emu->{url}'
byok.api_key_file = '$emu->{apikey_file}'
byok.kms_ca_file = '$emu->{ca_file}'
byok.kms_timeout = 2
byok.kms_poll_interval = 1
# a killed watchdog is a crash: the postmaster restarts everything (the TAP
# default is off)
restart_after_crash = on
});
my ($rc, $out, $err) = pg_byok('enable', '-D', $node->data_dir);
is($rc, 0, 'cluster encrypted under the Key Protect key') or diag("$out\n$err");
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'byok'\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION byok; CREATE EXTENSION amcheck');

sub status
{
	my ($cols) = @_;
	return $node->safe_psql('postgres', "SELECT $cols FROM byok_status()");
}

ok($node->poll_query_until('postgres', "SELECT watchdog_pid IS NOT NULL AND kms_status = 'ok' FROM byok_status()"),
	'watchdog running, key status ok');

# --- rotation in Key Protect is synced ------------------------------------------------
my $wrapped_before = keyring_field($node, 'wrapped_key');
kpctl($emu, 'rotate', $key_id);
my $new_version = kpctl($emu, 'key', $key_id)->{keyVersion}{id};
my $took = wait_for(5, sub { (keyring_field($node, 'key_version') // '') eq $new_version });
ok(defined $took && $took <= 2.5, 'rotation synced within 2 polls (' . ($took // 'never') . ' s)');
isnt(keyring_field($node, 'wrapped_key'), $wrapped_before, 'keyring ciphertext changed');
is(status('key_version'), $new_version, 'byok_status shows the new key version');
is(status('synced_at IS NOT NULL'), 't', 'byok_status says when it synced');
my $log = slurp_file($node->logfile);
like($log, qr/byok key watchdog: syncing KMS state: key \S+ was rotated to version $new_version/,
	'log: syncing KMS state');
like($log, qr/byok audit: \{"action":"byok.kms.rewrap".*"key_version":"$new_version".*"outcome":"success".*"detail":"syncing KMS state"\}/,
	'audit: byok.kms.rewrap, syncing KMS state');
$node->restart;
is(status('key_version'), $new_version, 'restart after the synced rotation');

# --- Key Protect unreachable: degraded, then ok again -----------------------------------
my $port = $emu->{port};
stop_emulator($emu);
ok($node->poll_query_until('postgres', "SELECT kms_status = 'degraded' FROM byok_status()"),
	'emulator down: status degraded');
sleep 10;                                   # about ten polls (with backoff)
is(status("kms_status, degraded_since IS NOT NULL, last_error IS NOT NULL"), 'degraded|t|t',
	'still degraded after ten seconds, with since-when and the error');
is($node->safe_psql('postgres', 'SELECT 1 + 1'), '2', 'and still serving with the keys in memory');
like(slurp_file($node->logfile), qr/byok key watchdog: could not check the key: Key Protect is unreachable; serving with the keys in memory/,
	'log says why, once');
$emu = start_emulator(state_dir => $emu->{state_dir}, args => [ '--port', $port ]);
ok($node->poll_query_until('postgres', "SELECT kms_status = 'ok' FROM byok_status()"),
	'emulator back: status ok again');

# --- the watchdog's own health in byok_status ---------------------------------------------
ok($node->poll_query_until('postgres',
		'SELECT last_poll_attempt IS NOT NULL AND last_poll_success IS NOT NULL AND heartbeat_age < 3 '
		  . 'AND NOT watchdog_stale AND watchdog_starts >= 1 FROM byok_status()'),
	'byok_status: last poll attempt, last success, a fresh heartbeat');

# --- the watchdog terminated three times: it always comes back ------------------------------
# SIGTERM outside a shutdown exits with code 1, so the postmaster starts it
# again after bgw_restart_time (1 s); code 0 would remove it for good.
sub watchdog_back
{
	my ($old_pid) = @_;
	return wait_for(30, sub {
		my ($r, $o) = $node->psql('postgres', 'SELECT watchdog_pid FROM byok_status()');
		return $r == 0 && $o =~ /^\d+$/ && $o ne $old_pid && kill(0, $o);
	});
}

my $restart_interval = 1;    # bgw_restart_time
for my $n (1 .. 3)
{
	my $pid = status('watchdog_pid');
	my $offset = -s $node->logfile;
	kill 'TERM', $pid;
	my $took = watchdog_back($pid);
	note(sprintf('watchdog back %.2f s after SIGTERM %d (restart interval %d s)', $took // -1, $n, $restart_interval));
	ok(defined $took && $took <= $restart_interval + 3,
		"watchdog SIGTERM ($n): back within its restart interval + 3 s (" . (defined $took ? sprintf('%.2f', $took) : 'never') . ' s)');
	my $log = slurp_file($node->logfile, $offset);
	like($log, qr/LOG:  byok key watchdog terminated by SIGTERM; the postmaster starts it again in 1 s/,
		"watchdog SIGTERM ($n): logged at LOG");
	like($log, qr/LOG:  byok key watchdog started again \(start \d+ since the server started\)/,
		"watchdog SIGTERM ($n): its start again logged");
}
is(status('watchdog_starts'), '4', 'byok_status counts the starts');

# SIGKILL is a crash: the postmaster restarts the whole cluster
for my $n (1 .. 3)
{
	my $pid = status('watchdog_pid');
	kill 'KILL', $pid;
	my $took = watchdog_back($pid);
	note(sprintf('watchdog back %.2f s after SIGKILL %d (crash restart of the cluster)', $took // -1, $n));
	ok(defined $took && $took <= $restart_interval + 10,
		"watchdog killed with SIGKILL ($n): back (" . (defined $took ? sprintf('%.2f', $took) : 'never') . ' s)');
}
ok($node->poll_query_until('postgres', "SELECT kms_status = 'ok' AND NOT watchdog_stale FROM byok_status()"),
	'after the kills: status ok, heartbeat fresh');

# --- no lock across I/O: a Key Protect call that hangs for 30 s --------------------------------
# byok_rotate_key() rotates, then its rewrap hangs (the emulator answers
# after 30 s); byok_status() must not wait for it, and a cancel ends it.
$node->append_conf('postgresql.conf', "byok.kms_timeout = 60\n");
$node->reload;
ok($node->poll_query_until('postgres', "SELECT current_setting('byok.kms_timeout') = '1min'"), 'request timeout 60 s');
kpctl($emu, 'config', '--rotate-interval', '0');    # the key was rotated minutes ago
kpctl($emu, 'fault', '--kind', 'latency', '--delay', '30', '--count', '2', '--path-contains', '/actions/rewrap');
my ($rot_out, $rot_err) = ('', '');
my $rotator = IPC::Run::start(
	[ 'psql', '-X', '-h', $node->host, '-p', $node->port, '-d', 'postgres', '-c', 'SELECT byok_rotate_key()' ],
	'>', \$rot_out, '2>', \$rot_err, init => sub { $ENV{PGAPPNAME} = 'rotator' });
my $rot_pid;
ok(defined wait_for(20, sub {
	$rot_pid = $node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE application_name = 'rotator' AND state = 'active' "
		  . "AND now() - query_start > interval '2 s'");
	return $rot_pid =~ /^\d+$/ }), 'byok_rotate_key() is waiting for the hung rewrap');
my $worst = 0;
for my $i (1 .. 3)
{
	my $t0 = time;
	my $st = $node->safe_psql('postgres', 'SELECT kms_status FROM byok_status()');
	my $took = time - $t0;
	$worst = $took if $took > $worst;
	usleep(200_000);
}
note(sprintf('byok_status() during a hung Key Protect call: slowest of 3 calls %.3f s', $worst));
cmp_ok($worst, '<', 1, sprintf('byok_status() returns within 1 s while a Key Protect call hangs (%.3f s)', $worst));
my $t_cancel = time;
$node->safe_psql('postgres', "SELECT pg_cancel_backend($rot_pid)");
my $cancelled = wait_for(20, sub {
	$node->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE pid = $rot_pid AND state = 'active'") eq '0' });
eval { $rotator->finish };
$cancelled = time - $t_cancel if defined $cancelled;
note(sprintf('byok_rotate_key() cancelled %.2f s after pg_cancel_backend', $cancelled // -1));
ok(defined $cancelled && $cancelled <= 3,
	'pg_cancel_backend ends byok_rotate_key() during the hang within 3 s (' . (defined $cancelled ? sprintf('%.2f', $cancelled) : 'never') . ' s)');
like($rot_err, qr/canceling statement due to user request/, 'the rotate was cancelled');
kpctl($emu, 'clear-faults');
$node->append_conf('postgresql.conf', "byok.kms_timeout = 2\n");
$node->reload;
my $rotated = kpctl($emu, 'key', $key_id)->{keyVersion}{id};
ok(defined wait_for(60, sub { (keyring_field($node, 'key_version') // '') eq $rotated }),
	'the watchdog syncs the rotation afterwards');

# --- delete the key under load: lock -------------------------------------------------------
$node->safe_psql('postgres', 'CREATE TABLE committed (id int PRIMARY KEY)');
command_ok([ 'pgbench', '-i', '-s', '1', '-q', '-h', $node->host, '-p', $node->port, 'postgres' ],
	'pgbench -i');

my $committed_file = "$PostgreSQL::Test::Utils::tmp_check/committed.txt";
my $load_round = 0;
sub start_load
{
	unlink $committed_file;
	my $first = 100_000 * ++$load_round;
	my $last = $first + 99_999;
	my $h = $node->host;
	my $p = $node->port;
	my $writer = IPC::Run::start(
		[
			'bash', '-c',
			"for i in \$(seq $first $last); do psql -X -q -h '$h' -p $p -d postgres -c \"INSERT INTO committed VALUES (\$i)\" "
			  . ">/dev/null 2>&1 && echo \$i >> '$committed_file'; done"
		]);
	my $bench = IPC::Run::start(
		[ 'pgbench', '-n', '-c', '2', '-T', '60', '-h', $h, '-p', $p, 'postgres' ],
		'>', '/dev/null', '2>', '/dev/null');
	return ($writer, $bench);
}

sub check_back
{
	my ($what) = @_;
	my @ids = split /\n/, (-e $committed_file ? slurp_file($committed_file) : '');
	cmp_ok(scalar(@ids), '>', 0, "$what: the writer committed transactions before the lock");
	my $missing = $node->safe_psql('postgres',
		'SELECT count(*) FROM unnest(ARRAY[' . join(',', @ids) . ']::int[]) AS i WHERE i NOT IN (SELECT id FROM committed)');
	is($missing, '0', "$what: every one of the " . scalar(@ids) . ' committed transactions is back');
	is($node->safe_psql('postgres',
			'SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT sum(bbalance) FROM pgbench_branches) '
			  . 'AND (SELECT sum(bbalance) FROM pgbench_branches) = (SELECT sum(tbalance) FROM pgbench_tellers) '
			  . 'AND (SELECT sum(tbalance) FROM pgbench_tellers) = (SELECT coalesce(sum(delta), 0) FROM pgbench_history)'),
		't', "$what: pgbench balance invariant holds");
	my ($arc, $aout, $aerr) = ('', '', '');
	IPC::Run::run([ 'pg_amcheck', '--heapallindexed', '-h', $node->host, '-p', $node->port, 'postgres' ],
		'>', \$aout, '2>', \$aerr);
	is($aout . $aerr, '', "$what: amcheck clean");
}

# pids of the postmaster (--cluster-name=watched) and its children
# ("postgres: watched: ...")
sub cluster_processes
{
	my @pids;
	for my $dir (glob('/proc/[0-9]*'))
	{
		open(my $fh, '<', "$dir/cmdline") or next;
		my $cmd = do { local $/; <$fh> } // '';
		close $fh;
		$cmd =~ s/\0/ /g;
		push @pids, substr($dir, 6)
		  if $cmd =~ m{^\S*postgres\b.*--cluster-name=watched\b} || $cmd =~ /^postgres: watched: /;
	}
	return @pids;
}

sub expect_lock
{
	my ($what, $action, $reason_re) = @_;
	my $pm_pid = $node->safe_psql('postgres', 'SELECT pg_backend_pid()') && slurp_file($node->data_dir . '/postmaster.pid') =~ /^(\d+)/ ? $1 : undef;
	my ($writer, $bench) = start_load();
	sleep 2;
	my $t0 = time;
	$action->();
	my $took = wait_for(15, sub { !kill(0, $pm_pid) });
	# bound (docs/key-lifecycle.md): poll interval 1 s + request timeout 2 s, plus the stop
	note(sprintf('%s: cluster LOCKED and stopped %.2f s after the action (bound: poll 1 s + timeout 2 s + 3 s to stop)',
			$what, $took // -1));
	ok(defined $took && $took <= 1 + 5, "$what: cluster stopped within poll + 5 s (" . ($took // 'never') . ' s)');
	$writer->kill_kill; $bench->kill_kill;
	eval { $writer->finish }; eval { $bench->finish };
	ok(!-e $node->data_dir . '/postmaster.pid', "$what: no postmaster.pid left");
	is(join(',', cluster_processes()), '', "$what: no process of the cluster remains");
	$node->_update_pid(0);
	like(slurp_file($node->logfile), qr/byok: LOCKED: $reason_re; shutting the cluster down immediately/,
		"$what: log says LOCKED and why");
	like(slurp_file($node->logfile), qr/byok audit: \{"action":"byok.lock".*"outcome":"success".*"detail":"[^"]*$reason_re/,
		"$what: audit byok.lock");

	my $offset = -s $node->logfile;
	ok(!$node->start(fail_ok => 1), "$what: a start while locked fails");
	like(slurp_file($node->logfile, $offset),
		qr/FATAL:  cluster is locked: $reason_re\n.*DETAIL:  Locked at \S+ by the byok key watchdog; key \Q$key->{crn}\E.*\n.*HINT:  Committed data is intact\. Enable the key in Key Protect, or restore it/,
		"$what: the lock FATAL says why, since when and what restores access");
	my ($src, $sout) = pg_byok('status', '-D', $node->data_dir);
	like($sout, qr/^state:\s+LOCKED since \S+\nlock reason:\s+$reason_re/m, "$what: pg_byok status shows LOCKED with the reason");
}

sub expect_unlock
{
	my ($what) = @_;
	my $offset = -s $node->logfile;
	$node->start;
	like(slurp_file($node->logfile, $offset), qr/byok: cluster unlocked: the Key Protect key is usable again/,
		"$what: the start unlocks");
	ok(!-e $node->data_dir . '/byok/lock', "$what: lock file removed");
	check_back($what);
}

expect_lock('deleted key', sub { kpctl($emu, 'delete', $key_id, '--force') },
	'the Key Protect key has been deleted \(destroyed\)');
kpctl($emu, 'advance-clock', '31');
kpctl($emu, 'restore', $key_id);
expect_unlock('key restored');

expect_lock('disabled key', sub { kpctl($emu, 'disable', $key_id) },
	'the Key Protect key is disabled \(suspended\)');
kpctl($emu, 'advance-clock', '31');
kpctl($emu, 'enable', $key_id);
expect_unlock('key enabled');

# --- strict mode: lock when Key Protect does not answer for 5 s -------------------------
$node->append_conf('postgresql.conf', "byok.lock_when_unreachable_for = 5\n");
$node->reload;
ok($node->poll_query_until('postgres', "SELECT kms_status = 'ok' FROM byok_status()"), 'strict mode set');
my $pm = slurp_file($node->data_dir . '/postmaster.pid') =~ /^(\d+)/ ? $1 : 0;
stop_emulator($emu);
my $t = wait_for(20, sub { !kill(0, $pm) });
ok(defined $t && $t <= 12, 'strict mode: locked after 5 s without an answer (' . ($t // 'never') . ' s)');
$node->_update_pid(0);
like(slurp_file($node->logfile), qr/byok: LOCKED: Key Protect has not answered for more than 5 s/,
	'strict mode: the reason is logged');
$emu = start_emulator(state_dir => $emu->{state_dir}, args => [ '--port', $port ]);
$node->append_conf('postgresql.conf', "byok.lock_when_unreachable_for = 0\n");
$node->start;
is($node->safe_psql('postgres', 'SELECT count(*) > 0 FROM committed'), 't',
	'strict mode: the key answers again, the cluster starts and unlocks');
$node->stop;

stop_emulator($emu);
done_testing();
