// SPDX-License-Identifier: MIT
/*
 * Fault injection (issue 8): a bounded soak of the real dedupd and real
 * libdedup clients while everything goes wrong. No write may ever be lost.
 *
 * Clients: NCLIENTS forked processes in one v1 memory cgroup, each with a
 * 16 MiB private anonymous region registered with dedup_register(): half of
 * its pages hold content common to every client (runs of 8), an eighth are
 * zero, the rest are unique to the client. Two writer threads per client write
 * random 8-byte values at random offsets of random pages, and one time in 64
 * put a common or zero page back to its original content, so that pages keep
 * becoming duplicates again and are merged under the writers. Every write also
 * goes to a shadow copy, a MAP_SHARED anonymous mapping (dedupd never merges
 * shared memory). The client's main thread compares the whole region with the
 * shadow every VERIFY_EVERY_MS: a difference is a lost write (counted, the
 * first offset kept, and the write applied again so that it counts once).
 * Writers and the verifier hold a per-page mutex around each access, so a
 * difference cannot be a race of the test itself; a remap holds a region-wide
 * rwlock for writing. Each write is timed (the store alone, inside the page
 * lock); writes slower than STALL_US are counted and noted with the part of
 * their time the thread spent runnable but waiting for a CPU (run-queue delay
 * from /proc/thread-self/schedstat). Every figure lives in a MAP_SHARED struct
 * per client that the test reads, also after it killed the client.
 *
 * Chaos, from the test process, every 1-4 s (seeded and printed;
 * DEDUP_SOAK_SEED=N replays a schedule): SIGKILL of dedupd and a restart on
 * the same socket; SIGTERM and a restart; SIGKILL of a client, replaced by a
 * new one; a client asked to munmap its region and map, fill and register a
 * new one (every other time after dedup_unregister(), else by munmap alone,
 * which dedupd hears of through the userfaultfd's UNMAP event); the cgroup's
 * limit moved so that free memory is in dedupd's high, soft or hard state
 * (dedupd --cgroup, thresholds 60/45/30/5 %), never below 1.25 x the most the
 * clients ever used, so that nobody is OOM-killed (memory.oom_control is
 * checked). Reclaim's pageout and throttling are off: there is no swap here,
 * and they are not under test. DEDUP_SOAK_EVENTS=kill,term,client,remap,
 * pressure (any subset, or "none") narrows the chaos to chase one failure.
 *
 * After every restart every client must be connected again (the daemon's
 * `clients` figure and each client's dedup_connected()); the daemon's `merges`
 * are read before every stop and summed over its lives. At the end the chaos
 * stops, dedupd runs 3 s more, every client stops its writers and verifies its
 * whole region once more, and everything stops. One greppable line per figure
 * ("soak: ..."), one per chaos event ("soak-event: ...") and one per stall
 * ("soak-stall: ..."). The duration is DEDUP_SOAK_SECONDS (default 60).
 *
 * Stalls. Measured on this 2-core machine (shared with other work) in 15 runs
 * of 60 s (3 with sanitizers) and 3 of 180 s, and in shorter runs while the
 * test was written:
 *
 *   - Blocked 100-700 ms, with no run-queue delay of the writer's own: a merge
 *     freezes (write-protects) a batch of up to merge_batch_pages (512) pages
 *     until the client's agent has remapped or zapped all of them. Here the
 *     merges come as single pages, and each agent mmap()/madvise() over the
 *     registered range waits until dedupd's fault thread has read the
 *     userfaultfd UNMAP/REMOVE event it raises (strace: 0.6-0.8 ms each, up to
 *     47 ms), so one batch costs hundreds of round trips on two busy cores. It
 *     happens when a whole new region is merged (a new client, a remap), and
 *     most at the start, when six are: the longest blocked part of a run was
 *     160-420 ms, once 682 ms. With --merge-batch 64 the longest stall was
 *     39 ms; in steady state, pages merged one by one as they become
 *     duplicates again, no write took 100 ms. This is dedupd's doing, not
 *     starvation of the writer, so it is not excused, only bounded:
 *     BLOCKED_MAX_MS, 3 x the worst seen, well under agent_timeout_millisecs
 *     (5 s), which a freeze that never settles reaches.
 *   - 5 or 10 s in 20 of the 33 SIGTERM restarts of the last 8 runs, and
 *     dedupd took as long to stop (at most 10.4 s): dd_scanner_stop() lets
 *     the fault thread exit while a scan thread still has a batch at an
 *     agent, whose mmap() then waits in userfaultfd_event_wait_completion for
 *     an event nobody reads, until the scan thread gives up on the REMAP
 *     (agent_timeout_millisecs) and again on the ZAP; run_pending() may then
 *     flush other clients' queued merges the same way. A dedupd bug: until it
 *     is fixed these stalls and the stop are bounded by TERM_MAX_MS (3
 *     clients' worth).
 *   - A stall whose blocked part is under STALL_US is the writer waiting for
 *     a CPU (~20 threads of this test and the daemon share 2 cores): reported
 *     apart, not asserted. One was seen in all these runs, 109 ms.
 *
 * DEDUP_SOAK_STRICT=1 asserts instead that no write was blocked STALL_US or
 * more, SIGTERM or not (for when the two dedupd issues above are fixed).
 */
#include "dedupd/lib/dedup.h"
#include "tests/harness.h"
#include "tests/memcg.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/prctl.h>

#define PAGE 4096u
#define MIB (1024ULL * 1024)
#define NCLIENTS 6
#define NWRITERS 2
#define REGION_BYTES (16 * MIB)
#define NPAGES ((unsigned)(REGION_BYTES / PAGE))
#define COMMON_SEED 0x5eed5eedULL
#define STALL_US 100000ULL /* a write that takes longer stalled */
#define BURST 32	   /* writes between two pauses of a writer */
#define PAUSE_US 1000	   /* a writer's pause */
#define RESTORE_ONE_IN 64  /* one write in this many restores a whole page */
#define VERIFY_EVERY_MS 250
#define RECONNECT_MS 30000    /* all clients back after a restart, at the latest */
#define MAX_SLOW 256	      /* stalls a client notes one by one */
#define BLOCKED_MAX_MS 2000   /* see above: merge batches froze writers up to 682 ms */
#define TERM_MAX_MS 30000     /* see above: 10 s per client with a batch in flight */
#define STOP_GIVE_UP_MS 90000 /* a daemon that does not stop by then hangs */

