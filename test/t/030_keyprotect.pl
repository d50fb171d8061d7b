# Bring your own key: a cluster whose key material is wrapped by a Key
# Protect root key (the emulator, over HTTPS with its own CA).
#
# Covers: start/stop/restart; no unwrapped key material in any file; the
# FATAL of every failure class with the data directory untouched; transient
# faults retried under one correlation id; malformed CRNs rejected with the
# hint; rotation (byok_rotate_key and in Key Protect, picked up through
# rewrappedKeyVersion); pg_byok rekey local -> Key Protect -> another key
# -> local; byok_key_associations.
use strict;
use warnings;

use Digest::SHA qw(sha256_hex);
use File::Find;
use File::Copy;
use JSON::PP;
use MIME::Base64;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ByokTest;

my $emu = start_emulator();
my $key = kpctl($emu, 'create-key', '--name', 'byok-root');
my $crn = $key->{crn};
my $key_id = $key->{id};
like($crn, qr/^crn:v1:bluemix:public:kms:us-south:a\/\w+:[-\w]+:key:$key_id$/, 'emulator key CRN');

# postgresql.conf lines that point byok at the emulator
sub kms_conf
{
	my (%o) = @_;
	my $conf = "\nbyok.kms_endpoint = '$emu->{url}'\n"
	  . "byok.iam_endpoint = '$emu->{url}'\n"
	  . "byok.api_key_file = '" . ($o{api_key_file} // $emu->{apikey_file}) . "'\n"
	  . "byok.kms_ca_file = '" . ($o{ca_file} // $emu->{ca_file}) . "'\n"
	  . "byok.kms_timeout = " . ($o{timeout} // 3) . "\n"
	  . "byok.kms_max_retries = " . ($o{retries} // 4) . "\n";
	$conf .= "byok.key_crn = '$o{crn}'\n" if defined $o{crn};
	return $conf;
}

# A cluster encrypted under the Key Protect key $crn.
sub new_kp_node
{
	my ($name, $key_crn, %opts) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(%opts);
	$node->append_conf('postgresql.conf', kms_conf(crn => $key_crn));
	my ($rc, $out, $err) = pg_byok('enable', '-D', $node->data_dir);
	is($rc, 0, "$name: pg_byok enable with --key-crn from postgresql.conf")
	  or diag("stdout: $out\nstderr: $err");
	$node->append_conf('postgresql.conf', "shared_preload_libraries = 'byok'\n");
	return $node;
}

# Hash of every file of the data directory but the ones a start attempt
# may touch by design (pid/opts files, logs).
sub datadir_digest
{
	my ($dir) = @_;
	my @parts;
	find(
		{
			no_chdir => 1,
			wanted => sub {
				return unless -f $_;
				my $rel = substr($_, length($dir) + 1);
				return if $rel =~ m{^(postmaster\.(pid|opts)|log/|current_logfiles)};
				push @parts, "$rel:" . Digest::SHA->new(256)->addfile($_)->hexdigest;
			}
		},
		$dir);
	return sha256_hex(join("\n", sort @parts));
}

# Start must fail with a FATAL matching $re, data directory untouched.
sub start_fails
{
	my ($node, $re, $name) = @_;
	my $before = datadir_digest($node->data_dir);
	my $offset = -s $node->logfile;
	my $ok = $node->start(fail_ok => 1);
	ok(!$ok, "$name: server refuses to start");
	my $log = slurp_file($node->logfile, $offset);
	like($log, $re, "$name: FATAL says what to fix");
	is(datadir_digest($node->data_dir), $before, "$name: data directory unchanged");
	return $log;
}

sub set_conf
{
	my ($node, $text) = @_;
	$node->append_conf('postgresql.conf', $text);
}

my $node = new_kp_node('kp_a', $crn, extra => ['--data-checksums']);
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION byok');
$node->safe_psql('postgres',
	"CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 5000) g");
my $digest_sql = "SELECT md5(string_agg(v, ',' ORDER BY id)) FROM t";
my $data_md5 = $node->safe_psql('postgres', $digest_sql);

my $status = $node->safe_psql('postgres',
	"SELECT provider, key_crn, key_state, key_version, kms_endpoint, last_kms_contact IS NOT NULL FROM byok_status()");
is($status,
	"keyprotect|$crn|active|$key->{keyVersion}{id}|$emu->{url}|t",
	'byok_status shows Key Protect, CRN, key state, version, endpoint, last contact');
is($node->safe_psql('postgres', 'SELECT ok, key_state, message FROM byok_verify_key()'),
	't|active|ok', 'byok_verify_key: live unwrap round trip');

# --- no unwrapped key material in any file -----------------------------------
{
	my $token = kpctl($emu, 'token');
	$token = $token->{access_token} if ref $token eq 'HASH';
	my $body = encode_json({
		ciphertext => keyring_field($node, 'wrapped_key'),
		aad => [ 'byok-keyring-v1', 'system_identifier=' . keyring_field($node, 'system_identifier') ] });
	my ($out, $err) = ('', '');
	IPC::Run::run(
		[
			'curl', '-sS', '--cacert', $emu->{ca_file}, '-X', 'POST',
			'-H', "Authorization: Bearer $token",
			'-H', "bluemix-instance: $emu->{instance_id}",
			'-H', 'Content-Type: application/json',
			'--data-binary', $body,
			"$emu->{url}/api/v2/keys/$key_id/actions/unwrap"
		],
		'>', \$out, '2>', \$err);
	my $material = decode_base64(decode_json($out)->{plaintext});
	is(length($material), 32, 'unwrapped the keyring out of band (32 bytes of key material)');
	$node->safe_psql('postgres', 'CHECKPOINT');
	# binary needle: raw bytes, hex (both cases), base64 as Key Protect returns it
	my @needles = ($material, unpack('H*', $material), uc(unpack('H*', $material)),
		encode_base64($material, ''));
	my @hits;
	find(
		{
			no_chdir => 1,
			wanted => sub {
				return unless -f $_;
				my $content = slurp_file($_);
				for my $n (@needles)
				{
					push @hits, $_ if index($content, $n) >= 0;
				}
			}
		},
		$node->data_dir, $node->logfile);
	is_deeply(\@hits, [], 'the raw key material (raw, hex, base64) appears in no file of the data directory nor the server log');
	my $scan_self = index(slurp_file($emu->{state_dir} . '/state.json') // '', encode_base64($material, '')) >= 0;
	ok(!$scan_self, 'sanity: the emulator does not store the plaintext either');
	unlike(slurp_file($node->logfile), qr/\Q$token\E/, 'the IAM token is not logged');
}

$node->restart;
is($node->safe_psql('postgres', $digest_sql), $data_md5, 'restart: data reads back');
$node->stop;

# --- failure classes --------------------------------------------------------------
my $apikey_dir = $PostgreSQL::Test::Utils::tmp_check;
sub write_secret
{
	my ($name, $content, $mode) = @_;
	my $path = "$apikey_dir/$name";
	open(my $fh, '>', $path) or die $!;
	print $fh $content;
	close $fh;
	chmod($mode // 0600, $path);
	return $path;
}

my $bad_key = write_secret('unknown.apikey', "not-a-real-api-key-" . random_marker() . "\n");
set_conf($node, "byok.api_key_file = '$bad_key'\n");
start_fails($node,
	qr/FATAL:  could not unwrap the cluster key: IBM Cloud IAM rejected the API key\n.*DETAIL:  .*HTTP 400 BXNIM0415E.*\n.*HINT:  The API key in "\Q$bad_key\E" does not exist or was deleted/,
	'unknown API key (IAM 400 BXNIM0415E)');

my $open_key = write_secret('open.apikey', slurp_file($emu->{apikey_file}), 0644);
set_conf($node, "byok.api_key_file = '$open_key'\n");
start_fails($node, qr/FATAL:  could not unwrap the cluster key: byok is not configured correctly\n.*DETAIL:  API key file "\Q$open_key\E" has group or world access/,
	'API key file readable by others');

my $none = kpctl($emu, 'add-apikey', '--access', 'none');
$none = $none->{apikey} if ref $none eq 'HASH';
my $none_file = write_secret('none.apikey', $none);
set_conf($node, "byok.api_key_file = '$none_file'\n");
start_fails($node,
	qr/FATAL:  could not unwrap the cluster key: the database is not authorized to use the Key Protect key\n.*DETAIL:  .*HTTP 401.*\n.*HINT:  Grant the database's identity .* the Reader role/,
	'no access (401)');
set_conf($node, "byok.api_key_file = '$emu->{apikey_file}'\n");

kpctl($emu, 'fault', '--kind', 'status', '--status', '403', '--count', '1', '--path-contains', 'unwrap');
start_fails($node,
	qr/FATAL:  could not unwrap the cluster key: the database is not authorized to use the Key Protect key\n.*DETAIL:  .*HTTP 403/,
	'forbidden (403)');
kpctl($emu, 'clear-faults');

kpctl($emu, 'disable', $key_id);
start_fails($node,
	qr/FATAL:  could not unwrap the cluster key: the Key Protect key is not active\n.*DETAIL:  .*HTTP 409 KEY_ACTION_INVALID_STATE_ERR.*\n.*HINT:  The key is disabled/,
	'key disabled (409)');
kpctl($emu, 'advance-clock', '31');
kpctl($emu, 'enable', $key_id);
$node->start;
is($node->safe_psql('postgres', $digest_sql), $data_md5, 'key enabled again: starts, data intact');
$node->stop;

kpctl($emu, 'delete', $key_id, '--force');
start_fails($node,
	qr/FATAL:  could not unwrap the cluster key: the Key Protect key has been deleted\n.*DETAIL:  .*HTTP 410.*\n.*HINT:  The key was deleted\. Restore it in Key Protect within 30 days/,
	'key deleted (410)');
kpctl($emu, 'advance-clock', '31');
kpctl($emu, 'restore', $key_id);
$node->start;
is($node->safe_psql('postgres', $digest_sql), $data_md5, 'key restored: starts, data intact');
$node->stop;

# TLS: a CA that did not sign the emulator's certificate
my $other_ca = "$apikey_dir/other-ca.crt";
system('openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1',
	'-subj', '/CN=not the emulator CA', '-keyout', "$apikey_dir/other-ca.key",
	'-out', $other_ca, '-loglevel', 'quiet') == 0
  or system('openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1',
	'-subj', '/CN=not the emulator CA', '-keyout', "$apikey_dir/other-ca.key",
	'-out', $other_ca) == 0
  or die 'openssl req failed';
# (IAM, on the same emulator, keeps the right CA through byok.iam_ca_file:
# byok.kms_ca_file is for Key Protect)
set_conf($node, "byok.kms_ca_file = '$other_ca'\nbyok.iam_ca_file = '$emu->{ca_file}'\n");
start_fails($node,
	qr/FATAL:  could not unwrap the cluster key: TLS verification of the Key Protect endpoint failed\n.*\n.*HINT:  The endpoint's certificate does not verify against byok.kms_ca_file/,
	'TLS with the wrong CA');
set_conf($node, "byok.iam_ca_file = ''\n");
start_fails($node,
	qr/FATAL:  could not unwrap the cluster key: TLS verification of the IAM endpoint failed\n.*\n.*HINT:  IAM's certificate does not verify against the system CAs nor against "\Q$other_ca\E" \(byok.kms_ca_file\); set byok.iam_ca_file/,
	'TLS with the wrong CA for IAM too (byok.iam_ca_file empty: byok.kms_ca_file is added to the system CAs)');
set_conf($node, "byok.kms_ca_file = '$emu->{ca_file}'\n");

# endpoint down: nothing listens on port 1
set_conf($node, "byok.kms_endpoint = 'https://127.0.0.1:1'\nbyok.kms_max_retries = 1\n");
my $log = start_fails($node,
	qr/FATAL:  could not unwrap the cluster key: Key Protect is unreachable\n.*DETAIL:  .*the request to https:\/\/127.0.0.1:1\/api\/v2\/keys\/$key_id\/actions\/unwrap failed after 2 attempts: .*\n.*HINT:  Check byok.kms_endpoint/,
	'endpoint down');
set_conf($node, "byok.kms_endpoint = '$emu->{url}'\n");

# the emulator does not answer in time
kpctl($emu, 'fault', '--kind', 'timeout', '--count', '2', '--path-contains', 'unwrap');
start_fails($node,
	qr/FATAL:  could not unwrap the cluster key: Key Protect did not answer in time\n.*DETAIL:  .*the request to .* failed after 2 attempts: Operation timed out.*\n.*HINT:  No answer within byok.kms_timeout = 3 s/,
	'emulator timing out');
kpctl($emu, 'clear-faults');
set_conf($node, "byok.kms_max_retries = 4\n");

# --- transient faults are retried under one correlation id ----------------------
kpctl($emu, 'fault', '--kind', 'status', '--status', '503', '--count', '2', '--path-contains', 'unwrap');
kpctl($emu, 'fault', '--kind', 'status', '--status', '429', '--retry-after', '1', '--count', '1', '--path-contains', 'unwrap');
kpctl($emu, 'fault', '--kind', 'timeout', '--count', '1', '--path-contains', 'unwrap');
my $offset = -s $node->logfile;
$node->start;
$log = slurp_file($node->logfile, $offset);
my @retries = $log =~ /Key Protect unwrap attempt (\d) of 5 failed \(([^)]*)\), retrying in [\d.]+ s \(correlation id ([-0-9a-f]+)\)/g;
is(scalar(@retries) / 3, 4, 'four failed attempts logged (two 503, one 429, one timeout)');
my %ids = map { $retries[$_ * 3 + 2] => 1 } 0 .. 3;
is(scalar(keys %ids), 1, 'one correlation id across the retries');
my ($id) = keys %ids;
like($log, qr/byok audit: \{"action":"byok.kms.unwrap".*"correlation_id":"$id","outcome":"success"/,
	'the successful unwrap is audited under the same correlation id');
like($log, qr/attempt 3 of 5 failed \(HTTP 429\), retrying in 1\.0 s/, 'Retry-After of the 429 honoured');
is($node->safe_psql('postgres', $digest_sql), $data_md5, 'started after transient faults');
$node->stop;

# --- malformed CRNs ------------------------------------------------------------------
my $acct = $emu->{account};
my $inst = $emu->{instance_id};
my @bad_crns = (
	[ 'bare key id', $key_id ],
	[ 'wrong prefix', "urn:v1:bluemix:public:kms:us-south:a/$acct:$inst:key:$key_id" ],
	[ 'wrong version', "crn:v2:bluemix:public:kms:us-south:a/$acct:$inst:key:$key_id" ],
	[ 'missing key id field', "crn:v1:bluemix:public:kms:us-south:a/$acct:$inst:key" ],
	[ 'instance CRN', "crn:v1:bluemix:public:kms:us-south:a/$acct:$inst::" ],
	[ 'leading white space', " crn:v1:bluemix:public:kms:us-south:a/$acct:$inst:key:$key_id" ],
	[ 'white space inside', "crn:v1:bluemix:public:kms:us-south:a/$acct:$inst:key: $key_id" ],
	[ 'wrong service', "crn:v1:bluemix:public:cloud-object-storage:global:a/$acct:$inst:key:$key_id" ],
	[ 'account without a/', "crn:v1:bluemix:public:kms:us-south:$acct:$inst:key:$key_id" ],
	[ 'empty region', "crn:v1:bluemix:public:kms::a/$acct:$inst:key:$key_id" ],
	[ 'policy, not key', "crn:v1:bluemix:public:kms:us-south:a/$acct:$inst:policy:$key_id" ],
	[ 'extra field', "crn:v1:bluemix:public:kms:us-south:a/$acct:$inst:key:$key_id:x" ],
	[ 'bad characters in key id', "crn:v1:bluemix:public:kms:us-south:a/$acct:$inst:key:../$key_id" ],
	[ 'empty', "crn:" ],
);
for my $case (@bad_crns)
{
	my ($what, $bad) = @$case;
	set_conf($node, "byok.key_crn = '$bad'\n");
	my $offset2 = -s $node->logfile;
	ok(!$node->start(fail_ok => 1), "bad CRN ($what): refused");
	like(slurp_file($node->logfile, $offset2),
		qr/FATAL:  invalid value for parameter "byok.key_crn": invalid key CRN ".*"\n.*DETAIL:  .+\n.*HINT:  byok.key_crn takes the full CRN of a Key Protect root key, of the form crn:v1:<cname>:<ctype>:kms:<region>:a\/<account>:<instance>:key:<key-id>/,
		"bad CRN ($what): FATAL with the expected form");
	my ($rc, $out, $err) = pg_byok('rekey', '-D', $node->data_dir, '--key-crn', $bad);
	like($err, qr/invalid key CRN/, "bad CRN ($what): pg_byok rejects it too");
}
set_conf($node, "byok.key_crn = '$crn'\n");

# --- rotation ----------------------------------------------------------------------------
$node->start;
my $wrapped_before = keyring_field($node, 'wrapped_key');
my $new_version = $node->safe_psql('postgres', 'SELECT byok_rotate_key()');
my $versions = kpctl($emu, 'key', $key_id);
is($new_version, $versions->{keyVersion}{id}, 'byok_rotate_key returns the new Key Protect key version');
isnt($new_version, $key->{keyVersion}{id}, 'the version changed');
is($node->safe_psql('postgres', 'SELECT key_version FROM byok_status()'), $new_version,
	'byok_status shows the new version');
isnt(keyring_field($node, 'wrapped_key'), $wrapped_before, 'keyring rewrapped (ciphertext changed)');
is(keyring_field($node, 'key_version'), $new_version, 'keyring records the new version');
my ($ret, $stdout, $stderr) = $node->psql('postgres', 'SELECT byok_rotate_key()');
like($stderr, qr/ERROR:  could not rotate the key: the key was rotated within the last hour\nDETAIL:  .*HTTP 409 KEY_ROTATION_NOT_PERMITTED.*\nHINT:  Key Protect allows one rotation per key per hour/,
	'a second rotation within the hour is refused clearly');
like(slurp_file($node->logfile), qr/byok audit: \{"action":"byok.kms.rotate","crn":"\Q$crn\E".*"outcome":"success"/,
	'rotation audited');
$node->restart;
is($node->safe_psql('postgres', $digest_sql), $data_md5, 'restart after rotation');

# a rotation done in Key Protect is picked up at the next unwrap
$node->stop;
kpctl($emu, 'advance-clock', '3700');
kpctl($emu, 'rotate', $key_id);
my $kp_version = kpctl($emu, 'key', $key_id)->{keyVersion}{id};
$wrapped_before = keyring_field($node, 'wrapped_key');
$offset = -s $node->logfile;
$node->start;
like(slurp_file($node->logfile, $offset),
	qr/byok: stored the key material re-wrapped by Key Protect under key version $kp_version/,
	'unwrap after a rotation in Key Protect: rewrappedKeyVersion persisted');
is(keyring_field($node, 'key_version'), $kp_version, 'keyring has the rotated version');
isnt(keyring_field($node, 'wrapped_key'), $wrapped_before, 'and the re-wrapped ciphertext');
is($node->safe_psql('postgres', 'SELECT key_version FROM byok_status()'), $kp_version,
	'byok_status shows it');
is($node->safe_psql('postgres', 'SELECT byok_rewrap()'), $kp_version, 'byok_rewrap keeps the latest version');

# --- associations --------------------------------------------------------------------------
kpctl($emu, 'add-registration', $key_id, '--resource-crn',
	"crn:v1:bluemix:public:cloud-object-storage:global:a/$acct:bucket-instance:bucket:backups",
	'--description', 'backup bucket', '--prevent-deletion');
my $assoc = $node->safe_psql('postgres',
	"SELECT kind, resource_crn, description, prevent_key_deletion FROM byok_key_associations() ORDER BY kind");
like($assoc, qr/^key protect registration\|crn:v1:bluemix:public:cloud-object-storage:global:a\/$acct:bucket-instance:bucket:backups\|backup bucket\|t$/m,
	'byok_key_associations lists the Key Protect registration');
my $sysid = keyring_field($node, 'system_identifier');
like($assoc, qr/^this cluster\|postgresql:system_identifier=$sysid\|data directory .*, key \Q$crn\E\|f$/m,
	'and this cluster\'s own binding');
kpctl($emu, 'delete-registration', $key_id, '--resource-crn',
	"crn:v1:bluemix:public:cloud-object-storage:global:a/$acct:bucket-instance:bucket:backups");

# ALTER SYSTEM validates the CRN too
($ret, $stdout, $stderr) = $node->psql('postgres', "ALTER SYSTEM SET byok.key_crn = '$key_id'");
like($stderr, qr/ERROR:  invalid key CRN.*\n.*DETAIL:  This looks like a bare key id.*\n.*HINT:  byok.key_crn takes the full CRN/,
	'ALTER SYSTEM rejects a bare key id with the hint');
$node->stop;

# --- 422: the keyring of another cluster ------------------------------------------------
{
	my $other = new_kp_node('kp_b', $crn);
	my $mine = slurp_file($node->data_dir . '/byok/keyring');
	my $theirs_wrapped = keyring_field($other, 'wrapped_key');
	copy($node->data_dir . '/byok/keyring', "$apikey_dir/keyring.good") or die $!;
	(my $forged = $mine) =~ s/^wrapped_key = .*$/wrapped_key = $theirs_wrapped/m;
	$forged =~ s/^checksum = sha256:.*\n//m;
	# the other cluster's keyring has no fallback of this one's key
	$forged =~ s/^fallback_(key_version|wrapped_key) = .*\n//mg;
	$forged .= 'checksum = sha256:' . sha256_hex($forged) . "\n";
	open(my $fh, '>', $node->data_dir . '/byok/keyring') or die $!;
	print $fh $forged;
	close $fh;
	start_fails($node,
		qr/FATAL:  could not unwrap the cluster key: Key Protect cannot unwrap this cluster's key\n.*DETAIL:  .*HTTP 422 UNPROCESSABLE_CIPHERTEXT_ERR.*\n.*HINT:  The keyring was wrapped for another cluster/,
		'keyring of another cluster (422)');
	copy("$apikey_dir/keyring.good", $node->data_dir . '/byok/keyring') or die $!;

	# and a CRN that does not match the keyring
	my $key2 = kpctl($emu, 'create-key', '--name', 'other-root');
	set_conf($node, "byok.key_crn = '$key2->{crn}'\n");
	start_fails($node, qr/FATAL:  byok.key_crn does not match the keyring\n.*DETAIL:  byok.key_crn is \Q$key2->{crn}\E, but the keyring is wrapped by \Q$crn\E/,
		'CRN setting and keyring disagree');
	set_conf($node, "byok.key_crn = '$crn'\n");
	$node->start;
	is($node->safe_psql('postgres', $digest_sql), $data_md5, 'good keyring back: starts');
	$node->stop;
}

# --- pg_byok rekey: local -> Key Protect -> another key -> local ------------------------
{
	my $key2 = kpctl($emu, 'create-key', '--name', 'rekey-target');
	my $local = new_encrypted_node('kp_rekey', extra => ['--data-checksums'], conf => kms_conf());
	$local->start;
	$local->safe_psql('postgres', "CREATE TABLE r AS SELECT g FROM generate_series(1, 1000) g");
	$local->stop;
	my $sum = '500500';

	my ($rc, $out, $err) = pg_byok('rekey', '-D', $local->data_dir, '--key-crn', $crn);
	is($rc, 0, 'rekey local -> Key Protect') or diag("$out\n$err");
	like($out, qr/is now wrapped by \Q$crn\E/, 'rekey reports the new root key');
	is(keyring_field($local, 'provider'), 'keyprotect', 'keyring provider is keyprotect');
	set_conf($local, "byok.key_crn = '$crn'\n");
	$local->start;
	is($local->safe_psql('postgres', 'SELECT sum(g) FROM r'), $sum, 'starts under Key Protect');
	$local->stop;
	($rc, $out, $err) = pg_byok('verify', '-D', $local->data_dir);
	is($rc, 0, 'pg_byok verify after rekey to Key Protect') or diag("$out\n$err");

	($rc, $out, $err) = pg_byok('rekey', '-D', $local->data_dir, '--key-crn', $key2->{crn});
	is($rc, 0, 'rekey Key Protect -> another CRN') or diag("$out\n$err");
	is(keyring_field($local, 'key_crn'), $key2->{crn}, 'keyring names the new CRN');
	set_conf($local, "byok.key_crn = '$key2->{crn}'\n");
	$local->start;
	is($local->safe_psql('postgres', 'SELECT sum(g) FROM r'), $sum, 'starts under the other key');
	$local->stop;
	($rc, $out, $err) = pg_byok('verify', '-D', $local->data_dir);
	is($rc, 0, 'pg_byok verify after rekey to another key') or diag("$out\n$err");

	my $new_root = "$apikey_dir/rekeyed-root.key";
	($rc, $out, $err) = pg_byok('rekey', '-D', $local->data_dir, '--local', '--root-key-file', $new_root);
	is($rc, 0, 'rekey Key Protect -> local') or diag("$out\n$err");
	ok(-f $new_root && ((stat $new_root)[2] & 07777) == 0600, 'new local root key file, mode 0600');
	set_conf($local, "byok.key_crn = ''\nbyok.root_key_file = '$new_root'\n");
	$local->start;
	is($local->safe_psql('postgres', 'SELECT sum(g) FROM r'), $sum, 'starts under the local root key again');
	$local->stop;
	($rc, $out, $err) = pg_byok('verify', '-D', $local->data_dir);
	is($rc, 0, 'pg_byok verify after rekey back to local') or diag("$out\n$err");
}

# --- 404: a purged key -------------------------------------------------------------------
kpctl($emu, 'delete', $key_id, '--force');
kpctl($emu, 'advance-clock', 4 * 3600 + 60);
kpctl($emu, 'purge', $key_id);
start_fails($node,
	qr/FATAL:  could not unwrap the cluster key: the Key Protect key was not found\n.*DETAIL:  .*HTTP 404 KEY_NOT_FOUND_ERR.*\n.*HINT:  Check byok.key_crn/,
	'key purged (404)');

stop_emulator($emu);
done_testing();
