// SPDX-License-Identifier: MIT
/*
 * The (share domain, checksum) multimap (see table.h) on liburcu's cds_lfht.
 *
 *   struct dd_table   the cds_lfht and our own node count. cds_lfht can count
 *                     only by walking every node (cds_lfht_count_nodes); the
 *                     scanner reads the count for its statistics, so we keep
 *                     an atomic counter, moved by adds and successful dels.
 *   key               (domain, csum). The bucket hash mixes both, and
 *                     match_key() compares both, because cds_lfht calls it
 *                     only for nodes whose full hash is equal.
 *   dd_table_clear()  removes every node and hands them all to ONE call_rcu()
 *                     callback, chained through their own rcu_head (unused
 *                     until then): the unstable table is emptied every pass,
 *                     and one callback per pass beats one per node.
 *
 * Tables grow with CDS_LFHT_AUTO_RESIZE (resizes run in liburcu's worker
 * thread, so adds never allocate) and never shrink below their initial size,
 * which keeps the unstable table from shrinking and regrowing every pass.
 */
#include <assert.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "hash/table.h"

/* 2^24 buckets of 16 bytes: 256 MiB up front is enough; the table grows past it. */
#define MAX_INIT_BUCKETS (1UL << 24)

struct dd_table {
	struct cds_lfht *ht;
	atomic_ulong nr_nodes; /* nodes added and not yet removed */
};

struct table_key {
	uint64_t csum;
	uint32_t domain;
};

/* Nodes removed by one dd_table_clear(), released after one grace period. */
struct clear_batch {
	struct rcu_head rcu;
	void (*release)(struct dd_table_node *n);
	struct cds_wfcq_node *first; /* chained through dd_table_node.rcu.next */
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

	return n->csum == k->csum && n->domain == k->domain;
}

struct dd_table *dd_table_new(unsigned long init_buckets)
{
	unsigned long size = 1;
	struct dd_table *t;

	while (size < init_buckets && size < MAX_INIT_BUCKETS)
		size <<= 1;
	t = calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	t->ht = cds_lfht_new(size, size, 0, CDS_LFHT_AUTO_RESIZE | CDS_LFHT_ACCOUNTING, NULL);
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
	free(t);
}

void dd_table_add(struct dd_table *t, struct dd_table_node *n, uint32_t domain, uint64_t csum)
{
	n->csum = csum;
	n->domain = domain;
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
	const struct table_key key = {.csum = csum, .domain = domain};
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

unsigned long dd_table_count(struct dd_table *t)
{
	return atomic_load_explicit(&t->nr_nodes, memory_order_relaxed);
}

static void release_batch(struct rcu_head *head)
{
	struct clear_batch *b = caa_container_of(head, struct clear_batch, rcu);
	struct cds_wfcq_node *link = b->first;
	struct dd_table_node *n;

	while (link) {
		n = caa_container_of(link, struct dd_table_node, rcu.next);
		link = link->next; /* before release() frees n */
		b->release(n);
	}
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
		b = calloc(1, sizeof(*b));
		if (!b)
			return -ENOMEM;
		b->release = release;
	}
	rcu_read_lock();
	for (cds_lfht_first(t->ht, &iter); (ln = cds_lfht_iter_get_node(&iter));
	     cds_lfht_next(t->ht, &iter)) {
		n = caa_container_of(ln, struct dd_table_node, node);
		if (dd_table_del(t, n))
			continue; /* another thread removed it: its node to dispose of */
		removed++;
		if (b) {
			n->rcu.next.next = b->first;
			b->first = &n->rcu.next;
		}
	}
	if (b && removed)
		call_rcu(&b->rcu, release_batch);
	rcu_read_unlock();
	if (b && !removed)
		free(b);
	return removed;
}
