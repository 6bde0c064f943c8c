#!/bin/sh
# Runs every test binary under $BUILD/tests and prints one summary line:
# "N passed, N failed" (suites counted by their Check totals).
set -u
BUILD=${BUILD:-build}
export BUILD
cd "$(dirname "$0")/.." || exit 2
mkdir -p "$BUILD/test-sockets" "$BUILD/test-logs"
passed=0 failed=0 suites_failed=""
for t in "$BUILD"/tests/check_*; do
	[ -x "$t" ] || continue
	name=$(basename "$t")
	log="$BUILD/test-logs/$name.log"
	start=$(date +%s)
	if [ -n "${SAN:-}" ]; then
		ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:verify_asan_link_order=0} \
		UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
			"$t" >"$log" 2>&1
	else
		"$t" >"$log" 2>&1
	fi
	rc=$?
	secs=$(( $(date +%s) - start ))
	line=$(grep -E '^[0-9]+%: Checks: ' "$log" | tail -n 1)
	checks=$(echo "$line" | sed -n 's/.*Checks: \([0-9]*\).*/\1/p')
	fails=$(echo "$line" | sed -n 's/.*Failures: \([0-9]*\).*/\1/p')
	errs=$(echo "$line" | sed -n 's/.*Errors: \([0-9]*\).*/\1/p')
	checks=${checks:-0} fails=${fails:-0} errs=${errs:-0}
	bad=$((fails + errs))
	if [ "$rc" -ne 0 ] && [ "$bad" -eq 0 ]; then bad=1; fi
	ok=$((checks - fails - errs))
	[ "$ok" -lt 0 ] && ok=0
	passed=$((passed + ok))
	failed=$((failed + bad))
	if [ "$bad" -ne 0 ]; then
		suites_failed="$suites_failed $name"
		echo "FAIL $name (${secs}s): $line"
		grep -E ':[EF]:|SKIP|ERROR|runtime error|AddressSanitizer' "$log" | head -n 20
	else
		echo "ok   $name (${secs}s): $line"
		grep -E '^SKIP' "$log" | head -n 5
	fi
done
echo
[ -n "$suites_failed" ] && echo "failed suites:$suites_failed (logs in $BUILD/test-logs/)"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
