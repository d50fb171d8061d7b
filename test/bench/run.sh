#!/bin/bash
#
# test/bench/run.sh -- byok's benchmark suite (see test/bench/README.md).
#
#   bash test/bench/run.sh [--quick] [--keep]
#
# In one run:
#  (a) the page cipher (test/bench/bench_page.c, built here from src/crypto.c)
#      against `openssl speed -evp aes-256-xts -bytes 8192`, interleaved;
#  (b) pgbench tpcb-like, data in shared_buffers, on a stock and a byok
#      cluster side by side, interleaved runs, medians;
#  (c) pgbench select-only with data >= 4x shared_buffers (held by the OS
#      page cache), interleaved runs, medians;
# then a table with the ratios and the targets.  Targets are reported as
# PASS/FAIL but never change the exit status: benchmarks inform, they do not
# gate.  The exit status is non-zero only if something broke (a build, a
# cluster that does not start, a figure that could not be measured).
#
# Needs the installed product (make install): byok.so and pg_byok of the
# PostgreSQL that pg_config (or $PG_CONFIG) names, gcc/cc, pgbench, openssl.
# PostgreSQL refuses to run as root: invoked as root, the script re-executes
# itself as $BYOK_BENCH_USER (default byoktest) with runuser.
#
# Environment knobs (all optional):
#   PG_CONFIG          pg_config to use (default: pg_config on PATH)
#   BYOK_BENCH_USER    user to run as when invoked as root (default byoktest)
#   BENCH_CLIENTS      pgbench -c and -j (default 2)
#   BENCH_PAIRS        interleaved stock/byok pairs per case (default 9, quick 3)
#   BENCH_TIME         seconds per pgbench run (default 20, quick 8)
#   BENCH_INITDB_OPTS  extra initdb options for both clusters, e.g. -k
#   BENCH_PGBENCH_OPTS extra pgbench options for measured runs, e.g. "-M prepared"
#   BENCH_QUIET_WAIT   seconds to wait, before each run, for the CPUs to be
#                      90 % idle (default 15, quick 2; 0 = do not wait)
#   TMPDIR             where the temporary directory goes (default /tmp)

set -euo pipefail

usage()
{
	sed -n '3,5p' "$0" | sed 's/^# \{0,1\}//'
	echo "  --quick   fewer and shorter runs (about 3 minutes instead of about 15)"
	echo "  --keep    keep the temporary directory (clusters, logs, raw outputs)"
}

QUICK=0
KEEP=0
for arg in "$@"; do
	case "$arg" in
		--quick) QUICK=1 ;;
		--keep) KEEP=1 ;;
		-h|--help) usage; exit 0 ;;
		*) echo "run.sh: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
	esac
done

SCRIPT=$(readlink -f "${BASH_SOURCE[0]}")
BENCH_SRC=$(dirname "$SCRIPT")
REPO=$(cd "$BENCH_SRC/../.." && pwd)

# --- PostgreSQL refuses to run as root: become the benchmark user ---------
if [ "$(id -u)" -eq 0 ]; then
	BENCH_USER=${BYOK_BENCH_USER:-byoktest}
	if ! id "$BENCH_USER" >/dev/null 2>&1; then
		echo "run.sh: running as root needs user '$BENCH_USER' (set BYOK_BENCH_USER)" >&2
		exit 1
	fi
	if ! runuser -u "$BENCH_USER" -- test -r "$SCRIPT" -a -r "$REPO/src/crypto.c" \
		-a -r "$BENCH_SRC/bench_page.c"; then
		# the repository is not readable by that user: run from a copy
		copy=$(mktemp -d "${TMPDIR:-/tmp}/byok-bench-src.XXXXXX")
		mkdir -p "$copy/test/bench"
		cp -r "$REPO/src" "$copy/"
		cp "$BENCH_SRC/run.sh" "$BENCH_SRC/bench_page.c" "$copy/test/bench/"
		chown -R "$BENCH_USER" "$copy"
		SCRIPT="$copy/test/bench/run.sh"
	fi
	cd /
	exec runuser -u "$BENCH_USER" -- env BYOK_BENCH_COPY="${copy:-}" bash "$SCRIPT" "$@"
fi

# --- settings ---------------------------------------------------------------
PG_CONFIG=${PG_CONFIG:-pg_config}
CLIENTS=${BENCH_CLIENTS:-2}
if [ "$QUICK" -eq 1 ]; then
	MODE=quick
	PAIRS=${BENCH_PAIRS:-3}
	RUN_T=${BENCH_TIME:-8}
	WARM_T=3
	MICRO_ITER=3			# openssl/bench_page pairs
	MICRO_PAGES=100000
	SSL_SECONDS=1
	QUIET_WAIT=${BENCH_QUIET_WAIT:-2}
