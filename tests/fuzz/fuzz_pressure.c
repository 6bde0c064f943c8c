// SPDX-License-Identifier: MIT
/*
 * Fuzz the readers of bpf/pressure.c: /proc/meminfo (MemTotal,
 * MemAvailable), the PSI file (some/full avg10, avg60, total) and a memory
 * cgroup's limit and usage files (v2 memory.max/memory.current or v1
 * memory.limit_in_bytes/memory.usage_in_bytes). They are reached through the
 * module's own entry points with the paths pointed at files in a private
 * directory: dd_pressure_new() (no BPF, no PSI trigger) samples once, and
 * dd_pressure_tick() samples again.
 *
 * Input: a first line "host", "v1" or "v2" (which files are read), then the
 * meminfo, PSI, limit and usage files, each after a line "@@".
 *
 * Invariants checked on top of the sanitizers: a valid free sample has
 * free <= total and free_pm == free * 10000 / total (computed here in 128
 * bits, below 1 PiB), PSI averages are within 0..100.00 %, and every error string is
 * NUL-terminated within its buffer.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "bpf/pressure.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char meminfo[128], psi[128], cg1[128], cg2[128];

static void put(const char *dir, const char *name, const struct fz_chunk *c)
{
	char path[256];

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fz_write(path, c->p, c->n);
}

static void check_snapshot(const struct dd_pressure_snapshot *s)
{
	FZ_ASSERT(memchr(s->free_error, 0, sizeof(s->free_error)) &&
		      memchr(s->psi_error, 0, sizeof(s->psi_error)),
		  "error strings not terminated");
	if (s->free_valid) {
		unsigned __int128 pm;

		FZ_ASSERT(s->total_bytes > 0 && s->free_bytes <= s->total_bytes,
			  "free %llu of total %llu", (unsigned long long)s->free_bytes,
			  (unsigned long long)s->total_bytes);
		/* Beyond 2^50 bytes (1 PiB) free * 10000 wraps in 64 bits: not a host we
		 * will meet, so not checked (tests/fuzz/README.md). */
		pm = (unsigned __int128)s->free_bytes * 10000 / s->total_bytes;
		FZ_ASSERT(s->free_bytes >= (1ull << 50) || s->free_pm == (uint32_t)pm,
			  "free_pm %u, but free %llu / total %llu is %llu permyriad", s->free_pm,
			  (unsigned long long)s->free_bytes, (unsigned long long)s->total_bytes,
			  (unsigned long long)pm);
	}
	if (s->psi_valid)
		FZ_ASSERT(s->psi_some_avg10_pm <= 10000 && s->psi_some_avg60_pm <= 10000 &&
			      s->psi_full_avg10_pm <= 10000 && s->psi_full_avg60_pm <= 10000,
			  "PSI over 100 %%: %u %u %u %u", s->psi_some_avg10_pm,
			  s->psi_some_avg60_pm, s->psi_full_avg10_pm, s->psi_full_avg60_pm);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz_chunk c[5] = { 0 };
	struct dd_pressure_opts o = { .use_bpf = false, .psi_trigger = "" };
	struct dd_pressure *p;
	int mark;

	if (!meminfo[0]) {
		fz_path(meminfo, sizeof(meminfo), "meminfo");
		fz_path(psi, sizeof(psi), "pressure");
		fz_path(cg1, sizeof(cg1), "cg1");
		fz_path(cg2, sizeof(cg2), "cg2");
		mkdir(cg1, 0700);
		mkdir(cg2, 0700);
	}
	fz_split(data, size, "@@\n", c, 5);
	if (c[0].n >= 2 && !memcmp(c[0].p, "v1", 2)) {
		o.cgroup_path = cg1;
		put(cg1, "memory.limit_in_bytes", &c[3]);
		put(cg1, "memory.usage_in_bytes", &c[4]);
	} else if (c[0].n >= 2 && !memcmp(c[0].p, "v2", 2)) {
		o.cgroup_path = cg2;
		put(cg2, "memory.max", &c[3]);
		put(cg2, "memory.current", &c[4]);
	}
	fz_write(meminfo, c[1].p, c[1].n);
	fz_write(psi, c[2].p, c[2].n);
	o.meminfo_path = meminfo;
	o.psi_path = psi;

	mark = fz_fd_mark();
	p = dd_pressure_new(&o);
	FZ_ASSERT(p, "dd_pressure_new: %s", strerror(errno));
	check_snapshot(dd_pressure_get(p));
	dd_pressure_tick(p, dd_pressure_now_ms() + 1000);
	check_snapshot(dd_pressure_get(p));
	dd_pressure_free(p);
	fz_fd_check(mark, "pressure");
	return 0;
}
