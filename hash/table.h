/* SPDX-License-Identifier: MIT */
/*
 * A lock-free multimap (share domain, page checksum) -> caller's node, on
 * liburcu's cds_lfht. The scanner keeps its stable and unstable tables here.
 *
 * Nodes are intrusive, as in liburcu's doc/examples/rculfhash: embed a
 * struct dd_table_node in the owner struct and get back to the owner with
 * caa_container_of(). Duplicate keys are allowed and expected: a checksum is
 * only a filter, so the caller byte-compares the page behind every node that
 * dd_table_for_each_dup() visits before trusting it.
 *
 * RCU contract (liburcu memb flavour, <urcu.h>):
 * - Every thread calls rcu_register_thread() before its first call into this
 *   module (dd_table_new() excepted), and rcu_unregister_thread() when done.
 * - dd_table_add(), dd_table_del() and dd_table_for_each_dup() are called
 *   inside rcu_read_lock()/rcu_read_unlock(); a node found by a lookup may be
 *   used until the caller's rcu_read_unlock().
 * - A node may be freed or added again only after a grace period following its
 *   successful dd_table_del(): the owner's own rcu_head with call_rcu(), one
 *   call_rcu() for a batch of nodes, or synchronize_rcu().
 * - Before the process exits or unloads code that call_rcu() callbacks run,
 *   call rcu_barrier() so that pending callbacks (dd_table_clear's included)
 *   have run.
 * All functions are thread-safe and none logs.
 */
#ifndef DD_TABLE_H
#define DD_TABLE_H

#include <stddef.h>
#include <stdint.h>

#include <urcu.h>
#include <urcu/rculfhash.h>

struct dd_table;

struct dd_table_node {
	struct cds_lfht_node node; /* table linkage and the key's hash; the table's while added */
};

/*
 * The share domain of node @n, which the owner keeps (the node holds no key of
 * its own, so that a node is 16 bytes: the scanner has one per unique page).
 * It must not change while @n is in the table. The checksum needs no field:
 * cds_lfht keeps the full 64-bit bucket hash in the node and offers a lookup
 * only nodes whose hash is equal, and the hash is a bijection of the checksum
 * for each domain (dd_table_key_hash()), so equal hash and equal domain mean
 * an equal key.
 */
typedef uint32_t (*dd_table_domain_fn)(const struct dd_table_node *n);

/*
 * A new, empty table starting with @init_buckets buckets (rounded up to a power
 * of two, 0 taken as 1, at most 2^24), whose nodes' domains @domain_of tells.
 * It does not resize by itself: see dd_table_fit(). Returns NULL on ENOMEM
 * (errno is set). Needs no RCU registration.
 */
struct dd_table *dd_table_new(unsigned long init_buckets, dd_table_domain_fn domain_of);

/*
 * Destroy @t. NULL-safe. The table must be empty (dd_table_clear() first);
 * freeing a non-empty table is a programmer error (assert). Must not be called
 * inside rcu_read_lock() nor from a call_rcu() callback.
 */
void dd_table_free(struct dd_table *t);

/*
 * Add @n under key (@domain, @csum), whether or not other nodes have that key.
 * The owner's domain_of(@n) must already return @domain. @n must not be in any
 * table. Never fails: cds_lfht allocates only when it
 * resizes, and does that in its own worker thread. Call inside rcu_read_lock().
 */
void dd_table_add(struct dd_table *t, struct dd_table_node *n, uint32_t domain, uint64_t csum);

/*
 * Remove @n from @t. Returns 0, or -ENOENT if @n was already removed (by
 * another thread, or by dd_table_clear()); of racing deleters exactly one gets
 * 0 and that one owns the node's disposal. Call inside rcu_read_lock().
 */
int dd_table_del(struct dd_table *t, struct dd_table_node *n);

/* Called for each node under a key; return non-zero to stop the walk. */
typedef int (*dd_table_visit_fn)(struct dd_table_node *n, void *arg);

/*
 * Call @fn(n, @arg) for every node under key (@domain, @csum); nodes under
 * other keys (another domain, or another checksum in the same bucket) are never
 * visited. Nodes added or removed concurrently may or may not be visited.
 * @fn may call dd_table_del() on the node it is given.
 * Returns the first non-zero value @fn returned, or 0 if every call returned 0
 * or there was no node. Call inside rcu_read_lock().
 */
int dd_table_for_each_dup(struct dd_table *t, uint32_t domain, uint64_t csum, dd_table_visit_fn fn,
			  void *arg);

/*
 * Resize @t for its node count if that has left 0.5 to 2 nodes per bucket
 * (never below the initial size). Blocks for the resize (it allocates, and a
 * shrink waits for a grace period); returns at once if another thread is
 * fitting @t. Call from an RCU-registered thread, NOT inside rcu_read_lock(),
 * now and then (the scanner does between batches). Lookups and adds may run
 * meanwhile.
 */
void dd_table_fit(struct dd_table *t);

/* Memory of @t's buckets (16 bytes each), as last fitted. */
size_t dd_table_bucket_bytes(struct dd_table *t);

/* The bucket hash (dd_table_key_hash()) of the key @n was added under. */
unsigned long dd_table_node_hash(const struct dd_table_node *n);

/*
 * Number of nodes in @t: exact when no add or del is in flight, otherwise
 * somewhere between the counts before and after them. O(1), no RCU needed.
 */
unsigned long dd_table_count(struct dd_table *t);

/*
 * Remove every node of @t. For each node this call removed, @release(n) runs
 * in liburcu's call_rcu thread after a grace period, so @release may free the
 * node; nodes that another thread removes concurrently stay that thread's to
 * dispose of. @release may be NULL if the caller disposes of the nodes itself
 * (after its own grace period). Nodes added concurrently may survive. The read
 * lock is taken inside, so the caller may or may not hold it.
 * Returns the number of nodes removed (so @release will run that many times),
 * or -ENOMEM, in which case nothing was removed. With @release, nodes added
 * while it runs beyond the count it found at the start are left in the table.
 */
long dd_table_clear(struct dd_table *t, void (*release)(struct dd_table_node *n));

/*
 * The bucket hash of key (@domain, @csum): fmix64(csum + domain * 0x9e3779b97f4a7c15),
 * bijective in each part, so one checksum gets a different hash in every
 * domain. Exposed so that tests can force hash collisions between keys.
 */
unsigned long dd_table_key_hash(uint32_t domain, uint64_t csum);

#endif /* DD_TABLE_H */