else
	MODE=full
	PAIRS=${BENCH_PAIRS:-9}
	RUN_T=${BENCH_TIME:-20}
	WARM_T=10
	MICRO_ITER=5
	MICRO_PAGES=200000
	SSL_SECONDS=3
	QUIET_WAIT=${BENCH_QUIET_WAIT:-15}
fi
TPCB_SCALE=5
TPCB_SB=128MB
SEL_SCALE=20
SEL_SB=64MB
TARGET_CIPHER=0.90
TARGET_TPCB=0.99
TARGET_SEL=0.97
NCPU=$(nproc 2>/dev/null || echo 1)
T_START=$(date +%s)

log()
{
	local t=$(( $(date +%s) - T_START ))
	printf '[%02d:%02d] %s\n' $((t / 60)) $((t % 60)) "$*"
}

die()
{
	echo "run.sh: error: $*" >&2
	exit 1
}

for tool in "$PG_CONFIG" openssl awk sort; do
	command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found on PATH"
done
CC=${CC:-$(command -v cc || command -v gcc || true)}
[ -n "$CC" ] || die "no C compiler (cc/gcc) found"

PGBIN=$("$PG_CONFIG" --bindir)
PKGLIBDIR=$("$PG_CONFIG" --pkglibdir)
for f in initdb pg_ctl psql pgbench pg_byok; do
	[ -x "$PGBIN/$f" ] || die "$PGBIN/$f not found (for pg_byok and byok.so: make install)"
done
[ -f "$PKGLIBDIR/byok.so" ] || die "$PKGLIBDIR/byok.so not found (make install)"
PG_VERSION=$("$PG_CONFIG" --version)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/byok-bench.XXXXXX")
chmod 700 "$WORK"
mkdir -p "$WORK/sock" "$WORK/bin" "$WORK/raw"
cd "$WORK"
export PGHOST="$WORK/sock" PGUSER=postgres
unset PGDATABASE PGPORT PGSERVICE PGOPTIONS || true

CLUSTERS=()				# data directories started by us
FAILED=0

cleanup()
{
	local rc=$?

	for d in "${CLUSTERS[@]}"; do
		if [ -f "$d/postmaster.pid" ]; then
			"$PGBIN/pg_ctl" -D "$d" -m fast -w stop >/dev/null 2>&1 || true
		fi
	done
	# the copy of the sources made when root re-executed us (see above)
	case "${BYOK_BENCH_COPY:-}" in
		"${TMPDIR:-/tmp}"/byok-bench-src.*) rm -rf "$BYOK_BENCH_COPY" ;;
	esac
	if [ "$KEEP" -eq 1 ] || [ "$rc" -ne 0 ]; then
		echo "run.sh: kept $WORK (clusters, server logs, raw outputs)" >&2
	else
		rm -rf "$WORK"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# median of numbers on stdin ("nan" if none)
median()
{
	sort -g | awk '{ v[NR] = $1 }
		END { if (NR == 0) { print "nan"; exit }
			  if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# ratio A B -> A/B with 3 decimals ("nan" if not computable)
ratio()
{
	awk -v a="$1" -v b="$2" 'BEGIN { if (a == "nan" || b == "nan" || b + 0 == 0) print "nan";
		else printf "%.3f\n", a / b }'
}

verdict()
{
	awk -v r="$1" -v t="$2" 'BEGIN { if (r == "nan") print "n/a"; else if (r + 0 >= t + 0) print "PASS"; else print "FAIL" }'
}

log "byok benchmark, $MODE mode: $PG_VERSION, $NCPU CPUs, user $(id -un), work dir $WORK"

# --- other load on the machine --------------------------------------------
# The benchmark cannot stop other processes from using the CPUs, but it can
# see them: /proc/stat counts all busy time, the postmaster (with its reaped
# children's time) and its live children count ours, and `time` counts
# pgbench.  "foreign" is the rest, as a share of all CPUs, per run.
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)

# "busy total" jiffies of all CPUs
cpu_jiffies()
{
	awk '$1 == "cpu" { busy = $2 + $3 + $4 + $7 + $8 + $9; print busy, busy + $5 + $6; exit }' /proc/stat
}

# CPU jiffies of postmaster $1 and its children (reaped ones included)
cluster_jiffies()
{
	# (processes come and go while cat reads: it may fail on some)
	{ cat /proc/[0-9]*/stat 2>/dev/null || true; } |
		awk -v pm="$1" '{ pid = $1; s = $0; sub(/^.*\) /, "", s); n = split(s, f, " ");
			# f[k-2] is field k of proc(5): 4 ppid, 14 utime, 15 stime, 16 cutime, 17 cstime
			if (pid == pm) t += f[12] + f[13] + f[14] + f[15];
			else if (f[2] == pm) t += f[12] + f[13] }
			END { print t + 0 }'
}

postmaster_pid() { head -n 1 "$(dir_of "$1")/postmaster.pid"; }

