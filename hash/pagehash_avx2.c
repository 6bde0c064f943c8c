// SPDX-License-Identifier: MIT
/*
 * The AVX2 hash variant: XXH3 with 256-bit vectors (~65 GB/s in cache, ~30 GB/s
 * from DRAM on this machine kind, against ~33 and ~21 for SSE2). The target
 * pragma applies to this file only, so nothing here runs unless
 * dd_hash_variant_usable() said the CPU and kernel support AVX2.
 */
#pragma GCC target("avx2")
#pragma GCC optimize("unroll-loops") /* see pagehash_impl.h */
#define XXH_INLINE_ALL
#define XXH_VECTOR XXH_AVX2
#include <xxhash.h>

#include "hash/pagehash_impl.h"

#if XXH_VECTOR != XXH_AVX2
#error "xxhash.h did not select its AVX2 path"
#endif

DD_HASH_DEFINE_VARIANT(dd_hash_avx2, DD_HASH_ISA_AVX2, "avx2");
