
# Copyright (c) byok contributors

# The Debian package and the docs that tell an operator how to use it, tried
# in a fresh Debian 12 root as a new user would (run as root by
# scripts/test.sh, stage "debian").
#
# A cached debootstrap root (scripts/mkroot.sh, /var/cache/byok/roots/
# bookworm-byok: minbase, the build dependencies and lintian installed,
# postgresql-15, python3 and openssl only downloaded) is the lower layer of
# an overlay per part, so a run never changes it; each part runs in its own
# network and PID namespace (loopback only: the packaged cluster's port
# 5432 is the root's own, and nothing outlives the part).  The source is
# the checkout's tracked files (git stash create: HEAD plus uncommitted
# changes to tracked files; untracked files are not in it), as in a clean
# checkout, unpacked in /root/byok.
#
# Part "package": docs/install-debian.md, every block run literally:
# apt-get build-dep, dpkg-buildpackage -us -uc -b, lintian (no error), apt
# installing the .deb (postgresql-15 comes with it), then encrypting the
# packaged cluster 15/main (pg_byok enable, conf.d/byok.conf, pg_ctlcluster
# start, CREATE EXTENSION byok).  A marker written to it is at rest in no
# file of its data directory; the same marker in a stock cluster of the same
# root is found (the control).  debian/tests/smoke (the autopkgtest) runs
# too, and pg_byok verify checks every page of 15/main.
#
# Part "docs": a second fresh copy, the package from part 1 installed with
# docs/install-debian.md's install block, the packaged cluster 15/main
# running (stock, as systemd starts it); then README.md "Getting started"
# literally as user postgres (it must reach its own cluster, not 15/main),
# and docs/keyprotect.md literally as root, against the Key Protect
# emulator as the doc's trial section says.  Each doc's cluster holds a
# marker and is clean at rest.
#
# Which blocks run is written in the docs: an HTML comment before a ```sh
# block,
#
#   <!-- run: step=NAME as=USER in=DIR expect="REGEX" -->   run (expect: the
#                                          step's output must match; repeatable)
#   <!-- norun: REASON -->                 shown, not run (it needs IBM Cloud,
#                                          a git clone, ...)
#
# DIR is "source" (the byok checkout) or "home" (USER's home).  The blocks
# of one step are joined into one script, as typed into one shell.  Every
# ```sh block of docs/install-debian.md, docs/keyprotect.md and README.md's
# "Install" and "Getting started" sections must carry one of the two
# comments, install-debian.md's all "run", and every step a doc marks is
# run by the plan below.

use strict;
use warnings;

use Cwd qw(abs_path);
use File::Basename qw(basename);
use File::Path qw(make_path remove_tree);
use File::Temp qw(tempdir);
use IPC::Run qw(run timeout);
use Test::More;
use Time::HiRes qw(time);

use ByokTest;

plan skip_all => 'needs root (debootstrap, chroot, namespaces)' if $> != 0;

