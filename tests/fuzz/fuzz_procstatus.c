// SPDX-License-Identifier: MIT
/*
 * Fuzz the "Name:   1234 kB" readers of dedupd/reclaim/pageout.c:
 * dd_swap_status_at() (SwapTotal, SwapFree of /proc/meminfo) and
 * dd_proc_mem_at() (VmRSS, RssAnon, VmSwap of /proc/PID/status), on one file
 * holding the input.
 *
 * Invariants checked on top of the sanitizers, from pageout.h's contract:
 * results are 0, -ENODATA or -EINVAL (the file exists and is readable);
 * success gives free <= total and byte counts that are whole KiB; nothing
 * is written on failure; no fd is leaked.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "dedupd/reclaim/pageout.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char file[128];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint64_t total = 7, free_bytes = 7;
	struct dd_proc_mem m = { 7, 7, 7 };
	int mark, r;

	if (!file[0])
		fz_path(file, sizeof(file), "status");
	fz_write(file, data, size);
	mark = fz_fd_mark();

	r = dd_swap_status_at(file, &total, &free_bytes);
	FZ_ASSERT(r == 0 || r == -ENODATA || r == -EINVAL, "dd_swap_status_at = %d", r);
	if (r == 0)
		FZ_ASSERT(free_bytes <= total && total % 1024 == 0 && free_bytes % 1024 == 0,
			  "swap free %llu total %llu", (unsigned long long)free_bytes,
			  (unsigned long long)total);
	else
		FZ_ASSERT(total == 7 && free_bytes == 7, "failure (%d) wrote results", r);

	r = dd_proc_mem_at(file, &m);
	FZ_ASSERT(r == 0 || r == -ENODATA || r == -EINVAL, "dd_proc_mem_at = %d", r);
	if (r == 0)
		FZ_ASSERT(m.rss_bytes % 1024 == 0 && m.rss_anon_bytes % 1024 == 0 &&
			      m.swap_bytes % 1024 == 0,
			  "not whole KiB");
	else
		FZ_ASSERT(m.rss_bytes == 7 && m.rss_anon_bytes == 7 && m.swap_bytes == 7,
			  "failure (%d) wrote results", r);
	fz_fd_check(mark, "pageout readers");
	return 0;
}
