// SPDX-License-Identifier: MIT
/*
 * libdedup's agent thread (dedupd/lib/agent.c, linked in directly) against a
 * fake daemon on a private socket: what the agent does with a REMAP is
 * checked against the page tables of its own process, not taken on the
 * daemon's word.
 */
#include "tests/harness.h"
#include "dedupd/common/proto.h"
#include "dedupd/common/uffd.h"
#include "dedupd/lib/agent.h"
#include "hash/pagehash.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>

#define PAGE 4096u
#define NPG 8u

struct fake {
	int listen_fd, conn;
};

/* Accept the agent's connection and answer its AGENT_HELLO. */
static void *fake_accept(void *arg)
{
	struct fake *f = arg;
	union {
		char raw[DD_MSG_MAX];
		struct dd_msg_hdr h;
	} in;
	struct dd_msg_result ok = { .status = 0 };

	f->conn = accept4(f->listen_fd, NULL, NULL, SOCK_CLOEXEC);
	if (f->conn < 0 || dd_msg_recv(f->conn, in.raw, sizeof(in.raw), NULL, 5000) <= 0 ||
	    in.h.type != DD_MSG_AGENT_HELLO)
		return NULL;
	dd_msg_init(&ok.h, DD_MSG_RESULT, sizeof(ok), in.h.seq);
	dd_msg_send(f->conn, &ok, sizeof(ok), -1);
	return NULL;
}

static int fake_listen(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);

	ck_assert_uint_lt(strlen(path), sizeof(sa.sun_path));
	memcpy(sa.sun_path, path, strlen(path) + 1);
	unlink(path);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ck_assert_int_eq(listen(fd, 1), 0);
	return fd;
}

/* Start the agent against a fake daemon on a private socket (path[len]),
 * with uffd as its own copy of the uffd (-1: none). */
static struct dd_agent *agent_up(struct fake *f, char *path, size_t len, const char *name,
				 int uffd)
{
	struct dd_agent *a = NULL;
	pthread_t th;

	h_sock_path(path, len, name);
	f->conn = -1;
	f->listen_fd = fake_listen(path);
	ck_assert_int_eq(pthread_create(&th, NULL, fake_accept, f), 0);
	ck_assert_int_eq(dd_agent_start(path, 1, 2, uffd, NULL, &a), 0);
	pthread_join(th, NULL);
	ck_assert_int_ge(f->conn, 0);
	return a;
}

static void agent_down(struct dd_agent *a, struct fake *f, const char *path)
{
	dd_agent_stop(a);
	close(f->conn);
	close(f->listen_fd);
	unlink(path);
}

/* Send a REMAP of e[0..n) to the agent and take its answer into res[]. */
static void remap_roundtrip(const struct fake *f, const struct dd_remap_entry *e, uint32_t n,
			    int32_t *res)
{
	union {
		char raw[DD_MSG_MAX];
		struct dd_msg_batch b;
		struct dd_msg_agent_reply r;
	} m;

	dd_msg_init(&m.b.h, DD_MSG_REMAP, sizeof(m.b) + n * sizeof(m.b.e[0]), 7);
	m.b.n = n;
	m.b.pad = 0;
	memcpy(m.b.e, e, n * sizeof(*e));
	ck_assert_int_eq(dd_msg_send(f->conn, &m.b, m.b.h.len, -1), 0);
	ck_assert_int_gt(dd_msg_recv(f->conn, m.raw, sizeof(m.raw), NULL, 5000), 0);
	ck_assert_int_eq(m.r.h.type, DD_MSG_AGENT_REPLY);
	ck_assert_uint_eq(m.r.h.seq, 7);
	ck_assert_uint_eq(m.r.n, n);
	memcpy(res, m.r.res, n * sizeof(*res));
}

/* Does this process map the memfd called name shared (an agent's store view)? */
static bool maps_shared(const char *name)
{
	char line[512];
	bool found = false;
	FILE *f = fopen("/proc/self/maps", "re");

	ck_assert_ptr_nonnull(f);
	while (fgets(line, sizeof(line), f))
		if (strstr(line, name) && strstr(line, " r--s "))
			found = true;
	fclose(f);
	return found;
}

