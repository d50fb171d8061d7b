
# Copyright (c) byok contributors

# Two forks of one cluster.
#
# A stopped encrypted cluster is copied at the file level (same keyring, same
# root key file: the copy's postgresql.conf names the same
# byok.root_key_file).  Both copies start with identical histories, and in
# each the same single INSERT adds a row of the same length, with a
# different literal, to the same empty table: the row lands at the same LSN,
# in the same block at the same offset.  An attacker who has both copies'
# files (a leaked backup of a clone, a snapshot of each) XORs the two stored
# versions of the block.  With a stream cipher keyed by (LSN, relation,
# block) the keystream cancels and the XOR of the stored pages is the XOR of
# the two plaintext rows.  The test asserts that the stored XOR contains no
# 8-byte substring of the rows' XOR (and no aligned 16-byte block equal to a
# 16-byte window of it), that the two stored pages carry the same pd_lsn
# (otherwise nothing was tested) and that each copy reads back its own row.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use ByokTest;

my $PAGE = 8192;

my $na = new_encrypted_node('fork_a',
	conf => "autovacuum = off\ncheckpoint_timeout = 1h\n");
$na->start;
$na->safe_psql('postgres',
	'CREATE EXTENSION pageinspect; CREATE TABLE f (id int, v text); CHECKPOINT;');
my $relpath = $na->safe_psql('postgres', "SELECT pg_relation_filepath('f')");
$na->stop;

$na->backup_fs_cold('cold');
my $nb = PostgreSQL::Test::Cluster->new('fork_b');
$nb->init_from_backup($na, 'cold');
like(slurp_file($nb->data_dir . '/postgresql.conf'),
	qr/^byok\.root_key_file = '\Q${\ root_key_path('fork_a')}\E'$/m,
	'the copy uses the same root key file');

# Two random literals of equal length that differ at every position, so the
# XOR of the rows has no zero byte (a run of zeros would trivially match the
# zero blocks of the XOR of two pages that differ in a few places only).
my @alnum = ('A' .. 'Z', 'a' .. 'z', '0' .. '9');
my ($lit_a, $lit_b) = ('', '');
for (1 .. 96)
{
	my $i = int(rand(@alnum));
	my $j = ($i + 1 + int(rand(@alnum - 1))) % @alnum;
	$lit_a .= $alnum[$i];
	$lit_b .= $alnum[$j];
}
my $plain_xor = $lit_a ^ $lit_b;
ok($plain_xor !~ /\0/, 'the two literals differ at every byte');

my %lsn;
for my $n ([ $na, $lit_a ], [ $nb, $lit_b ])
{
	my ($node, $lit) = @$n;
	$node->start;
	$node->safe_psql('postgres', "INSERT INTO f VALUES (1, '$lit')");
	$lsn{ $node->name } = $node->safe_psql('postgres',
		"SELECT lsn FROM page_header(get_raw_page('f', 0))");
	is($node->safe_psql('postgres', 'SELECT v FROM f'), $lit,
		$node->name . ': reads its own row');
	$node->safe_psql('postgres', 'CHECKPOINT');
	$node->stop;
}
is($lsn{fork_a}, $lsn{fork_b},
	"the row landed at the same LSN in both forks ($lsn{fork_a})");

sub block0
{
	my ($node) = @_;
	my $file = $node->data_dir . "/$relpath";
	open(my $fh, '<:raw', $file) or die "open $file: $!";
	my $n = sysread($fh, my $buf, $PAGE);
	close $fh;
	die "short read of $file" unless defined $n && $n == $PAGE;
	return $buf;
}

my $pa = block0($na);
my $pb = block0($nb);
is(unpack('H16', substr($pa, 0, 8)), unpack('H16', substr($pb, 0, 8)),
	'the stored pages carry the same pd_lsn');
isnt($pa, $pb, 'the stored pages differ');
my $stored_xor = $pa ^ $pb;

# every 8-byte substring of the rows' XOR, searched anywhere in the stored XOR
my @hits8;
for my $i (0 .. length($plain_xor) - 8)
{
	my $w = substr($plain_xor, $i, 8);
	my $at = index($stored_xor, $w);
	push @hits8, "window $i at page offset $at" if $at >= 0;
}
is(scalar(@hits8), 0,
	'the XOR of the stored pages contains no 8-byte substring of the XOR of the rows')
  or diag(scalar(@hits8) . ' hits, first: ' . join(', ', @hits8[ 0 .. ($#hits8 < 4 ? $#hits8 : 4) ]));

# every aligned 16-byte block of the stored XOR against every 16-byte window
my %windows;
$windows{ substr($plain_xor, $_, 16) } = 1 for 0 .. length($plain_xor) - 16;
my @hits16 = grep { $windows{ substr($stored_xor, $_ * 16, 16) } } 0 .. $PAGE / 16 - 1;
is(scalar(@hits16), 0,
	'no aligned 16-byte block of the stored XOR equals a 16-byte window of the rows\' XOR')
  or diag(scalar(@hits16) . ' aligned blocks leak, first at page offset ' . $hits16[0] * 16);

# neither literal is at rest in either copy
is_deeply([ scan_at_rest($na->data_dir, $lit_a) ], [], 'fork_a: its literal is not at rest');
is_deeply([ scan_at_rest($nb->data_dir, $lit_b) ], [], 'fork_b: its literal is not at rest');

# both copies still read their own rows from the stored pages
for my $n ([ $na, $lit_a ], [ $nb, $lit_b ])
{
	my ($node, $lit) = @$n;
	$node->start;
	is($node->safe_psql('postgres', 'SELECT v FROM f'), $lit,
		$node->name . ': reads its own row back from disk after a restart');
	$node->stop;
}

done_testing();
