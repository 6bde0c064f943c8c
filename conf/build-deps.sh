#!/bin/sh
# Installs the Debian packages that building and testing dedupd need, and only
# the missing ones, so that `make run` and `make check` work on a fresh Debian 12
# machine. Called by the Makefile (the `deps` target); safe to run repeatedly.
# Set DEDUP_NO_APT=1 to only report what is missing.
set -eu

# package : why
PKGS="
gcc make pkg-config bc
libxxhash-dev
liburcu-dev
libbpf-dev libelf-dev zlib1g-dev
clang llvm bpftool
check
libsystemd-dev
libinih-dev
libjson-c-dev
libmicrohttpd-dev
libcurl4-openssl-dev
"
# Tests only (check_ops): promtool checks the /metrics exposition (Debian ships
# it in the prometheus package, ~95 MB; its service is not started without
# systemd, and on a systemd host `systemctl disable --now prometheus` stops
# it), systemd-analyze verifies the unit, groff checks the man pages.
PKGS="$PKGS prometheus systemd groff-base"
# Tests only: libFuzzer's runtime for the fuzz corpus replay (make fuzz-regress).
PKGS="$PKGS libclang-rt-14-dev"
[ "${DEDUP_DEPS_EXTRA:-}" ] && PKGS="$PKGS $DEDUP_DEPS_EXTRA"

missing=""
for p in $PKGS; do
	st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
	case "$st" in
	*"install ok installed"*) ;;
	*) missing="$missing $p" ;;
	esac
done
[ -z "$missing" ] && exit 0

if [ "${DEDUP_NO_APT:-0}" = 1 ]; then
	echo "build-deps: missing packages:$missing" >&2
	exit 1
fi
if [ "$(id -u)" != 0 ]; then
	echo "build-deps: missing packages:$missing; run as root (or: apt-get install$missing)" >&2
	exit 1
fi
echo "build-deps: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
