#!/bin/bash
#
# test/debian/in-root.sh -- runs inside a Debian root (scripts/mkroot.sh
# --run ... --isolate), as root: the steps that test/debian/
# 090_debian_package.pl planned in DIR (default /byok-test).
#
#   DIR/plan          one step per line: ID USER CWD TIMEOUT WHEN
#                     USER root or postgres; CWD a directory or "home";
#                     TIMEOUT seconds; WHEN "ok" (only while every earlier
#                     step passed) or "always" (clean-up)
#   DIR/steps/ID.sh   the step's commands, run with bash -e -o pipefail as
#                     USER in CWD, with a login-like environment
#   DIR/out/ID.log    what it printed (stdout and stderr)
#   DIR/out/ID.rc     its exit status, or "skipped"
#
# A doc's commands are one step: the test joins its blocks in one script,
# as a reader would type them into one shell.
set -u

dir=${1:-/byok-test}
mkdir -p "$dir/out"
chmod 0755 "$dir/out"
failed=0

while read -r id user cwd timeout when; do
	[ -n "$id" ] || continue
	case $id in \#*) continue ;; esac
	log=$dir/out/$id.log
	if [ "$failed" -ne 0 ] && [ "$when" != always ]; then
		echo skipped >"$dir/out/$id.rc"
		continue
	fi
	home=$(getent passwd "$user" | cut -d: -f6)
	[ "$cwd" = home ] && cwd=$home
	start=$(date +%s)
	echo "in-root: step $id as $user in $cwd" >&2
	if [ "$user" = root ]; then
		(cd "$cwd" && env -i HOME="$home" USER=root LOGNAME=root SHELL=/bin/bash LANG=C.UTF-8 \
			PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin TERM=dumb \
			timeout --kill-after=10 "$timeout" bash -e -o pipefail "$dir/steps/$id.sh") \
			</dev/null >"$log" 2>&1
	else
		(cd "$cwd" && runuser -u "$user" -- env -i HOME="$home" USER="$user" LOGNAME="$user" \
			SHELL=/bin/bash LANG=C.UTF-8 PATH=/usr/local/bin:/usr/bin:/bin TERM=dumb \
			timeout --kill-after=10 "$timeout" bash -e -o pipefail "$dir/steps/$id.sh") \
			</dev/null >"$log" 2>&1
	fi
	rc=$?
	echo "$rc" >"$dir/out/$id.rc"
	echo "in-root: step $id: exit $rc after $(( $(date +%s) - start )) s" >&2
	[ "$rc" -eq 0 ] || failed=1
done <"$dir/plan"
exit 0
