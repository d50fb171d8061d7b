#!/usr/bin/env bash
# Install everything byok needs to build, test and demo, from Debian 12
# (bookworm) packages only.  Idempotent: when every package is already
# installed it does not touch apt at all, so running it again costs a second.
#
# Must run as root.  Debian's postgresql-15 package creates and starts a
# cluster "15/main" on port 5432; byok's scripts leave it alone and use their
# own clusters on other ports.
#
# BYOK_PG_MAJOR=17 (Debian 13) or 18 (Debian unstable) names the other
# majors' packages instead (scripts/pgversions.sh, in a root of that
# Debian); --list only prints the package names.
set -euo pipefail

pg_major=${BYOK_PG_MAJOR:-15}
case $pg_major in
	15 | 17 | 18) ;;
	*) echo "install-deps.sh: BYOK_PG_MAJOR must be 15, 17 or 18" >&2; exit 1 ;;
esac

packages=(
	# build
	gcc make pkg-config
	"postgresql-$pg_major" "postgresql-server-dev-$pg_major"
	libssl-dev libcurl4-openssl-dev libjson-c-dev
	# tests: TAP (prove, IPC::Run), the Key Protect emulator, the scripts
	perl libipc-run-perl
	python3
	openssl curl ca-certificates
	util-linux passwd
	# test/t/016_key_hygiene.pl: gcore of the server's processes
	gdb
	# test/t/070_pgbackrest.pl: byok with real pgBackRest
	pgbackrest
	# test/debian: a Debian 12 root (scripts/mkroot.sh --isolate needs ip),
	# the package built from the checkout's git tree
	debootstrap iproute2 git
)

if [[ ${1:-} == --list ]]; then
	printf '%s\n' "${packages[@]}"
	exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
	echo "install-deps.sh: must run as root (it installs Debian packages)" >&2
	exit 1
fi

missing=()
for pkg in "${packages[@]}"; do
	status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
	if [[ $status != installed ]]; then
		missing+=("$pkg")
	fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
	echo "install-deps: all ${#packages[@]} packages already installed"
	exit 0
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "${missing[@]}"
echo "install-deps: done"
