// SPDX-License-Identifier: MIT
/*
 * Integration tests of the core (issue 2): real dedupd, real client processes
 * linked with libdedup, figures from the daemon and from the kernel.
 *
 * Child processes are driven over two pipes with one-byte commands: 'v'
 * verify every byte (answers the number of bad pages), 'w' write into the
 * duplicate pages (COW), 'u' unmap/remap the upper half, 'q' quit (and the
 * commands of layout_child()).
 */
#include "tests/harness.h"
#include "dedupd/lib/dedup.h"

#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/socket.h>

#define PAGE 4096u
#define NPAGES 256u
#define NDUP 100u
#define NZERO 50u

struct kid {
	pid_t pid;
	int to, from;
};

static char sock[256];
static pid_t daemon_pid;

static const char *const fast_args[] = { "--pages-to-scan", "100000", "--sleep-millisecs", "5",
					 NULL };

static void setup(void)
{
	h_sock_path(sock, sizeof(sock), "merge");
	daemon_pid = h_daemon_start(sock, fast_args);
	setenv("DEDUPD_SOCKET", sock, 1);
}

static void teardown(void)
{
	if (daemon_pid > 0)
		h_daemon_stop(daemon_pid, SIGTERM);
	daemon_pid = 0;
}

/* ---- the layout child -------------------------------------------------- */

static uint8_t *mem;
static unsigned kid_idx;

/*
 * The gap layout (set before kid_start()): blocks of GAP_BLOCK pages, each
 * GAP_DUP duplicates, GAP_ZERO zero pages, then unique pages: runs of
 * candidates with short gaps between them, which one freeze spans.
 */
static bool gap_layout;
static bool gaps_written; /* 'g': the child wrote its unique pages */
#define GAP_BLOCK 32u
#define GAP_DUP 20u
#define GAP_ZERO 4u
#define GAP_BLOCKS (NPAGES / GAP_BLOCK)

static bool gap_unique(unsigned i)
{
	return i % GAP_BLOCK >= GAP_DUP + GAP_ZERO;
}

/* Page i: duplicate (same in every child), zero, or unique to the child. */
static void expected(uint8_t *page, unsigned i, bool written)
{
	if (gap_layout) {
		if (i % GAP_BLOCK < GAP_DUP)
			h_fill(page, 1, i);
		else if (!gap_unique(i))
			memset(page, 0, PAGE);
		else
			h_fill(page, 100 + kid_idx, i);
		if (gaps_written && gap_unique(i))
			page[17] ^= 0x5a;
		return;
	}
	if (i < NDUP)
		h_fill(page, 1, i);
	else if (i < NDUP + NZERO)
		memset(page, 0, PAGE);
	else
		h_fill(page, 100 + kid_idx, i);
	if (written && i < NDUP)
		page[17] ^= 0x5a;
}

static uint32_t verify_all(bool written)
{
	uint8_t want[PAGE];
	uint32_t bad = 0;

	for (unsigned i = 0; i < NPAGES; i++) {
		expected(want, i, written);
		bad += memcmp(want, mem + (size_t)i * PAGE, PAGE) != 0;
	}
	return bad;
}

/* The kernel's own view of the region: pages present and anonymous
 * (pagemap bit 63 set, bit 61 clear). Merged pages map the store (file);
 * zapped pages are not present. */
static uint32_t anon_pages(void)
{
	uint64_t pm[NPAGES];
	uint32_t n = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY);

	if (fd < 0 || pread(fd, pm, sizeof(pm), (off_t)((uintptr_t)mem / PAGE * 8)) != sizeof(pm))
		return UINT32_MAX;
	close(fd);
	for (unsigned i = 0; i < NPAGES; i++)
		n += (pm[i] >> 63) && !((pm[i] >> 61) & 1);
	return n;
}

/* The application's own SIGSEGV handler (KID_OWN_HANDLER=1: installed
 * before registering, 'h': after). */
static sigjmp_buf own_jmp;
static volatile sig_atomic_t own_faults;

static void own_handler(int sig)
{
	(void)sig;
	own_faults++;
	siglongjmp(own_jmp, 1);
}

static void install_own_handler(void)
{
	struct sigaction sa = { .sa_handler = own_handler };

	sigemptyset(&sa.sa_mask);
	sigaction(SIGSEGV, &sa, NULL);
}

