
# Copyright (c) byok contributors

# A byok built for another PostgreSQL release refuses to load, with a
# message that names both versions, before any key is touched:
#
#   (a) another minor release (the test build's
#       BYOK_TEST_BUILT_FOR_VERSION_NUM pretends byok was built for the
#       server's version + 1): FATAL "byok was built for another PostgreSQL
#       release", the detail naming both releases;
#   (b) the same for another major (built "for" 17.5 or 15.20);
#   (c) a real byok.so built for another major version, where one is
#       there: scripts/pgversions.sh leaves the host's PostgreSQL 15 build
#       in each root's /build/other-major, so the suites of 17 and 18 load
#       it; PostgreSQL's module magic refuses it and names both majors.
#
# After each refusal the data directory is intact and the server starts.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use ByokTest;

my $node = new_encrypted_node('version');
my $marker = random_marker();
$node->start;
my $server_num = $node->safe_psql('postgres', 'SHOW server_version_num');
my $server_name = $node->safe_psql('postgres', 'SHOW server_version');
$node->safe_psql('postgres',
	"CREATE TABLE t AS SELECT i, '$marker' || i AS v FROM generate_series(1, 1000) i");
my $expected = $node->safe_psql('postgres',
	q{SELECT count(*) || ' ' || md5(string_agg(v, ',' ORDER BY i)) FROM t});
$node->stop;

my $major = int($server_num / 10000);
my $minor = $server_num % 100;

sub check_good
{
	my ($label) = @_;
	$node->rotate_logfile;
	ok($node->start(fail_ok => 1), "$label: the server starts again") or return;
	is( $node->safe_psql(
			'postgres',
			q{SELECT count(*) || ' ' || md5(string_agg(v, ',' ORDER BY i)) FROM t}),
		$expected,
		"$label: the data reads back");
	$node->stop;
}

sub refused_log
{
	my ($label) = @_;
	$node->rotate_logfile;
	my $started = $node->start(fail_ok => 1);
	ok(!$started, "$label: the server refuses to start");
	$node->stop if $started;
	ok(!-e $node->data_dir . '/postmaster.pid', "$label: no postmaster.pid left");
	return slurp_file($node->logfile);
}

check_good('initially');

# (a) and (b): built for another release (test build only)
for my $case (
	[ '(a) next minor', $server_num + 1 ],
	[ '(b) other major', $major == 17 ? 150020 : 170005 ])
{
	my ($label, $built) = @$case;
	my $built_name = sprintf('%d.%d', int($built / 10000), $built % 100);
	{
		local $ENV{BYOK_TEST_BUILT_FOR_VERSION_NUM} = $built;
		my $log = refused_log($label);
		like($log, qr/FATAL:\s+byok was built for another PostgreSQL release/,
			"$label: FATAL says another release");
		like(
			$log,
			qr/DETAIL:\s+This byok was built for PostgreSQL \Q$built_name\E; the server is PostgreSQL \Q$major.$minor\E \(\Q$server_name\E\)\./,
			"$label: the detail names both versions");
		like($log, qr/HINT:\s+Rebuild and reinstall byok against the installed server/,
			"$label: the hint says what to do");
		unlike($log, qr/cluster encryption active|byok\.kms\.unwrap/,
			"$label: refused before any key was unwrapped");
	}
	check_good("$label: back to this release");
}

# (c) a byok.so really built for another major, where there is one
my $dir = $ENV{BYOK_OTHER_MAJOR_DIR} // '/build/other-major';
my @libs = grep { !/byok-pg\Q$major\E\.so$/ } glob("$dir/byok-pg*.so");
SKIP:
{
	skip "no byok.so built for another major in $dir (scripts/pgversions.sh puts the host's there)", 4
	  unless @libs;
	my $lib = $libs[0];
	my ($other) = $lib =~ /byok-pg(\d+)\.so$/;
	$node->append_conf('postgresql.conf', "shared_preload_libraries = '$lib'");
	my $log = refused_log("(c) byok.so of PostgreSQL $other");
	like($log, qr/FATAL:\s+incompatible library "\Q$lib\E": version mismatch/,
		"(c) byok.so of PostgreSQL $other: FATAL incompatible library");
	like($log, qr/DETAIL:\s+Server is version $major, library is version $other\./,
		"(c) byok.so of PostgreSQL $other: the detail names both majors");
	$node->append_conf('postgresql.conf', "shared_preload_libraries = 'byok'");
}
check_good('(c) back to this build');

done_testing();
