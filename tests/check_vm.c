// SPDX-License-Identifier: MIT
/*
 * A real QEMU guest under dedupd's reclaim (issue #6): the guest's balloon is
 * inflated over QMP when its memory cgroup comes under pressure, and deflated
 * when the pressure is gone.
 *
 *  - a v1 memory cgroup (768 MiB) that dedupd watches (--cgroup, thresholds
 *    high 40 % / soft 20 % / hard 10 % / low 5 %, PSI trigger off, 100 ms ticks);
 *  - a 256 MiB guest (tests/vm/vm.sh) started inside that cgroup, QEMU under
 *    libdedup-preload.so with DEDUP_QMP naming the QMP socket meant for the code
 *    under test, so dedupd drives its virtio-balloon. The guest first writes
 *    128 MiB of random data and deletes it (ballooning frees host memory only
 *    for guest pages the guest has touched), then `dd-work fill 16 SEED`;
 *  - a memory hog, a forked process in the same cgroup, allocates and touches
 *    memory until the cgroup's free memory is ~30 %: the soft state (20-40 %);
 *  - asserted: query-balloon (the harness's own QMP socket) shows `actual`
 *    below the guest's RAM, and `dedupctl clients` shows the balloon action;
 *    after the hog exits, query-balloon is back at the full RAM and the client
 *    shows the deflation; the guest answers on its serial console throughout
 *    (a thread runs `echo` in it every 0.5 s, every one must answer) and its
 *    dd-work checksum equals the one computed on the host afterwards.
 *
 * The figures (balloon sizes, cgroup usage, QEMU's guest-RAM RSS, timings) are
 * printed. Needs root, the cgroup v1 memory controller and the VM harness
 * (QEMU, a Debian cloud kernel: tests/vm/README.md); it says why when it skips.
 * About 30 s on a quiet 2-core host.
 */
#include "tests/harness.h"
#include "tests/memcg.h"
#include "tests/vm/vmharness.h"

#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/mman.h>

#define MIB ((uint64_t)1 << 20)
#define GUEST_MIB 256u
#define CG_LIMIT (768 * MIB)
/* cgroup usage the hog aims at: free 30 %, the soft state (20-40 %).
 * $DD_CHECK_VM_HOG_PERCENT overrides it (e.g. 85: the hard state). */
#define HOG_TARGET_PERCENT 70
#define FILL_MIB 16u

static pid_t runner;

static void guest_name(char *buf, size_t len)
{
	snprintf(buf, len, "checkvm-%d", (int)runner);
}

static void daemon_pidfile(char *buf, size_t len)
{
	snprintf(buf, len, "%s/test-sockets/vm-%d.dedupd.pid", h_build(), (int)runner);
}

static bool can_run(const char *test)
{
	char why[256], pre[300];

	if (!h_is_root()) {
		printf("SKIP %s: needs root (userfaultfd of other processes, cgroups, QEMU)\n", test);
		return false;
	}
	if (!memcg_available()) {
		printf("SKIP %s: no cgroup v1 memory controller at " MEMCG_ROOT "\n", test);
		return false;
	}
	snprintf(pre, sizeof(pre), "%s/libdedup-preload.so", h_build());
	if (access(pre, R_OK) < 0) {
		printf("SKIP %s: %s: %s (build it first)\n", test, pre, strerror(errno));
		return false;
	}
	if (!vm_available(why, sizeof(why))) {
		printf("SKIP %s: no test VM: %s\n", test, why);
		return false;
	}
	return true;
}

static double secs_since(uint64_t t0)
{
	return (double)(h_now_ms() - t0) / 1000.0;
}

/* ---- dedupctl clients --json ------------------------------------------- */

static struct json_object *clients_json(const char *sock)
{
	char *t = NULL;
	struct json_object *o = NULL;

	if (h_admin(sock, "clients", &t) == 0 && t)
		o = json_tokener_parse(t);
	free(t);
	return o;
}

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

static int64_t field_i(struct json_object *o, const char *k)
{
	struct json_object *v;

	return o && json_object_object_get_ex(o, k, &v) ? json_object_get_int64(v) : -1;
}

static const char *field_s(struct json_object *o, const char *k)
{
	struct json_object *v;

	return o && json_object_object_get_ex(o, k, &v) ? json_object_get_string(v) : "";
}

