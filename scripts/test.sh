#!/usr/bin/env bash
# byok's test command: build, install, and run every suite.
#
#   bash scripts/test.sh
#
# As root (CI, a fresh Debian 12): installs the Debian dependencies, builds
# and installs byok into the system's PostgreSQL 15, then runs the suites as
# the unprivileged user "byoktest" (PostgreSQL refuses to run as root) in a
# private copy of the source tree, so the checkout is never written by the
# tests.  As any other user: builds and runs the suites in place and assumes
# the dependencies (and, unless its directories are writable, the
# installation) are already there.
#
# Suites, in order: unit (make unittest), emulator (make emulatortest), tap
# (make taptest: prove over test/t/*.pl, pg_regress included), debian
# (prove over test/debian/*.pl, as root: the Debian package built, linted,
# installed and used in a fresh Debian 12 root, and the install docs run
# literally there; about 5 minutes once its cached root exists, see
# test/debian/090_debian_package.pl), then pg17 and pg18 (as root: the
# unit, emulator and tap suites again on PostgreSQL 17 in a Debian 13 root
# and on 18 in a Debian unstable root, through scripts/pgversions.sh; about
# 16 minutes each once their cached roots exist, see docs/versions.md).
# Every suite runs even if an earlier one failed.  The output ends with a summary table
# and, as the very last line, "N passed, N failed" over all tests; CI reads
# that line.  A suite that did not run or did not report counts as one
# failure; so does a build that fails or warns in our own files.  The exit
# status is non-zero whenever anything failed.
#
# The suite needs the test build (make BYOK_TEST_HOOKS=1: test-only
# switches such as BYOK_TEST_BREAK_HOOKS compiled in); as root this script
# installs it for the run and puts the release build ("make install", what
# users get) back when it is done.
#
# Environment: PROVE_TESTS="test/t/000_scanner.pl ..." runs a subset of the
# TAP tests; the debian suite runs only when PROVE_TESTS is empty or names
# test/debian/ files (then only those, and the tap suite only if it names
# test/t/ files too); BYOK_KEEP_WORKDIR=1 keeps the root run's work
# directory even when everything passed; BYOK_TEST_INSTALLED=1 (root) runs
# the suites against the byok already installed -- e.g. the Debian package
# -- instead of building and installing this tree (the unit tests are still
# built from it); tests that flip the test build's switches (test/t/022's
# strace of pg_byok, 023's broken hooks) then fail, since a release build
# has none.  BYOK_TEST_MAJORS="17 18" names the other majors
# to run (default: both when PROVE_TESTS is empty, none when it is set; ""
# runs none); they get the test/t/ files of PROVE_TESTS.  Inside a root
# (BYOK_PG_MAJOR set by pgversions.sh) neither they nor the debian suite,
# which is about Debian 12's package, run.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
test_user=byoktest
suites=(unit emulator tap debian)
inside_root=0
[[ -n ${BYOK_PG_MAJOR:-} && ${BYOK_PG_MAJOR} != 15 ]] && inside_root=1
if [[ $inside_root -eq 1 ]]; then
	other_majors=
elif [[ -n ${BYOK_TEST_MAJORS+set} ]]; then
	other_majors=$BYOK_TEST_MAJORS
elif [[ -n ${PROVE_TESTS:-} ]]; then
	other_majors=
else
	other_majors="17 18"
fi
for m in $other_majors; do
	case $m in
	17 | 18) suites+=("pg$m") ;;
	*) echo "test.sh: BYOK_TEST_MAJORS may name 17 and 18, not \"$m\"" >&2; exit 2 ;;
	esac
done

declare -A n_passed n_failed state seconds
build_state=ok
build_failures=0

say() { printf '\n=== %s ===\n' "$*"; }
die() { echo "test.sh: $*" >&2; exit 1; }

# ---------------------------------------------------------------------------
# Where things run: as root, in a copy owned by $test_user; otherwise here.
# ---------------------------------------------------------------------------
if [[ $(id -u) -eq 0 ]]; then
	as_root=1
	# One root run at a time: each installs byok system-wide, and a second
	# run would swap the library under the first one's servers.  flock -o
	# holds the lock in its own process only, so that nothing a test leaves
	# behind keeps it.
	if [[ -z ${BYOK_TEST_LOCKED:-} ]]; then
		lock=/run/lock/byok-test.lock
		if ! flock -n "$lock" true; then
			echo "test.sh: another test run holds $lock; waiting for it"
		fi
		exec flock -o "$lock" env BYOK_TEST_LOCKED=1 bash "${BASH_SOURCE[0]}" "$@"
	fi
	say "install dependencies"
	bash "$repo/scripts/install-deps.sh" 9>&- || die "scripts/install-deps.sh failed"
	workdir=$(mktemp -d /tmp/byok-test.XXXXXX) || die "mktemp failed"
	src=$workdir/src