/* Page classes, by page index modulo 16: 8 common (runs of 8), 2 zero, 6 unique. */
static inline int page_class(unsigned i)
{
	unsigned m = i % 16;

	return m < 8 ? 0 : m < 10 ? 1 : 2; /* 0 common, 1 zero, 2 unique */
}

/* ---- what a client tells the test (MAP_SHARED, never merged) ------------- */

struct soak_box {
	/* test -> client */
	atomic_uint remap_req; /* bumped: unmap and replace the region */
	atomic_int final_req;  /* stop the writers, verify everything once more */
	atomic_int quit;       /* exit 0 */
	/* client -> test */
	atomic_int up; /* 1 registered and writing; < 0: it failed (err) */
	atomic_uint remap_done;
	atomic_int final_done;
	atomic_int connected;		     /* dedup_connected(), refreshed every 10 ms */
	atomic_uint_fast64_t writes;	     /* 8-byte writes */
	atomic_uint_fast64_t restores;	     /* whole-page writes (original content) */
	atomic_uint_fast64_t bytes_verified; /* compared with the shadow */
	atomic_uint_fast64_t verify_passes;
	atomic_uint_fast64_t lost_words;    /* differences found by the verifier */
	atomic_uint_fast64_t readback_lost; /* a write not read back right after it */
	atomic_int_fast64_t first_lost_off; /* region offset of the first one, or -1 */
	atomic_uint first_lost_gen;	    /* in which region generation */
	atomic_uint_fast64_t stalls;	    /* writes slower than STALL_US */
	atomic_uint_fast64_t max_stall_us;
	atomic_uint_fast64_t remaps;
	atomic_uint_fast64_t remaps_unregistered; /* remaps that unregistered first */
	atomic_uint_fast64_t register_retries;	  /* daemon away: retried */
	atomic_uint_fast64_t register_eexist;	  /* refused: "overlaps the registered region" */
	atomic_uint nslow;			  /* stalls noted in slow[] (and beyond) */
	struct slow {
		uint64_t at_ms;	  /* CLOCK_MONOTONIC when the write began */
		uint32_t ms;	  /* how long it took */
		uint32_t runq_ms; /* of which runnable, waiting for a CPU */
		uint32_t page, gen, restore;
	} slow[MAX_SLOW];
	char err[512];
};

/* ---- the client process --------------------------------------------------- */

static struct {
	struct soak_box *b;
	uint8_t *mem, *shadow;
	pthread_mutex_t *plock;
	pthread_rwlock_t rw;
	atomic_bool stop;
	unsigned instance, gen;
	uint64_t useed; /* unique pages of this generation */
} cl;

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static inline uint64_t xs(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

/* The original content of page i of the current generation. */
static void base_page(uint8_t *page, unsigned i)
{
	switch (page_class(i)) {
	case 0:
		h_fill(page, COMMON_SEED, i);
		break;
	case 1:
		memset(page, 0, PAGE);
		break;
	default:
		h_fill(page, cl.useed, i);
	}
}

static void atomic_max(atomic_uint_fast64_t *m, uint64_t v)
{
	uint64_t cur = atomic_load(m);

	while (v > cur && !atomic_compare_exchange_weak(m, &cur, v))
		;
}

/* This thread's run-queue delay (ns runnable but not running), or 0. */
static uint64_t runq_ns(int fd)
{
	char buf[128];
	ssize_t n = fd >= 0 ? pread(fd, buf, sizeof(buf) - 1, 0) : -1;
	unsigned long long cpu, delay;

	if (n <= 0)
		return 0;
	buf[n] = 0;
	return sscanf(buf, "%llu %llu", &cpu, &delay) == 2 ? delay : 0;
}

static void note_stall(uint64_t t0, uint64_t dt, uint64_t runq, unsigned page, bool restore)
{
	unsigned n = atomic_fetch_add(&cl.b->nslow, 1);

	atomic_fetch_add(&cl.b->stalls, 1);
	if (n < MAX_SLOW) {
		struct slow *w = &cl.b->slow[n];

		w->at_ms = t0 / 1000000;
		w->ms = (uint32_t)(dt / 1000000);
		w->runq_ms = (uint32_t)(runq / 1000000);
		w->page = page;
		w->gen = cl.gen;
		w->restore = restore;
	}
}

static void *writer_main(void *arg)
{
	uint64_t x = (uint64_t)(uintptr_t)arg * 0x9e3779b97f4a7c15ULL ^ now_ns() ^
		     ((uint64_t)getpid() << 32);
	uint8_t tmp[PAGE];
	int sfd = open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);

	xs(&x);
	while (!atomic_load(&cl.stop)) {
		uint64_t writes = 0, restores = 0, rb = 0, max_ns = 0, rq0;

		pthread_rwlock_rdlock(&cl.rw);
		rq0 = runq_ns(sfd);
		for (int k = 0; k < BURST; k++) {
			uint64_t r = xs(&x), t0, dt;
			unsigned page;
			bool restore = r % RESTORE_ONE_IN == 0;

			if (restore) {
				/* A common or zero page back to its original content:
				 * it becomes a duplicate again, under the other writer. */
				do
					page = (unsigned)(xs(&x) % NPAGES);
				while (page_class(page) == 2);
				base_page(tmp, page);
				pthread_mutex_lock(&cl.plock[page]);
				t0 = now_ns();
				memcpy(cl.mem + (size_t)page * PAGE, tmp, PAGE);
				dt = now_ns() - t0;
				memcpy(cl.shadow + (size_t)page * PAGE, tmp, PAGE);
				pthread_mutex_unlock(&cl.plock[page]);
				restores++;
			} else {
				unsigned w = (unsigned)((r >> 20) % (PAGE / 8));
				uint64_t v = xs(&x);
				volatile uint64_t *p;

				page = (unsigned)((r >> 32) % NPAGES);
				p = (volatile uint64_t *)(cl.mem + (size_t)page * PAGE) + w;
				pthread_mutex_lock(&cl.plock[page]);
				t0 = now_ns();
				*p = v;
				dt = now_ns() - t0;
				((uint64_t *)(cl.shadow + (size_t)page * PAGE))[w] = v;
				if (*p != v)
					rb++;
				pthread_mutex_unlock(&cl.plock[page]);
				writes++;
			}
			if (dt > STALL_US * 1000) {
				/* The run-queue delay since the burst began bounds the
				 * part of this write spent waiting for a CPU. */
				uint64_t rq = runq_ns(sfd) - rq0;

				note_stall(t0, dt, rq < dt ? rq : dt, page, restore);
				rq0 += rq;
			}
			if (dt > max_ns)
				max_ns = dt;
		}
		pthread_rwlock_unlock(&cl.rw);
		atomic_fetch_add(&cl.b->writes, writes);
		atomic_fetch_add(&cl.b->restores, restores);
		if (rb)
			atomic_fetch_add(&cl.b->readback_lost, rb);
		atomic_max(&cl.b->max_stall_us, max_ns / 1000);
		usleep(PAUSE_US);
	}
	if (sfd >= 0)
		close(sfd);
	return NULL;
}

