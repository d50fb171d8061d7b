#!/usr/bin/env bash
# Build and test byok on the other PostgreSQL majors, each in a Debian root
# with the distribution's own packages (docs/versions.md):
#
#   17  Debian 13 (trixie)     postgresql-17, postgresql-server-dev-17
#   18  Debian unstable (sid)  postgresql-18, postgresql-server-dev-18
#
#   bash scripts/pgversions.sh [--build-only | --bench] [MAJOR ...]    (default: 17 18)
#
# As root.  For each major: makes or reuses the root (scripts/mkroot.sh,
# under /var/cache/byok/roots, outside the checkout) with the packages of
# scripts/install-deps.sh for that major, copies this source tree (without
# .git and build products) into the root's /build/byok, and runs in there
#   --build-only  make BYOK_TEST_HOOKS=1 and the release make, with
#                 PG_CONFIG=/usr/lib/postgresql/MAJOR/bin/pg_config; a
#                 failure or a compiler warning in our files fails;
#   --bench       the release build installed there, then test/bench/run.sh
#                 and test/bench/wal.sh (stock and byok of that major in the
#                 same run; BENCH_* and --quick, as BENCH_QUICK=1, passed on);
#   otherwise     scripts/test.sh (unit, emulator and the TAP files of
#                 PROVE_TESTS), which inside the root builds, installs and
#                 tests against that major, exactly as on the host for 15.
# PostgreSQL 15 is the host's (bash scripts/test.sh); this script never
# touches the host's installation; it builds this tree's byok.so for the
# host's major in a scratch copy and puts it into each root's
# /build/other-major, for test/t/025_server_version.pl to refuse.  One root
# runs at a time (a lock), and every run prints "MAJOR: N passed, N failed" and, last, the total
# "N passed, N failed" over the majors it ran.
#
# Environment: PROVE_TESTS, BYOK_KEEP_WORKDIR (passed to test.sh),
# BYOK_ROOTS, BYOK_MIRROR (passed to mkroot.sh).
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
die() { echo "pgversions.sh: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap and chroot need it)"

build_only=0
bench=0
majors=()
for a in "$@"; do
	case $a in
	--build-only) build_only=1 ;;
	--bench) bench=1 ;;
	17 | 18) majors+=("$a") ;;
	15) die "15 is the host's: run bash scripts/test.sh" ;;
	*) die "usage: pgversions.sh [--build-only | --bench] [17|18 ...]" ;;
	esac
done
[[ ${#majors[@]} -gt 0 ]] || majors=(17 18)

suite_of() { case $1 in 17) echo trixie ;; 18) echo sid ;; esac; }

if ! command -v debootstrap >/dev/null; then
	echo "pgversions.sh: installing debootstrap"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null ||
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; } ||
		die "could not install debootstrap"
fi

# One root at a time: two suites at once would only share two cores.
exec 8>/run/lock/byok-pgversions.lock
if ! flock -n 8; then
	echo "pgversions.sh: another run holds /run/lock/byok-pgversions.lock; waiting"
	flock 8
fi

# The body of one run inside a root (as root there).
# shellcheck disable=SC2016
inner_build='
	set -uo pipefail
	cd /build/byok
	pgc=/usr/lib/postgresql/$1/bin/pg_config
	rc=0
	make -s clean PG_CONFIG=$pgc >/dev/null 2>&1
	for flavour in "BYOK_TEST_HOOKS=1" "BYOK_TEST_HOOKS=0"; do
		echo "=== make $flavour PG_CONFIG=$pgc ==="
		make -s -j2 $flavour PG_CONFIG=$pgc 2>&1 | tee /build/make.log
		[[ ${PIPESTATUS[0]} -eq 0 ]] || { echo "build failed ($flavour)"; rc=1; continue; }
		if grep -E "(^|/)(src|test)/.*warning:" /build/make.log; then
			echo "compiler warnings in our files ($flavour)"; rc=1
		fi
	done
	[[ $rc -eq 0 ]] && echo "1 passed, 0 failed" || echo "0 passed, 1 failed"
'