else
	as_root=0
	workdir=$(mktemp -d "${TMPDIR:-/tmp}/byok-test.XXXXXX") || die "mktemp failed"
	src=$repo
fi
logs=$workdir/logs
mkdir -p "$logs"

user_path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# Run a command in the tree under test, as the test user when we are root.
# The environment is rebuilt from scratch (root's PATH may hold tools the
# test user cannot reach); only a few test knobs pass through.
in_tree() {
	if [[ $as_root -eq 1 ]]; then
		local -a envv=(
			HOME="$(getent passwd "$test_user" | cut -d: -f6)"
			USER="$test_user" LOGNAME="$test_user"
			PATH="$user_path" LANG=C.UTF-8 TMPDIR=/tmp
		)
		local v
		for v in PG_TEST_TIMEOUT_DEFAULT PG_TEST_EXTRA PG_TEST_NOCLEAN BYOK_GCORE_DIR; do
			[[ -n ${!v:-} ]] && envv+=("$v=${!v}")
		done
		(cd "$src" && runuser -u "$test_user" -- env -i "${envv[@]}" "$@" 9>&-)
	else
		(cd "$src" && "$@" 9>&-)
	fi
}

# Lines of a build log that are compiler warnings in our own files.
own_warnings() { grep -E '(^|/)(src|test)/.*warning:' "$1"; }

# Build with output captured ($1 = log name, rest = command); a failed build
# or a warning in our files is a build failure.
build_step() {
	local name=$1
	shift
	local log=$logs/$name.log
	"$@" 9>&- 2>&1 | tee "$log"
	local rc=${PIPESTATUS[0]}
	if [[ $rc -ne 0 ]]; then
		echo "test.sh: build step '$name' failed (exit $rc), see $log" >&2
		build_state="FAILED ($name)"
		build_failures=$((build_failures + 1))
		return 1
	fi
	if own_warnings "$log" >/dev/null; then
		echo "test.sh: compiler warnings in our files ($name):" >&2
		own_warnings "$log" >&2
		build_state="WARNINGS ($name)"
		build_failures=$((build_failures + 1))
	fi
	return 0
}

# ---------------------------------------------------------------------------
# Build and install.
# ---------------------------------------------------------------------------
built=1
if [[ $as_root -eq 1 ]]; then
	cd "$repo" || die "cannot cd to $repo"
	if [[ -n ${BYOK_TEST_INSTALLED:-} ]]; then
		say "using the installed byok ($(dpkg-query -W -f='${Package} ${Version}' postgresql-15-byok 2>/dev/null || echo 'not a package'))"
		[[ -f $(pg_config --pkglibdir)/byok.so && -x $(pg_config --bindir)/pg_byok ]] ||
			die "BYOK_TEST_INSTALLED: no byok.so or pg_byok installed"
	else
		say "build and install (root, in $repo)"
		{ build_step build-root make -s BYOK_TEST_HOOKS=1 &&
			build_step install make -s BYOK_TEST_HOOKS=1 install; } || built=0
	fi

	if ! id -u "$test_user" >/dev/null 2>&1; then
		say "create user $test_user"
		useradd --create-home --shell /bin/bash "$test_user" ||
			die "could not create user $test_user"
	fi

	say "copy the source tree to $src"
	mkdir -p "$src"
	tar -C "$repo" -cf - \
		--exclude=.git --exclude=./tmp_check --exclude=./results \
		--exclude=./log --exclude=./regression.diffs --exclude=./regression.out \
		--exclude='*.o' --exclude='*.so' --exclude='*.bc' \
		--exclude=./pg_byok --exclude=./test/unit/test_crypto --exclude=./test/unit/make_format1 --exclude=./test/unit/test_xts . |
		tar -C "$src" -xf - || die "copying the source tree failed"
	chown -R "$test_user:" "$workdir" || die "chown $workdir failed"

	if [[ $built -eq 1 ]]; then
		say "build as $test_user in $src"
		in_tree make -s clean >/dev/null 2>&1
		build_step build-user in_tree make -s BYOK_TEST_HOOKS=1 || built=0
	fi
