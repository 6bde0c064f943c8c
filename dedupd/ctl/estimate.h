/* SPDX-License-Identifier: MIT */
/*
 * `dedupctl estimate`: a read-only dry run of deduplication over any
 * processes, with no daemon and no agent. It reads their private anonymous
 * writable memory (/proc/PID/maps, /proc/PID/pagemap, /proc/PID/mem),
 * checksums every present page with the scanner's hash, and counts what
 * merging would save: within each process, and across all of them.
 *
 * It changes nothing in them: not process_vm_readv(), whose page pins make
 * the kernel copy every copy-on-write shared page it reads (see estimate.c).
 *
 * As in the scanner, the checksum only groups candidates: pages with equal
 * checksums are read again and byte-compared, so the counts are exact for
 * the memory as it was read (a live process may change it meanwhile).
 *
 * Runs with the caller's own credentials: the kernel decides who may read
 * whose memory (ptrace access mode: the same user, or CAP_SYS_PTRACE; with
 * kernel.yama.ptrace_scope, root). Page frame numbers in pagemap need
 * CAP_SYS_ADMIN; with them, pages already shared with another page read
 * (after fork()) and pages on the kernel's zero page are told apart and not
 * counted as savings; without them, they are (pfn_visible says which).
 *
 * Library code: nothing here prints; failures come back as -errno with a
 * sentence in err.
 */
#ifndef DD_ESTIMATE_H
#define DD_ESTIMATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define DD_ESTIMATE_MAX_PIDS 4096

/* Figures of one process. pages_saved_if_merged is for the process alone. */
struct dd_estimate_pid {
	pid_t pid;
	uid_t uid;
	char comm[16];
	uint64_t vmas;			/* private anonymous writable mappings read */
	uint64_t pages_mapped;		/* pages of address space in them */
	uint64_t pages_present;		/* in RAM */
	uint64_t pages_swapped;		/* swapped out: not read */
	uint64_t pages_zero_mapped;	/* present on the kernel's zero page: nothing to save */
	uint64_t pages_already_shared;	/* same frame as a page read before (fork) */
	uint64_t pages_unreadable;	/* unmapped or unreadable by the time of reading */
	uint64_t pages_scanned;		/* read and checksummed */
	uint64_t zero_pages;		/* scanned and all zero */
	uint64_t distinct;		/* distinct non-zero contents within the process */
	uint64_t pages_saved_if_merged; /* (pages_scanned - zero_pages) - distinct */
};

struct dd_estimate {
	size_t npids;
	struct dd_estimate_pid *pids; /* in the order given */
	bool pfn_visible;	      /* frame numbers readable: sharing and zero page seen */
	uint64_t pages_scanned;
	uint64_t zero_pages;
	uint64_t distinct;		/* distinct non-zero contents over all processes */
	uint64_t pages_saved_if_merged; /* (pages_scanned - zero_pages) - distinct */
	uint64_t pages_saved_within;	/* sum of the processes' own savings */
	uint64_t pages_saved_across;	/* the rest: duplicates between processes */
	uint64_t pages_zero_mapped, pages_already_shared, pages_swapped, pages_unreadable;
	uint64_t hash_collisions; /* equal checksums, different contents */
	uint64_t elapsed_ms;
	bool mergeable_only; /* dd_estimate_run_mergeable() */
};

/*
 * Estimate over pids[0..n) (distinct, 1..DD_ESTIMATE_MAX_PIDS of them).
 * Returns 0; -EINVAL (no pids, too many, a pid twice), -ESRCH (no such
 * process, or it exited), -EACCES / -EPERM (not allowed to read it), -ENOMEM,
 * with a sentence naming the pid in err. Free the result with
 * dd_estimate_free().
 */
int dd_estimate_run(const pid_t *pids, size_t n, struct dd_estimate *out, char *err, size_t errlen);

/* A range of a process's address space, [start, end). */
struct dd_estimate_range {
	pid_t pid;
	uint64_t start, end;
};

/*
 * The same over the memory the processes offer for merging only: the
 * mappings they marked madvise(MADV_MERGEABLE) for kernel KSM (VmFlags "mg"
 * in /proc/PID/smaps), and the ranges given in offered[] (what they registered
 * with dedupd: dedupctl asks the daemon). What a deduplication engine can
 * reach, as against all of the processes' private memory.
 */
int dd_estimate_run_mergeable(const pid_t *pids, size_t n, const struct dd_estimate_range *offered,
			      size_t noffered, struct dd_estimate *out, char *err, size_t errlen);

/* Free what dd_estimate_run() allocated; NULL-safe. */
void dd_estimate_free(struct dd_estimate *e);

#endif
