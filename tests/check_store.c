// SPDX-License-Identifier: MIT
/*
 * Unit tests for scanner/store.c, the stable store of one share domain:
 * allocation copies the page into a memfd slot and indexes it in the stable
 * table; runs allocated with a hint get consecutive slots; pending/sharer
 * bookkeeping shows in dd_store_stats; GC punches out (fallocate) exactly the
 * slots with no sharers, no pending merges and no mapping in any other process
 * — a forked child that maps a slot MAP_PRIVATE keeps it alive until it exits.
 * Every test registers with RCU and holds rcu_read_lock() around alloc/gc, as
 * store.h requires.
 */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <urcu.h>

#include "hash/pagehash.h"
#include "hash/table.h"
#include "scanner/store.h"

Suite *store_suite(void);

#define DOMAIN 5u
#define PG DD_PAGE_SIZE

static struct dd_table *table;
static struct dd_store *st;

static void store_setup(void)
{
	rcu_register_thread();
	table = dd_table_new(64, dd_stable_domain);
	ck_assert_ptr_nonnull(table);
	st = dd_store_new(DOMAIN, table);
	ck_assert_ptr_nonnull(st);
	ck_assert_int_ge(dd_store_memfd(st), 0);
}

static void store_teardown(void)
{
	rcu_read_lock();
	dd_store_free(st);
	rcu_read_unlock();
	rcu_barrier(); /* the nodes' call_rcu frees run before the table goes */
	ck_assert_uint_eq(dd_table_count(table), 0);
	dd_table_free(table);
	rcu_unregister_thread();
}

/* Deterministic, distinct page contents. */
static void fill(void *page, uint64_t seed)
{
	uint64_t *w = page;

	for (unsigned j = 0; j < PG / 8; j++) {
		uint64_t x = seed * 0x9e3779b97f4a7c15ULL + j + 1;
		x ^= x >> 31;
		x *= 0xbf58476d1ce4e5b9ULL;
		w[j] = x ^ (x >> 29);
	}
}

static int64_t alloc(const void *page, int64_t hint, uint32_t pending)
{
	int64_t slot;

	slot = dd_store_reserve(st, hint, pending);
	ck_assert_int_ge(slot, 0);
	rcu_read_lock();
	ck_assert_int_eq(dd_store_fill(st, (uint32_t)slot, page, 1), 0);
	rcu_read_unlock();
	return slot;
}

static int gc(void)
{
	int n;

	rcu_read_lock();
	n = dd_store_gc(st);
	rcu_read_unlock();
	ck_assert_int_ge(n, 0);
	return n;
}

static struct dd_store_stats stats(void)
{
	struct dd_store_stats s;

	memset(&s, 0xff, sizeof(s));
	dd_store_stats(st, &s);
	return s;
}

struct find {
	const void *page;
	int found;
	struct dd_stable *node;
};

static int find_visit(struct dd_table_node *n, void *arg)
{
	struct dd_stable *s = caa_container_of(n, struct dd_stable, tn);
	struct find *f = arg;

	if (memcmp(dd_store_page(s->store, s->slot), f->page, PG))
		return 0; /* same checksum, other bytes: the hash is only a filter */
	f->found++;
	f->node = s;
	return 0;
}

/* The stable node holding page, or NULL. Caller holds rcu_read_lock(). */
static struct dd_stable *find_node(const void *page)
{
	struct find f = { .page = page };

	dd_table_for_each_dup(table, DOMAIN, dd_page_hash(page), find_visit, &f);
	ck_assert_int_le(f.found, 1);
	return f.node;
}

static bool page_is_zero_in_store(uint32_t slot)
{
	char buf[PG];

	ck_assert_int_eq(pread(dd_store_memfd(st), buf, PG, (off_t)slot * PG), (ssize_t)PG);
	return dd_page_is_zero(buf) && dd_page_is_zero(dd_store_page(st, slot));
}

static void assert_slot_holds(uint32_t slot, const void *page)
{
	char buf[PG];

	ck_assert_mem_eq(dd_store_page(st, slot), page, PG);
	ck_assert_int_eq(pread(dd_store_memfd(st), buf, PG, (off_t)slot * PG), (ssize_t)PG);
	ck_assert_mem_eq(buf, page, PG);
}

