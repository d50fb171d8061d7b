
# Copyright (c) byok contributors

# docs/sql.md lists byok_status()'s columns in the order the function
# returns them (what "SELECT * FROM byok_status()" shows), every one of
# them once, and nothing else: compared with the OUT parameters in
# byok--1.0.sql.

use strict;
use warnings;

use Test::More;

use ByokTest;

my $root = repo_root();

sub slurp
{
	my ($f) = @_;
	open(my $fh, '<', $f) or die "$f: $!";
	local $/;
	return scalar <$fh>;
}

my $sql = slurp("$root/byok--1.0.sql");
my ($params) = $sql =~ /CREATE FUNCTION byok_status\((.*?)\)\s*RETURNS record/s
  or BAIL_OUT('no byok_status() in byok--1.0.sql');
my @sql_cols = $params =~ /\bOUT\s+(\w+)/g;
cmp_ok(scalar(@sql_cols), '>', 20, 'byok--1.0.sql: byok_status() has its OUT columns');

my $doc = slurp("$root/docs/sql.md");
my ($section) = $doc =~ /^## `byok_status\(\) → record`\n(.*?)^## /ms
  or BAIL_OUT('no byok_status() section in docs/sql.md');
my @doc_cols;
for my $line (split /\n/, $section)
{
	next unless $line =~ /^\|\s*(`[^|]*`)\s*\|/;
	push @doc_cols, $1 =~ /`(\w+)`/g;
}
is_deeply(\@doc_cols, \@sql_cols,
	'docs/sql.md lists byok_status() columns in the order byok--1.0.sql returns them');

done_testing();
