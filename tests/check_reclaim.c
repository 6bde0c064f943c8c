// SPDX-License-Identifier: MIT
/*
 * Reclaim: the pure policy (idle-memory tax, min-funding revocation, need,
 * admission) against hand-computed equilibria and the ESX paper's figures;
 * the active-memory estimator's averages; and the real daemon:
 *
 *  - accuracy of the active-memory estimate: clients that write 0 %, 25 %
 *    and 75 % of their pages get estimates within +-0.1;
 *  - the ESX idle-tax experiment with real processes: two clients with equal
 *    shares in a memory cgroup that forces reclaim, one idle and one writing
 *    all its memory; libdedup balloon handlers give memory back. With tax
 *    rate 0 they end with about equal memory, with 0.75 the active one keeps
 *    clearly more. Raising the limit then deflates the balloons;
 *  - admission control: a minimum that does not fit is refused with the
 *    figures, one that fits is admitted, and a client's exit frees its
 *    reservation;
 *  - a VMM balloon backend that stalls or answers garbage: marked unavailable,
 *    and another victim is ballooned instead.
 *
 * The daemon tests need root (userfaultfd of other processes, cgroups) and
 * the cgroup v1 memory controller; they say why when they skip.
 */
#include "tests/harness.h"
#include "tests/memcg.h"
#include "dedupd/lib/dedup.h"
#include "dedupd/reclaim/active.h"
#include "dedupd/reclaim/policy.h"

#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>

#define MIB ((uint64_t)1 << 20)

/* ---- policy ------------------------------------------------------------- */

START_TEST(test_tax_k)
{
	ck_assert_double_eq_tol(dd_rc_tax_k(0), 1, 1e-12);
	ck_assert_double_eq_tol(dd_rc_tax_k(0.5), 2, 1e-12);
	/* ESX's default: an idle page costs four active ones. */
	ck_assert_double_eq_tol(dd_rc_tax_k(0.75), 4, 1e-12);
	ck_assert_double_eq_tol(dd_rc_tax_k(0.99), 100, 1e-9);
	ck_assert_double_eq_tol(dd_rc_tax_k(5), 100, 1e-9); /* clamped */
	ck_assert_double_eq_tol(dd_rc_tax_k(-1), 1, 1e-12);
	ck_assert_double_eq_tol(dd_rc_tax_k(NAN), 1, 1e-12);
}
END_TEST

START_TEST(test_rho)
{
	double active = dd_rc_rho(1000, 100 * MIB, 1.0, 0.75);
	double idle = dd_rc_rho(1000, 100 * MIB, 0.0, 0.75);
	double half = dd_rc_rho(1000, 100 * MIB, 0.5, 0.75);

	ck_assert_double_eq_tol(active, 1000.0 / (100.0 * MIB), 1e-18);
	ck_assert_double_eq_tol(idle, active / 4, 1e-18);
	/* f = 0.5: 0.5 + 4 * 0.5 = 2.5 */
	ck_assert_double_eq_tol(half, active / 2.5, 1e-18);
	/* tau = 0: pure shares per byte, whatever f */
	ck_assert_double_eq_tol(dd_rc_rho(1000, 100 * MIB, 0.0, 0), active, 1e-18);
	ck_assert(isinf(dd_rc_rho(1000, 0, 0.5, 0.75)));
	/* twice the shares, twice the rho */
	ck_assert_double_eq_tol(dd_rc_rho(2000, 100 * MIB, 1, 0.75), 2 * active, 1e-18);
}
END_TEST

/* The paper's experiment (§5.4): two VMs configured with 256 MB and equal
 * shares, 358 MB for both. With tax rate 0 each converges to 179 MB. */
START_TEST(test_esx_equal_shares_no_tax)
{
	struct dd_rc_client c[2] = {
		{ .shares = 1000, .bytes = 256 * MIB, .active = 0.05, .eligible = true },
		{ .shares = 1000, .bytes = 256 * MIB, .active = 1.0, .eligible = true },
	};
	uint64_t take[2];

	ck_assert_uint_eq(dd_rc_plan(c, 2, 0, 154 * MIB, MIB, take), 154 * MIB);
	ck_assert_uint_eq(256 * MIB - take[0], 179 * MIB);
	ck_assert_uint_eq(256 * MIB - take[1], 179 * MIB);
}
END_TEST

/* With tau = 0.75 memory comes from the idle VM until its taxed rho meets the
 * active one's: S / (4 * P_idle) = S / P_active. Here the need (154 MB) is
 * smaller than what that allows (256 - 64 = 192 MB): all of it is idle. */
START_TEST(test_esx_idle_tax)
{
	struct dd_rc_client c[2] = {
		{ .shares = 1000, .bytes = 256 * MIB, .active = 0.0, .eligible = true },
		{ .shares = 1000, .bytes = 256 * MIB, .active = 1.0, .eligible = true },
	};
	uint64_t take[2];

	ck_assert_int_eq(dd_rc_victim(c, 2, 0.75), 0);
	ck_assert_uint_eq(dd_rc_plan(c, 2, 0.75, 154 * MIB, MIB, take), 154 * MIB);
	ck_assert_uint_eq(take[0], 154 * MIB);
	ck_assert_uint_eq(take[1], 0);
	/* A larger need: the idle VM goes down to the balance point (64 MB, where
	 * 4 * 64 = 256), then both give in turn, keeping rho equal: the active
	 * one holds about four times the idle one. */
	ck_assert_uint_eq(dd_rc_plan(c, 2, 0.75, 252 * MIB, MIB, take), 252 * MIB);
	ck_assert_uint_eq(256 * MIB - take[0], 52 * MIB);
	ck_assert_uint_eq(256 * MIB - take[1], 208 * MIB);
}
END_TEST

