#!/bin/sh
# `make bench`: dedupd against kernel KSM on workloads W1-W4 in one run (issue 3).
# The work is done by $BUILD/tools/dd-bench (tests/tools/dd-bench.c), which
# prints the table and writes $BUILD/bench/results.json. This wrapper only makes
# sure that, however dd-bench ends (even SIGKILL), the KSM knobs and
# vm.max_map_count it changed are written back (dd-bench lists them in
# $BUILD/bench/restore.txt while they differ) and no process it started is
# left behind ($BUILD/bench/pids).
# Knobs (environment): DEDUPD_ARGS, BENCH_ONLY=W1,W2,W3,W4,S, BENCH_MAX_MAP_COUNT,
# BENCH_W4_WARMUP_S, BENCH_REPEAT; see the top of tests/tools/dd-bench.c.
set -u
BUILD=${BUILD:-build}
OUT=$BUILD/bench
cd "$(dirname "$0")/../.." || exit 2

if [ "$(id -u)" != 0 ]; then
	echo "make bench: needs root (KSM knobs in /sys/kernel/mm/ksm, userfaultfd, /proc of other processes)" >&2
	exit 1
fi
mkdir -p "$OUT"
rm -f "$OUT"/*.log

bench_pid=""
cleanup() {
	if [ -n "$bench_pid" ] && kill -0 "$bench_pid" 2>/dev/null; then
		kill -TERM "$bench_pid" 2>/dev/null
		i=0
		while kill -0 "$bench_pid" 2>/dev/null && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
		kill -KILL "$bench_pid" 2>/dev/null
	fi
	if [ -s "$OUT/pids" ]; then
		while read -r pid comm; do
			[ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ] && kill -TERM "$pid" 2>/dev/null
		done <"$OUT/pids"
		sleep 1
		while read -r pid comm; do
			[ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ] && kill -KILL "$pid" 2>/dev/null
		done <"$OUT/pids"
		: >"$OUT/pids"
	fi
	if [ -s "$OUT/restore.txt" ]; then
		echo 0 >/sys/kernel/mm/ksm/run 2>/dev/null
		while read -r path value; do
			printf '%s\n' "$value" >"$path" && echo "bench.sh: restored $path to $value" >&2
		done <"$OUT/restore.txt"
		rm -f "$OUT/restore.txt"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# In the background so that a signal to this shell reaches the trap at once
# (the trap forwards SIGTERM to dd-bench, which cleans up after itself).
"$BUILD/tools/dd-bench" "$BUILD" "$OUT" &
bench_pid=$!
wait "$bench_pid"
rc=$?
bench_pid=""
exit $rc