/* Touch a PROT_NONE page: 0 if the application's handler saw the fault. */
static uint32_t own_fault(void)
{
	static volatile char *guard;
	sig_atomic_t before = own_faults;

	if (!guard)
		guard = mmap(NULL, PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (!sigsetjmp(own_jmp, 1))
		(void)guard[0];
	return own_faults == before + 1 ? 0 : 1;
}

#define NLOCKED 16 /* 'p': the last unique pages made inaccessible */

static void layout_child(int in, int out)
{
	bool written = false;
	char cmd;
	int r;

	mem = mmap(NULL, NPAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	for (unsigned i = 0; i < NPAGES; i++)
		expected(mem + (size_t)i * PAGE, i, false);
	if (getenv("KID_OWN_HANDLER"))
		install_own_handler();
	r = dedup_register(mem, NPAGES * PAGE, NULL);
	if (write(out, &r, sizeof(r)) != sizeof(r))
		_exit(2);
	while (read(in, &cmd, 1) == 1) {
		uint32_t bad = 0;

		if (cmd == 'q')
			break;
		if (cmd == 'w') {
			for (unsigned i = 0; i < NDUP; i++)
				mem[(size_t)i * PAGE + 17] ^= 0x5a;
			written = true;
		} else if (cmd == 'g') { /* gap layout: write every unique page */
			for (unsigned i = 0; i < NPAGES; i++)
				if (gap_unique(i))
					mem[(size_t)i * PAGE + 17] ^= 0x5a;
			gaps_written = true;
			bad = verify_all(written);
		} else if (cmd == 'v') {
			bad = verify_all(written);
		} else if (cmd == 'a') {
			bad = anon_pages();
		} else if (cmd == 'p' || cmd == 'P') { /* PROT_NONE on, off */
			bad = (uint32_t)mprotect(mem + (size_t)(NPAGES - NLOCKED) * PAGE, NLOCKED * PAGE,
						 cmd == 'p' ? PROT_NONE : PROT_READ | PROT_WRITE);
		} else if (cmd == 'h') {
			install_own_handler();
		} else if (cmd == 'f') {
			bad = own_fault();
		} else if (cmd == 'd' || cmd == 'D') {
			/* Discard the duplicates (plain madvise, or dedup_discard())
			 * and count those that do not read zeros. */
			if (cmd == 'd')
				madvise(mem, NDUP * PAGE, MADV_DONTNEED);
			else if (dedup_discard(mem, NDUP * PAGE) < 0)
				_exit(3);
			for (unsigned i = 0; i < NDUP; i++)
				for (unsigned j = 0; j < PAGE; j++)
					if (mem[(size_t)i * PAGE + j]) {
						bad++;
						break;
					}
		} else if (cmd == 'u') { /* unmap the duplicates, no unregister */
			bad = (uint32_t)munmap(mem, NDUP * PAGE);
		} else if (cmd == 'o') {
			/* Map fresh memory over the duplicates (no unregister) and
			 * write the same content again. */
			if (mmap(mem, NDUP * PAGE, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != mem)
				_exit(3);
			for (unsigned i = 0; i < NDUP; i++)
				expected(mem + (size_t)i * PAGE, i, written);
		} else if (cmd == 'r') { /* the rest is intact */
			uint8_t want[PAGE];

			for (unsigned i = NDUP; i < NPAGES; i++) {
				expected(want, i, written);
				bad += memcmp(want, mem + (size_t)i * PAGE, PAGE) != 0;
			}
		}
		if (write(out, &bad, sizeof(bad)) != sizeof(bad))
			_exit(2);
	}
	_exit(0);
}

static struct kid kid_start(unsigned idx)
{
	int a[2], b[2], r = -1;
	struct kid k;

	ck_assert_int_eq(pipe(a), 0);
	ck_assert_int_eq(pipe(b), 0);
	k.pid = fork();
	if (k.pid == 0) {
		close(a[1]);
		close(b[0]);
		kid_idx = idx;
		layout_child(a[0], b[1]);
	}
	close(a[0]);
	close(b[1]);
	k.to = a[1];
	k.from = b[0];
	ck_assert_int_eq(read(k.from, &r, sizeof(r)), sizeof(r));
	ck_assert_msg(r == 0, "child %u: dedup_register failed: %s", idx, strerror(-r));
	return k;
}

static uint32_t kid_cmd(struct kid *k, char c)
{
	uint32_t v = UINT32_MAX;

	ck_assert_int_eq(write(k->to, &c, 1), 1);
	ck_assert_int_eq(read(k->from, &v, sizeof(v)), sizeof(v));
	return v;
}

/* Start layout children 0..n-1 and wait until their duplicates are merged:
 * (n - 1) * NDUP pages saved. */
static void kids_start_merged(struct kid *k, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		k[i] = kid_start(i);
	ck_assert(h_wait_stat(sock, "pages_sharing", (int64_t)(n - 1) * NDUP, false, 15000));
}

static void kid_stop(struct kid *k)
{
	int st;

	kid_cmd(k, 'v');
	if (write(k->to, "q", 1) != 1)
		kill(k->pid, SIGKILL);
	waitpid(k->pid, &st, 0);
	close(k->to);
	close(k->from);
}

/* ---- tests ------------------------------------------------------------- */

START_TEST(test_merge_exact_counts)
{
	struct kid k[3];
	uint32_t before[3], after;

	H_SKIP_UNLESS_ROOT();
	for (unsigned i = 0; i < 3; i++) {
		k[i] = kid_start(i);
		before[i] = kid_cmd(&k[i], 'a');
	}
	ck_assert_msg(h_wait_stat(sock, "zero_pages", 3 * NZERO, false, 15000),
		      "zero_pages %lld, want %u", (long long)h_stat(sock, "zero_pages"), 3 * NZERO);
	ck_assert_msg(h_wait_stat(sock, "pages_sharing", 2 * NDUP, false, 15000),
		      "pages_sharing %lld, want %u", (long long)h_stat(sock, "pages_sharing"),
		      2 * NDUP);
	ck_assert_int_eq(h_stat(sock, "pages_shared"), NDUP);
	ck_assert_int_eq(h_stat(sock, "clients"), 3);
	ck_assert_int_eq(h_stat(sock, "regions"), 3);
	ck_assert_int_eq(h_stat(sock, "cow_breaks"), 0);
	/* The agents checksummed the pages in place (scan.agent_hash). */
	ck_assert_int_ge(h_stat(sock, "agent_hash_pages"), 3 * NPAGES);
	ck_assert_int_eq(h_stat(sock, "agent_hash_unreadable"), 0);
	/* Stable: a few more passes change nothing. */
	h_sleep_ms(300);
	ck_assert_int_eq(h_stat(sock, "pages_sharing"), 2 * NDUP);
	ck_assert_int_eq(h_stat(sock, "zero_pages"), 3 * NZERO);
	/* The net figure charges everything the daemon holds: with only 300
	 * pages saved here, its own resident memory may outweigh them. Both
	 * from one answer: the daemon's memory moves between two. */
	{
		struct json_object *o, *net, *anon;
		char *t = NULL;

		ck_assert_int_eq(h_admin(sock, "stats", &t), 0);
		o = json_tokener_parse(t);
		ck_assert(o && json_object_object_get_ex(o, "bytes_saved_net", &net) &&
			  json_object_object_get_ex(o, "daemon_anon_bytes", &anon));
		ck_assert_int_gt(json_object_get_int64(anon), 0);
		ck_assert_int_le(json_object_get_int64(net), (int64_t)(2 * NDUP + 3 * NZERO) * PAGE -
								     json_object_get_int64(anon));
		json_object_put(o);
		free(t);
	}
	for (unsigned i = 0; i < 3; i++) {
		/* The kernel's accounting (pagemap): the region's anonymous pages
		 * are only the unique ones now; the duplicates map store pages and
		 * the zero pages are gone. */
		after = kid_cmd(&k[i], 'a');
		ck_assert_msg(after == NPAGES - NDUP - NZERO,
			      "child %u: anonymous pages %u -> %u, want %u", i, before[i], after,
			      NPAGES - NDUP - NZERO);
		ck_assert_int_eq(kid_cmd(&k[i], 'v'), 0);
	}
	for (unsigned i = 0; i < 3; i++)
		kid_stop(&k[i]);
	ck_assert(h_wait_stat(sock, "clients", 0, false, 5000));
	ck_assert(h_wait_stat(sock, "pages_sharing", 0, false, 5000));
}
END_TEST

/*
 * Runs of candidates a few pages apart are write-protected as one span, gaps
 * included (one TLB flush instead of one per page): the unique pages in the
 * gaps stay protected after the merge, and the application's first write to
 * each takes a fault that the daemon answers at once. Nothing is lost, no
 * writer hangs, and the merges are exact. Without the spans the writes below
 * take no fault at all.
 */
START_TEST(test_freeze_span_bridges_gaps)
{
	const unsigned interior = (GAP_BLOCKS - 1) * (GAP_BLOCK - GAP_DUP - GAP_ZERO);
	struct kid k[2];
	int64_t f0, f1;

	H_SKIP_UNLESS_ROOT();
	gap_layout = true;
	for (unsigned i = 0; i < 2; i++)
		k[i] = kid_start(i);
	gap_layout = false;
	ck_assert_msg(h_wait_stat(sock, "pages_sharing", GAP_BLOCKS * GAP_DUP, false, 15000),
		      "pages_sharing %lld", (long long)h_stat(sock, "pages_sharing"));
	ck_assert(h_wait_stat(sock, "zero_pages", 2 * GAP_BLOCKS * GAP_ZERO, false, 15000));
	f0 = h_stat(sock, "wp_faults");
	ck_assert_int_eq(kid_cmd(&k[0], 'g'), 0); /* writes, then reads back every page */
	f1 = h_stat(sock, "wp_faults");
	ck_assert_msg(f1 - f0 >= interior, "%lld faults for %u bridged pages written",
		      (long long)(f1 - f0), interior);
	ck_assert_int_eq(kid_cmd(&k[0], 'v'), 0);
	ck_assert_int_eq(kid_cmd(&k[1], 'v'), 0);
	ck_assert_int_eq(h_stat(sock, "pages_sharing"), GAP_BLOCKS * GAP_DUP);
	ck_assert_int_eq(h_stat(sock, "merge_failed"), 0);
	for (unsigned i = 0; i < 2; i++)
		kid_stop(&k[i]);
}
END_TEST

/*
 * Unique pages leave the unstable table after a few passes (cold: only their
 * 8-byte record) and look themselves up every third pass; a copy of them that
 * comes later must still be found and merged, page for page.
 */
START_TEST(test_cold_pages_found_later)
{
	const uint32_t nonzero = NPAGES - NZERO;
	struct kid a, b;

	H_SKIP_UNLESS_ROOT();
	a = kid_start(0); /* alone: all its non-zero pages are unique for now */
	ck_assert(h_wait_stat(sock, "zero_pages", NZERO, false, 15000));
	ck_assert_msg(h_wait_stat(sock, "unstable_nodes", 0, false, 15000),
		      "unstable_nodes %lld: unique pages did not leave the table",
		      (long long)h_stat(sock, "unstable_nodes"));
	ck_assert_int_eq(h_stat(sock, "pages_unshared"), nonzero);
	ck_assert_int_eq(h_stat(sock, "pages_sharing"), 0);
	/* The same content again, in a second process, long after. */
	b = kid_start(0);
	ck_assert_msg(h_wait_stat(sock, "pages_sharing", nonzero, false, 20000),
		      "pages_sharing %lld, want %u (cold pages not found)",
		      (long long)h_stat(sock, "pages_sharing"), nonzero);
	ck_assert_int_eq(h_stat(sock, "pages_shared"), nonzero);
	ck_assert_int_eq(h_stat(sock, "pages_unshared"), 0);
	ck_assert_int_eq(h_stat(sock, "unstable_nodes"), 0);
	ck_assert_int_eq(h_stat(sock, "zero_pages"), 2 * NZERO);
	ck_assert_int_eq(kid_cmd(&a, 'a'), 0); /* nothing anonymous left in either */
	ck_assert_int_eq(kid_cmd(&b, 'a'), 0);
	ck_assert_int_eq(kid_cmd(&a, 'v'), 0);
	ck_assert_int_eq(kid_cmd(&b, 'v'), 0);
	/* A write to a merged page is private, and the page starts over. */
	ck_assert_int_eq(kid_cmd(&a, 'w'), 0);
	ck_assert_int_eq(kid_cmd(&a, 'v'), 0);
	ck_assert_int_eq(kid_cmd(&b, 'v'), 0);
	kid_stop(&a);
	kid_stop(&b);
	ck_assert(h_wait_stat(sock, "clients", 0, false, 5000));
	ck_assert(h_wait_stat(sock, "pages_unshared", 0, false, 5000));
}
END_TEST

/*
 * Regions of several scan batches (1024 pages each): the agent checksums the
 * next batch while the daemon works on, and merges from, the one before, so
 * a merge must first take the agent's answer still out. Two processes, each
 * with two regions of 2.5 batches: a duplicate every third page, the rest
 * unique. Every duplicate merges exactly once, and no byte changes.
 */
#define MB_PAGES 2560u
/* Page i of region k of child idx: a duplicate every third page. */
static unsigned mb_seed(unsigned i, unsigned idx, unsigned k)
{
	return i % 3 == 0 ? 7u + k : 50u + idx * 2 + k;
}

static void mb_child(int out, unsigned idx)
{
	uint8_t *m[2];
	uint32_t bad = 0;
	int r = 0;
	char c;

	for (int k = 0; k < 2; k++) {
		m[k] = mmap(NULL, MB_PAGES * PAGE, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		for (unsigned i = 0; i < MB_PAGES; i++)
			h_fill(m[k] + (size_t)i * PAGE, mb_seed(i, idx, (unsigned)k), i);
		r |= dedup_register(m[k], MB_PAGES * PAGE, NULL);
	}
	if (write(out, &r, sizeof(r)) != sizeof(r))
		_exit(2);
	if (read(out, &c, 1) != 1) /* the test says when to check */
		_exit(3);
	for (int k = 0; k < 2; k++)
		for (unsigned i = 0; i < MB_PAGES; i++) {
			uint8_t want[PAGE];

			h_fill(want, mb_seed(i, idx, (unsigned)k), i);
			bad += memcmp(want, m[k] + (size_t)i * PAGE, PAGE) != 0;
		}
	if (write(out, &bad, sizeof(bad)) != sizeof(bad))
		_exit(2);
	_exit(0);
}

START_TEST(test_multi_batch_regions)
{
	const int64_t ndup = 2 * ((MB_PAGES + 2) / 3);
	int sp[2][2];
	pid_t pid[2];

	H_SKIP_UNLESS_ROOT();
	for (unsigned k = 0; k < 2; k++) {
		int r = -1;

		ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sp[k]), 0);
		pid[k] = fork();
		ck_assert_int_ge(pid[k], 0);
		if (pid[k] == 0) {
			close(sp[k][0]);
			mb_child(sp[k][1], k);
		}
		close(sp[k][1]);
		ck_assert_int_eq(read(sp[k][0], &r, sizeof(r)), (ssize_t)sizeof(r));
		ck_assert_int_eq(r, 0);
	}
	ck_assert_msg(h_wait_stat(sock, "pages_sharing", ndup, false, 20000),
		      "pages_sharing %lld, want %lld", (long long)h_stat(sock, "pages_sharing"),
		      (long long)ndup);
	ck_assert_int_eq(h_stat(sock, "pages_shared"), ndup);
	ck_assert_int_eq(h_stat(sock, "merges"), 2 * ndup);
	ck_assert_int_eq(h_stat(sock, "merge_failed"), 0);
	ck_assert_int_ge(h_stat(sock, "agent_hash_pages"), 4 * MB_PAGES);
	/* Checksums asked while a REMAP was out came after its answer: every
	 * request was answered in time. */
	ck_assert_int_eq(h_stat(sock, "agent_timeouts"), 0);
	for (unsigned k = 0; k < 2; k++) {
		uint32_t bad = UINT32_MAX;
		int st;

		ck_assert_int_eq(write(sp[k][0], "v", 1), 1);
		ck_assert_int_eq(read(sp[k][0], &bad, sizeof(bad)), (ssize_t)sizeof(bad));
		ck_assert_uint_eq(bad, 0);
		waitpid(pid[k], &st, 0);
		close(sp[k][0]);
	}
}
END_TEST

/* Clients that do not let their agent hash (DEDUP_NO_AGENT_HASH=1) are
 * copied from, with the same result. */
START_TEST(test_copy_path_without_agent_hash)
{
	struct kid k[3];

	H_SKIP_UNLESS_ROOT();
	setenv("DEDUP_NO_AGENT_HASH", "1", 1);
	for (unsigned i = 0; i < 3; i++)
		k[i] = kid_start(i);
	unsetenv("DEDUP_NO_AGENT_HASH");
	ck_assert_msg(h_wait_stat(sock, "pages_sharing", 2 * NDUP, false, 15000),
		      "pages_sharing %lld, want %u", (long long)h_stat(sock, "pages_sharing"),
		      2 * NDUP);
	ck_assert(h_wait_stat(sock, "zero_pages", 3 * NZERO, false, 15000));
	ck_assert_int_eq(h_stat(sock, "pages_shared"), NDUP);
	ck_assert_int_ge(h_stat(sock, "pages_scanned"), 3 * NPAGES);
	ck_assert_int_eq(h_stat(sock, "agent_hash_pages"), 0);
	for (unsigned i = 0; i < 3; i++) {
		ck_assert_uint_eq(kid_cmd(&k[i], 'a'), NPAGES - NDUP - NZERO);
		kid_stop(&k[i]);
	}
}
END_TEST

/* Pages made inaccessible (PROT_NONE: still present in pagemap) fault when
 * the agent reads them: the agent reports them unreadable and the client
 * runs on, its data intact. */
START_TEST(test_agent_hash_survives_faults)
{
	struct kid k[2];
	int64_t bad0;

	H_SKIP_UNLESS_ROOT();
	kids_start_merged(k, 2);
	bad0 = h_stat(sock, "agent_hash_unreadable");
	ck_assert_uint_eq(kid_cmd(&k[0], 'p'), 0);
	ck_assert_msg(h_wait_stat(sock, "agent_hash_unreadable", bad0 + 3 * NLOCKED, true, 15000),
		      "agent_hash_unreadable %lld, want >= %lld",
		      (long long)h_stat(sock, "agent_hash_unreadable"),
		      (long long)(bad0 + 3 * NLOCKED));
	ck_assert_uint_eq(kid_cmd(&k[0], 'P'), 0);
	ck_assert_uint_eq(kid_cmd(&k[0], 'v'), 0);
	ck_assert_int_eq(h_stat(sock, "pages_sharing"), NDUP);
	for (unsigned i = 0; i < 2; i++)
		kid_stop(&k[i]);
}
END_TEST

/*
 * The agent's fault handler passes the application's own faults on to the
 * handler it had before registering; a handler the application installs
 * afterwards replaces the agent's, and dedupd then copies pages instead.
 */
START_TEST(test_agent_hash_chains_signals)
{
	struct kid k[2];
	int64_t hashed, scanned;

	H_SKIP_UNLESS_ROOT();
	setenv("KID_OWN_HANDLER", "1", 1);
	for (unsigned i = 0; i < 2; i++)
		k[i] = kid_start(i);
	unsetenv("KID_OWN_HANDLER");
	ck_assert(h_wait_stat(sock, "pages_sharing", NDUP, false, 15000));
	ck_assert_int_gt(h_stat(sock, "agent_hash_pages"), 0);
	ck_assert_uint_eq(kid_cmd(&k[0], 'f'), 0); /* chained to its handler */
	ck_assert_uint_eq(kid_cmd(&k[0], 'f'), 0);
	for (unsigned i = 0; i < 2; i++)
		ck_assert_uint_eq(kid_cmd(&k[i], 'h'), 0); /* theirs in front now */
	h_sleep_ms(300); /* each agent notices at its next HASH */
	hashed = h_stat(sock, "agent_hash_pages");
	scanned = h_stat(sock, "pages_scanned");
	ck_assert(h_wait_stat(sock, "pages_scanned", scanned + 4 * NPAGES, true, 15000));
	ck_assert_int_eq(h_stat(sock, "agent_hash_pages"), hashed);
	for (unsigned i = 0; i < 2; i++)
		ck_assert_uint_eq(kid_cmd(&k[i], 'f'), 0);
	ck_assert_int_eq(h_stat(sock, "pages_sharing"), NDUP); /* nothing came apart */
	for (unsigned i = 0; i < 2; i++) {
		ck_assert_uint_eq(kid_cmd(&k[i], 'v'), 0);
		kid_stop(&k[i]);
	}
}
END_TEST

START_TEST(test_cow_write_is_private)
{
	struct kid k[3];

	H_SKIP_UNLESS_ROOT();
	kids_start_merged(k, 3);
	ck_assert_int_eq(kid_cmd(&k[0], 'w'), 0); /* child 0 writes its 100 dups */
	ck_assert_int_eq(kid_cmd(&k[0], 'v'), 0); /* and reads its own writes */
	/* The others and the store are untouched. */
	ck_assert_int_eq(kid_cmd(&k[1], 'v'), 0);
	ck_assert_int_eq(kid_cmd(&k[2], 'v'), 0);
	/* The daemon sees the COW breaks and uncounts them. */
	ck_assert_msg(h_wait_stat(sock, "cow_breaks", NDUP, false, 10000), "cow_breaks %lld",
		      (long long)h_stat(sock, "cow_breaks"));
	ck_assert(h_wait_stat(sock, "pages_sharing", NDUP, false, 10000));
	ck_assert_int_eq(h_stat(sock, "pages_shared"), NDUP);
	for (unsigned i = 0; i < 3; i++)
		kid_stop(&k[i]);
}
END_TEST

/* ---- racing writers ----------------------------------------------------- */

#define RACE_PAGES 512u
#define RACE_THREADS 4u

struct race {
	uint8_t *mem;
	uint64_t *shadow; /* MAP_SHARED: never merged */
	atomic_ulong *progress;
	atomic_bool stop;
	atomic_ulong lost;
	unsigned seed;
	bool scatter; /* test_race_spans_no_lost_writes: base_word() is per page */
};

static uint64_t base_word(const struct race *r, unsigned page, unsigned w)
{
	unsigned i = page % (RACE_PAGES / 2);

	if (!r->scatter)
		return 0x1111111111111111ULL * (w % 15 + 1);
	/* Two halves alike in their even pages, each page of its own. */
	return (i % 2 ? page * 0x9e3779b97f4a7c15ULL : i * 0xc2b2ae3d27d4eb4fULL) + w + 1;
}

static void *writer(void *arg)
{
	struct race *r = arg;
	unsigned t = __atomic_fetch_add(&r->seed, 1, __ATOMIC_RELAXED);
	uint64_t x = t * 2654435761u + 1, n = 0;
	unsigned last_page = 0, last_w = 0;

	while (!atomic_load(&r->stop)) {
		unsigned page, w;
		volatile uint64_t *p;
		uint64_t v;

		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		page = (unsigned)(x % (RACE_PAGES / RACE_THREADS)) * RACE_THREADS + t;
		w = (unsigned)((x >> 20) % 512);
		p = (volatile uint64_t *)(r->mem + (size_t)page * PAGE) + w;
		/* Half the writes restore the base value, so pages keep becoming
		 * identical again and keep being merged under the writers. */
		v = (x & 1) ? base_word(r, page, w) : (x | 1);
		if (r->scatter) { /* a word set, then put back: pages keep coming back */
			if (n & 1) {
				page = last_page;
				w = last_w;
				p = (volatile uint64_t *)(r->mem + (size_t)page * PAGE) + w;
				v = base_word(r, page, w);
			} else {
				v = x | 1;
				last_page = page;
				last_w = w;
			}
		}
		*p = v;
		r->shadow[page * 512 + w] = v;
		if (*p != v)
			atomic_fetch_add(&r->lost, 1);
		atomic_fetch_add(r->progress, 1);
		if ((++n & (r->scatter ? 31 : 255)) == 0)
			h_sleep_ms(1);
	}
	return NULL;
}

static struct race *race_new(bool scatter)
{
	struct race *r = mmap(NULL, sizeof(*r), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
			      -1, 0);

	r->mem = mmap(NULL, RACE_PAGES * PAGE, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	r->shadow = mmap(NULL, RACE_PAGES * PAGE, PROT_READ | PROT_WRITE,
			 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	r->progress = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	r->scatter = scatter;
	for (unsigned p = 0; p < RACE_PAGES; p++)
		for (unsigned w = 0; w < 512; w++)
			((uint64_t *)r->mem)[p * 512 + w] = r->shadow[p * 512 + w] =
				base_word(r, p, w);
	return r;
}

/* Child: register, write from RACE_THREADS threads for ms, verify. Exit code:
 * 0 all writes intact, 1 lost writes, 2 setup failed. */
static int race_child(struct race *r, unsigned ms, bool need_register)
{
	pthread_t th[RACE_THREADS];
	unsigned long bad = 0;

	if (need_register && dedup_register(r->mem, RACE_PAGES * PAGE, NULL) < 0)
		return 2;
	for (unsigned i = 0; i < RACE_THREADS; i++)
		pthread_create(&th[i], NULL, writer, r);
	h_sleep_ms(ms);
	atomic_store(&r->stop, true);
	for (unsigned i = 0; i < RACE_THREADS; i++)
		pthread_join(th[i], NULL);
	for (unsigned i = 0; i < RACE_PAGES * 512; i++)
		bad += ((uint64_t *)r->mem)[i] != r->shadow[i];
	if (bad || atomic_load(&r->lost))
		fprintf(stderr, "race: %lu words differ, %lu read-backs lost\n", bad,
			(unsigned long)atomic_load(&r->lost));
	return bad || atomic_load(&r->lost) ? 1 : 0;
}

START_TEST(test_race_no_lost_writes)
{
	struct race *r;
	int64_t m0;
	pid_t pid;
	int st;

	H_SKIP_UNLESS_ROOT();
	r = race_new(false);
	m0 = h_stat(sock, "merges");
	pid = fork();
	if (pid == 0)
		_exit(race_child(r, 8000, true));
	waitpid(pid, &st, 0);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "lost writes (status %d)", st);
	ck_assert_msg(*r->progress > 100000, "writers made only %lu writes",
		      (unsigned long)*r->progress);
	fprintf(stderr, "race: %lu writes, %lld merges, %lld cow breaks, %lld wp faults\n",
		(unsigned long)*r->progress, (long long)(h_stat(sock, "merges") - m0),
		(long long)h_stat(sock, "cow_breaks"), (long long)h_stat(sock, "wp_faults"));
	ck_assert_int_ge(h_stat(sock, "merges") - m0, 2000);
	ck_assert_int_gt(h_stat(sock, "cow_breaks"), 100);
}
END_TEST

/*
 * The race above through spans: a daemon that may add 400 VMAs to the
 * client (its threads take ~20, more under ASan) turns to spans within the
 * first pass, once a batch's runs would take half of what is left, and the
 * writers hit the pages between the runs (which the agent copies into the
 * span) as much as the runs. Every write must be there at the end.
 */
START_TEST(test_race_spans_no_lost_writes)
{
	static const char *const args[] = { "--pages-to-scan", "100000", "--sleep-millisecs", "5",
					    "--set", "scan.max_vmas_per_client=400", NULL };
	struct race *r;
	pid_t pid;
	int st;

	H_SKIP_UNLESS_ROOT();
	h_daemon_stop(daemon_pid, SIGTERM);
	daemon_pid = h_daemon_start(sock, args);
	r = race_new(true);
	pid = fork();
	if (pid == 0)
		_exit(race_child(r, 8000, true));
	waitpid(pid, &st, 0);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "lost writes (status %d)", st);
	fprintf(stderr, "race spans: %lu writes, %lld merges, %lld spans, %lld cow breaks\n",
		(unsigned long)*r->progress, (long long)h_stat(sock, "merges"),
		(long long)h_stat(sock, "remap_spans"), (long long)h_stat(sock, "cow_breaks"));
	ck_assert_msg(*r->progress > 100000, "writers made only %lu writes",
		      (unsigned long)*r->progress);
	/* The first pass maps the duplicates by spans under the writers; a
	 * page written since goes back on its own (a VMA each) while the
	 * budget lasts. */
	ck_assert_int_ge(h_stat(sock, "remap_spans"), 1);
	ck_assert_int_ge(h_stat(sock, "merges"), 100);
	ck_assert_int_gt(h_stat(sock, "cow_breaks"), 50);
}
END_TEST

START_TEST(test_daemon_killed_mid_merge)
{
	H_SKIP_UNLESS_ROOT();
	for (int round = 0; round < 3; round++) {
		struct race *r = race_new(false);
		unsigned long p0;
		pid_t pid;
		int st;

		if (!daemon_pid)
			daemon_pid = h_daemon_start(sock, fast_args);
		pid = fork();
		if (pid == 0)
			_exit(race_child(r, 3000, true));
		h_sleep_ms(700 + round * 300);
		ck_assert_int_gt(h_stat(sock, "merges"), 0);
		h_daemon_stop(daemon_pid, SIGKILL); /* writers may be frozen right now */
		daemon_pid = 0;
		p0 = *r->progress;
		h_sleep_ms(500);
		ck_assert_msg(*r->progress > p0 + 1000, "writers hang after the daemon died");
		waitpid(pid, &st, 0);
		ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "round %d: status %d", round,
			      st);
	}
}
END_TEST

START_TEST(test_client_killed_mid_merge)
{
	struct kid a, b, c;

	H_SKIP_UNLESS_ROOT();
	a = kid_start(0);
	b = kid_start(1);
	h_sleep_ms(15); /* in the middle of the first merges */
	kill(a.pid, SIGKILL);
	waitpid(a.pid, NULL, 0);
	ck_assert(h_wait_stat(sock, "clients", 1, false, 5000));
	c = kid_start(2);
	ck_assert_msg(h_wait_stat(sock, "pages_sharing", NDUP, false, 15000),
		      "pages_sharing %lld, pages_shared %lld, want %u",
		      (long long)h_stat(sock, "pages_sharing"), (long long)h_stat(sock, "pages_shared"),
		      NDUP);
	ck_assert_int_eq(h_stat(sock, "pages_shared"), NDUP);
	ck_assert_int_eq(kid_cmd(&b, 'v'), 0);
	ck_assert_int_eq(kid_cmd(&c, 'v'), 0);
	kid_stop(&b);
	kid_stop(&c);
	close(a.to);
	close(a.from);
}
END_TEST

/*
 * An agent that answers a REMAP only after the daemon gave up waiting (a
 * stalled or stopped client; $DEDUP_TEST_REMAP_DELAY_MS makes libdedup's
 * agent sleep before each REMAP) still carries it out later, in order. The
 * daemon must keep the store pages it asked to map until the agent has
 * answered again: here the other sharer dies meanwhile, and a store page
 * given back and punched out before the late remap (6 s on) would read as
 * zeros.
 */
START_TEST(test_late_remap_keeps_store_pages)
{
	const char *args[] = { "--pages-to-scan", "100000", "--sleep-millisecs", "5",
			       "--agent-timeout-ms", "200", NULL };
	struct kid a, b;
	int64_t freed0, freed;
	uint64_t t0;
	int st;

	H_SKIP_UNLESS_ROOT();
	h_daemon_stop(daemon_pid, SIGTERM);
	daemon_pid = h_daemon_start(sock, args);
	a = kid_start(0);
	ck_assert(h_wait_stat(sock, "pages_unshared", NPAGES - NZERO, false, 10000));
	setenv("DEDUP_TEST_REMAP_DELAY_MS", "6000", 1);
	t0 = h_now_ms();
	b = kid_start(1); /* its duplicates fill the store pages; a's merge onto them */
	unsetenv("DEDUP_TEST_REMAP_DELAY_MS");
	ck_assert_msg(h_wait_stat(sock, "merges", 2 * NDUP + 2 * NZERO, true, 3000),
		      "merges %lld", (long long)h_stat(sock, "merges"));
	freed0 = h_stat(sock, "store_pages_freed");
	kill(a.pid, SIGKILL); /* the other sharer goes */
	waitpid(a.pid, &st, 0);
	close(a.to);
	close(a.from);
	ck_assert(h_wait_stat(sock, "clients", 1, false, 5000));
	h_sleep_ms(2500); /* a store GC runs (every 2 s) before the late remap */
	freed = h_stat(sock, "store_pages_freed");
	if (h_now_ms() - t0 >= 6000) /* a slow build (ThreadSanitizer): too late to tell */
		printf("%s: the remap came before the GC could run; checking the data only\n",
		       __func__);
	while (h_now_ms() - t0 < 6500)
		h_sleep_ms(50); /* the agent has remapped by now */
	ck_assert_uint_eq(kid_cmd(&b, 'v'), 0);		/* no page reads zeros */
	ck_assert_int_eq(freed, freed0);		/* b might still map them */
	ck_assert_int_eq(h_stat(sock, "pages_shared"), NDUP);
	ck_assert_int_gt(h_stat(sock, "agent_timeouts"), 0); /* counted, and shown */
	kid_stop(&b);
}
END_TEST

/*
 * The window of a batched remap (agent.c, do_remaps()): the agent empties
 * the runs of a REMAP with one MADV_DONTNEED, then maps the store over each.
 * A thread of the client that reads a page in between must wait for the
 * mapping, not read zeros. $DEDUP_TEST_EMPTY_DELAY_MS holds the window open.
 * The child reads its duplicates in two threads for ms milliseconds and
 * reports wrong reads and its longest single read; then it writes one byte
 * of every duplicate and checks every page.
 */
struct window_reader {
	const uint8_t *want;
	uint64_t end_ms, worst_ms;
	uint32_t bad;
};

static void *window_read(void *arg)
{
	struct window_reader *w = arg;

	while (h_now_ms() < w->end_ms)
		for (unsigned i = 0; i < NDUP; i++) {
			uint64_t t0 = h_now_ms(), dt;

			w->bad += memcmp(mem + (size_t)i * PAGE, w->want + (size_t)i * PAGE, PAGE) != 0;
			dt = h_now_ms() - t0;
			w->worst_ms = dt > w->worst_ms ? dt : w->worst_ms;
		}
	return NULL;
}

/* Is one of the duplicates at base in pid not present (emptied by the
 * agent, not mapped again yet)? */
static bool window_open(pid_t pid, uint64_t base)
{
	char path[64];
	uint64_t pm[NDUP];
	bool open_ = false;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)pid);
	if ((fd = open(path, O_RDONLY)) < 0)
		return false;
	if (pread(fd, pm, sizeof(pm), (off_t)(base / PAGE * 8)) == (ssize_t)sizeof(pm))
		for (unsigned i = 0; i < NDUP; i++)
			open_ |= !(pm[i] >> 63);
	close(fd);
	return open_;
}