/* Compare the region with the shadow, page by page under the page's lock. */
static void verify_all(void)
{
	for (unsigned i = 0; i < NPAGES; i++) {
		uint8_t *m = cl.mem + (size_t)i * PAGE, *s = cl.shadow + (size_t)i * PAGE;

		pthread_mutex_lock(&cl.plock[i]);
		if (memcmp(m, s, PAGE)) {
			uint64_t *mw = (uint64_t *)m, *sw = (uint64_t *)s, n = 0;

			for (unsigned w = 0; w < PAGE / 8; w++)
				if (mw[w] != sw[w]) {
					int_fast64_t none = -1;

					if (atomic_compare_exchange_strong(
						&cl.b->first_lost_off, &none,
						(int_fast64_t)((size_t)i * PAGE + w * 8)))
						atomic_store(&cl.b->first_lost_gen, cl.gen);
					mw[w] = sw[w]; /* apply it again: count it once */
					n++;
				}
			atomic_fetch_add(&cl.b->lost_words, n);
		}
		pthread_mutex_unlock(&cl.plock[i]);
		atomic_fetch_add(&cl.b->bytes_verified, PAGE);
	}
	atomic_fetch_add(&cl.b->verify_passes, 1);
}

static bool daemon_away(int r)
{
	return r == -ECONNREFUSED || r == -ENOENT || r == -ECONNRESET || r == -EPIPE ||
	       r == -ETIMEDOUT || r == -ENOTCONN;
}

/*
 * Register the region, retrying while the daemon is away (it may be being
 * restarted right now). A region that overlaps one the daemon still holds
 * (our own, unmapped without dedup_unregister) is unregistered and registered
 * again. 0, or the error that stuck.
 */
static int register_region(void)
{
	uint64_t end = h_now_ms() + 60000;
	int r;

	for (;;) {
		r = dedup_register(cl.mem, REGION_BYTES, NULL);
		if (r == 0 || h_now_ms() > end)
			break;
		if (r == -EEXIST) {
			atomic_fetch_add(&cl.b->register_eexist, 1);
			dedup_unregister(cl.mem, REGION_BYTES);
		} else if (daemon_away(r)) {
			atomic_fetch_add(&cl.b->register_retries, 1);
			h_sleep_ms(100);
		} else {
			break;
		}
	}
	if (r)
		snprintf(cl.b->err, sizeof(cl.b->err), "dedup_register: %s: %s", strerror(-r),
			 dedup_strerror());
	return r;
}

/*
 * A fresh region (new unique content) and its shadow; rw held for writing.
 * A remap asks for the old address, as an allocator reusing it would.
 */
static int map_region(void *hint)
{
	uint8_t *m =
	    mmap(hint, REGION_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (m == MAP_FAILED)
		return -errno;
	cl.mem = m;
	cl.useed = 0x1000000ULL + ((uint64_t)cl.instance << 12) + cl.gen;
	for (unsigned i = 0; i < NPAGES; i++)
		base_page(cl.mem + (size_t)i * PAGE, i);
	memcpy(cl.shadow, cl.mem, REGION_BYTES);
	return 0;
}

static int remap_region(void)
{
	int r;

	pthread_rwlock_wrlock(&cl.rw);
	cl.gen++;
	if ((cl.gen + cl.instance) % 2 == 0) { /* the polite way, every other time */
		dedup_unregister(cl.mem, REGION_BYTES);
		atomic_fetch_add(&cl.b->remaps_unregistered, 1);
	}
	munmap(cl.mem, REGION_BYTES);
	r = map_region(cl.mem);
	if (r == 0)
		r = register_region();
	else
		snprintf(cl.b->err, sizeof(cl.b->err), "mmap: %s", strerror(-r));
	atomic_fetch_add(&cl.b->remaps, 1);
	pthread_rwlock_unlock(&cl.rw);
	return r;
}

static void __attribute__((noreturn))
client_main(struct soak_box *b, unsigned instance, const char *cg, pid_t parent)
{
	pthread_t th[NWRITERS];
	pthread_rwlockattr_t ra;
	uint64_t next_verify;
	int r;

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent)
		_exit(120);
	cl.b = b;
	cl.instance = instance;
	if ((r = memcg_join(cg, 0)) < 0) {
		snprintf(b->err, sizeof(b->err), "cannot join %s: %s", cg, strerror(-r));
		atomic_store(&b->up, r);
		_exit(3);
	}
	cl.plock = calloc(NPAGES, sizeof(*cl.plock));
	for (unsigned i = 0; i < NPAGES; i++)
		pthread_mutex_init(&cl.plock[i], NULL);
	pthread_rwlockattr_init(&ra);
	pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&cl.rw, &ra);
	cl.shadow =
	    mmap(NULL, REGION_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (cl.shadow == MAP_FAILED || (r = map_region(NULL)) < 0) {
		snprintf(b->err, sizeof(b->err), "mmap: %s", strerror(errno));
		atomic_store(&b->up, -ENOMEM);
		_exit(3);
	}
	r = register_region();
	if (r) {
		atomic_store(&b->up, r);
		_exit(3);
	}
	for (uintptr_t t = 0; t < NWRITERS; t++)
		pthread_create(&th[t], NULL, writer_main, (void *)(t + 1 + instance * 16));
	atomic_store(&b->connected, dedup_connected());
	atomic_store(&b->up, 1);
	next_verify = h_now_ms() + VERIFY_EVERY_MS;
	while (!atomic_load(&b->quit)) {
		unsigned want = atomic_load(&b->remap_req);

		if (want != atomic_load(&b->remap_done)) {
			if (remap_region() < 0) {
				atomic_store(&b->up, -EIO);
				_exit(4);
			}
			atomic_store(&b->remap_done, want);
		}
		if (atomic_load(&b->final_req) && !atomic_load(&b->final_done)) {
			atomic_store(&cl.stop, true);
			for (int t = 0; t < NWRITERS; t++)
				pthread_join(th[t], NULL);
			verify_all();
			atomic_store(&b->final_done, 1);
		}
		atomic_store(&b->connected, dedup_connected());
		if (!atomic_load(&cl.stop) && h_now_ms() >= next_verify) {
			verify_all();
			next_verify = h_now_ms() + VERIFY_EVERY_MS;
		}
		h_sleep_ms(10);
	}
	_exit(0);
}