static long store_blocks(void)
{
	struct stat sb;

	ck_assert_int_eq(fstat(dd_store_memfd(st), &sb), 0);
	return (long)sb.st_blocks;
}

/* ---- allocation ---------------------------------------------------------- */

START_TEST(test_alloc_copies_page)
{
	static char page[PG], orig[PG];
	struct dd_store_stats s;
	struct dd_stable *n;
	int64_t slot;
	uint64_t meta0 = stats().meta_bytes;

	fill(page, 1);
	memcpy(orig, page, PG);
	slot = alloc(page, -1, 1);
	memset(page, 0x5a, PG); /* the store holds a copy, not the caller's page */
	assert_slot_holds((uint32_t)slot, orig);

	s = stats();
	ck_assert_uint_eq(s.slots_used, 1);
	ck_assert_uint_eq(s.slots_shared, 0);
	ck_assert_uint_eq(s.sharers, 0);
	ck_assert_uint_eq(s.freed, 0);
	ck_assert_uint_gt(s.meta_bytes, meta0);

	/* Indexed in the stable table under (domain, checksum of the page). */
	ck_assert_uint_eq(dd_table_count(table), 1);
	rcu_read_lock();
	n = find_node(orig);
	ck_assert_ptr_nonnull(n);
	ck_assert_ptr_eq(n->store, st);
	ck_assert_uint_eq(n->slot, slot);
	ck_assert(!n->dead);
	ck_assert_uint_eq(dd_stable_domain(&n->tn), DOMAIN);
	ck_assert_uint_eq(dd_table_node_hash(&n->tn), dd_table_key_hash(DOMAIN, dd_page_hash(orig)));
	ck_assert_ptr_null(find_node(page));
	rcu_read_unlock();
}
END_TEST

/*
 * The merge path's slots: reserved when two pages match (found by nobody,
 * holding nothing), filled with one pwrite per run from the frozen pages
 * (then found by checksum and byte for byte), or given back unwritten.
 */
START_TEST(test_reserve_fill_unreserve)
{
	static char pages[3 * PG], other[PG];
	struct dd_store_stats s;
	int64_t a, b, c, d;

	for (int i = 0; i < 3; i++)
		fill(pages + i * PG, 700 + (uint64_t)i);
	fill(other, 799);
	a = dd_store_reserve(st, -1, 2);
	ck_assert_int_ge(a, 0);
	b = dd_store_reserve(st, a, 2);
	c = dd_store_reserve(st, b, 2);
	ck_assert_int_eq(b, a + 1); /* consecutive after the hint: one pwrite, one VMA */
	ck_assert_int_eq(c, a + 2);
	rcu_read_lock();
	ck_assert_ptr_null(find_node(pages)); /* reserved: not in the table yet */
	ck_assert_int_eq(dd_store_fill(st, (uint32_t)a, pages, 3), 0);
	for (int i = 0; i < 3; i++) {
		struct dd_stable *n = find_node(pages + i * PG);

		ck_assert_ptr_nonnull(n);
		ck_assert_uint_eq(n->slot, (uint32_t)a + (uint32_t)i);
		assert_slot_holds((uint32_t)a + (uint32_t)i, pages + i * PG);
	}
	rcu_read_unlock();
	ck_assert_mem_eq(dd_store_page(st, (uint32_t)a), pages, 3 * PG);
	ck_assert_uint_eq(stats().slots_used, 3);

	/* Given back unwritten: the slot is free again (the next reserve takes
	 * it) and holds no block; the filled ones are untouched. */
	d = dd_store_reserve(st, c, 2);
	ck_assert_int_eq(d, a + 3);
	ck_assert_uint_eq(stats().slots_used, 4);
	dd_store_unreserve(st, (uint32_t)d, false);
	s = stats();
	ck_assert_uint_eq(s.slots_used, 3);
	ck_assert_uint_eq(s.slots_shared, 0);
	ck_assert_int_eq(dd_store_reserve(st, c, 1), d);
	rcu_read_lock();
	ck_assert_ptr_null(find_node(other));
	rcu_read_unlock();
}
END_TEST