/* An idle VM that is partly active keeps its active pages: once its idle
 * pages are gone its rho is S / A, and it only gives in turn. */
START_TEST(test_idle_first_keeps_active_pages)
{
	struct dd_rc_client c[2] = {
		{ .shares = 1000, .bytes = 200 * MIB, .active = 0.25, .eligible = true },
		{ .shares = 1000, .bytes = 200 * MIB, .active = 1.0, .eligible = true },
	};
	uint64_t take[2];

	/* Client 0: A = 50 MiB. Its rho after t: S / (50 + 4 (150 - t)); equal
	 * to client 1's S / 200 when 50 + 600 - 4t = 200, t = 112.5. */
	dd_rc_plan(c, 2, 0.75, 100 * MIB, MIB, take);
	ck_assert_uint_eq(take[0], 100 * MIB);
	/* Past t = 113 they give in turn, four of client 1's MiB (rho S / P)
	 * for each of client 0's (4 S / ...): about 130 and 70. */
	ck_assert_uint_eq(dd_rc_plan(c, 2, 0.75, 200 * MIB, MIB, take), 200 * MIB);
	ck_assert_uint_ge(take[0], 127 * MIB);
	ck_assert_uint_le(take[0], 133 * MIB);
}
END_TEST

/* Min-funding revocation divides memory in proportion to shares. */
START_TEST(test_shares_proportional)
{
	struct dd_rc_client c[2] = {
		{ .shares = 2000, .bytes = 200 * MIB, .active = 1, .eligible = true },
		{ .shares = 1000, .bytes = 200 * MIB, .active = 1, .eligible = true },
	};
	uint64_t take[2];

	ck_assert_uint_eq(dd_rc_plan(c, 2, 0.75, 100 * MIB, MIB, take), 100 * MIB);
	ck_assert_uint_eq(200 * MIB - take[0], 200 * MIB);
	ck_assert_uint_eq(200 * MIB - take[1], 100 * MIB);
}
END_TEST

START_TEST(test_min_max_eligible)
{
	struct dd_rc_client c[3] = {
		{ .shares = 1000, .bytes = 100 * MIB, .min_bytes = 90 * MIB, .active = 0, .eligible = true },
		{ .shares = 1000, .bytes = 100 * MIB, .active = 0, .eligible = false },
		{ .shares = 1000, .bytes = 100 * MIB, .min_bytes = 80 * MIB, .max_bytes = 80 * MIB,
		  .active = 1, .eligible = true },
	};
	uint64_t take[3];

	/* Over its maximum first, although its rho is the highest. */
	ck_assert_int_eq(dd_rc_victim(c, 3, 0.75), 2);
	/* 20 MiB to bring client 2 to its max, then client 0 down to its min
	 * (10 MiB), then nobody: 30 of 50 planned. */
	ck_assert_uint_eq(dd_rc_plan(c, 3, 0.75, 50 * MIB, MIB, take), 30 * MIB);
	ck_assert_uint_eq(take[0], 10 * MIB);
	ck_assert_uint_eq(take[1], 0);
	ck_assert_uint_eq(take[2], 20 * MIB);
	c[0].eligible = c[2].eligible = false;
	ck_assert_int_eq(dd_rc_victim(c, 3, 0.75), -1);
	ck_assert_uint_eq(dd_rc_plan(c, 3, 0.75, 50 * MIB, MIB, take), 0);
	ck_assert_uint_eq(dd_rc_plan(c, 0, 0.75, 50 * MIB, MIB, take), 0);
}
END_TEST

START_TEST(test_need_and_admit)
{
	ck_assert_uint_eq(dd_rc_need(1000 * MIB, 60 * MIB, 6), 0);
	ck_assert_uint_eq(dd_rc_need(1000 * MIB, 100 * MIB, 6), 0);
	ck_assert_uint_eq(dd_rc_need(1000 * MIB, 20 * MIB, 6), 40 * MIB);
	ck_assert_uint_eq(dd_rc_need(0, 0, 6), 0);
	ck_assert(dd_rc_admit(1000, 500, 2, 350, 50)); /* 500 + 2 * 50 + 350 + 50 = 1000 */
	ck_assert(!dd_rc_admit(1000, 500, 2, 351, 50));
	ck_assert(dd_rc_admit(1000, 0, 0, 1000, 0));
	ck_assert(!dd_rc_admit(1000, 0, 0, 1001, 0));
	ck_assert(!dd_rc_admit(UINT64_MAX, UINT64_MAX, 1, UINT64_MAX, UINT64_MAX)); /* no wrap */
}
END_TEST

