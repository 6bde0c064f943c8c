#!/bin/sh
# `make run`: start dedupd in the foreground on a socket under $BUILD, start a
# demo workload (4 processes x 64 MiB: 50 % pages duplicated across them, ~10 %
# zero, the rest unique), let dedupd converge, print before/after figures from
# the kernel's accounting and from dedupctl, then stop everything cleanly.
# Knobs: DEMO_PROCS, DEMO_MIB, DEMO_DUP, DEMO_ZERO.
set -eu
BUILD=${BUILD:-build}
PROCS=${DEMO_PROCS:-4}
MIB=${DEMO_MIB:-64}
DIR=$BUILD/demo
SOCK=$DIR/dedupd.sock
mkdir -p "$DIR"
rm -f "$DIR"/*.log

if [ "$(id -u)" != 0 ]; then
	echo "make run: dedupd needs root (userfaultfd, pagemap, process_vm_readv of other processes)" >&2
	exit 1
fi

daemon_pid="" wl_pid=""
cleanup() {
	[ -n "$wl_pid" ] && kill "$wl_pid" 2>/dev/null || true
	[ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null || true
	wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

kib() { # sum of a smaps_rollup field (kB) over pids
	field=$1; shift
	t=0
	for p in "$@"; do
		v=$(awk -v f="$field:" '$1 == f { print $2 }' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
		t=$((t + ${v:-0}))
	done
	echo "$t"
}
# MemAvailable plus the pages on the per-CPU free lists (/proc/zoneinfo
# "count:"), which freed pages sit on for a while before MemAvailable sees them.
avail() {
	a=$(awk '$1 == "MemAvailable:" { print $2 }' /proc/meminfo)
	p=$(awk '$1 == "count:" { n += $2 } END { print n * 4 }' /proc/zoneinfo)
	echo $((a + p))
}
stat() { "$BUILD/dedupctl" -s "$SOCK" stats --json | sed -n "s/.*\"$1\":\\([-0-9]*\\).*/\\1/p"; }

echo "== starting dedupd (log: $DIR/dedupd.log)"
"$BUILD/dedupd" --foreground --socket "$SOCK" --pages-to-scan 65536 --sleep-millisecs 10 \
	>"$DIR/dedupd.log" 2>&1 &
daemon_pid=$!
i=0
until "$BUILD/dedupctl" -s "$SOCK" status >/dev/null 2>&1; do
	i=$((i + 1)); [ $i -gt 100 ] && { echo "dedupd did not start:"; cat "$DIR/dedupd.log"; exit 1; }
	sleep 0.05
done

avail0=$(avail)
echo "== starting the workload: $PROCS processes x $MIB MiB (${DEMO_DUP:-50}% duplicate, ${DEMO_ZERO:-10}% zero)"
DEDUPD_SOCKET=$SOCK "$BUILD/tools/dd-workload" --procs "$PROCS" --mib "$MIB" --hold \
	--dup "${DEMO_DUP:-50}" --zero "${DEMO_ZERO:-10}" >"$DIR/workload.out" 2>"$DIR/workload.log" &
wl_pid=$!
count() { n=$(grep -c "$1" "$DIR/workload.out" 2>/dev/null) || true; echo "${n:-0}"; }
waitfor() {
	i=0
	while [ "$(count "$1")" -lt "$PROCS" ]; do
		i=$((i + 1)); [ $i -gt 1200 ] && { echo "workload did not start:"; cat "$DIR/workload.log"; exit 1; }
		sleep 0.05
	done
}
waitfor FILLED
pids=$(awk '/FILLED/ { print $2 }' "$DIR/workload.out")
anon0=$(kib Anonymous $pids); pss0=$(kib Pss $pids)
avail1=$(avail)
t0=$(date +%s.%N)
# shellcheck disable=SC2086
kill -USR1 $pids
waitfor READY

echo "== waiting for dedupd to converge"
last=-1 same=0
while [ $same -lt 3 ]; do
	sleep 0.5
	now=$(stat pages_sharing)
	z=$(stat zero_pages)
	cur="$now/$z"
	if [ "$cur" = "$last" ] && [ "${now:-0}" -gt 0 ]; then same=$((same + 1)); else same=0; fi
	last=$cur
done
t1=$(date +%s.%N)
anon1=$(kib Anonymous $pids); pss1=$(kib Pss $pids)
avail2=$(avail)

echo
"$BUILD/dedupctl" -s "$SOCK" stats
echo
printf '%-34s %12s %12s %12s\n' "kernel accounting (workload)" "before" "after" "saved"
printf '%-34s %9d MiB %9d MiB %9d MiB\n' "anonymous memory (smaps_rollup)" $((anon0/1024)) $((anon1/1024)) $(((anon0-anon1)/1024))
printf '%-34s %9d MiB %9d MiB %9d MiB\n' "proportional set size (Pss)" $((pss0/1024)) $((pss1/1024)) $(((pss0-pss1)/1024))
echo "(Pss charges each shared page to its sharers in equal parts; dedupd's store"
echo " pages that no workload page maps right now are not in it, but are in MemAvailable.)"
printf '%-34s %9d MiB %9d MiB %9d MiB\n' "host MemAvailable + per-CPU lists" $((avail1/1024)) $((avail2/1024)) $(((avail2-avail1)/1024))
net=$(stat bytes_saved_net)
echo
echo "converged in $(echo "$t1 - $t0" | bc) s (including 1.5 s of settling checks);"
echo "net saving reported by dedupd (after its own store, metadata and VMA cost): $((net / 1048576)) MiB"
echo "of $((PROCS * MIB)) MiB registered."

echo
echo "== stopping the workload (each process verifies every byte it wrote)"
kill -TERM "$wl_pid"
if wait "$wl_pid"; then echo "workload: all pages verified"; else echo "workload: VERIFICATION FAILED"; cat "$DIR/workload.log"; exit 1; fi
wl_pid=""
kill -TERM "$daemon_pid"
wait "$daemon_pid" || true
daemon_pid=""
echo "== dedupd stopped"
