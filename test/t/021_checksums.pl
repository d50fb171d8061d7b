
# Copyright (c) byok contributors

# Data checksums on encrypted files.  byok stores in pd_checksum the checksum
# of the page as written (ciphertext) and puts the plaintext checksum back
# after decrypting (DESIGN.md section 4), so PostgreSQL's own offline and
# online checksum verification keeps working on an encrypted cluster:
#
#   - pg_checksums --check (offline) passes on the encrypted files;
#   - pg_basebackup verifies checksums while streaming the files, and
#     passes; the backup holds the keyring and no plaintext marker in any
#     relation file;
#   - one byte flipped in the encrypted area of a user table's page is
#     caught by pg_checksums --check (naming the file and block), by
#     pg_basebackup, by the server when the page is read ("invalid page in
#     block 0"), and by pg_byok verify.
#
# Without data checksums pg_byok verify can only check the decrypted page
# header: the same flip in the data area goes unnoticed (documented), while
# a flip in the header (bytes 12..23) is reported as "does not decrypt to a
# valid page" -- and the server refuses the page too.

use strict;
use warnings;

use File::Path qw(rmtree);
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use ByokTest;

my $bindir = `pg_config --bindir`;
chomp $bindir;
my $pg_checksums = "$bindir/pg_checksums";

# Run a command, return (exit code, stdout, stderr).
sub run_cmd
{
	my (@cmd) = @_;
	my ($out, $err) = ('', '');
	note 'running: ' . join(' ', @cmd);
	IPC::Run::run(\@cmd, '<', \undef, '>', \$out, '2>', \$err);
	my $rc = $? >> 8;
	print STDOUT "# exit $rc\n"
	  . join('', map { "# stdout: $_\n" } split /\n/, $out)
	  . join('', map { "# stderr: $_\n" } split /\n/, $err);
	return ($rc, $out, $err);
}

# XOR one byte of a file at an offset with $mask; returns the old byte.
sub flip_byte
{
	my ($file, $offset, $mask) = @_;
	open(my $fh, '+<:raw', $file) or die "open $file: $!";
	sysseek($fh, $offset, 0) or die "seek $file: $!";
	sysread($fh, my $b, 1) == 1 or die "read $file: $!";
	sysseek($fh, $offset, 0) or die "seek $file: $!";
	syswrite($fh, chr(ord($b) ^ $mask), 1) == 1 or die "write $file: $!";
	close($fh) or die "close $file: $!";
	return ord($b);
}

sub read_bytes
{
	my ($file, $offset, $len) = @_;
	open(my $fh, '<:raw', $file) or die "open $file: $!";
	sysseek($fh, $offset, 0) or die "seek $file: $!";
	sysread($fh, my $buf, $len) == $len or die "read $file: $!";
	close $fh;
	return $buf;
}

my @scan_exclude = (qr{(^|/)pgsql_tmp/}, qr{^pg_stat(_tmp)?/});

# A workload that puts a marker into a table, its index, its TOAST table, and
# its FSM and VM forks, then checkpoints.  Returns the table's file path
# (relative to the data directory).
sub workload
{
	my ($node, $marker) = @_;
	$node->safe_psql(
		'postgres', qq{
		CREATE TABLE t (id int PRIMARY KEY, v text, big text);
		ALTER TABLE t ALTER COLUMN big SET STORAGE EXTERNAL;
		INSERT INTO t SELECT i, '$marker-' || i,
		       CASE WHEN i % 50 = 0 THEN repeat('$marker ', 300) END
		  FROM generate_series(1, 20000) i;
		CREATE INDEX t_v ON t (v);
		UPDATE t SET v = v || '-u' WHERE id % 9 = 0;
		DELETE FROM t WHERE id % 13 = 0;
		VACUUM t;
		CREATE UNLOGGED TABLE u AS SELECT i, '$marker' AS v FROM generate_series(1, 1000) i;
		CHECKPOINT;
	});
	return $node->safe_psql('postgres',
		q{SELECT pg_relation_filepath('t')});
}

my $marker = random_marker();
note "marker: $marker";

# 18's initdb turns data checksums on by default, and its asynchronous reads
# report a bad page without the per-page checksum WARNING
my ($pg_major) = `pg_config --version` =~ /^PostgreSQL (\d+)/;

