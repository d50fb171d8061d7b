
# Copyright (c) byok contributors

# The AES implementation (VAES/AVX2 in src/aes_hw.c, or OpenSSL) is a
# per-process choice that must not show on disk: by default the faster of
# the two on this machine (measured at start, named in the log), which
# depends on OpenSSL's version.  One cluster is started in
# turn with each, and every start reads back, from disk, what the other one
# wrote -- relation pages (heap, TOAST, btree; data checksums on) and WAL
# (crash recovery replays WAL written by the other implementation).
# pg_byok verify passes under either.  byok_status() reports the one in use;
# a bad BYOK_CIPHER_IMPL stops the server with the accepted values, and
# BYOK_CIPHER_IMPL=vaes refuses to run on a CPU without VAES.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use ByokTest;

# What this CPU can do, read independently of byok.
my $cpuinfo = slurp_file('/proc/cpuinfo');
my ($flags) = $cpuinfo =~ /^flags\s*:\s*(.*)$/m;
my %flag = map { $_ => 1 } split ' ', ($flags // '');
my $has_vaes = $flag{aes} && $flag{avx2} && $flag{vaes};
note "CPU has AES-NI+AVX2+VAES: " . ($has_vaes ? 'yes' : 'no');

my $node = new_encrypted_node('impl', extra => ['--data-checksums'],
	conf => "shared_buffers = 16MB\n");
my $marker = random_marker();

# Start with BYOK_CIPHER_IMPL set to $impl (undef: unset).
sub start_with
{
	my ($impl, %opts) = @_;
	local $ENV{BYOK_CIPHER_IMPL} = $impl;
	delete $ENV{BYOK_CIPHER_IMPL} unless defined $impl;
	return $node->start(%opts);
}

sub impl_in_use
{
	return $node->safe_psql('postgres',
		'SELECT cipher_implementation FROM byok_status()');
}

# count:md5 of everything, read through an index and sequentially
sub fingerprint
{
	my $fp = $node->safe_psql(
		'postgres', q{
SET enable_seqscan = off; SET enable_bitmapscan = off;
SELECT count(*) || ':' || md5(string_agg(t::text, ',' ORDER BY id)) FROM t WHERE id > 0;
});
	my $seq = $node->safe_psql(
		'postgres', q{
SET enable_indexscan = off; SET enable_bitmapscan = off;
SELECT count(*) || ':' || md5(string_agg(t::text, ',' ORDER BY id)) FROM t;
});
	return $fp eq $seq ? $fp : "index $fp / seq $seq";
}

sub expected_fp
{
	my ($n) = @_;
	return $node->safe_psql(
		'postgres', qq{
SELECT count(*) || ':' || md5(string_agg(t::text, ',' ORDER BY id))
  FROM (SELECT i AS id, md5('$marker' || i) AS a,
               CASE WHEN i % 100 = 0 THEN repeat('$marker' || i, 300) END AS big
          FROM generate_series(1, $n) i) t;
});
}

sub add_rows
{
	my ($from, $to) = @_;
	$node->safe_psql(
		'postgres', qq{
INSERT INTO t SELECT i, md5('$marker' || i),
       CASE WHEN i % 100 = 0 THEN repeat('$marker' || i, 300) END
  FROM generate_series($from, $to) i;
});
}

# What the default (auto) chose at this start, as the server log says:
# on a VAES CPU the faster of the two by its measurement, else openssl.
sub auto_choice
{
	my ($log_offset) = @_;
	my $log = substr(slurp_file($node->logfile), $log_offset);
	my ($impl, $vaes_us, $openssl_us) = $log =~
	  /LOG:\s+byok: the page cipher runs on (\S+), the faster of the two here\n.*DETAIL:\s+Measured at start: a page takes ([\d.]+) microseconds with vaes-avx2 and ([\d.]+) with openssl \(OpenSSL /;
	return ('openssl', 'no measurement in the log: no VAES')
	  if !$has_vaes && !defined $impl;
	return ('', 'no measurement in the log') unless defined $impl;
	my $faster = $vaes_us <= $openssl_us ? 'vaes-avx2' : 'openssl';
	return ($impl eq $faster ? $impl : "$impl, not the faster $faster",
		"vaes-avx2 $vaes_us us, openssl $openssl_us us a page");
}

# 1. written with the default implementation
my $log_offset = -s $node->logfile // 0;
start_with(undef);
$node->safe_psql('postgres', 'CREATE EXTENSION byok');
my ($auto, $why) = auto_choice($log_offset);
note "auto: $why";
ok($auto eq 'openssl' || ($has_vaes && $auto eq 'vaes-avx2'),
	"default: the faster implementation here ($why)")
  or diag "auto: $auto";
is(impl_in_use(), $auto, "default: byok_status() shows $auto, the one the log names");
$node->safe_psql('postgres',
	'CREATE TABLE t (id int PRIMARY KEY, a text, big text)');
$node->safe_psql('postgres', 'ALTER TABLE t ALTER big SET STORAGE EXTERNAL');
add_rows(1, 20000);
$node->safe_psql('postgres', 'CHECKPOINT');
$node->stop;

# 2. read back with OpenSSL, write more, crash before a checkpoint
start_with('openssl');
is(impl_in_use(), 'openssl', 'BYOK_CIPHER_IMPL=openssl: openssl');
is(fingerprint(), expected_fp(20000), 'OpenSSL reads the pages the default wrote');
cmp_ok($node->safe_psql('postgres', 'SELECT pages_decrypted FROM byok_status()'),
	'>', 100, 'and they came from disk (pages decrypted)');
add_rows(20001, 30000);
$node->safe_psql('postgres', 'CHECKPOINT');
add_rows(30001, 35000);    # only in the WAL when the server dies
$node->stop('immediate');

# 3. the default replays OpenSSL's WAL and reads its pages
$log_offset = -s $node->logfile;
start_with(undef);
($auto, $why) = auto_choice($log_offset);
is(impl_in_use(), $auto, "default again: $auto, the faster ($why)");
is(fingerprint(), expected_fp(35000),
	'crash recovery with the default replays WAL written with OpenSSL');
$node->safe_psql('postgres', 'CHECKPOINT');
$node->stop;

# 4. offline verification under either implementation
for my $impl ('openssl', 'auto')
{
	local $ENV{BYOK_CIPHER_IMPL} = $impl;
	my ($rc, $out, $err) = pg_byok('verify', '-D', $node->data_dir);
	is($rc, 0, "pg_byok verify with BYOK_CIPHER_IMPL=$impl: exit 0");
	like($out . $err, qr/: 0 bad files/, "pg_byok verify ($impl): no bad file");
}

# 5. what a wrong setting does
$log_offset = -s $node->logfile;
ok(!start_with('aesni', fail_ok => 1), 'BYOK_CIPHER_IMPL=aesni: the server does not start');
like(
	substr(slurp_file($node->logfile), $log_offset),
	qr/FATAL:\s+invalid cipher implementation "aesni".*\n.*DETAIL:\s+The environment variable BYOK_CIPHER_IMPL is set to "aesni"\.\n.*HINT:\s+Unset it, or set it to auto, openssl or vaes\./,
	'and says which variable, which value and what is accepted');

$log_offset = -s $node->logfile;
if ($has_vaes)
{
	start_with('vaes');
	is(impl_in_use(), 'vaes-avx2', 'BYOK_CIPHER_IMPL=vaes on a VAES CPU: vaes-avx2');
	is(fingerprint(), expected_fp(35000), 'and reads everything back');
	$node->stop;
}
else
{
	ok(!start_with('vaes', fail_ok => 1),
		'BYOK_CIPHER_IMPL=vaes without VAES: the server does not start');
	like(substr(slurp_file($node->logfile), $log_offset),
		qr/FATAL:\s+the VAES cipher implementation is not available/,
		'and says so');
}

# 6. nothing of it at rest in clear
my @hits = scan_at_rest($node->data_dir, $marker);
is_deeply(\@hits, [], 'the marker is nowhere in the data directory (pages and WAL)')
  or diag join("\n", @hits);

done_testing();