/*
 * A REMAP whose zero runs are not all frozen: the agent zaps only a run
 * whose every page is present and write-protected by the uffd; a run with
 * one page the daemon never froze, or none, comes back -ESTALE and keeps
 * its bytes. Several runs in one request: the agent reads the pagemap of
 * the whole stretch once (batch_pagemap()), and must judge each run by it.
 */
START_TEST(test_agent_zaps_only_frozen_runs)
{
	struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_PAGEFAULT_FLAG_WP };
	struct uffdio_register reg = { .mode = UFFDIO_REGISTER_MODE_WP };
	struct uffdio_writeprotect wp = { .mode = UFFDIO_WRITEPROTECT_MODE_WP };
	const struct {
		uint32_t first, n;
		int want;
	} runs[] = { { 0, 2, 0 }, { 2, 2, -ESTALE }, { 5, 2, -ESTALE } };
	struct dd_remap_entry e[3];
	int32_t res[3];
	struct fake f;
	struct dd_agent *a;
	char path[256];
	uint8_t *mem;
	int uffd;

	H_SKIP_UNLESS_ROOT(); /* process_madvise() on ourselves, a kernel uffd */
	uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	ck_assert_int_ge(uffd, 0);
	ck_assert_int_eq(ioctl(uffd, UFFDIO_API, &api), 0);
	mem = mmap(NULL, NPG * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert(mem != MAP_FAILED);
	memset(mem, 0xab, NPG * PAGE);
	reg.range = (struct uffdio_range){ (uintptr_t)mem, NPG * PAGE };
	ck_assert_int_eq(ioctl(uffd, UFFDIO_REGISTER, &reg), 0);
	/* Pages 0-2 frozen; 3 and up not. Nothing here writes to them again. */
	wp.range = (struct uffdio_range){ (uintptr_t)mem, 3 * PAGE };
	ck_assert_int_eq(ioctl(uffd, UFFDIO_WRITEPROTECT, &wp), 0);

	a = agent_up(&f, path, sizeof(path), "agent", -1);

	for (unsigned i = 0; i < 3; i++)
		e[i] = (struct dd_remap_entry){ .addr = (uintptr_t)mem + runs[i].first * PAGE,
						 .npages = runs[i].n,
						 .flags = DD_REMAP_ZAP };
	remap_roundtrip(&f, e, 3, res);
	for (unsigned i = 0; i < 3; i++)
		ck_assert_msg(res[i] == runs[i].want, "run %u (pages %u+%u): %d, want %d", i,
			      runs[i].first, runs[i].n, res[i], runs[i].want);
	/* The zapped run reads zeros; every other page kept its bytes. */
	for (unsigned p = 0; p < NPG; p++)
		ck_assert_msg(mem[(size_t)p * PAGE + 100] == (p < 2 ? 0 : 0xab),
			      "page %u reads %#x", p, mem[(size_t)p * PAGE + 100]);
	/* This agent has no uffd of its own: a span (here over pages 2-4)
	 * comes back -ENODEV, which tells the daemon to send no more. */
	e[0] = (struct dd_remap_entry){ .addr = (uintptr_t)mem + 2 * PAGE, .npages = 3,
					.flags = DD_REMAP_SPAN, .domain = 1 };
	e[1] = (struct dd_remap_entry){ .addr = (uintptr_t)mem + 2 * PAGE, .npages = 1,
					.flags = DD_REMAP_INSPAN | DD_REMAP_ANON, .domain = 1 };
	remap_roundtrip(&f, e, 2, res);
	ck_assert_int_eq(res[0], -ENODEV);
	ck_assert_int_eq(res[1], -ENODEV);
	ck_assert_uint_eq(mem[2 * PAGE + 100], 0xab);

	agent_down(a, &f, path);
	close(uffd);
	munmap(mem, NPG * PAGE);
}
END_TEST