START_TEST(test_active_averages)
{
	struct dd_active a;

	dd_active_init(&a);
	ck_assert_double_eq_tol(a.estimate, 1, 1e-12); /* unknown: not taxed */
	ck_assert_double_eq_tol(dd_active_update(&a, 5, 0), 1, 1e-12); /* no valid page */
	ck_assert_double_eq_tol(dd_active_update(&a, 20, 100), 0.2, 1e-12); /* seeds */
	ck_assert_double_eq_tol(a.slow, 0.2, 1e-12);
	/* A jump up shows at once (the current sample). */
	ck_assert_double_eq_tol(dd_active_update(&a, 80, 100), 0.8, 1e-12);
	ck_assert_double_eq_tol(a.fast, 0.5, 1e-12);
	ck_assert_double_eq_tol(a.slow, 0.2 + 0.125 * 0.6, 1e-12);
	/* A drop shows slowly: the fast average holds it up. */
	ck_assert_double_eq_tol(dd_active_update(&a, 0, 100), 0.25, 1e-12);
	for (int i = 0; i < 60; i++)
		dd_active_update(&a, 0, 100);
	ck_assert_double_lt(a.estimate, 0.01);
	ck_assert_double_eq_tol(dd_active_update(&a, 150, 100), 1, 1e-12); /* clamped */
	ck_assert_uint_eq(a.periods, 64);
}
END_TEST

/* ---- daemon fixtures ------------------------------------------------------- */

static pid_t runner;

static bool can_run(const char *test)
{
	if (!h_is_root()) {
		printf("SKIP %s: needs root (userfaultfd of other processes, cgroups)\n", test);
		return false;
	}
	if (!memcg_available()) {
		printf("SKIP %s: no cgroup v1 memory controller at " MEMCG_ROOT "\n", test);
		return false;
	}
	return true;
}

/* What a client child tells the test; in MAP_SHARED memory (never merged). */
struct child_box {
	atomic_uint_fast64_t calls;	  /* balloon handler calls */
	atomic_uint_fast64_t balloon;	  /* balloon size it holds, bytes */
	atomic_uint_fast64_t max_balloon; /* largest balloon held */
	atomic_uint_fast64_t sweeps;	  /* the writer's passes over its memory */
	atomic_int registered;		  /* 1 ok, < 0: -errno of dedup_register */
	atomic_int verify;		  /* test: 1 asks the child to check its bytes */
	atomic_int verified;		  /* child: 1 every byte as written, -1 not */
	char err[256];
};

struct child_spec {
	uint64_t bytes;
	double write_fraction; /* of its pages, written over and over */
	uint64_t seed;
	uint64_t min_bytes;
	bool handler;
	int backend; /* DEDUP_BALLOON_* with path */
	const char *backend_path;
	const char *cgroup; /* NULL: stay */
};

