/* SPDX-License-Identifier: MIT */
/* Reading /proc/PID/maps: which memory may be registered, and VMA counts. */
#ifndef DD_PROCMAPS_H
#define DD_PROCMAPS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/*
 * Check that [addr, addr+len) of pid is wholly mapped by private, readable and
 * writable VMAs that are anonymous or dedupd store mappings. 0, or -EFAULT
 * (a hole), -EINVAL (shared, file-backed, read-only or locked memory) or
 * -errno, with a sentence in err.
 */
int dd_maps_check_range(const char *maps_path, uint64_t addr, uint64_t len, char *err,
			size_t errlen);

/* One VMA of a maps file: its range, and the file it maps (ino 0 for
 * anonymous memory) from which offset. */
struct dd_vma {
	uint64_t start, end;
	uint64_t off;
	unsigned long ino;
};

/*
 * Read every VMA of the process whose maps file is maps_path into *v (grown
 * with realloc; *cap is its size in entries), in address order. The number
 * read, or -errno. The file is read in pieces, so the list is only as
 * consistent as the process's mappings held still meanwhile.
 */
long dd_maps_read(const char *maps_path, struct dd_vma **v, size_t *cap);

/* Number of VMAs of pid (lines of its maps file), or -errno. */
long dd_maps_count(const char *maps_path);

/* This process's resident anonymous memory in bytes (RssAnon), or 0. */
uint64_t dd_self_rss_anon_bytes(void);

/* vm.max_map_count, or 65530 if unreadable. */
long dd_max_map_count(void);

#endif