START_TEST(test_alloc_consecutive_with_hint)
{
	static char p[8][PG];
	int64_t s[8];

	for (int i = 0; i < 8; i++)
		fill(p[i], 100 + i);
	/* A run: each allocation hinted with the previous slot. */
	s[0] = alloc(p[0], -1, 1);
	for (int i = 1; i < 4; i++) {
		s[i] = alloc(p[i], s[i - 1], 1);
		ck_assert_int_eq(s[i], s[i - 1] + 1);
	}
	/* The slot after the hint is taken: another free slot, not a taken one. */
	s[4] = alloc(p[4], s[0], 1);
	for (int i = 0; i < 4; i++)
		ck_assert_int_ne(s[4], s[i]);
	/* A hint past the end of the file still gives a valid slot. */
	s[5] = alloc(p[5], 1 << 22, 1);
	for (int i = 0; i < 5; i++)
		ck_assert_int_ne(s[5], s[i]);
	for (int i = 0; i < 6; i++)
		assert_slot_holds((uint32_t)s[i], p[i]);
	ck_assert_uint_eq(stats().slots_used, 6);
	ck_assert_uint_eq(dd_table_count(table), 6);

	/* A freed slot in the middle of a run is reused when hinted. */
	dd_store_pend_done(st, (uint32_t)s[2], false);
	ck_assert_int_eq(gc(), 1);
	ck_assert(page_is_zero_in_store((uint32_t)s[2]));
	s[6] = alloc(p[6], s[1], 1);
	ck_assert_int_eq(s[6], s[2]);
	assert_slot_holds((uint32_t)s[6], p[6]);
	assert_slot_holds((uint32_t)s[3], p[3]);
	ck_assert_uint_eq(stats().slots_used, 6);
}
END_TEST

/* ---- bookkeeping ----------------------------------------------------------- */

START_TEST(test_pend_share_unshare)
{
	static char a[PG], b[PG];
	struct dd_store_stats s;
	struct dd_stable *na;
	int64_t sa, sb;

	fill(a, 1);
	fill(b, 2);
	sa = alloc(a, -1, 2); /* two candidates merging onto a new stable page */
	sb = alloc(b, sa, 1);

	/* First pending merge of a succeeds, second is dropped. */
	dd_store_pend_done(st, (uint32_t)sa, true);
	s = stats();
	ck_assert_uint_eq(s.slots_used, 2);
	ck_assert_uint_eq(s.slots_shared, 1);
	ck_assert_uint_eq(s.sharers, 1);
	dd_store_pend_done(st, (uint32_t)sa, false);
	s = stats();
	ck_assert_uint_eq(s.slots_shared, 1);
	ck_assert_uint_eq(s.sharers, 1);

	/* Another page joins a's stable page through the table. */
	rcu_read_lock();
	na = find_node(a);
	ck_assert_ptr_nonnull(na);
	ck_assert(dd_store_try_pend(na));
	rcu_read_unlock();
	dd_store_pend_done(st, na->slot, true);
	s = stats();
	ck_assert_uint_eq(s.slots_shared, 1);
	ck_assert_uint_eq(s.sharers, 2);

	/* b merges twice. */
	dd_store_pend_done(st, (uint32_t)sb, true);
	rcu_read_lock();
	ck_assert(dd_store_try_pend(find_node(b)));
	rcu_read_unlock();
	dd_store_pend_done(st, (uint32_t)sb, true);
	s = stats();
	ck_assert_uint_eq(s.slots_shared, 2);
	ck_assert_uint_eq(s.sharers, 4);

	/* COW breaks. */
	dd_store_unshare(st, (uint32_t)sa);
	s = stats();
	ck_assert_uint_eq(s.slots_shared, 2);
	ck_assert_uint_eq(s.sharers, 3);
	dd_store_unshare(st, (uint32_t)sa);
	s = stats();
	ck_assert_uint_eq(s.slots_shared, 1);
	ck_assert_uint_eq(s.sharers, 2);
	/* One unshare too many does not underflow anything. */
	dd_store_unshare(st, (uint32_t)sa);
	s = stats();
	ck_assert_uint_eq(s.slots_shared, 1);
	ck_assert_uint_eq(s.sharers, 2);
	ck_assert_uint_eq(s.slots_used, 2);

	/* a is now unused and unmapped: GC frees it and keeps b. */
	ck_assert_int_eq(gc(), 1);
	s = stats();
	ck_assert_uint_eq(s.slots_used, 1);
	ck_assert_uint_eq(s.freed, 1);
	ck_assert_uint_eq(s.slots_shared, 1);
	ck_assert_uint_eq(s.sharers, 2);
	assert_slot_holds((uint32_t)sb, b);
	ck_assert(page_is_zero_in_store((uint32_t)sa));
}
END_TEST

