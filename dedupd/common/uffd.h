/* SPDX-License-Identifier: MIT */
/*
 * userfaultfd names that Debian 12's <linux/userfaultfd.h> (from 6.1) lacks; the
 * values are the kernel's (include/uapi/linux/userfaultfd.h), which 6.18 has.
 */
#ifndef DD_UFFD_H
#define DD_UFFD_H

#include <linux/userfaultfd.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Does descriptor fd of this process name a userfaultfd? (No allocation:
 * libdedup's agent calls it on its own stack.) */
static inline bool dd_is_userfaultfd(int fd)
{
	char path[64], target[64];
	ssize_t n;

	if (fd < 0)
		return false;
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	n = readlink(path, target, sizeof(target) - 1);
	if (n <= 0)
		return false;
	target[n] = 0;
	return !strcmp(target, "anon_inode:[userfaultfd]");
}

/* The features a userfaultfd of this process was opened with (the kernel's
 * word, from its fdinfo "API:" line), or -1 if they cannot be read. */
static inline long long dd_uffd_features(int fd)
{
	char path[64], buf[512], *p;
	unsigned long long api;
	unsigned int feat;
	ssize_t n;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	f = fopen(path, "re");
	if (!f)
		return -1;
	n = (ssize_t)fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	p = strstr(buf, "\nAPI:");
	if (!p || sscanf(p + 5, "%llx:%x:", &api, &feat) != 2)
		return -1;
	return feat;
}

#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON (1 << 14)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE (1 << 16)
#endif
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

/*
 * What libdedup asks for: write-protect faults (also on the remapped store
 * pages, which are shmem), and remap events (mremap() moving registered
 * memory). Not unmap or remove events: each of dedupd's own remaps and zaps
 * would raise one, and the agent's mmap() or madvise() would wait until the
 * daemon had read it, a wake-up of another thread per run. dedupd finds the
 * application's unmaps in /proc/PID/maps instead (scanner.c, reconcile()).
 * It still follows these events from clients that ask for them.
 */
#define DD_UFFD_FEATURES                                                                  \
	(UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_HUGETLBFS_SHMEM |               \
	 UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_THREAD_ID)

/* /proc/PID/pagemap bits (Documentation/admin-guide/mm/pagemap.rst). */
#define DD_PM_PRESENT (1ULL << 63)
#define DD_PM_SWAP (1ULL << 62)
#define DD_PM_FILE (1ULL << 61)
#define DD_PM_EXCLUSIVE (1ULL << 56)
#define DD_PM_UFFD_WP (1ULL << 57)
#define DD_PM_PFN_MASK ((1ULL << 55) - 1)

/*
 * PAGEMAP_SCAN (Linux 6.7): the kernel walks the page tables and returns
 * runs of pages by category, skipping what was never populated. Defined here
 * because the distribution's kernel headers predate it.
 */
#define DD_PAGEMAP_SCAN _IOWR('f', 16, struct dd_pm_scan_arg)
#define DD_PAGE_IS_PRESENT (1ULL << 3)
#define DD_PAGE_IS_SWAPPED (1ULL << 4)
#define DD_PAGE_IS_PFNZERO (1ULL << 5)
#define DD_PAGE_IS_HUGE (1ULL << 6) /* part of a transparent huge page */

struct dd_page_region {
	uint64_t start, end, categories;
};

struct dd_pm_scan_arg {
	uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
	uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};

#endif