###########################################################################
# With data checksums
###########################################################################

my $node = new_encrypted_node(
	'cksum',
	extra            => ['--data-checksums'],
	allows_streaming => 1,
	conf             => "autovacuum = off\n");
$node->start;
is($node->safe_psql('postgres', 'SHOW data_checksums'),
	'on', 'cluster has data checksums');

my $relpath  = workload($node, $marker);
my $expected = $node->safe_psql('postgres',
	q{SELECT count(*) || ' ' || md5(string_agg(t::text, ',' ORDER BY id)) FROM t});
$node->stop;
my $pgdata  = $node->data_dir;
my $relfile = "$pgdata/$relpath";
note "table t is $relpath";

my @hits = scan_at_rest($pgdata, $marker, exclude => \@scan_exclude);
is_deeply(\@hits, [], 'relation files are encrypted (no marker at rest)');

my ($rc, $out, $err) = run_cmd($pg_checksums, '--check', '-D', $pgdata);
is($rc, 0, 'pg_checksums --check passes on the encrypted cluster');
like($out, qr/Bad checksums:\s+0\b/, 'pg_checksums reports 0 bad checksums');
like($out, qr/Blocks scanned:\s+([1-9]\d{2,})/,
	'pg_checksums scanned the blocks');

($rc, $out, $err) = pg_byok('verify', '-D', $pgdata);
is($rc, 0, 'pg_byok verify passes');
like($out, qr/: 0 bad files$/m, 'pg_byok verify: 0 bad files');

# Online: BASE_BACKUP verifies the checksum of every page it sends.
$node->start;
my $backup = "$PostgreSQL::Test::Utils::tmp_check/backup_ok";
($rc, $out, $err) = run_cmd(
	'pg_basebackup', '-D', $backup, '-X', 'fetch', '--no-sync',
	'-h', $node->host, '-p', $node->port);
is($rc, 0, 'pg_basebackup (verifying checksums) succeeds');
unlike($err, qr/checksum/i, 'pg_basebackup reports no checksum failure');
ok(-f "$backup/byok/keyring", 'the base backup carries the keyring');
ok(-f "$backup/$relpath", "the base backup holds $relpath");
@hits = scan_at_rest($backup, $marker, exclude => \@scan_exclude);
is_deeply(\@hits, [], 'no marker in the relation files of the base backup');
$node->stop;

# Flip one byte in the encrypted area of block 0 of t.
my $size = -s $relfile;
cmp_ok($size, '>=', 8192, "$relpath has at least one block");
isnt(read_bytes($relfile, 0, 8192), "\0" x 8192, 'block 0 is not all zeros');
my $old = flip_byte($relfile, 4000, 0x5a);
note sprintf('flipped byte 4000 of block 0: 0x%02x -> 0x%02x',
	$old, $old ^ 0x5a);

($rc, $out, $err) = run_cmd($pg_checksums, '--check', '-D', $pgdata);
isnt($rc, 0, 'pg_checksums --check fails after the flip');
like(
	$err,
	qr/checksum verification failed in file "[^"]*\Q$relpath\E", block 0:/,
	'pg_checksums names the file and block 0');
like($out, qr/Bad checksums:\s+1\b/, 'pg_checksums reports 1 bad checksum');

($rc, $out, $err) = pg_byok('verify', '-D', $pgdata);
is($rc, 1, 'pg_byok verify fails after the flip');
like(
	$out,
	qr/^\Q$relpath\E: block 0: checksum of the stored page does not match$/m,
	'pg_byok verify reports the file and block');
like($out, qr/: 1 bad file$/m, 'pg_byok verify: exactly 1 bad file');

$node->start;
my ($stdout, $stderr) = ('', '');
my $log_offset = -s $node->logfile;
my $ret = $node->psql(
	'postgres', 'SELECT count(*) FROM t',
	stdout => \$stdout,
	stderr => \$stderr);
isnt($ret, 0, 'reading the damaged table fails');
like(
	$stderr,
	qr/ERROR:\s+invalid page in block 0 of relation "?\Q$relpath\E"?/,
	'the server reports "invalid page in block 0" of the table');
