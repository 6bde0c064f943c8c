#!/bin/sh
# tests/vm/vm.sh: boots small real QEMU guests (TCG, no KVM needed) for tests and
# demos of dedupd. Run `tests/vm/vm.sh --help` for the commands; README.md beside
# this file has the details and the measured figures.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

usage() {
	cat <<EOF
usage: tests/vm/vm.sh COMMAND [ARGS]

Boots small QEMU guests (x86-64, TCG, a Debian cloud kernel and a busybox
initramfs) whose RAM QEMU marks MADV_MERGEABLE, drives them over their serial
console and QMP, and stops them.

Commands:
  fetch                 install qemu-system-x86, busybox-static and socat with apt-get
                        (only those missing), download the Debian cloud kernel
                        (linux-image-cloud-amd64's current linux-image-*-cloud-amd64)
                        and keep its vmlinuz and the modules the guest needs
                        (virtio_pci, virtio_balloon and their dependencies, unless
                        built in) in the cache. Nothing is downloaded when the cache
                        already has a kernel.
  initramfs             build \$CACHE/initramfs.cpio.gz (busybox-static, the modules,
                        guest/init, guest/dd-work); rebuilt only when an input changed.
  boot NAME [-m MIB] [-smp N] [-t SECS] [KEY=VALUE...]
                        start guest NAME in the background (fetch and initramfs run
                        first if needed) and wait until its console says
                        "DEDUP-VM READY" (default -m 256, -smp 1, -t 120). KEY=VALUE
                        pairs are put in QEMU's environment (e.g. DEDUPD_SOCKET=...).
                        Prints the READY line and the boot time.
  run NAME [-t SECS] COMMAND
                        run COMMAND with sh -c in the guest (stdin /dev/null), print
                        its output (stdout and stderr) on stdout, exit with its exit
                        status (default -t 300). 124: time-out (the command goes on
                        in the guest); 125: the harness failed (message on stderr).
  qmp NAME [-t SECS] JSON [JSON...]
                        send qmp_capabilities, then each JSON command, on the
                        harness's own QMP socket; print each reply on one line,
                        skipping events. Exit 1 if a reply is an error.
  pid NAME              print the QEMU process id (exit 1 if NAME is not running)
  stop NAME             QMP quit, then SIGTERM, then SIGKILL if QEMU lingers
  stop-all              stop every guest of the run directory
  clean                 stop-all, then delete the run directory's logs and sockets
  list                  running guests: name, pid, RSS and anonymous RSS of QEMU
  mem NAME              QEMU's memory for guest NAME, in KiB, from /proc/PID/smaps:
                        summed over the mappings of the guest RAM (pc.ram, found
                        with QMP gpa2hva 0): ram_kib vmas rss_kib pss_kib anon_kib
                        anon_huge_kib shared_kib file_mapped_kib ksm_kib swap_kib
                        flags (of the first mapping); then the whole process:
                        process_rss_kib process_anon_kib process_shmem_kib
  log NAME [LINES]      the end of NAME's serial console log (default 40 lines)
  paths NAME            the files of NAME: console log, QEMU log, sockets, pidfile
  expect MIB SEED [PCT...]
                        on the host, the DD-EXPECT checksum a guest must show after
                        \`dd-work fill MIB SEED\` and \`dd-work rewrite PCT\`...

In the guest: /bin/dd-work fill MIB SEED | rewrite PCT | sum | check | expect |
status | clear (see tests/vm/guest/dd-work), all of busybox, and a tmpfs on /work.

Environment:
  DEDUP_VM_CACHE        cache of kernel, modules and initramfs
                        (default /var/tmp/dedupd-vm; outside the repository so that
                        fresh clones reuse it)
  DEDUP_VM_RUN          run directory: sockets, logs, pidfiles (default build/vm of
                        the repository; a relative value is taken from the current
                        directory)
  DEDUP_VM_PRELOAD      path of a library QEMU runs under (LD_PRELOAD), e.g.
                        build/libdedup-preload.so. QEMU inherits the whole
                        environment, so DEDUPD_SOCKET and DEDUP_* reach the library.
  DEDUP_VM_QEMU_ARGS    extra QEMU arguments (split on blanks, no quoting)
  DEDUP_VM_QEMU         QEMU binary (default qemu-system-x86_64)
  DEDUP_VM_ACCEL        -accel value (default tcg)
  DEDUP_VM_APPEND       extra kernel command-line words
  DEDUP_VM_BALLOON_OPTS properties of the balloon device (default deflate-on-oom=on,
                        so that a balloon set too small cannot panic the guest;
                        set it empty for QEMU's defaults, or e.g.
                        free-page-reporting=on)
  DEDUP_VM_MODULES      modules to put in the guest and load, with their
                        dependencies (default "virtio_pci virtio_balloon")
  DEDUP_VM_KERNEL_PKG   Debian kernel package to fetch (default: what
                        linux-image-cloud-amd64 depends on, once: a cached kernel
                        is used until the cache is deleted or this names another)

Files of guest NAME in the run directory: NAME.console.log (everything the guest
printed on its serial console), NAME.qemu.log (QEMU's stdout and stderr, with any
preload library's messages), NAME.serial (serial console socket, held by the
console keeper: a socat that vm.sh starts with QEMU and that ends with it),
NAME.in (FIFO: lines written there go to the guest's console), NAME.keeper,
NAME.keeper.socat (pids), NAME.keeper.log (socat's errors), NAME.qmp (a QMP
socket for the code under test, e.g. dedupd's balloon driver; the harness never
uses it), NAME.hqmp (the harness's own QMP socket), NAME.pid.
The balloon device is -device virtio-balloon-pci,id=balloon0
(QOM path /machine/peripheral/balloon0).
EOF
}

DIE_RC=1
die() {
	echo "vm.sh: $*" >&2
	exit "$DIE_RC"
}

say() {
	echo "vm.sh: $*" >&2
}

CACHE=${DEDUP_VM_CACHE:-/var/tmp/dedupd-vm}
if [ -n "${DEDUP_VM_RUN:-}" ]; then
	case $DEDUP_VM_RUN in
	/*) RUN=$DEDUP_VM_RUN ;;
	*) RUN=$(pwd)/$DEDUP_VM_RUN ;;
	esac
else
	RUN=$REPO/build/vm
fi
QEMU=${DEDUP_VM_QEMU:-qemu-system-x86_64}
MODULES=${DEDUP_VM_MODULES:-virtio_pci virtio_balloon}

now_ms() {
	echo $(($(date +%s%N) / 1000000))
}

# Seconds with one decimal from milliseconds.
secs() {
	printf '%d.%d' $(($1 / 1000)) $((($1 % 1000) / 100))
}

isnum() {
	case ${1:-x} in
	*[!0-9]*) return 1 ;;
	*) return 0 ;;
	esac
}

check_name() {
	case ${1:-} in
	"" | *[!A-Za-z0-9_.-]* | .*) die "bad guest name '${1:-}' (letters, digits, _ . -)" ;;
	esac
}

# ---------------------------------------------------------------- fetch

pkg_installed() {
	dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

apt_install() {
	[ "$(id -u)" -eq 0 ] || die "missing packages: $* (install them as root: apt-get install $*)"
	say "installing $* with apt-get"
	if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" \
		>"$CACHE/.apt.log" 2>&1; then
		say "apt-get install failed; running apt-get update first"
		DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$CACHE/.apt.log" 2>&1 ||
			{
				tail -n 5 "$CACHE/.apt.log" >&2
				die "apt-get update failed: is the Debian archive reachable? (log: $CACHE/.apt.log)"
			}
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" \
			>>"$CACHE/.apt.log" 2>&1 ||
			{
				tail -n 5 "$CACHE/.apt.log" >&2
				die "cannot install $* (log: $CACHE/.apt.log)"
			}
	fi
}

host_tools() {
	need=""
	command -v "$QEMU" >/dev/null 2>&1 || need="$need qemu-system-x86"
	pkg_installed busybox-static || need="$need busybox-static"
	command -v socat >/dev/null 2>&1 || need="$need socat"
	# shellcheck disable=SC2086
	[ -z "$need" ] || apt_install $need
}

kernel_ver() {
	[ -f "$CACHE/kernel/current" ] || return 1
	kv=$(cat "$CACHE/kernel/current")
	[ -f "$CACHE/kernel/$kv/vmlinuz" ] && [ -f "$CACHE/kernel/$kv/modules.load" ] || return 1
	echo "$kv"
}

# The cached kernel's version if it is the one asked for, with the modules asked for.
kernel_ok() {
	kv=$(kernel_ver) || return 1
	[ "$(cat "$CACHE/kernel/$kv/modules.want" 2>/dev/null)" = "$(echo $MODULES)" ] || return 1
	[ -z "${DEDUP_VM_KERNEL_PKG:-}" ] ||
		[ "$(cat "$CACHE/kernel/$kv/package" 2>/dev/null)" = "$DEDUP_VM_KERNEL_PKG" ] || return 1
	echo "$kv"
}

# A module's file under $1 (the extracted lib/modules/KVER), by name (_ or -).
mod_file() {
	n2=$(echo "$2" | tr _ -)
	find "$1/kernel" \( -name "$2.ko*" -o -name "$n2.ko*" \) 2>/dev/null | head -n 1
}

mod_builtin() {
	[ -f "$1/modules.builtin" ] || return 1
	sed 's,.*/,,; s,\.ko$,,; s,-,_,g' "$1/modules.builtin" | grep -qx "$2"
}

# Copy module $2 (and, first, what it depends on) from $1 into $3; print the
# load order, dependencies first. A subshell, so its variables are its own.
mod_closure() (
	m=$(echo "$2" | tr - _)
	if mod_builtin "$1" "$m"; then
		say "module $m is built into the kernel"
		exit 0
	fi
	f=$(mod_file "$1" "$m")
	[ -n "$f" ] || die "module $m is neither built in nor in the kernel package"
	case $f in
	*.ko) cp "$f" "$3/$m.ko" ;;
	*.ko.xz) xz -dc "$f" >"$3/$m.ko" ;;
	*.ko.zst) zstd -qdc "$f" >"$3/$m.ko" ;;
	*.ko.gz) gzip -dc "$f" >"$3/$m.ko" ;;
	*) die "module file $f: unknown compression" ;;
	esac
	for d in $(tr '\0' '\n' <"$3/$m.ko" | sed -n 's/^depends=//p' | tr ',' ' '); do
		mod_closure "$1" "$d" "$3"
	done
	echo "$m"
)

fetch_kernel() {
	if kv=$(kernel_ok); then
		say "kernel $kv already in $CACHE/kernel"
		return 0
	fi
	pkg=${DEDUP_VM_KERNEL_PKG:-}
	if [ -z "$pkg" ]; then
		resolve() {
			apt-cache depends linux-image-cloud-amd64 2>/dev/null |
				sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-cloud-amd64\)$/\1/p' | head -n 1
		}
		pkg=$(resolve)
		if [ -z "$pkg" ]; then
			say "apt does not know linux-image-cloud-amd64 yet: running apt-get update"
			apt-get update -q >"$CACHE/.apt.log" 2>&1 || {
				tail -n 5 "$CACHE/.apt.log" >&2
				die "apt-get update failed: is the Debian archive reachable? (log: $CACHE/.apt.log)"
			}
			pkg=$(resolve)
		fi
		[ -n "$pkg" ] || die "cannot find which kernel linux-image-cloud-amd64 depends on (apt-cache depends linux-image-cloud-amd64)"
	fi
	tmp=$(mktemp -d "$CACHE/.fetch.XXXXXX")
	trap 'rm -rf "$tmp"' EXIT
	say "downloading $pkg"
	if ! (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg") >"$CACHE/.apt.log" 2>&1; then
		tail -n 5 "$CACHE/.apt.log" >&2
		! grep -q 'Unable to locate package' "$CACHE/.apt.log" ||
			die "the Debian archive has no package $pkg (try: apt-cache policy $pkg)"
		die "cannot download $pkg from the Debian archive: is it reachable? (log: $CACHE/.apt.log)"
	fi
	dpkg-deb -x "$tmp"/*.deb "$tmp/x" || die "cannot extract $(ls "$tmp"/*.deb)"
	vml=$(ls "$tmp"/x/boot/vmlinuz-* 2>/dev/null | head -n 1)
	[ -n "$vml" ] || die "$pkg has no boot/vmlinuz-*"
	kv=${vml##*/vmlinuz-}
	moddir=$(ls -d "$tmp"/x/lib/modules/"$kv" "$tmp"/x/usr/lib/modules/"$kv" 2>/dev/null | head -n 1)
	[ -n "$moddir" ] || die "$pkg has no lib/modules/$kv"
	dest=$CACHE/kernel/$kv
	rm -rf "$dest.new"
	mkdir -p "$dest.new"
	cp "$vml" "$dest.new/vmlinuz"
	cp "$tmp/x/boot/config-$kv" "$dest.new/config" 2>/dev/null || true
	cp "$moddir/modules.builtin" "$dest.new/" 2>/dev/null || true
	for m in $MODULES; do
		mod_closure "$moddir" "$m" "$dest.new" || exit 1
	done >"$dest.new/modules.order"
	awk '!seen[$0]++' "$dest.new/modules.order" >"$dest.new/modules.load"
	rm -f "$dest.new/modules.order"
	echo "$pkg" >"$dest.new/package"
	echo $MODULES >"$dest.new/modules.want"
	rm -rf "$dest"
	mv "$dest.new" "$dest"
	echo "$kv" >"$CACHE/kernel/current.new"
	mv "$CACHE/kernel/current.new" "$CACHE/kernel/current"
	rm -rf "$tmp"
	trap - EXIT
	say "kernel $kv in $dest (modules: $(tr '\n' ' ' <"$dest/modules.load"))"
}

cmd_fetch() {
	mkdir -p "$CACHE/kernel" || die "cannot create the cache $CACHE"
	(
		exec 9>"$CACHE/.lock"
		flock -w 600 9 || die "cannot lock $CACHE/.lock"
		host_tools
		fetch_kernel
	)
}

# ------------------------------------------------------------- initramfs

initramfs_stamp() {
	{
		echo "$1"
		sha256sum /bin/busybox "$HERE/guest/init" "$HERE/guest/dd-work" \
			"$CACHE/kernel/$1/modules.load" "$CACHE/kernel/$1"/*.ko | sed 's, .*/, ,'
	} | sha256sum | cut -d' ' -f1
}

build_initramfs() {
	kv=$(kernel_ver) || die "no kernel in $CACHE: run tests/vm/vm.sh fetch"
	pkg_installed busybox-static || die "busybox-static is not installed: run tests/vm/vm.sh fetch"
	stamp=$(initramfs_stamp "$kv")
	if [ -f "$CACHE/initramfs.cpio.gz" ] && [ "$(cat "$CACHE/initramfs.stamp" 2>/dev/null)" = "$stamp" ]; then
		[ "${1:-}" = quiet ] || say "$CACHE/initramfs.cpio.gz is up to date"
		return 0
	fi
	st=$(mktemp -d "$CACHE/.initramfs.XXXXXX")
	trap 'rm -rf "$st"' EXIT
	mkdir -p "$st/bin" "$st/sbin" "$st/usr/bin" "$st/usr/sbin" "$st/etc" "$st/dev" \
		"$st/proc" "$st/sys" "$st/tmp" "$st/run" "$st/work" "$st/root" "$st/lib/modules/$kv"
	cp /bin/busybox "$st/bin/busybox"
	cp "$HERE/guest/init" "$st/init"
	cp "$HERE/guest/dd-work" "$st/bin/dd-work"
	chmod 755 "$st/init" "$st/bin/dd-work" "$st/bin/busybox"
	cp "$CACHE/kernel/$kv/modules.load" "$st/etc/dd-modules"
	for m in $(cat "$CACHE/kernel/$kv/modules.load"); do
		cp "$CACHE/kernel/$kv/$m.ko" "$st/lib/modules/$kv/"
	done
	# The kernel's built-in initramfs has /dev/console already; this is a spare.
	mknod "$st/dev/console" c 5 1 2>/dev/null || true
	(cd "$st" && find . | busybox cpio -o -H newc -R 0:0 2>/dev/null) | gzip -6 >"$st.cpio.gz"
	mv "$st.cpio.gz" "$CACHE/initramfs.cpio.gz"
	echo "$stamp" >"$CACHE/initramfs.stamp"
	rm -rf "$st"
	trap - EXIT
	say "built $CACHE/initramfs.cpio.gz ($(($(stat -c %s "$CACHE/initramfs.cpio.gz") / 1024)) KiB, kernel $kv)"
}

cmd_initramfs() {
	mkdir -p "$CACHE" || die "cannot create the cache $CACHE"
	(
		exec 9>"$CACHE/.lock"
		flock -w 600 9 || die "cannot lock $CACHE/.lock"
		build_initramfs "${1:-}"
	)
}

# ------------------------------------------------------------------ guests

# The pid of guest $1 if its QEMU runs, else nothing (and status 1).
guest_pid() {
	[ -f "$RUN/$1.pid" ] || return 1
	p=$(cat "$RUN/$1.pid" 2>/dev/null) || return 1
	isnum "$p" && [ -n "$p" ] || return 1
	[ -d "/proc/$p" ] || return 1
	case $(cat "/proc/$p/comm" 2>/dev/null) in
	qemu*) ;;
	*) return 1 ;;
	esac
	# A zombie is not running.
	[ "$(sed -n 's/^State:[[:space:]]*\(.\).*/\1/p' "/proc/$p/status" 2>/dev/null)" != Z ] || return 1
	echo "$p"
}

need_running() {
	check_name "$1"
	guest_pid "$1" >/dev/null || die "guest $1 is not running (no live QEMU in $RUN/$1.pid)"
}

sock_ok() {
	[ ${#1} -lt 108 ] || die "socket path too long for a UNIX socket (${#1} > 107): $1 (set DEDUP_VM_RUN to a shorter directory)"
}

cmd_boot() {
	[ $# -ge 1 ] || die "usage: boot NAME [-m MIB] [-smp N] [-t SECS] [KEY=VALUE...]"
	name=$1
	shift
	check_name "$name"
	mib=256 smp=1 tmo=120
	while [ $# -gt 0 ]; do
		case $1 in
		-m) mib=${2:-} && shift 2 ;;
		-smp) smp=${2:-} && shift 2 ;;
		-t) tmo=${2:-} && shift 2 ;;
		*=*) break ;;
		*) die "boot: unknown argument '$1'" ;;
		esac
	done
	isnum "$mib" && [ "$mib" -ge 64 ] || die "boot: -m wants MiB, at least 64"
	isnum "$smp" && [ "$smp" -ge 1 ] || die "boot: -smp wants a count"
	isnum "$tmo" || die "boot: -t wants seconds"
	for kvp in "$@"; do
		case $kvp in
		[A-Za-z_]*=*) ;;
		*) die "boot: '$kvp' is not KEY=VALUE" ;;
		esac
	done
	if p=$(guest_pid "$name"); then
		die "guest $name is already running (pid $p)"
	fi
	if ! kernel_ok >/dev/null || ! command -v "$QEMU" >/dev/null 2>&1 || ! command -v socat >/dev/null 2>&1; then
		cmd_fetch
	fi
	cmd_initramfs quiet
	kv=$(kernel_ver) || die "no kernel in $CACHE"
	mkdir -p "$RUN"
	for s in serial qmp hqmp; do sock_ok "$RUN/$name.$s"; done
	rm -f "$RUN/$name.serial" "$RUN/$name.qmp" "$RUN/$name.hqmp" "$RUN/$name.pid" \
		"$RUN/$name.console.log" "$RUN/$name.qemu.log" "$RUN/$name.in" "$RUN/$name.keeper" \
		"$RUN/$name.keeper.log" "$RUN/$name.keeper.socat"
	mkfifo "$RUN/$name.in"
	: >"$RUN/$name.console.log"
	if [ -n "${DEDUP_VM_PRELOAD:-}" ]; then
		pre=$DEDUP_VM_PRELOAD
		case $pre in /*) ;; *) pre=$(pwd)/$pre ;; esac
		[ -f "$pre" ] || die "DEDUP_VM_PRELOAD: no such file: $pre"
		set -- "LD_PRELOAD=$pre" "$@"
	fi
	bopts=${DEDUP_VM_BALLOON_OPTS-deflate-on-oom=on}
	start=$(now_ms)
	# shellcheck disable=SC2086
	env "$@" "$QEMU" -name "$name" \
		-machine pc -accel "${DEDUP_VM_ACCEL:-tcg}" -nographic -nodefaults -no-user-config \
		-m "$mib" -smp "$smp" \
		-kernel "$CACHE/kernel/$kv/vmlinuz" -initrd "$CACHE/initramfs.cpio.gz" \
		-append "console=ttyS0 panic=-1 quiet dd.name=$name ${DEDUP_VM_APPEND:-}" \
		-chardev "socket,id=ser0,path=$RUN/$name.serial,server=on,wait=on" \
		-serial chardev:ser0 \
		-qmp "unix:$RUN/$name.qmp,server=on,wait=off" \
		-qmp "unix:$RUN/$name.hqmp,server=on,wait=off" \
		-device "virtio-balloon-pci,id=balloon0${bopts:+,$bopts}" \
		-no-reboot -pidfile "$RUN/$name.pid" \
		${DEDUP_VM_QEMU_ARGS:-} \
		</dev/null >"$RUN/$name.qemu.log" 2>&1 9>&- &
	qpid=$!
	end=$((start + tmo * 1000))
	# The console keeper: one connection to the serial socket for the guest's
	# whole life (QEMU waits for it: wait=on), copying what the guest prints to
	# NAME.console.log and what is written to the FIFO NAME.in to the guest. QEMU's
	# own logfile= is not used: with it, output written while a client came and
	# went showed duplicated characters in the log.
	while [ ! -S "$RUN/$name.serial" ] && kill -0 "$qpid" 2>/dev/null &&
		[ "$(now_ms)" -lt "$end" ]; do
		sleep 0.02
	done
	(
		i=0
		# Exit status 0: QEMU closed the connection (it quit). Non-zero: could
		# not connect yet, or the link broke; try again while QEMU lives.
		# (An asynchronous command's stdin is /dev/null unless redirected.)
		until
			socat -t 1 "UNIX-CONNECT:$RUN/$name.serial" - <&3 3<&- &
			echo $! >"$RUN/$name.keeper.socat"
			wait $!
		do
			kill -0 "$qpid" 2>/dev/null || exit 0
			i=$((i + 1))
			[ $i -lt 100 ] || exit 1
			sleep 0.05
		done
	) 3<>"$RUN/$name.in" </dev/null >>"$RUN/$name.console.log" 2>>"$RUN/$name.keeper.log" 9>&- 8>&- &
	echo $! >"$RUN/$name.keeper"
	while :; do
		if grep -q '^DEDUP-VM READY' "$RUN/$name.console.log" 2>/dev/null; then
			break
		fi
		if ! kill -0 "$qpid" 2>/dev/null; then
			wait "$qpid" 2>/dev/null || true
			say "QEMU for $name exited before the guest was ready; QEMU said:"
			tail -n 20 "$RUN/$name.qemu.log" >&2 || true
			say "console ($RUN/$name.console.log):"
			tail -n 20 "$RUN/$name.console.log" >&2 2>/dev/null || true
			exit 1
		fi
		if ! keeper_alive "$name"; then
			say "the console keeper of $name (socat) ended before the guest was ready:"
			tail -n 5 "$RUN/$name.keeper.log" >&2 || true
			kill "$qpid" 2>/dev/null || true
			exit 1
		fi
		if [ "$(now_ms)" -ge "$end" ]; then
			say "guest $name not ready after $tmo s; console ($RUN/$name.console.log):"
			tail -n 30 "$RUN/$name.console.log" | tr -d '\r' >&2 || true
			say "QEMU log ($RUN/$name.qemu.log):"
			tail -n 10 "$RUN/$name.qemu.log" >&2 || true
			kill "$qpid" 2>/dev/null || true
			exit 1
		fi
		sleep 0.1
	done
	ms=$(($(now_ms) - start))
	i=0
	while [ ! -s "$RUN/$name.pid" ] && [ $i -lt 50 ]; do
		sleep 0.05
		i=$((i + 1))
	done
	ready=$(grep '^DEDUP-VM READY' "$RUN/$name.console.log" | tr -d '\r' | head -n 1)
	echo "$ready"
	case $ready in
	*balloon=yes*) ;;
	*) say "warning: the guest's virtio_balloon driver is not bound:" &&
		grep '^DEDUP-VM \(MODULE\|BALLOON\)' "$RUN/$name.console.log" | tr -d '\r' >&2 ;;
	esac
	say "$name up in $(secs "$ms") s: pid $(cat "$RUN/$name.pid"), console $RUN/$name.console.log, qmp $RUN/$name.qmp"
}

keeper_alive() {
	k=$(cat "$RUN/$1.keeper" 2>/dev/null) && isnum "$k" && [ -n "$k" ] && kill -0 "$k" 2>/dev/null
}

# Print, from byte $2 on, what the console log of $1 holds.
log_from() {
	tail -c "+$(($2 + 1))" "$RUN/$1.console.log" 2>/dev/null | tr -d '\r'
}

# wait_console NAME OFFSET REGEX END_MS: wait until the console log of NAME,
# from byte OFFSET on, has a line matching REGEX (status 0), until the clock
# passes END_MS (1) or the guest is gone (2). Rescans only when the log grew and
# backs off to 0.2 s, so a long wait costs the host little.
wait_console() {
	last=-1 nap=1 seen=$(now_ms)
	while :; do
		sz=$(stat -c %s "$RUN/$1.console.log" 2>/dev/null || echo 0)
		if [ "$sz" != "$last" ]; then
			last=$sz
			if log_from "$1" "$2" | grep -q "$3"; then
				return 0
			fi
			nap=1
		fi
		t=$(now_ms)
		[ "$t" -lt "$4" ] || return 1
		if [ $((t - seen)) -ge 1000 ]; then
			seen=$t
			if ! guest_pid "$1" >/dev/null; then
				log_from "$1" "$2" | grep -q "$3" && return 0
				return 2
			fi
		fi
		sleep "0.$(printf '%02d' "$nap")"
		nap=$((nap * 2))
		[ "$nap" -le 20 ] || nap=20
	done
}

# Say why guest $1 is gone, with the end of its console log.
guest_gone() {
	say "guest $1 is gone (QEMU exited); the end of its console ($RUN/$1.console.log):"
	tail -n 15 "$RUN/$1.console.log" 2>/dev/null | tr -d '\r' >&2 || true
	tail -n 5 "$RUN/$1.qemu.log" >&2 2>/dev/null || true
	exit 1
}

cmd_run() {
	DIE_RC=125
	tmo=300
	if [ "${1:-}" = -t ]; then
		[ $# -ge 2 ] || die "usage: run NAME [-t SECS] COMMAND"
		tmo=$2
		shift 2
	fi
	[ $# -ge 2 ] || die "usage: run NAME [-t SECS] COMMAND"
	name=$1
	shift
	if [ "$1" = -t ]; then
		[ $# -ge 3 ] || die "usage: run NAME [-t SECS] COMMAND"
		tmo=$2
		shift 2
	fi
	isnum "$tmo" || die "run: -t wants seconds"
	[ $# -eq 1 ] || die "run: give the command as one argument (quote it)"
	need_running "$name"
	cmd=$1
	tok="$$x$(date +%s%N)"
	b64=$(printf '%s' "$cmd" | base64 -w0)
	exec 8>"$RUN/$name.lock"
	flock -w "$tmo" 8 || die "guest $name: its console stayed busy for $tmo s"
	off=$(stat -c %s "$RUN/$name.console.log")
	start=$(now_ms)
	end=$((start + tmo * 1000))
	keeper_alive "$name" || die "guest $name: its console keeper is gone (see $RUN/$name.keeper.log)"
	# Read-write open: never blocks, and the keeper holds the FIFO open anyway.
	printf 'DD-RUN %s %s\n' "$tok" "$b64" 1<>"$RUN/$name.in" ||
		die "guest $name: cannot write to $RUN/$name.in"
	wait_console "$name" "$off" "^DD-BEGIN $tok\$" "$end" || true
	if ! log_from "$name" "$off" | grep -q "^DD-BEGIN $tok\$"; then
		guest_pid "$name" >/dev/null || guest_gone "$name"
		die "guest $name did not take the command within $tmo s (console log: $RUN/$name.console.log)"
	fi
	st=0
	wait_console "$name" "$off" "DD-END $tok [0-9]*\$" "$end" || st=$?
	case $st in
	1)
		log_from "$name" "$off" | sed "1,/^DD-BEGIN $tok\$/d"
		say "guest $name: command not done after $tmo s (it goes on in the guest): $cmd"
		exit 124
		;;
	2)
		log_from "$name" "$off" | sed "1,/^DD-BEGIN $tok\$/d"
		guest_gone "$name"
		;;
	esac
	rc=$(log_from "$name" "$off" | sed -n "s/.*DD-END $tok \([0-9]*\)\$/\1/p" | head -n 1)
	log_from "$name" "$off" | awk -v b="DD-BEGIN $tok" -v e="DD-END $tok " '
		!on && $0 == b { on = 1; next }
		on { i = index($0, e); if (i) { if (i > 1) print substr($0, 1, i - 1); exit } print }'
	exit "$rc"
}

# qmp_send SOCKET TIMEOUT JSON... : print the replies (not the greeting, not events)
# to the JSON commands, after the one to qmp_capabilities.
qmp_send() {
	sock=$1 tmo=$2
	shift 2
	[ -S "$sock" ] || die "no QMP socket $sock"
	want=$(($# + 1))
	out=$(mktemp "${TMPDIR:-/tmp}/dd-qmp.XXXXXX")
	end=$(($(now_ms) + tmo * 1000))
	{
		echo '{"execute":"qmp_capabilities"}'
		for j in "$@"; do printf '%s\n' "$j"; done
		while [ "$(grep -cv '^{"QMP"\|^{"timestamp"' "$out")" -lt "$want" ]; do
			[ "$(now_ms)" -lt "$end" ] || break
			sleep 0.02
		done
	} | socat -t 0.5 - "UNIX-CONNECT:$sock" >"$out" 2>"$out.err" || {
		cat "$out.err" >&2
		rm -f "$out" "$out.err"
		die "cannot talk to QMP at $sock"
	}
	replies=$(grep -v '^{"QMP"\|^{"timestamp"' "$out" | sed 1d)
	rm -f "$out" "$out.err"
	[ -n "$replies" ] || die "no QMP reply from $sock within $tmo s"
	printf '%s\n' "$replies"
	n=$(printf '%s\n' "$replies" | grep -c .)
	[ "$n" -ge $# ] || die "only $n of $# QMP replies within $tmo s"
	! printf '%s\n' "$replies" | grep -q '^{"error"'
}

cmd_qmp() {
	tmo=10
	if [ "${1:-}" = -t ]; then
		[ $# -ge 2 ] || die "usage: qmp NAME [-t SECS] JSON [JSON...]"
		tmo=$2
		shift 2
	fi
	[ $# -ge 2 ] || die "usage: qmp NAME [-t SECS] JSON [JSON...]"
	name=$1
	shift
	if [ "$1" = -t ]; then
		tmo=$2
		shift 2
	fi
	isnum "$tmo" || die "qmp: -t wants seconds"
	[ $# -ge 1 ] || die "usage: qmp NAME [-t SECS] JSON [JSON...]"
	need_running "$name"
	qmp_send "$RUN/$name.hqmp" "$tmo" "$@"
}

cmd_pid() {
	[ $# -eq 1 ] || die "usage: pid NAME"
	check_name "$1"
	guest_pid "$1" || {
		echo "vm.sh: guest $1 is not running" >&2
		exit 1
	}
}

cmd_stop() {
	[ $# -eq 1 ] || die "usage: stop NAME"
	name=$1
	check_name "$name"
	if p=$(guest_pid "$name"); then
		qmp_send "$RUN/$name.hqmp" 5 '{"execute":"quit"}' >/dev/null 2>&1 || true
		i=0
		while [ -d "/proc/$p" ] && [ $i -lt 100 ]; do
			sleep 0.05
			i=$((i + 1))
		done
		if [ -d "/proc/$p" ]; then
			say "$name: QEMU did not quit; SIGTERM"
			kill "$p" 2>/dev/null || true
			i=0
			while [ -d "/proc/$p" ] && [ $i -lt 100 ]; do
				sleep 0.05
				i=$((i + 1))
			done
		fi
		if [ -d "/proc/$p" ]; then
			say "$name: SIGKILL"
			kill -9 "$p" 2>/dev/null || true
		fi
		say "stopped $name (pid $p)"
	else
		say "$name is not running"
	fi
	# The keeper ends when QEMU closes the console; make sure.
	if k=$(cat "$RUN/$name.keeper" 2>/dev/null) && isnum "$k" && [ -n "$k" ]; then
		i=0
		while kill -0 "$k" 2>/dev/null && [ $i -lt 40 ]; do
			sleep 0.05
			i=$((i + 1))
		done
		if kill -0 "$k" 2>/dev/null; then
			kill "$k" 2>/dev/null || true
			ks=$(cat "$RUN/$name.keeper.socat" 2>/dev/null) && isnum "$ks" && [ -n "$ks" ] &&
				kill "$ks" 2>/dev/null || true
		fi
	fi
	rm -f "$RUN/$name.serial" "$RUN/$name.qmp" "$RUN/$name.hqmp" "$RUN/$name.pid" \
		"$RUN/$name.lock" "$RUN/$name.in" "$RUN/$name.keeper" "$RUN/$name.keeper.socat"
	[ -s "$RUN/$name.keeper.log" ] || rm -f "$RUN/$name.keeper.log"
}

cmd_stop_all() {
	for f in "$RUN"/*.pid; do
		[ -e "$f" ] || continue
		n=${f##*/}
		cmd_stop "${n%.pid}"
	done
}

cmd_clean() {
	cmd_stop_all
	for x in console.log qemu.log keeper.log keeper.socat keeper serial qmp hqmp lock in; do
		for f in "$RUN"/*."$x"; do
			[ -e "$f" ] || continue
			n=${f##*/}
			n=${n%."$x"}
			guest_pid "$n" >/dev/null || rm -f "$f"
		done
	done
	rmdir "$RUN" 2>/dev/null || true
}

cmd_list() {
	printf '%-16s %8s %10s %10s\n' NAME PID RSS_KIB ANON_KIB
	for f in "$RUN"/*.pid; do
		[ -e "$f" ] || continue
		n=${f##*/}
		n=${n%.pid}
		if p=$(guest_pid "$n"); then
			rss=$(sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\).*/\1/p' "/proc/$p/status")
			anon=$(sed -n 's/^RssAnon:[[:space:]]*\([0-9]*\).*/\1/p' "/proc/$p/status")
			printf '%-16s %8s %10s %10s\n' "$n" "$p" "$rss" "$anon"
		else
			printf '%-16s %8s\n' "$n" "dead"
		fi
	done
}

cmd_mem() {
	[ $# -eq 1 ] || die "usage: mem NAME"
	need_running "$1"
	p=$(guest_pid "$1")
	mib=$(tr '\0' '\n' <"/proc/$p/cmdline" | sed -n '/^-m$/{n;p;}' | head -n 1)
	isnum "$mib" || die "cannot tell the RAM size of $1 from its QEMU command line"
	# Where QEMU keeps guest physical address 0 (the pc.ram block): the RAM may be
	# many mappings once something (dedupd) has remapped pages of it.
	hva=$(qmp_send "$RUN/$1.hqmp" 10 \
		'{"execute":"human-monitor-command","arguments":{"command-line":"gpa2hva 0"}}' |
		sed -n 's/.* is 0x\([0-9a-fA-F]*\).*/\1/p')
	[ -n "$hva" ] || die "QEMU of $1 did not tell where its RAM is (gpa2hva 0)"
	awk -v start="$hva" -v kib=$((mib * 1024)) '
		function hex(s,    i, n) {
			n = 0
			s = tolower(s)
			for (i = 1; i <= length(s); i++)
				n = n * 16 + index("0123456789abcdef", substr(s, i, 1)) - 1
			return n
		}
		BEGIN { lo = hex(start); hi = lo + kib * 1024 }
		/^[0-9a-f]+-[0-9a-f]+ / {
			split($1, a, "-")
			inr = hex(a[1]) >= lo && hex(a[2]) <= hi
			if (inr) { vmas++; size += (hex(a[2]) - hex(a[1])) / 1024; if ($6 != "") filek += (hex(a[2]) - hex(a[1])) / 1024 }
			next
		}
		!inr { next }
		/^Rss:/ { rss += $2 }
		/^Pss:/ { pss += $2 }
		/^Anonymous:/ { anon += $2 }
		/^AnonHugePages:/ { huge += $2 }
		/^Shared_(Clean|Dirty):/ { shared += $2 }
		/^KSM:/ { ksm += $2 }
		/^Swap:/ { swap += $2 }
		/^VmFlags:/ && !flags { sub(/^VmFlags: */, ""); sub(/ *$/, ""); flags = $0 }
		END {
			if (size != kib) { print "mappings of the guest RAM add up to " size " KiB, not " kib > "/dev/stderr"; exit 1 }
			printf "ram_kib=%d vmas=%d rss_kib=%d pss_kib=%d anon_kib=%d anon_huge_kib=%d shared_kib=%d file_mapped_kib=%d ksm_kib=%d swap_kib=%d flags=\"%s\"\n",
				size, vmas, rss, pss, anon, huge, shared, filek, ksm, swap, flags
		}' "/proc/$p/smaps" || die "cannot account for the guest RAM of $1 in /proc/$p/smaps"
	awk '/^VmRSS:/ { r = $2 } /^RssAnon:/ { a = $2 } /^RssShmem:/ { s = $2 }
		END { printf "process_rss_kib=%d process_anon_kib=%d process_shmem_kib=%d\n", r, a, s }' \
		"/proc/$p/status"
}

cmd_log() {
	[ $# -ge 1 ] || die "usage: log NAME [LINES]"
	check_name "$1"
	[ -f "$RUN/$1.console.log" ] || die "no console log for $1"
	tail -n "${2:-40}" "$RUN/$1.console.log" | tr -d '\r'
}

cmd_paths() {
	[ $# -eq 1 ] || die "usage: paths NAME"
	check_name "$1"
	for s in console.log qemu.log serial qmp hqmp pid; do
		echo "$s $RUN/$1.$s"
	done
}

cmd_expect() {
	[ $# -ge 2 ] || die "usage: expect MIB SEED [PCT...]"
	busybox sh "$HERE/guest/dd-work" expect "$@"
}

[ $# -ge 1 ] || {
	usage >&2
	exit 2
}
c=$1
shift
case $c in
-h | --help | help) usage ;;
fetch) cmd_fetch ;;
initramfs) cmd_initramfs ;;
boot) cmd_boot "$@" ;;
run) cmd_run "$@" ;;
qmp) cmd_qmp "$@" ;;
pid) cmd_pid "$@" ;;
stop) cmd_stop "$@" ;;
stop-all) cmd_stop_all ;;
clean) cmd_clean ;;
list) cmd_list ;;
log) cmd_log "$@" ;;
mem) cmd_mem "$@" ;;
paths) cmd_paths "$@" ;;
expect) cmd_expect "$@" ;;
*)
	usage >&2
	die "unknown command '$c'"
	;;
esac