# Wait (up to $1 seconds) until the CPUs are at least 90 % idle over 1 s,
# so that a run does not start in the middle of someone else's burst.
wait_quiet()
{
	local limit=$1 waited=0 a b
	[ "$limit" -gt 0 ] || return 0
	while :; do
		a=$(cpu_jiffies)
		sleep 1
		b=$(cpu_jiffies)
		if awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " ");
				exit !((y[1] - x[1]) <= 0.10 * (y[2] - x[2])) }'; then
			return 0
		fi
		waited=$((waited + 1))
		[ "$waited" -lt "$limit" ] || return 0
	done
}

# --- (a) page cipher vs openssl speed -------------------------------------
log "(a) building bench_page from $REPO/src/crypto.c, aes_hw.c, checksum_avx2.c and secmem.c"
CFLAGS_FE="$("$PG_CONFIG" --cflags) -std=gnu99 -DFRONTEND -D_GNU_SOURCE \
	-I$REPO/src -I$("$PG_CONFIG" --includedir-server) -I$("$PG_CONFIG" --includedir)/internal"
LIBS_FE="-L$PKGLIBDIR -lpgcommon -lpgport -lcrypto -lm"
# as the Makefile builds src/checksum_avx2.c
CFLAGS_AVX2=""
[ "$(uname -m)" != x86_64 ] || CFLAGS_AVX2="-mavx2 -funroll-loops -ftree-vectorize"
# (flags are word-split on purpose)
# shellcheck disable=SC2086,SC2046
"$CC" $CFLAGS_FE -c -o "$WORK/bin/crypto.o" "$REPO/src/crypto.c" 2>"$WORK/bin/build.log" &&
	"$CC" $CFLAGS_FE -c -o "$WORK/bin/aes_hw.o" "$REPO/src/aes_hw.c" 2>>"$WORK/bin/build.log" &&
	"$CC" $CFLAGS_FE -c -o "$WORK/bin/secmem.o" "$REPO/src/secmem.c" 2>>"$WORK/bin/build.log" &&
	"$CC" $CFLAGS_FE $CFLAGS_AVX2 -c -o "$WORK/bin/checksum_avx2.o" "$REPO/src/checksum_avx2.c" 2>>"$WORK/bin/build.log" &&
	"$CC" $CFLAGS_FE -c -o "$WORK/bin/bench_page.o" "$BENCH_SRC/bench_page.c" 2>>"$WORK/bin/build.log" &&
	"$CC" $("$PG_CONFIG" --cflags) "$WORK/bin/bench_page.o" "$WORK/bin/crypto.o" "$WORK/bin/aes_hw.o" \
		"$WORK/bin/checksum_avx2.o" "$WORK/bin/secmem.o" \
		$("$PG_CONFIG" --ldflags) $LIBS_FE -o "$WORK/bin/bench_page" 2>>"$WORK/bin/build.log" ||
	{ cat "$WORK/bin/build.log" >&2; die "could not build bench_page"; }

openssl_mbps()
{
	# -mr prints "+F:n:AES-256-XTS:<bytes per second>" for the one size
	openssl speed -mr -evp aes-256-xts -bytes 8192 -seconds "$SSL_SECONDS" 2>/dev/null |
		awk -F: '/^\+F:/ { printf "%.1f\n", $NF / 1e6 }'
}

log "(a) page cipher: $MICRO_ITER x (openssl speed -seconds $SSL_SECONDS, bench_page -n $MICRO_PAGES), interleaved"
: >"$WORK/raw/openssl.txt"
: >"$WORK/raw/bench_page.txt"
for i in $(seq 1 "$MICRO_ITER"); do
	for what in ssl page; do
		# alternate which of the two goes first
		if [ $((i % 2)) -eq 0 ]; then what=$([ "$what" = ssl ] && echo page || echo ssl); fi
		wait_quiet "$QUIET_WAIT"
		if [ "$what" = ssl ]; then
			v=$(openssl_mbps || true)
			[ -n "$v" ] || die "could not parse 'openssl speed -mr -evp aes-256-xts' output"
			echo "$v" >>"$WORK/raw/openssl.txt"
		else
			"$WORK/bin/bench_page" -n "$MICRO_PAGES" -r 1 >"$WORK/raw/bench_page.$i.txt" ||
				die "bench_page failed (see $WORK/raw/bench_page.$i.txt)"
			grep -v '^#' "$WORK/raw/bench_page.$i.txt" >>"$WORK/raw/bench_page.txt"
		fi
	done
done

