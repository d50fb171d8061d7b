# Key hygiene: no key ever leaves protected memory.
#
# A cluster under a Key Protect key (the emulator, so there is an IAM token
# and a key watchdog with a token of its own), after real work (pgbench, a
# checkpoint, queries):
#
# - the keys are recomputed independently from the emulator's state and the
#   keyring (unwrap in Python with the emulator's own code, HKDF-SHA256 and
#   the AES-256 key schedule in Perl), and proven right against the keyed
#   page marker byok wrote into a WAL segment;
# - every process of interest -- postmaster, a backend, checkpointer,
#   walwriter, background writer, autovacuum launcher, the key watchdog --
#   has key memory locked (VmLck > 0) and is not dumpable (/proc/PID/status
#   owned by root);
# - gcore (gdb) of the postmaster, a backend, the checkpointer, the
#   walwriter and the watchdog holds none of: the key material (raw, hex,
#   base64), any derived XTS data/tweak key or the marker key (whole or
#   either 16-byte half), the round keys 2..14 of the page body and WAL data
#   keys, an IAM token issued by the emulator (every one starts with the
#   same JWT header), the API key.  The core must hold a marker the backend
#   saw, so the search is proven able to find what is in it;
# - a backend killed with SIGSEGV (RLIMIT_CORE unlimited, core_pattern a
#   file name) leaves no core; with byok.allow_core_dumps = on the same
#   crash does leave one (so the environment could write it), and even that
#   core holds no key.
#
# gcore needs ptrace, which a non-dumpable process refuses to its own user:
# scripts/test.sh, run as root, serves requests in $BYOK_GCORE_DIR (it only
# dumps postgres processes of the test user).  Without it, the gcore checks
# are skipped with that reason.
#
# The ephemeral temporary-relation keys are random per start and cannot be
# recomputed from outside; they live in the same arena as the others.
use strict;
use warnings;

use Digest::SHA qw(hmac_sha256);
use File::Basename;
use IPC::Run;
use MIME::Base64;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use ByokTest;

# --- independent key derivation ---------------------------------------------------

# HKDF-SHA256 (RFC 5869), no salt (HashLen zero bytes).
sub hkdf
{
	my ($ikm, $info, $len) = @_;
	my $prk = hmac_sha256($ikm, "\0" x 32);
	my ($t, $okm) = ('', '');
	for (my $i = 1; length($okm) < $len; $i++)
	{
		$t = hmac_sha256($t . $info . chr($i), $prk);
		$okm .= $t;
	}
	return substr($okm, 0, $len);
}

# The AES S-box, and the AES-256 encryption key schedule (15 round keys).
my @sbox;
{
	my ($p, $q) = (1, 1);
	$sbox[0] = 0x63;
	do
	{
		$p = $p ^ (($p << 1) & 0xff) ^ (($p & 0x80) ? 0x1b : 0);
		$q ^= $q << 1;
		$q ^= $q << 2;
		$q ^= $q << 4;
		$q &= 0xff;
		$q ^= 0x09 if $q & 0x80;
		my $x = $q ^ (($q << 1) | ($q >> 7)) ^ (($q << 2) | ($q >> 6))
		  ^ (($q << 3) | ($q >> 5)) ^ (($q << 4) | ($q >> 4));
		$sbox[$p] = ($x ^ 0x63) & 0xff;
	} while ($p != 1);
}

sub aes256_schedule
{
	my ($key) = @_;
	my @w = map { [ unpack('C4', substr($key, 4 * $_, 4)) ] } 0 .. 7;
	my $rcon = 1;
	for my $i (8 .. 59)
	{
		my @t = @{ $w[ $i - 1 ] };
		if ($i % 8 == 0)
		{
			@t = map { $sbox[$_] } @t[ 1, 2, 3, 0 ];
			$t[0] ^= $rcon;
			$rcon = (($rcon << 1) ^ (($rcon & 0x80) ? 0x1b : 0)) & 0xff;
		}
		elsif ($i % 8 == 4)
		{
			@t = map { $sbox[$_] } @t;
		}
		$w[$i] = [ map { $w[ $i - 8 ][$_] ^ $t[$_] } 0 .. 3 ];
	}
	return join('', map { pack('C4', @$_) } @w);
}

