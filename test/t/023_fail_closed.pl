
# Copyright (c) byok contributors

# Fail closed: whenever byok cannot run exactly as configured, the server
# refuses to start with a FATAL that says why, and leaves the data directory
# exactly as it was (every file compared by content, except postmaster.pid
# and postmaster.opts):
#
#   (a) the storage hooks cannot be installed (simulated with
#       BYOK_TEST_BREAK_HOOKS=1 in the server's environment);
#   (b) the keyring is missing;
#   (c) the keyring is corrupt: every single-byte flip is refused -- by
#       pg_byok status and verify and by a bare "postgres -D" for every byte
#       position, and by "pg_ctl start" for 40 random positions;
#   (d) the root key file holds another key;
#   (e) the root key file is readable by group/others;
#   (f) the root key file is missing;
#   (g) full_page_writes = off;
#   (h) on a stock server, CREATE EXTENSION byok (byok not preloaded) fails.
#
# After each case the good state is restored, and the server starts and
# reads back its data.

use strict;
use warnings;

use Digest::SHA;
use File::Copy qw(copy move);
use File::Find;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use ByokTest;

my $START_POSITIONS = 40;

# sha256 of every file below $dir, but postmaster.pid / postmaster.opts.
sub dir_hashes
{
	my ($dir) = @_;
	my %h;
	find(
		{
			no_chdir => 1,
			wanted   => sub {
				return unless -f $File::Find::name;
				(my $rel = $File::Find::name) =~ s{^\Q$dir\E/}{};
				return if $rel =~ m{^postmaster\.(pid|opts)$};
				return if $rel =~ m{^(log|pg_log)/};
				my $sha = Digest::SHA->new(256);
				$sha->addfile($File::Find::name, 'b');
				$h{$rel} = $sha->hexdigest;
			}
		},
		$dir);
	return \%h;
}

my $node = new_encrypted_node('closed');
my $pgdata  = $node->data_dir;
my $rootkey = root_key_path('closed');
my $keyring = "$pgdata/byok/keyring";
my $marker  = random_marker();

$node->start;
$node->safe_psql('postgres',
	"CREATE TABLE t AS SELECT i, '$marker' || i AS v FROM generate_series(1, 5000) i"
);
my $expected = $node->safe_psql('postgres',
	q{SELECT count(*) || ' ' || md5(string_agg(v, ',' ORDER BY i)) FROM t});
$node->stop;

# The server starts again and reads back the data.
sub check_good
{
	my ($label) = @_;
	$node->rotate_logfile;
	ok($node->start(fail_ok => 1), "$label: the server starts again")
	  or return;
	is( $node->safe_psql(
			'postgres',
			q{SELECT count(*) || ' ' || md5(string_agg(v, ',' ORDER BY i)) FROM t}
		),
		$expected,
		"$label: the data reads back");
	$node->stop;
}

# The server refuses to start, logs a FATAL matching $re, and the data
# directory is unchanged.
sub check_refused
{
	my ($label, $re) = @_;
	my $before = dir_hashes($pgdata);
	$node->rotate_logfile;
	my $started = $node->start(fail_ok => 1);
	ok(!$started, "$label: the server refuses to start");
	$node->stop if $started;
	my $log = slurp_file($node->logfile);
	like($log, $re, "$label: the log says why");
	ok(!-e "$pgdata/postmaster.pid", "$label: no postmaster.pid left");
	is_deeply(dir_hashes($pgdata), $before,
		"$label: the data directory is unchanged");
	return $log;
}

check_good('initially');

###########################################################################
# (a) storage hooks not installable
###########################################################################

{
	local $ENV{BYOK_TEST_BREAK_HOOKS} = '1';
	my $log = check_refused('(a) hooks',
		qr/FATAL:\s+could not install the byok storage hooks/);
	like($log, qr/DETAIL:\s+The md\.c entry of the storage-manager switch was found 0 times/,
		'(a) hooks: the detail says what did not match');
}
check_good('(a) hooks restored');

###########################################################################
# (b) keyring missing
###########################################################################

my $keyring_saved = "$PostgreSQL::Test::Utils::tmp_check/keyring.saved";
move($keyring, $keyring_saved) or die "move: $!";
check_refused('(b) no keyring',
	qr/FATAL:\s+cluster is not encrypted; run pg_byok enable/);
move($keyring_saved, $keyring) or die "move: $!";
check_good('(b) keyring restored');

###########################################################################
# (c) keyring corrupt: every byte
###########################################################################

