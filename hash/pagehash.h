/* SPDX-License-Identifier: MIT */
/*
 * Page checksums and zero-page detection.
 *
 * The checksum is a filter, never a proof of equality: callers byte-compare
 * every candidate before merging (DESIGN.md section 3). All functions here are
 * thread-safe, do not allocate, do not log and need no RCU registration.
 */
#ifndef DD_PAGEHASH_H
#define DD_PAGEHASH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DD_PAGE_SIZE 4096u
#define DD_PAGE_SHIFT 12

_Static_assert(DD_PAGE_SIZE == 1u << DD_PAGE_SHIFT, "DD_PAGE_SIZE and DD_PAGE_SHIFT disagree");

/*
 * XXH3-64 with seed 0 of the DD_PAGE_SIZE bytes at @page (any alignment).
 * Bit-identical to XXH3_64bits(page, DD_PAGE_SIZE) of the system libxxhash on
 * every code path. Never fails.
 */
uint64_t dd_page_hash(const void *page);

/*
 * True if all DD_PAGE_SIZE bytes at @page (any alignment) are zero. Stops at
 * the first 64-byte line that holds a non-zero byte.
 */
bool dd_page_is_zero(const void *page);

/*
 * Hash @n consecutive pages starting at @pages into out[0..n-1], each
 * out[i] == dd_page_hash(pages + i * DD_PAGE_SIZE).
 * Returns 0, or -EINVAL if n > 0 and @pages or @out is NULL. n == 0 is a no-op.
 */
int dd_page_hash_batch(const void *pages, size_t n, uint64_t *out);

/*
 * The instruction set of the hash path this process uses: "avx512", "avx2" or
 * "sse2". Chosen once, at the first call into this module, from the CPU's
 * features (the kernel must also have enabled the vector state). Never NULL.
 */
const char *dd_hash_impl(void);

#endif /* DD_PAGEHASH_H */