START_TEST(test_gc_keeps_pending_and_shared)
{
	static char a[PG], b[PG], c[PG];
	int64_t sa, sb, sc;

	fill(a, 11);
	fill(b, 12);
	fill(c, 13);
	sa = alloc(a, -1, 2);	   /* stays pending */
	sb = alloc(b, -1, 1);	   /* becomes shared */
	sc = alloc(c, -1, 1);	   /* dropped: the only candidate */
	ck_assert_int_eq(gc(), 0); /* nothing to do yet */
	dd_store_pend_done(st, (uint32_t)sa, false);
	dd_store_pend_done(st, (uint32_t)sb, true);
	dd_store_pend_done(st, (uint32_t)sc, false);
	ck_assert_int_eq(gc(), 1);
	assert_slot_holds((uint32_t)sa, a);
	assert_slot_holds((uint32_t)sb, b);
	ck_assert(page_is_zero_in_store((uint32_t)sc));
	ck_assert_int_eq(gc(), 0);
	ck_assert_uint_eq(stats().slots_used, 2);
	ck_assert_uint_eq(dd_table_count(table), 2);
}
END_TEST

/* ---- GC ------------------------------------------------------------------ */

START_TEST(test_gc_frees_and_punches)
{
	static char a[PG];
	struct dd_store_stats s;
	struct dd_stable *n;
	long blocks;
	int64_t sa;

	fill(a, 21);
	sa = alloc(a, -1, 1);
	blocks = store_blocks();
	ck_assert_int_ge(blocks, PG / 512);
	dd_store_pend_done(st, (uint32_t)sa, false);

	rcu_read_lock();
	n = find_node(a);
	ck_assert_ptr_nonnull(n);
	ck_assert_int_eq(dd_store_gc(st), 1);
	/* Within the same read-side section the node is still memory, but dead:
	 * a scanner that found it a moment ago cannot pend on it. */
	ck_assert(n->dead);
	ck_assert(!dd_store_try_pend(n));
	ck_assert_ptr_null(find_node(a));
	rcu_read_unlock();

	/* Punched: the file gave the memory back (checked first: reading the hole
	 * through a shared mapping would allocate a fresh zero page), and the page
	 * reads zero through the store mapping. */
	ck_assert_int_eq(store_blocks(), blocks - PG / 512);
	ck_assert(page_is_zero_in_store((uint32_t)sa));
	s = stats();
	ck_assert_uint_eq(s.slots_used, 0);
	ck_assert_uint_eq(s.freed, 1);
	ck_assert_uint_eq(dd_table_count(table), 0);
	ck_assert_int_eq(gc(), 0);
}
END_TEST

/* In a forked child: drop the store mappings inherited from the parent (the
 * store maps the whole file), so that only what the child maps on purpose
 * counts. */
static void child_unmap_inherited_store(ino_t ino)
{
	unsigned long long lo, hi, fino;
	char line[512];
	FILE *f = fopen("/proc/self/maps", "re");
	struct {
		unsigned long long lo, hi;
	} v[16];
	int nv = 0;

	if (!f)
		_exit(10);
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "%llx-%llx %*s %*x %*x:%*x %llu", &lo, &hi, &fino) == 3 &&
		    fino == ino && nv < 16)
			v[nv++] = (typeof(v[0])){ lo, hi };
	fclose(f);
	for (int i = 0; i < nv; i++)
		if (munmap((void *)(uintptr_t)v[i].lo, v[i].hi - v[i].lo) < 0)
			_exit(11);
}

/*
 * Fork a child that maps npages store pages from slot MAP_PRIVATE (as a merged
 * client does), checks they hold want, tells us it is ready and waits on *go
 * until we close it.
 */
