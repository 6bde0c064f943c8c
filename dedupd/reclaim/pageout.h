/* SPDX-License-Identifier: MIT */
/*
 * Paging out a client's memory from outside (the reclaim action of the hard
 * state): process_madvise(MADV_PAGEOUT) on ranges of another process, the
 * host's swap figures that say whether that can work, and the process's own
 * figures that show what it did.
 *
 * MADV_PAGEOUT reclaims at once what it can: clean file pages are dropped,
 * anonymous pages go to swap. Without swap, anonymous pages stay where they
 * are and the call still reports every byte as advised (measured on 6.18:
 * 16 MiB of anonymous memory advised, RssAnon unchanged). So the daemon asks
 * dd_swap_status() first and says "no swap configured: pageout would only
 * drop clean file pages" rather than pretending. Pages that another process
 * also maps (copy-on-write after fork, merged store pages) are left alone by
 * the kernel.
 *
 * Library code: nothing here logs. Needs CAP_SYS_NICE and ptrace access to
 * the target (PTRACE_MODE_READ), i.e. root for other users' processes.
 */
#ifndef DD_PAGEOUT_H
#define DD_PAGEOUT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

/* The memory figures of one process, from /proc/PID/status. */
struct dd_proc_mem {
	uint64_t rss_bytes;	 /* VmRSS: resident, anonymous + file + shmem */
	uint64_t rss_anon_bytes; /* RssAnon: resident anonymous memory */
	uint64_t swap_bytes;	 /* VmSwap: anonymous memory swapped out */
};

/*
 * Page out ranges[0..n) of the process behind pidfd with
 * process_madvise(MADV_PAGEOUT), at most IOV_MAX ranges per call. Partial
 * returns are resumed where the kernel stopped; EINTR and EAGAIN are retried
 * (16 times in a row at most). Ranges must be page-aligned.
 *
 * A range the kernel refuses on its own is skipped and the others are still
 * paged out: -ENOMEM (not mapped, or only partly: the mapped part is paged
 * out but not counted), -EINVAL (not page-aligned, or wraps around),
 * -EFAULT (not a user address).
 *
 * Returns the bytes advised (>= 0; as the kernel counts them: advised, not
 * necessarily paged out, see above). err is "" unless ranges were skipped,
 * then it says how many and why the first was. If every non-empty range was
 * skipped, returns the first range's error instead. Other errors stop at
 * once and return -errno with a sentence in err: -ESRCH (the process has
 * exited, also when some ranges were already done), -EBADF (not a pidfd),
 * -EPERM (no CAP_SYS_NICE or no ptrace access), -ENOSYS (kernel before
 * 5.10), -EINVAL (ranges NULL with n > 0), -EINTR/-EAGAIN (still failing
 * after the retries). err may be NULL when errlen is 0.
 */
int64_t dd_pageout(int pidfd, const struct iovec *ranges, size_t n, char *err, size_t errlen);

/*
 * The host's swap: SwapTotal and SwapFree from /proc/meminfo, in bytes. Both
 * are 0 when no swap is configured.
 * Returns 0; -errno from opening or reading the file (-ENOENT, -EACCES,
 * ...); -ENODATA when a field is missing; -EINVAL when a field is malformed
 * (no number, a unit other than kB, too large, or free above total).
 */
int dd_swap_status(uint64_t *total_bytes, uint64_t *free_bytes);

/* As dd_swap_status(), from another file (tests). */
int dd_swap_status_at(const char *meminfo_path, uint64_t *total_bytes, uint64_t *free_bytes);

/*
 * VmRSS, RssAnon and VmSwap of pid, in bytes, from /proc/PID/status.
 * Returns 0; -ESRCH (no such process); -ENODATA (no such fields: a zombie or
 * a kernel thread has no memory); -EINVAL (malformed); -errno from reading.
 */
int dd_proc_mem(pid_t pid, struct dd_proc_mem *m);

/* As dd_proc_mem(), from a status file at another path (tests); a missing
 * file gives -ENOENT. */
int dd_proc_mem_at(const char *status_path, struct dd_proc_mem *m);

#endif
