// SPDX-License-Identifier: MIT
/*
 * Fuzz scanner/procmaps.c: dd_maps_check_range(), which decides whether a
 * client may register a range, from /proc/PID/maps and, when the process has
 * locked memory, /proc/PID/status (VmLck) and /proc/PID/smaps (VmFlags), and
 * dd_maps_count(). The client controls much of what those files say: which
 * ranges exist, and the path names of its file mappings, up to PATH_MAX long.
 *
 * Input: "ADDR LEN\n" (hex), then the maps, status and smaps files, each
 * after a line "@@". They are written as <dir>/maps, <dir>/status and
 * <dir>/smaps, the layout of /proc/PID/.
 *
 * Oracle: a reference implementation of the same rules below, which splits
 * the files at '\n' and nowhere else (it looks at the same first 4095, 511
 * and 127 bytes of a line as the real readers' buffers hold). A range the
 * real parser accepts while the reference refuses it (or the other way round)
 * is a crash: that is how a line split by a fixed-size buffer let a crafted
 * file name forge a mapping (tests/fuzz/regress/procmaps/).
 *
 * dd_maps_read() (every VMA, for the scanner's reconcile): each VMA it returns
 * must be, in order, the start of a line of the maps file whose range reads
 * the same with sscanf, and be a range (end above start): no VMA forged from
 * the middle of a line, none out of order.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scanner/procmaps.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char maps[128], status[128], smaps[128];

/*
 * The next line of [*p, end), without its '\n', as a NUL-terminated copy of at
 * most max bytes (the real readers look at the first bytes of a line that
 * does not fit their buffer, and skip the rest); NULL at the end.
 */
static char *next_line(const char **p, const char *end, size_t max)
{
	const char *nl;
	char *line;

	if (*p >= end)
		return NULL;
	nl = memchr(*p, '\n', (size_t)(end - *p));
	if (!nl)
		nl = end;
	line = strndup(*p, (size_t)(nl - *p) < max ? (size_t)(nl - *p) : max);
	*p = nl < end ? nl + 1 : end;
	return line;
}

/* Lines are cut at a NUL by the real readers (fgets + sscanf) too; the reference
 * sees the text as a C string per line, which strndup gives. */
static long ref_locked_kib(const struct fz_chunk *st)
{
	const char *p = (const char *)st->p, *end = p + st->n;
	long kib = 0;
	char *line;

	while ((line = next_line(&p, end, 127))) {
		bool hit = sscanf(line, "VmLck: %ld kB", &kib) == 1;

		free(line);
		if (hit)
			break;
	}
	return kib;
}

static bool ref_range_locked(const struct fz_chunk *sm, uint64_t addr, uint64_t end_addr)
{
	const char *p = (const char *)sm->p, *end = p + sm->n;
	unsigned long long lo = 0, hi = 0;
	bool in = false, locked = false;
	char *line;

	while (!locked && (line = next_line(&p, end, 511))) {
		char *dash = strchr(line, '-'), *sp = strchr(line, ' ');

		if (sscanf(line, "%llx-%llx ", &lo, &hi) == 2 && sp && dash < sp)
			in = lo < end_addr && addr < hi;
		else if (in && !strncmp(line, "VmFlags:", 8))
			locked = strstr(line, " lo") != NULL;
		free(line);
	}
	return locked;
}

static int ref_check(const struct fz_chunk *mp, const struct fz_chunk *st,
		     const struct fz_chunk *sm, uint64_t addr, uint64_t len)
{
	const char *p = (const char *)mp->p, *end = p + mp->n;
	uint64_t e = addr + len, at = addr;
	char *line;
	int r = 0;

	if (!len || e < addr)
		return -EINVAL;
	while (at < e && (line = next_line(&p, end, 4095))) {
		unsigned long long lo, hi, ino;
		char perms[8] = "", *path = calloc(1, strlen(line) + 1);
		int n = sscanf(line, "%llx-%llx %7s %*x %*x:%*x %llu %[^\n]", &lo, &hi, perms, &ino,
			       path);

		if (n >= 4 && hi > at) {
			if (lo > at)
				r = -EFAULT;
			else if (perms[0] != 'r' || perms[1] != 'w' || perms[3] != 'p')
				r = -EINVAL;
			else if (ino != 0 && !strstr(path, "dedupd-store"))
				r = -EINVAL;
			else
				at = hi;
		}
		free(path);
		free(line);
		if (r)
			break;
	}
	if (!r && at < e)
		r = -EFAULT;
	if (!r && ref_locked_kib(st) > 0 && ref_range_locked(sm, addr, e))
		r = -EINVAL;
	return r;
}

static void ref_read(const struct fz_chunk *mp, const char *path)
{
	const char *p = (const char *)mp->p, *end = p + mp->n;
	struct dd_vma *v = NULL;
	size_t cap = 0;
	long n = dd_maps_read(path, &v, &cap), k = 0;
	char *line;

	FZ_ASSERT(n >= 0, "dd_maps_read = %ld", n);
	while (k < n && (line = next_line(&p, end, 511))) {
		unsigned long long lo, hi;

		if (sscanf(line, "%llx-%llx", &lo, &hi) == 2 && lo == v[k].start && hi == v[k].end)
			k++;
		free(line);
	}
	FZ_ASSERT(k == n, "VMA %ld of %ld (%#llx-%#llx) is no line's range", k, n,
		  (unsigned long long)v[k].start, (unsigned long long)v[k].end);
	for (long i = 0; i < n; i++)
		FZ_ASSERT(v[i].end > v[i].start, "VMA %ld ends before it starts", i);
	free(v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz_chunk c[4] = { 0 };
	unsigned long long addr = 0, len = 0;
	char head[64], err[512];
	int mark, r, ref;
	long lines;

	if (!maps[0]) {
		fz_path(maps, sizeof(maps), "maps");
		fz_path(status, sizeof(status), "status");
		fz_path(smaps, sizeof(smaps), "smaps");
	}
	if (fz_split(data, size, "@@\n", c, 4) < 2)
		return 0;
	for (int i = 0; i < 4; i++)
		if (!c[i].p)
			c[i].p = (const uint8_t *)""; /* files not in the input are empty */
	snprintf(head, sizeof(head), "%.*s", (int)(c[0].n < 63 ? c[0].n : 63), c[0].p);
	if (sscanf(head, "%llx %llx", &addr, &len) != 2)
		return 0;
	/* The real readers stop at a NUL (fgets, sscanf); keep the reference simple. */
	for (int i = 1; i < 4; i++)
		if (c[i].n && memchr(c[i].p, 0, c[i].n))
			return 0;
	fz_write(maps, c[1].p, c[1].n);
	fz_write(status, c[2].p, c[2].n);
	fz_write(smaps, c[3].p, c[3].n);

	mark = fz_fd_mark();
	err[0] = 0;
	r = dd_maps_check_range(maps, addr, len, err, sizeof(err));
	ref = ref_check(&c[1], &c[2], &c[3], addr, len);
	FZ_ASSERT(r == ref, "dd_maps_check_range(%#llx, %#llx) = %d (%s), the reference says %d",
		  addr, len, r, err, ref);
	FZ_ASSERT(r == 0 || err[0], "refused (%d) without a message", r);
	lines = dd_maps_count(maps);
	FZ_ASSERT(lines >= 0, "dd_maps_count = %ld", lines);
	ref_read(&c[1], maps);
	fz_fd_check(mark, "procmaps");
	return 0;
}
