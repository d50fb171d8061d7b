
# Copyright (c) byok contributors

# byok in Debian's cluster layout, where the root key goes, and clusters
# made with initdb --allow-group-access:
#
# 1. A postgresql-common cluster (pg_createcluster, configuration in
#    PG_CLUSTER_CONF_ROOT/MAJOR/NAME, data elsewhere): pg_byok enable -D DATA
#    finds the configuration, puts the new root key beside it (not beside
#    the data directory) and warns that key and data share a device;
#    shared_preload_libraries in conf.d; pg_ctlcluster start, reload,
#    restart and stop and pg_lsclusters work; CREATE EXTENSION byok; the
#    data directory holds no marker; the server log has the same-device
#    WARNING.
# 2. Settings in files reached through include_dir, include and
#    include_if_exists (relative paths, last setting wins, postgresql.auto.conf
#    last) decide: byok.root_key_file set there is where enable creates the
#    key; pg_byok status -D CONFIGDIR and -c FILE find the same cluster.
# 3. initdb's layout with no --root-key-file and no byok.root_key_file:
#    pg_byok enable refuses, and says what to pass; nothing is written.
# 4. initdb --allow-group-access: every file and directory byok writes in
#    the data directory has the cluster's group mode (0640 / 0750), so the
#    group can read every file; the root key stays 0600 and is refused when
#    it is group readable.

use strict;
use warnings;

use File::Find;
use File::Path qw(make_path);
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use ByokTest;

my $marker = random_marker();
note "marker: $marker";
# the major postgresql-common files the cluster under (15, 17, 18)
my ($pgver) = `pg_config --version` =~ /^PostgreSQL (\d+)/
  or die 'pg_config --version names no PostgreSQL major';

my $base = PostgreSQL::Test::Utils::tempdir();
my $etc  = "$base/etc";
my $sock = PostgreSQL::Test::Utils::tempdir_short();
make_path($etc, "$base/keys");
chmod 0700, "$base/keys";
$ENV{PG_CLUSTER_CONF_ROOT} = $etc;

sub run_cmd
{
	my (@cmd) = @_;
	my ($out, $err) = ('', '');
	note 'running: ' . join(' ', @cmd);
	IPC::Run::run(\@cmd, '<', \undef, '>', \$out, '2>', \$err);
	my $rc = $? >> 8;
	note "exit $rc\nstdout: $out\nstderr: $err";
	return ($rc, $out, $err);
}

sub keyring_of
{
	my ($data, $field) = @_;
	my $text = slurp_file("$data/byok/keyring");
	return $text =~ /^\Q$field\E = (.*)$/m ? $1 : undef;
}

# A postgresql-common cluster NAME owned by the test user, not started.
sub new_debian_cluster
{
	my ($name) = @_;
	my $data = "$base/data/$name";
	my $port = PostgreSQL::Test::Cluster::get_free_port();
	my ($rc, $out, $err) = run_cmd('pg_createcluster', '-d', $data, '-p', $port,
		'-s', $sock, '-l', "$base/$name.log", '--start-conf=manual',
		'-o', "external_pid_file=$base/$name.pid",
		$pgver, $name, '--', '--data-checksums');
	is($rc, 0, "$name: pg_createcluster $pgver $name") or diag("$out\n$err");
	return ($data, $port);
}

sub psql_at
{
	my ($port, $sql) = @_;
	my ($rc, $out, $err) = run_cmd('psql', '-X', '-A', '-t', '-h', $sock, '-p', $port,
		'-d', 'postgres', '-v', 'ON_ERROR_STOP=1', '-c', $sql);
	chomp $out;
	return ($rc, $out, $err);
}

# --- 1. Debian's layout, root key beside the configuration ---------------------------

my ($data, $port) = new_debian_cluster('deb');
my $confdir = "$etc/$pgver/deb";
ok(-f "$confdir/postgresql.conf" && !-e "$data/postgresql.conf",
	'configuration in PG_CLUSTER_CONF_ROOT, none in the data directory');

my ($rc, $out, $err) = pg_byok('enable', '-D', $data);
is($rc, 0, 'pg_byok enable -D DATA on a postgresql-common cluster') or diag("$out\n$err");
like($out, qr/creating a new local root key in "\Q$confdir\E\/byok-root\.key"/,
	'the new root key goes beside the configuration');
ok(-f "$confdir/byok-root.key" && !-e "$data.byok-root.key",
	'root key file in the configuration directory, none beside the data directory');
is(keyring_of($data, 'root_key_file'), "$confdir/byok-root.key", 'the keyring records it');
like($err,
	qr/warning: the local root key file "\Q$confdir\E\/byok-root\.key" is on the same device as the data directory "\Q$data\E"\n.*detail: Both are on device \d+:\d+\..*\n.*hint: Move the root key file to a volume that is not in the data directory's backups, and set byok.root_key_file/,
	'enable warns that root key and data share a device, and says how to move it');