static pid_t fork_mapper(uint32_t slot, uint32_t npages, const void *want, int *go)
{
	int ready[2], gop[2];
	struct stat sb;
	char c;
	pid_t pid;

	ck_assert_int_eq(fstat(dd_store_memfd(st), &sb), 0);
	ck_assert_int_eq(pipe(ready), 0);
	ck_assert_int_eq(pipe(gop), 0);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		char *p;

		close(ready[0]);
		close(gop[1]);
		child_unmap_inherited_store(sb.st_ino);
		p = mmap(NULL, (size_t)npages * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE,
			 dd_store_memfd(st), (off_t)slot * PG);
		if (p == MAP_FAILED)
			_exit(12);
		if (memcmp(p, want, PG))
			_exit(13);
		if (write(ready[1], "r", 1) != 1)
			_exit(14);
		while (read(gop[0], &c, 1) > 0)
			;
		_exit(memcmp(p, want, PG) ? 15 : 0); /* GC must not have zeroed it */
	}
	close(ready[1]);
	close(gop[0]);
	ck_assert_int_eq(read(ready[0], &c, 1), 1);
	close(ready[0]);
	*go = gop[1];
	return pid;
}

static void end_mapper(pid_t pid, int go)
{
	int status;

	close(go);
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		      "mapper child failed (status %#x)", status);
}

START_TEST(test_gc_keeps_slot_another_process_maps)
{
	static char a[PG], a2[PG], b[PG];
	int64_t sa, sa2, sb;
	pid_t pid;
	int go;

	fill(a, 31);
	fill(a2, 32);
	fill(b, 33);
	sa = alloc(a, -1, 1);
	sa2 = alloc(a2, sa, 1);
	ck_assert_int_eq(sa2, sa + 1);
	sb = alloc(b, sa2 + 8, 1);
	ck_assert_int_ne(sb, sa);
	ck_assert_int_ne(sb, sa2);

	/* A child maps a and a2 (two pages, one VMA), not b. */
	pid = fork_mapper((uint32_t)sa, 2, a, &go);
	dd_store_pend_done(st, (uint32_t)sa, false);
	dd_store_pend_done(st, (uint32_t)sa2, false);
	dd_store_pend_done(st, (uint32_t)sb, false);

	/* All three are candidates; only b is mapped by nobody. */
	ck_assert_int_eq(gc(), 1);
	ck_assert(page_is_zero_in_store((uint32_t)sb));
	assert_slot_holds((uint32_t)sa, a);
	assert_slot_holds((uint32_t)sa2, a2);
	ck_assert_uint_eq(stats().slots_used, 2);
	/* Asked again while the child still maps them: still kept. */
	ck_assert_int_eq(gc(), 0);
	assert_slot_holds((uint32_t)sa, a);
	rcu_read_lock();
	ck_assert_ptr_nonnull(find_node(a));
	rcu_read_unlock();

	/* The child reads its pages intact, exits; now GC frees them. */
	end_mapper(pid, go);
	ck_assert_int_eq(gc(), 2);
	ck_assert(page_is_zero_in_store((uint32_t)sa));
	ck_assert(page_is_zero_in_store((uint32_t)sa2));
	ck_assert_uint_eq(stats().slots_used, 0);
	ck_assert_uint_eq(stats().freed, 3);
	ck_assert_uint_eq(dd_table_count(table), 0);
}
END_TEST

START_TEST(test_gc_mapping_of_another_slot_does_not_protect)
{
	static char a[PG], b[PG];
	int64_t sa, sb;
	pid_t pid;
	int go;

	fill(a, 41);
	fill(b, 42);
	sa = alloc(a, -1, 1);
	sb = alloc(b, sa + 4, 1);
	/* The child maps b only; a is a candidate nobody maps. */
	pid = fork_mapper((uint32_t)sb, 1, b, &go);
	dd_store_pend_done(st, (uint32_t)sa, false);
	ck_assert_int_eq(gc(), 1);
	ck_assert(page_is_zero_in_store((uint32_t)sa));
	/* b is shared with nobody we know of but mapped: kept after it drops. */
	dd_store_pend_done(st, (uint32_t)sb, false);
	ck_assert_int_eq(gc(), 0);
	assert_slot_holds((uint32_t)sb, b);
	end_mapper(pid, go);
	ck_assert_int_eq(gc(), 1);
}
END_TEST

/* ---- concurrency --------------------------------------------------------- */

#define MT_THREADS 4
#define MT_ROUNDS 20000

struct mt {
	struct dd_stable *node;
	pthread_barrier_t bar;
	bool fail;
};