SKIP:
{
	skip "18 reports the page as invalid without a checksum WARNING", 1 if $pg_major >= 18;
	ok( $node->log_contains(
			qr/WARNING:\s+page verification failed, calculated checksum \d+ but expected \d+/,
			$log_offset),
		"PostgreSQL's own checksum verification logged the failure");
}

$backup = "$PostgreSQL::Test::Utils::tmp_check/backup_bad";
($rc, $out, $err) = run_cmd(
	'pg_basebackup', '-D', $backup, '-X', 'fetch', '--no-sync',
	'-h', $node->host, '-p', $node->port);
isnt($rc, 0, 'pg_basebackup fails on the damaged page');
like(
	$err,
	qr/checksum verification failed in file "[^"]*\Q$relpath\E", block 0/,
	'pg_basebackup names the damaged file and block');
rmtree($backup);
$node->stop;

# Repair: everything is consistent again.
flip_byte($relfile, 4000, 0x5a);
($rc, $out, $err) = run_cmd($pg_checksums, '--check', '-D', $pgdata);
is($rc, 0, 'pg_checksums --check passes again once the byte is restored');
$node->start;
is( $node->safe_psql(
		'postgres',
		q{SELECT count(*) || ' ' || md5(string_agg(t::text, ',' ORDER BY id)) FROM t}
	),
	$expected,
	'the table reads back intact');
$node->stop;

###########################################################################
# Without data checksums
###########################################################################

my $nock = new_encrypted_node(
	'nocksum',
	conf => "autovacuum = off\n",
	$pg_major >= 18 ? (extra => ['--no-data-checksums']) : ());
$nock->start;
is($nock->safe_psql('postgres', 'SHOW data_checksums'),
	'off', 'second cluster has no data checksums');
my $relpath2 = workload($nock, $marker);
$nock->stop;
my $relfile2 = $nock->data_dir . "/$relpath2";

($rc, $out, $err) = pg_byok('verify', '-D', $nock->data_dir);
is($rc, 0, 'no checksums: pg_byok verify passes on the intact cluster');
like($out, qr/no data checksums: pages checked by their headers/,
	'no checksums: pg_byok verify says it checks page headers only');

# A flip in the data area cannot be seen without checksums.
flip_byte($relfile2, 4000, 0x5a);
($rc, $out, $err) = pg_byok('verify', '-D', $nock->data_dir);
is($rc, 0,
	'no checksums: a flip in the data area is not detectable by pg_byok verify'
);
flip_byte($relfile2, 4000, 0x5a);

# A flip in the header is.  CTR flips the same bits of the plaintext: in the
# high byte of pd_lower / pd_upper / pd_special (13, 15, 17), XOR 0xff always
# makes the header invalid, for pg_byok verify and for the server alike (the
# server's own check does not look at pd_pagesize_version, bytes 18-19).
my @header_offsets = (13, 15, 17);
my $hoff           = $header_offsets[ int(rand(@header_offsets)) ];
note "flipping byte $hoff of block 0 of $relpath2";
flip_byte($relfile2, $hoff, 0xff);
($rc, $out, $err) = pg_byok('verify', '-D', $nock->data_dir);
is($rc, 1, "no checksums: a flip of header byte $hoff fails pg_byok verify");
like(
	$out,
	qr/^\Q$relpath2\E: block 0: page does not decrypt to a valid page$/m,
	'no checksums: pg_byok verify says the page does not decrypt to a valid page'
);

$nock->start;
($stdout, $stderr) = ('', '');
$ret = $nock->psql(
	'postgres', 'SELECT count(*) FROM t',
	stdout => \$stdout,
	stderr => \$stderr);
isnt($ret, 0, 'no checksums: reading the damaged table fails');
like(
	$stderr,
	qr/ERROR:\s+invalid page in block 0 of relation "?\Q$relpath2\E"?/,
	'no checksums: the server reports "invalid page in block 0"');
$nock->stop;

flip_byte($relfile2, $hoff, 0xff);
($rc, $out, $err) = pg_byok('verify', '-D', $nock->data_dir);
is($rc, 0, 'no checksums: pg_byok verify passes once the byte is restored');

done_testing();