static struct child_box *box_new(void)
{
	void *p = mmap(NULL, sizeof(struct child_box), PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	ck_assert_ptr_ne(p, MAP_FAILED);
	memset(p, 0, sizeof(struct child_box));
	return p;
}

static struct child_box *cbox;
static uint8_t *cmem;
static uint64_t clen;

/* The application's side of ballooning: give back the end of the buffer. */
static int64_t on_balloon(uint64_t bytes, void *arg)
{
	uint64_t cur = atomic_load(&cbox->balloon);

	(void)arg;
	bytes &= ~(uint64_t)4095;
	if (bytes > clen / 2)
		bytes = clen / 2; /* it keeps half, whatever it is asked */
	atomic_store(&cbox->balloon, bytes);
	if (bytes > cur) {
		/* Stop using the memory before giving it back: let the writer
		 * finish the sweep it is in (it reads the balloon size before
		 * each sweep), or it would fault the pages straight back in. */
		uint64_t gen = atomic_load(&cbox->sweeps);

		for (int i = 0; i < 100 && atomic_load(&cbox->sweeps) < gen + 2; i++)
			h_sleep_ms(5);
		madvise(cmem + clen - bytes, bytes - cur, MADV_DONTNEED);
	}
	if (bytes > atomic_load(&cbox->max_balloon))
		atomic_store(&cbox->max_balloon, bytes);
	atomic_fetch_add(&cbox->calls, 1);
	return (int64_t)bytes;
}

static void child_main(const struct child_spec *s, struct child_box *box)
{
	struct dedup_opts o = { .min_bytes = s->min_bytes };
	uint64_t npages, sweep = 0;
	int r;

	cbox = box;
	if (s->cgroup && memcg_join(s->cgroup, 0) < 0)
		_exit(3);
	clen = s->bytes;
	npages = clen / 4096;
	cmem = mmap(NULL, clen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (cmem == MAP_FAILED)
		_exit(4);
	for (uint64_t i = 0; i < npages; i++)
		h_fill(cmem + i * 4096, s->seed, i);
	if (s->backend)
		dedup_set_balloon_backend(s->backend, s->backend_path);
	if (s->handler)
		dedup_set_balloon_handler(on_balloon, NULL);
	r = dedup_register(cmem, clen, &o);
	snprintf(box->err, sizeof(box->err), "%s", dedup_strerror());
	atomic_store(&box->registered, r == 0 ? 1 : r);
	for (;;) {
		uint64_t keep = npages - atomic_load(&box->balloon) / 4096;

		if (atomic_exchange(&box->verify, 0)) {
			static uint8_t want[4096];
			int ok = 1;

			/* Only what it never wrote itself: pages 0..n get a counter. */
			for (uint64_t i = (uint64_t)(s->write_fraction * (double)npages); i < keep;
			     i++) {
				h_fill(want, s->seed, i);
				if (memcmp(want, cmem + i * 4096, 4096))
					ok = -1;
			}
			atomic_store(&box->verified, ok);
		}
		uint64_t n = (uint64_t)(s->write_fraction * (double)npages);

		if (n > keep)
			n = keep;
		for (uint64_t i = 0; i < n; i++)
			((volatile uint64_t *)(cmem + i * 4096))[1] = ++sweep;
		atomic_fetch_add(&box->sweeps, 1);
		h_sleep_ms(20);
	}
}

static pid_t child_start(const struct child_spec *s, struct child_box *box)
{
	pid_t pid = fork();

	ck_assert_int_ge(pid, 0);
	if (pid == 0)
		child_main(s, box);
	for (int i = 0; i < 1000 && !atomic_load(&box->registered); i++)
		h_sleep_ms(10);
	return pid;
}

static void child_stop(pid_t pid)
{
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
}

/* `clients` as JSON (owned by the caller), or NULL. */
static struct json_object *clients_json(const char *sock)
{
	char *t = NULL;
	struct json_object *o = NULL;

	if (h_admin(sock, "clients", &t) == 0 && t)
		o = json_tokener_parse(t);
	free(t);
	return o;
}

/* The entry of pid in a clients document (borrowed), or NULL. */
static struct json_object *client_of(struct json_object *doc, pid_t pid)
{
	struct json_object *a, *c, *v;

	if (!doc || !json_object_object_get_ex(doc, "clients", &a))
		return NULL;
	for (size_t i = 0; i < json_object_array_length(a); i++) {
		c = json_object_array_get_idx(a, i);
		if (json_object_object_get_ex(c, "pid", &v) && json_object_get_int(v) == pid)
			return c;
	}
	return NULL;
}

static double field_d(struct json_object *c, const char *k)
{
	struct json_object *v;

	return c && json_object_object_get_ex(c, k, &v) ? json_object_get_double(v) : NAN;
}

static const char *doc_state(struct json_object *doc)
{
	struct json_object *v;

	return doc && json_object_object_get_ex(doc, "state", &v) ? json_object_get_string(v) : "";
}

/* ---- active-memory accuracy ------------------------------------------------ */

START_TEST(test_active_accuracy)
{
	static const double want[3] = { 0.0, 0.25, 0.75 };
	const char *args[] = { "--no-bpf", "--set", "pressure.psi_trigger=",
			       "--set", "reclaim.sample_period_sec=1",
			       "--set", "reclaim.sample_pages=400", NULL };
	struct child_box *box[3];
	char sock[256];
	pid_t d, kid[3];
	double got[3] = { 0 };

	if (!can_run(__func__))
		return;
	h_sock_path(sock, sizeof(sock), "reclaim-active");
	setenv("DEDUPD_SOCKET", sock, 1);
	d = h_daemon_start(sock, args);
	for (int i = 0; i < 3; i++) {
		struct child_spec s = { .bytes = 32 * MIB, .write_fraction = want[i],
					.seed = 100 + (uint64_t)i };

		box[i] = box_new();
		kid[i] = child_start(&s, box[i]);
		ck_assert_msg(atomic_load(&box[i]->registered) == 1, "register: %s", box[i]->err);
	}
	/* Seven periods: the first sample seeds the averages, the later ones
	 * settle them (the fast one forgets half a period's change each time). */
	for (int t = 0; t < 200; t++) {
		struct json_object *doc = clients_json(sock);
		bool done = true;

		for (int i = 0; i < 3; i++) {
			struct json_object *c = client_of(doc, kid[i]);

			got[i] = field_d(c, "active_fraction");
			done &= field_d(c, "active_samples") >= 7;
		}
		json_object_put(doc);
		if (done)
			break;
		h_sleep_ms(100);
	}
	for (int i = 0; i < 3; i++) {
		printf("active fraction: wrote %.2f of its pages, estimated %.3f\n", want[i], got[i]);
		child_stop(kid[i]);
	}
	h_daemon_stop(d, SIGTERM);
	for (int i = 0; i < 3; i++)
		ck_assert_msg(fabs(got[i] - want[i]) <= 0.1, "client writing %.2f: estimate %.3f",
			      want[i], got[i]);
}
END_TEST

/* ---- the ESX idle-tax experiment -------------------------------------------- */

/*
 * dedupd watching memory cgroup cg, with free-memory thresholds th (high,
 * soft, hard, low in %), PSI off (the cgroup's own stalls would fire the
 * host trigger), a 100 ms tick, and the extra arguments.
 */
static pid_t pressure_daemon(const char *sock, const char *cg, const int th[4],
			     const char *const *extra)
{
	static char sets[4][64];
	static const char *const names[4] = { "high", "soft", "hard", "low" };
	const char *args[48] = { "--no-bpf", "--cgroup", cg, "--set", "pressure.psi_trigger=",
				 "--set", "pressure.tick_millisecs=100" };
	int n = 7;

	for (int i = 0; i < 4; i++) {
		snprintf(sets[i], sizeof(sets[i]), "pressure.%s_free_percent=%d", names[i], th[i]);
		args[n++] = "--set";
		args[n++] = sets[i];
	}
	for (; extra && *extra && n < 46; extra++)
		args[n++] = *extra;
	args[n] = NULL;
	setenv("DEDUPD_SOCKET", sock, 1);
	return h_daemon_start(sock, args);
}


/*
 * A 256 MiB cgroup, thresholds high 40 % / soft 20 % / hard 10 % / low 5 %
 * of it. Two clients with equal shares hold 96 MiB each: free is ~23 %, the
 * soft state, and dedupd must free ~40 MiB to get back to high. One client
 * is idle, the other writes all its memory. Balloons are enabled only once
 * both active fractions are measured. Returns the two Pss figures (KiB).
 */
static void idle_tax_run(const char *tax, long *idle_kib, long *active_kib, bool deflate)
{
	static const int th[4] = { 40, 20, 10, 5 };
	char sock[256], cg[256], taxarg[64];
	const char *args[] = { "--set", "reclaim.sample_period_sec=1",
			       "--set", "reclaim.sample_pages=200",
			       "--set", "reclaim.balloon=no",
			       "--set", "reclaim.pageout=no",
			       "--set", "reclaim.throttle=no",
			       "--set", taxarg, NULL };
	struct child_box *box[2] = { box_new(), box_new() };
	struct child_spec spec[2] = {
		{ .bytes = 96 * MIB, .write_fraction = 0, .seed = 7, .handler = true, .cgroup = cg },
		{ .bytes = 96 * MIB, .write_fraction = 1, .seed = 8, .handler = true, .cgroup = cg },
	};
	pid_t d, kid[2];
	char *t = NULL;
	bool settled = false;
	uint64_t last_change = 0, calls = 0;
	char last_state[32] = "";

	memcg_dir(cg, sizeof(cg), "dd-check-reclaim", runner, tax);
	ck_assert_int_eq(memcg_make(cg, 256 * MIB), 0);
	snprintf(taxarg, sizeof(taxarg), "reclaim.tax_rate=%s", tax);
	h_sock_path(sock, sizeof(sock), "reclaim-tax");
	d = pressure_daemon(sock, cg, th, args);
	for (int i = 0; i < 2; i++) {
		kid[i] = child_start(&spec[i], box[i]);
		ck_assert_msg(atomic_load(&box[i]->registered) == 1, "register: %s", box[i]->err);
	}
	for (int i = 0; i < 100; i++) { /* three samples each, and the soft state */
		struct json_object *doc = clients_json(sock);
		bool ok = !strcmp(doc_state(doc), "soft") &&
			  field_d(client_of(doc, kid[0]), "active_samples") >= 3 &&
			  field_d(client_of(doc, kid[1]), "active_samples") >= 3;

		json_object_put(doc);
		if (ok)
			break;
		h_sleep_ms(100);
	}
	ck_assert_int_eq(h_admin(sock, "set reclaim.balloon=yes", &t), 0);
	free(t);
	/* Settled: back in high, and no balloon change for 2 s. */
	for (uint64_t end = h_now_ms() + 20000; h_now_ms() < end && !settled; h_sleep_ms(100)) {
		struct json_object *doc = clients_json(sock);
		uint64_t c = atomic_load(&box[0]->calls) + atomic_load(&box[1]->calls);

		if (c != calls) {
			calls = c;
			last_change = h_now_ms();
		}
		settled = calls && !strcmp(doc_state(doc), "high") && h_now_ms() - last_change > 2000;
		snprintf(last_state, sizeof(last_state), "%s", doc ? doc_state(doc) : "(no answer)");
		json_object_put(doc);
	}
	*idle_kib = h_smaps_kib(kid[0], "Pss");
	*active_kib = h_smaps_kib(kid[1], "Pss");
	printf("idle tax %s: idle client %ld MiB (balloon %llu MiB), active client %ld MiB "
	       "(balloon %llu MiB)\n", tax, *idle_kib / 1024,
	       (unsigned long long)(atomic_load(&box[0]->balloon) / MIB), *active_kib / 1024,
	       (unsigned long long)(atomic_load(&box[1]->balloon) / MIB));
	if (settled && deflate) {
		/* The pressure ends: the balloons go back. */
		memcg_write(cg, "memory.limit_in_bytes", "1073741824\n");
		for (int i = 0; i < 100 && (atomic_load(&box[0]->balloon) ||
					    atomic_load(&box[1]->balloon)); i++)
			h_sleep_ms(100);
		printf("idle tax %s: after the limit was raised, balloons %llu and %llu MiB\n", tax,
		       (unsigned long long)(atomic_load(&box[0]->balloon) / MIB),
		       (unsigned long long)(atomic_load(&box[1]->balloon) / MIB));
	}
	for (int i = 0; i < 2; i++)
		child_stop(kid[i]);
	h_daemon_stop(d, SIGTERM);
	memcg_remove(cg);
	ck_assert_msg(settled, "tax %s: reclaim did not settle: state %s, %llu balloon calls, "
		      "the last %llu ms ago (see %s.log)", tax, last_state,
		      (unsigned long long)calls, (unsigned long long)(h_now_ms() - last_change),
		      sock);
	if (deflate)
		ck_assert_msg(!atomic_load(&box[0]->balloon) && !atomic_load(&box[1]->balloon),
			      "balloons not deflated after the pressure ended");
}

START_TEST(test_idle_tax_zero)
{
	long idle, active;

	if (!can_run(__func__))
		return;
	idle_tax_run("0", &idle, &active, false);
	/* Equal shares, no tax: about equal memory (a few MiB of chunking). */
	ck_assert_msg(labs(idle - active) <= 12 * 1024, "tax 0: idle %ld KiB, active %ld KiB",
		      idle, active);
	ck_assert_msg(idle < 90 * 1024 && active < 90 * 1024,
		      "tax 0: both should have given memory (idle %ld, active %ld KiB)", idle,
		      active);
}
END_TEST

START_TEST(test_idle_tax_default)
{
	long idle, active;

	if (!can_run(__func__))
		return;
	idle_tax_run("0.75", &idle, &active, true);
	/* The idle one pays: the active one keeps clearly more. */
	ck_assert_msg(active - idle >= 24 * 1024, "tax 0.75: idle %ld KiB, active %ld KiB", idle,
		      active);
	ck_assert_msg(active >= 90 * 1024, "tax 0.75: the active client lost memory (%ld KiB)",
		      active);
}
END_TEST

/* ---- admission control ------------------------------------------------------ */

static uint64_t mem_total(void)
{
	FILE *f = fopen("/proc/meminfo", "re");
	unsigned long long kib = 0;
	char line[256];

	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "MemTotal: %llu kB", &kib) == 1)
			break;
	if (f)
		fclose(f);
	return (uint64_t)kib * 1024;
}

