#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Where the freeable pages of QEMU guests lie: in the guest RAM or elsewhere.

`dedupctl estimate --pid` counts every private, anonymous, writable page of a
process; QEMU offers only its guest RAM blocks for merging, so dedupd (and KSM)
can only ever get the part of that count that lies in those blocks. This
script counts the same way as estimate (same mappings, present pages, pages
already sharing a frame counted once, the zero page left out, byte-identical
contents: here by a 128-bit BLAKE2b, not XXH3 + memcmp) and splits the result:

  guest RAM (pc.ram, found with QMP `gpa2hva 0`) / everything else (TCG
  translation buffer, heap, stacks, ...), zero pages / duplicates.

With --after (once an engine converged) it tells which guest-RAM pages are
left that could still be freed: zero pages and duplicates that are still
private anonymous pages, split by whether a transparent huge page holds them
(/proc/kpageflags bit 22), and how many RAM pages are merged already.

usage: estimate-split.py [--after] [--vm-sh tests/vm/vm.sh] GUEST...
Prints one line per figure; the line `guest-RAM-pages-freeable N` is read by
demo-vms.sh. Needs root (pagemap frame numbers, /proc/PID/mem, kpageflags).
"""
import hashlib
import os
import re
import struct
import subprocess
import sys

PAGE = 4096
ZERO = bytes(PAGE)
PM_PRESENT = 1 << 63
PM_FILE_OR_SHARED = 1 << 61
PFN_MASK = (1 << 55) - 1
KPF_ZERO_PAGE = 1 << 24
KPF_THP = 1 << 22
BATCH = 256


def vm(vm_sh, *args):
    return subprocess.run(["/bin/sh", vm_sh, *args], check=True, capture_output=True,
                          text=True).stdout


def guest_ram(vm_sh, name):
    pid = int(vm(vm_sh, "pid", name).split()[0])
    hva = vm(vm_sh, "qmp", name, '{"execute":"human-monitor-command",'
             '"arguments":{"command-line":"gpa2hva 0"}}')
    m = re.search(r"is 0x([0-9a-fA-F]+)", hva)
    if not m:
        sys.exit("%s: QEMU did not say where its RAM is: %s" % (name, hva.strip()))
    args = open("/proc/%d/cmdline" % pid, "rb").read().split(b"\0")
    mib = int(args[args.index(b"-m") + 1])
    lo = int(m.group(1), 16)
    return pid, lo, lo + mib * 1024 * 1024


def mappings(pid, after):
    """What estimate reads; with after also the RAM's file mappings (merged pages)."""
    for line in open("/proc/%d/maps" % pid):
        f = line.split(None, 5)
        lo, hi = (int(x, 16) for x in f[0].split("-"))
        perms, inode = f[1], int(f[4])
        name = f[5].strip() if len(f) > 5 else ""
        anon = inode == 0 and (not name or name.startswith(("[heap]", "[stack", "[anon:")))
        if perms[0] == "r" and perms[3] == "p" and (anon and perms[1] == "w" or after):
            yield lo, hi, anon


