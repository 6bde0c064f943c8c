// SPDX-License-Identifier: MIT
/*
 * Unit tests for hash/: page checksums against the system libxxhash on every
 * variant this CPU runs, zero-page detection, batch hashing, and the
 * (domain, checksum) table: lookups, duplicates, forced checksum collisions
 * resolved by the caller's memcmp, domain isolation, clear, and concurrent
 * add/del/lookup from four RCU-registered threads. Also prints the hash
 * throughput over 256 MiB (not an assertion).
 */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>

#include "hash/pagehash.h"
#include "hash/pagehash_impl.h"
#include "hash/table.h"

Suite *hash_suite(void);

/* xorshift64*: deterministic pseudo-random pages, so a failure reproduces. */
static uint64_t rng_next(uint64_t *s)
{
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 0x2545f4914f6cdd1dULL;
}

static void fill_random(void *buf, size_t len, uint64_t seed)
{
	unsigned char *p = buf;
	uint64_t s = seed | 1, v;

	for (size_t off = 0; off < len; off += sizeof(v)) {
		v = rng_next(&s);
		memcpy(p + off, &v, len - off < sizeof(v) ? len - off : sizeof(v));
	}
}

static void *alloc_pages(size_t n)
{
	void *p = aligned_alloc(DD_PAGE_SIZE, n * DD_PAGE_SIZE);

	ck_assert_ptr_nonnull(p);
	return p;
}

/* ---- page hash ---- */

#define NR_RANDOM_PAGES 256

static const struct dd_hash_variant *const variants[] = {&dd_hash_sse2, &dd_hash_avx2,
							 &dd_hash_avx512};

/* Random pages plus the special ones: zero, all ones, one bit set. */
static unsigned char *make_test_pages(size_t *n)
{
	unsigned char *pages = alloc_pages(NR_RANDOM_PAGES + 3);

	fill_random(pages, NR_RANDOM_PAGES * DD_PAGE_SIZE, 42);
	memset(pages + NR_RANDOM_PAGES * DD_PAGE_SIZE, 0, DD_PAGE_SIZE);
	memset(pages + (NR_RANDOM_PAGES + 1) * DD_PAGE_SIZE, 0xff, DD_PAGE_SIZE);
	memset(pages + (NR_RANDOM_PAGES + 2) * DD_PAGE_SIZE, 0, DD_PAGE_SIZE);
	pages[(NR_RANDOM_PAGES + 2) * DD_PAGE_SIZE + 1234] = 0x10;
	*n = NR_RANDOM_PAGES + 3;
	return pages;
}

START_TEST(test_hash_dispatched_matches_libxxhash)
{
	size_t n;
	unsigned char *pages = make_test_pages(&n);

	for (size_t i = 0; i < n; i++) {
		const unsigned char *p = pages + i * DD_PAGE_SIZE;

		ck_assert_uint_eq(dd_page_hash(p), XXH3_64bits(p, DD_PAGE_SIZE));
	}
	free(pages);
}
END_TEST

START_TEST(test_hash_every_variant_matches_libxxhash)
{
	const struct dd_hash_variant *v = variants[_i];
	uint64_t out[NR_RANDOM_PAGES + 3];
	size_t n;
	unsigned char *pages;

	if (!dd_hash_variant_usable(v)) {
		printf("check_hash: skipping the %s variant: this CPU cannot run it\n", v->name);
		fflush(stdout);
		return;
	}
	pages = make_test_pages(&n);
	v->hash_batch(pages, n, out);
	for (size_t i = 0; i < n; i++) {
		const unsigned char *p = pages + i * DD_PAGE_SIZE;
		uint64_t want = XXH3_64bits(p, DD_PAGE_SIZE);

		ck_assert_msg(v->hash(p) == want, "%s: page %zu differs from XXH3_64bits", v->name,
			      i);
		ck_assert_msg(out[i] == want, "%s: batch page %zu differs", v->name, i);
	}
	free(pages);
}
END_TEST

