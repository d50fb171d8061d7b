#!/bin/bash
#
# scripts/mkroot.sh -- make, or reuse, a Debian root for tests that need a
# fresh Debian system (the Debian package test) or another PostgreSQL
# version (Debian 13 has PostgreSQL 17, unstable has 18).
#
#   bash scripts/mkroot.sh SUITE [PACKAGE ...]    prints the root's path
#   bash scripts/mkroot.sh --run ROOT [--bind DIR] -- COMMAND [ARG ...]
#
# The first form runs debootstrap (variant minbase) for SUITE (bookworm,
# trixie, sid, ...) from Debian's mirror into $BYOK_ROOTS/SUITE (default
# /var/cache/byok/roots/SUITE, outside any checkout), then installs the
# packages named.  A root that already exists with every named package
# installed is reused as it is; one that a killed run left half made is
# removed and made again.  The second form runs COMMAND inside ROOT as root,
# in a private mount namespace (nothing stays mounted afterwards) with /proc,
# /sys, /dev, /dev/pts and /dev/shm, and each --bind DIR mounted at the same
# path inside.
#
# Environment: BYOK_ROOTS (where roots live), BYOK_MIRROR (default: the
# host's first Debian URI, else http://deb.debian.org/debian).
#
# Debian unstable's Release file can be past its Valid-Until date on the
# mirror; apt in a sid root is told not to check it (that root only).

set -euo pipefail

die() { echo "mkroot.sh: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap and chroot need it)"

ROOTS=${BYOK_ROOTS:-/var/cache/byok/roots}

host_mirror()
{
	local uri
	uri=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\/debian\)[[:space:]]*$/\1/p' \
		/etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
	[ -n "$uri" ] || uri=$(awk '$1 == "deb" && $2 ~ /\/debian\/?$/ { print $2; exit }' \
		/etc/apt/sources.list 2>/dev/null)
	echo "${uri:-http://deb.debian.org/debian}"
}

run_in_root()
{
	local root=$1; shift
	local binds=()
	while [ $# -gt 0 ] && [ "$1" != -- ]; do
		case "$1" in
			--bind) [ $# -ge 2 ] || die "--bind needs a directory"; binds+=("$2"); shift 2 ;;
			*) die "unknown option: $1" ;;
		esac
	done
	[ "${1:-}" = -- ] || die "usage: mkroot.sh --run ROOT [--bind DIR] -- COMMAND [ARG ...]"
	shift
	[ $# -gt 0 ] || die "no command to run"
	[ -x "$root/bin/sh" ] || die "$root is not a Debian root (no /bin/sh)"
	# everything mounted here lives and dies with this private namespace
	local b spec=""
	for b in "${binds[@]}"; do
		[ -d "$b" ] || die "--bind: $b is not a directory"
		spec+="mkdir -p '$root$b' && mount --rbind '$b' '$root$b' && "
	done
	exec unshare --mount --propagation private -- sh -ec "
		mount -t proc proc '$root/proc'
		mount --rbind /sys '$root/sys'
		mount --rbind /dev '$root/dev'
		mkdir -p '$root/dev/shm' && mount -t tmpfs -o mode=1777 shm '$root/dev/shm'
		mkdir -p '$root/run/lock' && mount -t tmpfs -o mode=1777 run '$root/run'
		mkdir -p '$root/run/lock'
		$spec true
		exec chroot '$root' env -i HOME=/root LANG=C.UTF-8 \
			PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \"\$@\"
	" mkroot "$@"
}

if [ "${1:-}" = --run ]; then
	[ $# -ge 2 ] || die "usage: mkroot.sh --run ROOT [--bind DIR] -- COMMAND [ARG ...]"
	root=$2; shift 2
	run_in_root "$root" "$@"
fi

[ $# -ge 1 ] || die "usage: mkroot.sh SUITE [PACKAGE ...]"
SUITE=$1; shift
case "$SUITE" in
	*[!a-z0-9-]*|'') die "not a Debian suite name: $SUITE" ;;
esac
ROOT=$ROOTS/$SUITE
MIRROR=${BYOK_MIRROR:-$(host_mirror)}

have_all()
{
	local p
	[ -f "$ROOT/.byok-root-complete" ] || return 1
	for p in "$@"; do
		chroot "$ROOT" dpkg-query -W -f='${Status}' "$p" 2>/dev/null |
			grep -q 'install ok installed' || return 1
	done
}

if have_all "$@"; then
	echo "$ROOT"
	exit 0
fi

command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
mkdir -p "$ROOTS"
start=$(date +%s)
if [ ! -f "$ROOT/.byok-root-complete" ]; then
	# a half-made root from a killed run: start again
	rm -rf --one-file-system "$ROOT"
	echo "mkroot.sh: debootstrap $SUITE from $MIRROR into $ROOT (a few minutes)" >&2
	debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR" >"$ROOTS/$SUITE.debootstrap.log" 2>&1 ||
		{ tail -n 20 "$ROOTS/$SUITE.debootstrap.log" >&2; die "debootstrap $SUITE failed (log: $ROOTS/$SUITE.debootstrap.log)"; }
	if [ "$SUITE" = sid ] || [ "$SUITE" = unstable ]; then
		echo 'Acquire::Check-Valid-Until "false";' >"$ROOT/etc/apt/apt.conf.d/99byok-no-valid-until"
	fi
	# no daemons started by package scripts inside the root
	printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
	chmod 755 "$ROOT/usr/sbin/policy-rc.d"
	touch "$ROOT/.byok-root-complete"
fi
if [ $# -gt 0 ]; then
	echo "mkroot.sh: installing into $SUITE: $*" >&2
	# shellcheck disable=SC2016
	"$0" --run "$ROOT" -- sh -ec 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends "$@"' apt "$@" \
		>"$ROOTS/$SUITE.apt.log" 2>&1 ||
		{ tail -n 20 "$ROOTS/$SUITE.apt.log" >&2; die "apt-get install in $SUITE failed (log: $ROOTS/$SUITE.apt.log)"; }
fi
echo "mkroot.sh: $SUITE ready in $(( $(date +%s) - start )) s" >&2
echo "$ROOT"