micro()
{
	awk -v k="$1" '$1 == k { print $2 }' "$WORK/raw/bench_page.txt" | median
}
SSL_MBPS=$(median <"$WORK/raw/openssl.txt")
SSL_US=$(awk -v m="$SSL_MBPS" 'BEGIN { printf "%.4f\n", 8192 / m }')
ENC_MBPS=$(micro page_encrypt_mbps)
CIPHER_RATIO=$(ratio "$ENC_MBPS" "$SSL_MBPS")
EVP_RATIO=$(ratio "$(micro page_encrypt_mbps)" "$(micro evp_xts_8192_mbps)")
DEC_US=$(micro page_decrypt_us)
log "(a) bench_page $(grep -h -m1 '^# implementation' "$WORK"/raw/bench_page.*.txt | head -n 1 | sed 's/^# //')"
log "(a) openssl speed runs (MB/s): $(tr '\n' ' ' <"$WORK/raw/openssl.txt")"
log "(a) byok page_encrypt runs (MB/s): $(awk '$1 == "page_encrypt_mbps" { printf "%s ", $2 }' "$WORK/raw/bench_page.txt")"

# --- clusters ---------------------------------------------------------------
free_port()
{
	local p=$((54000 + RANDOM % 2000))

	while [ -e "$WORK/sock/.s.PGSQL.$p" ] ||
		{ command -v ss >/dev/null && ss -Hltn "sport = :$p" 2>/dev/null | grep -q .; }; do
		p=$((p + 1))
	done
	echo "$p"
}

# settings both clusters share (include'd; phase (c) rewrites it)
write_common_conf()
{
	cat >"$WORK/common.conf" <<EOF
# byok benchmark: identical settings for the stock and the byok cluster
listen_addresses = ''
unix_socket_directories = '$WORK/sock'
max_connections = 20
shared_buffers = $1
max_wal_size = 8GB
min_wal_size = 1GB
checkpoint_timeout = 30min
synchronous_commit = on
fsync = on
full_page_writes = on
log_min_messages = warning
EOF
}

STOCK_D="$WORK/stock"
BYOK_D="$WORK/byok"
STOCK_PORT=$(free_port)
touch "$WORK/sock/.s.PGSQL.$STOCK_PORT.reserved"
BYOK_PORT=$(free_port)
while [ "$BYOK_PORT" = "$STOCK_PORT" ]; do BYOK_PORT=$((BYOK_PORT + 1)); done
rm -f "$WORK/sock/.s.PGSQL.$STOCK_PORT.reserved"

port_of() { if [ "$1" = stock ]; then echo "$STOCK_PORT"; else echo "$BYOK_PORT"; fi; }
dir_of() { if [ "$1" = stock ]; then echo "$STOCK_D"; else echo "$BYOK_D"; fi; }

make_cluster()
{
	local name=$1 d port
	d=$(dir_of "$name")
	port=$(port_of "$name")
	# shellcheck disable=SC2086
	"$PGBIN/initdb" -D "$d" -U postgres -A trust --no-sync --no-instructions \
		${BENCH_INITDB_OPTS:-} >"$WORK/$name.initdb.log" 2>&1 ||
		{ cat "$WORK/$name.initdb.log" >&2; die "initdb failed for $name"; }
	if [ "$name" = byok ]; then
		"$PGBIN/pg_byok" enable -D "$d" --root-key-file "$WORK/byok.rootkey" \
			>"$WORK/byok.enable.log" 2>&1 </dev/null ||
			{ cat "$WORK/byok.enable.log" >&2; die "pg_byok enable failed"; }
	fi
	{
		echo ""
		echo "# added by test/bench/run.sh"
		echo "include '$WORK/common.conf'"
		echo "port = $port"
		if [ "$name" = byok ]; then
			echo "shared_preload_libraries = 'byok'"
			echo "byok.root_key_file = '$WORK/byok.rootkey'"
		fi
	} >>"$d/postgresql.conf"
}

start_cluster()
{
	local name=$1 d
	d=$(dir_of "$name")
	"$PGBIN/pg_ctl" -D "$d" -l "$WORK/$name.log" -w -t 120 start >/dev/null 2>&1 ||
		{ tail -n 30 "$WORK/$name.log" >&2; die "could not start the $name cluster"; }
}

stop_cluster()
{
	"$PGBIN/pg_ctl" -D "$(dir_of "$1")" -m fast -w -t 300 stop >/dev/null 2>&1 ||
		die "could not stop the $1 cluster"
}

sql()
{
	local name=$1 db=$2
	shift 2
	"$PGBIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -p "$(port_of "$name")" -d "$db" -c "$*"
}

log "(b,c) creating clusters: stock on port $STOCK_PORT, byok on port $BYOK_PORT (unix sockets in $WORK/sock)"
write_common_conf "$TPCB_SB"
make_cluster stock
make_cluster byok
CLUSTERS=("$STOCK_D" "$BYOK_D")
start_cluster stock
start_cluster byok
[ "$(sql byok postgres "SHOW shared_preload_libraries")" = byok ] ||
	die "the byok cluster does not preload byok"