# FIPS-197 appendix A.3: the schedule of 000102...1f ends in this round key.
is( unpack('H*',
		substr(aes256_schedule(pack('H*', join('', map { sprintf '%02x', $_ } 0 .. 31))), 224, 16)),
	'24fc79ccbf0979e9371ac23c6d68de36',
	'Perl AES-256 key schedule matches FIPS-197');

# --- the cluster ---------------------------------------------------------------------

my $emu = start_emulator();
my $key = kpctl($emu, 'create-key', '--name', 'hygiene-root');

my $node = PostgreSQL::Test::Cluster->new('hygiene');
$node->init;
$node->append_conf('postgresql.conf', qq{
byok.key_crn = '$key->{crn}'
byok.kms_endpoint = '$emu->{url}'
byok.iam_endpoint = '$emu->{url}'
byok.api_key_file = '$emu->{apikey_file}'
byok.kms_ca_file = '$emu->{ca_file}'
byok.kms_timeout = 3
byok.kms_poll_interval = 1
shared_buffers = 16MB
});
my ($rc, $out, $err) = pg_byok('enable', '-D', $node->data_dir);
is($rc, 0, 'cluster encrypted under the Key Protect key') or diag("$out\n$err");
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'byok'\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION byok');
ok($node->poll_query_until('postgres',
		"SELECT watchdog_pid IS NOT NULL AND kms_status = 'ok' FROM byok_status()"),
	'watchdog running, key status ok');

# --- the keys, recomputed --------------------------------------------------------------

my $sysid = $node->safe_psql('postgres', 'SELECT system_identifier FROM pg_control_system()');
my $wrapped = keyring_field($node, 'wrapped_key');
my $unwrap_py = <<'EOF';
import base64, json, sys
sys.path.insert(0, sys.argv[1])
import kpemu
state = json.load(open(sys.argv[2] + "/state.json"))
key = state["keys"][sys.argv[3]]
handle, iv, inner = kpemu.parse_envelope(sys.argv[4])
version = next(v for v in key["versions"] if v["id"] == handle)
pt = kpemu.unseal(base64.b64decode(version["material"]), key["id"], handle,
                  ["byok-keyring-v1", "system_identifier=" + sys.argv[5]], iv, inner)
print(pt.hex())
EOF
my ($py_out, $py_err) = ('', '');
IPC::Run::run([ 'python3', '-c', $unwrap_py, repo_root() . '/test/kms',
		$emu->{state_dir}, $key->{id}, $wrapped, $sysid ],
	'<', \undef, '>', \$py_out, '2>', \$py_err)
  or die "unwrap with the emulator's code failed: $py_err";
chomp $py_out;
my $material = pack('H*', $py_out);
is(length($material), 32, 'key material unwrapped from the keyring with the emulator state');

my %keys;    # name => 32 bytes
for my $fc (0 .. 2)
{
	for my $unit (qw(body head))
	{
		for my $half (qw(data tweak))
		{
			$keys{"page fork $fc $unit $half"} =
			  hkdf($material, "byok v2 page fork $fc $unit xts $half key", 32);
		}
	}
}
$keys{"wal $_"} = hkdf($material, "byok v2 wal xts $_ key", 32) for qw(data tweak);
$keys{'wal marker'} = hkdf($material, 'byok v2 wal marker key', 32);
$keys{"file $_"} = hkdf($material, "byok v2 file xts $_ key", 32) for qw(data tweak);
$keys{'file tail'} = hkdf($material, 'byok v2 file tail key', 32);