/* window_child(): ms after the window is seen open, unregister (0: never);
 * out[3] is then dedup_unregister()'s result, not the forked child's. */
static unsigned window_unregister_ms;

static pid_t window_child(unsigned idx, unsigned ms, int *from, uint64_t *base)
{
	int p[2];
	pid_t pid;

	ck_assert_int_eq(pipe(p), 0);
	pid = fork();
	if (pid == 0) {
		struct window_reader rd[2];
		pthread_t t[2];
		uint32_t out[4] = { 0, 0, 0, 0 };
		uint8_t *want = malloc((size_t)NDUP * PAGE);

		close(p[0]);
		kid_idx = idx;
		mem = mmap(NULL, NPAGES * PAGE, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (!want || mem == MAP_FAILED)
			_exit(2);
		for (unsigned i = 0; i < NPAGES; i++)
			expected(mem + (size_t)i * PAGE, i, false);
		for (unsigned i = 0; i < NDUP; i++)
			expected(want + (size_t)i * PAGE, i, false);
		*base = (uintptr_t)mem;
		if (write(p[1], base, sizeof(*base)) != sizeof(*base) ||
		    dedup_register(mem, NPAGES * PAGE, NULL))
			_exit(3);
		for (int i = 0; i < 2; i++) {
			rd[i] = (struct window_reader){ want, h_now_ms() + ms, 0, 0 };
			pthread_create(&t[i], NULL, window_read, &rd[i]);
		}
		/* fork() in the window: it waits until the runs are mapped,
		 * or the child would find them empty. */
		out[3] = UINT32_MAX;
		for (uint64_t t0 = h_now_ms(); h_now_ms() - t0 < ms - 1000; h_sleep_ms(1)) {
			pid_t g;
			int st;

			if (!window_open(getpid(), *base))
				continue;
			if (window_unregister_ms) {
				h_sleep_ms(window_unregister_ms);
				out[3] = (uint32_t)-dedup_unregister(mem, NPAGES * PAGE);
				break;
			}
			g = fork();
			if (g == 0) {
				uint32_t bad = 0;

				for (unsigned i = 0; i < NDUP; i++)
					bad += memcmp(mem + (size_t)i * PAGE, want + (size_t)i * PAGE,
						      PAGE) != 0;
				_exit(bad > 250 ? 250 : (int)bad);
			}
			waitpid(g, &st, 0);
			out[3] = WIFEXITED(st) ? (uint32_t)WEXITSTATUS(st) : 255;
			break;
		}
		for (int i = 0; i < 2; i++) {
			pthread_join(t[i], NULL);
			out[0] += rd[i].bad;
			out[1] = (uint32_t)(rd[i].worst_ms > out[1] ? rd[i].worst_ms : out[1]);
		}
		for (unsigned i = 0; i < NDUP; i++)
			mem[(size_t)i * PAGE + 17] ^= 0x5a; /* writes go through */
		out[2] = verify_all(true);
		_exit(write(p[1], out, sizeof(out)) == sizeof(out) ? 0 : 4);
	}
	close(p[1]);
	*from = p[0];
	ck_assert_int_eq(read(p[0], base, sizeof(*base)), sizeof(*base));
	return pid;
}

/* Wait for the window child: 0, or -1 if it hangs past deadline_ms. */
static int window_wait(pid_t pid, int from, uint32_t out[4], uint64_t deadline_ms)
{
	int st = -1;

	while (waitpid(pid, &st, WNOHANG) == 0) {
		if (h_now_ms() > deadline_ms) {
			kill(pid, SIGKILL);
			waitpid(pid, &st, 0);
			close(from);
			return -1;
		}
		h_sleep_ms(20);
	}
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "window child status %d", st);
	ck_assert_int_eq(read(from, out, 4 * sizeof(out[0])), 4 * sizeof(out[0]));
	close(from);
	return 0;
}