/* ---- the test process ------------------------------------------------------ */

static pid_t runner;
static char sock[256], cg[256];
static pid_t daemon_pid;
static unsigned daemon_lives;
static uint64_t soak_secs, soak_seed, soak_t0; /* soak_t0: CLOCK_MONOTONIC ms at the start */

struct slot {
	pid_t pid;
	struct soak_box *b;
	unsigned instance;
};

static struct slot slots[NCLIENTS];
static unsigned next_instance;

/* Figures of the whole run; dead clients' counters are added as they die. */
static struct {
	uint64_t writes, restores, bytes_verified, verify_passes, lost_words, readback_lost;
	uint64_t stalls, max_stall_us, remaps, remaps_unregistered, register_retries;
	uint64_t register_eexist;
	int64_t first_lost_off;
	unsigned first_lost_gen, first_lost_instance;
	uint64_t merges;
	unsigned restarts_kill, restarts_term, clients_killed, pressure_changes;
	unsigned states_seen[4], state_transitions;
	char last_state[16];
	uint64_t max_reconnect_ms, max_usage, max_stop_ms, max_kill_stop_ms;
	uint64_t stalls_term, stalls_cpu, stalls_blocked;
	uint64_t max_stall_term_ms, max_stall_cpu_ms, max_blocked_ms;
} fig;

static const char *const state_names[4] = { "high", "soft", "hard", "low" };

/* From SIGTERM to the daemon's exit: writers may wait for the daemon then. */
static struct {
	uint64_t from, to;
} term_win[256];
static unsigned nterm_win;

/* One line per chaos event, with its time since the start. */
__attribute__((format(printf, 1, 2))) static void event(const char *fmt, ...)
{
	va_list ap;

	printf("soak-event: +%.2f s ", (double)(h_now_ms() - soak_t0) / 1000.0);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
}

static void add_box(const struct slot *s)
{
	struct soak_box *b = s->b;
	int64_t off = atomic_load(&b->first_lost_off);

	fig.writes += atomic_load(&b->writes);
	fig.restores += atomic_load(&b->restores);
	fig.bytes_verified += atomic_load(&b->bytes_verified);
	fig.verify_passes += atomic_load(&b->verify_passes);
	fig.lost_words += atomic_load(&b->lost_words);
	fig.readback_lost += atomic_load(&b->readback_lost);
	fig.stalls += atomic_load(&b->stalls);
	if (atomic_load(&b->max_stall_us) > fig.max_stall_us)
		fig.max_stall_us = atomic_load(&b->max_stall_us);
	fig.remaps += atomic_load(&b->remaps);
	fig.remaps_unregistered += atomic_load(&b->remaps_unregistered);
	fig.register_retries += atomic_load(&b->register_retries);
	fig.register_eexist += atomic_load(&b->register_eexist);
	if (off >= 0 && fig.first_lost_off < 0) {
		fig.first_lost_off = off;
		fig.first_lost_gen = atomic_load(&b->first_lost_gen);
		fig.first_lost_instance = s->instance;
	}
}

/*
 * The stalls a client noted, printed and sorted once it is done (killed, or
 * at the end): waiting for a CPU (less than STALL_US of the write is not
 * run-queue delay); else during a SIGTERM shutdown of dedupd; else blocked.
 */
static void classify_slow(const struct slot *s)
{
	static const char *const cls[3] = { "common", "zero", "unique" };
	unsigned n = atomic_load(&s->b->nslow);

	for (unsigned i = 0; i < n && i < MAX_SLOW; i++) {
		const struct slow *w = &s->b->slow[i];
		uint64_t blocked = w->ms - w->runq_ms;
		const char *why = "blocked";
		bool term = false;

		for (unsigned t = 0; t < nterm_win && !term; t++)
			term = w->at_ms <= term_win[t].to && w->at_ms + w->ms >= term_win[t].from;
		if (blocked * 1000 < STALL_US) {
			why = "waiting for a CPU";
			fig.stalls_cpu++;
			if (w->ms > fig.max_stall_cpu_ms)
				fig.max_stall_cpu_ms = w->ms;
		} else if (term) {
			why = "during a SIGTERM shutdown of dedupd";
			fig.stalls_term++;
			if (w->ms > fig.max_stall_term_ms)
				fig.max_stall_term_ms = w->ms;
		} else {
			fig.stalls_blocked++;
			if (blocked > fig.max_blocked_ms)
				fig.max_blocked_ms = blocked;
		}
		printf("soak-stall: client instance %u (pid %d) at +%.2f s: %u ms (%u ms of it "
		       "waiting for a CPU), page %u (%s, generation %u)%s: %s\n",
		       s->instance, (int)s->pid,
		       (double)((int64_t)w->at_ms - (int64_t)soak_t0) / 1000.0, w->ms, w->runq_ms,
		       w->page, cls[page_class(w->page)], w->gen,
		       w->restore ? ", whole-page restore" : "", why);
	}
	if (n > MAX_SLOW) { /* not noted one by one: count them as the worst kind */
		printf("soak-stall: client instance %u: %u more, not noted\n", s->instance,
		       n - MAX_SLOW);
		fig.stalls_blocked += n - MAX_SLOW;
		fig.max_blocked_ms = UINT32_MAX;
	}
	fflush(stdout);
}