log "(b,c) pgbench -i: scale $TPCB_SCALE (bench_tpcb) and $SEL_SCALE (bench_sel), both clusters in parallel"
init_dbs()
{
	local name=$1 port
	port=$(port_of "$name")
	{
		sql "$name" postgres "CREATE DATABASE bench_tpcb" &&
			sql "$name" postgres "CREATE DATABASE bench_sel" &&
			"$PGBIN/pgbench" -i -q -s "$TPCB_SCALE" -p "$port" bench_tpcb &&
			"$PGBIN/pgbench" -i -q -s "$SEL_SCALE" -p "$port" bench_sel &&
			sql "$name" postgres "CHECKPOINT"
	} >"$WORK/$name.init.log" 2>&1
}
init_dbs stock & pid_s=$!
init_dbs byok & pid_b=$!
wait "$pid_s" || { cat "$WORK/stock.init.log" >&2; die "pgbench -i failed on stock"; }
wait "$pid_b" || { cat "$WORK/byok.init.log" >&2; die "pgbench -i failed on byok"; }

# KiB read from block devices since boot (all devices)
disk_kib() { awk '$1 == "pgpgin" { print $2 }' /proc/vmstat; }

# Read every file of database $2 of cluster $1, so that the OS page cache
# holds all of it.  Done before every select-only run, not once: some
# kernels page out file cache that has not been touched for a while (DAMON
# reclaim on the VMs this was written on takes what was idle for 30 s), and
# the cluster that waited while the other one ran would start its run
# reading from disk.
prewarm()
{
	find "$(db_dir "$1" "$2")" -type f -exec cat {} + >/dev/null
}

# The directory of database $2 of cluster $1
db_dir()
{
	echo "$(dir_of "$1")/base/$(sql "$1" "$2" "SELECT oid FROM pg_database WHERE datname = current_database()")"
}

# One pgbench run; appends "name tps blks_read_delta foreign_cpu_pct
# cpu_us_per_tx disk_kib" to the given file and prints "tps
# foreign_cpu_pct".  cpu_us_per_tx is the CPU time of the cluster and
# pgbench per transaction: unlike tps it hardly moves when other processes
# take CPU time away.  disk_kib is what the machine read from disk during
# the run (the select-only case should read nothing: its data is in the
# page cache).
bench_run()
{
	local name=$1 db=$2 secs=$3 out=$4 select_only=$5 quiet=${6:-$QUIET_WAIT} port raw r0 r1 tps
	local pm c0 c1 o0 o1 cpu foreign ntx cpu_tx d0 d1
	port=$(port_of "$name")
	raw="$WORK/raw/pgbench.$(basename "$out" .txt).$name.$(date +%s%N).txt"
	local args=(-c "$CLIENTS" -j "$CLIENTS" -T "$secs" -p "$port")
	if [ "$select_only" -eq 1 ]; then
		args+=(-S -n)
	else
		sql "$name" "$db" "CHECKPOINT"	# every run starts just after a checkpoint
	fi
	r0=$(sql "$name" "$db" "SELECT blks_read FROM pg_stat_database WHERE datname = current_database()")
	wait_quiet "$quiet"
	[ "$select_only" -eq 0 ] || prewarm "$name" "$db"
	pm=$(postmaster_pid "$name")
	d0=$(disk_kib)
	c0=$(cpu_jiffies)
	o0=$(cluster_jiffies "$pm")
	# shellcheck disable=SC2086
	{ TIMEFORMAT='%U %S'; time "$PGBIN/pgbench" "${args[@]}" ${BENCH_PGBENCH_OPTS:-} "$db" \
		>"$raw" 2>&1; } 2>"$raw.time" ||
		{ cat "$raw" >&2; die "pgbench failed on $name"; }
	c1=$(cpu_jiffies)
	o1=$(cluster_jiffies "$pm")
	d1=$(disk_kib)
	cpu=$(cat "$raw.time")
	echo "cpu_jiffies $c0 -> $c1; cluster_jiffies $o0 -> $o1; pgbench user/sys s $cpu; CLK_TCK $CLK_TCK" >"$raw.acct"
	foreign=$(awk -v c0="$c0" -v c1="$c1" -v o0="$o0" -v o1="$o1" -v cpu="$cpu" -v hz="$CLK_TCK" \
		'BEGIN { split(c0, a, " "); split(c1, b, " "); split(cpu, p, " ");
			busy = b[1] - a[1]; total = b[2] - a[2];
			f = busy - (o1 - o0) - (p[1] + p[2]) * hz;
			# accounting differs a little between /proc/stat and the
			# processes: small negative values mean "none"
			printf "%.1f\n", (total > 0 ? 100 * f / total : 0) }')
	tps=$(awk '/^tps = / { printf "%.1f\n", $3; exit }' "$raw")
	ntx=$(awk '/^number of transactions actually processed:/ { print $NF; exit }' "$raw")
	[ -n "$tps" ] && [ -n "$ntx" ] || { cat "$raw" >&2; die "could not parse pgbench output"; }
	cpu_tx=$(awk -v o0="$o0" -v o1="$o1" -v cpu="$cpu" -v hz="$CLK_TCK" -v n="$ntx" \
		'BEGIN { split(cpu, p, " "); printf "%.2f\n", (n > 0 ? 1e6 * ((o1 - o0) / hz + p[1] + p[2]) / n : 0) }')
	sleep 1		# let the exiting backends flush their I/O statistics
	r1=$(sql "$name" "$db" "SELECT blks_read FROM pg_stat_database WHERE datname = current_database()")
	echo "$name $tps $((r1 - r0)) $foreign $cpu_tx $((d1 - d0))" >>"$out"
	echo "$tps $foreign"
}