/*
 * DD_REMAP_VERIFY: the agent compares a run in place with its store pages
 * (a remap) or checks that it is all zero (a zap) before it acts, and a run
 * with one page that differs by one byte comes back -EAGAIN with its bytes
 * intact. A run that passes is really mapped from the store: a later write
 * to the store file shows through the (not yet copied) private mapping.
 * Twice: against the agent's view of the store, and with pread (no view).
 */
START_TEST(test_agent_verifies_before_acting)
{
	struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_PAGEFAULT_FLAG_WP };
	struct uffdio_register reg = { .mode = UFFDIO_REGISTER_MODE_WP };
	struct uffdio_writeprotect wp = { .mode = UFFDIO_WRITEPROTECT_MODE_WP };
	const struct {
		uint32_t first, n, slot;
		bool zap;
		int want;
	} runs[] = { { 0, 2, 0, true, 0 },	  /* zero */
		     { 2, 2, 0, true, -EAGAIN },  /* page 3 has one byte set */
		     { 4, 2, 0, false, 0 },	  /* the same as slots 0-1 */
		     { 6, 2, 2, false, -EAGAIN } }; /* page 7 differs from slot 3 */
	struct dd_msg_store m;
	struct dd_remap_entry e[4];
	int32_t res[4];
	static uint8_t store_pages[4 * PAGE];
	struct fake f;
	struct dd_agent *a;
	char path[256];
	uint8_t *mem, mark = 0x5c;
	int uffd, memfd;

	H_SKIP_UNLESS_ROOT(); /* a kernel uffd with write-protect */
	for (unsigned i = 0; i < sizeof(store_pages); i++)
		store_pages[i] = (uint8_t)(i * 7 + 3);
	memfd = memfd_create("store", MFD_CLOEXEC);
	ck_assert_int_ge(memfd, 0);
	ck_assert_int_eq(pwrite(memfd, store_pages, sizeof(store_pages), 0),
			 (ssize_t)sizeof(store_pages));
	uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	ck_assert_int_ge(uffd, 0);
	ck_assert_int_eq(ioctl(uffd, UFFDIO_API, &api), 0);
	mem = mmap(NULL, NPG * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert(mem != MAP_FAILED);
	memset(mem, 0, 4 * PAGE);
	mem[3 * PAGE + 4000] = 1;
	memcpy(mem + 4 * PAGE, store_pages, 4 * PAGE); /* pages 4-7 = slots 0-3 */
	mem[7 * PAGE + 17] ^= 0x80;
	reg.range = (struct uffdio_range){ (uintptr_t)mem, NPG * PAGE };
	ck_assert_int_eq(ioctl(uffd, UFFDIO_REGISTER, &reg), 0);
	wp.range = reg.range; /* all frozen */
	ck_assert_int_eq(ioctl(uffd, UFFDIO_WRITEPROTECT, &wp), 0);

	if (_i)
		setenv("DEDUP_TEST_NO_STORE_VIEW", "1", 1);
	a = agent_up(&f, path, sizeof(path), "agentv", -1);
	unsetenv("DEDUP_TEST_NO_STORE_VIEW");
	dd_msg_init(&m.h, DD_MSG_STORE, sizeof(m), 6);
	m.domain = 3;
	m.pad = 0;
	ck_assert_int_eq(dd_msg_send(f.conn, &m, sizeof(m), memfd), 0);

	for (unsigned i = 0; i < 4; i++)
		e[i] = (struct dd_remap_entry){
			.addr = (uintptr_t)mem + runs[i].first * PAGE,
			.store_off = (uint64_t)runs[i].slot * PAGE,
			.npages = runs[i].n,
			.flags = DD_REMAP_VERIFY | (runs[i].zap ? DD_REMAP_ZAP : 0),
			.domain = runs[i].zap ? 0 : 3,
		};
	remap_roundtrip(&f, e, 4, res);
	for (unsigned i = 0; i < 4; i++)
		ck_assert_msg(res[i] == runs[i].want, "run %u (pages %u+%u): %d, want %d", i,
			      runs[i].first, runs[i].n, res[i], runs[i].want);

	ck_assert_msg(maps_shared("memfd:store") == !_i, "store view: %d, want %d",
		      maps_shared("memfd:store"), !_i);
	/* Refused runs kept their bytes; the zapped run reads zeros. */
	ck_assert_uint_eq(mem[3 * PAGE + 4000], 1);
	ck_assert_mem_eq(mem + 6 * PAGE, store_pages + 2 * PAGE, PAGE);
	ck_assert_uint_eq(mem[7 * PAGE + 17], store_pages[3 * PAGE + 17] ^ 0x80);
	for (unsigned p = 0; p < 2; p++)
		ck_assert(dd_page_is_zero(mem + (size_t)p * PAGE));
	/* Pages 4-5 map slots 0-1 now; pages 6-7 are still our own. */
	ck_assert_int_eq(pwrite(memfd, &mark, 1, 100), 1);
	ck_assert_int_eq(pwrite(memfd, &mark, 1, 2 * PAGE + 100), 1);
	ck_assert_uint_eq(mem[4 * PAGE + 100], mark);
	ck_assert_uint_eq(mem[6 * PAGE + 100], store_pages[2 * PAGE + 100]);

	agent_down(a, &f, path);
	close(uffd);
	close(memfd);
	munmap(mem, NPG * PAGE);
}
END_TEST