START_TEST(test_hash_unaligned)
{
	unsigned char *buf = alloc_pages(2);

	fill_random(buf, 2 * DD_PAGE_SIZE, 7);
	for (size_t off = 1; off < 64; off += 7) {
		uint64_t want = XXH3_64bits(buf + off, DD_PAGE_SIZE);

		ck_assert_uint_eq(dd_page_hash(buf + off), want);
		for (size_t i = 0; i < sizeof(variants) / sizeof(variants[0]); i++)
			if (dd_hash_variant_usable(variants[i]))
				ck_assert_uint_eq(variants[i]->hash(buf + off), want);
	}
	free(buf);
}
END_TEST

START_TEST(test_hash_impl_name)
{
	const char *impl = dd_hash_impl();

	ck_assert_ptr_nonnull(impl);
	ck_assert_str_eq(impl, dd_hash_variant_active()->name);
	ck_assert(dd_hash_variant_usable(dd_hash_variant_active()));
	ck_assert_msg(!strcmp(impl, "sse2") || !strcmp(impl, "avx2") || !strcmp(impl, "avx512"),
		      "unexpected implementation %s", impl);
	__builtin_cpu_init();
	if (__builtin_cpu_supports("avx2"))
		ck_assert_str_ne(impl, "sse2");
}
END_TEST

START_TEST(test_hash_batch)
{
	enum { N = 64 };
	unsigned char *pages = alloc_pages(N);
	uint64_t out[N + 1];

	fill_random(pages, N * DD_PAGE_SIZE, 99);
	out[N] = 0xdeadbeef;
	ck_assert_int_eq(dd_page_hash_batch(pages, N, out), 0);
	for (size_t i = 0; i < N; i++)
		ck_assert_uint_eq(out[i], XXH3_64bits(pages + i * DD_PAGE_SIZE, DD_PAGE_SIZE));
	ck_assert_uint_eq(out[N], 0xdeadbeef); /* wrote n results, no more */
	ck_assert_int_eq(dd_page_hash_batch(pages, 0, out), 0);
	ck_assert_int_eq(dd_page_hash_batch(NULL, 0, NULL), 0);
	ck_assert_int_eq(dd_page_hash_batch(NULL, 1, out), -EINVAL);
	ck_assert_int_eq(dd_page_hash_batch(pages, 1, NULL), -EINVAL);
	free(pages);
}
END_TEST

/* ---- zero pages ---- */

START_TEST(test_zero_page)
{
	unsigned char *buf = alloc_pages(2);

	memset(buf, 0, 2 * DD_PAGE_SIZE);
	ck_assert(dd_page_is_zero(buf));
	ck_assert(dd_page_is_zero(buf + 1)); /* unaligned */
	ck_assert(dd_page_is_zero(buf + DD_PAGE_SIZE));
	free(buf);
}
END_TEST

START_TEST(test_zero_page_one_byte)
{
	static const size_t offsets[] = {0, DD_PAGE_SIZE / 2, DD_PAGE_SIZE - 1};
	unsigned char *buf = alloc_pages(2);

	memset(buf, 0, 2 * DD_PAGE_SIZE);
	for (size_t i = 0; i < sizeof(offsets) / sizeof(offsets[0]); i++) {
		buf[offsets[i]] = 1;
		ck_assert_msg(!dd_page_is_zero(buf), "byte at %zu missed", offsets[i]);
		buf[offsets[i]] = 0;
	}
	/* Every offset and every bit, on an aligned and an unaligned page. */
	for (size_t base = 0; base < 2; base++)
		for (size_t off = 0; off < DD_PAGE_SIZE; off++) {
			buf[base + off] = (unsigned char)(1u << (off % 8));
			ck_assert_msg(!dd_page_is_zero(buf + base), "byte at %zu+%zu missed", base,
				      off);
			buf[base + off] = 0;
		}
	ck_assert(dd_page_is_zero(buf));
	/* A non-zero byte just outside the page does not count. */
	buf[DD_PAGE_SIZE] = 1;
	ck_assert(dd_page_is_zero(buf));
	free(buf);
}
END_TEST

