// SPDX-License-Identifier: MIT
/*
 * Page checksums (see pagehash.h): run-time choice of the XXH3 variant, and the
 * zero-page test.
 *
 * The checksum runs on every page of every pass, so its speed bounds the scan
 * rate. The variants in pagehash_<isa>.c compile XXH3 inline for SSE2, AVX2
 * and AVX-512, and the first call here picks the widest one the CPU and
 * kernel support (__builtin_cpu_supports checks both). Widest wins because the
 * scanner hashes pages right after copying them in with process_vm_readv.
 * Measured on this machine kind (EPYC, where AVX-512 costs no clock speed),
 * best runs, GB/s:
 *                                      sse2   avx2   avx512
 *   64 pages in L2                       33     65      103
 *   copy 64 pages from DRAM, hash them   16     22       24
 *   hash straight from DRAM              21     31       23
 * (Only the last, which the scanner does not do, favours AVX2.) The choice is
 * made once and published with an atomic pointer, so racing first calls agree
 * and later calls cost one load and an indirect call (~1 ns, against 40-120 ns
 * for a page in cache).
 */
#include <emmintrin.h>
#include <errno.h>
#include <stdatomic.h>

#include "hash/pagehash.h"
#include "hash/pagehash_impl.h"

#if !defined(__x86_64__)
#error "hash/ supports x86-64 only"
#endif

/* Widest first. */
static const struct dd_hash_variant *const preference[] = {&dd_hash_avx512, &dd_hash_avx2,
							   &dd_hash_sse2};

static _Atomic(const struct dd_hash_variant *) active;

bool dd_hash_variant_usable(const struct dd_hash_variant *v)
{
	__builtin_cpu_init();
	switch (v->isa) {
	case DD_HASH_ISA_SSE2:
		return true;
	case DD_HASH_ISA_AVX2:
		return __builtin_cpu_supports("avx2");
	case DD_HASH_ISA_AVX512:
		return __builtin_cpu_supports("avx512f");
	}
	return false;
}

static const struct dd_hash_variant *pick_variant(void)
{
	for (size_t i = 0; i < sizeof(preference) / sizeof(preference[0]); i++)
		if (dd_hash_variant_usable(preference[i]))
			return preference[i];
	return &dd_hash_sse2;
}

const struct dd_hash_variant *dd_hash_variant_active(void)
{
	const struct dd_hash_variant *v = atomic_load_explicit(&active, memory_order_acquire);

	if (!v) {
		v = pick_variant();
		atomic_store_explicit(&active, v, memory_order_release);
	}
	return v;
}

uint64_t dd_page_hash(const void *page)
{
	return dd_hash_variant_active()->hash(page);
}

int dd_page_hash_batch(const void *pages, size_t n, uint64_t *out)
{
	if (!n)
		return 0;
	if (!pages || !out)
		return -EINVAL;
	dd_hash_variant_active()->hash_batch(pages, n, out);
	return 0;
}

const char *dd_hash_impl(void)
{
	return dd_hash_variant_active()->name;
}

/*
 * OR one 64-byte line into a single vector and test it: SSE2 is baseline, and
 * at two loads per cycle this outruns DRAM, so wider variants would not help.
 * A non-zero page usually differs in its first line, so it costs one line.
 */
bool dd_page_is_zero(const void *page)
{
	const unsigned char *p = page;
	const __m128i zero = _mm_setzero_si128();

	for (size_t off = 0; off < DD_PAGE_SIZE; off += 64) {
		__m128i a = _mm_loadu_si128((const __m128i *)(p + off));
		__m128i b = _mm_loadu_si128((const __m128i *)(p + off + 16));
		__m128i c = _mm_loadu_si128((const __m128i *)(p + off + 32));
		__m128i d = _mm_loadu_si128((const __m128i *)(p + off + 48));
		__m128i v = _mm_or_si128(_mm_or_si128(a, b), _mm_or_si128(c, d));

		if (_mm_movemask_epi8(_mm_cmpeq_epi8(v, zero)) != 0xffff)
			return false;
	}
	return true;
}