START_TEST(test_admission)
{
	const char *args[] = { "--no-bpf", "--set", "pressure.psi_trigger=",
			       "--set", "reclaim.client_overhead_bytes=64M", NULL };
	uint64_t total = mem_total();
	struct child_box *b1 = box_new(), *b2 = box_new(), *b3 = box_new();
	struct child_spec s = { .bytes = 4 * MIB, .seed = 1 };
	char sock[256];
	pid_t d, k1, k2, k3;

	if (!can_run(__func__))
		return;
	h_sock_path(sock, sizeof(sock), "reclaim-admit");
	setenv("DEDUPD_SOCKET", sock, 1);
	d = h_daemon_start(sock, args);
	/* 60 % of the host fits. */
	s.min_bytes = total / 10 * 6;
	k1 = child_start(&s, b1);
	ck_assert_msg(atomic_load(&b1->registered) == 1, "60%% refused: %s", b1->err);
	/* Another 60 % does not, and the message gives the figures. */
	k2 = child_start(&s, b2);
	ck_assert_int_eq(atomic_load(&b2->registered), -ENOSPC);
	printf("admission refused: %s\n", b2->err);
	ck_assert_ptr_nonnull(strstr(b2->err, "admission refused"));
	ck_assert_ptr_nonnull(strstr(b2->err, "MiB"));
	ck_assert_ptr_nonnull(strstr(b2->err, "1 admitted"));
	/* Without a minimum a client is always admitted. */
	s.min_bytes = 0;
	k3 = child_start(&s, b3);
	ck_assert_int_eq(atomic_load(&b3->registered), 1);
	child_stop(k3);
	child_stop(k2);
	/* The first client's exit frees its reservation. */
	child_stop(k1);
	h_sleep_ms(200);
	memset(b2, 0, sizeof(*b2));
	s.min_bytes = total / 10 * 6;
	k2 = child_start(&s, b2);
	ck_assert_msg(atomic_load(&b2->registered) == 1, "after the exit: %s", b2->err);
	child_stop(k2);
	h_daemon_stop(d, SIGTERM);
}
END_TEST

