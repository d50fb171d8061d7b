
# Copyright (c) byok contributors

=pod

=head1 NAME

ByokTest - shared helpers for byok's TAP tests

=head1 SYNOPSIS

  use PostgreSQL::Test::Cluster;
  use PostgreSQL::Test::Utils;
  use Test::More;
  use lib 'test/perl';    # prove -I test/perl does this already
  use ByokTest;

  my $node = new_encrypted_node('main', allows_streaming => 1);
  $node->start;
  my $marker = random_marker();
  $node->safe_psql('postgres', "CREATE TABLE t AS SELECT '$marker' AS v");
  $node->safe_psql('postgres', 'CHECKPOINT');
  my @hits = scan_at_rest($node->data_dir, $marker, exclude => qr{^pg_wal/});
  is_deeply(\@hits, [], 'marker not at rest');

  my $emu = start_emulator();
  my $key = kpctl($emu, 'create-key', '--name', 'root');
  stop_emulator($emu);

=head1 DESCRIPTION

What the tests share: nodes that run byok (and stock ones to compare with),
the offline CLI, the at-rest scanner that every encryption test leans on, and
the Key Protect emulator (test/kms/kpemu.py) started in the background.

The scanner is deliberately simple and paranoid: it reads every regular file
below a directory (following symlinks such as pg_tblspc/*, once each) in
overlapping chunks and looks for the marker in the encodings a careless
implementation could leave behind.  It is proven by test/t/000_scanner.pl;
change both together.

=cut

package ByokTest;

use strict;
use warnings;

use Carp;
use Cwd qw(abs_path);
use Errno qw(ENOENT);
use Exporter 'import';
use Fcntl qw(:mode);
use File::Basename qw(dirname);
use File::Spec;
use IPC::Run;
use JSON::PP;
use MIME::Base64 qw(encode_base64);
use Time::HiRes qw(time usleep);

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More ();

our @EXPORT = qw(
  repo_root
  root_key_path
  new_encrypted_node
  new_stock_node
  pg_byok
  scan_at_rest
  marker_encodings
  random_marker
  start_emulator
  stop_emulator
  kpctl
  keyring_field
  wait_for
);

# Repository root: this file lives in <root>/test/perl.
my $REPO_ROOT = abs_path(dirname(abs_path(__FILE__)) . '/../..');

# Emulators started by this process, stopped at exit if a test forgot.
my @running_emulators;
my $emulator_seq = 0;
my $owner_pid    = $$;

# Let a developer run "prove -I test/perl test/t/..." by hand: what
# prove_installcheck would set (PostgreSQL's bindir first on PATH, and
# PG_REGRESS, which PostgreSQL::Test::Cluster->init needs) is derived from
# pg_config when missing.
{
	my $bindir = `pg_config --bindir`;
	chomp $bindir if defined $bindir;
	if ($bindir && ($ENV{PATH} // '') !~ m{(^|:)\Q$bindir\E/?(:|$)})
	{
		$ENV{PATH} = "$bindir:" . ($ENV{PATH} // '/usr/bin:/bin');
	}
	if (!$ENV{PG_REGRESS})
	{
		my $pgxs = `pg_config --pgxs`;
		chomp $pgxs if defined $pgxs;
		$ENV{PG_REGRESS} = dirname($pgxs) . '/../test/regress/pg_regress'
		  if $pgxs;
	}
}

# Default scanner chunk size; the overlap between chunks is the longest
# pattern minus one byte, so a hit is never lost at a chunk boundary.
my $SCAN_CHUNK = 1024 * 1024;

=pod

=head1 FUNCTIONS

=over

=item repo_root()

Absolute path of the repository (the directory holding the Makefile).

=cut

sub repo_root { return $REPO_ROOT; }

# Absolute version of $tmp_check: Utils sets it relative when TESTDIR is
# unset, and a root key path recorded in a keyring must not depend on the
# server's working directory.
sub _tmp_check
{
	my $dir = $PostgreSQL::Test::Utils::tmp_check;
	mkdir $dir unless -d $dir;
	return abs_path($dir);
}

=pod

=item root_key_path($name)

Where new_encrypted_node keeps the local root key of node C<$name>:
C<$tmp_check/$name.rootkey>.  It is on the same device as the nodes' data
directories (both under C<$tmp_check>), so the server's start-up and
C<pg_byok enable> / C<status> say so in a WARNING (I<"the local root key file
... is on the same device as the data directory">); only moving the key
silences it, which the suite does not do.  C<pg_byok enable> needs an
explicit C<--root-key-file> (or C<byok.root_key_file>) in initdb's layout:
new_encrypted_node always passes this path.

=cut

sub root_key_path
{
	my ($name) = @_;
	return _tmp_check() . "/$name.rootkey";
}

=pod

=item new_encrypted_node($name, %opts)

A new L<PostgreSQL::Test::Cluster>, initdb'ed with the remaining C<%opts>
(passed to C<< ->init >>: C<extra>, C<allows_streaming>, C<has_archiving>,
...), encrypted offline with C<pg_byok enable -D DATADIR --root-key-file
C<root_key_path($name)>>, and configured to preload byok.  Not started.

byok's own options, removed from C<%opts> before C<init>:

=over

=item root_key_file => PATH

Use this root key file instead of C<root_key_path($name)> (it is created by
C<pg_byok enable> if it does not exist; share one to give two nodes the same
root key).

=item enable_args => [ ... ]

Extra arguments for C<pg_byok enable> (e.g. C<--key-crn>, emulator settings).

=item preload => [ ... ]

Further libraries for C<shared_preload_libraries>, after byok.

=item conf => STRING

Appended to postgresql.conf after the byok settings.

=back

Dies, with pg_byok's output, if C<pg_byok enable> fails.

=cut

sub new_encrypted_node
{
	my ($name, %opts) = @_;

	my $root_key    = delete $opts{root_key_file} // root_key_path($name);
	my $enable_args = delete $opts{enable_args} // [];
	my $preload     = delete $opts{preload} // [];
	my $conf        = delete $opts{conf};

	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(%opts);

	my ($rc, $stdout, $stderr) = pg_byok('enable', '-D', $node->data_dir,
		'--root-key-file', $root_key, @$enable_args);
	if ($rc != 0)
	{
		croak "pg_byok enable failed for node \"$name\" (exit $rc)\n"
		  . "stdout:\n$stdout\nstderr:\n$stderr";
	}

	my $libs = join(',', 'byok', @$preload);
	$node->append_conf('postgresql.conf',
		"\n# Added by ByokTest.pm\n"
		  . "shared_preload_libraries = '$libs'\n"
		  . "byok.root_key_file = '$root_key'\n");
	$node->append_conf('postgresql.conf', $conf) if defined $conf;
	return $node;
}

=pod

=item new_stock_node($name, %opts)

Like new_encrypted_node, without byok: an initdb'ed, unstarted node.
C<%opts> go to C<< ->init >>, except C<conf> (appended to postgresql.conf).

=cut

sub new_stock_node
{
	my ($name, %opts) = @_;
	my $conf = delete $opts{conf};

	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(%opts);
	$node->append_conf('postgresql.conf', $conf) if defined $conf;
	return $node;
}

=pod

=item pg_byok(@args)

Runs the C<pg_byok> CLI (found on PATH: prove_installcheck puts PostgreSQL's
bindir first) and returns C<($exit_code, $stdout, $stderr)>.  A death by
signal N is reported as exit code 128+N.  Also logged to the test's log.

=cut

sub pg_byok
{
	my (@args) = @_;
	my ($stdout, $stderr) = ('', '');
	my @cmd = ('pg_byok', @args);

	Test::More::note('running: ' . join(' ', @cmd));
	my $ok = eval {
		IPC::Run::run(\@cmd, '<', \undef, '>', \$stdout, '2>', \$stderr);
		1;
	};
	if (!$ok)
	{
		# Could not even start it (not installed, not on PATH).
		return (127, $stdout, "could not run pg_byok: $@");
	}
	my $status = $?;
	my $rc =
	    ($status & 127)
	  ? 128 + ($status & 127)
	  : $status >> 8;
	my $log = "# pg_byok exit $rc\n";
	$log .= join('', map { "# stdout: $_\n" } split /\n/, $stdout);
	$log .= join('', map { "# stderr: $_\n" } split /\n/, $stderr);
	print STDOUT $log;
	return ($rc, $stdout, $stderr);
}

=pod

=item marker_encodings($marker)

The patterns scan_at_rest looks for, as a list of C<[encoding, bytes]> pairs:

  raw        the bytes of the marker
  hex        lowercase hex
  HEX        uppercase hex
  base64/K   base64 of the marker starting at byte K (0, 1, 2) of a 3-byte
             group: only the characters that do not depend on neighbouring
             bytes (all of the marker but the low 2 or 4 bits of its last
             byte)
  base64url/K  the same in the URL-safe alphabet, when it differs
  utf16le    each byte followed by a zero byte
  utf16be    each byte preceded by a zero byte

=cut

sub marker_encodings
{
	my ($marker) = @_;
	croak 'marker must not be empty' unless defined $marker && length $marker;
	croak 'marker must be ASCII' if $marker =~ /[^\x00-\x7f]/;
	my $len = length $marker;

	my @enc = (
		[ 'raw', $marker ],
		[ 'hex', lc unpack('H*', $marker) ],
		[ 'HEX', uc unpack('H*', $marker) ],);

	for my $k (0 .. 2)
	{
		# Encode k filler bytes plus the marker; drop the leading characters
		# that depend on the filler (0, 2 or 3 of them) and, in a partial last
		# group of r bytes, the characters that depend on what follows the
		# marker: r = 1 keeps one character, r = 2 keeps two.  What remains
		# covers every bit of the marker but the low 2 or 4 bits of its last
		# byte (when r > 0).
		my $b64   = encode_base64(("\0" x $k) . $marker, '');
		my $r     = ($k + $len) % 3;
		my $keep  = int(($k + $len) / 3) * 4 + $r;
		my $skip  = (0, 2, 3)[$k];
		my $inner = substr($b64, $skip, $keep - $skip);
		croak "marker \"$marker\" too short for base64 alignment $k"
		  if length($inner) < 8;
		push @enc, [ "base64/$k", $inner ];
		(my $url = $inner) =~ tr{+/}{-_};
		push @enc, [ "base64url/$k", $url ] if $url ne $inner;
	}

	push @enc, [ 'utf16le', join('', map { "$_\0" } split //, $marker) ];
	push @enc, [ 'utf16be', join('', map { "\0$_" } split //, $marker) ];
	return @enc;
}

=pod

=item scan_at_rest($dir, $marker, %opts)

Searches every regular file below C<$dir> for C<$marker> in each encoding of
marker_encodings and returns the hits as a sorted list of strings
C<"relative/path: encoding"> (empty list: clean).  Symbolic links to
directories (pg_tblspc/*) are followed, each directory once.  A file that
vanishes during the scan is skipped; any other read error dies, since a
scanner that skips what it cannot read proves nothing.

Options:

=over

=item exclude => qr/.../ or [ qr/.../, ... ]

Skip files whose path relative to C<$dir> matches (e.g. C<qr{^pg_wal/}>).

=item chunk_size => BYTES

Read size (default 1 MiB); consecutive reads overlap by the longest pattern
minus one byte.

=back

=cut

sub scan_at_rest
{
	my ($dir, $marker, %opts) = @_;
	croak "scan_at_rest: \"$dir\" is not a directory" unless -d $dir;

	my $exclude = $opts{exclude} // [];
	$exclude = [$exclude] unless ref $exclude eq 'ARRAY';
	my $chunk = $opts{chunk_size} // $SCAN_CHUNK;

	my @patterns = marker_encodings($marker);
	my $overlap  = 0;
	for my $p (@patterns)
	{
		$overlap = length($p->[1]) - 1 if length($p->[1]) - 1 > $overlap;
	}
	croak 'chunk_size must exceed the longest pattern' if $chunk <= $overlap;

	my @hits;
	my %seen_dir;
	my @todo = ('');
	while (@todo)
	{
		my $rel  = shift @todo;
		my $path = $rel eq '' ? $dir : "$dir/$rel";

		my @st = stat($path);
		if (!@st)
		{
			next if $! == ENOENT;
			croak "could not stat \"$path\": $!";
		}
		next if $seen_dir{"$st[0]:$st[1]"}++;

		my $dh;
		if (!opendir($dh, $path))
		{
			next if $! == ENOENT;
			croak "could not open directory \"$path\": $!";
		}
		my @names = sort grep { $_ ne '.' && $_ ne '..' } readdir $dh;
		closedir $dh;

		for my $name (@names)
		{
			my $relname = $rel eq '' ? $name : "$rel/$name";
			my @fst = stat("$path/$name");
			if (!@fst)
			{
				my $err = $!;
				# Gone since readdir: fine on a running server.  A link
				# pointing nowhere (a lost tablespace?) is not.
				croak "dangling symbolic link \"$path/$name\""
				  if $err == ENOENT && -l "$path/$name";
				next if $err == ENOENT;
				croak "could not stat \"$path/$name\": $err";
			}
			if (S_ISDIR($fst[2]))
			{
				push @todo, $relname;
				next;
			}
			next unless S_ISREG($fst[2]);
			next if grep { $relname =~ $_ } @$exclude;

			push @hits, map { "$relname: $_" }
			  _scan_file("$path/$name", \@patterns, $chunk, $overlap);
		}
	}
	return sort @hits;
}

# Encodings of the patterns found in one file (each once), reading $chunk
# bytes at a time and keeping the last $overlap bytes of the previous read.
sub _scan_file
{
	my ($file, $patterns, $chunk, $overlap) = @_;
	my $fh;
	if (!open($fh, '<:raw', $file))
	{
		return () if $! == ENOENT;
		croak "could not open \"$file\": $!";
	}

	my %found;
	my $carry = '';
	while (1)
	{
		my $buf;
		my $n = sysread($fh, $buf, $chunk);
		croak "could not read \"$file\": $!" unless defined $n;
		last if $n == 0;
		my $window = $carry . $buf;
		for my $p (@$patterns)
		{
			$found{ $p->[0] } = 1
			  if !$found{ $p->[0] } && index($window, $p->[1]) >= 0;
		}
		$carry =
		  length($window) > $overlap
		  ? substr($window, -$overlap)
		  : $window;
		$carry = '' if $overlap == 0;
	}
	close $fh;
	return grep { $found{$_} } map { $_->[0] } @$patterns;
}

=pod

=item random_marker()

A fresh marker: C<BYOKMARK_> followed by 16 random letters and digits.

=cut

sub random_marker
{
	my @alnum = ('A' .. 'Z', 'a' .. 'z', '0' .. '9');
	my $s     = '';
	open(my $fh, '<:raw', '/dev/urandom') or croak "/dev/urandom: $!";
	while (length($s) < 16)
	{
		read($fh, my $b, 1) == 1 or croak "/dev/urandom: short read";
		my $v = ord $b;
		# rejection sampling keeps the 62 characters uniform
		$s .= $alnum[ $v % 62 ] if $v < 248;
	}
	close $fh;
	return "BYOKMARK_$s";
}

=pod

=item start_emulator(%opts)

Starts the Key Protect emulator in the background:
C<python3 test/kms/kpemu.py serve --state-dir DIR --port 0 [args]> with DIR
= C<$tmp_check/emu_N> (fresh) unless C<state_dir> is given, output in
C<DIR/emulator.log>.  Waits (up to C<timeout> seconds, default 30) until
C<DIR/emulator.json> exists and decodes, and returns a hashref of its fields
plus C<state_dir>, C<apikey_file> (C<DIR/apikey>) and C<log_file>.  Dies
with the log if the emulator exits or times out first.

Options: C<state_dir>, C<args> (arrayref of extra C<serve> arguments),
C<timeout>.

=cut

sub start_emulator
{
	my (%opts) = @_;
	my $timeout = $opts{timeout} // 30;
	my $state_dir = $opts{state_dir};
	if (!defined $state_dir)
	{
		do
		{
			$emulator_seq++;
			$state_dir = _tmp_check() . "/emu_$emulator_seq";
		} while (-e $state_dir);
	}
	mkdir $state_dir unless -d $state_dir;
	$state_dir = abs_path($state_dir);
	my $info_file = "$state_dir/emulator.json";
	my $log_file  = "$state_dir/emulator.log";
	unlink $info_file;

	my @cmd = (
		'python3', "$REPO_ROOT/test/kms/kpemu.py",
		'serve', '--state-dir', $state_dir, '--port', '0',
		@{ $opts{args} // [] });
	Test::More::note('starting emulator: ' . join(' ', @cmd));
	my $h = IPC::Run::start(\@cmd, '<', '/dev/null', '>>', $log_file, '2>&1');

	my $info;
	my $deadline = time + $timeout;
	while (1)
	{
		if (-s $info_file)
		{
			my $text = eval { slurp_file($info_file) };
			$info = eval { decode_json($text) } if defined $text;
			last if ref $info eq 'HASH';
		}
		if (!$h->pumpable)
		{
			$h->finish;
			croak "emulator exited (status $?) before writing $info_file\n"
			  . _tail($log_file);
		}
		if (time > $deadline)
		{
			$h->kill_kill(grace => 2);
			croak "emulator did not write $info_file within ${timeout}s\n"
			  . _tail($log_file);
		}
		usleep(100_000);
	}

	my $emu = {
		%$info,
		state_dir   => $state_dir,
		apikey_file => "$state_dir/apikey",
		log_file    => $log_file,
		_harness    => $h,
	};
	push @running_emulators, $emu;
	Test::More::note('emulator up: '
		  . join(', ',
			map { "$_=" . ($info->{$_} // 'null') }
			grep { !ref $info->{$_} && !/key|token|secret|passw/i }
			  sort keys %$info));
	return $emu;
}

=pod

=item stop_emulator($emu)

Stops an emulator from start_emulator (SIGTERM, SIGKILL after 5 s).
Emulators still running when the test script exits are stopped too.

=cut

sub stop_emulator
{
	my ($emu) = @_;
	my $h = delete $emu->{_harness};
	return unless $h;
	$h->kill_kill(grace => 5) if $h->pumpable;
	eval { $h->finish };
	@running_emulators = grep { $_ != $emu } @running_emulators;
	return;
}

=pod

=item kpctl($emu, @args)

Runs C<python3 test/kms/kpemu.py ctl --state-dir DIR @args> and returns its
standard output decoded as JSON (undef when it prints nothing).  Dies with
the output if the command fails or prints something that is not JSON.

=cut

sub kpctl
{
	my ($emu, @args) = @_;
	my @cmd = ('python3', "$REPO_ROOT/test/kms/kpemu.py",
		'ctl', '--state-dir', $emu->{state_dir}, @args);
	my ($stdout, $stderr) = ('', '');
	IPC::Run::run(\@cmd, '<', \undef, '>', \$stdout, '2>', \$stderr)
	  or croak 'kpctl ' . join(' ', @args) . " failed (status $?)\n"
	  . "stdout: $stdout\nstderr: $stderr";
	return undef if $stdout =~ /^\s*$/;
	my $res = eval { JSON::PP->new->allow_nonref->decode($stdout) };
	croak 'kpctl ' . join(' ', @args) . " printed non-JSON: $stdout\n$@"
	  unless defined $res || $stdout =~ /^\s*null\s*$/;
	return $res;
}

=pod

=item keyring_field($node, $field)

The value of C<$field> in the node's keyring file (C<$PGDATA/byok/keyring>),
or undef if the keyring has no such line.

=cut

sub keyring_field
{
	my ($node, $field) = @_;
	my $text = slurp_file($node->data_dir . '/byok/keyring');
	return $text =~ /^\Q$field\E = (.*)$/m ? $1 : undef;
}

=pod

=item wait_for($secs, $cond)

Calls C<$cond> every 0.1 s until it returns true or C<$secs> seconds have
passed.  Returns the seconds it took (a float, possibly 0), or undef if
C<$cond> never became true: test with C<defined>.

=cut

sub wait_for
{
	my ($secs, $cond) = @_;
	my $start = time;
	while (time - $start < $secs)
	{
		return time - $start if $cond->();
		usleep(100_000);
	}
	return undef;
}

# Last lines of a log file, for error messages.
sub _tail
{
	my ($file, $lines) = @_;
	$lines //= 40;
	open(my $fh, '<', $file) or return "($file: $!)\n";
	my @l = <$fh>;
	close $fh;
	splice(@l, 0, @l - $lines) if @l > $lines;
	return "--- last lines of $file ---\n" . join('', @l);
}

END
{
	# Keep the exit status of the test script.
	local $?;
	if ($$ == $owner_pid)
	{
		stop_emulator($_) for @running_emulators;
	}
}

=pod

=back

=cut

1;