/* The last action of the client whose text contains what, copied to buf. */
static bool has_action(struct json_object *c, const char *what, char *buf, size_t len)
{
	struct json_object *a, *v;
	bool found = false;

	if (!c || !json_object_object_get_ex(c, "actions", &a))
		return false;
	for (size_t i = 0; i < json_object_array_length(a); i++) {
		const char *t = json_object_object_get_ex(json_object_array_get_idx(a, i), "action", &v)
					? json_object_get_string(v)
					: "";

		if (strstr(t, what)) {
			vm_copy(buf, len, t);
			found = true;
		}
	}
	return found;
}

/* ---- the daemon --------------------------------------------------------- */

/* dedupctl state's recent transitions, with their reasons. */
static void print_transitions(const char *sock)
{
	struct json_object *o = NULL, *tr, *e;
	char *t = NULL;

	if (h_admin(sock, "state", &t) == 0 && t)
		o = json_tokener_parse(t);
	free(t);
	if (o && json_object_object_get_ex(o, "transitions", &tr)) {
		printf("pressure transitions (dedupctl state):\n");
		for (size_t i = 0; i < json_object_array_length(tr); i++) {
			struct json_object *ago = NULL;

			e = json_object_array_get_idx(tr, i);
			json_object_object_get_ex(e, "ago_sec", &ago);
			printf("  %6.1f s ago  %-4s -> %-4s  %s\n", json_object_get_double(ago),
			       field_s(e, "from"), field_s(e, "to"), field_s(e, "reason"));
		}
	}
	json_object_put(o);
}

static pid_t start_daemon(const char *sock, const char *cg)
{
	const char *args[] = { "--no-bpf", "--cgroup", cg, "--metrics-listen", "",
			       "--set", "pressure.psi_trigger=",
			       "--set", "pressure.tick_millisecs=100",
			       "--set", "pressure.high_free_percent=40",
			       "--set", "pressure.soft_free_percent=20",
			       "--set", "pressure.hard_free_percent=10",
			       "--set", "pressure.low_free_percent=5",
			       /* the test is about the balloon: no swap to page out to,
				* and a throttle would move QEMU out of the cgroup */
			       "--set", "reclaim.pageout=no",
			       "--set", "reclaim.throttle=no",
			       NULL };
	char pf[300];
	FILE *f;
	pid_t d;

	setenv("DEDUPD_SOCKET", sock, 1);
	d = h_daemon_start(sock, args);
	daemon_pidfile(pf, sizeof(pf));
	f = fopen(pf, "we");
	if (f) {
		fprintf(f, "%d\n", (int)d);
		fclose(f);
	}
	return d;
}

/* ---- children in the cgroup -------------------------------------------- */

/*
 * Boot the guest from a child that first joins the cgroup, so that QEMU (and
 * its console keeper) are charged there: charges do not move between cgroups.
 */