/* ---- a VMM backend that misbehaves -------------------------------------- */

struct fake_vmm {
	int lfd;
	int mode; /* 0: accept and never answer; 1: answer garbage */
	char path[108];
	pthread_t t;
	atomic_int accepted;
};

static void *fake_vmm_main(void *arg)
{
	struct fake_vmm *f = arg;

	for (;;) {
		int fd = accept4(f->lfd, NULL, NULL, SOCK_CLOEXEC);

		if (fd < 0)
			return NULL;
		atomic_fetch_add(&f->accepted, 1);
		if (f->mode == 1 && write(fd, "}{ not QMP \n", 12) < 0)
			break;
		/* Keep it open (stall) until the peer goes. */
		struct pollfd p = { .fd = fd, .events = POLLIN };
		char buf[256];

		while (poll(&p, 1, 10000) > 0 && read(fd, buf, sizeof(buf)) > 0)
			;
		close(fd);
	}
	return NULL;
}

static void fake_vmm_start(struct fake_vmm *f, int mode)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };

	f->mode = mode;
	char cwd[64];

	snprintf(f->path, sizeof(f->path), "%s/%s/test-sockets/fake-qmp-%d.sock",
		 getcwd(cwd, sizeof(cwd)), h_build(), (int)getpid());
	unlink(f->path);
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", f->path);
	f->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert_int_eq(bind(f->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
	ck_assert_int_eq(listen(f->lfd, 8), 0);
	ck_assert_int_eq(pthread_create(&f->t, NULL, fake_vmm_main, f), 0);
}

static void bad_vmm_run(int mode)
{
	static const int th[4] = { 40, 20, 10, 5 };
	char sock[256], cg[256];
	const char *args[] = { "--set", "reclaim.balloon_timeout_millisecs=300",
			       "--set", "reclaim.pageout=no",
			       "--set", "reclaim.throttle=no", NULL };
	struct fake_vmm f = { 0 };
	struct child_box *bv = box_new(), *bc = box_new();
	struct child_spec vmm = { .bytes = 112 * MIB, .seed = 21, .cgroup = cg,
				  .backend = DEDUP_BALLOON_QMP };
	struct child_spec app = { .bytes = 80 * MIB, .seed = 22, .cgroup = cg, .handler = true };
	struct json_object *doc;
	struct json_object *c, *v;
	pid_t d, kv, kc;
	bool available = true;
	char error[256] = "";

	fake_vmm_start(&f, mode);
	vmm.backend_path = f.path;
	memcg_dir(cg, sizeof(cg), "dd-check-reclaim", runner, mode ? "garbage" : "stall");
	ck_assert_int_eq(memcg_make(cg, 256 * MIB), 0);
	h_sock_path(sock, sizeof(sock), "reclaim-vmm");
	d = pressure_daemon(sock, cg, th, args);
	/* Both idle and new (f = 1 until measured): the larger one, the "VMM",
	 * has the lowest rho and is asked first. */
	kv = child_start(&vmm, bv);
	kc = child_start(&app, bc);
	ck_assert_int_eq(atomic_load(&bv->registered), 1);
	ck_assert_int_eq(atomic_load(&bc->registered), 1);
	for (int i = 0; i < 150 && !atomic_load(&bc->calls); i++)
		h_sleep_ms(100);
	doc = clients_json(sock);
	c = client_of(doc, kv);
	if (c && json_object_object_get_ex(c, "balloon_available", &v))
		available = json_object_get_boolean(v);
	if (c && json_object_object_get_ex(c, "balloon_error", &v))
		snprintf(error, sizeof(error), "%s", json_object_get_string(v));
	json_object_put(doc);
	printf("bad VMM (%s): the daemon connected %d time(s); backend error: %s; the other "
	       "client's handler was called %llu time(s)\n", mode ? "garbage" : "stall",
	       atomic_load(&f.accepted), error, (unsigned long long)atomic_load(&bc->calls));
	child_stop(kv);
	child_stop(kc);
	h_daemon_stop(d, SIGTERM);
	memcg_remove(cg);
	shutdown(f.lfd, SHUT_RDWR);
	close(f.lfd);
	unlink(f.path);
	ck_assert_int_ge(atomic_load(&f.accepted), 1);
	ck_assert_msg(!available && error[0], "the bad backend is not marked unavailable");
	ck_assert_msg(atomic_load(&bc->calls) >= 1, "no other victim was ballooned");
	ck_assert_uint_gt(atomic_load(&bc->max_balloon), 0);
}

START_TEST(test_vmm_stalls)
{
	if (!can_run(__func__))
		return;
	bad_vmm_run(0);
}
END_TEST

START_TEST(test_vmm_garbage)
{
	if (!can_run(__func__))
		return;
	bad_vmm_run(1);
}
END_TEST

/* A VMM socket that is not a socket is refused with a reason. */
START_TEST(test_backend_not_a_socket)
{
	const char *args[] = { "--no-bpf", "--set", "pressure.psi_trigger=", NULL };
	char sock[256], file[600], cwd[256];
	pid_t d, k;
	int st;

	if (!can_run(__func__))
		return;
	h_sock_path(sock, sizeof(sock), "reclaim-notsock");
	setenv("DEDUPD_SOCKET", sock, 1);
	snprintf(file, sizeof(file), "%s/%s.file", getcwd(cwd, sizeof(cwd)), sock);
	close(open(file, O_CREAT | O_WRONLY | O_CLOEXEC, 0600));
	d = h_daemon_start(sock, args);
	k = fork();
	if (k == 0) {
		static uint8_t page[4096] __attribute__((aligned(4096)));
		int r;

		page[0] = 1;
		if (dedup_register(page, sizeof(page), NULL) < 0)
			_exit(10);
		r = dedup_set_balloon_backend(DEDUP_BALLOON_QMP, file);
		if (r != -EINVAL || !strstr(dedup_strerror(), "not a socket")) {
			fprintf(stderr, "set_balloon_backend: %d %s\n", r, dedup_strerror());
			_exit(11);
		}
		r = dedup_set_balloon_backend(DEDUP_BALLOON_QMP, "relative.sock");
		_exit(r == -EINVAL ? 0 : 12);
	}
	waitpid(k, &st, 0);
	h_daemon_stop(d, SIGTERM);
	unlink(file);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %d", st);
}
END_TEST

/* ---- hard: page out; low: throttle ------------------------------------------ */

static bool zram(const char *how)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "sh tests/zram-swap.sh %s >/dev/null", how);
	return system(cmd) == 0;
}