/* Every figure of the run so far, live clients included. */
static void print_figures(void)
{
	typeof(fig) saved = fig;

	for (int i = 0; i < NCLIENTS; i++)
		if (slots[i].b)
			add_box(&slots[i]);
	printf("soak: duration %llu s\n", (unsigned long long)soak_secs);
	printf("soak: seed %llu (DEDUP_SOAK_SEED=%llu replays the chaos schedule)\n",
	       (unsigned long long)soak_seed, (unsigned long long)soak_seed);
	printf("soak: merges %llu (over %u daemon lives)\n", (unsigned long long)fig.merges,
	       daemon_lives);
	printf("soak: daemon restarts survived: %u after SIGKILL, %u after SIGTERM (slowest exit "
	       "%llu ms after SIGKILL, %llu ms after SIGTERM; slowest return of every client %llu "
	       "ms)\n",
	       fig.restarts_kill, fig.restarts_term, (unsigned long long)fig.max_kill_stop_ms,
	       (unsigned long long)fig.max_stop_ms, (unsigned long long)fig.max_reconnect_ms);
	printf("soak: clients killed %u (replaced)\n", fig.clients_killed);
	printf("soak: regions remapped %llu (%llu after dedup_unregister, %llu by munmap alone; "
	       "register refused as overlapping %llu times, retried while dedupd was away %llu "
	       "times)\n",
	       (unsigned long long)fig.remaps, (unsigned long long)fig.remaps_unregistered,
	       (unsigned long long)(fig.remaps - fig.remaps_unregistered),
	       (unsigned long long)fig.register_eexist, (unsigned long long)fig.register_retries);
	printf("soak: pressure changes %u (states seen: high %u, soft %u, hard %u, low %u; %u "
	       "transitions; the clients used at most %llu MiB)\n",
	       fig.pressure_changes, fig.states_seen[0], fig.states_seen[1], fig.states_seen[2],
	       fig.states_seen[3], fig.state_transitions,
	       (unsigned long long)(fig.max_usage / MIB));
	printf("soak: writes done %llu (and %llu whole-page restores)\n",
	       (unsigned long long)fig.writes, (unsigned long long)fig.restores);
	printf("soak: bytes verified %llu (%llu MiB in %llu passes)\n",
	       (unsigned long long)fig.bytes_verified,
	       (unsigned long long)(fig.bytes_verified / MIB),
	       (unsigned long long)fig.verify_passes);
	printf("soak: writes lost %llu (read back wrong at once: %llu)",
	       (unsigned long long)fig.lost_words, (unsigned long long)fig.readback_lost);
	if (fig.first_lost_off >= 0)
		printf(", the first at region offset %#llx of client instance %u, generation %u",
		       (unsigned long long)fig.first_lost_off, fig.first_lost_instance,
		       fig.first_lost_gen);
	printf("\n");
	printf("soak: stalls over %llu ms %llu, max stall %llu ms\n",
	       (unsigned long long)(STALL_US / 1000), (unsigned long long)fig.stalls,
	       (unsigned long long)(fig.max_stall_us / 1000));
	printf("soak: stalls by cause (clients done): %llu blocked (longest blocked part %llu ms), "
	       "%llu during SIGTERM shutdowns (max %llu ms), %llu waiting for a CPU (max %llu "
	       "ms)\n",
	       (unsigned long long)fig.stalls_blocked, (unsigned long long)fig.max_blocked_ms,
	       (unsigned long long)fig.stalls_term, (unsigned long long)fig.max_stall_term_ms,
	       (unsigned long long)fig.stalls_cpu, (unsigned long long)fig.max_stall_cpu_ms);
	fflush(stdout);
	fig = saved;
}

/* Print what we have, then fail. */
#define SOAK_FAIL(...)                                                                             \
	do {                                                                                       \
		print_figures();                                                                   \
		ck_abort_msg(__VA_ARGS__);                                                         \
	} while (0)

/* Start dedupd as h_daemon_start() does, but dying with this process. */
static pid_t daemon_start(void)
{
	const char *argv[] = { NULL,
			       "--foreground",
			       "--socket",
			       sock,
			       "--sleep-millisecs",
			       "10",
			       "--metrics-listen",
			       "",
			       "--cgroup",
			       cg,
			       "--set",
			       "pressure.high_free_percent=60",
			       "--set",
			       "pressure.soft_free_percent=45",
			       "--set",
			       "pressure.hard_free_percent=30",
			       "--set",
			       "pressure.low_free_percent=5",
			       "--set",
			       "pressure.tick_millisecs=100",
			       "--set",
			       "reclaim.pageout=no",
			       "--set",
			       "reclaim.throttle=no",
			       NULL };
	char exe[256], log[300];
	pid_t parent = getpid(), pid;
	int st;
	FILE *f;

	snprintf(exe, sizeof(exe), "%s/dedupd", h_build());
	snprintf(log, sizeof(log), "%s.log", sock);
	argv[0] = exe;
	f = fopen(log, "ae");
	if (f) {
		fprintf(f, "==== check_soak: dedupd life %u ====\n", daemon_lives + 1);
		fclose(f);
	}
	fflush(stdout);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		if (!freopen(log, "a", stderr))
			_exit(126);
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(124);
		execv(exe, (char *const *)argv);
		_exit(127);
	}
	for (uint64_t end = h_now_ms() + 30000; h_now_ms() < end; h_sleep_ms(10)) {
		int fd = dd_sock_connect(sock);

		if (fd >= 0) {
			close(fd);
			daemon_lives++;
			return pid;
		}
		if (waitpid(pid, &st, WNOHANG) == pid)
			SOAK_FAIL("dedupd exited at start (status %#x, see %s)", st, log);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
	SOAK_FAIL("dedupd did not come up on %s within 30 s (see %s)", sock, log);
	return -1;
}

static void client_start(int i)
{
	struct slot *s = &slots[i];
	pid_t parent = getpid();
	uint64_t end;

	if (!s->b) {
		s->b = mmap(NULL, sizeof(*s->b), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
			    -1, 0);
		ck_assert_ptr_ne(s->b, MAP_FAILED);
	}
	memset(s->b, 0, sizeof(*s->b));
	atomic_store(&s->b->first_lost_off, -1);
	s->instance = ++next_instance;
	fflush(stdout);
	s->pid = fork();
	ck_assert_int_ge(s->pid, 0);
	if (s->pid == 0)
		client_main(s->b, s->instance, cg, parent);
	end = h_now_ms() + 30000;
	while (atomic_load(&s->b->up) == 0 && h_now_ms() < end)
		h_sleep_ms(10);
	if (atomic_load(&s->b->up) != 1)
		SOAK_FAIL("client instance %u did not start (%d): %s", s->instance,
			  atomic_load(&s->b->up), s->b->err);
}