/*
 * Start a sharer, then a window child whose agent holds each remap window
 * open for delay_ms (readers for ms); with kill_daemon, SIGKILL the daemon
 * once the window is seen open. out[] as window_child(). Checks that no
 * read saw a wrong byte and that every page of both is right at the end.
 */
static void window_run(const char *delay_ms, unsigned ms, bool kill_daemon, uint32_t out[4])
{
	uint64_t base, t0;
	bool seen = false;
	struct kid a;
	int from;
	pid_t b;

	a = kid_start(0);
	ck_assert(h_wait_stat(sock, "pages_unshared", NPAGES - NZERO, false, 10000));
	setenv("DEDUP_TEST_EMPTY_DELAY_MS", delay_ms, 1);
	b = window_child(1, ms, &from, &base);
	unsetenv("DEDUP_TEST_EMPTY_DELAY_MS");
	if (kill_daemon) {
		for (t0 = h_now_ms(); !seen && h_now_ms() - t0 < 4000; h_sleep_ms(1))
			seen = window_open(b, base);
		h_daemon_stop(daemon_pid, SIGKILL);
		daemon_pid = 0;
	}
	ck_assert_msg(window_wait(b, from, out, h_now_ms() + 30000) == 0,
		      "the client hangs%s", kill_daemon ? " after the daemon died" : "");
	ck_assert_msg(!kill_daemon || seen, "the remap window was never seen open");
	ck_assert_msg(out[0] == 0, "%u reads saw the wrong bytes", out[0]);
	ck_assert_uint_eq(out[2], 0);
	ck_assert_uint_eq(kid_cmd(&a, 'v'), 0);
	kid_stop(&a);
}

