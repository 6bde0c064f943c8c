// SPDX-License-Identifier: MIT
/*
 * The (share domain, checksum) multimap (see table.h) on liburcu's cds_lfht.
 *
 *   struct dd_table   the cds_lfht and our own node count. cds_lfht can count
 *                     only by walking every node (cds_lfht_count_nodes); the
 *                     scanner reads the count for its statistics, so we keep
 *                     an atomic counter, moved by adds and successful dels.
 *   key               (domain, csum). The bucket hash mixes both, bijectively
 *                     in csum for each domain, and cds_lfht keeps all 64 bits
 *                     of it (bit-reversed) in the node and calls match_key()
 *                     only for nodes whose hash is equal. So match_key() asks
 *                     the owner only for the domain, and a node needs no key
 *                     fields: 16 bytes, where the scanner has one per unique
 *                     page.
 *   dd_table_clear()  removes every node and hands them all to ONE call_rcu()
 *                     callback, listed in an array allocated up front (a node
 *                     has no room to chain them, and its linkage must stay
 *                     intact for readers until the grace period ends).
 *
 * Sizing is ours, not CDS_LFHT_AUTO_RESIZE's: liburcu grows a table only once
 * it holds 8 nodes per bucket, and a lookup then walks several nodes, each a
 * cache miss (a sixth of the scan thread's time while W1 converged). And
 * liburcu does not tell its size, which the scanner counts in its metadata.
 * dd_table_fit(), called by the scan threads between batches, keeps 0.5 to 2
 * nodes per bucket (adds never allocate: cds_lfht_resize() does, in the
 * fitting thread), never going below the initial size.
 */
#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "hash/table.h"

/* 2^24 buckets of 16 bytes: 256 MiB up front is enough; the table grows past it. */
#define MAX_INIT_BUCKETS (1UL << 24)
#define MAX_BUCKETS (1UL << 31)

_Static_assert(sizeof(unsigned long) == sizeof(uint64_t),
	       "cds_lfht must keep the whole 64-bit hash for keyless nodes");
_Static_assert(sizeof(struct dd_table_node) == 16, "table node must stay 16 bytes");

struct dd_table {
	struct cds_lfht *ht;
	dd_table_domain_fn domain_of;
	atomic_ulong nr_nodes; /* nodes added and not yet removed */
	unsigned long min_size;
	atomic_ulong size;	    /* buckets, as last resized */
	pthread_mutex_t fit_lock; /* one resize at a time, and in order */
};

struct table_key {
	dd_table_domain_fn domain_of;
	uint32_t domain;
};

/* Nodes removed by one dd_table_clear(), released after one grace period. */
struct clear_batch {
	struct rcu_head rcu;
	void (*release)(struct dd_table_node *n);
	size_t n, cap;
	struct dd_table_node *nodes[];
};

unsigned long dd_table_key_hash(uint32_t domain, uint64_t csum)
{
	/* An odd multiplier, then murmur3's fmix64: both bijective, so for one
	 * checksum every domain gets its own hash. */
	uint64_t h = csum + (uint64_t)domain * 0x9e3779b97f4a7c15ULL;

	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ULL;
	h ^= h >> 33;
	return h;
}

static int match_key(struct cds_lfht_node *ln, const void *key)
{
	const struct dd_table_node *n = caa_container_of(ln, struct dd_table_node, node);
	const struct table_key *k = key;

	/* cds_lfht compared the full hash already (see the top of the file). */
	return k->domain_of(n) == k->domain;
}

struct dd_table *dd_table_new(unsigned long init_buckets, dd_table_domain_fn domain_of)
{
	unsigned long size = 1;
	struct dd_table *t;

	while (size < init_buckets && size < MAX_INIT_BUCKETS)
		size <<= 1;
	t = calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	t->domain_of = domain_of;
	t->min_size = size;
	atomic_init(&t->size, size);
	pthread_mutex_init(&t->fit_lock, NULL);
	t->ht = cds_lfht_new(size, size, MAX_BUCKETS, 0, NULL);
	if (!t->ht) {
		dd_table_free(t);
		errno = ENOMEM;
		return NULL;
	}
	return t;
}

void dd_table_free(struct dd_table *t)
{
	int r;

	if (!t)
		return;
	if (t->ht) {
		r = cds_lfht_destroy(t->ht, NULL);
		assert(r == 0 && "dd_table_free() of a non-empty table");
		(void)r;
	}
	pthread_mutex_destroy(&t->fit_lock);
	free(t);
}

