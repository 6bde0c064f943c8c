// SPDX-License-Identifier: MIT
/*
 * Page-out of another process's memory, and the figures around it.
 *
 * dd_pageout() walks the caller's ranges with a cursor (range index, byte
 * offset into it) and hands the kernel up to IOV_MAX ranges per
 * process_madvise() call, copied into a local array whose first entry starts
 * at the cursor. The kernel processes ranges in order and, when one fails
 * after others succeeded, returns the bytes done so far; the cursor moves by
 * that count, so the next call starts at the range that failed and reports
 * its error. The kernel also checks the whole vector before it starts
 * (lengths, and that every range is a user address of the *caller*): such an
 * error cannot be pinned on one range, so after an error from a call of
 * several ranges the next call is made with the first range alone, which
 * either succeeds (and chunks resume) or fails on its own.
 *
 * The /proc readers share one parser of "Name:   1234 kB" lines.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "dedupd/reclaim/pageout.h"
#include "dedupd/reclaim/errmsg.h"

#ifndef SYS_process_madvise
#define SYS_process_madvise 440
#endif
#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif

#define PAGEOUT_RETRIES 16 /* EINTR/EAGAIN in a row before giving up */
#define CHUNK_MAX IOV_MAX  /* the kernel's UIO_MAXIOV: 1024 */


/* The pid behind a pidfd, for messages only; -1 if unknown or exited. */
static int pidfd_pid(int pidfd)
{
	char path[64], line[128];
	int pid = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", pidfd);
	f = fopen(path, "re");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "Pid: %d", &pid) == 1)
			break;
	fclose(f);
	return pid;
}

/* Where the next call starts: ranges[i] + off. */
struct cursor {
	size_t i;
	size_t off;
};

/* Skip ranges with nothing left in them. */
static void skip_empty(const struct iovec *ranges, size_t n, struct cursor *c)
{
	while (c->i < n && ranges[c->i].iov_len == c->off) {
		c->i++;
		c->off = 0;
	}
}

static void advance(const struct iovec *ranges, size_t n, struct cursor *c, size_t bytes)
{
	while (bytes && c->i < n) {
		size_t left = ranges[c->i].iov_len - c->off;

		if (bytes < left) {
			c->off += bytes;
			return;
		}
		bytes -= left;
		c->i++;
		c->off = 0;
	}
	skip_empty(ranges, n, c);
}

/* Copy up to max ranges from the cursor into chunk; returns how many. */
static size_t fill_chunk(struct iovec *chunk, size_t max, const struct iovec *ranges, size_t n,
			 const struct cursor *c)
{
	size_t k = 0;

	for (size_t i = c->i; i < n && k < max; i++, k++)
		chunk[k] = ranges[i];
	chunk[0].iov_base = (char *)chunk[0].iov_base + c->off;
	chunk[0].iov_len -= c->off;
	return k;
}

/* An error that belongs to one range: skip it and go on with the others. */
static bool range_error(int e)
{
	return e == ENOMEM || e == EINVAL || e == EFAULT;
}

static const char *range_reason(int e)
{
	switch (e) {
	case ENOMEM:
		return "not mapped (ENOMEM)";
	case EINVAL:
		return "not page-aligned or wraps around (EINVAL)";
	case EFAULT:
		return "not a user address (EFAULT)";
	}
	return strerror(e);
}

static int64_t fatal(int pidfd, int e, char *err, size_t errlen)
{
	int pid = pidfd_pid(pidfd);

	switch (e) {
	case ESRCH:
		dd_set_err(err, errlen, "pageout: pidfd %d: the process has exited", pidfd);
		break;
	case EBADF:
		dd_set_err(err, errlen, "pageout: fd %d is not a pidfd", pidfd);
		break;
	case EPERM:
		dd_set_err(err, errlen,
			"pageout of pid %d: process_madvise: permission denied (needs "
			"CAP_SYS_NICE and ptrace access to the process)",
			pid);
		break;
	case ENOSYS:
		dd_set_err(err, errlen, "pageout: process_madvise() is not in this kernel (5.10+)");
		break;
	default:
		dd_set_err(err, errlen, "pageout of pid %d: process_madvise: %s", pid, strerror(e));
	}
	return -e;
}