START_TEST(test_emptied_runs_wait_for_remap)
{
	uint32_t out[4];

	H_SKIP_UNLESS_ROOT();
	window_run("1000", 4000, false, out);
	ck_assert_msg(out[1] >= 500, "no read waited in the window (longest %u ms)", out[1]);
	ck_assert_msg(out[3] == 0, "a child forked in the window: %u pages wrong", out[3]);
	ck_assert_int_eq(h_stat(sock, "merge_failed"), 0);
}
END_TEST

/*
 * The same window with the daemon killed in it: the agent's own copy of the
 * uffd keeps the waiting readers waiting until their runs are mapped (with
 * the daemon's copy alone, its death would wake them onto empty pages:
 * zeros). Then the agent closes its copy, and writes to pages still frozen
 * go through: nothing hangs.
 */
START_TEST(test_daemon_killed_in_remap_window)
{
	uint32_t out[4];

	H_SKIP_UNLESS_ROOT();
	window_run("2000", 5000, true, out);
	ck_assert_msg(out[1] >= 500, "no read waited in the window (longest %u ms)", out[1]);
}
END_TEST

/*
 * The application unregisters its region while its agent is still in the
 * window of a REMAP the daemon stopped waiting for (agent timeout 500 ms,
 * window held 900 ms): the daemon first waits for the agent to answer, or
 * the unregistration would drop the missing-page mode that holds the
 * readers, and they would read the empty pages (zeros).
 */
START_TEST(test_unregister_waits_for_late_remap)
{
	/* A long pause between passes: the scan is not waiting for the agent
	 * (with the client locked) when the unregistration comes. */
	const char *args[] = { "--pages-to-scan", "100000", "--sleep-millisecs", "1500",
			       "--agent-timeout-ms", "500", NULL };
	uint32_t out[4];

	H_SKIP_UNLESS_ROOT();
	h_daemon_stop(daemon_pid, SIGTERM);
	daemon_pid = h_daemon_start(sock, args);
	window_unregister_ms = 600;
	window_run("900", 6000, false, out);
	window_unregister_ms = 0;
	ck_assert_msg(out[3] == 0, "dedup_unregister: %s", strerror((int)out[3]));
}
END_TEST

/*
 * A region registered while the scanner pauses between passes is scanned at
 * once, not after the pause (here 5 s; after idle passes up to
 * idle_backoff_ms_max). The second child's duplicates merge with the first
 * child's well within the pause; without the wake-up they wait it out.
 */
START_TEST(test_register_wakes_scanner)
{
	const char *args[] = { "--pages-to-scan", "100000", "--sleep-millisecs", "5000", NULL };
	struct kid k[2];
	uint64_t t0;

	H_SKIP_UNLESS_ROOT();
	h_daemon_stop(daemon_pid, SIGTERM);
	daemon_pid = h_daemon_start(sock, args);
	k[0] = kid_start(0);
	ck_assert_msg(h_wait_stat(sock, "zero_pages", NZERO, false, 3000),
		      "first child not scanned: zero_pages %lld",
		      (long long)h_stat(sock, "zero_pages"));
	h_sleep_ms(200); /* the scanner is in its 5 s pause now */
	t0 = h_now_ms();
	k[1] = kid_start(1);
	ck_assert_msg(h_wait_stat(sock, "pages_sharing", NDUP, false, 2500),
		      "pages_sharing %lld after %llu ms, want %u (the scan waited out its pause)",
		      (long long)h_stat(sock, "pages_sharing"),
		      (unsigned long long)(h_now_ms() - t0), NDUP);
	for (unsigned i = 0; i < 2; i++) {
		ck_assert_int_eq(kid_cmd(&k[i], 'v'), 0);
		kid_stop(&k[i]);
	}
}
END_TEST

/* The daemon's store memfd (dedupd-store-0): its allocated 4 KiB pages, or -1. */
static long store_file_pages(pid_t pid)
{
	for (int fd = 0; fd < 1024; fd++) {
		char path[64], target[128];
		struct stat sb;
		ssize_t n;

		snprintf(path, sizeof(path), "/proc/%d/fd/%d", (int)pid, fd);
		n = readlink(path, target, sizeof(target) - 1);
		if (n <= 0)
			continue;
		target[n] = '\0';
		if (strstr(target, "dedupd-store-0") && stat(path, &sb) == 0)
			return (long)(sb.st_blocks * 512 / 4096);
	}
	return -1;
}

/*
 * Fresh store slots are allocated ahead of the merges that fill them (the
 * warmer), and given back about a second after the last one: while merges
 * take new slots, store_pages_warm counts pages the store file holds beyond
 * store_pages; after, the file holds exactly store_pages again.
 */
START_TEST(test_store_warm_given_back)
{
	struct kid k[2];
	int64_t warm = 0, peak = 0, file_extra = 0;
	uint64_t t0;

	H_SKIP_UNLESS_ROOT();
	k[0] = kid_start(0);
	ck_assert(h_wait_stat(sock, "pages_unshared", NPAGES - NZERO, false, 10000));
	ck_assert_int_eq(h_stat(sock, "store_pages_warm"), 0); /* no demand yet */
	k[1] = kid_start(1);
	t0 = h_now_ms();
	while (h_now_ms() - t0 < 3000 && peak == 0) {
		warm = h_stat(sock, "store_pages_warm");
		if (warm > 0) {
			peak = warm;
			file_extra = store_file_pages(daemon_pid) - h_stat(sock, "store_pages");
		}
		h_sleep_ms(20);
	}
	ck_assert_msg(peak > 0, "no store page was allocated ahead of the merges");
	ck_assert_msg(file_extra > 0, "store_pages_warm %lld, but the store file holds %lld "
		      "pages beyond store_pages", (long long)peak, (long long)file_extra);
	ck_assert(h_wait_stat(sock, "pages_sharing", NDUP, false, 5000));
	ck_assert_msg(h_wait_stat(sock, "store_pages_warm", 0, false, 4000),
		      "store_pages_warm still %lld", (long long)h_stat(sock, "store_pages_warm"));
	ck_assert_int_eq(store_file_pages(daemon_pid), h_stat(sock, "store_pages"));
	for (unsigned i = 0; i < 2; i++) {
		ck_assert_int_eq(kid_cmd(&k[i], 'v'), 0);
		kid_stop(&k[i]);
	}
}
END_TEST

/*
 * The mmap() of an emptied run fails (as it would at vm.max_map_count; here
 * $DEDUP_TEST_REMAP_FAIL makes it): the agent puts the run's bytes back from
 * the store and drops the missing-page mode. Every page reads right, writes
 * go through, nothing hangs, and the merges count as failed.
 */
START_TEST(test_failed_remap_restores_emptied_runs)
{
	struct kid k[2];

	H_SKIP_UNLESS_ROOT();
	k[0] = kid_start(0);
	ck_assert(h_wait_stat(sock, "pages_unshared", NPAGES - NZERO, false, 10000));
	setenv("DEDUP_TEST_REMAP_FAIL", "1", 1);
	k[1] = kid_start(1);
	unsetenv("DEDUP_TEST_REMAP_FAIL");
	ck_assert_msg(h_wait_stat(sock, "merge_failed", NDUP, true, 10000), "merge_failed %lld",
		      (long long)h_stat(sock, "merge_failed"));
	for (unsigned i = 0; i < 2; i++) {
		ck_assert_uint_eq(kid_cmd(&k[i], 'v'), 0);
		ck_assert_uint_eq(kid_cmd(&k[i], 'w'), 0);
		ck_assert_uint_eq(kid_cmd(&k[i], 'v'), 0);
	}
	for (unsigned i = 0; i < 2; i++)
		kid_stop(&k[i]);
}
END_TEST