static bool in_throttle_group(pid_t pid)
{
	char path[64], buf[4096];

	snprintf(path, sizeof(path), "/proc/%d/cgroup", (int)pid);
	return memcg_read(path, buf, sizeof(buf)) && strstr(buf, "dedupd.throttle/client-");
}

/*
 * One idle client of 112 MiB and one writer of 64 MiB, no balloon handlers,
 * in a 256 MiB cgroup with zram swap. Thresholds high 40 / soft 35 / hard 25
 * / low 20 % put 30 % free in hard (pageout); then the limit is cut to
 * usage + 20 %, ~17 % free: low (pageout and throttle).
 */
START_TEST(test_hard_pageout_low_throttle)
{
	static const int th[4] = { 40, 35, 25, 20 };
	char sock[256], cg[256];
	const char *args[] = { "--set", "reclaim.sample_period_sec=1",
			       "--set", "reclaim.throttle=no", NULL };
	struct child_box *bi = box_new(), *bw = box_new();
	struct child_spec idle = { .bytes = 112 * MIB, .seed = 31, .cgroup = cg };
	struct child_spec writer = { .bytes = 64 * MIB, .seed = 32, .write_fraction = 1,
				     .cgroup = cg };
	long swap_kib = 0;
	bool throttled = false, released = false, low_seen = false;
	double paged = 0;
	char *t = NULL;
	pid_t d, ki, kw;

	if (!can_run(__func__))
		return;
	if (!zram("up 512")) {
		printf("SKIP %s: no zram swap (tests/zram-swap.sh up failed)\n", __func__);
		return;
	}
	memcg_dir(cg, sizeof(cg), "dd-check-reclaim", runner, "hard");
	ck_assert_int_eq(memcg_make(cg, 256 * MIB), 0);
	h_sock_path(sock, sizeof(sock), "reclaim-hard");
	d = pressure_daemon(sock, cg, th, args);
	ki = child_start(&idle, bi);
	kw = child_start(&writer, bw);
	ck_assert_int_eq(atomic_load(&bi->registered), 1);
	ck_assert_int_eq(atomic_load(&bw->registered), 1);
	/* hard: the idle client's cold pages go to swap */
	for (int i = 0; i < 200; i++) {
		struct json_object *doc = clients_json(sock);

		paged = field_d(client_of(doc, ki), "pageout_bytes");
		json_object_put(doc);
		swap_kib = h_proc_kib(ki, "status", "VmSwap");
		if (swap_kib >= 8 * 1024 && paged > 0)
			break;
		h_sleep_ms(100);
	}
	printf("hard: idle client VmSwap %ld KiB, dedupd paged out %.0f KiB, writer VmSwap %ld KiB\n",
	       swap_kib, paged / 1024, h_proc_kib(kw, "status", "VmSwap"));
	/* low: the throttle holds a victim in a cgroup of its own */
	ck_assert_int_eq(h_admin(sock, "set reclaim.throttle=yes", &t), 0);
	free(t);
	{
		/* Tighten the cgroup to ~18 % free: low. */
		char lim[32];
		uint64_t use = memcg_u64(cg, "memory.usage_in_bytes");

		snprintf(lim, sizeof(lim), "%llu\n", (unsigned long long)(use + use / 5));
		ck_assert_int_eq(memcg_write(cg, "memory.limit_in_bytes", lim), 0);
	}
	for (int i = 0; i < 100 && !throttled; i++) {
		struct json_object *doc = clients_json(sock);

		low_seen |= !strcmp(doc_state(doc), "low");
		json_object_put(doc);
		throttled = in_throttle_group(ki) || in_throttle_group(kw);
		h_sleep_ms(100);
	}
	/* recovery: the limit is lifted and the client goes back */
	memcg_write(cg, "memory.limit_in_bytes", "1073741824\n");
	for (int i = 0; i < 100 && !released; i++) {
		released = !in_throttle_group(ki) && !in_throttle_group(kw);
		h_sleep_ms(100);
	}
	atomic_store(&bi->verify, 1);
	for (int i = 0; i < 200 && !atomic_load(&bi->verified); i++)
		h_sleep_ms(50);
	printf("low: state low seen %d, throttled %d, released after recovery %d; idle client "
	       "verified %d\n", low_seen, throttled, released, atomic_load(&bi->verified));
	child_stop(ki);
	child_stop(kw);
	h_daemon_stop(d, SIGTERM);
	memcg_remove(cg);
	zram("down");
	ck_assert_msg(swap_kib >= 8 * 1024, "hard state: nothing paged out (VmSwap %ld KiB)",
		      swap_kib);
	ck_assert_msg(paged >= 8.0 * MIB, "dedupd counts %.0f bytes paged out", paged);
	ck_assert_msg(low_seen && throttled, "low state %d, throttled %d", low_seen, throttled);
	ck_assert_msg(released, "the limit was not lifted after recovery");
	ck_assert_int_eq(atomic_load(&bi->verified), 1);
}
END_TEST