/* Is page p of this process present and a page of a file (pagemap bit 61)? */
static bool page_is_file(const void *p)
{
	uint64_t pm = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(pread(fd, &pm, sizeof(pm), (off_t)((uintptr_t)p / PAGE * 8)),
			 (ssize_t)sizeof(pm));
	close(fd);
	return (pm >> 63) & (pm >> 61) & 1;
}

/* The VMA of this process that holds addr: its bounds and whether it maps
 * a file whose name has name in it. */
static bool vma_of(const void *addr, uint64_t *lo, uint64_t *hi, const char *name)
{
	char line[512];
	unsigned long long a, b;
	bool named = false;
	FILE *f = fopen("/proc/self/maps", "re");

	ck_assert_ptr_nonnull(f);
	*lo = *hi = 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "%llx-%llx", &a, &b) == 2 && a <= (uintptr_t)addr &&
		    (uintptr_t)addr < b) {
			*lo = a;
			*hi = b;
			named = strstr(line, name) != NULL;
		}
	fclose(f);
	return named;
}

/*
 * DD_REMAP_SPAN: one mapping of store slots 0-6 over pages 0-6, where the
 * runs (pages 0, 2-3 and 6, the same as slots 0, 2-3 and 6) come from the
 * store and the pages between them (1, 4 and 5; 5 all zero) stay the
 * process's own: copied in as anonymous pages, and the store file, which
 * has holes at slots 1, 4 and 5, gets no page there. The span is one VMA.
 * A span whose run differs from its store page by one bit maps the others
 * and keeps that one like a gap page (-EAGAIN for it alone); one with a
 * page that is not frozen (-ESTALE) and one whose run lies off the span's
 * mapping (-EINVAL) change nothing.
 */