# Proof that these are the keys in use: the keyed marker of a WAL page.
$node->safe_psql('postgres', 'CREATE TABLE warm(i int); INSERT INTO warm VALUES (1); CHECKPOINT');
my $walfile = $node->safe_psql('postgres', 'SELECT pg_walfile_name(pg_current_wal_lsn())');
my $seg = slurp_file($node->data_dir . "/pg_wal/$walfile");
my $tli = unpack('V', substr($seg, 4, 4));
my $pageaddr = substr($seg, 8, 8);
my $stored_marker = unpack('V', substr($seg, 20, 4));
my $block = $pageaddr . pack('V', $tli) . 'mark';
my ($enc, $enc_err) = ('', '');
IPC::Run::run([ 'openssl', 'enc', '-aes-256-ecb', '-nopad', '-K', unpack('H*', $keys{'wal marker'}) ],
	'<', \$block, '>', \$enc, '2>', \$enc_err)
  or die "openssl enc failed: $enc_err";
my $want_marker = unpack('V', substr($enc, 0, 4)) || 1;
isnt($stored_marker, 0, 'the WAL segment is encrypted (page marker set)');
is($stored_marker, $want_marker, 'the recomputed WAL marker key gives the marker byok stored');

# --- what must never be in a core ------------------------------------------------------

my @secrets;    # [ name, bytes ]
push @secrets, [ 'key material', $material ], [ 'key material (hex)', unpack('H*', $material) ],
  [ 'key material (base64)', encode_base64($material, '') ];
for my $name (sort keys %keys)
{
	push @secrets, [ $name, $keys{$name} ],
	  [ "$name (first half)", substr($keys{$name}, 0, 16) ],
	  [ "$name (second half)", substr($keys{$name}, 16, 16) ];
}
for my $name ('page fork 0 body data', 'wal data')
{
	my $rk = aes256_schedule($keys{$name});
	push @secrets, [ "$name round key $_", substr($rk, 16 * $_, 16) ] for 2 .. 14;
}
# Every token the emulator issues starts with this (its fixed JWT header).
my $jwt_header = encode_base64('{"kid":"kpemu-1","alg":"HS256","typ":"JWT"}', '');
$jwt_header =~ tr{+/}{-_};
$jwt_header =~ s/=+$//;
push @secrets, [ 'IAM token (JWT header)', $jwt_header . '.' ];
my $apikey = slurp_file($emu->{apikey_file});
$apikey =~ s/\s+//g;
push @secrets, [ 'IAM API key', $apikey ];
note scalar(@secrets) . ' byte strings to look for';

my $secret_re = join('|', map { quotemeta($_->[1]) } @secrets);
$secret_re = qr/$secret_re/;
my %secret_name = map { $_->[1] => $_->[0] } @secrets;

# Names of the secrets found in a file (empty list: none).
sub secrets_in
{
	my ($path) = @_;
	open my $fh, '<:raw', $path or die "could not open $path: $!";
	local $/;
	my $data = <$fh>;
	close $fh;
	my %found;
	while ($data =~ /($secret_re)/g)
	{
		$found{ $secret_name{$1} }++;
	}
	return map { "$_ ($found{$_}x)" } sort keys %found;
}

sub file_has
{
	my ($path, $bytes) = @_;
	open my $fh, '<:raw', $path or die "could not open $path: $!";
	local $/;
	my $data = <$fh>;
	return index($data, $bytes) >= 0;
}

# --- real work, and the processes -------------------------------------------------------

my $marker = random_marker();
$node->command_ok([ 'pgbench', '-i', '-s', '2', '-q', $node->connstr('postgres') ], 'pgbench -i');
$node->command_ok([ 'pgbench', '-c', '2', '-t', '300', '-n', $node->connstr('postgres') ],
	'pgbench: 600 transactions');
