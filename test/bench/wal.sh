#!/usr/bin/env bash
# test/bench/wal.sh -- WAL-heavy benchmark: stock PostgreSQL against byok
# (pages and WAL encrypted) in the same run, both of the PostgreSQL that
# pg_config (or $PG_CONFIG) names.
#
#   bash test/bench/wal.sh [--quick]
#
# BENCH_PAIRS, BENCH_TIME (s per tpcb run), BENCH_ROWS (bulk rows) size
# the runs; BENCH_CASES="tpcb" (or "bulk") runs only that case.
#
# Two clusters side by side, same settings, interleaved runs (stock, byok,
# stock, byok, ...), medians and the byok/stock ratio of:
#  (a) bulk load: INSERT ... SELECT of narrow rows with synchronous_commit
#      off, i.e. WAL-bound writing (throughput = rows/s);
#  (b) pgbench tpcb-like with 16 clients and synchronous_commit on, i.e.
#      many small WAL flushes, each rewriting the partial last WAL page.
# Target: ratio >= 0.95 for each.  Benchmarks inform: the exit status is
# non-zero only if something broke.  Runs as $BYOK_BENCH_USER (default
# byoktest) when invoked as root; needs `make install` done.
set -euo pipefail

quick=0
[[ ${1:-} == --quick ]] && quick=1
if [[ $(id -u) -eq 0 ]]; then
	user=${BYOK_BENCH_USER:-byoktest}
	id "$user" >/dev/null 2>&1 || useradd -m "$user"
	script=$(mktemp /tmp/byok-walbench.XXXXXX.sh)
	cp "$0" "$script"
	chmod 755 "$script"
	exec runuser -u "$user" -- bash "$script" "$@"
fi

bindir=$("${PG_CONFIG:-pg_config}" --bindir)
export PATH=$bindir:$PATH
pairs=${BENCH_PAIRS:-$([[ $quick == 1 ]] && echo 3 || echo 5)}
secs=${BENCH_TIME:-$([[ $quick == 1 ]] && echo 10 || echo 20)}
cases=${BENCH_CASES:-bulk tpcb}
for case in $cases; do
	[[ $case == bulk || $case == tpcb ]] || { echo "wal.sh: BENCH_CASES: unknown case '$case' (bulk, tpcb)" >&2; exit 2; }
done
rows=${BENCH_ROWS:-$([[ $quick == 1 ]] && echo 500000 || echo 2000000)}
work=$(mktemp -d "${TMPDIR:-/tmp}/byok-walbench.XXXXXX")
sock=$work/sock
mkdir -p "$sock"
trap 'for c in stock byok; do pg_ctl -D "$work/$c" -m immediate stop >/dev/null 2>&1 || true; done; rm -rf "$work"' EXIT

port_of() { case $1 in stock) echo 55961 ;; byok) echo 55962 ;; esac; }
psql_c() { psql -X -A -t -q -h "$sock" -p "$(port_of "$1")" -d postgres -c "$2"; }

for c in stock byok; do
	initdb -D "$work/$c" -A trust -N >/dev/null
	cat >>"$work/$c/postgresql.conf" <<EOF
port = $(port_of $c)
listen_addresses = ''
unix_socket_directories = '$sock'
shared_buffers = 256MB
max_wal_size = 8GB
checkpoint_timeout = 30min
wal_buffers = 16MB
max_connections = 40
EOF
done
pg_byok enable -D "$work/byok" --root-key-file "$work/byok.rootkey" >/dev/null
echo "shared_preload_libraries = 'byok'" >>"$work/byok/postgresql.conf"
for c in stock byok; do
	pg_ctl -D "$work/$c" -l "$work/$c.log" -w start >/dev/null
	psql_c $c "CREATE TABLE bulk (id int, v text)"
	pgbench -i -q -s 10 -h "$sock" -p "$(port_of $c)" postgres >/dev/null 2>&1
done

median() { sort -g | awk '{a[NR]=$1} END {if (NR == 0) {print "nan"} else if (NR % 2) {print a[(NR+1)/2]} else {printf "%.1f\n", (a[NR/2]+a[NR/2+1])/2}}'; }

bulk_run() {
	local c=$1 start end
	psql_c "$c" "TRUNCATE bulk; CHECKPOINT" >/dev/null
	start=$(date +%s.%N)
	psql_c "$c" "SET synchronous_commit = off; INSERT INTO bulk SELECT g, md5(g::text) FROM generate_series(1, $rows) g" >/dev/null
	end=$(date +%s.%N)
	awk -v s="$start" -v e="$end" -v n="$rows" 'BEGIN {printf "%.0f\n", n / (e - s)}'
}

tpcb_run() {
	pgbench -n -c 16 -j 2 -T "$secs" -h "$sock" -p "$(port_of "$1")" postgres 2>/dev/null |
		awk '/^tps = / {printf "%.1f\n", $3}'
}

# Pairs alternate their order (stock first, then byok first, ...), as
# run.sh does, so that a drift of the machine (the disk's fsync latency
# moves by tens of per cent on this VM) does not always favour one side.
declare -A results
for case in $cases; do
	for c in stock byok; do results[$case.$c]=""; done
	results[$case.pairs]=""
	for ((i = 1; i <= pairs; i++)); do
		order="stock byok"
		((i % 2 == 0)) && order="byok stock"
		declare -A this=()
		for c in $order; do
			v=$(${case}_run $c)
			this[$c]=$v
			results[$case.$c]+="$v "
			echo "  $case $c run $i: $v"
		done
		results[$case.pairs]+="$(awk -v s="${this[stock]}" -v b="${this[byok]}" 'BEGIN {if (s > 0) printf "%.3f", b / s; else print "nan"}') "
	done
done

wal_pages=$(psql_c byok "CREATE EXTENSION IF NOT EXISTS byok; SELECT wal_pages_encrypted FROM byok_status()" | tail -1)
echo
printf '%-34s %12s %12s %7s %7s %8s %s\n' case stock byok ratio pairs target result
for case in $cases; do
	s=$(echo "${results[$case.stock]}" | tr ' ' '\n' | grep . | median)
	b=$(echo "${results[$case.byok]}" | tr ' ' '\n' | grep . | median)
	r=$(awk -v s="$s" -v b="$b" 'BEGIN {if (s > 0) printf "%.3f", b / s; else print "nan"}')
	pr=$(echo "${results[$case.pairs]}" | tr ' ' '\n' | grep . | median | awk '{printf "%.3f", $1}')
	ok=$(awk -v r="$r" 'BEGIN {print (r >= 0.95) ? "PASS" : "FAIL"}')
	label=$([[ $case == bulk ]] && echo "bulk INSERT...SELECT (rows/s)" || echo "tpcb-like -c 16, sync commit (tps)")
	printf '%-34s %12s %12s %7s %7s %8s %s\n' "$label" "$s" "$b" "$r" "$pr" ">=0.95" "$ok"
	echo "RESULT wal_$case stock=$s byok=$b ratio=$r pair_ratio=$pr target=0.95 $ok"
done
echo "(ratio = byok/stock of the medians of $pairs interleaved pairs, the one judged; pairs = median of the"
echo " per-pair ratios, steadier when the machine drifts; WAL pages the byok cluster encrypted: $wal_pages)"