static void *mt_thread(void *arg)
{
	struct mt *m = arg;

	pthread_barrier_wait(&m->bar);
	for (int i = 0; i < MT_ROUNDS; i++) {
		if (!dd_store_try_pend(m->node))
			m->fail = true;
		dd_store_pend_done(st, m->node->slot, i % 2 == 0);
	}
	pthread_barrier_wait(&m->bar); /* main checks the sharers here */
	pthread_barrier_wait(&m->bar);
	for (int i = 0; i < MT_ROUNDS / 2; i++)
		dd_store_unshare(st, m->node->slot);
	return NULL;
}

START_TEST(test_counts_concurrent)
{
	static char a[PG];
	pthread_t t[MT_THREADS];
	struct mt m = { 0 };
	struct dd_store_stats s;
	int64_t sa;

	fill(a, 51);
	sa = alloc(a, -1, 1);
	dd_store_pend_done(st, (uint32_t)sa, true);
	rcu_read_lock();
	m.node = find_node(a);
	rcu_read_unlock();
	ck_assert_ptr_nonnull(m.node);
	pthread_barrier_init(&m.bar, NULL, MT_THREADS + 1);
	for (int i = 0; i < MT_THREADS; i++)
		ck_assert_int_eq(pthread_create(&t[i], NULL, mt_thread, &m), 0);
	pthread_barrier_wait(&m.bar);
	pthread_barrier_wait(&m.bar);
	s = stats();
	ck_assert(!m.fail);
	ck_assert_uint_eq(s.sharers, 1 + MT_THREADS * MT_ROUNDS / 2);
	ck_assert_uint_eq(s.slots_shared, 1);
	pthread_barrier_wait(&m.bar);
	for (int i = 0; i < MT_THREADS; i++)
		pthread_join(t[i], NULL);
	s = stats();
	ck_assert_uint_eq(s.sharers, 1);
	ck_assert_uint_eq(s.slots_shared, 1);
	ck_assert_int_eq(gc(), 0);
	dd_store_unshare(st, (uint32_t)sa);
	ck_assert_uint_eq(stats().slots_shared, 0);
	ck_assert_int_eq(gc(), 1);
	pthread_barrier_destroy(&m.bar);
}
END_TEST

START_TEST(test_free_empty_and_null)
{
	struct dd_store *other = dd_store_new(DOMAIN + 1, table);

	ck_assert_ptr_nonnull(other);
	ck_assert_int_ne(dd_store_memfd(other), dd_store_memfd(st));
	rcu_read_lock();
	dd_store_free(other);
	dd_store_free(NULL);
	rcu_read_unlock();
	ck_assert_int_eq(gc(), 0);
	ck_assert_uint_eq(stats().slots_used, 0);
}
END_TEST

/*
 * What clients get (dd_store_client_fd): the store's file, read-only. They
 * can map it privately and read it; they cannot write it, map it shared for
 * writing, or, as another user, open it again through /proc for writing
 * (the file is 0600, owned by the daemon's user). A client holding the
 * read-write memfd could change every page it shares with others.
 */
START_TEST(test_client_fd_read_only)
{
	static char page[PG];
	int fd = dd_store_client_fd(st), flags;
	struct stat a, b;
	int64_t slot;
	char *m;
	pid_t pid;
	int status;

	fill(page, 7);
	slot = alloc(page, -1, 1);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_ne(fd, dd_store_memfd(st));
	ck_assert_int_eq(fstat(fd, &a), 0);
	ck_assert_int_eq(fstat(dd_store_memfd(st), &b), 0);
	ck_assert_uint_eq(a.st_ino, b.st_ino); /* the same file */
	ck_assert_uint_eq(a.st_mode & 0777, 0600);
	flags = fcntl(fd, F_GETFL);
	ck_assert_int_eq(flags & O_ACCMODE, O_RDONLY);
	ck_assert_int_eq(pwrite(fd, page, PG, 0), -1);
	ck_assert_int_eq(errno, EBADF);
	ck_assert_ptr_eq(mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), MAP_FAILED);
	ck_assert_int_eq(errno, EACCES);
	/* A private mapping, as the agent makes: reads the slot, and a write
	 * to it stays private. */
	m = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, slot * (int64_t)PG);
	ck_assert_ptr_ne(m, MAP_FAILED);
	ck_assert_int_eq(memcmp(m, page, PG), 0);
	m[0] ^= 1;
	munmap(m, PG);
	assert_slot_holds((uint32_t)slot, page);
	if (geteuid() != 0) {
		printf("SKIP part of %s: becoming another user needs root\n", __func__);
		return;
	}
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		char path[64];

		if (setgid(65534) < 0 || setuid(65534) < 0)
			_exit(2);
		prctl(PR_SET_DUMPABLE, 1);
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		if (open(path, O_RDWR) >= 0)
			_exit(3);
		_exit(errno == EACCES ? 0 : 4);
	}
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		      "another user opened the store for writing (status %d)", status);
}
END_TEST