static int boot_in_cgroup(const char *cg, const char *name, const char *sock, const char *qmp)
{
	char env[1024];
	int st = -1;
	pid_t p;

	snprintf(env, sizeof(env), "DEDUPD_SOCKET=%s DEDUP_QMP=%s", sock, qmp);
	p = fork();
	if (p == 0) {
		char pre[300];

		if (memcg_join(cg, 0) < 0)
			_exit(3);
		snprintf(pre, sizeof(pre), "%s/libdedup-preload.so", h_build());
		setenv("DEDUP_VM_PRELOAD", pre, 1);
		/* On a busy host a TCG guest can fail the kernel's boot-time timer
		 * check and panic ("IO-APIC + timer doesn't work!"). */
		snprintf(pre, sizeof(pre), "%s no_timer_check",
			 getenv("DEDUP_VM_APPEND") ? getenv("DEDUP_VM_APPEND") : "");
		setenv("DEDUP_VM_APPEND", pre, 1);
		_exit(vm_boot(name, GUEST_MIB, env) == 0 ? 0 : 1);
	}
	if (p < 0)
		return -1;
	while (waitpid(p, &st, 0) < 0 && errno == EINTR)
		;
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

struct hog {
	pid_t pid;
	int go;   /* write the MiB count here to start it */
	int done; /* it writes the milliseconds it took here when all of it is touched */
};

/* A forked process in the cgroup that waits for a size, then allocates and
 * touches that much memory and holds it until killed. Forked before any
 * thread is started. */
static struct hog hog_start(const char *cg)
{
	struct hog h = { -1, -1, -1 };
	int a[2], b[2];

	ck_assert_int_eq(pipe2(a, O_CLOEXEC), 0);
	ck_assert_int_eq(pipe2(b, O_CLOEXEC), 0);
	h.pid = fork();
	ck_assert_int_ge(h.pid, 0);
	if (h.pid == 0) {
		uint32_t mib = 0;
		uint64_t t0, ms;
		char *m;

		close(a[1]);
		close(b[0]);
		if (memcg_join(cg, 0) < 0)
			_exit(3);
		if (read(a[0], &mib, sizeof(mib)) != (ssize_t)sizeof(mib) || !mib)
			_exit(0);
		t0 = h_now_ms();
		m = mmap(NULL, (size_t)mib * MIB, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (m == MAP_FAILED)
			_exit(4);
		/* huge pages: few faults, so it fills fast even on a busy host */
		madvise(m, (size_t)mib * MIB, MADV_HUGEPAGE);
		for (size_t off = 0; off < (size_t)mib * MIB; off += 4096) {
			memset(m + off, 0x5a, 64); /* not zero, so no zero-page tricks */
			memcpy(m + off + 64, &off, sizeof(off));
		}
		ms = h_now_ms() - t0;
		ms = ms ? ms : 1;
		if (write(b[1], &ms, sizeof(ms)) < 0)
			_exit(5);
		for (;;)
			pause();
	}
	close(a[0]);
	close(b[1]);
	h.go = a[1];
	h.done = b[0];
	return h;
}

static void hog_stop(struct hog *h)
{
	if (h->pid > 0) {
		kill(h->pid, SIGKILL);
		while (waitpid(h->pid, NULL, 0) < 0 && errno == EINTR)
			;
		h->pid = -1;
	}
	if (h->go >= 0)
		close(h->go);
	if (h->done >= 0)
		close(h->done);
	h->go = h->done = -1;
}

/* ---- the serial console, throughout ------------------------------------- */

struct pinger {
	const char *name;
	atomic_bool stop;
	atomic_uint ok, bad;
	atomic_uint max_ms;
	char last_bad[512];
};

static void *pinger_main(void *arg)
{
	struct pinger *p = arg;

	while (!atomic_load(&p->stop)) {
		char out[256];
		uint64_t t0 = h_now_ms();
		int r = vm_run_timeout(p->name, 30, "echo DD-ALIVE $((6*7))", out, sizeof(out));
		unsigned ms = (unsigned)(h_now_ms() - t0);

		if (r == 0 && strstr(out, "DD-ALIVE 42")) {
			atomic_fetch_add(&p->ok, 1);
		} else {
			atomic_fetch_add(&p->bad, 1);
			snprintf(p->last_bad, sizeof(p->last_bad), "status %d: %.400s", r, out);
		}
		if (ms > atomic_load(&p->max_ms))
			atomic_store(&p->max_ms, ms);
		h_sleep_ms(500);
	}
	return NULL;
}

/* ---- the test ------------------------------------------------------------ */

START_TEST(test_guest_balloon_under_pressure)
{
	const uint64_t ram = (uint64_t)GUEST_MIB * MIB;
	char name[64], sock[PATH_MAX], rel[256], qmp[512], cg[256], out[4096], expect[64],
		got[64], cmd[256], act[256] = "", deflated[256] = "", why[512] = "";
	unsigned seed = (unsigned)runner % 1000 + 1;
	struct pinger png = { 0 };
	struct json_object *doc;
	pthread_t pth;
	struct hog hog;
	uint64_t t_start = h_now_ms(), t_boot, t_hog, hog_ms = 0, t_first = 0, t_min = 0,
		 t_kill, t_deflated = 0, usage_before, usage_hog_peak = 0, usage_min = UINT64_MAX,
		 usage_after;
	int64_t a, min_actual = INT64_MAX, max_target = 0, guest_free_at_max = -1;
	long rss_before, rss_ballooned = -1, rss_after;
	uint64_t hog_pct = HOG_TARGET_PERCENT;
	uint32_t hog_mib;
	bool early_deflate = false, saw_soft = false;
	pid_t d, q;
	int r;

	if (!can_run(__func__))
		return;
	guest_name(name, sizeof(name));
	memcg_dir(cg, sizeof(cg), "dd-check-vm", runner, "balloon");
	ck_assert_int_eq(memcg_make(cg, CG_LIMIT), 0);
	h_sock_path(rel, sizeof(rel), "vm");
	/* QEMU's libdedup finds the daemon by this path: make it absolute. */
	ck_assert_ptr_nonnull(getcwd(sock, sizeof(sock) - sizeof(rel) - 2));
	strcat(sock, "/");
	strcat(sock, rel);
	ck_assert_int_eq(vm_qmp_path(name, qmp, sizeof(qmp)), 0);
	ck_assert_int_eq(vm_expect(FILL_MIB, seed, NULL, expect, sizeof(expect)), 0);
	d = start_daemon(sock, cg);
	hog = hog_start(cg); /* waits in the cgroup until told how much */

	ck_assert_msg(boot_in_cgroup(cg, name, sock, qmp) == 0, "guest %s did not boot", name);
	t_boot = h_now_ms();
	q = vm_pid(name);
	ck_assert_int_gt(q, 0);
	/* QEMU is a client, bound to its QMP balloon. */
	for (int i = 0; i < 50; i++) {
		doc = clients_json(sock);
		r = !strcmp(field_s(client_of(doc, q), "balloon_backend"), "qmp");
		json_object_put(doc);
		if (r)
			break;
		h_sleep_ms(100);
	}
	ck_assert_msg(r, "QEMU (pid %d) is not a dedupd client with a qmp balloon (see %s.log)",
		      (int)q, sock);

	/* Touch most of the guest's RAM, free it again, then the workload. */
	snprintf(cmd, sizeof(cmd),
		 "dd if=/dev/urandom of=/work/r bs=1M count=128 2>/dev/null; rm -f /work/r; "
		 "dd-work fill %u %u",
		 FILL_MIB, seed);
	r = vm_run_timeout(name, 180, cmd, out, sizeof(out));
	ck_assert_msg(r == 0, "workload fill: status %d: %s", r, out);
	ck_assert(vm_field(out, "DD-EXPECT ", got, sizeof(got)));
	ck_assert_str_eq(got, expect);
	a = vm_balloon_actual(name);
	ck_assert_int_eq(a, (int64_t)ram);
	rss_before = vm_mem_kib(name, "rss_kib");
	usage_before = memcg_u64(cg, "memory.usage_in_bytes");
	doc = clients_json(sock);
	ck_assert_str_eq(field_s(doc, "state"), "high");
	json_object_put(doc);
	printf("guest %s: booted in %.1f s, prepared (128 MiB touched and freed, %u MiB of "
	       "dd-work) at %.1f s; QEMU guest-RAM RSS %ld MiB, cgroup usage %" PRIu64
	       " of %" PRIu64 " MiB\n",
	       name, (double)(t_boot - t_start) / 1000.0, FILL_MIB, secs_since(t_start),
	       rss_before / 1024, usage_before / MIB, CG_LIMIT / MIB);

	png.name = name;
	ck_assert_int_eq(pthread_create(&pth, NULL, pinger_main, &png), 0);

	/* The hog: the cgroup to HOG_TARGET_PERCENT % of its limit. */
	if (getenv("DD_CHECK_VM_HOG_PERCENT"))
		hog_pct = (uint64_t)strtoul(getenv("DD_CHECK_VM_HOG_PERCENT"), NULL, 10);
	ck_assert_uint_lt(usage_before, CG_LIMIT * hog_pct / 100 - 64 * MIB);
	hog_mib = (uint32_t)((CG_LIMIT * hog_pct / 100 - usage_before) / MIB);
	t_hog = h_now_ms();
	ck_assert_int_eq(write(hog.go, &hog_mib, sizeof(hog_mib)), (ssize_t)sizeof(hog_mib));

	/* Inflation: query-balloon below the RAM and the action in dedupctl clients.
	 * Then watch until the balloon holds still for 2 s, the state is high again,
	 * or 15 s have passed since it began (at most 40 s in all). */
	for (uint64_t end = h_now_ms() + 40000, last_change = h_now_ms(); h_now_ms() < end;
	     h_sleep_ms(100)) {
		struct json_object *c;
		uint64_t u = memcg_u64(cg, "memory.usage_in_bytes"), now;
		struct pollfd pfd = { .fd = hog.done, .events = POLLIN };
		int64_t tgt, gfree;
		char st[16];
		char state_now[16];

		if (!hog_ms && poll(&pfd, 1, 0) == 1 &&
		    read(hog.done, &hog_ms, sizeof(hog_ms)) != (ssize_t)sizeof(hog_ms))
			hog_ms = 1;
		if (u > usage_hog_peak)
			usage_hog_peak = u;
		a = vm_balloon_actual(name);
		doc = clients_json(sock);
		c = client_of(doc, q);
		vm_copy(st, sizeof(st), field_s(doc, "state")); /* doc is put below */
		saw_soft |= strcmp(st, "high") != 0; /* soft, or worse with a bigger hog */
		tgt = field_i(c, "balloon_target_bytes");
		gfree = field_i(c, "guest_free_bytes");
		if (tgt > max_target) {
			max_target = tgt;
			guest_free_at_max = gfree;
		}
		if (!act[0])
			has_action(c, "balloon set to", act, sizeof(act));
		if (has_action(c, "deflated", why, sizeof(why)))
			early_deflate = true;
		now = h_now_ms();
		printf("  +%5.1f s  %-4s cgroup %4" PRIu64 " MiB  target balloon %4" PRId64
		       " MiB  query-balloon guest %4" PRId64 " MiB  guest free %4" PRId64 " MiB\n",
		       (double)(now - t_hog) / 1000.0, st, u / MIB, tgt / (int64_t)MIB,
		       a / (int64_t)MIB, gfree / (int64_t)MIB);
		snprintf(state_now, sizeof(state_now), "%s", st); /* st lives in doc */
		json_object_put(doc);
		if (a > 0 && a < (int64_t)ram && !t_first)
			t_first = now;
		if (a > 0 && a < min_actual) {
			min_actual = a;
			t_min = now;
			last_change = now;
		}
		if (t_first && u < usage_min)
			usage_min = u;
		if (t_first && hog_ms &&
		    (now - last_change > 2000 || now - t_first > 15000 || !strcmp(state_now, "high")))
			break;
	}
	rss_ballooned = vm_mem_kib(name, "rss_kib");
	printf("hog of %u MiB started at %.1f s (all touched after %.1f s); cgroup usage peak "
	       "%" PRIu64 " MiB; soft (or worse) state seen: %s\n",
	       hog_mib, (double)(t_hog - t_start) / 1000.0, hog_ms / 1000.0, usage_hog_peak / MIB,
	       saw_soft ? "yes" : "no");
	printf("balloon: first below the RAM %.1f s after the hog started; smallest guest "
	       "%" PRId64 " MiB of %u (balloon %" PRId64 " MiB) %.1f s after it; dedupd's largest "
	       "balloon target %" PRId64 " MiB (the guest reported %" PRId64 " MiB free then)\n",
	       t_first ? (double)(t_first - t_hog) / 1000.0 : -1.0,
	       min_actual == INT64_MAX ? -1 : min_actual / (int64_t)MIB, GUEST_MIB,
	       min_actual == INT64_MAX ? -1 : ((int64_t)ram - min_actual) / (int64_t)MIB,
	       t_min ? (double)(t_min - t_hog) / 1000.0 : -1.0, max_target / (int64_t)MIB,
	       guest_free_at_max / (int64_t)MIB);
	printf("dedupctl clients: \"%s\"\n", act);
	printf("QEMU guest-RAM RSS %ld -> %ld MiB; cgroup usage with the hog %" PRIu64
	       " -> %" PRIu64 " MiB\n",
	       rss_before / 1024, rss_ballooned / 1024, usage_hog_peak / MIB,
	       usage_min == UINT64_MAX ? 0 : usage_min / MIB);
	if (early_deflate)
		printf("note: a deflation before the hog exited: \"%s\"\n", why);

	/* The hog goes: the balloon must go back to the full RAM. */
	t_kill = h_now_ms();
	hog_stop(&hog);
	for (uint64_t end = h_now_ms() + 30000; h_now_ms() < end; h_sleep_ms(100)) {
		struct json_object *c;

		a = vm_balloon_actual(name);
		doc = clients_json(sock);
		c = client_of(doc, q);
		has_action(c, "deflated", deflated, sizeof(deflated));
		json_object_put(doc);
		if (a == (int64_t)ram && deflated[0]) {
			t_deflated = h_now_ms();
			break;
		}
	}
	usage_after = memcg_u64(cg, "memory.usage_in_bytes");
	rss_after = vm_mem_kib(name, "rss_kib");
	printf("after the hog exited: balloon back to %" PRId64 " MiB in %.1f s (\"%s\"); "
	       "cgroup usage %" PRIu64 " MiB; QEMU guest-RAM RSS %ld MiB\n",
	       a / (int64_t)MIB, t_deflated ? (double)(t_deflated - t_kill) / 1000.0 : -1.0,
	       deflated, usage_after / MIB, rss_after / 1024);

	print_transitions(sock);
	atomic_store(&png.stop, true);
	pthread_join(pth, NULL);
	r = vm_run_timeout(name, 120, "dd-work check", out, sizeof(out));
	printf("serial console: %u answers, %u missed, slowest %.1f s; after: %s", atomic_load(&png.ok),
	       atomic_load(&png.bad), atomic_load(&png.max_ms) / 1000.0, out);
	printf("total %.1f s\n", secs_since(t_start));
	fflush(stdout);

	vm_stop(name);
	h_daemon_stop(d, SIGTERM);
	memcg_remove(cg);

	ck_assert_msg(saw_soft, "the cgroup never reached the soft state (usage peak %" PRIu64
				" MiB)", usage_hog_peak / MIB);
	ck_assert_msg(t_first && min_actual < (int64_t)ram,
		      "query-balloon never showed the guest below %u MiB", GUEST_MIB);
	ck_assert_msg(act[0], "dedupctl clients shows no balloon action");
	ck_assert_msg(t_deflated, "the balloon was not deflated after the hog exited: actual %" PRId64
				  ", last action \"%s\"", a, deflated);
	ck_assert_msg(r == 0 && strstr(out, "DD-CHECK OK "), "dd-work check: status %d: %s", r, out);
	ck_assert(vm_field(out, "DD-CHECK OK ", got, sizeof(got)));
	ck_assert_str_eq(got, expect);
	ck_assert_msg(atomic_load(&png.bad) == 0, "the serial console missed %u of %u: %s",
		      atomic_load(&png.bad), atomic_load(&png.bad) + atomic_load(&png.ok),
		      png.last_bad);
	/* Answers are counted, not timed: one answer took 8.6 s on a loaded
	 * 2-core host (TCG), so only a few fit the run; none may be missed. */
	ck_assert_uint_ge(atomic_load(&png.ok), 2);
}
END_TEST

/* What a failed test (or a killed runner) left: the guest, the daemon, the cgroup. */
static void teardown(void)
{
	char name[64], cg[256], pf[300], comm[64] = "", path[64];
	FILE *f;
	int d = 0;

	guest_name(name, sizeof(name));
	vm_stop(name); /* also removes the files of a guest that died */
	daemon_pidfile(pf, sizeof(pf));
	f = fopen(pf, "re");
	if (f) {
		if (fscanf(f, "%d", &d) != 1)
			d = 0;
		fclose(f);
	}
	if (d > 0) {
		snprintf(path, sizeof(path), "/proc/%d/comm", d);
		f = fopen(path, "re");
		if (f) {
			if (!fgets(comm, sizeof(comm), f))
				comm[0] = 0;
			fclose(f);
		}
		if (!strncmp(comm, "dedupd", 6))
			kill(d, SIGTERM);
	}
	unlink(pf);
	memcg_dir(cg, sizeof(cg), "dd-check-vm", runner, "balloon");
	memcg_remove(cg);
}

static Suite *vm_suite(void)
{
	Suite *s = suite_create("vm");
	TCase *tc = tcase_create("balloon");

	tcase_add_unchecked_fixture(tc, NULL, teardown);
	tcase_set_timeout(tc, 300); /* ~30 s quiet; TCG is slow on a loaded host */
	tcase_add_test(tc, test_guest_balloon_under_pressure);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(vm_suite());
	int failed;

	runner = getpid();
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
