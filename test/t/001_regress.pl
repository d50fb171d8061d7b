
# Copyright (c) byok contributors

# The pg_regress suites (sql/*.sql against expected/*.out) run against a
# cluster that was encrypted with pg_byok and preloads byok, so the SQL
# surface is always exercised the way users meet it.

use strict;
use warnings;

use File::Basename qw(basename);
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use ByokTest;

my $root  = repo_root();
my @tests = map { basename($_, '.sql') } sort glob("$root/sql/*.sql");
ok(scalar(@tests) > 0, 'pg_regress tests found in sql/: ' . join(' ', @tests));

my $node = new_encrypted_node('regress');
$node->start;

my $bindir = `pg_config --bindir`;
chomp $bindir;
my $outdir = "$PostgreSQL::Test::Utils::tmp_check/regress";
mkdir $outdir;

# No --use-existing: pg_regress then creates contrib_regression itself, with
# the settings (lc_messages, datestyle, ...) that make output comparable.
my @cmd = (
	$ENV{PG_REGRESS},
	'--host=' . $node->host,
	'--port=' . $node->port,
	"--inputdir=$root",
	"--outputdir=$outdir",
	"--bindir=$bindir",
	'--dbname=contrib_regression',
	@tests);
note 'running: ' . join(' ', @cmd);
my $out = '';
IPC::Run::run(\@cmd, '<', '/dev/null', '>', \$out, '2>&1');
my $rc = $? >> 8;
print STDOUT $out;
is($rc, 0, 'pg_regress: ' . join(' ', @tests)) or do {
	diag($out);
	my $diffs = "$outdir/regression.diffs";
	diag("--- $diffs ---\n" . slurp_file($diffs)) if -s $diffs;
};

$node->stop;
ok(1, 'server stopped cleanly after the regression tests');

done_testing();