/* The descriptor number of this process's userfaultfd (the agent's copy), or -1. */
static int find_uffd(void)
{
	for (int fd = 3; fd < 1024; fd++) {
		char path[64], target[64];
		ssize_t n;

		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		n = readlink(path, target, sizeof(target) - 1);
		if (n > 0) {
			target[n] = 0;
			if (!strcmp(target, "anon_inode:[userfaultfd]"))
				return fd;
		}
	}
	return -1;
}

/*
 * An application that closes every descriptor (daemonizing) closes the
 * agent's copy of the uffd too, and the number may name one of its own files
 * by the time the agent ends: the agent must not close that.
 */
START_TEST(test_agent_leaves_reused_uffd_number)
{
	int p[2], st;
	pid_t pid;
	char c;

	H_SKIP_UNLESS_ROOT();
	ck_assert_int_eq(pipe(p), 0);
	pid = fork();
	if (pid == 0) {
		uint8_t *m = mmap(NULL, NPAGES * PAGE, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		int fd, null;

		memset(m, 1, NPAGES * PAGE);
		if (dedup_register(m, NPAGES * PAGE, NULL) || (fd = find_uffd()) < 0)
			_exit(2);
		null = open("/dev/null", O_RDONLY);
		if (null < 0 || dup2(null, fd) != fd) /* the number now names /dev/null */
			_exit(3);
		close(null);
		if (write(p[1], "r", 1) != 1)
			_exit(4);
		h_sleep_ms(1500); /* the daemon stops; the agent ends */
		_exit(fcntl(fd, F_GETFD) < 0 ? 1 : 0);
	}
	close(p[1]);
	ck_assert_int_eq(read(p[0], &c, 1), 1);
	close(p[0]);
	h_daemon_stop(daemon_pid, SIGTERM);
	daemon_pid = 0;
	waitpid(pid, &st, 0);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
		      "status %d (1: the agent closed a descriptor that was no longer its own)", st);
}
END_TEST

/* A client whose libdedup predates the DD_REMAP_* flags gets REMAP and ZAP
 * apart, and no flags (its agent would refuse them): everything merges. */
START_TEST(test_old_agent_gets_plain_batches)
{
	struct kid k[2];
	int64_t zaps0 = h_stat(sock, "zap_runs");

	H_SKIP_UNLESS_ROOT();
	setenv("DEDUP_TEST_OLD_AGENT", "1", 1);
	k[0] = kid_start(0);
	unsetenv("DEDUP_TEST_OLD_AGENT");
	k[1] = kid_start(1);
	ck_assert_msg(h_wait_stat(sock, "pages_sharing", NDUP, false, 15000),
		      "pages_sharing %lld, merge_failed %lld", (long long)h_stat(sock, "pages_sharing"),
		      (long long)h_stat(sock, "merge_failed"));
	ck_assert(h_wait_stat(sock, "zero_pages", 2 * NZERO, false, 5000));
	ck_assert_int_eq(h_stat(sock, "pages_shared"), NDUP);
	ck_assert_int_eq(h_stat(sock, "merge_failed"), 0);
	ck_assert_int_gt(h_stat(sock, "zap_runs"), zaps0);
	ck_assert_uint_eq(kid_cmd(&k[0], 'a'), NPAGES - NDUP - NZERO); /* remapped, zapped */
	for (unsigned i = 0; i < 2; i++) {
		ck_assert_uint_eq(kid_cmd(&k[i], 'v'), 0);
		ck_assert_uint_eq(kid_cmd(&k[i], 'w'), 0);
		ck_assert_uint_eq(kid_cmd(&k[i], 'v'), 0);
		kid_stop(&k[i]);
	}
}
END_TEST