def main():
    argv = sys.argv[1:]
    after = "--after" in argv
    argv = [a for a in argv if a != "--after"]
    vm_sh = "tests/vm/vm.sh"
    if argv[:1] == ["--vm-sh"]:
        vm_sh, argv = argv[1], argv[2:]
    kpf = open("/proc/kpageflags", "rb")
    seen_pfn = set()
    classes = {}  # digest -> [frames in RAM, frames elsewhere, RAM frames in THPs]
    c = dict(scanned=0, ram_present=0, zero_ram=0, zero_ram_thp=0, zero_other=0,
             shared_frames=0, ram_shared_frames=0, zero_mapped=0, ram_zero_mapped=0,
             ram_file=0, ram_thp=0, ram_absent=0)
    for name in argv:
        pid, rlo, rhi = guest_ram(vm_sh, name)
        pm = open("/proc/%d/pagemap" % pid, "rb")
        mem = open("/proc/%d/mem" % pid, "rb", buffering=0)
        for lo, hi, anon in mappings(pid, after):
            in_ram = rlo <= lo and hi <= rhi
            if not anon and not in_ram:
                continue
            for a in range(lo, hi, BATCH * PAGE):
                n = min(BATCH, (hi - a) // PAGE)
                pm.seek(a // PAGE * 8)
                ents = struct.unpack("%dQ" % n, pm.read(n * 8))
                if not any(e & PM_PRESENT for e in ents):
                    if in_ram:
                        c["ram_absent"] += n
                    continue
                # Read only the present pages: reading an absent one through
                # /proc/PID/mem faults it in (seen: 27 MiB more RssAnon in QEMU).
                data = bytearray(n * PAGE)
                i = 0
                while i < n:
                    if not ents[i] & PM_PRESENT:
                        i += 1
                        continue
                    j = i
                    while j < n and ents[j] & PM_PRESENT:
                        j += 1
                    try:
                        mem.seek(a + i * PAGE)
                        data[i * PAGE:j * PAGE] = mem.read((j - i) * PAGE)
                    except OSError:
                        pass
                    i = j
                for i, e in enumerate(ents):
                    if not e & PM_PRESENT:
                        c["ram_absent"] += in_ram
                        continue
                    pfn = e & PFN_MASK
                    kpf.seek(pfn * 8)
                    flags = struct.unpack("Q", kpf.read(8))[0]
                    c["ram_present"] += in_ram
                    if flags & KPF_ZERO_PAGE:
                        c["zero_mapped"] += 1
                        c["ram_zero_mapped"] += in_ram
                        continue
                    thp = bool(flags & KPF_THP)
                    if in_ram:
                        c["ram_file"] += bool(e & PM_FILE_OR_SHARED)
                        c["ram_thp"] += thp
                    if pfn in seen_pfn:
                        c["shared_frames"] += 1
                        c["ram_shared_frames"] += in_ram
                        continue
                    seen_pfn.add(pfn)
                    c["scanned"] += 1
                    page = bytes(data[i * PAGE:(i + 1) * PAGE])
                    if page == ZERO:
                        if in_ram:
                            c["zero_ram"] += 1
                            c["zero_ram_thp"] += thp
                        else:
                            c["zero_other"] += 1
                        continue
                    d = hashlib.blake2b(page, digest_size=16).digest()
                    k = classes.setdefault(d, [0, 0, 0])
                    k[0 if in_ram else 1] += 1
                    k[2] += in_ram and thp
    total = sum(r + o - 1 for r, o, t in classes.values())
    ram_only = sum(r - 1 for r, o, t in classes.values() if r > 0)
    ram_thp = sum(min(t, r - 1) for r, o, t in classes.values() if r > 1)
    pg = lambda n: "%d pages (%.1f MiB)" % (n, n * PAGE / 1048576)
    if not after:
        print("all private writable memory (as estimate): %s scanned, merging frees %s, "
              "zero pages %s" % (pg(c["scanned"]), pg(total), pg(c["zero_ram"] + c["zero_other"])))
        print("  in the guest RAM that QEMU registers: merging frees %s, zero pages %s"
              % (pg(ram_only), pg(c["zero_ram"])))
        print("  elsewhere (TCG buffer, heap, stacks; never offered): merging frees %s, "
              "zero pages %s" % (pg(total - ram_only), pg(c["zero_other"])))
        print("  not counted: %d pages already sharing a frame, %d on the zero page"
              % (c["shared_frames"], c["zero_mapped"]))
        print("guest-RAM-pages-freeable %d" % (ram_only + c["zero_ram"]))
        return
    # After merging: what could still be freed in the RAM. Merged pages share
    # one frame (dedupd's store page, or KSM's page), so each class of equal
    # contents still frees its RAM frames less one; every zero frame is freeable.
    print("guest RAM after merging: %s present, %s of them sharing a frame with another "
          "(merged), %s mapped from a file (dedupd's store), %s on the zero page, %s in THPs; "
          "%s not present (a merged page is, until the guest reads it)" % (pg(c["ram_present"]), pg(c["ram_shared_frames"]), pg(c["ram_file"]),
                              pg(c["ram_zero_mapped"]), pg(c["ram_thp"]), pg(c["ram_absent"])))
    print("  left that could still be freed: zero pages %s (%s in THPs), duplicates %s "
          "(%s in THPs)" % (pg(c["zero_ram"]), pg(c["zero_ram_thp"]), pg(ram_only), pg(ram_thp)))
    print("guest-RAM-pages-left %d" % (c["zero_ram"] + ram_only))


if __name__ == "__main__":
    main()