else
	say "build (as $(id -un), in $repo)"
	build_step build make -s BYOK_TEST_HOOKS=1 || built=0
	if [[ $built -eq 1 ]]; then
		pkglibdir=$(pg_config --pkglibdir)
		bindir=$(pg_config --bindir)
		sharedir=$(pg_config --sharedir)/extension
		if [[ -w $pkglibdir && -w $bindir && -w $sharedir ]]; then
			build_step install make -s BYOK_TEST_HOOKS=1 install || built=0
		else
			echo "test.sh: not root and $pkglibdir is not writable: skipping" \
				"'make install'; the tests use the byok already installed there"
		fi
	fi
fi

# ---------------------------------------------------------------------------
# gcore for the tests (root only).  byok makes every server process
# non-dumpable, which also refuses ptrace to its own user, so
# test/t/016_key_hygiene.pl asks root for its cores: it writes NAME.req
# (a PID) into $BYOK_GCORE_DIR and waits for NAME.done; NAME.core is the
# core.  Only postgres processes whose every uid is the test user's are
# dumped, into a private directory first (the request directory is the test
# user's), then moved into place.
# ---------------------------------------------------------------------------
gcore_pid=
gcore_priv=
start_gcore_service() {
	local dir=$workdir/gcore uid postgres_bin
	uid=$(id -u "$test_user")
	postgres_bin=$(readlink -f "$(pg_config --bindir)/postgres")
	gcore_priv=$(mktemp -d /tmp/byok-gcore.XXXXXX) || return 1
	mkdir -p "$dir" && chown "$test_user:" "$dir" && chmod 0700 "$dir" || return 1
	export BYOK_GCORE_DIR=$dir
	(
		# relative paths from here on: renaming the directory changes nothing
		cd "$dir" || exit 1
		priv=$gcore_priv
		while [[ ! -e $priv/stop ]]; do
			for req in *.req; do
				[[ -f $req && ! -L $req ]] || continue
				name=${req%.req}
				[[ $name =~ ^[A-Za-z0-9_-]+$ ]] || continue
				pid=$(head -c 16 -- "$req" | tr -dc 0-9)
				rm -f -- "$req"
				rm -f "$priv"/core.* "$priv/log" "$priv/done"
				if [[ -n $pid ]] &&
					[[ $(awk '/^Uid:/ {print $2 $3 $4 $5}' "/proc/$pid/status" 2>/dev/null) == "$uid$uid$uid$uid" ]] &&
					[[ $(readlink -f "/proc/$pid/exe" 2>/dev/null) == "$postgres_bin" ]]; then
					timeout 300 gcore -o "$priv/core" "$pid" >"$priv/log" 2>&1
					[[ -f $priv/core.$pid ]] && chown "$test_user:" "$priv/core.$pid" &&
						mv -f "$priv/core.$pid" "./$name.core"
				else
					echo "pid '$pid' is not a postgres process of $test_user" >"$priv/log"
				fi
				chown "$test_user:" "$priv/log" && mv -f "$priv/log" "./$name.log"
				touch "$priv/done" && chown "$test_user:" "$priv/done" && mv -f "$priv/done" "./$name.done"
			done
			sleep 0.2
		done
	) &
	gcore_pid=$!
}

# ---------------------------------------------------------------------------
# Suites.
# ---------------------------------------------------------------------------

# Counts from a unit/emulator log: its last "N passed, N failed" line.
parse_simple() {
	local suite=$1 rc=$2 log=$logs/$1.log line
	line=$(grep -E '^[[:space:]]*[0-9]+ passed, [0-9]+ failed[[:space:]]*$' "$log" | tail -n 1)
	if [[ -z $line ]]; then
		n_passed[$suite]=0
		n_failed[$suite]=1
		state[$suite]="NO COUNTS (exit $rc)"
		return
	fi
	read -r p _ f _ <<<"${line//,/}"
	n_passed[$suite]=$p
	n_failed[$suite]=$f
	if [[ $rc -ne 0 && $f -eq 0 ]]; then
		n_failed[$suite]=1
		state[$suite]="FAILED (exit $rc, no failed test reported)"
	elif [[ $f -ne 0 ]]; then
		state[$suite]=FAILED
	else
		state[$suite]=ok
	fi
}