/* Nobody may die on their own: not a client, not the daemon. */
static void check_alive(void)
{
	pid_t pid;
	int st;

	while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
		if (pid == daemon_pid)
			SOAK_FAIL("dedupd died on its own (status %#x, see %s.log)", st, sock);
		for (int i = 0; i < NCLIENTS; i++)
			if (slots[i].pid == pid)
				SOAK_FAIL("client instance %u died on its own (status %#x): %s",
					  slots[i].instance, st, slots[i].b->err);
	}
}

static unsigned connected_clients(void)
{
	unsigned n = 0;

	for (int i = 0; i < NCLIENTS; i++)
		n += atomic_load(&slots[i].b->connected) == 1;
	return n;
}

/* After a restart: the daemon counts every client, and every client says so. */
static void wait_reconnected(const char *what)
{
	uint64_t t0 = h_now_ms(), end = t0 + RECONNECT_MS;
	int64_t c;

	while ((c = h_stat(sock, "clients")) != NCLIENTS || connected_clients() != NCLIENTS) {
		if (h_now_ms() > end)
			SOAK_FAIL("%s: after %u ms dedupd counts %lld clients, and %u of %d say "
				  "they are connected",
				  what, RECONNECT_MS, (long long)c, connected_clients(), NCLIENTS);
		check_alive();
		h_sleep_ms(20);
	}
	if (h_now_ms() - t0 > fig.max_reconnect_ms)
		fig.max_reconnect_ms = h_now_ms() - t0;
}

/*
 * A daemon that takes longer than TERM_MAX_MS to stop: note what its threads
 * (gdb, if installed) and the clients' threads (wchan) wait for, beside its log.
 */
static void dump_stuck(void)
{
	char cmd[1024];

	snprintf(cmd, sizeof(cmd), "gdb -p %d -batch -ex 'thread apply all bt' >%s.stuck-%d 2>&1",
		 (int)daemon_pid, sock, (int)daemon_pid);
	if (system(cmd)) {
		/* no gdb: the clients' side still tells */
	}
	for (int i = 0; i < NCLIENTS; i++) {
		snprintf(cmd, sizeof(cmd),
			 "for t in /proc/%d/task/*; do echo \"$t $(cat $t/comm) "
			 "$(cat $t/wchan)\"; done >>%s.stuck-%d 2>&1",
			 (int)slots[i].pid, sock, (int)daemon_pid);
		if (system(cmd)) {
		}
	}
	event("dedupd (pid %d) still stopping after %d ms: threads in %s.stuck-%d", (int)daemon_pid,
	      TERM_MAX_MS, sock, (int)daemon_pid);
}

static void daemon_restart(int sig)
{
	int64_t m = h_stat(sock, "merges");
	uint64_t k0, took;
	bool dumped = false;
	int st;

	if (m > 0)
		fig.merges += (uint64_t)m;
	k0 = h_now_ms();
	kill(daemon_pid, sig);
	while (waitpid(daemon_pid, &st, WNOHANG) != daemon_pid) {
		if (!dumped && h_now_ms() - k0 > TERM_MAX_MS) {
			dump_stuck();
			dumped = true;
		}
		if (h_now_ms() - k0 > STOP_GIVE_UP_MS) {
			kill(daemon_pid, SIGKILL);
			SOAK_FAIL("dedupd did not stop within %d ms of signal %d (see %s.log)",
				  STOP_GIVE_UP_MS, sig, sock);
		}
		h_sleep_ms(5);
	}
	took = h_now_ms() - k0;
	if (sig == SIGTERM && took > fig.max_stop_ms)
		fig.max_stop_ms = took;
	if (sig == SIGKILL && took > fig.max_kill_stop_ms)
		fig.max_kill_stop_ms = took;
	if (sig == SIGTERM && nterm_win < sizeof(term_win) / sizeof(term_win[0])) {
		term_win[nterm_win].from = k0;
		term_win[nterm_win++].to = h_now_ms();
	}
	if (sig == SIGKILL && !(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL))
		SOAK_FAIL("dedupd exited with status %#x before our SIGKILL", st);
	if (sig == SIGTERM && !(WIFEXITED(st) && WEXITSTATUS(st) == 0))
		SOAK_FAIL("dedupd did not stop cleanly on SIGTERM (status %#x, see %s.log)", st,
			  sock);
	daemon_pid = daemon_start();
	wait_reconnected(sig == SIGKILL ? "restart after SIGKILL" : "restart after SIGTERM");
	if (sig == SIGKILL)
		fig.restarts_kill++;
	else
		fig.restarts_term++;
}

/* Wait for a client's pending remap, if any. */
static void remap_wait(int i)
{
	struct soak_box *b = slots[i].b;
	uint64_t end = h_now_ms() + 60000;

	while (atomic_load(&b->remap_done) != atomic_load(&b->remap_req)) {
		if (h_now_ms() > end)
			SOAK_FAIL("client instance %u did not remap within 60 s",
				  slots[i].instance);
		check_alive();
		h_sleep_ms(10);
	}
}

static void client_kill(int i)
{
	struct slot *s = &slots[i];
	int st;

	remap_wait(i); /* not in the middle of its remap: that would be a test race */
	kill(s->pid, SIGKILL);
	ck_assert_int_eq(waitpid(s->pid, &st, 0), s->pid);
	if (!(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL))
		SOAK_FAIL("client instance %u: status %#x before our SIGKILL: %s", s->instance, st,
			  s->b->err);
	add_box(s); /* it is dead: its figures no longer move */
	classify_slow(s);
	s->pid = 0;
	fig.clients_killed++;
	client_start(i);
}

static uint64_t usage_now(void)
{
	uint64_t m = memcg_u64(cg, "memory.max_usage_in_bytes");

	if (m > fig.max_usage)
		fig.max_usage = m;
	return memcg_u64(cg, "memory.usage_in_bytes");
}

/*
 * Move the cgroup's limit so that free memory puts dedupd in the wanted state
 * (0 high, 1 soft, 2 hard): 70 %, 52 % or 37 % of the limit free, against the
 * thresholds 60/45/30/5 %. Never below 1.25 x the most the clients ever used
 * (the peak comes before any merge, when every page is their own), so that
 * nothing is ever OOM-killed.
 */
