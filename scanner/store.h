/* SPDX-License-Identifier: MIT */
/*
 * The stable store of one share domain: a memfd whose 4 KiB slots hold the one
 * copy of each shared page. Clients map slots MAP_PRIVATE (their writes are
 * copied by the kernel); the daemon maps the whole file MAP_SHARED to fill and
 * compare slots. A slot's content never changes while it is allocated.
 *
 * Each allocated slot has a stable-table node (key: domain, checksum), a count
 * of the owner pages we know map it (sharers) and of merges queued on it
 * (pending). All calls are thread-safe; store pages are read lock-free.
 */
#ifndef DD_STORE_H
#define DD_STORE_H

#include <stdbool.h>
#include <stdint.h>

#include "hash/table.h"

struct dd_store;

struct dd_stable {
	struct dd_table_node tn;
	struct dd_store *store;
	uint32_t slot;
	bool dead;
	bool listed; /* in the stable table (a reserved slot's node is not, until filled) */
}; /* 32 bytes; freed in batches, one call_rcu() per GC run (no rcu_head) */

/* A stable node's share domain (its store's), for dd_table_new(). */
uint32_t dd_stable_domain(const struct dd_table_node *tn);

/* A new store for domain, whose nodes live in table. NULL on failure (errno). */
struct dd_store *dd_store_new(uint32_t domain, struct dd_table *stable);
void dd_store_free(struct dd_store *st); /* NULL-safe; nodes removed (caller in RCU) */

/*
 * Take over the store memfd of a previous daemon (fd, owned from now on,
 * found through a client's /proc/PID/map_files): every slot with data is
 * hashed into the stable table again, with no sharers yet. NULL on failure
 * (errno; fd closed).
 */
struct dd_store *dd_store_adopt(uint32_t domain, struct dd_table *stable, int fd);

/* A registered page that still maps slot: count it as a sharer. 0, or
 * -ENOENT if the slot holds nothing. */
int dd_store_adopt_sharer(struct dd_store *st, uint32_t slot);

/* Is this store the file with inode number ino (from /proc/PID/maps)? */
bool dd_store_is_file(const struct dd_store *st, unsigned long ino);

int dd_store_memfd(const struct dd_store *st);
/* The store as clients get it: read-only, and only the daemon's user may
 * open the file again for writing. */
int dd_store_client_fd(const struct dd_store *st);
/* A slot's page in the daemon's mapping of the store. The merge path
 * compares through it: the warmer's populate maps the pages it allocates,
 * and a read fault maps 16 at a time, so a compare costs no syscall (a pread
 * here costs ~5x the memcmp). Only for a slot held (reserved or pending). */
const void *dd_store_page(const struct dd_store *st, uint32_t slot);

/*
 * Reserve a slot for a page not read yet, with `pending` merges pending on it,
 * preferring the slot after `hint` (so runs of duplicates get consecutive
 * slots and the kernel can merge their VMAs). -ENOSPC/-errno on failure. It
 * is found by nobody until it is written and published (dd_store_fill(), or
 * dd_store_slot_mem() then dd_store_publish()); dd_store_unreserve() gives it
 * back unwritten.
 */
int64_t dd_store_reserve(struct dd_store *st, int64_t hint, uint32_t pending);

/*
 * A reserved slot's page in the daemon's mapping, to be written: the merge
 * path has the kernel copy the frozen page straight into it
 * (process_vm_readv(); a fault there is an error from the call, not a
 * signal), one copy instead of a copy out and a pwrite in.
 */
void *dd_store_slot_mem(struct dd_store *st, uint32_t slot);

/* Put reserved slots [slot, slot+n), written through dd_store_slot_mem(),
 * in the stable table. Caller holds rcu_read_lock(). */
void dd_store_publish(struct dd_store *st, uint32_t slot, uint32_t n);

/* Write n pages into reserved slots [slot, slot+n) with one pwrite and
 * publish them. 0 or -errno (nothing listed). Caller holds rcu_read_lock(). */
int dd_store_fill(struct dd_store *st, uint32_t slot, const void *pages, uint32_t n);

/* Give back a reserved slot that was never filled (its pending merges
 * dropped); hole: a span maps over it, so it becomes a hole (see below). */
void dd_store_unreserve(struct dd_store *st, uint32_t slot, bool hole);

/*
 * Spans (scanner.c): one mapping of consecutive store slots over a stretch
 * of a process where only some pages are shared; the process keeps its own
 * pages at the others. A free slot under a span becomes a hole: taken,
 * empty, found by nobody, so that a page the process discards there reads
 * zeros, and freed by dd_store_gc() once no mapping covers it.
 * dd_store_hold_holes() makes the free slots of [slot, slot+n) holes and
 * takes a pending reference on every slot there; dd_store_release_holes()
 * drops them.
 */
void dd_store_hold_holes(struct dd_store *st, uint32_t slot, uint32_t n);
void dd_store_release_holes(struct dd_store *st, uint32_t slot, uint32_t n);

/*
 * Allocate the pages of up to STORE_WARM_CHUNK free slots from the
 * allocation cursor on, so that up to `want` free slots there are "warm":
 * filling one is a copy into a page that is there, not an allocation. No
 * content changes (a populate leaves a present page alone). Returns slots
 * warmed (0: enough already, or no free slot ahead), or -errno (none kept).
 */
int dd_store_warm(struct dd_store *st, uint32_t want);
/* Give back every warm slot's page (punched). Returns how many. */
uint32_t dd_store_cool(struct dd_store *st);
/* Slots reserved since the store was made: the demand the warmer follows. */
uint64_t dd_store_reserved(struct dd_store *st);

/* Take a pending reference on the slot of node if it is still live. */
bool dd_store_try_pend(struct dd_stable *node);

/* A pending merge on slot became a sharer (merged) or was dropped. */
void dd_store_pend_done(struct dd_store *st, uint32_t slot, bool merged);

/* A sharer stopped mapping slot (COW break, unmap, exit). */
void dd_store_unshare(struct dd_store *st, uint32_t slot);

/*
 * Free slots with no sharers and no pending merges that no VMA of any process
 * maps any more (found through /proc/PID/maps; a forked child of a client maps
 * slots we never counted). Returns slots freed. Caller holds rcu_read_lock().
 */
int dd_store_gc(struct dd_store *st);

struct dd_store_stats {
	uint64_t slots_used;    /* allocated slots (store pages held) */
	uint64_t slots_shared;  /* slots with at least one sharer: pages_shared */
	uint64_t sharers;       /* sum of sharers over slots */
	uint64_t meta_bytes;    /* our bookkeeping for this store */
	uint64_t freed;         /* slots freed so far */
	uint64_t warm;          /* free slots allocated ahead (dd_store_warm()) */
	uint64_t holes;         /* slots under spans, taken and empty */
};
void dd_store_stats(struct dd_store *st, struct dd_store_stats *out);

#endif
