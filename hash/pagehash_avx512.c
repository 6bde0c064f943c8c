// SPDX-License-Identifier: MIT
/*
 * The AVX-512 hash variant: XXH3 with 512-bit vectors, AVX-512F only (~100 GB/s
 * in cache, ~23 GB/s from DRAM on this machine kind). The target pragma
 * applies to this file only, so nothing here runs unless
 * dd_hash_variant_usable() said the CPU and kernel support AVX-512F.
 */
#pragma GCC target("avx512f")
#pragma GCC optimize("unroll-loops") /* see pagehash_impl.h */
#define XXH_INLINE_ALL
#define XXH_VECTOR XXH_AVX512
#include <xxhash.h>

#include "hash/pagehash_impl.h"

#if XXH_VECTOR != XXH_AVX512
#error "xxhash.h did not select its AVX-512 path"
#endif

DD_HASH_DEFINE_VARIANT(dd_hash_avx512, DD_HASH_ISA_AVX512, "avx512");