my $session = $node->background_psql('postgres');
$session->query_safe("CREATE TABLE hygiene AS SELECT g, '$marker' || g AS t FROM generate_series(1, 20000) g");
$session->query_safe('CHECKPOINT');
my $count = $session->query_safe("SELECT count(*) FROM hygiene WHERE t LIKE '$marker%'");
is($count, 20000, 'rows with the marker written and read back through byok');
my $backend_pid = $session->query_safe('SELECT pg_backend_pid()');

# The postmaster's PID: the first line of postmaster.pid.
sub postmaster_pid
{
	my ($first) = split /\n/, slurp_file($node->data_dir . '/postmaster.pid');
	return $first;
}

my %pid = (postmaster => postmaster_pid(), backend => $backend_pid);
my $aux = "('checkpointer', 'walwriter', 'background writer', 'autovacuum launcher')";
ok($node->poll_query_until('postgres',
		"SELECT count(DISTINCT backend_type) = 4 FROM pg_stat_activity WHERE backend_type IN $aux"),
	'all auxiliary processes are up');
for my $row (split /\n/, $node->safe_psql('postgres',
	"SELECT backend_type, pid FROM pg_stat_activity WHERE backend_type IN $aux"))
{
	my ($type, $p) = split /\|/, $row;
	$pid{$type} = $p;
}
$pid{watchdog} = $node->safe_psql('postgres', 'SELECT watchdog_pid FROM byok_status()');
# the watchdog has polled Key Protect since (it holds a token of its own)
sleep 2;

# The cores are taken between two polls.  While a Key Protect request is in
# flight, libcurl's live request buffers (the Authorization header) hold the
# bearer token in ordinary memory; with polls every second a core can catch
# one (CI saw "IAM token (JWT header) (2x)" in the watchdog's core once).
# So: a long interval, then one complete poll under it (the reload wakes
# the watchdog, which polls and then sleeps 600 s) before any core.
my $reloaded_at = $node->safe_psql('postgres', 'SELECT now()');
$node->append_conf('postgresql.conf', "byok.kms_poll_interval = 600\n");
$node->reload;
ok($node->poll_query_until('postgres',
		"SELECT last_poll_success > '$reloaded_at' AND last_poll_success >= last_poll_attempt FROM byok_status()"),
	'the watchdog polled once more after the reload and now sleeps between polls');
unlike(slurp_file($node->logfile), qr/WARNING:  byok: (could not|cipher contexts are not)/,
	'no warning about key memory (locking, routing OpenSSL\'s allocations)');