START_TEST(test_unmap_and_remap_registered)
{
	struct kid other;
	pid_t pid;
	int st;

	H_SKIP_UNLESS_ROOT();
	other = kid_start(1);
	pid = fork();
	if (pid == 0) {
		uint8_t want[PAGE], *half, *moved;
		unsigned bad = 0;

		kid_idx = 0;
		mem = mmap(NULL, NPAGES * PAGE, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		for (unsigned i = 0; i < NPAGES; i++)
			expected(mem + (size_t)i * PAGE, i, false);
		if (dedup_register(mem, NPAGES * PAGE, NULL))
			_exit(2);
		h_sleep_ms(1500); /* merged by now */
		/* Replace the upper half with new memory, then move half of the
		 * lower half elsewhere with mremap. */
		half = mmap(mem + NPAGES / 2 * PAGE, NPAGES / 2 * PAGE, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
		for (unsigned i = 0; i < NPAGES / 2; i++)
			h_fill(half + (size_t)i * PAGE, 1, i); /* lure: duplicates */
		moved = mremap(mem, NPAGES / 4 * PAGE, NPAGES / 4 * PAGE,
			       MREMAP_MAYMOVE | MREMAP_FIXED,
			       mmap(NULL, NPAGES / 4 * PAGE, PROT_NONE,
				    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
		if (moved == MAP_FAILED)
			_exit(3);
		h_sleep_ms(1000);
		for (unsigned i = 0; i < NPAGES / 2; i++) {
			h_fill(want, 1, i);
			bad += memcmp(want, half + (size_t)i * PAGE, PAGE) != 0;
			half[(size_t)i * PAGE] ^= 1; /* writable */
		}
		for (unsigned i = 0; i < NPAGES / 4; i++) {
			expected(want, i, false);
			bad += memcmp(want, moved + (size_t)i * PAGE, PAGE) != 0;
		}
		for (unsigned i = NPAGES / 4; i < NPAGES / 2; i++) {
			expected(want, i, false);
			bad += memcmp(want, mem + (size_t)i * PAGE, PAGE) != 0;
		}
		_exit(bad ? 1 : 0);
	}
	waitpid(pid, &st, 0);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %d", st);
	ck_assert_int_ge(h_stat(sock, "clients"), 1); /* daemon alive and serving */
	ck_assert_int_eq(kid_cmd(&other, 'v'), 0);
	kid_stop(&other);
}
END_TEST

START_TEST(test_sigterm_leaves_clients_intact)
{
	struct kid k[2];
	int st;

	H_SKIP_UNLESS_ROOT();
	kids_start_merged(k, 2);
	st = h_daemon_stop(daemon_pid, SIGTERM);
	daemon_pid = 0;
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "dedupd exit status %d", st);
	/* Without the daemon: still shared, still correct, writes still private. */
	ck_assert_int_eq(kid_cmd(&k[0], 'v'), 0);
	ck_assert_int_eq(kid_cmd(&k[0], 'w'), 0);
	ck_assert_int_eq(kid_cmd(&k[0], 'v'), 0);
	ck_assert_int_eq(kid_cmd(&k[1], 'v'), 0);
	for (unsigned i = 0; i < 2; i++)
		kid_stop(&k[i]);
}
END_TEST

/* A child whose duplicates are single pages between unique ones: every
 * merge would split its VMA. It reports its VMA count before registering,
 * then waits for a byte and verifies. */
static pid_t scattered_child(unsigned idx, int *to, int *from)
{
	int a[2], b[2];
	pid_t pid;

	ck_assert_int_eq(pipe(a), 0);
	ck_assert_int_eq(pipe(b), 0);
	pid = fork();
	if (pid == 0) {
		uint8_t *m = mmap(NULL, 400 * PAGE, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), want[PAGE];
		long vmas = 0;
		uint32_t bad = 0;
		char c;
		FILE *f = fopen("/proc/self/maps", "r");

		while (f && fscanf(f, "%*[^\n]\n") != EOF)
			vmas++;
		if (f)
			fclose(f);
		for (unsigned i = 0; i < 400; i++)
			h_fill(m + (size_t)i * PAGE, i % 2 ? 500 + idx : 1, i);
		if (dedup_register(m, 400 * PAGE, NULL))
			_exit(2);
		vmas = (long)(uintptr_t)m; /* the parent counts VMAs inside the region */
		if (write(b[1], &vmas, sizeof(vmas)) != sizeof(vmas) || read(a[0], &c, 1) != 1)
			_exit(3);
		for (unsigned i = 0; i < 400; i++) {
			h_fill(want, i % 2 ? 500 + idx : 1, i);
			bad += memcmp(want, m + (size_t)i * PAGE, PAGE) != 0;
		}
		_exit(bad ? 1 : 0);
	}
	close(a[0]);
	close(b[1]);
	*to = a[1];
	*from = b[0];
	return pid;
}

/* VMAs of pid that overlap [start, start + len). */
static long count_vmas(pid_t pid, uint64_t start, uint64_t len)
{
	char path[64], line[512];
	unsigned long long lo, hi;
	long n = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
	f = fopen(path, "re");
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "%llx-%llx", &lo, &hi) == 2 && lo < start + len && start < hi)
			n++;
	if (f)
		fclose(f);
	return n;
}

/*
 * The adversarial case: right after registering, the application itself
 * drives its VMA count to within 1100 of vm.max_map_count (mprotect of every
 * other page of a big mapping). dedupd must notice before merging (the count
 * it took at registration is stale) and leave 1024 VMAs of headroom: the
 * application then makes 1000 more VMAs of its own without one ENOMEM.
 * (What no outside count can catch: VMAs the application makes during one
 * agent round trip, ~5 ms for 512 merges.)
 */
static long max_map_count(void)
{
	FILE *f = fopen("/proc/sys/vm/max_map_count", "re");
	long v = -1;

	if (f && fscanf(f, "%ld", &v) != 1)
		v = -1;
	if (f)
		fclose(f);
	return v;
}

static long self_vmas(void)
{
	FILE *f = fopen("/proc/self/maps", "re");
	long n = 0;
	int ch;

	while (f && (ch = fgetc(f)) != EOF)
		n += ch == '\n';
	if (f)
		fclose(f);
	return n;
}

/* mprotect every other page of m from page *next on until the process has
 * want VMAs; -1 on ENOMEM. */
static int grow_vmas(uint8_t *m, size_t pages, size_t *next, long want)
{
	for (long have = self_vmas(); have < want && *next + 1 < pages; have += 2, *next += 2)
		if (mprotect(m + *next * PAGE, PAGE, PROT_READ) < 0)
			return -1;
	return 0;
}

START_TEST(test_vma_budget_adversarial)
{
	/* A slow scan: the first merge comes ~200 ms after registration, by
	 * when the application has made its VMAs (in ~100 ms). */
	static const char *const args[] = { "--pages-to-scan", "200", "--sleep-millisecs",
					    "200", NULL };
	long max = max_map_count();
	int to[2], from[2], st[2];
	pid_t pid[2];

	H_SKIP_UNLESS_ROOT();
	if (max <= 0 || max > 300000) {
		printf("SKIP %s: vm.max_map_count %ld is too large to reach quickly\n", __func__,
		       max);
		return;
	}
	h_daemon_stop(daemon_pid, SIGTERM);
	daemon_pid = h_daemon_start(sock, args);
	for (int i = 0; i < 2; i++) {
		int a[2], b[2];

		ck_assert_int_eq(pipe(a), 0);
		ck_assert_int_eq(pipe(b), 0);
		pid[i] = fork();
		if (pid[i] == 0) {
			size_t pages = (size_t)max + 4096, next = 0;
			uint8_t *big = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE,
					    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
			uint8_t *m = mmap(NULL, 4000 * PAGE, PROT_READ | PROT_WRITE,
					  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			long r = 0;
			char c;

			/* 2000 isolated duplicates shared with the other child. */
			for (unsigned k = 0; k < 4000; k++)
				h_fill(m + (size_t)k * PAGE, k % 2 ? 900 + (unsigned)i : 3, k);
			if (dedup_register(m, 4000 * PAGE, NULL))
				_exit(2);
			if (grow_vmas(big, pages, &next, max - 1100) < 0)
				_exit(4);
			if (write(b[1], &r, sizeof(r)) != sizeof(r) || read(a[0], &c, 1) != 1)
				_exit(3);
			/* Our own 1000 more VMAs must all be granted. */
			fprintf(stderr, "adversarial child %d: %ld VMAs before its last 1000\n", i,
				self_vmas());
			r = grow_vmas(big, pages, &next, self_vmas() + 1000) < 0 ? 5 : 0;
			_exit((int)r);
		}
		close(a[0]);
		close(b[1]);
		to[i] = a[1];
		from[i] = b[0];
	}
	for (int i = 0; i < 2; i++) {
		long r;

		if (read(from[i], &r, sizeof(r)) != sizeof(r)) {
			waitpid(pid[i], &st[i], 0);
			ck_abort_msg("child %d died early: status %d", i, st[i]);
		}
	}
	/* Let dedupd merge what it may. */
	h_wait_stat(sock, "pages_sharing", 1, true, 10000);
	h_sleep_ms(1500);
	fprintf(stderr, "adversarial VMAs: pages_sharing %lld, merges %lld, failed %lld, vmas %lld\n",
	       (long long)h_stat(sock, "pages_sharing"), (long long)h_stat(sock, "merges"),
	       (long long)h_stat(sock, "merge_failed"), (long long)h_stat(sock, "vmas"));
	for (int i = 0; i < 2; i++) {
		ck_assert_int_eq(write(to[i], "g", 1), 1);
		waitpid(pid[i], &st[i], 0);
	}
	for (int i = 0; i < 2; i++)
		ck_assert_msg(WIFEXITED(st[i]) && WEXITSTATUS(st[i]) == 0,
			      "child %d status %d (5: its own mprotect got ENOMEM)", i, st[i]);
	h_daemon_stop(daemon_pid, SIGTERM);
	daemon_pid = h_daemon_start(sock, fast_args);
}
END_TEST

START_TEST(test_vma_budget_holds)
{
	static const char *const args[] = { "--pages-to-scan", "100000", "--sleep-millisecs", "5",
					    "--set", "scan.max_vmas_per_client=40", NULL };
	int to[2], from[2], st;
	long base[2];
	pid_t pid[2];

	H_SKIP_UNLESS_ROOT();
	/* A daemon that may add at most 40 VMAs to any client. */
	h_daemon_stop(daemon_pid, SIGTERM);
	daemon_pid = h_daemon_start(sock, args);
	for (int i = 0; i < 2; i++) {
		pid[i] = scattered_child((unsigned)i, &to[i], &from[i]);
		ck_assert_int_eq(read(from[i], &base[i], sizeof(base[i])), sizeof(base[i]));
	}
	/* 200 isolated duplicates each, a page of the process's own on each
	 * side: ~20 page-by-page merges fit the budget; once half of it is
	 * used, spans map the rest (two VMAs for up to 64 pages). */
	ck_assert(h_wait_stat(sock, "pages_sharing", 195, true, 20000));
	h_sleep_ms(500);
	for (int i = 0; i < 2; i++) {
		/* base[] is the region's address: it was one VMA when registered. */
		long now = count_vmas(pid[i], (uint64_t)base[i], 400 * PAGE);

		ck_assert_msg(now - 1 <= 40 + 2, "client %d: %ld VMAs in the region: budget 40", i,
			      now);
		ck_assert_int_gt(now, 1); /* and it did merge some */
	}
	ck_assert_int_gt(h_stat(sock, "remap_spans"), 0);
	ck_assert_int_le(h_stat(sock, "pages_sharing"), 200);
	for (int i = 0; i < 2; i++) {
		ck_assert_int_eq(write(to[i], "v", 1), 1);
		waitpid(pid[i], &st, 0);
		ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child %d status %d", i, st);
		close(to[i]);
		close(from[i]);
	}
}
END_TEST

/* Pages of the calling process that are present, anonymous and exclusively
 * mapped (pagemap bit 56): not shared with a parent or child any more. */
static unsigned exclusive_pages(const uint8_t *m, unsigned n)
{
	uint64_t pm[256];
	unsigned ex = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY);

	if (fd < 0 || n > 256 || pread(fd, pm, n * 8, (off_t)((uintptr_t)m / PAGE * 8)) != n * 8)
		return UINT32_MAX;
	close(fd);
	for (unsigned i = 0; i < n; i++)
		ex += (pm[i] >> 63) && !((pm[i] >> 61) & 1) && ((pm[i] >> 56) & 1);
	return ex;
}

/* A forked worker shares its parent's pages copy-on-write. Scanning them must
 * not copy them: process_vm_readv() would (a read-only pin unshares an
 * anonymous page), so shared pages are read through /proc/PID/mem. */
START_TEST(test_scan_keeps_cow_pages_shared)
{
	int64_t scanned0 = h_stat(sock, "pages_scanned");
	uint8_t *m;
	pid_t parent, pid;
	int st, p[2];

	H_SKIP_UNLESS_ROOT();
	ck_assert_int_eq(pipe(p), 0);
	parent = fork();
	if (parent == 0) {
		m = mmap(NULL, 256 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			 -1, 0);
		for (unsigned i = 0; i < 256; i++)
			h_fill(m + (size_t)i * PAGE, 900, i); /* unique: nothing to merge */
		pid = fork();
		if (pid == 0) {
			unsigned ex;

			if (dedup_register(m, 256 * PAGE, NULL))
				_exit(2);
			h_sleep_ms(1500); /* many passes over the shared pages */
			ex = exclusive_pages(m, 256);
			if (ex)
				fprintf(stderr, "cow: %u of 256 pages were unshared\n", ex);
			_exit(ex ? 1 : 0);
		}
		waitpid(pid, &st, 0);
		_exit(WIFEXITED(st) ? WEXITSTATUS(st) : 3);
	}
	close(p[1]);
	waitpid(parent, &st, 0);
	close(p[0]);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %d", st);
	ck_assert_int_ge(h_stat(sock, "pages_scanned") - scanned0, 256);
}
END_TEST

/* A restarted daemon (crash, or systemctl restart) takes its clients back:
 * libdedup reconnects and offers its ranges again, and the new daemon merges
 * them into its own store. Nothing is lost meanwhile. */
START_TEST(test_restart_readopts_clients)
{
	static const int sigs[] = { SIGKILL, SIGTERM };
	struct kid k[2];

	H_SKIP_UNLESS_ROOT();
	kids_start_merged(k, 2);
	ck_assert(h_wait_stat(sock, "zero_pages", 2 * NZERO, false, 15000));
	for (unsigned round = 0; round < 2; round++) {
		h_daemon_stop(daemon_pid, sigs[round]);
		daemon_pid = h_daemon_start(sock, fast_args);
		ck_assert_msg(h_wait_stat(sock, "clients", 2, false, 10000),
			      "round %u: %lld clients came back", round,
			      (long long)h_stat(sock, "clients"));
		/* A client counts from its HELLO; its REGISTER follows. */
		ck_assert(h_wait_stat(sock, "pages_registered", 2 * NPAGES, false, 10000));
		/* Nothing was un-shared: the merged duplicates still map the old
		 * daemon's store (the clients' mappings keep it alive). Zero pages
		 * may be back as anonymous pages after the last round's verify. */
		for (unsigned i = 0; i < 2; i++)
			ck_assert_uint_le(kid_cmd(&k[i], 'a'), NPAGES - NDUP);
		/* ... and the new daemon adopted that store at registration: the
		 * pages count as sharing at once, before anything touches them,
		 * with no copy and no remap. */
		ck_assert_msg(h_wait_stat(sock, "pages_sharing", NDUP, false, 2000),
			      "round %u: adopted pages_sharing %lld, pages_adopted %lld", round,
			      (long long)h_stat(sock, "pages_sharing"),
			      (long long)h_stat(sock, "pages_adopted"));
		ck_assert_int_ge(h_stat(sock, "pages_adopted"), NDUP);
		/* Touching them (verify reads every byte) makes them present;
		 * the new daemon then merges them into its own store. */
		for (unsigned i = 0; i < 2; i++)
			ck_assert_int_eq(kid_cmd(&k[i], 'v'), 0);
		ck_assert_msg(h_wait_stat(sock, "pages_sharing", NDUP, false, 15000),
			      "round %u: pages_sharing %lld", round,
			      (long long)h_stat(sock, "pages_sharing"));
		ck_assert(h_wait_stat(sock, "zero_pages", 2 * NZERO, false, 15000));
		for (unsigned i = 0; i < 2; i++)
			ck_assert_int_eq(kid_cmd(&k[i], 'v'), 0);
	}
	for (unsigned i = 0; i < 2; i++)
		kid_stop(&k[i]);
}
END_TEST

/* A region unmapped without dedup_unregister(): mmap() hands the same
 * addresses out again, and registering them again must work (found by the
 * soak test: it used to answer EEXIST forever). */
START_TEST(test_register_after_unmap)
{
	pid_t pid;
	int st;

	H_SKIP_UNLESS_ROOT();
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		size_t len = 1 << 20;
		char *a = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		char *b;

		memset(a, 1, len);
		if (dedup_register(a, len, NULL))
			_exit(2);
		munmap(a, len);
		b = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (b != a)
			_exit(77); /* the kernel chose another address: nothing to show */
		memset(b, 2, len);
		if (dedup_register(b, len, NULL)) {
			fprintf(stderr, "register again: %s\n", dedup_strerror());
			_exit(3);
		}
		_exit(0);
	}
	waitpid(pid, &st, 0);
	if (WIFEXITED(st) && WEXITSTATUS(st) == 77) {
		printf("SKIP %s: mmap gave another address\n", __func__);
		return;
	}
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %d", st);
}
END_TEST