my $repo = abs_path($ENV{BYOK_REPO} // repo_root());
my $mkroot = "$repo/scripts/mkroot.sh";
my $t0 = time;

# The cached root: what a fresh Debian 12 host has after "apt-get install"
# of the build dependencies (docs/install-debian.md installs them with
# apt-get build-dep, which finds them there), plus the runtime packages
# downloaded so that apt installs them offline.
my @root_packages = qw(build-essential debhelper postgresql-server-dev-all
  libssl-dev libcurl4-openssl-dev libjson-c-dev pkg-config lintian);
my @root_downloads = qw(postgresql-15 python3 openssl);

# ---------------------------------------------------------------------------
# The docs' runnable blocks.
# ---------------------------------------------------------------------------

# Blocks of a markdown file: { line, section, lang, text, run => {step, as,
# in, expect => [...]}, norun => reason }.
sub doc_blocks
{
	my ($file) = @_;
	open(my $fh, '<', $file) or die "$file: $!";
	my @lines = <$fh>;
	close $fh;
	my (@blocks, $section, $pending, $pending_line);
	for (my $i = 0; $i < @lines; $i++)
	{
		my $l = $lines[$i];
		if ($l =~ /^(#+)\s+(.*?)\s*$/)
		{
			$section = $2;
			next;
		}
		if ($l =~ /^<!--\s*(run|norun):\s*(.*?)\s*-->\s*$/)
		{
			$pending = [ $1, $2 ];
			$pending_line = $i + 1;
			next;
		}
		if ($l =~ /^```(\S*)\s*$/)
		{
			my $lang = $1;
			my $start = $i + 1;
			my $text = '';
			for ($i++; $i < @lines && $lines[$i] !~ /^```\s*$/; $i++)
			{
				$text .= $lines[$i];
			}
			my $b = {
				file => $file, line => $start, section => $section // '',
				lang => $lang, text => $text };
			if ($pending && $pending_line == $start - 1)
			{
				if ($pending->[0] eq 'norun')
				{
					$b->{norun} = $pending->[1];
				}
				else
				{
					my %a = (expect => []);
					my $spec = $pending->[1];
					while ($spec =~ /\G\s*(\w+)=(?:"((?:[^"\\]|\\.)*)"|(\S+))/gc)
					{
						my ($k, $v) = ($1, defined $2 ? $2 : $3);
						$v =~ s/\\"/"/g;
						if ($k eq 'expect') { push @{ $a{expect} }, $v; }
						else { $a{$k} = $v; }
					}
					die "$file:$pending_line: cannot parse run marker \"$spec\""
					  if ($spec =~ /\G\s*(\S.*)$/gc);
					$b->{run} = \%a;
				}
			}
			elsif ($pending)
			{
				die "$file:$pending_line: a run/norun marker must be the line right before a ``` block";
			}
			undef $pending;
			push @blocks, $b;
			next;
		}
		if ($pending && $l !~ /^\s*$/)
		{
			die "$file:$pending_line: a run/norun marker must be the line right before a ``` block";
		}
	}
	return @blocks;
}

my %doc_steps;    # "file:step" -> { as, in, text, expect, blocks }
my @same_as;      # [ block, other doc ]: its commands must be run there
my @scope = (
	[ 'docs/install-debian.md', undef, 'run only' ],
	[ 'docs/keyprotect.md', undef ],
	[ 'README.md', qr/^(Install|Getting started)$/ ],
);
for my $s (@scope)
{
	my ($doc, $sections, $run_only) = @$s;
	my @blocks = doc_blocks("$repo/$doc");
	my @unmarked;
	for my $b (@blocks)
	{
		my $in_scope = !defined $sections || $b->{section} =~ $sections;
		next unless $b->{lang} eq 'sh' || $b->{run};
		if ($b->{run})
		{
			my $r = $b->{run};
			die "$doc:$b->{line}: run marker without step=, as= or in="
			  unless $r->{step} && $r->{as} && $r->{in};
			for my $step (split /,/, $r->{step})
			{
				my $key = "$doc:$step";
				my $st = $doc_steps{$key} //= {
					as => $r->{as}, in => $r->{in}, text => '', expect => [],
					blocks => [] };
				die "$doc:$b->{line}: step $step mixes users or directories"
				  if $st->{as} ne $r->{as} || $st->{in} ne $r->{in};
				my $n = @{ $st->{blocks} } + 1;
				$st->{text} .= "# --- $doc line $b->{line} ($b->{section})\n$b->{text}"
				  . "printf '\\n\@\@byok-block $n done\\n'\n";
				push @{ $st->{blocks} }, "$doc:$b->{line}";
				push @{ $st->{expect} }, @{ $r->{expect} };
			}
		}
		elsif (defined $b->{norun} && $b->{norun} =~ /same commands as (\S+\.md)/)
		{
			push @same_as, [ $b, $1 ];
		}
		elsif ($in_scope && ($run_only || !defined $b->{norun}))
		{
			push @unmarked, "$doc:$b->{line}"
			  . (defined $b->{norun} ? ' (norun is not allowed here)' : '');
		}
	}
	is_deeply(\@unmarked, [],
		"$doc: every sh block in scope is marked run or norun");
}