my $test_uid = $>;
my %vmlck;
for my $proc (sort keys %pid)
{
	my $status = slurp_file("/proc/$pid{$proc}/status");
	my ($kb) = $status =~ /^VmLck:\s+(\d+) kB/m;
	$vmlck{$proc} = $kb;
	cmp_ok($kb // 0, '>', 0, "$proc (pid $pid{$proc}): VmLck $kb kB");
	my ($ruid) = $status =~ /^Uid:\s+(\d+)/m;
	# a non-dumpable process's /proc/PID files (not the directory) belong to root
	my $owner = (stat("/proc/$pid{$proc}/status"))[4];
	ok($ruid == $test_uid && $owner == 0,
		"$proc: not dumpable (runs as uid $ruid, /proc/PID/status owned by uid $owner)");
}
note 'VmLck kB: ' . join(', ', map { "$_ $vmlck{$_}" } sort keys %vmlck);

# --- gcore ------------------------------------------------------------------------------

# gcore of $pid into a file; undef (with the reason) if that cannot be done here.
my $gcore_skip;
sub gcore
{
	my ($name, $p) = @_;
	my $dir = $ENV{BYOK_GCORE_DIR};
	if (!defined $dir || !-d $dir)
	{
		$gcore_skip = 'gcore needs root for a non-dumpable process: run through scripts/test.sh as root';
		return undef;
	}
	my $tmp = "$dir/hygiene-$name.tmp";
	open my $fh, '>', $tmp or die "could not write $tmp: $!";
	print $fh "$p\n";
	close $fh;
	rename $tmp, "$dir/hygiene-$name.req" or die "rename: $!";
	my $waited = wait_for(300, sub { -e "$dir/hygiene-$name.done" });
	die "the gcore service did not answer for $name" unless defined $waited;
	my $core = "$dir/hygiene-$name.core";
	if (!-s $core)
	{
		diag("gcore of $name failed: " . (eval { slurp_file("$dir/hygiene-$name.log") } // ''));
		return undef;
	}
	return $core;
}

for my $proc (qw(postmaster backend checkpointer walwriter watchdog))
{
	my $core = gcore($proc, $pid{$proc});
	SKIP:
	{
		skip $gcore_skip, ($proc eq 'backend' ? 3 : 2) if defined $gcore_skip;
		ok(defined $core, "gcore of the $proc (pid $pid{$proc})") or next;
		my @found = secrets_in($core);
		is(join(', ', @found), '', "core of the $proc: no key, key material, IAM token or API key");
		ok(file_has($core, $marker), "core of the $proc holds the marker the backend saw (the search works)")
		  if $proc eq 'backend';
		note sprintf('core of the %s: %.1f MB', $proc, (-s $core) / 1e6);
		unlink $core unless @found;
	}
}
eval { $session->quit };

# --- a crash leaves no core -------------------------------------------------------------

my $core_pattern = slurp_file('/proc/sys/kernel/core_pattern');
chomp $core_pattern;
note "core_pattern: $core_pattern";

# Restart with RLIMIT_CORE raised (pg_ctl -c), SIGSEGV a backend; the core
# files in the data directory afterwards.
sub crash_backend
{
	my ($label) = @_;
	$node->stop;
	command_ok([ 'pg_ctl', '-D', $node->data_dir, '-l', $node->logfile, '-c', '-w', 'start' ],
		"$label: started with pg_ctl -c");
	$node->_update_pid(1);
	my $pm = postmaster_pid();
	like(slurp_file("/proc/$pm/limits"), qr/^Max core file size\s+unlimited/m,
		"$label: the postmaster may write cores of any size");
	my $s = $node->background_psql('postgres');
	$s->query_safe("SELECT count(*) FROM hygiene WHERE t LIKE '$marker%'");
	my $victim = $s->query_safe('SELECT pg_backend_pid()');
	kill 'SEGV', $victim;
	eval { $s->quit };
	wait_for(60, sub { !kill 0, $victim });
	# restart_after_crash is off in TAP clusters: the server shuts down
	wait_for(60, sub { !-e $node->data_dir . '/postmaster.pid' });
	$node->_update_pid(0);
	like(slurp_file($node->logfile), qr/(?:server process|client backend) \(PID $victim\) was terminated by signal 11/,
		"$label: backend $victim died of SIGSEGV");
	return grep { basename($_) =~ /^core/ } glob($node->data_dir . '/core*');
}

SKIP:
{
	skip "core_pattern \"$core_pattern\" is not a file name: only non-dumpability is checked", 10
	  if $core_pattern =~ /^\|/;

	my @cores = crash_backend('byok.allow_core_dumps = off');
	is_deeply(\@cores, [], 'a SIGSEGV\'d backend leaves no core');

	# the opt-out: the same crash writes a core (and even that one holds no key)
	$node->append_conf('postgresql.conf', "byok.allow_core_dumps = on\n");
	@cores = crash_backend('byok.allow_core_dumps = on');
	is(scalar(@cores), 1, 'with byok.allow_core_dumps = on the crash leaves a core');
	my @found = @cores ? secrets_in($cores[0]) : ('no core');
	is(join(', ', @found), '', 'that core holds no key either (the key memory is MADV_DONTDUMP)');
	unlink @cores;
	like(slurp_file($node->logfile), qr/WARNING:  byok: core dumps are allowed \(byok.allow_core_dumps = on\)/,
		'the opt-out is warned about');
}

done_testing();