# Interleaved pairs: stock,byok then byok,stock (ABBA), so drift over time
# and "second of a pair" effects hit both alike.
bench_case()
{
	local label=$1 db=$2 select_only=$3 out="$WORK/raw/$1.txt" i order res
	: >"$out"
	for name in stock byok; do
		bench_run "$name" "$db" "$WARM_T" "$WORK/raw/$label.warmup.txt" "$select_only" 0 >/dev/null
	done
	for i in $(seq 1 "$PAIRS"); do
		if [ $((i % 2)) -eq 1 ]; then order="stock byok"; else order="byok stock"; fi
		for name in $order; do
			res=$(bench_run "$name" "$db" "$RUN_T" "$out" "$select_only")
			log "($label) pair $i/$PAIRS: $name ${res% *} tps (other load: ${res#* }% CPU)"
		done
	done
}

case_median() { awk -v n="$2" '$1 == n { print $2 }' "$WORK/raw/$1.txt" | median; }
case_runs() { awk -v n="$2" '$1 == n { printf "%s ", $2 }' "$WORK/raw/$1.txt"; }
case_cpu() { awk -v n="$2" '$1 == n { printf "%s ", $5 }' "$WORK/raw/$1.txt"; }
case_cpu_median() { awk -v n="$2" '$1 == n { print $5 }' "$WORK/raw/$1.txt" | median; }
case_foreign() { awk -v n="$2" '$1 == n { printf "%s ", $4 }' "$WORK/raw/$1.txt"; }
case_disk_mb() { awk -v n="$2" '$1 == n { printf "%.1f ", $6 / 1024 }' "$WORK/raw/$1.txt"; }
# median over all runs of a case of the foreign CPU share
case_foreign_median() { awk '{ print $4 }' "$WORK/raw/$1.txt" | median; }
# median of the per-pair ratios byok/stock (runs are written pair by pair)
case_pair_ratio()
{
	awk '{ tps[$1] = $2 } NR % 2 == 0 { printf "%.4f\n", tps["byok"] / tps["stock"] }' \
		"$WORK/raw/$1.txt" | median | awk '{ if ($1 == "nan") print; else printf "%.3f\n", $1 }'
}
# median of blocks read per second of a case, for one cluster
case_reads_per_s() { awk -v n="$2" -v t="$RUN_T" '$1 == n { print $3 / t }' "$WORK/raw/$1.txt" | median; }

# --- (b) tpcb-like, data in shared_buffers ----------------------------------
TPCB_SIZE=$(sql stock bench_tpcb "SELECT pg_database_size('bench_tpcb')")
log "(b) tpcb-like: shared_buffers $TPCB_SB, scale $TPCB_SCALE ($((TPCB_SIZE / 1048576)) MB), -c $CLIENTS -j $CLIENTS -T $RUN_T, $PAIRS pairs"
bench_case tpcb bench_tpcb 0

# --- (c) select-only, data >= 4x shared_buffers, in the OS page cache --------
log "(c) restarting both clusters with shared_buffers = $SEL_SB"
stop_cluster stock
stop_cluster byok
write_common_conf "$SEL_SB"
start_cluster stock
start_cluster byok

SEL_SIZE=$(sql stock bench_sel "SELECT pg_database_size('bench_sel')")
SB_BYTES=$(sql stock bench_sel "SELECT setting::bigint * 8192 FROM pg_settings WHERE name = 'shared_buffers'")
SEL_FACTOR=$(awk -v a="$SEL_SIZE" -v b="$SB_BYTES" 'BEGIN { printf "%.1f\n", a / b }')
if awk -v f="$SEL_FACTOR" 'BEGIN { exit !(f < 4) }'; then
	log "(c) WARNING: data is only ${SEL_FACTOR}x shared_buffers (wanted >= 4x)"
fi

