
# Copyright (c) byok contributors

# The at-rest scanner (ByokTest::scan_at_rest) decides whether every other
# encryption test passes, so it is proven here first: each encoding is found
# where it is planted, at any chunk boundary, through subdirectories and
# tablespace-style symlinks; clean files and near misses are not reported.

use strict;
use warnings;

use Cwd qw(abs_path);
use MIME::Base64 qw(encode_base64);
use PostgreSQL::Test::Utils;
use Test::More;

use ByokTest;

my $dir    = PostgreSQL::Test::Utils::tempdir();
my $marker = random_marker();
note "marker: $marker";

like($marker, qr/^BYOKMARK_[A-Za-z0-9]{16}$/, 'random_marker format');
isnt(random_marker(), random_marker(), 'random_marker differs per call');

my %enc = map { $_->[0] => $_->[1] } marker_encodings($marker);
for my $name (qw(raw hex HEX base64/0 base64/1 base64/2 utf16le utf16be))
{
	ok(defined $enc{$name}, "encoding $name is searched for");
}

sub put
{
	my ($rel, $content) = @_;
	my $path = "$dir/$rel";
	(my $parent = $path) =~ s{/[^/]*$}{};
	mkdir_p($parent);
	open(my $fh, '>:raw', $path) or die "$path: $!";
	print $fh $content;
	close $fh;
	return;
}

sub mkdir_p
{
	my ($d) = @_;
	return if -d $d;
	(my $parent = $d) =~ s{/[^/]*$}{};
	mkdir_p($parent) if $parent ne $d && $parent ne '';
	mkdir $d or die "$d: $!";
	return;
}

