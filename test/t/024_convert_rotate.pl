
# Copyright (c) byok contributors

# Re-encrypting a whole cluster offline, and what it leaves in pg_wal:
#
# 1. pg_byok enable on a stock cluster whose pg_wal holds recycled segments
#    (old segments renamed to future names, still full of a marker
#    workload's rows): afterwards the whole data directory holds 0 markers
#    and pg_byok verify finds no plaintext WAL page.  The stock control run
#    finds the marker in pg_wal, so the scan can see it.
# 2. A format-1 cluster (made by test/unit/make_format1 the way byok 1.0
#    wrote it) is refused at start with pg_byok convert named; pg_byok
#    convert, killed with SIGKILL at random points and resumed, converts it:
#    verify clean, every row equal, 0 markers, no page in format 1 left.
# 3. pg_byok rotate-data-key, killed at random points and resumed: verify
#    clean, every row equal, 0 markers; the old wrapped key material is gone
#    from the keyring, and put back, it decrypts no file at all.

use strict;
use warnings;

use File::Copy;
use File::Find;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

use ByokTest;

my $marker = random_marker();
note "marker: $marker";
my $make_format1 = repo_root() . '/test/unit/make_format1';
ok(-x $make_format1, 'test tool make_format1 is built') or BAIL_OUT('make test/unit/make_format1');

# The server log and statistics are out of scope for the at-rest scan.
my @exclude = (qr{^pg_stat(_tmp)?/}, qr{^(log|pg_log)/}, qr{^current_logfiles$});

my $wal_conf = "wal_level = replica\nmin_wal_size = 64MB\nmax_wal_size = 64MB\nwal_keep_size = 0\n"
  . "checkpoint_timeout = 1h\nautovacuum = off\n";

# A marker workload, then enough WAL churn and checkpoints that the
# marker's segments are recycled (renamed to future segment names).
sub marker_workload
{
	my ($node) = @_;
	# the bulk first (it gives the kills something to interrupt), then the
	# marker, then just enough WAL and two checkpoints that the marker's
	# segment is recycled (renamed to a future name) and not yet reused
	$node->safe_psql('postgres', qq{
		CREATE TABLE big AS SELECT g AS id, md5(g::text) || repeat('y', 150) AS pad
		  FROM generate_series(1, 250000) g;
		CHECKPOINT;
		SELECT pg_switch_wal();
		CREATE TABLE m (id int PRIMARY KEY, v text);
		INSERT INTO m SELECT i, '$marker-' || i FROM generate_series(1, 2000) i;
		SELECT pg_switch_wal();
		CREATE TABLE churn AS SELECT g, md5(g::text) AS h FROM generate_series(1, 100000) g;
		DROP TABLE churn;
		SELECT pg_switch_wal();
		CHECKPOINT;
		CHECKPOINT;
	});
}

sub table_state
{
	my ($node) = @_;
	return $node->safe_psql('postgres', q{
		SELECT (SELECT count(*) || ':' || md5(string_agg(v, ',' ORDER BY id)) FROM m) || '/' ||
		       (SELECT count(*) || ':' || md5(string_agg(pad, ',' ORDER BY id)) FROM big)});
}