static void set_pressure(int state)
{
	static const double free_frac[3] = { 0.70, 0.52, 0.37 };
	uint64_t u = usage_now(), lim = (uint64_t)((double)u / (1.0 - free_frac[state]));
	uint64_t lowest = fig.max_usage + fig.max_usage / 4;
	char val[32];
	int r;

	if (lim < lowest)
		lim = lowest;
	lim = (lim + PAGE - 1) / PAGE * PAGE;
	snprintf(val, sizeof(val), "%llu\n", (unsigned long long)lim);
	r = memcg_write(cg, "memory.limit_in_bytes", val);
	if (r < 0)
		SOAK_FAIL("cannot set the limit of %s to %llu bytes (usage %llu): %s", cg,
			  (unsigned long long)lim, (unsigned long long)usage_now(), strerror(-r));
	fig.pressure_changes++;
	event("cgroup limit %llu MiB (usage %llu MiB): aiming at %s",
	      (unsigned long long)(lim / MIB), (unsigned long long)(u / MIB), state_names[state]);
}

/* Note dedupd's pressure state as it changes. */
static void observe_state(void)
{
	struct json_object *o, *v;
	char *t = NULL;

	if (h_admin(sock, "state", &t) == 0 && t) {
		o = json_tokener_parse(t);
		if (o && json_object_object_get_ex(o, "state", &v)) {
			const char *s = json_object_get_string(v);

			for (int i = 0; i < 4; i++)
				if (!strcmp(s, state_names[i]) && strcmp(s, fig.last_state)) {
					fig.states_seen[i]++;
					if (fig.last_state[0])
						fig.state_transitions++;
					snprintf(fig.last_state, sizeof(fig.last_state), "%s", s);
					event("dedupd says: state %s", s);
				}
		}
		json_object_put(o);
	}
	free(t);
}

static uint64_t rng;

static uint64_t rnd(uint64_t n)
{
	return xs(&rng) % n;
}

/*
 * The next chaos event: 0 SIGKILL dedupd, 1 SIGTERM dedupd, 2 SIGKILL a
 * client, 3 remap a region, 4 move the memory limit. Drawn from a shuffled
 * bag of all of them, so that every kind comes once in every five events.
 * DEDUP_SOAK_EVENTS (e.g. "term,remap", or "none") narrows the choice.
 */
static int pick_event(void)
{
	static const char *const names[5] = { "kill", "term", "client", "remap", "pressure" };
	static int bag[5], left;
	const char *env = getenv("DEDUP_SOAK_EVENTS");

	if (!left) {
		for (int i = 0; i < 5; i++)
			if (!env || !*env || strstr(env, names[i]))
				bag[left++] = i;
		for (int i = left - 1; i > 0; i--) {
			int j = (int)rnd((uint64_t)i + 1), t = bag[i];

			bag[i] = bag[j];
			bag[j] = t;
		}
		if (!left)
			return -1;
	}
	return bag[--left];
}

static uint64_t env_u64(const char *name, uint64_t dflt)
{
	const char *v = getenv(name);

	return v && *v ? strtoull(v, NULL, 0) : dflt;
}

static void chaos(void)
{
	uint64_t end = soak_t0 + soak_secs * 1000, next = soak_t0 + 1000 + rnd(3001);
	uint64_t next_state = soak_t0;
	int pstate = 0;

	while (h_now_ms() < end) {
		int i, to;

		check_alive();
		(void)usage_now();
		if (h_now_ms() >= next_state) {
			observe_state();
			next_state = h_now_ms() + 500;
		}
		if (h_now_ms() < next) {
			h_sleep_ms(50);
			continue;
		}
		switch (pick_event()) {
		case 0:
			event("SIGKILL dedupd (pid %d)", (int)daemon_pid);
			daemon_restart(SIGKILL);
			event("dedupd restarted (pid %d), every client back", (int)daemon_pid);
			break;
		case 1:
			event("SIGTERM dedupd (pid %d)", (int)daemon_pid);
			daemon_restart(SIGTERM);
			event("dedupd restarted (pid %d), every client back", (int)daemon_pid);
			break;
		case 2:
			i = (int)rnd(NCLIENTS);
			event("SIGKILL client instance %u (pid %d)", slots[i].instance,
			      (int)slots[i].pid);
			client_kill(i);
			event("client instance %u (pid %d) takes its place", slots[i].instance,
			      (int)slots[i].pid);
			break;
		case 3:
			/* The test does not wait for it, but asks one client at a
			 * time: the first from a random one on with none pending. */
			i = (int)rnd(NCLIENTS);
			for (int k = 0; k < NCLIENTS; k++, i = (i + 1) % NCLIENTS) {
				struct soak_box *b = slots[i].b;

				if (atomic_load(&b->remap_done) == atomic_load(&b->remap_req)) {
					atomic_fetch_add(&b->remap_req, 1);
					event("client instance %u (pid %d): remap your region",
					      slots[i].instance, (int)slots[i].pid);
					break;
				}
			}
			break;
		case 4:
			to = (int)rnd(2);
			pstate = to >= pstate ? to + 1 : to; /* another state than now */
			set_pressure(pstate);
			break;
		default:
			break;
		}
		next = h_now_ms() + 1000 + rnd(3001);
	}
}

/* The end: every live client stops writing, verifies everything and exits. */
static void finish_clients(void)
{
	for (int i = 0; i < NCLIENTS; i++)
		atomic_store(&slots[i].b->final_req, 1);
	for (int i = 0; i < NCLIENTS; i++) {
		uint64_t end = h_now_ms() + 60000;

		while (!atomic_load(&slots[i].b->final_done)) {
			if (h_now_ms() > end)
				SOAK_FAIL("client instance %u: no final verification within 60 s",
					  slots[i].instance);
			check_alive();
			h_sleep_ms(10);
		}
	}
	for (int i = 0; i < NCLIENTS; i++) {
		int st;

		atomic_store(&slots[i].b->quit, 1);
		ck_assert_int_eq(waitpid(slots[i].pid, &st, 0), slots[i].pid);
		if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0))
			SOAK_FAIL("client instance %u: status %#x: %s", slots[i].instance, st,
				  slots[i].b->err);
		add_box(&slots[i]);
		classify_slow(&slots[i]);
		munmap(slots[i].b, sizeof(*slots[i].b));
		slots[i].b = NULL;
		slots[i].pid = 0;
	}
}