START_TEST(test_agent_maps_spans)
{
	struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_PAGEFAULT_FLAG_WP };
	struct uffdio_register reg = { .mode = UFFDIO_REGISTER_MODE_WP };
	struct uffdio_writeprotect wp = { .mode = UFFDIO_WRITEPROTECT_MODE_WP };
	enum { N = 24 };
	static const bool run[N] = { [0] = 1, [2] = 1, [3] = 1, [6] = 1,     /* span A */
				     [8] = 1, [10] = 1,			      /* span B */
				     [12] = 1, [14] = 1,		      /* span C */
				     [16] = 1, [18] = 1 };		      /* span D */
	struct dd_msg_store m;
	struct dd_remap_entry e[16];
	int32_t res[16];
	static uint8_t want[N * PAGE], slot[8 * PAGE];
	struct stat before, after;
	struct fake f;
	struct dd_agent *a;
	char path[256];
	uint8_t *mem, mark = 0x6d;
	uint64_t lo, hi;
	int uffd, memfd;
	uint32_t ne = 0;

	H_SKIP_UNLESS_ROOT(); /* a kernel uffd with write-protect */
	for (unsigned i = 0; i < sizeof(slot); i++)
		slot[i] = (uint8_t)(i * 13 + 1);
	memfd = memfd_create("spanstore", MFD_CLOEXEC);
	ck_assert_int_ge(memfd, 0);
	ck_assert_int_eq(ftruncate(memfd, 8 * PAGE), 0);
	for (unsigned k = 0; k < 8; k++) /* holes at 1, 4, 5 */
		if (k != 1 && k != 4 && k != 5)
			ck_assert_int_eq(pwrite(memfd, slot + k * PAGE, PAGE, (off_t)k * PAGE), PAGE);
	uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	ck_assert_int_ge(uffd, 0);
	ck_assert_int_eq(ioctl(uffd, UFFDIO_API, &api), 0);
	mem = mmap(NULL, N * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert(mem != MAP_FAILED);
	madvise(mem, N * PAGE, MADV_NOHUGEPAGE);
	/* Runs hold their slot's bytes (page p: slot p % 8); the rest, bytes
	 * of their own (page 5 zeros). Page 10 differs from slot 2 by a bit. */
	for (unsigned p = 0; p < N; p++) {
		uint8_t *w = want + (size_t)p * PAGE;

		if (run[p])
			memcpy(w, slot + (size_t)(p % 8) * PAGE, PAGE);
		else if (p != 5)
			memset(w, 0xa0 + (int)p, PAGE);
	}
	want[10 * PAGE + 9] ^= 1;
	memcpy(mem, want, sizeof(want));
	reg.range = (struct uffdio_range){ (uintptr_t)mem, N * PAGE };
	ck_assert_int_eq(ioctl(uffd, UFFDIO_REGISTER, &reg), 0);
	/* All frozen but page 17 (a page between span D's runs). */
	wp.range = (struct uffdio_range){ (uintptr_t)mem, 17 * PAGE };
	ck_assert_int_eq(ioctl(uffd, UFFDIO_WRITEPROTECT, &wp), 0);
	wp.range = (struct uffdio_range){ (uintptr_t)mem + 18 * PAGE, (N - 18) * PAGE };
	ck_assert_int_eq(ioctl(uffd, UFFDIO_WRITEPROTECT, &wp), 0);
	ck_assert_int_eq(fstat(memfd, &before), 0);

	a = agent_up(&f, path, sizeof(path), "agents", dup(uffd)); /* spans need one */
	dd_msg_init(&m.h, DD_MSG_STORE, sizeof(m), 6);
	m.domain = 3;
	m.pad = 0;
	ck_assert_int_eq(dd_msg_send(f.conn, &m, sizeof(m), memfd), 0);

	/* Page p lies over slot p % 8 in each span's mapping; C's second run
	 * claims slot 7, off that line. */
	{
		static const struct {
			unsigned first, n, runs[3][2]; /* runs: page, pages */
			int off;		       /* C: the bad run's shift */
		} sp[4] = { { 0, 7, { { 0, 1 }, { 2, 2 }, { 6, 1 } }, 0 },
			    { 8, 3, { { 8, 1 }, { 10, 1 } }, 0 },
			    { 12, 3, { { 12, 1 }, { 14, 1 } }, 1 },
			    { 16, 3, { { 16, 1 }, { 18, 1 } }, 0 } };

		for (unsigned k = 0; k < 4; k++) {
			e[ne++] = (struct dd_remap_entry){
				.addr = (uintptr_t)mem + sp[k].first * PAGE,
				.store_off = (uint64_t)(sp[k].first % 8) * PAGE,
				.npages = sp[k].n,
				.flags = DD_REMAP_SPAN,
				.domain = 3 };
			for (unsigned r = 0; r < 3 && sp[k].runs[r][1]; r++) {
				unsigned pg = sp[k].runs[r][0];

				e[ne++] = (struct dd_remap_entry){
					.addr = (uintptr_t)mem + pg * PAGE,
					.store_off = (uint64_t)(pg % 8 + (r ? sp[k].off : 0)) * PAGE,
					.npages = sp[k].runs[r][1],
					.flags = DD_REMAP_INSPAN | DD_REMAP_ANON | DD_REMAP_VERIFY,
					.domain = 3 };
			}
		}
	}
	ck_assert_uint_eq(ne, 4 + 3 + 3 * 2); /* A: 3 runs; B, C, D: 2 each */
	remap_roundtrip(&f, e, ne, res);
	/* A mapped; B mapped, but page 10 differs from its slot: kept like a
	 * gap page; C: its run at 14 lies off the span's mapping; D: page 17
	 * is not frozen. */
	{
		static const int want_res[13] = { 0,	   0,	    0,	     0,	      0,
						  0,	   -EAGAIN, -EINVAL, -EINVAL, -EINVAL,
						  -ESTALE, -ESTALE, -ESTALE };

		for (uint32_t i = 0; i < ne; i++)
			ck_assert_msg(res[i] == want_res[i], "entry %u: %d, want %d", i, res[i],
				      want_res[i]);
	}
	/* Every page reads what it held. */
	for (unsigned p = 0; p < N; p++)
		ck_assert_msg(!memcmp(mem + (size_t)p * PAGE, want + (size_t)p * PAGE, PAGE),
			      "page %u changed", p);
	/* Span A is one VMA of the store; its runs are the store's pages, the
	 * pages between them anonymous copies, and no store page was made at
	 * the holes. The other spans are still anonymous memory. */
	ck_assert(vma_of(mem, &lo, &hi, "memfd:spanstore"));
	ck_assert_uint_eq(lo, (uintptr_t)mem);
	ck_assert_uint_eq(hi, (uintptr_t)mem + 7 * PAGE);
	for (unsigned p = 0; p < 7; p++)
		ck_assert_msg(page_is_file(mem + (size_t)p * PAGE) == run[p], "page %u: file %d", p,
			      page_is_file(mem + (size_t)p * PAGE));
	ck_assert_int_eq(fstat(memfd, &after), 0);
	ck_assert_int_eq(after.st_blocks, before.st_blocks);
	ck_assert(vma_of(mem + 8 * PAGE, &lo, &hi, "memfd:spanstore"));
	ck_assert_uint_eq(hi - lo, 3 * PAGE);
	ck_assert(page_is_file(mem + 8 * PAGE));
	ck_assert(!page_is_file(mem + 9 * PAGE) && !page_is_file(mem + 10 * PAGE));
	for (unsigned p = 12; p < N; p++)
		ck_assert_msg(!vma_of(mem + (size_t)p * PAGE, &lo, &hi, "memfd:spanstore") &&
				      !page_is_file(mem + (size_t)p * PAGE),
			      "page %u was mapped", p);
	/* Runs read the store through (a write to the file shows); the pages
	 * kept do not. */
	ck_assert_int_eq(pwrite(memfd, &mark, 1, 2 * PAGE + 50), 1);
	ck_assert_int_eq(pwrite(memfd, &mark, 1, 1 * PAGE + 50), 1);
	ck_assert_uint_eq(mem[2 * PAGE + 50], mark);
	ck_assert_uint_eq(mem[1 * PAGE + 50], want[1 * PAGE + 50]);
	/* A write to a kept page stays private. */
	mem[4 * PAGE] = 1;
	ck_assert_uint_eq(mem[4 * PAGE], 1);

	agent_down(a, &f, path);
	close(uffd);
	close(memfd);
	munmap(mem, N * PAGE);
}
END_TEST

static Suite *agent_suite(void)
{
	Suite *s = suite_create("agent");
	TCase *tc = tcase_create("remap");

	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_agent_zaps_only_frozen_runs);
	tcase_add_loop_test(tc, test_agent_verifies_before_acting, 0, 2);
	tcase_add_test(tc, test_agent_maps_spans);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(agent_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