sub utf16le { return join('', map { "$_\0" } split //, $_[0]); }
sub utf16be { return join('', map { "\0$_" } split //, $_[0]); }

# Binary-looking filler with no zero bytes, so a UTF-16 plant is bounded by
# non-zero bytes on both sides (a zero before a UTF-16LE string would also
# make it a valid UTF-16BE string, and the scanner would rightly say so).
my $junk = join('', map { chr(1 + ($_ * 37) % 250) } 0 .. 999);

# Files with one planted encoding each, and the hits expected.
my %expect;

put('raw.bin', $junk . $marker . $junk);
$expect{'raw.bin'} = ['raw'];

put('start_end.bin', $marker . $junk);
put('sub/end.bin',   $junk . $marker);
$expect{'start_end.bin'} = ['raw'];
$expect{'sub/end.bin'}   = ['raw'];

put('hex.txt', "value: \\x" . unpack('H*', $marker) . "\n");
$expect{'hex.txt'} = ['hex'];

put('HEX.txt', "VALUE=" . uc(unpack('H*', $marker)) . ";\n");
$expect{'HEX.txt'} = ['HEX'];

for my $k (0 .. 2)
{
	for my $lead ('', 'Q', 'QR')
	{
		# k filler bytes before the marker decide its alignment in a 3-byte
		# group; the text before the base64 ($lead) must not matter.
		my $b64 = encode_base64(('#' x $k) . $marker . 'tail', '');
		my $rel = 'b64/align' . $k . '_lead' . length($lead) . '.txt';
		put($rel, "$lead$b64\n");
		$expect{$rel} = ["base64/$k"];
	}
}

put('deep/er/utf16le.bin', $junk . utf16le($marker) . $junk);
$expect{'deep/er/utf16le.bin'} = ['utf16le'];

put('utf16be.bin', $junk . utf16be($marker) . $junk);
$expect{'utf16be.bin'} = ['utf16be'];

# Across the scanner's default 1 MiB chunk boundary, for the shortest and the
# longest patterns.
my $mib = 1024 * 1024;
put('boundary_raw.bin', ('a' x ($mib - 9)) . $marker . ('b' x 100));
$expect{'boundary_raw.bin'} = ['raw'];
put('boundary_utf16.bin', ('c' x ($mib - 21)) . utf16le($marker) . ('d' x 100));
$expect{'boundary_utf16.bin'} = ['utf16le'];
put('boundary_hex.bin', ('e' x ($mib - 1)) . uc(unpack('H*', $marker)) . 'x');
$expect{'boundary_hex.bin'} = ['HEX'];

# A file with several encodings reports each once, even when repeated.
put('multi.bin', join('!', $marker, $marker, unpack('H*', $marker), utf16be($marker)));
$expect{'multi.bin'} = [ 'raw', 'hex', 'utf16be' ];

# Clean files: random bytes, empty, and every encoding of a near miss (one
# character of the marker changed) and of a truncated marker.
open(my $ur, '<:raw', '/dev/urandom') or die;
read($ur, my $random, 2 * $mib) == 2 * $mib or die 'short read';
close $ur;
put('clean/random.bin', $random);
put('clean/empty',      '');

my $near = $marker;
my $pos  = length($marker) - 8;
substr($near, $pos, 1) = substr($near, $pos, 1) eq 'x' ? 'y' : 'x';
my $trunc = substr($marker, 0, -1);
for my $m ([ near => $near ], [ trunc => $trunc ])
{
	my ($tag, $s) = @$m;
	put("clean/$tag.bin",
		join("\n",
			$s, unpack('H*', $s), uc(unpack('H*', $s)),
			(map { encode_base64(('#' x $_) . $s, '') } 0 .. 2),
			utf16le($s), utf16be($s)));
}

# A directory reached through a symlink, as pg_tblspc/<oid> is, and a link
# loop that must not make the scan run forever.
my $outside = abs_path(PostgreSQL::Test::Utils::tempdir());
open(my $fh, '>:raw', "$outside/seg") or die;
print $fh $junk . $marker;
close $fh;
mkdir "$dir/pg_tblspc" or die;
symlink($outside, "$dir/pg_tblspc/16384") or die "symlink: $!";
symlink('..', "$dir/pg_tblspc/loop") or die "symlink: $!";
$expect{'pg_tblspc/16384/seg'} = ['raw'];

# The expected list, in the scanner's order (sorted strings).
my @expected;
for my $rel (sort keys %expect)
{
	push @expected, map { "$rel: $_" } @{ $expect{$rel} };
}
@expected = sort @expected;

my @hits = scan_at_rest($dir, $marker);
is_deeply(\@hits, \@expected, 'every planted encoding found, nothing else')
  or diag(explain({ got => \@hits, expected => \@expected }));

my %by_file;
for my $h (@hits)
{
	my ($rel, $e) = $h =~ /^(.*): (\S+)$/ or next;
	push @{ $by_file{$rel} }, $e;
}
for my $rel (sort keys %expect)
{
	is_deeply([ sort @{ $by_file{$rel} // [] } ],
		[ sort @{ $expect{$rel} } ], "$rel: @{$expect{$rel}}");
}
ok(!(grep { m{^clean/} } @hits), 'clean files, near misses and truncations not reported');
ok(!(grep { m{^pg_tblspc/loop/} } @hits), 'symlink loop not followed twice');

# Small chunks put a chunk boundary inside almost every plant.
for my $chunk (51, 64, 4099)
{
	my @small = scan_at_rest($dir, $marker, chunk_size => $chunk);
	is_deeply(\@small, \@expected, "same hits with chunk_size $chunk");
}

# Exclusions, by a regex and by a list of them.
my @ex = scan_at_rest($dir, $marker, exclude => qr{^b64/});
is_deeply(\@ex, [ grep { !m{^b64/} } @expected ], 'exclude => qr');
@ex = scan_at_rest($dir, $marker, exclude => [ qr{^b64/}, qr{\.txt$} ]);
is_deeply(\@ex, [ grep { !m{^b64/} && !m{\.txt: } } @expected ],
	'exclude => [list]');

# The near miss itself is found when it is the marker.
my @near_hits = grep { m{^clean/near\.bin: } } scan_at_rest($dir, $near);
is(scalar(@near_hits), 8, 'near-miss file holds 8 encodings of its own marker')
  or diag(explain(\@near_hits));

# A clean tree is clean; errors are loud.
is_deeply([ scan_at_rest("$dir/clean", random_marker()) ], [], 'fresh marker: no hits');
ok(!eval { scan_at_rest("$dir/no_such_dir", $marker); 1 }, 'missing directory dies');
ok(!eval { scan_at_rest($dir, $marker, chunk_size => 10); 1 }, 'too small chunk_size dies');
symlink("$dir/no_such_target", "$dir/clean/dangling") or die "symlink: $!";
ok(!eval { scan_at_rest($dir, $marker); 1 }, 'dangling symlink dies');
like($@, qr/dangling symbolic link/, 'dangling symlink: message');

done_testing();
