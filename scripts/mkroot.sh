#!/bin/bash
#
# scripts/mkroot.sh -- make, or reuse, a Debian root for tests that need a
# fresh Debian system (the Debian package test) or another PostgreSQL
# version (Debian 13 has PostgreSQL 17, unstable has 18).
#
#   bash scripts/mkroot.sh [--name NAME] SUITE [PACKAGE ...] [--download PACKAGE ...]
#   bash scripts/mkroot.sh --run ROOT [--bind DIR] [--overlay DIR] [--isolate] -- COMMAND [ARG ...]
#
# The first form runs debootstrap (variant minbase) for SUITE (bookworm,
# trixie, sid, ...) from Debian's mirror into $BYOK_ROOTS/NAME (NAME
# defaults to SUITE; default BYOK_ROOTS is /var/cache/byok/roots, outside
# any checkout), then installs the packages named, and puts the packages
# named after --download (with their dependencies) into the root's apt
# cache without installing them, so that a later "apt-get install" in a
# copy of the root needs no network.  It prints the root's path.  A root
# that already exists with every named package installed (and downloaded)
# is reused as it is; one that a killed run left half made is removed and
# made again.
#
# apt in a root installs no Recommends (a root is a minimal host, and what
# --download fetched is without them too).
#
# The second form runs COMMAND inside ROOT as root, in a private mount
# namespace (nothing stays mounted afterwards) with /proc, /sys, /dev,
# /dev/pts, /dev/shm and a fresh /run, and each --bind DIR mounted at the
# same path inside.  With --overlay DIR, ROOT is the lower layer of an
# overlayfs whose upper layer is DIR/upper: COMMAND sees and changes a copy,
# ROOT itself is never written, and what COMMAND changed stays readable in
# DIR/upper afterwards (new files are there whole); the same DIR can be
# used by one --run after another.  With --isolate, COMMAND also gets its
# own network namespace (loopback only: no port of the host is reachable or
# taken, and there is no network) and its own PID namespace: every process
# it started, servers included, is killed when COMMAND exits.
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

run_usage="usage: mkroot.sh --run ROOT [--bind DIR] [--overlay DIR] [--isolate] -- COMMAND [ARG ...]"

