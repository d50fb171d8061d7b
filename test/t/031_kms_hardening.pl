# Nothing from the KMS is trusted unchecked, and Key Protect's own rules.
#
# Covers: byok.kms_endpoint / byok.iam_endpoint checked with libcurl's URL
# parser (a table of malicious and mistyped endpoints refused at start with
# a FATAL naming the setting; exact loopback http accepted); IAM URL
# normalisation (trailing slash, full /identity/token path); IAM verified
# with its own CA setting (byok.iam_ca_file) while Key Protect uses
# byok.kms_ca_file; hostile wrap/unwrap/rewrap answers (valid base64 of
# garbage, an object, a number, 2 MiB, truncated) leave the keyring
# byte-identical, say so, are audited as failures, and the next start
# works; the previous wrapped key kept as the fallback until a start, and
# used when the current one is refused; a rotate whose answer was lost is
# recognised as done; an imported-material key's rotation gets the hint.
use strict;
use warnings;

use Digest::SHA qw(sha256_hex);
use File::Copy;
use File::Path qw(make_path);
use MIME::Base64;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ByokTest;

my $emu = start_emulator();
my $key = kpctl($emu, 'create-key', '--name', 'byok-hardening');
my $crn = $key->{crn};
my $key_id = $key->{id};

# postgresql.conf lines that point byok at an emulator; the watchdog stays
# quiet (poll once an hour) so that only the statements under test touch
# the keyring
sub kms_conf
{
	my (%o) = @_;
	my $e = $o{emu} // $emu;
	my $conf = "\nbyok.kms_endpoint = '" . ($o{kms_endpoint} // $e->{url}) . "'\n"
	  . "byok.iam_endpoint = '" . ($o{iam_endpoint} // $e->{url}) . "'\n"
	  . "byok.api_key_file = '$e->{apikey_file}'\n"
	  . "byok.kms_timeout = 3\n"
	  . "byok.kms_max_retries = " . ($o{retries} // 1) . "\n"
	  . "byok.kms_poll_interval = 3600\n";
	$conf .= "byok.kms_ca_file = '$e->{ca_file}'\n" if $e->{ca_file};
	$conf .= "byok.key_crn = '$o{crn}'\n" if defined $o{crn};
	return $conf;
}

sub new_kp_node
{
	my ($name, %o) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	$node->append_conf('postgresql.conf', kms_conf(%o));
	my ($rc, $out, $err) = pg_byok('enable', '-D', $node->data_dir);
	is($rc, 0, "$name: pg_byok enable") or diag("stdout: $out\nstderr: $err");
	$node->append_conf('postgresql.conf', "shared_preload_libraries = 'byok'\n");
	return $node;
}

sub keyring_bytes
{
	my ($node) = @_;
	return slurp_file($node->data_dir . '/byok/keyring');
}

sub running
{
	my ($node) = @_;
	return defined $node->{_pid};
}

sub log_since
{
	my ($node, $offset) = @_;
	return slurp_file($node->logfile, $offset);
}

my $node = new_kp_node('hard', crn => $crn);
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION byok');
$node->safe_psql('postgres', 'CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g');
my $sum = '500500';
$node->stop;

# --- endpoints -----------------------------------------------------------------
my $port = $emu->{port};
my @bad_endpoints = (
	# [ setting, value, what, DETAIL pattern ]
	[ 'kms_endpoint', 'http://127.0.0.1@kms.attacker.invalid/', 'userinfo that looks like loopback', qr/holds user information/ ],
	[ 'iam_endpoint', 'http://localhost:80@iam.attacker.invalid/', 'user:password that looks like localhost:port', qr/holds user information/ ],
	[ 'kms_endpoint', 'http://[::1]@kms.attacker.invalid/', 'IPv6 loopback as userinfo', qr/holds user information/ ],
	[ 'iam_endpoint', 'http://localhost@evil', 'localhost as userinfo', qr/holds user information/ ],
	[ 'kms_endpoint', "https://user:secret\@kms.example.com:$port", 'userinfo in an https URL', qr/holds user information/ ],
	[ 'kms_endpoint', 'http://127.attacker.invalid/', 'host that starts with 127.', qr/libcurl reads this URL's host as "127\.attacker\.invalid"/ ],
	[ 'iam_endpoint', 'http://127.0.0.1.attacker.invalid', 'host that starts with 127.0.0.1', qr/host as "127\.0\.0\.1\.attacker\.invalid"/ ],
	[ 'kms_endpoint', "HTTP://127.0.0.1:$port", 'upper-case HTTP scheme', qr/scheme is not written in lower case/ ],
	[ 'iam_endpoint', "HTTPS://127.0.0.1:$port", 'upper-case HTTPS scheme', qr/scheme is not written in lower case/ ],
	[ 'kms_endpoint', "http://localhost.:$port", 'trailing dot on localhost', qr/host as "localhost\."/ ],
	[ 'iam_endpoint', "http://[0:0::1]:$port", 'another spelling of ::1', qr/written exactly so/ ],
	[ 'kms_endpoint', "http://[::ffff:127.0.0.1]:$port", 'IPv4-mapped IPv6 loopback', qr/written exactly so/ ],
	[ 'kms_endpoint', "http://%31%32%37.0.0.1:$port", 'percent-encoded 127.0.0.1', qr/written exactly so/ ],
	[ 'iam_endpoint', "http://2130706433:$port", '127.0.0.1 as one number', qr/written exactly so/ ],
	[ 'kms_endpoint', "http://127.0.0.1 :$port", 'a space', qr/contains white space/ ],
	[ 'iam_endpoint', "ftp://127.0.0.1:$port/", 'ftp scheme', qr/scheme is not https/ ],
	[ 'kms_endpoint', "127.0.0.1:$port", 'no scheme', qr/scheme is not https/ ],
	[ 'kms_endpoint', "$emu->{url}/?region=us-south", 'a query', qr/has a query/ ],
	[ 'iam_endpoint', "$emu->{url}/#identity", 'a fragment', qr/has a query \("\?"\) or a fragment/ ],
	[ 'kms_endpoint', 'https://', 'no host', qr/libcurl cannot parse it/ ],
);
cmp_ok(scalar(@bad_endpoints), '>=', 12, 'at least 12 malicious or mistyped endpoints');
for my $case (@bad_endpoints)
{
	my ($setting, $value, $what) = @$case[ 0 .. 2 ];
	my $detail_re = $case->[3];
	my $before = keyring_bytes($node);
	$node->append_conf('postgresql.conf', "byok.$setting = '$value'\n");
	my $offset = -s $node->logfile;
	ok(!$node->start(fail_ok => 1), "byok.$setting = '$value' ($what): refused");
	$node->stop if running($node);    # (old code started: keep going)
	my $log = log_since($node, $offset);
	like($log,
		qr/FATAL:  invalid value for parameter "byok\.$setting": "\Q$value\E"\n.*DETAIL:  [^\n]*$detail_re[^\n]*\n.*HINT:  Set byok\.$setting to an https URL/,
		"byok.$setting ($what): FATAL names the setting and the value, says why and what to set");
	is(keyring_bytes($node), $before, "byok.$setting ($what): keyring untouched");
	$node->append_conf('postgresql.conf', "byok.$setting = '$emu->{url}'\n");
}

# IAM URL normalisation: a trailing slash, or the full token path
for my $iam ("$emu->{url}/", "$emu->{url}/identity/token", "$emu->{url}/identity/token/")
{
	$node->append_conf('postgresql.conf', "byok.iam_endpoint = '$iam'\n");
	ok($node->start(fail_ok => 1), "byok.iam_endpoint = '$iam': starts");
	is($node->safe_psql('postgres', 'SELECT sum(g) FROM t'), $sum, "byok.iam_endpoint = '$iam': data reads back")
	  if running($node);
	$node->stop if running($node);
}
$node->append_conf('postgresql.conf', "byok.iam_endpoint = '$emu->{url}'\n");

# exact loopback http is accepted: an emulator over plain http
{
	my $plain = start_emulator(args => ['--http']);
	like($plain->{url}, qr{^http://127\.0\.0\.1:\d+$}, 'plain-http emulator on loopback');
	my $pkey = kpctl($plain, 'create-key', '--name', 'plain-http');
	my $pnode = new_kp_node('plainhttp', emu => $plain, crn => $pkey->{crn});
	for my $iam ("http://localhost:$plain->{port}", "http://localhost:$plain->{port}/identity/token")
	{
		$pnode->append_conf('postgresql.conf', "byok.iam_endpoint = '$iam'\n");
		ok($pnode->start(fail_ok => 1), "http://127.0.0.1 Key Protect with IAM at $iam: starts");
		is($pnode->safe_psql('postgres', 'SELECT 1'), '1', 'and serves') if running($pnode);
		$pnode->stop if running($pnode);
	}
	# [::1] passes the check (nothing listens there: the refusal is the network's)
	$pnode->append_conf('postgresql.conf', "byok.iam_endpoint = 'http://[::1]:1'\nbyok.kms_max_retries = 0\n");
	my $offset = -s $pnode->logfile;
	ok(!$pnode->start(fail_ok => 1), 'http://[::1]:1 (nothing listening): no start');
	my $log = log_since($pnode, $offset);
	unlike($log, qr/invalid value for parameter/, 'http://[::1] is accepted by the endpoint check');
	like($log, qr/FATAL:  could not unwrap the cluster key: Key Protect is unreachable/, 'the connection is what fails');
	stop_emulator($plain);
}

# --- CA settings: IAM has its own (additive to the system CAs) ----------------------
{
	# an IAM twin: the same accounts and token secret, its own CA
	my $twin_dir = $PostgreSQL::Test::Utils::tmp_check . '/iam_twin';
	make_path($twin_dir);
	chmod 0700, $twin_dir;
	copy("$emu->{state_dir}/state.json", "$twin_dir/state.json") or die $!;
	copy("$emu->{state_dir}/apikey", "$twin_dir/apikey") or die $!;
	chmod 0600, "$twin_dir/apikey";
	my $twin = start_emulator(state_dir => $twin_dir);
	isnt(slurp_file($twin->{ca_file}), slurp_file($emu->{ca_file}), 'the IAM twin has a CA of its own');

	$node->append_conf('postgresql.conf', "byok.iam_endpoint = '$twin->{url}'\n");
	my $offset = -s $node->logfile;
	ok(!$node->start(fail_ok => 1), 'IAM behind another CA, byok.iam_ca_file unset: refused');
	$node->stop if running($node);
	like(log_since($node, $offset),
		qr/FATAL:  could not unwrap the cluster key: TLS verification of the IAM endpoint failed\n.*DETAIL:  .*\n.*HINT:  IAM's certificate does not verify against the system CAs nor against "\Q$emu->{ca_file}\E" \(byok\.kms_ca_file\); set byok\.iam_ca_file/,
		'the FATAL names IAM and byok.iam_ca_file');

	$node->append_conf('postgresql.conf', "byok.iam_ca_file = '$twin->{ca_file}'\n");
	ok($node->start(fail_ok => 1), 'byok.iam_ca_file verifies IAM, byok.kms_ca_file Key Protect: starts');
	is($node->safe_psql('postgres', 'SELECT sum(g) FROM t'), $sum, 'and serves') if running($node);
	$node->stop if running($node);

	# byok.kms_ca_file is not used for IAM once byok.iam_ca_file is set
	$node->append_conf('postgresql.conf', "byok.iam_endpoint = '$emu->{url}'\nbyok.iam_ca_file = '$twin->{ca_file}'\n");
	$offset = -s $node->logfile;
	ok(!$node->start(fail_ok => 1), 'IAM with the Key Protect CA, byok.iam_ca_file another CA: refused');
	$node->stop if running($node);
	like(log_since($node, $offset), qr/TLS verification of the IAM endpoint failed/, 'byok.iam_ca_file alone verifies IAM');
	$node->append_conf('postgresql.conf', "byok.iam_ca_file = ''\n");
	stop_emulator($twin);
}

# --- hostile answers --------------------------------------------------------------
my @mutations = (
	[ 'garbage_b64', qr/the ciphertext Key Protect returned does not unwrap \(HTTP 4\d\d/ ],
	[ 'object', qr/its ciphertext is a JSON object, not a string/ ],
	[ 'number', qr/its ciphertext is a JSON int, not a string/ ],
	[ 'huge', qr/the answer is larger than 1048576 bytes; refused/ ],
	[ 'truncated', qr/Key Protect's answer is not a complete JSON object/ ],
);

# rewrap (byok_rewrap(); the rotation sync takes the same path)
$node->start;
for my $m (@mutations)
{
	my ($mutate, $why) = @$m;
	my $before = keyring_bytes($node);
	my $offset = -s $node->logfile;
	kpctl($emu, 'fault', '--kind', 'answer', '--mutate', $mutate, '--count', '1',
		'--path-contains', '/actions/rewrap');
	my ($ret, $out, $err) = $node->psql('postgres', 'SELECT byok_rewrap()');
	isnt($ret, 0, "rewrap answer $mutate: byok_rewrap() fails");
	like($err, qr/ERROR:  could not rewrap the cluster key: Key Protect's answer was refused\nDETAIL:  [^\n]*$why/,
		"rewrap answer $mutate: ERROR says the answer was refused and why");
	is(keyring_bytes($node), $before, "rewrap answer $mutate: keyring byte-identical");
	like(log_since($node, $offset), qr/byok audit: \{"action":"byok\.kms\.rewrap","crn":"\Q$crn\E".*"outcome":"failure"/,
		"rewrap answer $mutate: audited as a failure");
	kpctl($emu, 'clear-faults');
	$node->restart;
	is($node->safe_psql('postgres', 'SELECT sum(g) FROM t'), $sum, "rewrap answer $mutate: the next start works");
}

# a good rewrap: verified, stored, the previous wrapped key kept as the fallback
{
	my $old_wrapped = keyring_field($node, 'wrapped_key');
	my $old_version = keyring_field($node, 'key_version');
	my $offset = -s $node->logfile;
	kpctl($emu, 'reset-log');
	is($node->safe_psql('postgres', 'SELECT byok_rewrap()'), $old_version, 'a genuine rewrap succeeds');
	isnt(keyring_field($node, 'wrapped_key'), $old_wrapped, 'the keyring holds the new ciphertext');
	is(keyring_field($node, 'fallback_wrapped_key'), $old_wrapped, 'and the previous one as the fallback');
	my @unwraps = (log_since($node, $offset) =~ /"action":"byok\.kms\.rewrap"[^\n]*"outcome":"success"/g);
	is(scalar(@unwraps), 1, 'rewrap audited once, as a success');
	my $emulog = kpctl($emu, 'log');
	ok((grep { ($_->{action} // '') eq 'kms.secrets.unwrap' } @$emulog), 'the new ciphertext was unwrapped to verify it');

	# the current wrapped key refused: the start falls back to the previous one
	$node->stop;
	my $good = keyring_bytes($node);
	my $text = $good;
	my $garbage = encode_base64('x' x 120, '');
	$text =~ s/^wrapped_key = .*$/wrapped_key = $garbage/m;
	$text =~ s/^checksum = sha256:.*\n//m;
	$text .= 'checksum = sha256:' . sha256_hex($text) . "\n";
	open(my $fh, '>', $node->data_dir . '/byok/keyring') or die $!;
	print $fh $text;
	close $fh;
	$offset = -s $node->logfile;
	ok($node->start(fail_ok => 1), 'current wrapped key refused by Key Protect: starts with the fallback');
	like(log_since($node, $offset), qr/WARNING:  byok: started with the previous wrapped key\n.*DETAIL:  Key Protect refused the current wrapped key/,
		'a WARNING says so');
	is(keyring_field($node, 'wrapped_key'), $old_wrapped, 'the fallback is current again');
	is(keyring_field($node, 'fallback_wrapped_key'), undef, 'and no longer a fallback');
	is($node->safe_psql('postgres', 'SELECT sum(g) FROM t'), $sum, 'data reads back');

	# a start with the current wrapped key drops the fallback
	$node->safe_psql('postgres', 'SELECT byok_rewrap()');
	ok(defined keyring_field($node, 'fallback_wrapped_key'), 'rewrap again: a fallback');
	$node->restart;
	is(keyring_field($node, 'fallback_wrapped_key'), undef, 'a successful start drops the fallback');
	$node->stop;
}

# unwrap at start: after a rotation, Key Protect offers a re-wrapped ciphertext
for my $m (@mutations)
{
	my ($mutate, $why) = @$m;
	kpctl($emu, 'rotate', $key_id);
	my $rotated = kpctl($emu, 'key', $key_id)->{keyVersion}{id};
	isnt($rotated, keyring_field($node, 'key_version'), "unwrap answer $mutate: key rotated in Key Protect while the server was down");
	my $before = keyring_bytes($node);
	my $offset = -s $node->logfile;
	kpctl($emu, 'fault', '--kind', 'answer', '--mutate', $mutate, '--count', '1',
		'--path-contains', '/actions/unwrap');
	my $started = $node->start(fail_ok => 1);
	my $log = log_since($node, $offset);
	if ($mutate eq 'huge' || $mutate eq 'truncated')
	{
		# the whole answer is unusable: no key material, no start
		ok(!$started, "unwrap answer $mutate: refused at start");
		like($log, qr/FATAL:  could not unwrap the cluster key: Key Protect's answer was refused\n.*DETAIL:  [^\n]*$why/,
			"unwrap answer $mutate: FATAL says the answer was refused and why");
		like($log, qr/byok audit: \{"action":"byok\.kms\.unwrap".*"outcome":"failure"/,
			"unwrap answer $mutate: audited as a failure");
	}
	else
	{
		# the key material is good, the re-wrapped copy is not: start, keep the keyring
		ok($started, "unwrap answer $mutate: the server starts with the current wrapped key");
		like($log, qr/WARNING:  byok: the re-wrapped key material Key Protect offered was refused; the keyring keeps the current wrapped key\n.*DETAIL:  [^\n]*$why/,
			"unwrap answer $mutate: WARNING says why");
		like($log, qr/byok audit: \{"action":"byok\.kms\.rewrap".*"outcome":"failure"/,
			"unwrap answer $mutate: audited as a failure");
		# immediate: a fast shutdown wakes the key watchdog, which would
		# (rightly) sync the rotation before the keyring is compared
		$node->stop('immediate') if running($node);
	}
	is(keyring_bytes($node), $before, "unwrap answer $mutate: keyring byte-identical");
	kpctl($emu, 'clear-faults');
	$offset = -s $node->logfile;
	ok($node->start(fail_ok => 1), "unwrap answer $mutate: the next start works");
	is($node->safe_psql('postgres', 'SELECT sum(g) FROM t'), $sum, "unwrap answer $mutate: data reads back")
	  if running($node);
	like(log_since($node, $offset), qr/byok: stored the key material re-wrapped by Key Protect under key version $rotated/,
		"unwrap answer $mutate: the next start stores the genuine re-wrapped ciphertext (verified)");
	is(keyring_field($node, 'fallback_wrapped_key'), $before =~ /^wrapped_key = (.*)$/m ? $1 : '',
		"unwrap answer $mutate: the previous wrapped key is the fallback");
	$node->restart;    # a start with the new one drops the fallback
	$node->stop;
}

# wrap (pg_byok rekey onto another key; backup-key wraps take the same path)
{
	my $key2 = kpctl($emu, 'create-key', '--name', 'rekey-target');
	for my $m (@mutations)
	{
		my ($mutate, $why) = @$m;
		my $before = keyring_bytes($node);
		kpctl($emu, 'fault', '--kind', 'answer', '--mutate', $mutate, '--count', '1',
			'--path-contains', '/actions/wrap');
		my ($rc, $out, $err) = pg_byok('rekey', '-D', $node->data_dir, '--key-crn', $key2->{crn});
		isnt($rc, 0, "wrap answer $mutate: pg_byok rekey fails");
		like($err, qr/could not wrap the cluster key: Key Protect's answer was refused/, "wrap answer $mutate: says the answer was refused");
		like($err, qr/$why/, "wrap answer $mutate: and why");
		like($err, qr/byok audit: \{"action":"byok\.kms\.wrap","crn":"\Q$key2->{crn}\E".*"outcome":"failure"/,
			"wrap answer $mutate: audited as a failure");
		is(keyring_bytes($node), $before, "wrap answer $mutate: keyring byte-identical");
		kpctl($emu, 'clear-faults');
	}
	ok($node->start(fail_ok => 1), 'after the wrap faults: the next start works');
	is($node->safe_psql('postgres', 'SELECT sum(g) FROM t'), $sum, 'data reads back') if running($node);
}

# --- rotate: the answer is lost after Key Protect rotated -----------------------------
kpctl($emu, 'advance-clock', '3700');
{
	my $before = kpctl($emu, 'key', $key_id)->{keyVersion}{id};
	my $offset = -s $node->logfile;
	kpctl($emu, 'fault', '--kind', 'lost_answer', '--count', '1', '--path-contains', '/actions/rotate');
	my ($ret, $out, $err) = $node->psql('postgres', 'SELECT byok_rotate_key()');
	is($ret, 0, 'rotate whose first answer was lost: byok_rotate_key() succeeds') or diag($err);
	my $after = kpctl($emu, 'key', $key_id)->{keyVersion}{id};
	isnt($after, $before, 'Key Protect rotated once');
	is($out, $after, 'byok_rotate_key() returns the new version');
	is(keyring_field($node, 'key_version'), $after, 'the keyring is rewrapped under it');
	my @rotations = grep { ($_->{action} // '') eq 'kms.secrets.rotate' } @{ kpctl($emu, 'log') };
	is(scalar(@rotations), 2, 'two rotate requests: the lost one and the retry');
	is(scalar(grep { ($_->{status} // 0) == 409 } @rotations), 1, 'the retry got 409');
	my $log = log_since($node, $offset);
	like($log, qr/byok: Key Protect rotate of key \Q$crn\E: the answer to an earlier attempt was lost; Key Protect answered HTTP 409 KEY_ROTATION_NOT_PERMITTED to the retry, and the key's version changed from \Q$before\E to \Q$after\E: the rotation happened/,
		'the log says what happened');
	like($log, qr/byok audit: \{"action":"byok\.kms\.rotate","crn":"\Q$crn\E".*"outcome":"success"/, 'audited as a success');
}

# --- rotate: a key with imported material -----------------------------------------------
{
	my $imported = kpctl($emu, 'create-key', '--name', 'imported', '--payload', encode_base64('i' x 32, ''));
	$node->stop;
	my ($rc, $out, $err) = pg_byok('rekey', '-D', $node->data_dir, '--key-crn', $imported->{crn});
	is($rc, 0, 'rekey onto a key with imported material') or diag("$out\n$err");
	$node->append_conf('postgresql.conf', "byok.key_crn = '$imported->{crn}'\n");
	$node->start;
	my ($ret, $stdout, $stderr) = $node->psql('postgres', 'SELECT byok_rotate_key()');
	isnt($ret, 0, 'rotating an imported-material key fails');
	like($stderr,
		qr/ERROR:  could not rotate the key: the Key Protect key has imported key material\nDETAIL:  [^\n]*HTTP 400 KEY_PAYLOAD_REQ_ERR[^\n]*\nHINT:  The key was created with imported key material, and Key Protect rotates such a key only with new key material, which byok does not hold\. Rotate it in Key Protect with new material \(ibmcloud kp key rotate \Q$imported->{id}\E --key-material <base64>\); the byok key watchdog then rewraps the keyring under the new version\./,
		'ERROR with the hint to rotate in Key Protect with new material');
	unlike($stderr, qr/check byok\.kms_endpoint/i, 'not sent to check the endpoint');
	# rotated in Key Protect with new material: the rewrap follows
	kpctl($emu, 'rotate', $imported->{id}, '--payload', encode_base64('j' x 32, ''));
	my $v = kpctl($emu, 'key', $imported->{id})->{keyVersion}{id};
	is($node->safe_psql('postgres', 'SELECT byok_rewrap()'), $v, 'after a rotation with new material in Key Protect, the rewrap follows');
	$node->restart;
	is($node->safe_psql('postgres', 'SELECT sum(g) FROM t'), $sum, 'and the cluster restarts under it');
	$node->stop;
}

stop_emulator($emu);
done_testing();