void dd_table_add(struct dd_table *t, struct dd_table_node *n, uint32_t domain, uint64_t csum)
{
	assert(t->domain_of(n) == domain);
	cds_lfht_node_init(&n->node);
	cds_lfht_add(t->ht, dd_table_key_hash(domain, csum), &n->node);
	atomic_fetch_add_explicit(&t->nr_nodes, 1, memory_order_relaxed);
}

int dd_table_del(struct dd_table *t, struct dd_table_node *n)
{
	if (cds_lfht_del(t->ht, &n->node))
		return -ENOENT;
	atomic_fetch_sub_explicit(&t->nr_nodes, 1, memory_order_relaxed);
	return 0;
}

int dd_table_for_each_dup(struct dd_table *t, uint32_t domain, uint64_t csum, dd_table_visit_fn fn,
			  void *arg)
{
	const struct table_key key = {.domain_of = t->domain_of, .domain = domain};
	struct cds_lfht_iter iter;
	struct cds_lfht_node *ln;
	int r;

	cds_lfht_lookup(t->ht, dd_table_key_hash(domain, csum), match_key, &key, &iter);
	while ((ln = cds_lfht_iter_get_node(&iter))) {
		r = fn(caa_container_of(ln, struct dd_table_node, node), arg);
		if (r)
			return r;
		cds_lfht_next_duplicate(t->ht, match_key, &key, &iter);
	}
	return 0;
}

unsigned long dd_table_node_hash(const struct dd_table_node *n)
{
	unsigned long r = n->node.reverse_hash, h = 0;

	for (unsigned int i = 0; i < 64; i++, r >>= 1)
		h = (h << 1) | (r & 1);
	return h;
}

static unsigned long pow2_at_least(unsigned long n)
{
	unsigned long p = 1;

	while (p < n && p < MAX_BUCKETS)
		p <<= 1;
	return p;
}

void dd_table_fit(struct dd_table *t)
{
	unsigned long n, size, want;

	if (pthread_mutex_trylock(&t->fit_lock))
		return; /* another thread is fitting it */
	n = dd_table_count(t);
	size = atomic_load(&t->size);
	want = size;
	if (n > 2 * size)
		want = pow2_at_least(n);
	else if (n < size / 8)
		want = pow2_at_least(2 * n);
	if (want < t->min_size)
		want = t->min_size;
	if (want != size) {
		cds_lfht_resize(t->ht, want);
		atomic_store(&t->size, want);
	}
	pthread_mutex_unlock(&t->fit_lock);
}

size_t dd_table_bucket_bytes(struct dd_table *t)
{
	return atomic_load(&t->size) * sizeof(struct cds_lfht_node);
}

unsigned long dd_table_count(struct dd_table *t)
{
	return atomic_load_explicit(&t->nr_nodes, memory_order_relaxed);
}

static void release_batch(struct rcu_head *head)
{
	struct clear_batch *b = caa_container_of(head, struct clear_batch, rcu);

	for (size_t i = 0; i < b->n; i++)
		b->release(b->nodes[i]);
	free(b);
}

long dd_table_clear(struct dd_table *t, void (*release)(struct dd_table_node *n))
{
	struct clear_batch *b = NULL;
	struct cds_lfht_iter iter;
	struct cds_lfht_node *ln;
	struct dd_table_node *n;
	long removed = 0;

	if (release) {
		/* Room for every node there is now, and a few added meanwhile;
		 * nodes beyond that stay (allowed: they were added concurrently). */
		size_t cap = dd_table_count(t) + 64;

		b = calloc(1, sizeof(*b) + cap * sizeof(b->nodes[0]));
		if (!b)
			return -ENOMEM;
		b->release = release;
		b->cap = cap;
	}
	rcu_read_lock();
	for (cds_lfht_first(t->ht, &iter); (ln = cds_lfht_iter_get_node(&iter));
	     cds_lfht_next(t->ht, &iter)) {
		n = caa_container_of(ln, struct dd_table_node, node);
		if (b && b->n == b->cap)
			break;
		if (dd_table_del(t, n))
			continue; /* another thread removed it: its node to dispose of */
		removed++;
		if (b)
			b->nodes[b->n++] = n;
	}
	if (b && removed)
		call_rcu(&b->rcu, release_batch);
	rcu_read_unlock();
	if (b && !removed)
		free(b);
	return removed;
}
