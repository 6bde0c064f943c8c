#!/bin/sh
# Runs the libFuzzer harnesses built by `make fuzz-build` (see tests/fuzz/README.md).
#
#   run.sh fuzz NAME...      fuzz each harness for $FUZZ_SECONDS seconds, one at a
#                            time, and print a table: executions, new coverage
#                            features, crashes. New corpus entries go to
#                            $FUZZ_BUILD/corpus/NAME (scratch), crash inputs to
#                            $FUZZ_BUILD/artifacts/NAME; the committed corpus is
#                            only read. Exit 1 if any harness crashed.
#   run.sh regress NAME...   run every committed input (tests/fuzz/corpus/NAME and
#                            tests/fuzz/regress/NAME) once through its harness.
#                            Exit 1 if any input fails.
#
# One fuzzer process at a time, in process (libFuzzer's default: no -jobs or
# -workers, which would only add a supervising process).
set -u
cd "$(dirname "$0")/../.." || exit 2
mode=${1:-}
[ $# -gt 0 ] && shift
B=${FUZZ_BUILD:-build-fuzz}
S=${FUZZ_SECONDS:-30}
here=tests/fuzz
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

# Longest input per harness: a REMAP batch of 1024 entries is 24 KiB; maps
# lines longer than the parsers' 4 KiB buffers; a few HTTP/QMP replies.
max_len() {
	case $1 in
	proto) echo 65536 ;;
	procmaps) echo 12288 ;;
	qmp | http) echo 16384 ;;
	*) echo 4096 ;;
	esac
}

# "12345" from the last libFuzzer status line with "$2: 12345" in log $1.
last_stat() {
	grep -Eo "$2: [0-9]+" "$1" | tail -n 1 | sed 's/.*: //'
}

fuzz_one() {
	n=$1
	bin=$B/fuzz_$n
	log=$B/logs/$n.log
	mkdir -p "$B/corpus/$n" "$B/artifacts/$n" "$B/logs"
	touch "$B/logs/$n.start"
	set -- -max_total_time="$S" -timeout=10 -rss_limit_mb=2048 -max_len="$(max_len "$n")" \
		-print_final_stats=1 -artifact_prefix="$B/artifacts/$n/"
	[ -f "$here/dict/$n.dict" ] && set -- "$@" -dict="$here/dict/$n.dict"
	set -- "$@" "$B/corpus/$n" "$here/corpus/$n"
	[ -d "$here/regress/$n" ] && set -- "$@" "$here/regress/$n"
	"$bin" "$@" >"$log" 2>&1
	rc=$?
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
	[ -n "$execs" ] || execs=$(grep -Eo '^#[0-9]+' "$log" | tail -n 1 | tr -d '#')
	ft0=$(grep -E 'INITED' "$log" | grep -Eo 'ft: [0-9]+' | head -n 1 | sed 's/.*: //')
	ft1=$(last_stat "$log" ft)
	crashes=$(find "$B/artifacts/$n" -type f -newer "$B/logs/$n.start" \
		\( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) |
		wc -l)
	[ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ] && crashes=1
	printf '%-12s %12s %12s %8s\n' "$n" "${execs:-?}" "$(( ${ft1:-0} - ${ft0:-0} ))" "$crashes"
	if [ "$crashes" -ne 0 ]; then
		failed="$failed $n"
		echo "    see $log and $B/artifacts/$n/" >&2
	fi
}

regress_one() {
	n=$1
	files=$(find "$here/corpus/$n" "$here/regress/$n" -type f 2>/dev/null | sort)
	count=$(echo "$files" | grep -c . || true)
	[ "$count" -gt 0 ] || { printf '%-12s %8s\n' "$n" 0; return; }
	mkdir -p "$B/logs"
	t0=$(date +%s%N)
	# shellcheck disable=SC2086 # one argument per file: the names have no blanks
	"$B/fuzz_$n" -timeout=10 -rss_limit_mb=2048 $files >"$B/logs/$n.regress.log" 2>&1
	rc=$?
	ms=$(( ($(date +%s%N) - t0) / 1000000 ))
	if [ "$rc" -eq 0 ]; then
		printf '%-12s %8s %8s\n' "$n" "$count" "$ms"
	else
		printf '%-12s %8s %8s  FAILED: see %s\n' "$n" "$count" "$ms" "$B/logs/$n.regress.log"
		failed="$failed $n"
	fi
}

failed=""
case $mode in
fuzz)
	printf '%-12s %12s %12s %8s\n' harness executions new-features crashes
	for n in "$@"; do fuzz_one "$n"; done
	;;
regress)
	start=$(date +%s)
	printf '%-12s %8s %8s\n' harness inputs ms
	for n in "$@"; do regress_one "$n"; done
	echo "fuzz-regress: $(( $(date +%s) - start )) s"
	;;
*)
	echo "usage: $0 fuzz|regress NAME..." >&2
	exit 2
	;;
esac
if [ -n "$failed" ]; then
	echo "fuzz: failed:$failed" >&2
	exit 1
fi
exit 0
