#!/usr/bin/env bash
# test/bench/spill.sh -- spill-heavy benchmark: stock PostgreSQL 15 against
# byok (temporary files encrypted under the ephemeral temp key) in the same
# run.
#
#   bash test/bench/spill.sh [--quick]
#
# Two clusters side by side, same settings, work_mem = 1MB, interleaved runs
# (stock, byok, byok, stock, ...), medians of the elapsed time and the
# stock/byok speed ratio of:
#  (a) a sort of every row past work_mem (ORDER BY over a wide text column,
#      spilling tens of MB of runs to pgsql_tmp and merging them back);
#  (b) a hash join past work_mem (both sides batched to temporary files).
# Target: ratio >= 0.95 for each.  Benchmarks inform: the exit status is
# non-zero only if something broke.  Runs as $BYOK_BENCH_USER (default
# byoktest) when invoked as root; needs `make install` done.
set -euo pipefail

quick=0
[[ ${1:-} == --quick ]] && quick=1
if [[ $(id -u) -eq 0 ]]; then
	user=${BYOK_BENCH_USER:-byoktest}
	id "$user" >/dev/null 2>&1 || useradd -m "$user"
	script=$(mktemp /tmp/byok-spillbench.XXXXXX.sh)
	cp "$0" "$script"
	chmod 755 "$script"
	exec runuser -u "$user" -- bash "$script" "$@"
fi

bindir=$(pg_config --bindir)
export PATH=$bindir:$PATH
pairs=${BENCH_PAIRS:-$([[ $quick == 1 ]] && echo 3 || echo 7)}
rows=${BENCH_ROWS:-$([[ $quick == 1 ]] && echo 300000 || echo 1000000)}
work=$(mktemp -d "${TMPDIR:-/tmp}/byok-spillbench.XXXXXX")
sock=$work/sock
mkdir -p "$sock"
trap 'for c in stock byok; do pg_ctl -D "$work/$c" -m immediate stop >/dev/null 2>&1 || true; done; rm -rf "$work"' EXIT

port_of() { case $1 in stock) echo 55971 ;; byok) echo 55972 ;; esac; }
psql_c() { psql -X -A -t -q -h "$sock" -p "$(port_of "$1")" -d postgres -c "$2"; }

for c in stock byok; do
	initdb -D "$work/$c" -A trust -N >/dev/null
	cat >>"$work/$c/postgresql.conf" <<EOF
port = $(port_of $c)
listen_addresses = ''
unix_socket_directories = '$sock'
shared_buffers = 256MB
work_mem = 1MB
max_parallel_workers_per_gather = 0
jit = off
autovacuum = off
EOF
done
pg_byok enable -D "$work/byok" --root-key-file "$work/byok.rootkey" >/dev/null
echo "shared_preload_libraries = 'byok'" >>"$work/byok/postgresql.conf"
for c in stock byok; do
	pg_ctl -D "$work/$c" -l "$work/$c.log" -w start >/dev/null
	psql_c $c "CREATE TABLE s (id int, k int, v text);
		INSERT INTO s SELECT g, ((g::bigint * 7919) % $rows)::int, md5(g::text) || md5((g + 1)::text) FROM generate_series(1, $rows) g;
		CREATE TABLE h AS SELECT * FROM s; ANALYZE s; ANALYZE h"
done

median() { sort -g | awk '{a[NR]=$1} END {if (NR == 0) {print "nan"} else if (NR % 2) {print a[(NR+1)/2]} else {printf "%.4f\n", (a[NR/2]+a[NR/2+1])/2}}'; }

# elapsed seconds of one query, and the temp bytes it wrote (pg_stat_database)
timed() {
	local c=$1 sql=$2 start end t0 t1
	t0=$(psql_c "$c" "SELECT temp_bytes FROM pg_stat_database WHERE datname = 'postgres'")
	start=$(date +%s.%N)
	psql_c "$c" "$sql" >/dev/null
	end=$(date +%s.%N)
	sleep 0.5
	t1=$(psql_c "$c" "SELECT temp_bytes FROM pg_stat_database WHERE datname = 'postgres'")
	awk -v s="$start" -v e="$end" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.4f %.0f\n", e - s, (b - a) / 1048576}'
}
sort_run() { timed "$1" "SELECT count(*) FROM (SELECT v FROM s ORDER BY v OFFSET 0) x"; }
hash_run() { timed "$1" "SET enable_mergejoin = off; SET enable_nestloop = off; SELECT count(*), sum(length(a.v || b.v)) FROM s a JOIN h b ON a.k = b.k"; }

declare -A results temp
for case in sort hash; do
	for c in stock byok; do results[$case.$c]=""; done
	${case}_run stock >/dev/null; ${case}_run byok >/dev/null	# warm-up
	for ((i = 1; i <= pairs; i++)); do
		if ((i % 2)); then order="stock byok"; else order="byok stock"; fi
		for c in $order; do
			read -r t mb < <(${case}_run $c)
			results[$case.$c]+="$t "
			temp[$case]=$mb
			echo "  $case $c run $i: $t s ($mb MB of temporary files)"
		done
	done
done

echo
printf '%-44s %10s %10s %7s %8s %s\n' case "stock s" "byok s" ratio target result
for case in sort hash; do
	s=$(echo "${results[$case.stock]}" | tr ' ' '\n' | grep . | median)
	b=$(echo "${results[$case.byok]}" | tr ' ' '\n' | grep . | median)
	r=$(awk -v s="$s" -v b="$b" 'BEGIN {if (b > 0) printf "%.3f", s / b; else print "nan"}')
	# the median of the per-pair ratios: drift over the run hits both runs of a pair
	pr=$(paste <(echo "${results[$case.stock]}" | tr ' ' '\n' | grep .) <(echo "${results[$case.byok]}" | tr ' ' '\n' | grep .) |
		awk '{ printf "%.4f\n", $1 / $2 }' | median)
	ok=$(awk -v r="$r" 'BEGIN {print (r >= 0.95) ? "PASS" : "FAIL"}')
	label=$([[ $case == sort ]] && echo "sort past work_mem ($rows rows, ${temp[$case]} MB)" ||
		echo "hash join past work_mem (${temp[$case]} MB)")
	printf '%-44s %10s %10s %7s %8s %s\n' "$label" "$s" "$b" "$r" ">=0.95" "$ok"
	echo "RESULT spill_$case stock_s=$s byok_s=$b ratio=$r pair_ratio=$pr target=0.95 $ok"
done
echo "(medians of $pairs interleaved pairs; ratio = stock time / byok time, i.e. byok speed relative to stock)"