# prewarm the OS page cache: one full read of every file of the database
# (repeated before each run)
for name in stock byok; do
	prewarm "$name" bench_sel
	if command -v fincore >/dev/null; then
		# shellcheck disable=SC2046
		res=$(fincore -b -n -o RES,SIZE $(find "$(db_dir "$name" bench_sel)" -type f -size +0) 2>/dev/null |
			awk '{ r += $1; s += $2 } END { if (s > 0) printf "%.0f%%", 100 * r / s; else print "?" }')
	else
		res="? (no fincore)"
	fi
	log "(c) $name: bench_sel is $(( $(sql "$name" bench_sel "SELECT pg_database_size('bench_sel')") / 1048576 )) MB, page cache holds $res of it"
done
log "(c) select-only: shared_buffers $SEL_SB, scale $SEL_SCALE ($((SEL_SIZE / 1048576)) MB = ${SEL_FACTOR}x shared_buffers), -S -c $CLIENTS -j $CLIENTS -T $RUN_T, $PAIRS pairs"
bench_case select bench_sel 1

stop_cluster stock
stop_cluster byok

# --- results ----------------------------------------------------------------
TPCB_STOCK=$(case_median tpcb stock)
TPCB_BYOK=$(case_median tpcb byok)
TPCB_RATIO=$(ratio "$TPCB_BYOK" "$TPCB_STOCK")
SEL_STOCK=$(case_median select stock)
SEL_BYOK=$(case_median select byok)
SEL_RATIO=$(ratio "$SEL_BYOK" "$SEL_STOCK")
SEL_READS=$(case_reads_per_s select byok)
SEL_READS_TX=$(awk -v r="$SEL_READS" -v t="$SEL_BYOK" 'BEGIN { printf "%.2f\n", r / t }')
# CPU time the page decryptions take, as a share of the machine
SEL_CIPHER_PCT=$(awk -v r="$SEL_READS" -v us="$DEC_US" -v n="$NCPU" 'BEGIN { printf "%.2f\n", 100 * r * us / (n * 1e6) }')
SEL_MODEL=$(awk -v p="$SEL_CIPHER_PCT" 'BEGIN { printf "%.3f\n", 1 - p / 100 }')
TPCB_READS=$(case_reads_per_s tpcb byok)
TPCB_PAIR_RATIO=$(case_pair_ratio tpcb)
TPCB_CPU_STOCK=$(case_cpu_median tpcb stock)
TPCB_CPU_BYOK=$(case_cpu_median tpcb byok)
TPCB_CPU_RATIO=$(ratio "$TPCB_CPU_STOCK" "$TPCB_CPU_BYOK")
SEL_CPU_STOCK=$(case_cpu_median select stock)
SEL_CPU_BYOK=$(case_cpu_median select byok)
SEL_CPU_RATIO=$(ratio "$SEL_CPU_STOCK" "$SEL_CPU_BYOK")
SEL_PAIR_RATIO=$(case_pair_ratio select)
TPCB_FOREIGN=$(case_foreign_median tpcb)
SEL_FOREIGN=$(case_foreign_median select)
NOISY=""
for f in "$TPCB_FOREIGN" "$SEL_FOREIGN"; do
	if awk -v f="$f" 'BEGIN { exit !(f > 5) }'; then NOISY=1; fi
done

echo
echo "== byok benchmark results ($MODE mode, $(date -u '+%Y-%m-%d %H:%M UTC'), $NCPU CPUs, $PG_VERSION) =="
echo
echo "page cipher (medians of $MICRO_ITER interleaved runs; us per 8 kB page, MB = 10^6 bytes):"
printf '  %-34s %8s us  %8s MB/s\n' "openssl speed aes-256-xts 8192 B" "$SSL_US" "$SSL_MBPS"
for k in evp_xts_8192 evp_xts_ivreset page_encrypt page_decrypt page_encrypt_cksum page_decrypt_cksum \
	wal_encrypt wal_decrypt; do
	printf '  %-34s %8s us  %8s MB/s\n' "$k" "$(micro "${k}_us")" "$(micro "${k}_mbps")"