/* MADV_DONTNEED on merged pages: a plain one refaults the shared content
 * (the kernel's rule for private file mappings); dedup_discard(), which the
 * preload applies after the program's own DONTNEED, gives zeros. */
START_TEST(test_discard_reads_zeros)
{
	struct kid k[2];

	H_SKIP_UNLESS_ROOT();
	kids_start_merged(k, 2);
	ck_assert_uint_eq(kid_cmd(&k[0], 'D'), 0);   /* all zeros */
	ck_assert_uint_eq(kid_cmd(&k[0], 'r'), 0);   /* the rest intact */
	ck_assert_uint_eq(kid_cmd(&k[1], 'v'), 0);   /* the other sharer intact */
	ck_assert_uint_eq(kid_cmd(&k[1], 'd'), NDUP); /* why it is needed */
	/* The daemon follows: the renewed pages are no longer counted on their
	 * old store pages. (The remapped VMA was left unregistered, so no event
	 * tells of the new mapping; the scan sees the pages anonymous, as after
	 * a COW break. Being all zeros in what it takes for a store mapping,
	 * they may then merge onto one zero store page: pages_sharing 99, which
	 * is right. So the test waits for the first change, not for 0.) */
	int64_t sharing = NDUP;

	for (int i = 0; i < 200 && sharing >= NDUP; i++) {
		h_sleep_ms(50);
		sharing = h_stat(sock, "pages_sharing");
	}
	ck_assert_msg(sharing < NDUP, "pages_sharing %lld", (long long)sharing);
	for (unsigned i = 0; i < 2; i++)
		kid_stop(&k[i]);
}
END_TEST

/* Merged pages unmapped by their application, which does not unregister
 * them: no event tells of that (libdedup asks for none, and the remapped
 * VMAs are not registered anyway). The daemon finds it in the client's maps
 * and gives the store shares back. Pages that were mapped (read after the
 * merge) and are not any more are looked for at once; pages never touched
 * (a merged page is not mapped until then) at the latest after 10 s. */
START_TEST(test_unmapped_merged_pages_given_back)
{
	struct kid k[2];
	int64_t scans;
	int st;

	H_SKIP_UNLESS_ROOT();
	kids_start_merged(k, 2);
	ck_assert_int_eq(h_stat(sock, "pages_unmapped"), 0);
	ck_assert_uint_eq(kid_cmd(&k[0], 'v'), 0); /* maps k[0]'s merged pages */
	scans = h_stat(sock, "full_scans");
	ck_assert(h_wait_stat(sock, "full_scans", scans + 2, true, 10000)); /* seen mapped */
	ck_assert_uint_eq(kid_cmd(&k[0], 'u'), 0);
	ck_assert_msg(h_wait_stat(sock, "pages_unmapped", NDUP, false, 5000),
		      "pages_unmapped %lld, want %u", (long long)h_stat(sock, "pages_unmapped"),
		      NDUP);
	ck_assert_msg(h_wait_stat(sock, "pages_sharing", 0, false, 2000), "pages_sharing %lld",
		      (long long)h_stat(sock, "pages_sharing"));
	ck_assert_int_eq(h_stat(sock, "pages_shared"), NDUP); /* k[1] still maps them */
	ck_assert_uint_eq(kid_cmd(&k[0], 'r'), 0);	       /* k[0]'s other pages intact */
	/* k[1] never touched its merged pages since: unmapped, they are found
	 * by the periodic check, and the store pages are freed while it lives. */
	ck_assert_uint_eq(kid_cmd(&k[1], 'u'), 0);
	ck_assert_msg(h_wait_stat(sock, "pages_unmapped", 2 * NDUP, false, 15000),
		      "pages_unmapped %lld, want %u", (long long)h_stat(sock, "pages_unmapped"),
		      2 * NDUP);
	ck_assert_msg(h_wait_stat(sock, "pages_shared", 0, false, 2000), "pages_shared %lld",
		      (long long)h_stat(sock, "pages_shared"));
	ck_assert_uint_eq(kid_cmd(&k[1], 'r'), 0);
	for (unsigned i = 0; i < 2; i++) {
		ck_assert_int_eq(write(k[i].to, "q", 1), 1);
		waitpid(k[i].pid, &st, 0);
		close(k[i].to);
		close(k[i].from);
	}
}
END_TEST

/* Merged pages mapped over with fresh memory that gets the same content
 * again: the old shares are given back, the new VMA is registered with the
 * uffd again (the first freeze there fails: no event told of it), and the
 * pages merge anew. */
START_TEST(test_mapped_over_merges_again)
{
	struct kid k[2];
	int64_t merges;

	H_SKIP_UNLESS_ROOT();
	kids_start_merged(k, 2);
	merges = h_stat(sock, "merges");
	ck_assert_uint_eq(kid_cmd(&k[0], 'o'), 0);
	ck_assert_msg(h_wait_stat(sock, "merges", merges + NDUP, true, 15000), "merges %lld",
		      (long long)(h_stat(sock, "merges") - merges));
	ck_assert_msg(h_wait_stat(sock, "pages_sharing", NDUP, false, 5000), "pages_sharing %lld",
		      (long long)h_stat(sock, "pages_sharing"));
	ck_assert_int_eq(h_stat(sock, "pages_shared"), NDUP); /* the old store pages again */
	for (unsigned i = 0; i < 2; i++) {
		ck_assert_uint_eq(kid_cmd(&k[i], 'v'), 0);
		kid_stop(&k[i]);
	}
}
END_TEST

/* Run dd-workload --ksm (plain madvise(MADV_MERGEABLE)) under the preload. */
static pid_t run_preloaded(const char *socket_path, int *out_fd)
{
	char exe[256], pre[256];
	int p[2];
	pid_t pid;

	snprintf(exe, sizeof(exe), "%s/tools/dd-workload", h_build());
	snprintf(pre, sizeof(pre), "%s/libdedup-preload.so", h_build());
	ck_assert_int_eq(pipe(p), 0);
	pid = fork();
	if (pid == 0) {
		dup2(p[1], 1);
		setenv("LD_PRELOAD", pre, 1);
		setenv("DEDUPD_SOCKET", socket_path, 1);
		execl(exe, exe, "--ksm", "--procs", "2", "--mib", "8", "--seconds", "3", "--quiet",
		      (char *)NULL);
		_exit(127);
	}
	close(p[1]);
	*out_fd = p[0];
	return pid;
}

START_TEST(test_preload_routes_madvise)
{
	int fd, st;
	pid_t pid;

	H_SKIP_UNLESS_ROOT();
	pid = run_preloaded(sock, &fd);
	ck_assert_msg(h_wait_stat(sock, "clients", 2, false, 5000), "preloaded clients: %lld",
		      (long long)h_stat(sock, "clients"));
	ck_assert(h_wait_stat(sock, "pages_sharing", 1, true, 5000));
	waitpid(pid, &st, 0);
	close(fd);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "workload status %d", st);
}
END_TEST

START_TEST(test_preload_falls_back_without_daemon)
{
	int fd, st;
	pid_t pid;

	/* No daemon on this socket: madvise goes to the kernel as before. */
	pid = run_preloaded("/nonexistent/dedupd.sock", &fd);
	waitpid(pid, &st, 0);
	close(fd);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "workload status %d", st);
}
END_TEST

static Suite *merge_suite(void)
{
	Suite *s = suite_create("merge");
	TCase *tc = tcase_create("core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_merge_exact_counts);
	tcase_add_test(tc, test_cold_pages_found_later);
	tcase_add_test(tc, test_freeze_span_bridges_gaps);
	tcase_add_test(tc, test_copy_path_without_agent_hash);
	tcase_add_test(tc, test_multi_batch_regions);
	tcase_add_test(tc, test_agent_hash_survives_faults);
	tcase_add_test(tc, test_agent_hash_chains_signals);
	tcase_add_test(tc, test_cow_write_is_private);
	tcase_add_test(tc, test_race_no_lost_writes);
	tcase_add_test(tc, test_race_spans_no_lost_writes);
	tcase_add_test(tc, test_daemon_killed_mid_merge);
	tcase_add_test(tc, test_client_killed_mid_merge);
	tcase_add_test(tc, test_late_remap_keeps_store_pages);
	tcase_add_test(tc, test_unmap_and_remap_registered);
	tcase_add_test(tc, test_sigterm_leaves_clients_intact);
	tcase_add_test(tc, test_vma_budget_holds);
	tcase_add_test(tc, test_vma_budget_adversarial);
	tcase_add_test(tc, test_scan_keeps_cow_pages_shared);
	tcase_add_test(tc, test_restart_readopts_clients);
	tcase_add_test(tc, test_discard_reads_zeros);
	tcase_add_test(tc, test_register_after_unmap);
	tcase_add_test(tc, test_unmapped_merged_pages_given_back);
	tcase_add_test(tc, test_mapped_over_merges_again);
	tcase_add_test(tc, test_preload_routes_madvise);
	tcase_add_test(tc, test_preload_falls_back_without_daemon);
	tcase_add_test(tc, test_register_wakes_scanner);
	tcase_add_test(tc, test_store_warm_given_back);
	suite_add_tcase(s, tc);
	tc = tcase_create("window");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_emptied_runs_wait_for_remap);
	tcase_add_test(tc, test_daemon_killed_in_remap_window);
	tcase_add_test(tc, test_old_agent_gets_plain_batches);
	tcase_add_test(tc, test_unregister_waits_for_late_remap);
	tcase_add_test(tc, test_agent_leaves_reused_uffd_number);
	tcase_add_test(tc, test_failed_remap_restores_emptied_runs);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(merge_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