like($out, qr/add shared_preload_libraries = 'byok' to "\Q$confdir\E\/postgresql\.conf"/,
	'enable names the configuration file the server reads');

append_to_file("$confdir/conf.d/byok.conf", "shared_preload_libraries = 'byok'\n");
($rc, $out, $err) = run_cmd('pg_ctlcluster', $pgver, 'deb', 'start');
is($rc, 0, 'pg_ctlcluster start') or diag(slurp_file("$base/deb.log"));
($rc, $out, $err) = run_cmd('pg_lsclusters', '-h');
like($out, qr/^$pgver\s+deb\s+$port\s+online\s/m, 'pg_lsclusters: online');
($rc, $out, $err) = psql_at($port,
	"CREATE EXTENSION byok; CREATE TABLE t (v text); INSERT INTO t SELECT '$marker-' || g FROM generate_series(1, 500) g;"
	  . " CHECKPOINT; SELECT enabled FROM byok_status()");
is($rc, 0, 'CREATE EXTENSION byok, marker rows') or diag($err);
like($out, qr/^t$/m, 'byok_status(): enabled');
($rc, $out, $err) = run_cmd('pg_ctlcluster', $pgver, 'deb', 'reload');
is($rc, 0, 'pg_ctlcluster reload');
($rc, $out, $err) = run_cmd('pg_ctlcluster', $pgver, 'deb', 'restart');
is($rc, 0, 'pg_ctlcluster restart') or diag(slurp_file("$base/deb.log"));
($rc, $out, $err) = psql_at($port, "SELECT count(*) FROM t WHERE v LIKE '$marker-%'");
is($out, '500', 'after restart: every row reads back');
($rc, $out, $err) = run_cmd('pg_ctlcluster', $pgver, 'deb', 'stop');
is($rc, 0, 'pg_ctlcluster stop');
($rc, $out, $err) = run_cmd('pg_lsclusters', '-h');
like($out, qr/^$pgver\s+deb\s+$port\s+down\s/m, 'pg_lsclusters: down');
my @hits = scan_at_rest($data, $marker);
is_deeply(\@hits, [], 'no marker in the data directory') or diag(join("\n", @hits));
like(slurp_file("$base/deb.log"),
	qr/WARNING:  byok: the local root key file "\Q$confdir\E\/byok-root\.key" is on the same device as the data directory "\Q$data\E"\n.*DETAIL:  Both are on device \d+:\d+\.[^\n]*\n.*HINT:  Move the root key file to a volume that is not in the data directory's backups, and set byok.root_key_file in postgresql.conf to its new path/,
	'server start: the same-device WARNING with the setting that moves it');
($rc, $out, $err) = pg_byok('status', '-D', $data);
like($out, qr/^configuration:\s+\Q$confdir\E\/postgresql\.conf \(postgresql-common cluster $pgver\/deb\)$/m,
	'status names the configuration it read');
like($err, qr/warning: the local root key file .* is on the same device/, 'status warns too');

# --- 2. include_dir, include, include_if_exists, postgresql.auto.conf -------------

my ($data2, $port2) = new_debian_cluster('inc');
my $confdir2 = "$etc/$pgver/inc";
make_path("$confdir2/conf.d/sub");
# conf.d/10-byok.conf includes sub/keys.conf (relative to conf.d) and a
# missing file; the later 20-byok.conf changes the key file again; the
# first value is overridden (last setting wins).
append_to_file("$confdir2/conf.d/10-byok.conf",
	    "byok.root_key_file = '$base/keys/never.key'\n"
	  . "include 'sub/keys.conf'\n"
	  . "include_if_exists 'sub/missing.conf'\n"
	  . "shared_preload_libraries = 'byok'\n");
append_to_file("$confdir2/conf.d/sub/keys.conf", "byok.root_key_file = '$base/keys/also-never.key'\n");
append_to_file("$confdir2/conf.d/20-byok.conf", "BYOK.root_key_file = '$base/keys/inc.key'  # wins\n");
append_to_file("$confdir2/conf.d/.hidden.conf", "byok.root_key_file = '$base/keys/hidden.key'\n");
($rc, $out, $err) = pg_byok('enable', '-D', $data2);
is($rc, 0, 'enable with settings in conf.d') or diag("$out\n$err");
ok(-f "$base/keys/inc.key", 'root key created where the last byok.root_key_file of conf.d says');
ok(!-e "$base/keys/never.key" && !-e "$base/keys/also-never.key" && !-e "$base/keys/hidden.key"
	  && !-e "$confdir2/byok-root.key", 'and nowhere else');
is(keyring_of($data2, 'root_key_file'), "$base/keys/inc.key", 'the keyring records it');

