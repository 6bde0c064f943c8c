#!/bin/sh
# SPDX-License-Identifier: MIT
#
# A zram swap device for tests that need the kernel to be able to swap anonymous
# memory (MADV_PAGEOUT, a memory cgroup limit below a process's anonymous memory).
#
#   tests/zram-swap.sh up SIZE_MIB   set up (or find already set up) our device and
#                                    print it, e.g. /dev/zram1
#   tests/zram-swap.sh down          swapoff, reset and (if we added it) remove it
#
# Both are idempotent. The device we set up is recorded in $DD_ZRAM_STATE (default
# /run/dedupd-test-zram); only that device is ever reset or removed. A fresh device
# comes from /sys/class/zram-control/hot_add; without hot_add, zram0 is used if
# nobody uses it (not initialised, no swap, no mount, no holder); a device in use
# by something else is never touched. swapon uses priority 32767 so that our device
# is used before any other swap. Needs root and util-linux (mkswap, swapon, flock).
set -eu

STATE=${DD_ZRAM_STATE:-/run/dedupd-test-zram}
CTL=/sys/class/zram-control

die() {
	echo "zram-swap.sh: $*" >&2
	exit 1
}

usage() {
	echo "usage: $0 up SIZE_MIB | down" >&2
	exit 2
}

is_swap() { # dev
	awk -v d="/dev/$1" '$1 == d { f = 1 } END { exit !f }' /proc/swaps
}

# Mounted, or held by another block device (dm, md, ...).
mounted_or_held() { # dev
	awk -v d="/dev/$1" '$1 == d { f = 1 } END { exit !f }' /proc/mounts && return 0
	[ -n "$(ls -A "/sys/block/$1/holders" 2>/dev/null)" ]
}

# A device something uses: initialised, swap, mounted or held.
in_use() { # dev
	[ "$(cat "/sys/block/$1/initstate" 2>/dev/null || echo 1)" != 0 ] && return 0
	is_swap "$1" || mounted_or_held "$1"
}

# The device node; devtmpfs makes it, but give it a moment, then make it ourselves.
wait_node() { # dev
	i=0
	while [ ! -b "/dev/$1" ] && [ $i -lt 20 ]; do
		sleep 0.1
		i=$((i + 1))
	done
	if [ ! -b "/dev/$1" ]; then
		majmin=$(cat "/sys/block/$1/dev")
		mknod "/dev/$1" b "${majmin%%:*}" "${majmin##*:}"
	fi
}

# Tear down the recorded device; quiet when there is none.
teardown() {
	[ -f "$STATE" ] || return 0
	read -r dev how <"$STATE" || { rm -f "$STATE"; return 0; }
	if [ ! -d "/sys/block/$dev" ]; then
		rm -f "$STATE"
		return 0
	fi
	if is_swap "$dev"; then
		swapoff "/dev/$dev" || die "swapoff /dev/$dev failed; leaving it (state in $STATE)"
	fi
	mounted_or_held "$dev" &&
		die "/dev/$dev is in use by something else (mounted or held); not touching it"
	echo 1 >"/sys/block/$dev/reset"
	if [ "$how" = added ]; then
		echo "${dev#zram}" >"$CTL/hot_remove" || die "hot_remove of $dev failed"
	fi
	rm -f "$STATE"
	echo "/dev/$dev"
}

up() { # size_mib
	if [ -f "$STATE" ]; then
		read -r dev how <"$STATE" || dev=
		if [ -n "$dev" ] && is_swap "$dev"; then
			echo "/dev/$dev"
			return 0
		fi
		teardown >/dev/null # half set up by a run that died: start again
	fi
	if [ -w "$CTL/hot_add" ]; then
		dev="zram$(cat "$CTL/hot_add")"
		how=added
	elif [ -d /sys/block/zram0 ] && ! in_use zram0; then
		dev=zram0
		how=reused
	else
		die "no zram device to use: no $CTL/hot_add, and zram0 is absent or in use"
	fi
	mkdir -p "$(dirname "$STATE")"
	echo "$dev $how" >"$STATE" # first, so that down cleans up a half set-up device
	wait_node "$dev"
	echo "$1M" >"/sys/block/$dev/disksize" || die "cannot size /dev/$dev to $1 MiB"
	mkswap -L dd-test-zram "/dev/$dev" >/dev/null || die "mkswap /dev/$dev failed"
	swapon -p 32767 "/dev/$dev" || die "swapon /dev/$dev failed"
	echo "/dev/$dev"
}

[ $# -ge 1 ] || usage
[ "$(id -u)" = 0 ] || die "needs root"
[ -d /sys/block/zram0 ] || [ -d "$CTL" ] || die "no zram in this kernel (CONFIG_ZRAM)"
mkdir -p "$(dirname "$STATE")"
exec 9>"$STATE.lock"
flock -w 30 9 || die "another zram-swap.sh holds $STATE.lock"

case $1 in
up)
	[ $# -eq 2 ] || usage
	case $2 in '' | *[!0-9]*) usage ;; esac
	[ "$2" -gt 0 ] || usage
	up "$2"
	;;
down)
	[ $# -eq 1 ] || usage
	teardown
	;;
*) usage ;;
esac