my $good_keyring = slurp_file($keyring);
my $klen         = length($good_keyring);
cmp_ok($klen, '>', 100, "keyring has $klen bytes");
copy($keyring, $keyring_saved) or die "copy: $!";

sub write_keyring
{
	my ($content) = @_;
	open(my $fh, '>:raw', $keyring) or die "open $keyring: $!";
	print $fh $content;
	close($fh) or die "close $keyring: $!";
}

# One byte of the keyring XORed with a random non-zero mask.
sub flipped
{
	my ($pos, $mask) = @_;
	my $c = $good_keyring;
	$mask //= 1 + int(rand(255));
	substr($c, $pos, 1) = chr(ord(substr($c, $pos, 1)) ^ $mask);
	return $c;
}

my $keyring_fatal =
  qr/FATAL:\s+keyring file "[^"]*byok\/keyring" is (corrupt|invalid|not supported)/;

# Every position: pg_byok status and verify, and a bare postmaster (it
# fails in _PG_init, before it opens a socket or touches anything).
my (@status_ok, @verify_ok, @postgres_ok);
for my $pos (0 .. $klen - 1)
{
	write_keyring(flipped($pos));

	my ($rc, $out, $err) = ('', '', '');
	IPC::Run::run([ 'pg_byok', 'status', '-D', $pgdata ],
		'<', \undef, '>', \$out, '2>', \$err);
	push @status_ok, $pos
	  unless ($? >> 8) == 1
	  && $err =~ /keyring file "[^"]*" is (corrupt|invalid|not supported)/;

	($out, $err) = ('', '');
	IPC::Run::run([ 'pg_byok', 'verify', '-D', $pgdata ],
		'<', \undef, '>', \$out, '2>', \$err);
	push @verify_ok, $pos
	  unless ($? >> 8) == 1
	  && $err =~ /keyring file "[^"]*" is (corrupt|invalid|not supported)/;

	($out, $err) = ('', '');
	my $h = IPC::Run::start([ 'postgres', '-D', $pgdata ],
		'<', \undef, '>', \$out, '2>', \$err,
		IPC::Run::timeout(30));
	my $exited = eval { $h->finish; 1 };
	if (!$exited)
	{
		# it started: the worst outcome
		$h->kill_kill(grace => 5);
		push @postgres_ok, "$pos (started)";
		next;
	}
	push @postgres_ok, $pos
	  unless ($? >> 8) != 0 && $err =~ $keyring_fatal;
}
write_keyring($good_keyring);
is_deeply(\@status_ok, [],
	"pg_byok status rejects a flip of each of the $klen keyring bytes");
is_deeply(\@verify_ok, [],
	"pg_byok verify rejects a flip of each of the $klen keyring bytes");
is_deeply(\@postgres_ok, [],
	"postgres refuses to start with a flip of each of the $klen keyring bytes"
);

# The flips a string-based parser is most likely to miss, deterministically:
# a byte turned into NUL (the last newline, the middle of the checksum, the
# first byte) or into other white space.
{
	my @missed;
	for my $case ([ $klen - 1, 0x0A ], [ $klen - 10, ord(substr($good_keyring, $klen - 10, 1)) ],
		[ 0, ord(substr($good_keyring, 0, 1)) ], [ $klen - 1, 0x0A ^ 0x0D ], [ $klen - 1, 0x0A ^ 0x20 ])
	{
		my ($pos, $mask) = @$case;
		write_keyring(flipped($pos, $mask));
		my ($out, $err) = ('', '');
		IPC::Run::run([ 'pg_byok', 'status', '-D', $pgdata ], '<', \undef, '>', \$out, '2>', \$err);
		push @missed, sprintf('%d^0x%02x', $pos, $mask)
		  unless ($? >> 8) == 1 && $err =~ /keyring file "[^"]*" is (corrupt|invalid|not supported)/;
	}
	write_keyring($good_keyring);
	is_deeply(\@missed, [], 'keyring bytes turned into NUL or other white space are rejected');
}