# A block shown "as the same commands as" another doc: each of its command
# lines is in a block that doc runs.
for my $sa (@same_as)
{
	my ($b, $other) = @$sa;
	my $run_text = join('', map { $doc_steps{$_}{text} } grep { /^\Q$other\E:/ } keys %doc_steps);
	my @missing = grep { my $l = $_; index($run_text, "$l\n") < 0 }
	  grep { /\S/ && !/^\s*#/ } split /\n/, $b->{text};
	is_deeply(\@missing, [], "$b->{file}:$b->{line}: its commands are the ones $other runs");
}

# ---------------------------------------------------------------------------
# The cached root and the source.
# ---------------------------------------------------------------------------
my $work = $ENV{BYOK_DEB_WORKDIR} // tempdir('byok-deb.XXXXXX', TMPDIR => 1, CLEANUP => 0);
make_path($work);
note "work directory: $work";

my ($out, $err) = ('', '');
my $ok = run([ 'bash', $mkroot, '--name', 'bookworm-byok', 'bookworm', @root_packages,
	'--download', @root_downloads ], '>', \$out, '2>', \$err);
chomp(my $root = $out);
ok($ok && -x "$root/bin/sh", "cached Debian 12 root ready ($root)")
  or diag("mkroot.sh failed:\n$err");
note sprintf('root ready after %.0f s', time - $t0);
BAIL_OUT('no Debian root') unless $ok;

my $tarball = "$work/src.tar";
{
	my $tree = '';
	run([ 'git', '-c', 'safe.directory=*', '-C', $repo, 'stash', 'create' ], '>', \$tree, '2>', \$err);
	chomp $tree;
	$tree = 'HEAD' if $tree eq '';
	my $ok = run([ 'git', '-c', 'safe.directory=*', '-C', $repo, 'archive', '--format=tar',
		'-o', $tarball, $tree ], '2>', \$err);
	ok($ok, "source archived from git ($tree)") or diag($err);
	BAIL_OUT('no source') unless $ok;
}

# ---------------------------------------------------------------------------
# Parts: a plan of steps run by test/debian/in-root.sh in an overlay of the
# cached root.
# ---------------------------------------------------------------------------
my %ran_doc_step;

# Plan entries: [ id, user, cwd, timeout, when, script ] or a doc step
# [ 'doc' => "file:step", timeout ].
sub run_part
{
	my ($name, $files, @plan) = @_;
	my $dir = "$work/$name";
	remove_tree($dir);
	make_path("$dir/t/steps", "$dir/t/files", "$dir/ov");
	chmod 0755, "$dir/t", "$dir/t/steps", "$dir/t/files";
	system('cp', $tarball, "$dir/t/src.tar") == 0 or die "cp: $?";
	for my $f (@$files)
	{
		system('cp', $f, "$dir/t/files/") == 0 or die "cp $f: $?";
	}
	system('cp', "$repo/test/debian/in-root.sh", "$dir/t/in-root.sh") == 0 or die "cp: $?";
	open(my $pf, '>', "$dir/t/plan") or die $!;
	my %expect;
	for my $p (@plan)
	{
		my ($id, $user, $cwd, $timeout, $when, $script);
		if ($p->[0] eq 'doc')
		{
			my $st = $doc_steps{ $p->[1] } or die "no doc step $p->[1]";
			($id = $p->[1]) =~ s{^(?:docs/)?([^:]+)\.md:}{$1-};
			$id =~ tr/A-Za-z0-9_-/_/c;
			($user, $cwd, $timeout, $when) = ($st->{as}, $st->{in}, $p->[2], 'ok');
			$cwd = '/root/byok' if $cwd eq 'source';
			$script = $st->{text};
			$expect{$id} = $st->{expect};
			$ran_doc_step{ $p->[1] } = 1;
		}
		else
		{
			($id, $user, $cwd, $timeout, $when, $script) = @$p;
		}
		# /byok-test in a step is this part's directory: the root sees it
		# at the same path (mkroot.sh --bind)
		$script =~ s{/byok-test\b}{$dir/t}g;
		open(my $sf, '>', "$dir/t/steps/$id.sh") or die $!;
		print $sf $script;
		close $sf;
		chmod 0644, "$dir/t/steps/$id.sh";
		print $pf "$id $user $cwd $timeout $when\n";
		push @{ $expect{__order} }, $id;
	}
	close $pf;

	my $start = time;
	my ($o, $e) = ('', '');
	run([ 'bash', $mkroot, '--run', $root, '--overlay', "$dir/ov", '--isolate',
		'--bind', "$dir/t", '--', 'bash', "$dir/t/in-root.sh", "$dir/t" ],
		'>', \$o, '2>', \$e, timeout(1500));
	note "part $name: " . sprintf('%.0f s', time - $start);
	note $e;
	for my $id (@{ $expect{__order} })
	{
		my $rc = slurp("$dir/t/out/$id.rc") // 'not run';
		chomp $rc;
		my $log = slurp("$dir/t/out/$id.log") // '';
		if (!ok($rc eq '0', "$name: $id") && $rc ne 'skipped')
		{
			diag("$id: exit $rc; last lines of its output:\n" . tail($log, 40));
		}
		for my $re (@{ $expect{$id} // [] })
		{
			like($log, qr/$re/m, "$name: $id prints /$re/");
		}
	}
	return ($dir, "$dir/ov/upper");
}

# The at-rest scan of a data directory that must exist (else: one failure).
sub scan_clean
{
	my ($dir, $marker, $name) = @_;
	if (!-f "$dir/PG_VERSION")
	{
		fail("$name (no data directory $dir)");
		return;
	}
	is_deeply([ scan_at_rest($dir, $marker) ], [], $name);
}

sub slurp
{
	my ($f) = @_;
	open(my $fh, '<', $f) or return undef;
	local $/;
	my $s = <$fh>;
	close $fh;
	return $s;
}

sub tail
{
	my ($s, $n) = @_;
	my @l = split /\n/, $s;
	@l = @l[ -$n .. -1 ] if @l > $n;
	return join("\n", @l);
}

# Harness steps shared by both parts.
my $unpack = q{
mkdir -p /root/byok
tar -C /root/byok -xf /byok-test/src.tar
};
# what systemd does on a Debian host after installing postgresql-15
my $start_main = q{
pg_ctlcluster 15 main start
pg_lsclusters
};
my $stop_all = q{
pg_lsclusters --no-header | while read -r ver name port status rest; do
	case $status in online*) pg_ctlcluster "$ver" "$name" stop -m fast || true ;; esac
done
if [ -f /var/lib/postgresql/pgdata/postmaster.pid ]; then
	runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D /var/lib/postgresql/pgdata -m fast -w stop || true
fi
pg_lsclusters
};

# SQL writing a marker into a table of the cluster reached with PSQL_ARGS
# and checking that byok is in force there.
sub marker_step
{
	my ($marker, $psql_args, $want) = @_;
	return qq{
psql() { runuser -u postgres -- /usr/bin/psql -X -v ON_ERROR_STOP=1 $psql_args "\$@"; }
psql -d postgres -c "CREATE TABLE byok_deb_marker AS SELECT g AS id, '$marker' || g AS v FROM generate_series(1, 500) g" \\
	-c 'CHECKPOINT'
psql -d postgres -At -c "SELECT count(*) FROM byok_deb_marker WHERE v LIKE '${marker}%'"
} . ($want eq 'encrypted' ? q{
psql -d postgres -At -c "SELECT 'byok: ' || enabled || ' ' || provider || ' ' || cipher || ' ' || hooks_installed FROM byok_status()"
psql -d postgres -At -c "SELECT 'on disk encrypted: ' || byok_relation_encrypted('byok_deb_marker')"
} : q{
psql -d postgres -At -c "SELECT 'preloaded: [' || current_setting('shared_preload_libraries') || ']'"
});
}

my $marker = random_marker();
note "marker: $marker";

# --- part 1: build, lint, install, encrypt the packaged cluster ----------
my ($pkg, $pkg_upper) = run_part(
	'package', [],
	[ 'unpack', 'root', '/', 60, 'ok', $unpack ],
	[ 'doc', 'docs/install-debian.md:build', 900 ],
	[ 'doc', 'docs/install-debian.md:install', 300 ],
	[ 'start-main', 'root', '/', 120, 'ok', $start_main ],
	[ 'doc', 'docs/install-debian.md:encrypt', 300 ],
	[ 'marker-main', 'root', '/', 120, 'ok', marker_step($marker, '-p 5432', 'encrypted') ],
	[ 'autopkgtest-smoke', 'root', '/tmp', 300, 'ok', "bash /root/byok/debian/tests/smoke\n" ],
	[ 'stock-control', 'root', '/', 180, 'ok', q{
pg_createcluster 15 stock --port 5441 --start
} . marker_step($marker, '-p 5441', 'stock') ],
	[ 'stop-main', 'root', '/', 120, 'ok', "pg_ctlcluster 15 main stop\n" ],
	[ 'doc', 'docs/install-debian.md:checks', 300 ],
	[ 'restart-main', 'root', '/', 120, 'ok', $start_main ],
	[ 'doc', 'docs/keyprotect.md:rekey', 300 ],
	[ 'after-rekey', 'root', '/', 120, 'ok', qq{
runuser -u postgres -- psql -X -v ON_ERROR_STOP=1 -d postgres -At -c "SELECT 'marker rows: ' || count(*) FROM byok_deb_marker WHERE v LIKE '${marker}%'"
runuser -u postgres -- psql -X -v ON_ERROR_STOP=1 -d postgres -At -c "SELECT 'byok: ' || enabled || ' ' || provider || ' ' || cipher || ' ' || hooks_installed FROM byok_status()"
ls -l /etc/postgresql/15/main/byok-root.key
} ],
	[ 'stop', 'root', '/', 120, 'always', $stop_all ],
	[ 'collect', 'root', '/', 60, 'always', q{
mkdir -p /byok-test/artifacts
cp /root/postgresql-15-byok_*.deb /root/byok_*.changes /root/byok_*.buildinfo /byok-test/artifacts/ || true
dpkg-deb -c /root/postgresql-15-byok_*_amd64.deb > /byok-test/artifacts/contents.txt || true
dpkg-query -W postgresql-15 postgresql-15-byok > /byok-test/artifacts/versions.txt || true
} ]);

my $build_log = slurp("$pkg/t/out/install-debian-build.log") // '';
my @lintian = grep { /^[EWIPNX]: / } split /\n/, $build_log;
my @lintian_errors = grep { /^E: / } @lintian;
is_deeply(\@lintian_errors, [], 'lintian reports no errors');
diag("lintian:\n" . (@lintian ? join("\n", @lintian) : '(no tags)'));
like($build_log, qr/dpkg-buildpackage: info: binary-only upload/,
	'dpkg-buildpackage -us -uc -b built a binary package');

my $contents = slurp("$pkg/t/artifacts/contents.txt") // '';
for my $f ('./usr/lib/postgresql/15/lib/byok.so',
	'./usr/lib/postgresql/15/bin/pg_byok',
	'./usr/share/postgresql/15/extension/byok.control',
	'./usr/share/postgresql/15/extension/byok--1.0.sql')
{
	like($contents, qr/\s\Q$f\E$/m, "the package holds $f");
}
note "versions:\n" . (slurp("$pkg/t/artifacts/versions.txt") // '');

my $main_log = slurp("$pkg/t/out/marker-main.log") // '';
like($main_log, qr/^byok: true local aes-256-xts true$/m,
	'15/main: byok enabled, local root key, aes-256-xts, hooks installed');
like($main_log, qr/^on disk encrypted: true$/m, '15/main: the marker table is ciphertext on disk');

my $main_dir = "$pkg_upper/var/lib/postgresql/15/main";
ok(-f "$main_dir/PG_VERSION" && -f "$main_dir/byok/keyring",
	'15/main data directory with a keyring is in the part\'s layer');
scan_clean($main_dir, $marker,
	'15/main (encrypted by docs/install-debian.md): the marker is in no file at rest');
my @stock_hits = -f "$pkg_upper/var/lib/postgresql/15/stock/PG_VERSION"
  ? scan_at_rest("$pkg_upper/var/lib/postgresql/15/stock", $marker) : ();
ok(scalar(grep { m{^base/} } @stock_hits),
	'control: the same marker is found in the stock cluster 15/stock (' . scalar(@stock_hits) . ' hits)');

my $rekey_log = slurp("$pkg/t/out/after-rekey.log") // '';
like($rekey_log, qr/^marker rows: 500$/m, 'after keyprotect.md\'s rekey: every row written under the local key is read');
like($rekey_log, qr/^byok: true keyprotect aes-256-xts true$/m, 'after keyprotect.md\'s rekey: 15/main runs under Key Protect');
like($rekey_log, qr{byok-root\.key$}m, 'after the rekey the old local root key file is still there (key-lifecycle.md says what to do with it)');

# --- part 2: the docs, on a host where the package is installed ----------
my @debs = glob("$pkg/t/artifacts/postgresql-15-byok_*.deb");
ok(@debs == 1, 'part 1 left exactly one postgresql-15-byok .deb') or diag("@debs");
my ($docs, $docs_upper) = ('', '');
my $readme = $doc_steps{'README.md:getting-started'};
my ($readme_port) = ($readme ? $readme->{text} : '') =~ /^\s*port\s*=\s*(\d+)/m;
my ($readme_sock) = ($readme ? $readme->{text} : '') =~ /^\s*unix_socket_directories\s*=\s*'([^']+)'/m;
ok($readme_port && $readme_sock && $readme_port != 5432,
	'README "Getting started" sets its own port and socket directory ('
	  . ($readme_port // 'none') . ', ' . ($readme_sock // 'none') . ')');
SKIP:
{
	skip 'no package from part 1', 1 unless @debs == 1;
	($docs, $docs_upper) = run_part(
		'docs', \@debs,
		[ 'unpack', 'root', '/', 60, 'ok', $unpack ],
		[ 'get-deb', 'root', '/', 30, 'ok', "cp /byok-test/files/*.deb /root/\n" ],
		[ 'doc', 'docs/install-debian.md:install', 300 ],
		[ 'start-main', 'root', '/', 120, 'ok', $start_main ],
		[ 'doc', 'README.md:getting-started', 300 ],
		[ 'marker-readme', 'root', '/', 120, 'ok',
			marker_step($marker, "-h $readme_sock -p $readme_port", 'encrypted') ],
		[ 'doc', 'docs/keyprotect.md:enable', 300 ],
		[ 'marker-main-kp', 'root', '/', 120, 'ok', marker_step($marker, '-p 5432', 'encrypted') ],
		[ 'stop', 'root', '/', 120, 'always', $stop_all ]);
}

# README's cluster: its own port and socket, found from the doc itself.
if ($docs && $readme)
{
	my $readme_log = slurp("$docs/t/out/README-getting-started.log") // '';
	unlike($readme_log, qr/must be loaded via shared_preload_libraries/,
		'README: psql reached the byok cluster, not the packaged 15/main');
	my $readme_status = slurp("$docs/t/out/marker-readme.log") // '';
	like($readme_status, qr/^byok: true local aes-256-xts true$/m,
		'README: its cluster runs byok with a local root key');
	my $pgdata = "$docs_upper/var/lib/postgresql/pgdata";
	ok(-f "$pgdata/byok/keyring", 'README: its cluster has a keyring');
	scan_clean($pgdata, $marker, 'README: its cluster is clean at rest');
	my $kp_log = slurp("$docs/t/out/keyprotect-enable.log") // '';
	my $kp_status = slurp("$docs/t/out/marker-main-kp.log") // '';
	like($kp_status, qr/^byok: true keyprotect aes-256-xts true$/m,
		'keyprotect.md: 15/main is encrypted under the (emulated) Key Protect key');
	unlike($kp_log, qr/kms\.cloud\.ibm\.com|iam\.cloud\.ibm\.com/,
		'keyprotect.md trial: nothing went to the real IBM endpoints');
	scan_clean("$docs_upper/var/lib/postgresql/15/main", $marker,
		'keyprotect.md: 15/main is clean at rest');
}

my @not_run = grep { !$ran_doc_step{$_} } sort keys %doc_steps;
is_deeply(\@not_run, [], 'every step the docs mark to run was run');

note sprintf('debian stage: %.0f s', time - $t0);
if (!$ENV{BYOK_KEEP_WORKDIR} && Test::More->builder->is_passing)
{
	remove_tree($work);
}
else
{
	diag("kept $work");
}
done_testing();