sub hits_in
{
	my ($dir) = @_;
	my @hits = scan_at_rest($dir, $marker, exclude => \@exclude);
	note "hit: $_" for @hits[0 .. ($#hits < 4 ? $#hits : 4)];
	return scalar(@hits);
}

sub wal_hits
{
	my ($dir) = @_;
	my @hits = scan_at_rest("$dir/pg_wal", $marker);
	return scalar(@hits);
}

# Segment names in pg_wal.
sub segments
{
	my ($dir) = @_;
	opendir(my $dh, "$dir/pg_wal") or die $!;
	my @s = sort grep { /^[0-9A-F]{24}$/ } readdir($dh);
	closedir $dh;
	return @s;
}

# Kill "pg_byok @args" with SIGKILL after a random delay, $n times (fewer
# if it finishes first); returns how many kills hit a running process.
sub kill_randomly
{
	my ($n, $max_ms, @args) = @_;
	my $kills = 0;
	for my $i (1 .. $n)
	{
		my ($out, $err) = ('', '');
		my $h = IPC::Run::start([ 'pg_byok', @args ], '<', \undef, '>', \$out, '2>', \$err);
		usleep(int(5_000 + rand($max_ms * 1000)));
		if ($h->pumpable)
		{
			$h->signal('KILL');
			$kills++;
		}
		$h->finish;
		note "kill $i: " . ($? & 127 ? 'killed' : "exited " . ($? >> 8)) . "; $out $err";
		last unless $? & 127;
	}
	return $kills;
}

# --- 1. enable over recycled plaintext segments -----------------------------------

my $stock = new_stock_node('recycled', conf => $wal_conf);
$stock->start;
marker_workload($stock);
my $state = table_state($stock);
$stock->stop;
my $stock_wal_hits = wal_hits($stock->data_dir);
cmp_ok($stock_wal_hits, '>', 0, "control: the stock cluster's pg_wal holds the marker ($stock_wal_hits hits)");
my @segs = segments($stock->data_dir);
cmp_ok(scalar(@segs), '>', 2, scalar(@segs) . ' segments in pg_wal, recycled ones among them');

my $root = root_key_path('recycled');
my ($rc, $out, $err) = pg_byok('enable', '-D', $stock->data_dir, '--root-key-file', $root);
is($rc, 0, 'pg_byok enable') or diag("$out\n$err");
like($out, qr/encrypted \d+ WAL pages in \d+ segments/, 'enable reports the WAL pages it encrypted');
is(hits_in($stock->data_dir), 0, 'after enable: 0 markers anywhere in the data directory (recycled segments included)');
($rc, $out, $err) = pg_byok('verify', '-D', $stock->data_dir);
is($rc, 0, 'pg_byok verify: no plaintext WAL page, every page decrypts') or diag("$out\n$err");
$stock->append_conf('postgresql.conf',
	"shared_preload_libraries = 'byok'\nbyok.root_key_file = '$root'\n");
$stock->start;
is(table_state($stock), $state, 'encrypted cluster: every row equal');
$stock->stop;
is(hits_in($stock->data_dir), 0, 'after the first encrypted run: 0 markers');

# --- 2. format 1 -> 2 -------------------------------------------------------------

my $node = new_encrypted_node('convert', conf => $wal_conf);
my $nroot = root_key_path('convert');
$node->start;
marker_workload($node);
$state = table_state($node);
$node->stop;
($rc, $out, $err) = IPC::Run::run([ $make_format1, $node->data_dir, $nroot ], '>', \$out, '2>', \$err) ? (0) : (1);
is($rc, 0, 'make_format1 wrote the cluster in format 1') or diag("$out\n$err");
like(slurp_file($node->data_dir . '/byok/keyring'), qr/^format = 1$/m, 'keyring says format 1');

# the server refuses format 1 and names the command
$node->append_conf('postgresql.conf', "log_min_messages = fatal\n");
ok(!$node->start(fail_ok => 1), 'a format-1 cluster does not start');
like(slurp_file($node->logfile),
	qr/FATAL:  cluster is encrypted in byok's on-disk format 1; this byok needs format 2.*HINT:  With the server stopped, run "pg_byok convert -D /s,
	'FATAL names pg_byok convert');

my $kills = kill_randomly(4, 250, 'convert', '-D', $node->data_dir);
note "convert killed $kills times";
like(slurp_file($node->data_dir . '/byok/keyring'), qr/^state = (converting|enabled)$/m,
	'interrupted convert: keyring is converting (or done)');
if ($kills > 0)
{
	($rc, $out, $err) = pg_byok('verify', '-D', $node->data_dir);
	isnt($rc, 0, 'verify refuses a half-converted cluster');
}
($rc, $out, $err) = pg_byok('convert', '-D', $node->data_dir);
is($rc, 0, 'pg_byok convert completes') or diag("$out\n$err");
like($out, qr/re-encrypted \d+ files \([\d.]+ MB\) in [\d.]+ s \([\d.]+ MB\/s\)/, 'convert reports throughput');
like(slurp_file($node->data_dir . '/byok/keyring'), qr/^format = 2$/m, 'keyring says format 2');
($rc, $out, $err) = pg_byok('verify', '-D', $node->data_dir);
is($rc, 0, 'verify after convert: clean (no format-1 or plaintext page left, WAL included)')
  or diag("$out\n$err");
is(hits_in($node->data_dir), 0, 'after convert: 0 markers');
ok(!-e $node->data_dir . '/byok/recrypt.journal', 'no journal left');
my @tmp;
find(sub { push @tmp, $File::Find::name if /\.byok\.tmp$/ }, $node->data_dir);
is(scalar(@tmp), 0, 'no temp file left');
$node->start;
is(table_state($node), $state, 'converted cluster: every row equal');
$node->safe_psql('postgres', 'INSERT INTO m VALUES (0, \'after convert\'); CHECKPOINT');
$state = table_state($node);
$node->stop;

# --- 3. data-key rotation ------------------------------------------------------------

my $old_keyring = slurp_file($node->data_dir . '/byok/keyring');
my ($old_wrapped) = $old_keyring =~ /^wrapped_key = (\S+)$/m;
ok($old_wrapped, 'old wrapped key read');

$kills = kill_randomly(4, 250, 'rotate-data-key', '-D', $node->data_dir);
note "rotate-data-key killed $kills times";
if ($kills > 0)
{
	like(slurp_file($node->data_dir . '/byok/keyring'), qr/^state = (rotating|enabled)$/m,
		'interrupted rotation: keyring is rotating (or done)');
}
($rc, $out, $err) = pg_byok('rotate-data-key', '-D', $node->data_dir);
is($rc, 0, 'pg_byok rotate-data-key completes') or diag("$out\n$err");
my $new_keyring = slurp_file($node->data_dir . '/byok/keyring');
unlike($new_keyring, qr/\Q$old_wrapped\E/, 'the old wrapped key material is gone from the keyring');
like($new_keyring, qr/^state = enabled$/m, 'keyring enabled');
unlike($new_keyring, qr/^recrypt_/m, 'no re-encryption fields left');
($rc, $out, $err) = pg_byok('verify', '-D', $node->data_dir);
is($rc, 0, 'verify after rotation: clean') or diag("$out\n$err");
is(hits_in($node->data_dir), 0, 'after rotation: 0 markers');

# The old material, put back, decrypts nothing: every relation file with a
# non-zero page and every WAL segment with a non-zero page is bad.
my $expect_bad = 0;
find(
	sub {
		return unless -f $_;
		my $rel = $File::Find::name;
		return unless $rel =~ m{/(global|base/\d+|pg_tblspc/.*)/\d+(_(fsm|vm|init))?(\.\d+)?$}
		  || $rel =~ m{/pg_wal/[0-9A-F]{24}$};
		open(my $fh, '<:raw', $_) or die $!;
		my $buf;
		while (read($fh, $buf, 8192) == 8192)
		{
			if ($buf =~ /[^\0]/) { $expect_bad++; last; }
		}
		close $fh;
	},
	$node->data_dir);
my $saved = $node->data_dir . '/byok/keyring.rotated';
copy($node->data_dir . '/byok/keyring', $saved) or die $!;
open(my $kfh, '>', $node->data_dir . '/byok/keyring') or die $!;
print $kfh $old_keyring;
close $kfh;
($rc, $out, $err) = pg_byok('verify', '-D', $node->data_dir);
isnt($rc, 0, 'verify with the old key material fails');
my ($bad) = $out =~ /: (\d+) bad files?/;
is($bad, $expect_bad, "the old key material decrypts no file: all $expect_bad non-empty files bad");
move($saved, $node->data_dir . '/byok/keyring') or die $!;

$node->start;
is(table_state($node), $state, 'rotated cluster: every row equal');
$node->stop('immediate');
$node->start;
is(table_state($node), $state, 'and after a crash');
$node->stop;

done_testing();
