// SPDX-License-Identifier: MIT
/*
 * Fault injection (issue 8): a bounded soak of the real dedupd and real
 * libdedup clients while everything goes wrong, proving that no write is
 * ever lost.
 *
 * Clients: NCLIENTS forked processes, each in one v1 memory cgroup, each with
 * a 16 MiB private anonymous region registered with dedup_register(): half of
 * its pages hold content common to every client (so merges happen all the
 * time), an eighth are zero, the rest unique to the client. Two writer threads
 * per client write random 8-byte values at random offsets of random pages, and
 * now and then put a common or zero page back to its original content (so it
 * is merged again under the writers). Every write also goes to a shadow copy,
 * a MAP_SHARED anonymous mapping that dedupd never merges. The client's main
 * thread compares the whole region with the shadow every VERIFY_EVERY_MS: a
 * difference is a lost write (counted, the first offset kept, and the write
 * applied again so that it is counted once). Writers and the verifier take a
 * per-page mutex around each access, so a difference cannot be a race of the
 * test itself; a remap takes a region-wide rwlock. Each write is timed; writes
 * that took longer than STALL_US are counted and the longest is kept. All
 * figures live in a MAP_SHARED struct per client that the test reads, also
 * after it killed the client.
 *
 * Chaos, from the test process, every 1-4 s (seeded, DEDUP_SOAK_SEED=N replays
 * a schedule): SIGKILL of dedupd and a restart on the same socket; SIGTERM and
 * a restart; SIGKILL of a client (a new one takes its place); a client asked
 * to munmap its region and map, fill and register a new one (half the time
 * after dedup_unregister(), half the time without: dedupd only hears of it
 * through the userfaultfd's UNMAP event); the cgroup's limit moved so that
 * free memory (dedupd --cgroup, thresholds 60/45/30/5 %) is in the high, soft
 * or hard state, never below 1.25 x the most the clients ever used, so that
 * nobody is OOM-killed (checked with memory.oom_control). Reclaim actions are
 * off (no swap here: pageout would do nothing, throttling is not under test).
 *
 * After every restart all clients must be connected again (the daemon's
 * `clients` figure and every client's dedup_connected()); the daemon's
 * `merges` are read before every stop and summed over its lives. At the end
 * the chaos stops, dedupd runs 3 s more, every client stops its writers and
 * verifies its whole region once more, and everything stops. One greppable
 * line per figure ("soak: ..."). The duration is DEDUP_SOAK_SECONDS (default
 * 60).
 */
#include "tests/harness.h"
#include "tests/memcg.h"
#include "dedupd/lib/dedup.h"

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
#define STALL_US 100000ULL	/* a write that takes longer stalled */
#define BURST 32		/* writes between two pauses of a writer */
#define PAUSE_US 1000		/* a writer's pause */
#define RESTORE_ONE_IN 64	/* one write in this many restores a whole page */
#define VERIFY_EVERY_MS 250
#define RECONNECT_MS 30000	/* all clients back after a restart, at the latest */
#define MAX_SLOW 256		/* stalls a client notes one by one */

/* Page classes, by page index modulo 16: 8 common (runs of 8), 2 zero, 6 unique. */
static inline int page_class(unsigned i)
{
	unsigned m = i % 16;

	return m < 8 ? 0 : m < 10 ? 1 : 2; /* 0 common, 1 zero, 2 unique */
}

/* ---- what a client tells the test (MAP_SHARED, never merged) ------------- */