# Counts from prove's output: "Files=F, Tests=N" is every test run; the
# "Test Summary Report" lines "file (Wstat: ... Tests: T Failed: F)" give
# the failures, and a file listed there with no failed test (it died, or its
# plan was wrong) counts as one failure.
parse_prove() {
	local suite=$1 rc=$2 log=$logs/$1.log total failed=0 died=0 f
	total=$(sed -nE 's/^Files=[0-9]+, Tests=([0-9]+),.*/\1/p' "$log" | tail -n 1)
	if [[ -z $total ]]; then
		n_passed[$suite]=0
		n_failed[$suite]=1
		state[$suite]="DID NOT RUN (exit $rc)"
		return
	fi
	while read -r f; do
		if [[ $f -eq 0 ]]; then
			died=$((died + 1))
		else
			failed=$((failed + f))
		fi
	done < <(sed -nE 's/^[^ ].*\(Wstat: .*Tests: [0-9]+ Failed: ([0-9]+)\)$/\1/p' "$log")
	n_passed[$suite]=$((total - failed))
	n_failed[$suite]=$((failed + died))
	if grep -q '^Result: PASS' "$log" && [[ $rc -eq 0 && $((failed + died)) -eq 0 ]]; then
		state[$suite]=ok
	else
		state[$suite]=FAILED
		if [[ $((failed + died)) -eq 0 ]]; then
			n_failed[$suite]=1
			state[$suite]="FAILED (exit $rc)"
		fi
	fi
}

# After a TAP failure: the tails of the logs of each failed test file.
show_tap_logs() {
	local log=$logs/tap.log tlog=$src/tmp_check/log t name f
	while read -r t; do
		name=$(basename "$t" .pl)
		for f in "$tlog/regress_log_$name" "$tlog/${name}"_*.log; do
			[[ -f $f ]] || continue
			say "tail of $f"
			tail -n 60 "$f"
		done
	done < <(sed -nE 's/^([^ ]+\.pl) +\(Wstat: .*/\1/p' "$log")
	f=$src/tmp_check/regress/regression.diffs
	if [[ -s $f ]]; then
		say "$f"
		head -n 200 "$f"
	fi
}