/* ---- throughput (printed, not asserted) ---- */

#define BENCH_BYTES (256UL << 20)

static double now_sec(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Best of three passes over buf, in GB/s (10^9 bytes); hash == NULL: dd_page_hash. */
static double bench_hash(const unsigned char *buf, uint64_t (*hash)(const void *))
{
	double best = 0, t0, gbps;
	uint64_t sum = 0;

	for (int pass = 0; pass < 3; pass++) {
		t0 = now_sec();
		for (size_t off = 0; off < BENCH_BYTES; off += DD_PAGE_SIZE)
			sum += hash ? hash(buf + off) : dd_page_hash(buf + off);
		gbps = (double)BENCH_BYTES / (now_sec() - t0) / 1e9;
		if (gbps > best)
			best = gbps;
	}
	ck_assert_uint_ne(sum, 0);
	return best;
}

static double bench_zero(const unsigned char *buf)
{
	double best = 0, t0, gbps;
	size_t zero = 0;

	for (int pass = 0; pass < 3; pass++) {
		t0 = now_sec();
		for (size_t off = 0; off < BENCH_BYTES; off += DD_PAGE_SIZE)
			zero += dd_page_is_zero(buf + off);
		gbps = (double)BENCH_BYTES / (now_sec() - t0) / 1e9;
		if (gbps > best)
			best = gbps;
	}
	ck_assert_uint_eq(zero, 3 * BENCH_BYTES / DD_PAGE_SIZE);
	return best;
}

START_TEST(test_hash_throughput)
{
	unsigned char *buf = alloc_pages(BENCH_BYTES / DD_PAGE_SIZE);

	fill_random(buf, BENCH_BYTES, 1);
	printf("check_hash: dd_page_hash over 256 MiB: %.1f GB/s (dispatched: %s)\n",
	       bench_hash(buf, NULL), dd_hash_impl());
	for (size_t i = 0; i < sizeof(variants) / sizeof(variants[0]); i++)
		if (dd_hash_variant_usable(variants[i]))
			printf("check_hash:   %-6s variant: %.1f GB/s\n", variants[i]->name,
			       bench_hash(buf, variants[i]->hash));
	memset(buf, 0, BENCH_BYTES);
	printf("check_hash: dd_page_is_zero over 256 MiB of zero pages: %.1f GB/s\n",
	       bench_zero(buf));
	fflush(stdout);
	free(buf);
}
END_TEST

/* ---- table ---- */

static void rcu_setup(void)
{
	rcu_register_thread();
}

static void rcu_teardown(void)
{
	rcu_barrier(); /* run pending call_rcu() callbacks before the leak check */
	rcu_unregister_thread();
}

struct tnode {
	struct dd_table_node tn;
	uint32_t domain; /* the owner keeps the domain; the table node has no key */
	struct rcu_head rcu;
	int id;
};

static uint32_t tnode_domain(const struct dd_table_node *n)
{
	return caa_container_of(n, struct tnode, tn)->domain;
}

/* Add n under (domain, csum), setting the domain the table will ask for. */
static void tadd(struct dd_table *t, struct tnode *n, uint32_t domain, uint64_t csum)
{
	n->domain = domain;
	dd_table_add(t, &n->tn, domain, csum);
}

struct collect {
	struct tnode *seen[16];
	unsigned int n;
	int stop_at; /* return 7 on the stop_at-th visit (1-based); 0: never */
};

static int collect_visit(struct dd_table_node *n, void *arg)
{
	struct collect *c = arg;

	ck_assert_uint_lt(c->n, 16);
	c->seen[c->n++] = caa_container_of(n, struct tnode, tn);
	return c->stop_at && (int)c->n == c->stop_at ? 7 : 0;
}

static unsigned int lookup(struct dd_table *t, uint32_t domain, uint64_t csum, struct collect *c)
{
	memset(c, 0, sizeof(*c));
	rcu_read_lock();
	ck_assert_int_eq(dd_table_for_each_dup(t, domain, csum, collect_visit, c), 0);
	rcu_read_unlock();
	return c->n;
}

static bool seen(const struct collect *c, const struct tnode *n)
{
	for (unsigned int i = 0; i < c->n; i++)
		if (c->seen[i] == n)
			return true;
	return false;
}

START_TEST(test_table_add_lookup_del)
{
	enum { N = 5000 };
	struct dd_table *t = dd_table_new(0, tnode_domain); /* one bucket until fitted */
	struct tnode *nodes = calloc(N, sizeof(*nodes));
	struct collect c;

	ck_assert_ptr_nonnull(t);
	ck_assert_ptr_nonnull(nodes);
	ck_assert_uint_eq(dd_table_count(t), 0);
	ck_assert_uint_eq(lookup(t, 1, 12345, &c), 0);
	rcu_read_lock();
	for (int i = 0; i < N; i++)
		tadd(t, &nodes[i], 1, 1000 + (uint64_t)i * 7919);
	rcu_read_unlock();
	ck_assert_uint_eq(dd_table_count(t), N);
	/* The table does not resize by itself; fitting it gives 0.5 to 2 nodes per
	 * bucket: 8192 buckets of 16 bytes for 5000 nodes. */
	ck_assert_uint_eq(dd_table_bucket_bytes(t), 16);
	dd_table_fit(t);
	ck_assert_uint_eq(dd_table_bucket_bytes(t), 8192 * 16);
	for (int i = 0; i < N; i++) {
		ck_assert_uint_eq(lookup(t, 1, 1000 + (uint64_t)i * 7919, &c), 1);
		ck_assert_ptr_eq(c.seen[0], &nodes[i]);
		ck_assert_uint_eq(dd_table_node_hash(&c.seen[0]->tn),
				  dd_table_key_hash(1, 1000 + (uint64_t)i * 7919));
	}
	ck_assert_uint_eq(lookup(t, 1, 1001, &c), 0);
	rcu_read_lock();
	for (int i = 0; i < N; i += 2)
		ck_assert_int_eq(dd_table_del(t, &nodes[i].tn), 0);
	ck_assert_int_eq(dd_table_del(t, &nodes[0].tn), -ENOENT);
	rcu_read_unlock();
	ck_assert_uint_eq(dd_table_count(t), N / 2);
	for (int i = 0; i < N; i++)
		ck_assert_uint_eq(lookup(t, 1, 1000 + (uint64_t)i * 7919, &c), i % 2);
	dd_table_fit(t); /* 2500 nodes in 8192 buckets: within bounds, no change */
	ck_assert_uint_eq(dd_table_bucket_bytes(t), 8192 * 16);
	ck_assert_int_eq(dd_table_clear(t, NULL), N / 2);
	ck_assert_uint_eq(dd_table_count(t), 0);
	dd_table_fit(t); /* empty: back to the initial size */
	ck_assert_uint_eq(dd_table_bucket_bytes(t), 16);
	ck_assert_uint_eq(lookup(t, 1, 1000, &c), 0);
	dd_table_free(t);
	synchronize_rcu(); /* nodes removed above may be freed only now */
	free(nodes);
}
END_TEST

START_TEST(test_table_duplicates)
{
	struct dd_table *t = dd_table_new(64, tnode_domain);
	struct tnode nodes[5], other;
	struct collect c;

	ck_assert_ptr_nonnull(t);
	rcu_read_lock();
	for (int i = 0; i < 5; i++)
		tadd(t, &nodes[i], 3, 0xabcdef);
	tadd(t, &other, 3, 0xabcdee);
	rcu_read_unlock();
	ck_assert_uint_eq(dd_table_count(t), 6);
	ck_assert_uint_eq(lookup(t, 3, 0xabcdef, &c), 5);
	for (int i = 0; i < 5; i++)
		ck_assert(seen(&c, &nodes[i]));
	ck_assert(!seen(&c, &other));

	/* The visitor's non-zero value stops the walk and is returned. */
	memset(&c, 0, sizeof(c));
	c.stop_at = 3;
	rcu_read_lock();
	ck_assert_int_eq(dd_table_for_each_dup(t, 3, 0xabcdef, collect_visit, &c), 7);
	rcu_read_unlock();
	ck_assert_uint_eq(c.n, 3);

	rcu_read_lock();
	ck_assert_int_eq(dd_table_del(t, &nodes[2].tn), 0);
	rcu_read_unlock();
	ck_assert_uint_eq(lookup(t, 3, 0xabcdef, &c), 4);
	ck_assert(!seen(&c, &nodes[2]));
	ck_assert_int_eq(dd_table_clear(t, NULL), 5);
	dd_table_free(t);
	synchronize_rcu();
}
END_TEST

/* What the scanner does with a hit: a node owns a page, and only memcmp decides. */
struct owned_page {
	struct dd_table_node tn;
	const unsigned char *data;
};

static uint32_t owned_domain(const struct dd_table_node *n)
{
	(void)n;
	return 9; /* every owned page below is in domain 9 */
}

struct equal_search {
	const unsigned char *page;
	struct owned_page *found;
	unsigned int visited;
};

static int equal_visit(struct dd_table_node *n, void *arg)
{
	struct equal_search *s = arg;
	struct owned_page *op = caa_container_of(n, struct owned_page, tn);

	s->visited++;
	if (memcmp(op->data, s->page, DD_PAGE_SIZE))
		return 0; /* same checksum, other content: a collision */
	s->found = op;
	return 1;
}

/* The node whose page equals @page among those under (domain, csum), or NULL. */
static struct owned_page *find_equal_page(struct dd_table *t, uint32_t domain, uint64_t csum,
					  const unsigned char *page, unsigned int *visited)
{
	struct equal_search s = {.page = page};

	rcu_read_lock();
	dd_table_for_each_dup(t, domain, csum, equal_visit, &s);
	rcu_read_unlock();
	*visited = s.visited;
	return s.found;
}

START_TEST(test_table_forced_collision)
{
	unsigned char *pages = alloc_pages(3);
	unsigned char *a = pages, *b = pages + DD_PAGE_SIZE, *c = pages + 2 * DD_PAGE_SIZE;
	struct owned_page na = {.data = a}, nb = {.data = b};
	struct dd_table *t = dd_table_new(16, owned_domain);
	unsigned int visited;
	uint64_t csum;

	ck_assert_ptr_nonnull(t);
	fill_random(a, DD_PAGE_SIZE, 5);
	memcpy(b, a, DD_PAGE_SIZE);
	b[DD_PAGE_SIZE - 1] ^= 1; /* differs from a in one bit of its last byte */
	memcpy(c, a, DD_PAGE_SIZE);
	c[0] ^= 0x80;
	csum = dd_page_hash(a);
	ck_assert_uint_ne(dd_page_hash(b), csum);

	/* Force the collision: b is filed under a's checksum, b first. */
	rcu_read_lock();
	dd_table_add(t, &nb.tn, 9, csum);
	dd_table_add(t, &na.tn, 9, csum);
	rcu_read_unlock();

	ck_assert_ptr_eq(find_equal_page(t, 9, csum, a, &visited), &na);
	ck_assert_ptr_eq(find_equal_page(t, 9, csum, b, &visited), &nb);
	ck_assert_ptr_null(find_equal_page(t, 9, csum, c, &visited));
	ck_assert_uint_eq(visited, 2); /* both colliding nodes were offered */

	/* With a's node gone, a must not be taken for b. */
	rcu_read_lock();
	ck_assert_int_eq(dd_table_del(t, &na.tn), 0);
	rcu_read_unlock();
	ck_assert_ptr_null(find_equal_page(t, 9, csum, a, &visited));
	ck_assert_uint_eq(visited, 1);
	ck_assert_int_eq(dd_table_clear(t, NULL), 1);
	dd_table_free(t);
	synchronize_rcu();
	free(pages);
}
END_TEST

START_TEST(test_table_domains_isolated)
{
	/*
	 * cds_lfht compares keys only among nodes of equal 64-bit hash, so the
	 * test needs two keys with one hash: (2, c2) hashes like (1, c1), see
	 * dd_table_key_hash(). (The same checksum in two domains never shares
	 * a hash, so no such pair differs in the domain alone.)
	 */
	const uint64_t golden = 0x9e3779b97f4a7c15ULL, c1 = 0x1122334455667788ULL;
	const uint64_t c2 = c1 + golden * (1 - 2);
	struct tnode d1, d2, d2same, d1b;
	struct dd_table *t = dd_table_new(16, tnode_domain);
	struct collect c;

	ck_assert_ptr_nonnull(t);
	ck_assert_uint_ne(dd_table_key_hash(1, c1), dd_table_key_hash(2, c1));
	ck_assert_msg(dd_table_key_hash(1, c1) == dd_table_key_hash(2, c2),
		      "dd_table_key_hash() changed: update how this test forces a collision");
	rcu_read_lock();
	tadd(t, &d1, 1, c1);
	tadd(t, &d2same, 2, c1);
	tadd(t, &d2, 2, c2);
	tadd(t, &d1b, 1, c1);
	rcu_read_unlock();

	ck_assert_uint_eq(lookup(t, 1, c1, &c), 2);
	ck_assert(seen(&c, &d1) && seen(&c, &d1b));
	ck_assert_uint_eq(lookup(t, 2, c1, &c), 1);
	ck_assert_ptr_eq(c.seen[0], &d2same);
	ck_assert_uint_eq(lookup(t, 2, c2, &c), 1); /* same hash as (1, c1), other key */
	ck_assert_ptr_eq(c.seen[0], &d2);
	ck_assert_uint_eq(lookup(t, 1, c2, &c), 0);
	ck_assert_uint_eq(lookup(t, 3, c1, &c), 0);
	ck_assert_int_eq(dd_table_clear(t, NULL), 4);
	dd_table_free(t);
	synchronize_rcu();
}
END_TEST

static atomic_long released;

static void release_tnode(struct dd_table_node *n)
{
	atomic_fetch_add(&released, 1);
	free(caa_container_of(n, struct tnode, tn));
}

START_TEST(test_table_clear)
{
	enum { N = 20000 };
	struct dd_table *t = dd_table_new(1024, tnode_domain);
	struct tnode *n;
	struct collect c;

	ck_assert_ptr_nonnull(t);
	ck_assert_int_eq(dd_table_clear(t, release_tnode), 0);
	rcu_read_lock();
	for (int i = 0; i < N; i++) {
		n = calloc(1, sizeof(*n));
		ck_assert_ptr_nonnull(n);
		tadd(t, n, (uint32_t)i % 4, (uint64_t)i / 3);
	}
	rcu_read_unlock();
	ck_assert_uint_eq(dd_table_count(t), N);
	ck_assert_int_eq(dd_table_clear(t, release_tnode), N);
	ck_assert_uint_eq(dd_table_count(t), 0);
	ck_assert_uint_eq(lookup(t, 0, 0, &c), 0);
	rcu_barrier();
	ck_assert_int_eq(atomic_load(&released), N);
	dd_table_free(t);
	dd_table_free(NULL);
}
END_TEST

/* ---- concurrency ---- */

/*
 * Worker threads count their failures instead of asserting: Check's assertions
 * record every pass in the runner's message file, which would serialise the
 * threads, and a failure is reported the same way from the main thread.
 */
#define NR_THREADS 4
#define NODES_PER_THREAD 20000

struct mt_shared {
	struct dd_table *t;
	struct tnode *nodes;  /* NR_THREADS * NODES_PER_THREAD */
	atomic_int *del_wins; /* per node: successful dd_table_del() calls */
	atomic_long dels;
	atomic_long errors;
	pthread_barrier_t barrier;
};

struct mt_arg {
	struct mt_shared *sh;
	int id;
};

static uint64_t mt_csum(int i)
{
	return (uint64_t)i / 2; /* pairs of nodes share a key */
}

static uint32_t mt_domain(int i)
{
	return (uint32_t)(i / 2) % 3;
}

struct find_node {
	const struct tnode *want;
};

static int find_node_visit(struct dd_table_node *n, void *arg)
{
	struct find_node *f = arg;

	return caa_container_of(n, struct tnode, tn) == f->want;
}

static bool mt_present(struct dd_table *t, const struct tnode *n, int i)
{
	struct find_node f = {.want = n};
	int r;

	rcu_read_lock();
	r = dd_table_for_each_dup(t, mt_domain(i), mt_csum(i), find_node_visit, &f);
	rcu_read_unlock();
	return r == 1;
}

static void mt_expect(struct mt_shared *sh, bool ok)
{
	if (!ok)
		atomic_fetch_add(&sh->errors, 1);
}

static void free_tnode_rcu(struct rcu_head *h)
{
	free(caa_container_of(h, struct tnode, rcu));
}

/* Add a short-lived node, see it, delete it, free it after a grace period. */
static void mt_churn(struct mt_shared *sh, int i)
{
	struct tnode *tmp = calloc(1, sizeof(*tmp));

	if (!tmp) {
		mt_expect(sh, false);
		return;
	}
	rcu_read_lock();
	tadd(sh->t, tmp, mt_domain(i), mt_csum(i));
	rcu_read_unlock();
	mt_expect(sh, mt_present(sh->t, tmp, i));
	rcu_read_lock();
	mt_expect(sh, dd_table_del(sh->t, &tmp->tn) == 0);
	rcu_read_unlock();
	call_rcu(&tmp->rcu, free_tnode_rcu);
}

static void *mt_worker(void *p)
{
	struct mt_arg *a = p;
	struct mt_shared *sh = a->sh;
	const int total = NR_THREADS * NODES_PER_THREAD, lo = a->id * NODES_PER_THREAD;
	uint64_t rng = 0x9e3779b9u + (uint64_t)a->id;
	long wins = 0;
	int i;

	rcu_register_thread();
	/* Phase 1: add our slice while the others add theirs; churn and look around. */
	for (i = lo; i < lo + NODES_PER_THREAD; i++) {
		rcu_read_lock();
		tadd(sh->t, &sh->nodes[i], mt_domain(i), mt_csum(i));
		rcu_read_unlock();
		mt_expect(sh, mt_present(sh->t, &sh->nodes[i], i));
		if (i % 8 == 0)
			mt_churn(sh, (int)(rng_next(&rng) % (uint64_t)total));
		if (i % 1024 == 0)
			dd_table_fit(sh->t); /* resizes race the others' adds and lookups */
	}
	pthread_barrier_wait(&sh->barrier);
	/* Phase 2: every thread races to delete every odd node, from its own start. */
	for (int k = 0; k < total / 2; k++) {
		i = 2 * ((k + a->id * (total / 2 / NR_THREADS)) % (total / 2)) + 1;
		rcu_read_lock();
		if (dd_table_del(sh->t, &sh->nodes[i].tn) == 0) {
			atomic_fetch_add(&sh->del_wins[i], 1);
			wins++;
		}
		rcu_read_unlock();
		if (k % 16 == 0)
			mt_churn(sh, (int)(rng_next(&rng) % (uint64_t)total));
		if (k % 1024 == 0)
			dd_table_fit(sh->t);
	}
	atomic_fetch_add(&sh->dels, wins);
	pthread_barrier_wait(&sh->barrier);
	/* Phase 3: our slice holds exactly its even nodes. */
	for (i = lo; i < lo + NODES_PER_THREAD; i++)
		mt_expect(sh, mt_present(sh->t, &sh->nodes[i], i) == (i % 2 == 0));
	rcu_unregister_thread();
	return NULL;
}

START_TEST(test_table_concurrent)
{
	const int total = NR_THREADS * NODES_PER_THREAD;
	struct mt_shared sh = {0};
	struct mt_arg args[NR_THREADS];
	pthread_t th[NR_THREADS];
	long bad_wins = 0;

	sh.t = dd_table_new(16, tnode_domain);
	sh.nodes = calloc((size_t)total, sizeof(*sh.nodes));
	sh.del_wins = calloc((size_t)total, sizeof(*sh.del_wins));
	ck_assert_ptr_nonnull(sh.t);
	ck_assert_ptr_nonnull(sh.nodes);
	ck_assert_ptr_nonnull(sh.del_wins);
	ck_assert_int_eq(pthread_barrier_init(&sh.barrier, NULL, NR_THREADS), 0);
	for (int i = 0; i < NR_THREADS; i++) {
		args[i] = (struct mt_arg){.sh = &sh, .id = i};
		ck_assert_int_eq(pthread_create(&th[i], NULL, mt_worker, &args[i]), 0);
	}
	for (int i = 0; i < NR_THREADS; i++)
		ck_assert_int_eq(pthread_join(th[i], NULL), 0);

	ck_assert_int_eq(atomic_load(&sh.errors), 0);
	ck_assert_int_eq(atomic_load(&sh.dels), total / 2);
	for (int i = 0; i < total; i++)
		bad_wins += atomic_load(&sh.del_wins[i]) != i % 2;
	ck_assert_int_eq(bad_wins, 0); /* every odd node deleted exactly once */
	ck_assert_uint_eq(dd_table_count(sh.t), (unsigned long)total / 2);
	/* Fitted while it grew: 0.5 to 2 nodes per bucket at the last fit. */
	ck_assert_uint_ge(dd_table_bucket_bytes(sh.t), 16 * 8192);
	ck_assert_int_eq(dd_table_clear(sh.t, NULL), total / 2);
	ck_assert_uint_eq(dd_table_count(sh.t), 0);
	dd_table_free(sh.t);
	synchronize_rcu();
	pthread_barrier_destroy(&sh.barrier);
	free(sh.del_wins);
	free(sh.nodes);
}
END_TEST

Suite *hash_suite(void)
{
	Suite *s = suite_create("hash");
	TCase *tc;

	tc = tcase_create("pagehash");
	tcase_add_test(tc, test_hash_dispatched_matches_libxxhash);
	tcase_add_loop_test(tc, test_hash_every_variant_matches_libxxhash, 0,
			    sizeof(variants) / sizeof(variants[0]));
	tcase_add_test(tc, test_hash_unaligned);
	tcase_add_test(tc, test_hash_impl_name);
	tcase_add_test(tc, test_hash_batch);
	tcase_add_test(tc, test_zero_page);
	tcase_add_test(tc, test_zero_page_one_byte);
	suite_add_tcase(s, tc);

	tc = tcase_create("throughput");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_hash_throughput);
	suite_add_tcase(s, tc);

	tc = tcase_create("table");
	tcase_add_checked_fixture(tc, rcu_setup, rcu_teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_table_add_lookup_del);
	tcase_add_test(tc, test_table_duplicates);
	tcase_add_test(tc, test_table_forced_collision);
	tcase_add_test(tc, test_table_domains_isolated);
	tcase_add_test(tc, test_table_clear);
	tcase_add_test(tc, test_table_concurrent);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(hash_suite());
	int failed;

	srunner_run_all(sr, CK_ENV); /* CK_VERBOSITY=verbose lists each test */
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