# Random positions, through pg_ctl: refused, logged, data dir unchanged.
my @positions = (0, $klen - 1);
my %seen = map { $_ => 1 } @positions;
while (@positions < $START_POSITIONS && @positions < $klen)
{
	my $p = int(rand($klen));
	push @positions, $p unless $seen{$p}++;
}
my $before = dir_hashes($pgdata);
delete $before->{'byok/keyring'};
my (@started, @unlogged, @changed);
for my $pos (sort { $a <=> $b } @positions)
{
	write_keyring(flipped($pos));
	$node->rotate_logfile;
	if ($node->start(fail_ok => 1))
	{
		push @started, $pos;
		$node->stop;
		next;
	}
	push @unlogged, $pos unless slurp_file($node->logfile) =~ $keyring_fatal;
	my $after = dir_hashes($pgdata);
	delete $after->{'byok/keyring'};
	push @changed, $pos unless eq_hash($after, $before);
}
write_keyring($good_keyring);
is_deeply(\@started, [],
	scalar(@positions) . ' random keyring flips: the server never starts');
is_deeply(\@unlogged, [],
	'random keyring flips: a FATAL about the keyring is logged each time');
is_deeply(\@changed, [],
	'random keyring flips: the data directory is unchanged each time');
is(slurp_file($keyring), slurp_file($keyring_saved),
	'the good keyring is back');
check_good('(c) keyring restored');

###########################################################################
# (d) wrong root key, (e) world-readable root key, (f) missing root key
###########################################################################

my $rootkey_saved = "$PostgreSQL::Test::Utils::tmp_check/rootkey.saved";
copy($rootkey, $rootkey_saved) or die "copy: $!";
chmod 0600, $rootkey_saved;

{
	open(my $fh, '<:raw', '/dev/urandom') or die $!;
	read($fh, my $bytes, 32) == 32 or die 'short read';
	close $fh;
	unlink $rootkey;
	open($fh, '>', $rootkey) or die "open $rootkey: $!";
	print $fh unpack('H*', $bytes), "\n";
	close $fh;
	chmod 0600, $rootkey;
}
check_refused('(d) wrong root key',
	qr/FATAL:\s+root key file "\Q$rootkey\E" holds the wrong key for this cluster/
);
copy($rootkey_saved, $rootkey) or die "copy: $!";
chmod 0600, $rootkey;
check_good('(d) root key restored');

chmod 0644, $rootkey;
my $log = check_refused('(e) root key mode 0644',
	qr/FATAL:\s+root key file "\Q$rootkey\E" has group or world access/);
like($log, qr/DETAIL:\s+Its permissions are 0644\./,
	'(e) root key mode 0644: the detail shows the mode');
chmod 0640, $rootkey;
check_refused('(e) root key mode 0640',
	qr/FATAL:\s+root key file "\Q$rootkey\E" has group or world access/);
chmod 0600, $rootkey;
check_good('(e) root key mode 0600 again');

move($rootkey, "$rootkey_saved.moved") or die "move: $!";
check_refused('(f) root key missing',
	qr/FATAL:\s+root key file "\Q$rootkey\E" does not exist/);
move("$rootkey_saved.moved", $rootkey) or die "move: $!";
check_good('(f) root key restored');

###########################################################################
# (g) full_page_writes = off
###########################################################################

$node->append_conf('postgresql.conf', "full_page_writes = off\n");
check_refused('(g) full_page_writes = off',
	qr/FATAL:\s+byok requires full_page_writes = on/);
$node->append_conf('postgresql.conf', "full_page_writes = on\n");
check_good('(g) full_page_writes = on again');

###########################################################################
# (h) byok not preloaded
###########################################################################

my $stock = new_stock_node('stock');
$stock->start;
my ($stdout, $stderr) = ('', '');
my $ret = $stock->psql(
	'postgres', 'CREATE EXTENSION byok',
	stdout => \$stdout,
	stderr => \$stderr);
isnt($ret, 0, '(h) CREATE EXTENSION byok fails without preloading');
like(
	$stderr,
	qr/ERROR:\s+byok must be loaded via shared_preload_libraries/,
	'(h) the error says byok must be preloaded');
($stdout, $stderr) = ('', '');
$ret = $stock->psql(
	'postgres', q{LOAD 'byok'},
	stdout => \$stdout,
	stderr => \$stderr);
isnt($ret, 0, '(h) LOAD byok fails too');
like(
	$stderr,
	qr/ERROR:\s+byok must be loaded via shared_preload_libraries/,
	'(h) LOAD: the error says byok must be preloaded');
is($stock->safe_psql('postgres', q{SELECT count(*) FROM pg_extension WHERE extname = 'byok'}),
	'0', '(h) no byok extension was created');
is($stock->safe_psql('postgres', 'SELECT 42'), '42',
	'(h) the stock server keeps working');
$stock->stop;

done_testing();