run_in_root()
{
	local root=$1; shift
	local binds=() overlay="" isolate=0
	while [ $# -gt 0 ] && [ "$1" != -- ]; do
		case "$1" in
			--bind) [ $# -ge 2 ] || die "--bind needs a directory"; binds+=("$2"); shift 2 ;;
			--overlay) [ $# -ge 2 ] || die "--overlay needs a directory"; overlay=$2; shift 2 ;;
			--isolate) isolate=1; shift ;;
			*) die "unknown option: $1" ;;
		esac
	done
	[ "${1:-}" = -- ] || die "$run_usage"
	shift
	[ $# -gt 0 ] || die "no command to run"
	[ -x "$root/bin/sh" ] || die "$root is not a Debian root (no /bin/sh)"
	# everything mounted here lives and dies with this private namespace
	local b spec="" layer="" ns=(--mount --propagation private) net=""
	if [ -n "$overlay" ]; then
		mkdir -p "$overlay/upper" "$overlay/work" "$overlay/merged" ||
			die "--overlay: cannot make $overlay/{upper,work,merged}"
		overlay=$(cd "$overlay" && pwd)
		root=$(cd "$root" && pwd)
		case "$overlay/" in
			"$root"/*) die "--overlay: $overlay is inside the root $root" ;;
		esac
		layer="mount -t overlay overlay -o 'lowerdir=$root,upperdir=$overlay/upper,workdir=$overlay/work' '$overlay/merged'"
		root=$overlay/merged
	fi
	if [ "$isolate" -eq 1 ]; then
		command -v ip >/dev/null || die "--isolate needs ip (apt-get install iproute2)"
		ns+=(--net --pid --fork)
		net="ip link set lo up"
	fi
	for b in "${binds[@]}"; do
		[ -d "$b" ] || die "--bind: $b is not a directory"
		spec+="mkdir -p '$root$b' && mount --rbind '$b' '$root$b' && "
	done
	exec unshare "${ns[@]}" -- sh -ec "
		$layer
		$net
		mount -t proc proc '$root/proc'
		mount --rbind /sys '$root/sys'
		mount --rbind /dev '$root/dev'
		mkdir -p '$root/dev/shm' && mount -t tmpfs -o mode=1777 shm '$root/dev/shm'
		mkdir -p '$root/run/lock' && mount -t tmpfs -o mode=0755 run '$root/run'
		mkdir -p -m 1777 '$root/run/lock'
		$spec true
		exec chroot '$root' env -i HOME=/root LANG=C.UTF-8 \
			PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \"\$@\"
	" mkroot "$@"
}

if [ "${1:-}" = --run ]; then
	[ $# -ge 2 ] || die "$run_usage"
	root=$2; shift 2
	run_in_root "$root" "$@"
fi

NAME=
if [ "${1:-}" = --name ]; then
	[ $# -ge 2 ] || die "--name needs a name"
	NAME=$2; shift 2
fi
[ $# -ge 1 ] || die "usage: mkroot.sh [--name NAME] SUITE [PACKAGE ...] [--download PACKAGE ...]"
SUITE=$1; shift
case "$SUITE" in
	*[!a-z0-9-]*|'') die "not a Debian suite name: $SUITE" ;;
esac
NAME=${NAME:-$SUITE}
case "$NAME" in
	*[!a-z0-9-]*|'') die "not a root name (a-z, 0-9, -): $NAME" ;;
esac
PACKAGES=()
DOWNLOADS=()
while [ $# -gt 0 ] && [ "$1" != --download ]; do PACKAGES+=("$1"); shift; done
if [ "${1:-}" = --download ]; then
	shift
	DOWNLOADS=("$@")
fi
ROOT=$ROOTS/$NAME
LOG=$ROOTS/$NAME
MIRROR=${BYOK_MIRROR:-$(host_mirror)}

have_all()
{
	local p
	[ -f "$ROOT/.byok-root-complete" ] || return 1
	for p in "${PACKAGES[@]}"; do
		chroot "$ROOT" dpkg-query -W -f='${Status}' "$p" 2>/dev/null |
			grep -q 'install ok installed' || return 1
	done
	for p in "${DOWNLOADS[@]}"; do
		compgen -G "$ROOT/var/cache/apt/archives/${p}_*.deb" >/dev/null || return 1
	done
}

if have_all; then
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
	debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR" >"$LOG.debootstrap.log" 2>&1 ||
		{ tail -n 20 "$LOG.debootstrap.log" >&2; die "debootstrap $SUITE failed (log: $LOG.debootstrap.log)"; }
	if [ "$SUITE" = sid ] || [ "$SUITE" = unstable ]; then
		echo 'Acquire::Check-Valid-Until "false";' >"$ROOT/etc/apt/apt.conf.d/99byok-no-valid-until"
	fi
	# no daemons started by package scripts inside the root
	printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
	chmod 755 "$ROOT/usr/sbin/policy-rc.d"
	# keep downloaded packages: a copy of the root installs them offline;
	# and no Recommends, in the root as in what was downloaded for it
	rm -f "$ROOT/etc/apt/apt.conf.d/docker-clean"
	echo 'Binary::apt::APT::Keep-Downloaded-Packages "true";' >"$ROOT/etc/apt/apt.conf.d/99byok-keep-debs"
	echo 'APT::Install-Recommends "false";' >"$ROOT/etc/apt/apt.conf.d/99byok-no-recommends"
	touch "$ROOT/.byok-root-complete"
fi
if [ ${#PACKAGES[@]} -gt 0 ] || [ ${#DOWNLOADS[@]} -gt 0 ]; then
	echo "mkroot.sh: installing into $NAME: ${PACKAGES[*]}${DOWNLOADS[*]:+ (download only: ${DOWNLOADS[*]})}" >&2
	# shellcheck disable=SC2016 # $1 and $2 belong to the inner shell; word splitting wanted
	bash "$0" --run "$ROOT" -- sh -ec '
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq
		if [ -n "$1" ]; then apt-get install -y -qq --no-install-recommends $1; fi
		if [ -n "$2" ]; then apt-get install -y -qq --no-install-recommends --download-only $2; fi
		' apt "${PACKAGES[*]}" "${DOWNLOADS[*]}" \
		>"$LOG.apt.log" 2>&1 ||
		{ tail -n 20 "$LOG.apt.log" >&2; die "apt-get install in $NAME failed (log: $LOG.apt.log)"; }
fi
echo "mkroot.sh: $NAME ready in $(( $(date +%s) - start )) s" >&2
echo "$ROOT"