struct soak_box {
	/* test -> client */
	atomic_uint remap_req;	/* bumped: unmap and replace the region */
	atomic_int final_req;	/* stop the writers, verify everything once more */
	atomic_int quit;	/* exit 0 */
	/* client -> test */
	atomic_int up;		/* 1 registered and writing; < 0: it failed (err) */
	atomic_uint remap_done;
	atomic_int final_done;
	atomic_int connected;	/* dedup_connected(), refreshed every 10 ms */
	atomic_uint_fast64_t writes;	     /* 8-byte writes */
	atomic_uint_fast64_t restores;	     /* whole-page writes (original content) */
	atomic_uint_fast64_t bytes_verified; /* compared with the shadow */
	atomic_uint_fast64_t verify_passes;
	atomic_uint_fast64_t lost_words;     /* differences found by the verifier */
	atomic_uint_fast64_t readback_lost;  /* a write not read back right after it */
	atomic_int_fast64_t first_lost_off;  /* region offset of the first one, or -1 */
	atomic_uint first_lost_gen;	     /* in which region generation */
	atomic_uint_fast64_t stalls;	     /* writes slower than STALL_US */
	atomic_uint_fast64_t max_stall_us;
	atomic_uint_fast64_t remaps;
	atomic_uint_fast64_t remaps_unregistered; /* remaps that unregistered first */
	atomic_uint_fast64_t register_retries;	  /* daemon away: retried */
	atomic_uint_fast64_t register_eexist;	  /* refused: "overlaps the registered region" */
	atomic_uint nslow;		     /* stalls noted in slow[] (and beyond) */
	struct slow {
		uint64_t at_ms;		     /* CLOCK_MONOTONIC when the write began */
		uint32_t ms;		     /* how long it took */
		uint32_t runq_ms;	     /* of which runnable, waiting for a CPU */
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

/* A fresh region (new unique content) and its shadow; rw held for writing. */
static int map_region(void)
{
	uint8_t *m = mmap(NULL, REGION_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			  -1, 0);

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
	if (cl.gen % 2 == 0) { /* the polite way */
		dedup_unregister(cl.mem, REGION_BYTES);
		atomic_fetch_add(&cl.b->remaps_unregistered, 1);
	}
	munmap(cl.mem, REGION_BYTES);
	r = map_region();
	if (r == 0)
		r = register_region();
	else
		snprintf(cl.b->err, sizeof(cl.b->err), "mmap: %s", strerror(-r));
	atomic_fetch_add(&cl.b->remaps, 1);
	pthread_rwlock_unlock(&cl.rw);
	return r;
}

static void __attribute__((noreturn)) client_main(struct soak_box *b, unsigned instance,
						  const char *cg, pid_t parent)
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
	cl.shadow = mmap(NULL, REGION_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
			 -1, 0);
	if (cl.shadow == MAP_FAILED || (r = map_region()) < 0) {
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
static char sock[256], cg[256], cgarg[256];
static pid_t daemon_pid;
static unsigned daemon_lives;

struct slot {
	pid_t pid;
	struct soak_box *b;
	unsigned instance;
};

static struct slot slots[NCLIENTS];
static unsigned next_instance;

/* Figures of the whole run: dead clients' counters are added here. */
static struct {
	uint64_t writes, restores, bytes_verified, verify_passes, lost_words, readback_lost;
	uint64_t stalls, max_stall_us, remaps, remaps_unregistered, register_retries;
	uint64_t register_eexist;
	int64_t first_lost_off;
	unsigned first_lost_gen, first_lost_instance;
	uint64_t merges, merges_last_life;
	unsigned restarts_kill, restarts_term, clients_killed, remaps_asked, pressure_changes;
	unsigned states_seen[4], state_transitions;
	uint64_t max_reconnect_ms, max_usage, max_stop_ms;
	uint64_t stalls_term, stalls_cpu, stalls_blocked;
	uint64_t max_stall_term_ms, max_stall_cpu_ms, max_blocked_ms;
	char last_state[16];
} fig;

static uint64_t soak_t0; /* CLOCK_MONOTONIC ms when the chaos began */

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

/* From SIGTERM to the daemon's exit: writes may wait for the daemon then. */
static struct {
	uint64_t from, to;
} term_win[256];
static unsigned nterm_win;

/*
 * The stalls a client noted, printed and sorted once it is done: during a
 * SIGTERM shutdown of dedupd; waiting for a CPU (the run-queue delay leaves
 * less than STALL_US of the write unexplained: this machine's 2 cores are
 * shared by ~20 threads of this test, the daemon and whatever else runs);
 * or blocked in the kernel for longer than STALL_US.
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
		if (term) {
			why = "during a SIGTERM shutdown";
			fig.stalls_term++;
			if (w->ms > fig.max_stall_term_ms)
				fig.max_stall_term_ms = w->ms;
		} else if (blocked * 1000 <= STALL_US) {
			why = "waiting for a CPU";
			fig.stalls_cpu++;
			if (w->ms > fig.max_stall_cpu_ms)
				fig.max_stall_cpu_ms = w->ms;
		} else {
			fig.stalls_blocked++;
			if (blocked > fig.max_blocked_ms)
				fig.max_blocked_ms = blocked;
		}
		printf("soak-stall: client instance %u (pid %d) at +%.2f s: %u ms (%u ms of it "
		       "waiting for a CPU), page %u (%s, generation %u)%s: %s\n", s->instance,
		       (int)s->pid, (double)((int64_t)w->at_ms - (int64_t)soak_t0) / 1000.0, w->ms,
		       w->runq_ms, w->page, cls[page_class(w->page)], w->gen,
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

static const char *const state_names[4] = { "high", "soft", "hard", "low" };

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

/* Everything of the run so far, live clients included (they keep counting). */
static void print_figures(uint64_t secs, uint64_t seed)
{
	typeof(fig) saved = fig;

	for (int i = 0; i < NCLIENTS; i++)
		if (slots[i].b)
			add_box(&slots[i]);
	printf("soak: duration %llu s\n", (unsigned long long)secs);
	printf("soak: seed %llu (DEDUP_SOAK_SEED=%llu replays the chaos schedule)\n",
	       (unsigned long long)seed, (unsigned long long)seed);
	printf("soak: merges %llu (over %u daemon lives)\n", (unsigned long long)fig.merges,
	       daemon_lives);
	printf("soak: daemon restarts survived: %u after SIGKILL, %u after SIGTERM "
	       "(slowest stop %llu ms, slowest reconnect of all clients %llu ms)\n",
	       fig.restarts_kill, fig.restarts_term, (unsigned long long)fig.max_stop_ms,
	       (unsigned long long)fig.max_reconnect_ms);
	printf("soak: clients killed %u (replaced)\n", fig.clients_killed);
	printf("soak: regions remapped %llu (%llu after dedup_unregister, %llu by munmap alone; "
	       "register refused as overlapping %llu times, retried while the daemon was away "
	       "%llu times)\n", (unsigned long long)fig.remaps,
	       (unsigned long long)fig.remaps_unregistered,
	       (unsigned long long)(fig.remaps - fig.remaps_unregistered),
	       (unsigned long long)fig.register_eexist, (unsigned long long)fig.register_retries);
	printf("soak: pressure changes %u (states seen: high %u, soft %u, hard %u, low %u; "
	       "%u transitions observed; most memory the clients used %llu MiB)\n",
	       fig.pressure_changes, fig.states_seen[0], fig.states_seen[1], fig.states_seen[2],
	       fig.states_seen[3], fig.state_transitions,
	       (unsigned long long)(fig.max_usage / MIB));
	printf("soak: writes done %llu (+ %llu whole-page restores)\n",
	       (unsigned long long)fig.writes, (unsigned long long)fig.restores);
	printf("soak: bytes verified %llu (%llu MiB, %llu passes)\n",
	       (unsigned long long)fig.bytes_verified,
	       (unsigned long long)(fig.bytes_verified / MIB),
	       (unsigned long long)fig.verify_passes);
	printf("soak: writes lost %llu (read back wrong at once: %llu)",
	       (unsigned long long)fig.lost_words, (unsigned long long)fig.readback_lost);
	if (fig.first_lost_off >= 0)
		printf(", first at region offset %#llx, client instance %u, generation %u",
		       (unsigned long long)fig.first_lost_off, fig.first_lost_instance,
		       fig.first_lost_gen);
	printf("\n");
	printf("soak: stalls over %llu ms %llu, max stall %llu ms\n",
	       (unsigned long long)(STALL_US / 1000), (unsigned long long)fig.stalls,
	       (unsigned long long)(fig.max_stall_us / 1000));
	printf("soak: stalls sorted (clients done so far): %llu during SIGTERM shutdowns (max %llu "
	       "ms), %llu waiting for a CPU (max %llu ms), %llu blocked over %llu ms (longest "
	       "blocked part %llu ms)\n", (unsigned long long)fig.stalls_term,
	       (unsigned long long)fig.max_stall_term_ms, (unsigned long long)fig.stalls_cpu,
	       (unsigned long long)fig.max_stall_cpu_ms, (unsigned long long)fig.stalls_blocked,
	       (unsigned long long)(STALL_US / 1000), (unsigned long long)fig.max_blocked_ms);
	fflush(stdout);
	fig = saved;
}

/* Start dedupd as h_daemon_start() does, dying with this process. */
static pid_t daemon_start(void)
{
	char exe[256], log[300], thr[5][64];
	const char *argv[48];
	pid_t parent = getpid(), pid;
	int n = 0, st;
	FILE *f;

	snprintf(exe, sizeof(exe), "%s/dedupd", h_build());
	snprintf(log, sizeof(log), "%s.log", sock);
	snprintf(thr[0], sizeof(thr[0]), "pressure.high_free_percent=60");
	snprintf(thr[1], sizeof(thr[1]), "pressure.soft_free_percent=45");
	snprintf(thr[2], sizeof(thr[2]), "pressure.hard_free_percent=30");
	snprintf(thr[3], sizeof(thr[3]), "pressure.low_free_percent=5");
	snprintf(thr[4], sizeof(thr[4]), "pressure.tick_millisecs=100");
	argv[n++] = exe;
	argv[n++] = "--foreground";
	argv[n++] = "--socket";
	argv[n++] = sock;
	argv[n++] = "--sleep-millisecs";
	argv[n++] = "10";
	argv[n++] = "--metrics-listen";
	argv[n++] = "";
	argv[n++] = "--cgroup";
	argv[n++] = cgarg;
	for (int i = 0; i < 5; i++) {
		argv[n++] = "--set";
		argv[n++] = thr[i];
	}
	argv[n++] = "--set";
	argv[n++] = "reclaim.pageout=no";
	argv[n++] = "--set";
	argv[n++] = "reclaim.throttle=no";
	argv[n] = NULL;
	f = fopen(log, "ae");
	if (f) {
		fprintf(f, "==== check_soak: daemon life %u ====\n", daemon_lives + 1);
		fclose(f);
	}
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
	for (int i = 0; i < 1000; i++) {
		int fd = dd_sock_connect(sock);

		if (fd >= 0) {
			close(fd);
			daemon_lives++;
			return pid;
		}
		if (waitpid(pid, &st, WNOHANG) == pid)
			ck_abort_msg("dedupd exited at start (status %#x, see %s)", st, log);
		h_sleep_ms(10);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
	ck_abort_msg("dedupd did not come up on %s (see %s)", sock, log);
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
	s->pid = fork();
	ck_assert_int_ge(s->pid, 0);
	if (s->pid == 0)
		client_main(s->b, s->instance, cg, parent);
	end = h_now_ms() + 30000;
	while (atomic_load(&s->b->up) == 0 && h_now_ms() < end)
		h_sleep_ms(10);
	ck_assert_msg(atomic_load(&s->b->up) == 1, "client %u did not start (%d): %s",
		      s->instance, atomic_load(&s->b->up), s->b->err);
}

static int slot_of(pid_t pid)
{
	for (int i = 0; i < NCLIENTS; i++)
		if (slots[i].pid == pid)
			return i;
	return -1;
}

/* Nobody may die on their own: not a client, not the daemon. */
static void check_alive(uint64_t secs, uint64_t seed)
{
	int st;
	pid_t pid;

	while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
		int i = slot_of(pid);

		if (pid == daemon_pid) {
			print_figures(secs, seed);
			ck_abort_msg("dedupd died on its own (status %#x, see %s.log)", st, sock);
		}
		if (i >= 0) {
			print_figures(secs, seed);
			ck_abort_msg("client instance %u died on its own (status %#x: %s)",
				     slots[i].instance, st, slots[i].b->err);
		}
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
static void wait_reconnected(uint64_t secs, uint64_t seed, const char *what)
{
	uint64_t t0 = h_now_ms(), end = t0 + RECONNECT_MS;
	int64_t c = -1;

	for (;;) {
		c = h_stat(sock, "clients");
		if (c == NCLIENTS && connected_clients() == NCLIENTS)
			break;
		if (h_now_ms() > end) {
			print_figures(secs, seed);
			ck_abort_msg("%s: after %u ms the daemon counts %lld clients and %u of %d "
				     "say they are connected", what, RECONNECT_MS, (long long)c,
				     connected_clients(), NCLIENTS);
		}
		check_alive(secs, seed);
		h_sleep_ms(20);
	}
	if (h_now_ms() - t0 > fig.max_reconnect_ms)
		fig.max_reconnect_ms = h_now_ms() - t0;
}

static void daemon_restart(int sig, uint64_t secs, uint64_t seed)
{
	int64_t m = h_stat(sock, "merges");
	int st;

	if (m > 0)
		fig.merges += (uint64_t)m;
	uint64_t k0 = h_now_ms();
	bool dumped = false;

	kill(daemon_pid, sig);
	while (waitpid(daemon_pid, &st, WNOHANG) != daemon_pid) {
		if (!dumped && h_now_ms() - k0 > 2000) {
			char cmd[512];

			snprintf(cmd, sizeof(cmd), "gdb -p %d -batch -ex 'thread apply all bt' "
				 ">%s.stop-%d.bt 2>&1", (int)daemon_pid, sock, (int)daemon_pid);
			if (system(cmd)) {
			}
			for (int i = 0; i < NCLIENTS; i++) {
				snprintf(cmd, sizeof(cmd), "for t in /proc/%d/task/*; do "
					 "echo \"== $t $(cat $t/comm) $(cat $t/wchan)\"; cat $t/stack; "
					 "done >>%s.stop-%d.bt 2>&1", (int)slots[i].pid, sock,
					 (int)daemon_pid);
				if (system(cmd)) {
				}
			}
			event("dedupd still stopping after 2 s: backtraces in %s.stop-%d.bt", sock,
			      (int)daemon_pid);
			dumped = true;
		}
		h_sleep_ms(5);
	}
	if (h_now_ms() - k0 > fig.max_stop_ms)
		fig.max_stop_ms = h_now_ms() - k0;
	if (sig == SIGTERM && nterm_win < 256) {
		term_win[nterm_win].from = k0;
		term_win[nterm_win++].to = h_now_ms();
	}
	if (sig == SIGKILL)
		ck_assert_msg(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "status %#x", st);
	else
		ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
			      "dedupd did not stop cleanly on SIGTERM (status %#x, see %s.log)", st,
			      sock);
	daemon_pid = daemon_start();
	wait_reconnected(secs, seed, sig == SIGKILL ? "restart after SIGKILL" :
				     "restart after SIGTERM");
	if (sig == SIGKILL)
		fig.restarts_kill++;
	else
		fig.restarts_term++;
}

static void client_kill(int i)
{
	struct slot *s = &slots[i];
	int st;

	kill(s->pid, SIGKILL);
	ck_assert_int_eq(waitpid(s->pid, &st, 0), s->pid);
	ck_assert_msg(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL,
		      "client instance %u: status %#x before our SIGKILL: %s", s->instance, st,
		      s->b->err);
	add_box(s); /* its figures count: it is dead, they no longer move */
	classify_slow(s);
	s->pid = 0;
	fig.clients_killed++;
	client_start(i);
}

/* Wait for a client's pending remap, if any. */
static void remap_wait(int i, uint64_t secs, uint64_t seed)
{
	struct soak_box *b = slots[i].b;
	uint64_t end = h_now_ms() + 60000;

	while (atomic_load(&b->remap_done) != atomic_load(&b->remap_req)) {
		if (h_now_ms() > end) {
			print_figures(secs, seed);
			ck_abort_msg("client instance %u did not remap within 60 s",
				     slots[i].instance);
		}
		check_alive(secs, seed);
		h_sleep_ms(10);
	}
}

static uint64_t usage_now(void)
{
	uint64_t u = memcg_u64(cg, "memory.usage_in_bytes");
	uint64_t m = memcg_u64(cg, "memory.max_usage_in_bytes");

	if (m > fig.max_usage)
		fig.max_usage = m;
	return u;
}

/*
 * Move the cgroup's limit so that free memory is in the wanted state: free
 * 70 % (high), 52 % (soft) or 37 % (hard) of the limit, with the thresholds
 * 60/45/30/5 %. Never below 1.25 x the most the clients ever used (the peak
 * comes before any merge), so that nothing is ever OOM-killed.
 */
static void set_pressure(int state)
{
	static const double free_frac[3] = { 0.70, 0.52, 0.37 };
	uint64_t u = usage_now(), lim = (uint64_t)((double)u / (1.0 - free_frac[state]));
	uint64_t floor_ = fig.max_usage + fig.max_usage / 4;
	char val[32];

	if (lim < floor_)
		lim = floor_;
	lim = (lim + PAGE - 1) / PAGE * PAGE;
	snprintf(val, sizeof(val), "%llu\n", (unsigned long long)lim);
	ck_assert_int_eq(memcg_write(cg, "memory.limit_in_bytes", val), 0);
	fig.pressure_changes++;
}

static void observe_state(void)
{
	char *t = NULL;
	struct json_object *o, *v;

	if (h_admin(sock, "state", &t) == 0 && t) {
		o = json_tokener_parse(t);
		if (o && json_object_object_get_ex(o, "state", &v)) {
			const char *s = json_object_get_string(v);

			for (int i = 0; i < 4; i++)
				if (!strcmp(s, state_names[i]) && strcmp(s, fig.last_state)) {
					fig.states_seen[i]++;
					if (fig.last_state[0])
						fig.state_transitions++;
					event("dedupd says: state %s", s);
					snprintf(fig.last_state, sizeof(fig.last_state), "%s", s);
				}
		}
		json_object_put(o);
	}
	free(t);
}

static uint64_t rng;

static uint64_t rnd(uint64_t n)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng % n;
}

/*
 * The next chaos event: 0 SIGKILL dedupd, 1 SIGTERM dedupd, 2 SIGKILL a
 * client, 3 remap a region, 4 move the memory limit. DEDUP_SOAK_EVENTS
 * (e.g. "term,remap") limits the choice, to chase one failure.
 */
static int pick_event(void)
{
	static const char *const names[5] = { "kill", "term", "client", "remap", "pressure" };
	const char *env = getenv("DEDUP_SOAK_EVENTS");
	int allowed[5], n = 0;

	for (int i = 0; i < 5; i++)
		if (!env || !*env || strstr(env, names[i]))
			allowed[n++] = i;
	return n ? allowed[rnd((uint64_t)n)] : -1; /* e.g. "none" */
}

static uint64_t env_u64(const char *name, uint64_t dflt)
{
	const char *v = getenv(name);

	return v && *v ? strtoull(v, NULL, 0) : dflt;
}

static uint64_t soak_seconds(void)
{
	uint64_t s = env_u64("DEDUP_SOAK_SECONDS", 60);

	return s ? s : 60;
}

START_TEST(test_soak_no_lost_writes)
{
	uint64_t secs = soak_seconds(), seed, t0, end, next, next_state;
	char oom[256], path[300];
	int pstate = 0;
	long oom_kills = -1;

	if (!h_is_root()) {
		printf("SKIP %s: needs root (userfaultfd of other processes, memory cgroups, "
		       "process_vm_readv)\n", __func__);
		return;
	}
	if (!memcg_available()) {
		printf("SKIP %s: no cgroup v1 memory controller at " MEMCG_ROOT "\n", __func__);
		return;
	}
	seed = env_u64("DEDUP_SOAK_SEED", 0);
	if (!seed)
		seed = (uint64_t)time(NULL) * 2654435761ULL ^ (uint64_t)getpid();
	rng = seed | 1;
	memset(&fig, 0, sizeof(fig));
	fig.first_lost_off = -1;
	printf("soak: starting: %llu s, seed %llu, %d clients x %llu MiB, %d writers each\n",
	       (unsigned long long)secs, (unsigned long long)seed, NCLIENTS,
	       (unsigned long long)(REGION_BYTES / MIB), NWRITERS);
	fflush(stdout);

	h_sock_path(sock, sizeof(sock), "soak");
	memcg_dir(cg, sizeof(cg), "dd-check-soak", runner, "clients");
	snprintf(cgarg, sizeof(cgarg), "%s", cg);
	ck_assert_int_eq(memcg_make(cg, 4096 * MIB), 0);
	setenv("DEDUPD_SOCKET", sock, 1);
	setenv("DEDUP_RECONNECT", "1", 1);
	daemon_pid = daemon_start();
	for (int i = 0; i < NCLIENTS; i++)
		client_start(i);
	ck_assert_msg(h_wait_stat(sock, "clients", NCLIENTS, false, 10000), "clients %lld",
		      (long long)h_stat(sock, "clients"));
	(void)usage_now();

	t0 = soak_t0 = h_now_ms();
	end = t0 + secs * 1000;
	next = t0 + 1000 + rnd(3001);
	next_state = t0;
	while (h_now_ms() < end) {
		uint64_t now = h_now_ms();

		check_alive(secs, seed);
		(void)usage_now();
		if (now >= next_state) {
			observe_state();
			next_state = now + 500;
		}
		if (now < next) {
			h_sleep_ms(50);
			continue;
		}
		switch (pick_event()) {
		case 0:
			event("SIGKILL dedupd (pid %d)", (int)daemon_pid);
			daemon_restart(SIGKILL, secs, seed);
			event("dedupd restarted (pid %d), all clients back", (int)daemon_pid);
			break;
		case 1:
			event("SIGTERM dedupd (pid %d)", (int)daemon_pid);
			daemon_restart(SIGTERM, secs, seed);
			event("dedupd restarted (pid %d), all clients back", (int)daemon_pid);
			break;
		case 2: {
			int i = (int)rnd(NCLIENTS);

			remap_wait(i, secs, seed); /* not in the middle of its remap */
			event("SIGKILL client instance %u (pid %d)", slots[i].instance,
			      (int)slots[i].pid);
			client_kill(i);
			event("client instance %u (pid %d) replaces it", slots[i].instance,
			      (int)slots[i].pid);
			break;
		}
		case 3: {
			int i = (int)rnd(NCLIENTS);

			/* One at a time per client; the test does not wait for it. */
			if (atomic_load(&slots[i].b->remap_done) ==
			    atomic_load(&slots[i].b->remap_req)) {
				atomic_fetch_add(&slots[i].b->remap_req, 1);
				fig.remaps_asked++;
				event("client instance %u (pid %d): remap its region",
				      slots[i].instance, (int)slots[i].pid);
			}
			break;
		}
		case 4: {
			int to = (int)rnd(2);

			pstate = to >= pstate ? to + 1 : to; /* another state than now */
			set_pressure(pstate);
			event("cgroup limit %llu MiB (usage %llu MiB): aiming at %s",
			      (unsigned long long)(memcg_u64(cg, "memory.limit_in_bytes") / MIB),
			      (unsigned long long)(memcg_u64(cg, "memory.usage_in_bytes") / MIB),
			      state_names[pstate]);
			break;
		}
		default:
			break;
		}
		next = h_now_ms() + 1000 + rnd(3001);
	}

	/* The end: no more chaos; the daemon runs on its own for 3 s. */
	for (int i = 0; i < NCLIENTS; i++)
		remap_wait(i, secs, seed);
	set_pressure(0);
	for (uint64_t quiet = h_now_ms() + 3000; h_now_ms() < quiet; h_sleep_ms(50))
		check_alive(secs, seed);
	observe_state();
	wait_reconnected(secs, seed, "the end");
	for (int i = 0; i < NCLIENTS; i++)
		atomic_store(&slots[i].b->final_req, 1);
	for (int i = 0; i < NCLIENTS; i++) {
		uint64_t wend = h_now_ms() + 60000;

		while (!atomic_load(&slots[i].b->final_done) && h_now_ms() < wend) {
			check_alive(secs, seed);
			h_sleep_ms(10);
		}
		ck_assert_msg(atomic_load(&slots[i].b->final_done),
			      "client instance %u: no final verification", slots[i].instance);
	}
	fig.merges_last_life = (uint64_t)(h_stat(sock, "merges") > 0 ? h_stat(sock, "merges") : 0);
	fig.merges += fig.merges_last_life;
	for (int i = 0; i < NCLIENTS; i++) {
		int st;

		atomic_store(&slots[i].b->quit, 1);
		ck_assert_int_eq(waitpid(slots[i].pid, &st, 0), slots[i].pid);
		ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
			      "client instance %u: status %#x: %s", slots[i].instance, st,
			      slots[i].b->err);
		add_box(&slots[i]);
		classify_slow(&slots[i]);
		munmap(slots[i].b, sizeof(*slots[i].b));
		slots[i].b = NULL;
		slots[i].pid = 0;
	}
	{
		int st = h_daemon_stop(daemon_pid, SIGTERM);

		daemon_pid = 0;
		ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
			      "dedupd did not stop cleanly at the end (status %#x)", st);
	}
	snprintf(path, sizeof(path), "%s/memory.oom_control", cg);
	if (memcg_read(path, oom, sizeof(oom))) {
		const char *k = strstr(oom, "oom_kill ");

		oom_kills = k ? strtol(k + 9, NULL, 10) : -1;
	}
	print_figures(secs, seed);
	printf("soak: cgroup: %ld OOM kills, limit hit %llu times (memory.failcnt)\n", oom_kills,
	       (unsigned long long)memcg_u64(cg, "memory.failcnt"));
	fflush(stdout);
	memcg_remove(cg);

	ck_assert_msg(fig.lost_words == 0 && fig.readback_lost == 0,
		      "%llu writes lost (%llu read back wrong), first at offset %#llx of client "
		      "instance %u, generation %u", (unsigned long long)fig.lost_words,
		      (unsigned long long)fig.readback_lost, (unsigned long long)fig.first_lost_off,
		      fig.first_lost_instance, fig.first_lost_gen);
	ck_assert_msg(fig.merges > 0, "no merges");
	ck_assert_int_eq(oom_kills, 0);
	ck_assert_uint_gt(fig.bytes_verified, 0);
	ck_assert_uint_gt(fig.writes, 0);
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

	tcase_add_unchecked_fixture(tc, NULL, teardown);
	tcase_set_timeout(tc, (double)soak_seconds() + 240);
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