# an ALTER SYSTEM setting (postgresql.auto.conf, in the data directory) wins over all of them
rename("$base/keys/inc.key", "$base/keys/moved.key") or die;
append_to_file("$data2/postgresql.auto.conf", "byok.root_key_file = '$base/keys/moved.key'\n");
($rc, $out, $err) = pg_byok('verify', '-D', $data2);
is($rc, 0, 'verify finds the key through postgresql.auto.conf') or diag("$out\n$err");
($rc, $out, $err) = pg_byok('verify', '-D', $confdir2);
is($rc, 0, 'verify -D CONFIGDIR: data_directory names the data directory') or diag("$out\n$err");
($rc, $out, $err) = pg_byok('status', '-c', "$confdir2/postgresql.conf");
is($rc, 0, 'status -c postgresql.conf, no -D') or diag("$out\n$err");
like($out, qr/^root key file:\s+\Q$base\E\/keys\/inc\.key$/m, 'status -c reads the same keyring');
($rc, $out, $err) = run_cmd('pg_ctlcluster', $pgver, 'inc', 'start');
is($rc, 0, 'the server starts with the key named in postgresql.auto.conf')
  or diag(slurp_file("$base/inc.log"));
run_cmd('pg_ctlcluster', $pgver, 'inc', 'stop');

# --- 3. initdb's layout: no safe default ------------------------------------------

my $plain = PostgreSQL::Test::Cluster->new('plain');
$plain->init;
($rc, $out, $err) = pg_byok('enable', '-D', $plain->data_dir);
is($rc, 1, 'initdb layout, no root key location: enable refuses');
like($err,
	qr/error: no location for the local root key of "\Q${\ $plain->data_dir}\E"\n.*detail: pg_byok does not put it beside the data directory .*\n.*hint: Pass --root-key-file FILE with a path on another volume/,
	'and says what to pass');
ok(!-e $plain->data_dir . '/byok/keyring' && !-e $plain->data_dir . '.byok-root.key',
	'nothing written');

# --- 4. initdb --allow-group-access --------------------------------------------------

my $grp = PostgreSQL::Test::Cluster->new('grp');
$grp->init(extra => [ '--allow-group-access', '--data-checksums' ]);
my $grpkey = "$base/keys/grp.key";
($rc, $out, $err) = pg_byok('enable', '-D', $grp->data_dir, '--root-key-file', $grpkey);
is($rc, 0, 'enable on a group-access cluster') or diag("$out\n$err");
$grp->append_conf('postgresql.conf',
	"shared_preload_libraries = 'byok'\nbyok.root_key_file = '$grpkey'\nwork_mem = '64kB'\n");
$grp->start;
$grp->safe_psql('postgres', qq{
	CREATE EXTENSION byok;
	CREATE TABLE g AS SELECT g AS id, '$marker-' || g AS v FROM generate_series(1, 20000) g;
	SELECT count(*) FROM (SELECT v FROM g ORDER BY v DESC) s;
	CHECKPOINT;
});
$grp->stop;
# byok rewrites the keyring at the next change: make one offline too
($rc, $out, $err) = pg_byok('rotate-data-key', '-D', $grp->data_dir);
is($rc, 0, 'rotate-data-key on the group-access cluster') or diag("$out\n$err");

my @bad;
find({ no_chdir => 1, wanted => sub {
	my $mode = (lstat($_))[2] & 07777;
	return if -l _;
	my $want_bits = -d _ ? 0750 : 0640;
	push @bad, sprintf('%s %04o', $File::Find::name, $mode) if ($mode & $want_bits) != $want_bits || ($mode & 0027);
} }, $grp->data_dir);
is_deeply(\@bad, [], 'every file 0640 and every directory 0750: the group reads everything')
  or diag(join("\n", @bad));
is((stat($grp->data_dir . '/byok/keyring'))[2] & 07777, 0640, 'byok/keyring is 0640');
is((stat($grp->data_dir . '/byok'))[2] & 07777, 0750, 'byok/ is 0750');
is((stat($grpkey))[2] & 07777, 0600, 'the root key file stays 0600');

chmod 0640, $grpkey;
($rc, $out, $err) = pg_byok('verify', '-D', $grp->data_dir);
is($rc, 1, 'a group-readable root key is refused');
like($err, qr/error: root key file "\Q$grpkey\E" has group or world access\n.*detail: Its permissions are 0640\./,
	'with the reason');
chmod 0600, $grpkey;
$grp->start;
is($grp->safe_psql('postgres', "SELECT count(*) FROM g WHERE v LIKE '$marker-%'"), '20000',
	'the group-access cluster reads back after rotation');
$grp->stop;
@hits = scan_at_rest($grp->data_dir, $marker);
is_deeply(\@hits, [], 'no marker in the group-access data directory') or diag(join("\n", @hits));

done_testing();