# PROVE_TESTS split: test/t/ files for the tap suite, test/debian/ files
# for the debian suite.
tap_tests=
debian_tests=
for t in ${PROVE_TESTS:-}; do
	case $t in
	test/debian/*) debian_tests+="${debian_tests:+ }$t" ;;
	*) tap_tests+="${tap_tests:+ }$t" ;;
	esac
done

# The debian suite: as root, in the copy of the tree (its tmp_check/ goes
# there); the test archives the checkout itself ($repo, with its .git).
run_debian() {
	local log=$logs/debian.log pgperl rc
	pgperl=$(dirname "$(pg_config --pgxs)")/../../src/test/perl
	say "suite: debian (prove ${debian_tests:-test/debian/*.pl}, as root)"
	# shellcheck disable=SC2086 # word splitting of the file list wanted
	(cd "$src" && env BYOK_REPO="$repo" HARNESS_TIMER=1 \
		prove -I test/perl -I "$pgperl" ${debian_tests:-test/debian/*.pl} 9>&-) 2>&1 | tee "$log"
	rc=${PIPESTATUS[0]}
	parse_prove debian "$rc"
	if [[ ${state[debian]} != ok ]]; then
		for f in "$src"/tmp_check/log/regress_log_09*; do
			[[ -f $f ]] || continue
			say "tail of $f"
			tail -n 80 "$f"
		done
	fi
}

# pg17, pg18: the suite on another major, in its Debian root, counted by
# the total line scripts/pgversions.sh ends with.
run_major() {
	local suite=$1 major=${1#pg} log=$logs/$1.log rc
	local -a envv=()
	[[ -n $tap_tests ]] && envv+=(PROVE_TESTS="$tap_tests")
	[[ -n ${BYOK_KEEP_WORKDIR:-} ]] && envv+=(BYOK_KEEP_WORKDIR=1)
	say "suite: $suite (scripts/pgversions.sh $major: unit, emulator and tap on PostgreSQL $major)"
	env "${envv[@]}" bash "$repo/scripts/pgversions.sh" "$major" 9>&- 2>&1 | tee "$log"
	rc=${PIPESTATUS[0]}
	parse_simple "$suite" "$rc"
}

run_suite() {
	local suite=$1 target
	case $suite in
	pg17 | pg18)
		run_major "$suite"
		return
		;;
	unit) target=(unittest) ;;
	emulator) target=(emulatortest) ;;
	tap)
		# Given on the command line because PGXS's Makefile.global resets
		# PROVE_FLAGS after the Makefile has set it.
		target=(taptest "PROVE_FLAGS=-I test/perl")
		[[ -n $tap_tests ]] && target+=("PROVE_TESTS=$tap_tests")
		;;
	debian)
		run_debian
		return
		;;
	esac
	say "suite: $suite (make ${target[*]})"
	local log=$logs/$suite.log
	if [[ $suite == tap ]]; then
		in_tree env HARNESS_TIMER=1 make -s --no-print-directory "${target[@]}" 2>&1 | tee "$log"
	else
		in_tree make -s --no-print-directory "${target[@]}" 2>&1 | tee "$log"
	fi
	local rc=${PIPESTATUS[0]}
	if [[ $suite == tap ]]; then
		parse_prove "$suite" "$rc"
		[[ ${state[$suite]} == ok ]] || show_tap_logs
	else
		parse_simple "$suite" "$rc"
	fi
	# The unit tests are compiled by their suite: hold them to the same
	# no-warnings rule as the build.
	if own_warnings "$log" >/dev/null; then
		echo "test.sh: compiler warnings in our files ($suite):" >&2
		own_warnings "$log" >&2
		build_state="WARNINGS ($suite)"
		build_failures=$((build_failures + 1))
	fi
}

if [[ $as_root -eq 1 && $built -eq 1 ]]; then
	start_gcore_service || echo "test.sh: could not start the gcore service" >&2
fi

for suite in "${suites[@]}"; do
	if [[ $suite == tap && -n ${PROVE_TESTS:-} && -z $tap_tests ]] ||
		[[ $suite == debian && -n ${PROVE_TESTS:-} && -z $debian_tests ]]; then
		n_passed[$suite]=0
		n_failed[$suite]=0
		state[$suite]="skipped (not in PROVE_TESTS)"
	elif [[ $suite == pg1[78] && -n ${PROVE_TESTS:-} && -z $tap_tests ]]; then
		n_passed[$suite]=0
		n_failed[$suite]=0
		state[$suite]="skipped (no test/t/ file in PROVE_TESTS)"
	elif [[ $suite == debian && $inside_root -eq 1 ]]; then
		n_passed[$suite]=0
		n_failed[$suite]=0
		state[$suite]="skipped (the Debian 12 package; runs with PostgreSQL 15)"
	elif [[ ( $suite == debian || $suite == pg1[78] ) && $as_root -ne 1 ]]; then
		n_passed[$suite]=0
		n_failed[$suite]=0
		state[$suite]="skipped (needs root)"
	elif [[ $built -eq 1 ]]; then
		suite_start=$SECONDS
		run_suite "$suite"
		seconds[$suite]=$((SECONDS - suite_start))
	else
		n_passed[$suite]=0
		n_failed[$suite]=1
		state[$suite]="NOT RUN (build failed)"
	fi
done

# As root: leave the release build installed, not the test build.
if [[ $as_root -eq 1 && $built -eq 1 && -z ${BYOK_TEST_INSTALLED:-} ]]; then
	say "reinstall the release build"
	(cd "$repo" && make -s && make -s install) 9>&- >"$logs/install-release.log" 2>&1 ||
		echo "test.sh: reinstalling the release build failed, see $logs/install-release.log" >&2
fi
if [[ -n $gcore_pid ]]; then
	touch "$gcore_priv/stop"
	wait "$gcore_pid"
	rm -rf "$gcore_priv" "$workdir/gcore"
fi

# ---------------------------------------------------------------------------
# Summary.
# ---------------------------------------------------------------------------
total_passed=0
total_failed=$build_failures
say "summary"
printf '%-10s %8s %8s %7s  %s\n' suite passed failed seconds status
printf '%-10s %8s %8s %7s  %s\n' build - "$build_failures" - "$build_state"
for suite in "${suites[@]}"; do
	printf '%-10s %8d %8d %7s  %s\n' "$suite" "${n_passed[$suite]}" "${n_failed[$suite]}" "${seconds[$suite]:--}" "${state[$suite]}"
	total_passed=$((total_passed + n_passed[$suite]))
	total_failed=$((total_failed + n_failed[$suite]))
done
printf '%-10s %8d %8d %7d\n' total "$total_passed" "$total_failed" "$SECONDS"

if [[ $total_failed -eq 0 && $as_root -eq 1 && -z ${BYOK_KEEP_WORKDIR:-} ]]; then
	rm -rf "$workdir"
	echo "logs removed with $workdir (all passed)"
else
	echo "logs: $logs"
fi

echo "$total_passed passed, $total_failed failed"
[[ $total_failed -eq 0 ]]
