/* SPDX-License-Identifier: MIT */
/*
 * Internal to hash/ (and its tests): the per-instruction-set variants behind
 * dd_page_hash().
 *
 * Each hash/pagehash_<isa>.c compiles xxHash inline (XXH_INLINE_ALL) for one
 * vector width under its own `#pragma GCC target`, so the project keeps the
 * baseline x86-64 flags and the CPU picks a variant at run time. Every variant
 * computes the same XXH3-64; only the speed differs.
 *
 * The variants also set `#pragma GCC optimize("unroll-loops")`: at plain -O2,
 * GCC 12 keeps XXH3's 4-lane SSE2 accumulator loop rolled, with the
 * accumulators in memory. Measured on 64 pages in L2 (EPYC, best of 300):
 *            -O2       -O2 + unroll-loops
 *   sse2     18 GB/s   33 GB/s
 *   avx2     63 GB/s   65 GB/s
 *   avx512   84 GB/s  103 GB/s
 * The scanner hashes pages it has just copied in with process_vm_readv, so
 * in-cache speed is the one that counts.
 */
#ifndef DD_PAGEHASH_IMPL_H
#define DD_PAGEHASH_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hash/pagehash.h"

enum dd_hash_isa {
	DD_HASH_ISA_SSE2,   /* baseline x86-64: always usable */
	DD_HASH_ISA_AVX2,   /* needs CPU avx2 and the kernel's YMM state */
	DD_HASH_ISA_AVX512, /* needs CPU avx512f and the kernel's ZMM state */
};

struct dd_hash_variant {
	const char *name;     /* what dd_hash_impl() reports: "sse2", "avx2", "avx512" */
	enum dd_hash_isa isa; /* what the CPU must support to run it */
	uint64_t (*hash)(const void *page);
	void (*hash_batch)(const void *pages, size_t n, uint64_t *out);
};

extern const struct dd_hash_variant dd_hash_sse2;
extern const struct dd_hash_variant dd_hash_avx2;
extern const struct dd_hash_variant dd_hash_avx512;

/* True if this CPU and kernel can run @v. Calling an unusable variant is SIGILL. */
bool dd_hash_variant_usable(const struct dd_hash_variant *v);

/* The variant dd_page_hash() and dd_page_hash_batch() use. Never NULL. */
const struct dd_hash_variant *dd_hash_variant_active(void);

/*
 * The body of one variant. Expand it once in a translation unit that has set
 * XXH_INLINE_ALL, XXH_VECTOR and the matching `#pragma GCC target`, then
 * included <xxhash.h>. The functions are static, so each translation unit
 * keeps its own copy of XXH3 compiled for its own instruction set.
 */
#define DD_HASH_DEFINE_VARIANT(sym, isa_, name_)                                                   \
	static uint64_t sym##_page(const void *page)                                               \
	{                                                                                          \
		return XXH3_64bits(page, DD_PAGE_SIZE);                                            \
	}                                                                                          \
	static void sym##_batch(const void *pages, size_t n, uint64_t *out)                        \
	{                                                                                          \
		const unsigned char *p = pages;                                                    \
                                                                                                   \
		for (size_t i = 0; i < n; i++, p += DD_PAGE_SIZE)                                  \
			out[i] = XXH3_64bits(p, DD_PAGE_SIZE);                                     \
	}                                                                                          \
	const struct dd_hash_variant sym = {                                                       \
	    .name = name_,                                                                         \
	    .isa = isa_,                                                                           \
	    .hash = sym##_page,                                                                    \
	    .hash_batch = sym##_batch,                                                             \
	}

#endif /* DD_PAGEHASH_IMPL_H */
