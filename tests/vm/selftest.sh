#!/bin/sh
# tests/vm/selftest.sh: checks the VM harness end to end with one guest: boot,
# the workload's checksums (guest against host), a balloon inflation to half the
# RAM and back, stop. Prints one line a step, the measured figures, then
# "selftest: PASS" (exit 0) or "selftest: FAIL" (exit 1), and a closing
# "N passed, N failed" line. "selftest: SKIP <reason>" (exit 77) when the harness
# cannot be set up here (not root and nothing installed, archive unreachable).
#
# Env: SELFTEST_MIB (guest RAM, default 256), SELFTEST_FILL (MiB of workload,
# default 32), plus every DEDUP_VM_* variable of vm.sh.
set -u

cd "$(dirname "$0")/../.." || exit 2
VM=tests/vm/vm.sh
NAME=selftest-$$
MIB=${SELFTEST_MIB:-256}
FILL=${SELFTEST_FILL:-32}
SEED=$$
passed=0 failed=0

ok() {
	passed=$((passed + 1))
	echo "ok   $*"
}

bad() {
	failed=$((failed + 1))
	echo "FAIL $*"
}

now_ms() {
	echo $(($(date +%s%N) / 1000000))
}

finish() {
	$VM stop "$NAME" >/dev/null 2>&1
	echo
	if [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]; then
		rm -f "${DEDUP_VM_RUN:-build/vm}/$NAME.console.log" "${DEDUP_VM_RUN:-build/vm}/$NAME.qemu.log" \
			"${DEDUP_VM_RUN:-build/vm}/$NAME.keeper.log"
		echo "selftest: PASS"
	else
		echo "selftest: FAIL (console log kept in ${DEDUP_VM_RUN:-build/vm}/$NAME.console.log)"
	fi
	echo "$passed passed, $failed failed"
	[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
	exit $?
}

# balloon_wait TARGET_BYTES SLACK_BYTES TIMEOUT_S: wait until query-balloon's
# actual is within SLACK of TARGET; prints the last actual; status 1 on time-out.
balloon_wait() {
	end=$(($(now_ms) + $3 * 1000))
	while :; do
		a=$($VM qmp "$NAME" '{"execute":"query-balloon"}' | sed -n 's/.*"actual": *\([0-9]*\).*/\1/p')
		a=${a:-0}
		d=$((a - $1))
		[ "$d" -lt 0 ] && d=$((-d))
		if [ "$d" -le "$2" ]; then
			echo "$a"
			return 0
		fi
		if [ "$(now_ms)" -ge "$end" ]; then
			echo "$a"
			return 1
		fi
		sleep 0.1
	done
}

trap finish INT TERM

if ! out=$($VM fetch 2>&1) || ! out=$($VM initramfs 2>&1); then
	echo "$out" | tail -n 5
	echo "selftest: SKIP the VM harness cannot be set up here: $(echo "$out" | tail -n 1)"
	exit 77
fi
ok "fetch + initramfs (cache ${DEDUP_VM_CACHE:-/var/tmp/dedupd-vm})"

t0=$(now_ms)
if ready=$($VM boot "$NAME" -m "$MIB" 2>&1); then
	boot_ms=$(($(now_ms) - t0))
	case $ready in
	*"DEDUP-VM READY"*balloon=yes*) ok "boot $NAME -m $MIB in $boot_ms ms, virtio_balloon bound" ;;
	*) bad "boot: guest ready but balloon not bound: $ready" ;;
	esac
else
	bad "boot: $ready"
	finish
fi
pid=$($VM pid "$NAME") && ok "pid $pid" || bad "pid"
rss0=$($VM mem "$NAME" | tr '\n' ' ')

# The workload: the guest's checksum must equal the host's, before and after.
want=$($VM expect "$FILL" "$SEED" | sed -n 's/^DD-EXPECT //p')
t0=$(now_ms)
got=$($VM run "$NAME" "dd-work fill $FILL $SEED" | sed -n 's/^DD-EXPECT //p')
fill_ms=$(($(now_ms) - t0))
if [ -n "$want" ] && [ "$got" = "$want" ]; then
	ok "dd-work fill $FILL $SEED in $fill_ms ms: DD-EXPECT $got (host agrees)"
else
	bad "dd-work fill: guest DD-EXPECT '$got', host '$want'"
fi
sum=$($VM run "$NAME" "dd-work sum" | sed -n 's/^DD-SUM //p')
[ "$sum" = "$want" ] && ok "dd-work sum = $sum" || bad "dd-work sum '$sum' != '$want'"
rss1=$($VM mem "$NAME" | tr '\n' ' ')

# query-balloon, then inflate to half the RAM: the guest driver must give pages.
full=$((MIB * 1048576))
half=$((full / 2))
a=$($VM qmp "$NAME" '{"execute":"query-balloon"}')
case $a in
*"\"actual\": $full"*) ok "query-balloon: $a" ;;
*) bad "query-balloon: $a (want actual $full)" ;;
esac
t0=$(now_ms)
if $VM qmp "$NAME" "{\"execute\":\"balloon\",\"arguments\":{\"value\":$half}}" >/dev/null; then
	if a=$(balloon_wait "$half" 4194304 60); then
		infl_ms=$(($(now_ms) - t0))
		ok "balloon to $((half >> 20)) MiB: actual $((a >> 20)) MiB after $infl_ms ms"
	else
		bad "balloon to $half: actual still $a after 60 s"
	fi
else
	bad "balloon command refused"
fi
rss2=$($VM mem "$NAME" | tr '\n' ' ')
$VM run "$NAME" "dd-work check" >/dev/null && ok "dd-work check after inflation" ||
	bad "dd-work check after inflation: $($VM run "$NAME" 'dd-work check')"

# Rewrite a quarter of every file in place: the new sum is known on the host.
want=$($VM expect "$FILL" "$SEED" 25 | sed -n 's/^DD-EXPECT //p')
got=$($VM run "$NAME" "dd-work rewrite 25" | sed -n 's/^DD-EXPECT //p')
[ -n "$want" ] && [ "$got" = "$want" ] && ok "dd-work rewrite 25: DD-EXPECT $got (host agrees)" ||
	bad "dd-work rewrite 25: guest '$got', host '$want'"
$VM run "$NAME" "dd-work check" >/dev/null && ok "dd-work check after rewrite" ||
	bad "dd-work check after rewrite"

t0=$(now_ms)
$VM qmp "$NAME" "{\"execute\":\"balloon\",\"arguments\":{\"value\":$full}}" >/dev/null
if a=$(balloon_wait "$full" 0 60); then
	defl_ms=$(($(now_ms) - t0))
	ok "balloon back to $MIB MiB after $defl_ms ms"
else
	bad "deflate: actual $a after 60 s"
fi
$VM run "$NAME" "dd-work check" >/dev/null && ok "dd-work check after deflation" ||
	bad "dd-work check after deflation"

t0=$(now_ms)
$VM stop "$NAME" >/dev/null 2>&1
stop_ms=$(($(now_ms) - t0))
if [ -n "${pid:-}" ] && [ -d "/proc/$pid" ]; then
	bad "stop: QEMU $pid still there"
else
	ok "stop in $stop_ms ms"
fi

echo
echo "figures: boot ${boot_ms:-?} ms, fill $FILL MiB ${fill_ms:-?} ms," \
	"inflate to $((MIB / 2)) MiB ${infl_ms:-?} ms, deflate ${defl_ms:-?} ms, stop ${stop_ms:-?} ms"
echo "memory after boot:      $rss0"
echo "memory after fill:      $rss1"
echo "memory after inflation: $rss2"
finish