done
echo "  byok encrypt / in-process EVP (same ctx, no tweak change): $EVP_RATIO"
echo "  (gap to the ceiling: evp_xts_ivreset - evp_xts_8192 = OpenSSL's per-page tweak change and"
echo "   second unit; page_encrypt - evp_xts_ivreset = byok's zero check, tweak, call overhead,"
echo "   negative where byok computes XTS with VAES)"
echo
echo "pgbench tps per run (interleaved, $RUN_T s each, -c $CLIENTS -j $CLIENTS):"
echo "  tpcb-like   stock: $(case_runs tpcb stock)"
echo "  tpcb-like   byok:  $(case_runs tpcb byok)"
echo "  select-only stock: $(case_runs select stock)"
echo "  select-only byok:  $(case_runs select byok)"
echo "  CPU share used by other processes during each run (%, same order):"
echo "    tpcb-like   stock: $(case_foreign tpcb stock)  byok: $(case_foreign tpcb byok)"
echo "    select-only stock: $(case_foreign select stock)  byok: $(case_foreign select byok)"
echo "  MB read from disk during each select-only run (same order; the data should be in the page cache):"
echo "    stock: $(case_disk_mb select stock)  byok: $(case_disk_mb select byok)"
echo "  CPU us per transaction, cluster + pgbench (same order):"
echo "    tpcb-like   stock: $(case_cpu tpcb stock)  byok: $(case_cpu tpcb byok)"
echo "    select-only stock: $(case_cpu select stock)  byok: $(case_cpu select byok)"
echo "    medians: tpcb-like $TPCB_CPU_STOCK / $TPCB_CPU_BYOK us, select-only $SEL_CPU_STOCK / $SEL_CPU_BYOK us"
echo "  median of per-pair ratios byok/stock: tpcb-like $TPCB_PAIR_RATIO, select-only $SEL_PAIR_RATIO"
echo "  tpcb-like: $((TPCB_SIZE / 1048576)) MB in $TPCB_SB shared_buffers, byok cluster read $TPCB_READS blocks/s"
echo "  select-only: $((SEL_SIZE / 1048576)) MB = ${SEL_FACTOR}x $SEL_SB shared_buffers;" \
	"byok cluster read $SEL_READS blocks/s ($SEL_READS_TX per transaction),"
echo "    decrypting them costs ~${SEL_CIPHER_PCT}% of $NCPU CPUs at $DEC_US us/page," \
	"so a CPU-bound run can expect a ratio near $SEL_MODEL from the cipher alone"
echo
printf '%-20s %10s %10s %7s %7s %7s %7s %6s\n' case stock byok ratio pairs cpu target result
printf '%-20s %10s %10s %7s %7s %7s %7s %6s\n' "page cipher (MB/s)" "$SSL_MBPS" "$ENC_MBPS" "$CIPHER_RATIO" - - \
	">=$TARGET_CIPHER" "$(verdict "$CIPHER_RATIO" "$TARGET_CIPHER")"
printf '%-20s %10s %10s %7s %7s %7s %7s %6s\n' "tpcb-like (tps)" "$TPCB_STOCK" "$TPCB_BYOK" "$TPCB_RATIO" \
	"$TPCB_PAIR_RATIO" "$TPCB_CPU_RATIO" ">=$TARGET_TPCB" "$(verdict "$TPCB_RATIO" "$TARGET_TPCB")"
printf '%-20s %10s %10s %7s %7s %7s %7s %6s\n' "select-only (tps)" "$SEL_STOCK" "$SEL_BYOK" "$SEL_RATIO" \
	"$SEL_PAIR_RATIO" "$SEL_CPU_RATIO" ">=$TARGET_SEL" "$(verdict "$SEL_RATIO" "$TARGET_SEL")"
echo "(stock, byok: medians; ratio = byok/stock of the medians, the one judged; pairs = median of"
echo " the per-pair ratios, steadier when the load of the machine drifts; cpu = stock/byok CPU time"
echo " per transaction, nearly blind to other load: on a CPU-bound run, the ratio a quiet machine gives)"
echo "(page cipher: 'stock' = openssl speed -evp aes-256-xts -bytes 8192, 'byok' = byok_page_encrypt)"
if [ -n "$NOISY" ]; then
	echo "WARNING: other processes used a median of ${TPCB_FOREIGN}% (tpcb-like) and ${SEL_FOREIGN}% (select-only)"
	echo "         of the CPUs during the pgbench runs: the tps ratios are unreliable; rerun on a quiet machine."
fi
echo
# machine-readable
echo "RESULT page_cipher stock=$SSL_MBPS byok=$ENC_MBPS ratio=$CIPHER_RATIO target=$TARGET_CIPHER $(verdict "$CIPHER_RATIO" "$TARGET_CIPHER")"
echo "RESULT tpcb_like stock=$TPCB_STOCK byok=$TPCB_BYOK ratio=$TPCB_RATIO pair_ratio=$TPCB_PAIR_RATIO cpu_ratio=$TPCB_CPU_RATIO foreign_cpu=$TPCB_FOREIGN target=$TARGET_TPCB $(verdict "$TPCB_RATIO" "$TARGET_TPCB")"
echo "RESULT select_only stock=$SEL_STOCK byok=$SEL_BYOK ratio=$SEL_RATIO pair_ratio=$SEL_PAIR_RATIO cpu_ratio=$SEL_CPU_RATIO foreign_cpu=$SEL_FOREIGN target=$TARGET_SEL $(verdict "$SEL_RATIO" "$TARGET_SEL")"
log "done"

for v in "$CIPHER_RATIO" "$TPCB_RATIO" "$SEL_RATIO"; do
	[ "$v" != nan ] || FAILED=1
done
[ "$FAILED" -eq 0 ] || die "some figures could not be measured"
exit 0