START_TEST(test_soak_no_lost_writes)
{
	bool strict = env_u64("DEDUP_SOAK_STRICT", 0) != 0;
	char oom[256], path[300];
	long oom_kills = -1;
	int st;

	if (!h_is_root()) {
		printf("SKIP %s: needs root (userfaultfd of other processes, memory cgroups, "
		       "process_vm_readv)\n",
		       __func__);
		return;
	}
	if (!memcg_available()) {
		printf("SKIP %s: no cgroup v1 memory controller at " MEMCG_ROOT "\n", __func__);
		return;
	}
	soak_secs = env_u64("DEDUP_SOAK_SECONDS", 60);
	if (!soak_secs)
		soak_secs = 60;
	soak_seed = env_u64("DEDUP_SOAK_SEED", 0);
	if (!soak_seed)
		soak_seed = ((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid() ^ h_now_ms();
	rng = soak_seed | 1;
	memset(&fig, 0, sizeof(fig));
	fig.first_lost_off = -1;
	printf("soak: starting: %llu s, seed %llu, %d clients x %llu MiB, %d writers each\n",
	       (unsigned long long)soak_secs, (unsigned long long)soak_seed, NCLIENTS,
	       (unsigned long long)(REGION_BYTES / MIB), NWRITERS);
	fflush(stdout);

	h_sock_path(sock, sizeof(sock), "soak");
	memcg_dir(cg, sizeof(cg), "dd-check-soak", runner, "clients");
	ck_assert_int_eq(memcg_make(cg, 4096 * MIB), 0); /* no pressure yet */
	setenv("DEDUPD_SOCKET", sock, 1);
	setenv("DEDUP_RECONNECT", "1", 1);
	soak_t0 = h_now_ms();
	daemon_pid = daemon_start();
	for (int i = 0; i < NCLIENTS; i++)
		client_start(i);
	wait_reconnected("start");

	soak_t0 = h_now_ms();
	chaos();

	/* No more chaos: the daemon runs on its own for 3 s, then the last check. */
	for (int i = 0; i < NCLIENTS; i++)
		remap_wait(i);
	set_pressure(0);
	for (uint64_t quiet = h_now_ms() + 3000; h_now_ms() < quiet; h_sleep_ms(50))
		check_alive();
	observe_state();
	wait_reconnected("the end");
	finish_clients();
	{
		int64_t m = h_stat(sock, "merges");

		fig.merges += m > 0 ? (uint64_t)m : 0;
	}
	st = h_daemon_stop(daemon_pid, SIGTERM);
	daemon_pid = 0;
	snprintf(path, sizeof(path), "%s/memory.oom_control", cg);
	if (memcg_read(path, oom, sizeof(oom)) && strstr(oom, "oom_kill "))
		oom_kills = strtol(strstr(oom, "oom_kill ") + 9, NULL, 10);
	print_figures();
	printf("soak: cgroup: %ld OOM kills, limit hit %llu times (memory.failcnt)\n", oom_kills,
	       (unsigned long long)memcg_u64(cg, "memory.failcnt"));
	fflush(stdout);
	memcg_remove(cg);

	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
		      "dedupd did not stop cleanly at the end (status %#x)", st);
	ck_assert_msg(fig.lost_words == 0 && fig.readback_lost == 0,
		      "%llu writes lost (%llu read back wrong at once), the first at offset %#llx "
		      "of client instance %u, generation %u",
		      (unsigned long long)fig.lost_words, (unsigned long long)fig.readback_lost,
		      (unsigned long long)fig.first_lost_off, fig.first_lost_instance,
		      fig.first_lost_gen);
	ck_assert_msg(fig.merges > 0, "no merges");
	ck_assert_msg(oom_kills == 0, "%ld OOM kills in %s", oom_kills, cg);
	ck_assert_uint_gt(fig.writes, 0);
	ck_assert_uint_gt(fig.bytes_verified, 0);
	/* Restarts survived: wait_reconnected() failed the test otherwise. A
	 * full run (a round of five events takes well under 60 s) has had every
	 * kind of chaos. */
	if (soak_secs >= 60 && !getenv("DEDUP_SOAK_EVENTS")) {
		ck_assert_uint_gt(fig.restarts_kill, 0);
		ck_assert_uint_gt(fig.restarts_term, 0);
		ck_assert_uint_gt(fig.clients_killed, 0);
		ck_assert_uint_gt(fig.remaps, 0);
		ck_assert_uint_gt(fig.pressure_changes, 1); /* the one at the end, and more */
	}
	if (strict) {
		ck_assert_msg(
		    fig.stalls_blocked + fig.stalls_term == 0,
		    "%llu writes blocked over %llu ms (longest %llu ms), %llu during "
		    "SIGTERM shutdowns (longest %llu ms)",
		    (unsigned long long)fig.stalls_blocked, (unsigned long long)(STALL_US / 1000),
		    (unsigned long long)fig.max_blocked_ms, (unsigned long long)fig.stalls_term,
		    (unsigned long long)fig.max_stall_term_ms);
	} else {
		ck_assert_msg(fig.max_blocked_ms <= BLOCKED_MAX_MS,
			      "a write was blocked %llu ms (bound %d ms, see the top of the file)",
			      (unsigned long long)fig.max_blocked_ms, BLOCKED_MAX_MS);
		ck_assert_msg(fig.max_stall_term_ms <= TERM_MAX_MS &&
				  fig.max_stop_ms <= TERM_MAX_MS,
			      "SIGTERM: a write waited %llu ms, dedupd took %llu ms to stop (bound "
			      "%d ms, see the top of the file)",
			      (unsigned long long)fig.max_stall_term_ms,
			      (unsigned long long)fig.max_stop_ms, TERM_MAX_MS);
	}
}
END_TEST

static void teardown(void)
{
	char dir[256];

	memcg_dir(dir, sizeof(dir), "dd-check-soak", runner, "clients");
	memcg_remove(dir);
}

static Suite *soak_suite(void)
{
	Suite *s = suite_create("soak");
	TCase *tc = tcase_create("chaos");
	uint64_t secs = env_u64("DEDUP_SOAK_SECONDS", 60);

	tcase_add_unchecked_fixture(tc, NULL, teardown);
	/* The chaos, then at most: a stop and a return, 3 s, the final checks. */
	tcase_set_timeout(tc, (double)(secs ? secs : 60) + 300);
	tcase_add_test(tc, test_soak_no_lost_writes);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(soak_suite());
	int failed;

	runner = getpid();
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