# shellcheck disable=SC2016
inner_bench='
	set -uo pipefail
	cd /build/byok
	pgc=/usr/lib/postgresql/$1/bin/pg_config
	make -s clean PG_CONFIG=$pgc >/dev/null 2>&1
	make -s -j2 PG_CONFIG=$pgc >/build/make.log 2>&1 && make -s install PG_CONFIG=$pgc >>/build/make.log 2>&1 ||
		{ cat /build/make.log; echo "0 passed, 1 failed"; exit 1; }
	id byoktest >/dev/null 2>&1 || useradd -m byoktest
	chown -R byoktest /build/byok
	q=; [[ -n ${BENCH_QUICK:-} ]] && q=--quick
	rc=0
	PG_CONFIG=$pgc bash test/bench/run.sh $q || rc=1
	PG_CONFIG=$pgc bash test/bench/wal.sh $q || rc=1
	[[ $rc -eq 0 ]] && echo "1 passed, 0 failed" || echo "0 passed, 1 failed"
'

total_p=0
total_f=0
summary=()
for major in "${majors[@]}"; do
	suite=$(suite_of "$major")
	echo "=== PostgreSQL $major in Debian $suite ==="
	mapfile -t pkgs < <(BYOK_PG_MAJOR=$major bash "$repo/scripts/install-deps.sh" --list)
	root=$(bash "$repo/scripts/mkroot.sh" "$suite" "${pkgs[@]}") || {
		summary+=("$major: root $suite could not be made")
		total_f=$((total_f + 1))
		continue
	}
	rm -rf "$root/build"
	mkdir -p "$root/build/byok"
	tar -C "$repo" -cf - --exclude=.git --exclude=./tmp_check --exclude=./results \
		--exclude=./log --exclude='*.o' --exclude='*.so' --exclude='*.bc' \
		--exclude=./pg_byok --exclude=./.byok-flavour . | tar -C "$root/build/byok" -xf - ||
		die "copying the tree into $root failed"
	# test/t/025_server_version.pl: this tree's byok.so for the host's
	# major (15), built once per run in a scratch copy, to be refused
	mkdir -p "$root/build/other-major"
	if [[ -z ${host_lib:-} ]] && command -v pg_config >/dev/null; then
		host_major=$(pg_config --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
		scratch=$(mktemp -d /tmp/byok-pgversions.XXXXXX)
		tar -C "$repo" -cf - --exclude=.git --exclude='*.o' --exclude='*.so' . | tar -C "$scratch" -xf - &&
			(cd "$scratch" && make -s clean >/dev/null 2>&1; make -s -j2 byok.so >/dev/null 2>&1) &&
			host_lib=$scratch/byok-pg$host_major.so && mv "$scratch/byok.so" "$host_lib" ||
			echo "pgversions.sh: could not build byok.so for the host's PostgreSQL $host_major" >&2
	fi
	[[ -n ${host_lib:-} && -f $host_lib ]] && cp "$host_lib" "$root/build/other-major/"
	chmod -R a+rX "$root/build"
	log=$root/build/run.log
	if [[ $bench -eq 1 ]]; then
		envb=()
		for v in $(compgen -v BENCH_); do envb+=("$v=${!v}"); done
		bash "$repo/scripts/mkroot.sh" --run "$root" -- env "${envb[@]}" bash -c "$inner_bench" inner "$major" 2>&1 8>&- | tee "$log"
	elif [[ $build_only -eq 1 ]]; then
		bash "$repo/scripts/mkroot.sh" --run "$root" -- bash -c "$inner_build" inner "$major" 2>&1 8>&- | tee "$log"
	else
		envv=(BYOK_PG_MAJOR="$major")
		[[ -n ${PROVE_TESTS:-} ]] && envv+=(PROVE_TESTS="$PROVE_TESTS")
		[[ -n ${BYOK_KEEP_WORKDIR:-} ]] && envv+=(BYOK_KEEP_WORKDIR=1)
		bash "$repo/scripts/mkroot.sh" --run "$root" -- \
			env "${envv[@]}" bash /build/byok/scripts/test.sh 2>&1 8>&- | tee "$log"
	fi
	line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -n 1)
	if [[ -z $line ]]; then
		summary+=("$major: did not report (log: $log)")
		total_f=$((total_f + 1))
		continue
	fi
	read -r p _ f _ <<<"${line//,/}"
	summary+=("$major: $line (log: $log)")
	total_p=$((total_p + p))
	total_f=$((total_f + f))
done

[[ -n ${scratch:-} ]] && rm -rf "$scratch"
echo
echo "=== summary ==="
printf '%s\n' "${summary[@]}"
echo "$total_p passed, $total_f failed"
[[ $total_f -eq 0 ]]