/*
 * Warm slots: pages allocated ahead of the fills, after the cursor. A fill
 * into one allocates nothing more; cooling punches only the warm pages;
 * a populate over a slot with data leaves its bytes (what makes warming
 * safe against a reservation between marking and populating).
 */
/*
 * Holes: the free slots under a span (dd_store_hold_holes()) are taken, so
 * that nothing else goes where the span's process may read zeros; a warm
 * one gives its page back; they are not store pages. The GC frees them once
 * no process maps over them, as it frees slots: here a child maps the span
 * MAP_PRIVATE, as a client does. A fresh slot given back under a span
 * (dd_store_unreserve(..., true)) becomes one too.
 */
START_TEST(test_holes_under_span)
{
	static char a[PG], c[PG];
	long per = PG / 512, blocks;
	int64_t sa, sc, x, y;
	pid_t pid;
	int go;

	fill(a, 71);
	fill(c, 72);
	sa = alloc(a, -1, 1);
	ck_assert_int_eq(dd_store_warm(st, 8), 8); /* sa+1 .. sa+8 */
	sc = alloc(c, sa + 2, 1);		     /* two slots between, as a stride */
	ck_assert_int_eq(sc, sa + 3);
	ck_assert_uint_eq(stats().warm, 7);
	blocks = store_blocks();

	dd_store_hold_holes(st, (uint32_t)sa, 4);
	ck_assert_uint_eq(stats().holes, 2);
	ck_assert_uint_eq(stats().warm, 5);
	ck_assert_uint_eq(stats().slots_used, 2);
	ck_assert_int_eq(store_blocks(), blocks - 2 * per); /* their pages given back */
	x = dd_store_reserve(st, sa, 1);		     /* wants sa+1: a hole */
	ck_assert_int_ge(x, 0);
	ck_assert(x != sa + 1 && x != sa + 2);
	dd_store_unreserve(st, (uint32_t)x, false);

	pid = fork_mapper((uint32_t)sa, 4, a, &go);
	dd_store_release_holes(st, (uint32_t)sa, 4);
	dd_store_pend_done(st, (uint32_t)sa, false);
	dd_store_pend_done(st, (uint32_t)sc, false);
	ck_assert_int_eq(gc(), 0); /* all four under the child's mapping */
	ck_assert_uint_eq(stats().holes, 2);
	assert_slot_holds((uint32_t)sc, c);
	end_mapper(pid, go);
	ck_assert_int_eq(gc(), 2); /* sa, sc; the holes go too, uncounted */
	ck_assert_uint_eq(stats().holes, 0);
	ck_assert_uint_eq(stats().slots_used, 0);
	ck_assert_int_eq(dd_store_reserve(st, sa, 1), sa + 1);

	/* A reserved slot given back under a span the agent mapped. */
	y = dd_store_reserve(st, sa + 1, 1);
	ck_assert_int_eq(y, sa + 2);
	dd_store_unreserve(st, (uint32_t)y, true);
	ck_assert_uint_eq(stats().holes, 1);
	ck_assert_int_ne(dd_store_reserve(st, sa + 1, 1), sa + 2);
	gc();
	ck_assert_uint_eq(stats().holes, 0);
}
END_TEST

