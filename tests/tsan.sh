#!/bin/sh
# ThreadSanitizer run over the concurrent parts (`make tsan`, which builds first).
#
#   $TSAN_BUILD/        clang -fsanitize=thread: dedupd, check_hash, check_store
#   $TSAN_BUILD/plain/  no sanitizer: the client side of the integration suites
#                       (check_merge, check_reclaim, check_pstate, libdedup,
#                       dd-workload, dedupctl)
#   $TSAN_BUILD/mixed/  links: the instrumented dedupd, everything else plain;
#                       the integration suites run with BUILD=$TSAN_BUILD/mixed
#
# Unit suites: the hash table and the store, used by threads in the test process.
# Integration suites: the real daemon (scan threads, fault thread, reclaim thread,
# pressure module, main loop), driven by uninstrumented clients. Clients are not
# instrumented because TSan models the agent's REMAP mmap(MAP_FIXED) as a write of
# the whole page by the agent thread, so every later read of a merged page by the
# application is "a race", and because an instrumented client's writers run ~20x
# slower under freeze, which times the race test out.
#
# Every instrumented process (test, forked test child, daemon, also the daemons
# whose logs a test deletes) writes its reports to $REPORTS/tsan.PID (TSAN_OPTIONS
# log_path). The run fails on any report there or in a test or daemon log, and on
# a suite that did not complete; failed checks are listed, and fail the run only
# with TSAN_STRICT=1. One summary line at the end. Suppressions: tests/tsan.supp
# (liburcu only). TSAN_JOBS=1: the integration suites one at a time.
set -u
cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)
TSAN_BUILD=${TSAN_BUILD:-build-tsan}
PLAIN=$TSAN_BUILD/plain
MIXED=$TSAN_BUILD/mixed
case $TSAN_BUILD in
/*) REPORTS=$TSAN_BUILD/tsan-reports ;;
*) REPORTS=$ROOT/$TSAN_BUILD/tsan-reports ;;
esac
LOGS=$TSAN_BUILD/tsan-logs
t0=$(date +%s)

rm -rf "$REPORTS" "$LOGS" "$TSAN_BUILD/test-sockets" "$MIXED"
mkdir -p "$REPORTS" "$LOGS" "$MIXED/test-sockets"
chmod 1777 "$REPORTS" # check_pstate runs one daemon as nobody
ln -s ../dedupd "$MIXED/dedupd"
for f in dedupctl libdedup.so libdedup.so.0 libdedup-preload.so tools; do
	ln -s "../plain/$f" "$MIXED/$f"
done

TSAN_OPTIONS="suppressions=$ROOT/tests/tsan.supp log_path=$REPORTS/tsan history_size=4"
TSAN_OPTIONS="$TSAN_OPTIONS second_deadlock_stack=1 halt_on_error=0 ${TSAN_EXTRA_OPTIONS:-}"
export TSAN_OPTIONS

# run_suite NAME BUILD BINARY [VAR=value...]: one Check binary; its output goes to
# $LOGS/NAME.log, its verdict (one line, then failures) to $LOGS/NAME.result.
run_suite() {
	name=$1 build=$2 bin=$3
	shift 3
	start=$(date +%s)
	env BUILD="$build" CK_TIMEOUT_MULTIPLIER="${CK_TIMEOUT_MULTIPLIER:-2}" "$@" "$bin" \
		>"$LOGS/$name.log" 2>&1
	rc=$?
	line=$(grep -E '^[0-9]+%: Checks: ' "$LOGS/$name.log" | tail -n 1)
	if [ "$rc" -ne 0 ] || [ -z "$line" ]; then
		echo "FAIL $name ($(($(date +%s) - start))s): ${line:-exit status $rc}"
		grep -E ':[EFS]:' "$LOGS/$name.log" | head -n 10 | sed 's/^/     /'
	else
		echo "ok   $name ($(($(date +%s) - start))s): $line"
	fi >"$LOGS/$name.result"
}

# The unit suites load the CPU (threads hammering one table): first, one at a
# time. The integration suites mostly wait for the daemon, each with its own
# socket and cgroup: by default in two lanes, check_merge (which counts merges per
# second) alone in one; TSAN_JOBS=1: all one after the other.
run_suite hash "$TSAN_BUILD" "$TSAN_BUILD/tests/check_hash" CK_RUN_CASE=table
run_suite store "$TSAN_BUILD" "$TSAN_BUILD/tests/check_store"
lane2() {
	run_suite reclaim "$MIXED" "$PLAIN/tests/check_reclaim" CK_RUN_CASE=daemon
	run_suite pstate "$MIXED" "$PLAIN/tests/check_pstate"
}
if [ "${TSAN_JOBS:-2}" -gt 1 ]; then
	lane2 &
	run_suite merge "$MIXED" "$PLAIN/tests/check_merge"
	wait
else
	run_suite merge "$MIXED" "$PLAIN/tests/check_merge"
	lane2
fi
failed="" broken=""
for name in hash store merge reclaim pstate; do
	cat "$LOGS/$name.result"
	grep -q '^FAIL' "$LOGS/$name.result" && failed="$failed $name"
	grep -qE '^[0-9]+%: Checks: [1-9]' "$LOGS/$name.log" || broken="$broken $name"
done

# One line per distinct report: its kind and, for each stack, the first frame
# in our sources (function file:line).
files=$(ls "$REPORTS"/tsan.* "$LOGS"/*.log "$MIXED"/test-sockets/*.log \
	"$TSAN_BUILD"/test-sockets/*.log 2>/dev/null)
nrep=0
[ -n "$files" ] && nrep=$(cat $files | grep -cE '^(==[0-9]+==)?(WARNING|ERROR|FATAL): ThreadSanitizer')
if [ "$nrep" -gt 0 ]; then
	echo
	echo "TSan reports (count, kind, first frame of ours in each stack; full text in $REPORTS/):"
	cat $files | awk -v root="$ROOT/" '
	/^(==[0-9]+==)?(WARNING|ERROR|FATAL): ThreadSanitizer/ {
		if (inrep) n[key]++
		key = $0; sub(/^.*ThreadSanitizer:? /, "", key); sub(/ \(pid=[0-9]+\).*/, "", key); sub(/ 0x.*/, "", key)
		want = 1; inrep = 1; next
	}
	!inrep { next }
	/^  (Previous )?([Aa]tomic )?([Rr]ead|[Ww]rite) of size/ { want = 1; next }
	/^  [A-Z]/ { want = 0; next }
	/^    #[0-9]+ / && want {
		f = $3; sub(root, "", f); sub(/:[0-9]+$/, "", f)
		if (f ~ /^(dedupd|scanner|hash|conf|bpf|tests)\//) {
			key = key " | " $2 " " f; want = 0
		}
		next
	}
	/^SUMMARY: ThreadSanitizer/ { n[key]++; inrep = 0 }
	END { if (inrep) n[key]++; for (k in n) printf "%5d  %s\n", n[k], k }' | sort -rn
fi

# Verdict: any TSan report fails the run, and so does a suite that did not run to
# its end. A failed check alone does not (TSAN_STRICT=1: it does): under TSan the
# daemon is slower, and some checks count merges per second.
nprocs=$(ls "$REPORTS" | wc -l)
summary="tsan: $nrep report(s) from $nprocs process(es); failed suites:${failed:- none}"
summary="$summary; $(($(date +%s) - t0)) s"
echo
if [ "$nrep" -gt 0 ] || [ -n "$broken" ] || { [ -n "$failed" ] && [ "${TSAN_STRICT:-0}" = 1 ]; }; then
	[ -n "$broken" ] && echo "suites that did not complete:$broken (logs in $LOGS/)"
	echo "$summary: FAILED"
	exit 1
fi
echo "$summary: clean"