int64_t dd_pageout(int pidfd, const struct iovec *ranges, size_t n, char *err, size_t errlen)
{
	struct iovec chunk[CHUNK_MAX];
	struct cursor c = { 0, 0 };
	size_t skipped = 0, nonempty = 0, first_bad = 0;
	int first_err = 0, tries = 0;
	bool single = false;
	int64_t done = 0;

	dd_set_err(err, errlen, "%s", "");
	if (n && !ranges) {
		dd_set_err(err, errlen, "pageout: no ranges given");
		return -EINVAL;
	}
	for (size_t i = 0; i < n; i++)
		nonempty += ranges[i].iov_len != 0;
	skip_empty(ranges, n, &c);
	while (c.i < n) {
		size_t k = fill_chunk(chunk, single ? 1 : CHUNK_MAX, ranges, n, &c);
		long r = syscall(SYS_process_madvise, pidfd, chunk, k, MADV_PAGEOUT, 0);
		int e = errno;

		if (r > 0) {
			done += r;
			advance(ranges, n, &c, (size_t)r);
			single = false;
			tries = 0;
			continue;
		}
		if (r == 0) { /* cannot happen for a non-empty range; make progress anyway */
			advance(ranges, n, &c, chunk[0].iov_len);
			continue;
		}
		if ((e == EINTR || e == EAGAIN) && ++tries < PAGEOUT_RETRIES)
			continue;
		if (!range_error(e))
			return fatal(pidfd, e, err, errlen);
		if (k > 1) { /* which range? ask about the first alone */
			single = true;
			continue;
		}
		if (!skipped++) {
			first_err = e;
			first_bad = c.i;
		}
		c.i++;
		c.off = 0;
		skip_empty(ranges, n, &c);
		single = false;
		tries = 0;
	}
	if (skipped)
		dd_set_err(err, errlen,
			"pageout of pid %d: %zu of %zu ranges skipped; the first, %p+%#zx: %s",
			pidfd_pid(pidfd), skipped, nonempty, ranges[first_bad].iov_base,
			ranges[first_bad].iov_len, range_reason(first_err));
	return skipped && skipped == nonempty ? -first_err : done;
}

/*
 * Read "Name:   1234 kB" lines from path: vals[j] = the figure of names[j]
 * in bytes. 0; -errno of open/read; -ENODATA (a name missing); -EINVAL
 * (malformed). Names are matched whole, up to the colon.
 */
static int read_kb_fields(const char *path, const char *const *names, uint64_t *vals, size_t nnames)
{
	char line[256];
	unsigned found = 0;
	int r = 0;
	FILE *f = fopen(path, "re");

	if (!f)
		return -errno;
	while (r == 0 && fgets(line, sizeof(line), f)) {
		char *colon = strchr(line, ':'), *p, *end;
		unsigned long long kib;

		if (!colon)
			continue;
		for (size_t j = 0; j < nnames; j++) {
			if (found & (1u << j) || (size_t)(colon - line) != strlen(names[j]) ||
			    strncmp(line, names[j], (size_t)(colon - line)))
				continue;
			for (p = colon + 1; *p == ' ' || *p == '\t'; p++)
				;
			errno = 0;
			kib = strtoull(p, &end, 10);
			if (end == p || *p == '-' || errno || kib > UINT64_MAX / 1024 ||
			    (strcmp(end, " kB\n") && strcmp(end, " kB")))
				r = -EINVAL;
			vals[j] = (uint64_t)kib * 1024;
			found |= 1u << j;
		}
	}
	if (r == 0 && ferror(f))
		r = -EIO;
	fclose(f);
	if (r == 0 && found != (1u << nnames) - 1)
		r = -ENODATA;
	return r;
}

int dd_swap_status_at(const char *meminfo_path, uint64_t *total_bytes, uint64_t *free_bytes)
{
	static const char *const names[] = { "SwapTotal", "SwapFree" };
	uint64_t v[2];
	int r = read_kb_fields(meminfo_path, names, v, 2);

	if (r < 0)
		return r;
	if (v[1] > v[0])
		return -EINVAL;
	*total_bytes = v[0];
	*free_bytes = v[1];
	return 0;
}

int dd_swap_status(uint64_t *total_bytes, uint64_t *free_bytes)
{
	return dd_swap_status_at("/proc/meminfo", total_bytes, free_bytes);
}

int dd_proc_mem_at(const char *status_path, struct dd_proc_mem *m)
{
	static const char *const names[] = { "VmRSS", "RssAnon", "VmSwap" };
	uint64_t v[3];
	int r = read_kb_fields(status_path, names, v, 3);

	if (r < 0)
		return r;
	m->rss_bytes = v[0];
	m->rss_anon_bytes = v[1];
	m->swap_bytes = v[2];
	return 0;
}

int dd_proc_mem(pid_t pid, struct dd_proc_mem *m)
{
	char path[64];
	int r;

	if (pid <= 0)
		return -ESRCH;
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	r = dd_proc_mem_at(path, m);
	return r == -ENOENT ? -ESRCH : r;
}