START_TEST(test_warm_ahead_fill_cool)
{
	static char a_page[PG], b_page[PG];
	long blocks0, per = PG / 512;
	int64_t a, b;
	int n, total = 0;

	fill(a_page, 901);
	fill(b_page, 902);
	a = alloc(a_page, -1, 1);
	blocks0 = store_blocks();
	ck_assert_int_eq(dd_store_warm(st, 0), 0);
	n = dd_store_warm(st, 100);
	ck_assert_int_eq(n, 64); /* one populate call at most */
	while (n > 0) {
		total += n;
		n = dd_store_warm(st, 100);
	}
	ck_assert_int_eq(n, 0);
	ck_assert_int_eq(total, 100);
	ck_assert_uint_eq(stats().warm, 100);
	ck_assert_uint_eq(stats().slots_used, 1);
	ck_assert_int_eq(store_blocks(), blocks0 + 100 * per);
	assert_slot_holds((uint32_t)a, a_page);
	ck_assert(page_is_zero_in_store((uint32_t)a + 1));

	/* The next slot is warm: the fill copies into the page that is there. */
	b = dd_store_reserve(st, a, 1);
	ck_assert_int_eq(b, a + 1);
	ck_assert_uint_eq(stats().warm, 99);
	rcu_read_lock();
	ck_assert_int_eq(dd_store_fill(st, (uint32_t)b, b_page, 1), 0);
	rcu_read_unlock();
	ck_assert_int_eq(store_blocks(), blocks0 + 100 * per);
	assert_slot_holds((uint32_t)b, b_page);
	ck_assert_int_eq(dd_store_warm(st, 99), 0); /* enough */

	/* The kernel behaviour warming relies on. */
	ck_assert_int_eq(madvise((void *)dd_store_page(st, (uint32_t)a), 2 * PG,
				 MADV_POPULATE_WRITE), 0);
	assert_slot_holds((uint32_t)a, a_page);
	assert_slot_holds((uint32_t)b, b_page);

	ck_assert_uint_eq(dd_store_cool(st), 99);
	ck_assert_uint_eq(stats().warm, 0);
	ck_assert_uint_eq(dd_store_cool(st), 0);
	ck_assert_int_eq(store_blocks(), blocks0 + per);
	assert_slot_holds((uint32_t)a, a_page);
	assert_slot_holds((uint32_t)b, b_page);
	ck_assert_uint_eq(stats().slots_used, 2);
}
END_TEST

/* A slot written through its mapping (as the kernel's copy of a frozen page
 * does) is found by nobody until published, and then by its content. */
START_TEST(test_slot_mem_publish)
{
	static char page[2 * PG];
	int64_t a, b;

	fill(page, 811);
	fill(page + PG, 812);
	a = dd_store_reserve(st, -1, 1);
	b = dd_store_reserve(st, a, 1);
	ck_assert_int_eq(b, a + 1);
	memcpy(dd_store_slot_mem(st, (uint32_t)a), page, 2 * PG);
	rcu_read_lock();
	ck_assert_ptr_null(find_node(page));
	dd_store_publish(st, (uint32_t)a, 2);
	ck_assert_ptr_nonnull(find_node(page));
	ck_assert_uint_eq(find_node(page + PG)->slot, (uint32_t)b);
	rcu_read_unlock();
	assert_slot_holds((uint32_t)a, page);
	assert_slot_holds((uint32_t)b, page + PG);
}
END_TEST

Suite *store_suite(void)
{
	Suite *s = suite_create("store");
	TCase *tc;

	tc = tcase_create("alloc");
	tcase_add_checked_fixture(tc, store_setup, store_teardown);
	tcase_add_test(tc, test_alloc_copies_page);
	tcase_add_test(tc, test_alloc_consecutive_with_hint);
	tcase_add_test(tc, test_reserve_fill_unreserve);
	tcase_add_test(tc, test_free_empty_and_null);
	tcase_add_test(tc, test_client_fd_read_only);
	tcase_add_test(tc, test_warm_ahead_fill_cool);
	tcase_add_test(tc, test_slot_mem_publish);
	suite_add_tcase(s, tc);

	tc = tcase_create("bookkeeping");
	tcase_add_checked_fixture(tc, store_setup, store_teardown);
	tcase_add_test(tc, test_pend_share_unshare);
	tcase_add_test(tc, test_gc_keeps_pending_and_shared);
	tcase_add_test(tc, test_counts_concurrent);
	suite_add_tcase(s, tc);

	tc = tcase_create("gc");
	tcase_add_checked_fixture(tc, store_setup, store_teardown);
	tcase_add_test(tc, test_gc_frees_and_punches);
	tcase_add_test(tc, test_gc_keeps_slot_another_process_maps);
	tcase_add_test(tc, test_gc_mapping_of_another_slot_does_not_protect);
	tcase_add_test(tc, test_holes_under_span);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(store_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