static void teardown(void)
{
	static const char *const tags[] = { "0", "0.75", "stall", "garbage", "hard" };

	for (size_t i = 0; i < sizeof(tags) / sizeof(tags[0]); i++) {
		char cg[256];

		memcg_dir(cg, sizeof(cg), "dd-check-reclaim", runner, tags[i]);
		memcg_remove(cg);
	}
	zram("down");
}

static Suite *reclaim_suite(void)
{
	Suite *s = suite_create("reclaim");
	TCase *pol = tcase_create("policy"), *live = tcase_create("daemon");

	tcase_add_test(pol, test_tax_k);
	tcase_add_test(pol, test_rho);
	tcase_add_test(pol, test_esx_equal_shares_no_tax);
	tcase_add_test(pol, test_esx_idle_tax);
	tcase_add_test(pol, test_idle_first_keeps_active_pages);
	tcase_add_test(pol, test_shares_proportional);
	tcase_add_test(pol, test_min_max_eligible);
	tcase_add_test(pol, test_need_and_admit);
	tcase_add_test(pol, test_active_averages);
	suite_add_tcase(s, pol);
	tcase_add_unchecked_fixture(live, NULL, teardown);
	tcase_set_timeout(live, 120);
	tcase_add_test(live, test_active_accuracy);
	tcase_add_test(live, test_idle_tax_zero);
	tcase_add_test(live, test_idle_tax_default);
	tcase_add_test(live, test_admission);
	tcase_add_test(live, test_vmm_stalls);
	tcase_add_test(live, test_vmm_garbage);
	tcase_add_test(live, test_backend_not_a_socket);
	tcase_add_test(live, test_hard_pageout_low_throttle);
	suite_add_tcase(s, live);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(reclaim_suite());
	int failed;

	runner = getpid();
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
