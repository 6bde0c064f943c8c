// SPDX-License-Identifier: MIT
/*
 * Tests of bpf/pressure: the pure decision over tables of inputs (every
 * threshold, hysteresis both ways, one-step escalation by PSI, the PSI
 * trigger, BPF stalls and OOM); the module pointed at fake /proc files in a
 * temp dir (malformed and unreadable PSI, missing meminfo fields, fake v1/v2
 * cgroups, bad options); and, as root, the real thing: the BPF program
 * loaded and its counters moving, an unprivileged process falling back to
 * PSI, an OOM kill seen through the ring buffer, and a memory cgroup driven
 * through high -> soft -> hard -> low and back by a child that allocates and
 * frees, once with BPF and once without, each state seen within 2 s.
 *
 * The real tests make cgroups named dd-check-pressure.<runner pid>.<tag>
 * under the memory hierarchy and remove them in the fixture's teardown even
 * when a test fails.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bpf/pressure.h"
#include "bpf/pressure_event.h"

Suite *pressure_suite(void);

#define MIB (1024ULL * 1024)
#define TICK_MS 250 /* the daemon's default tick */

static pid_t runner_pid; /* the Check runner; forked tests name cgroups after it */

/* ---- helpers ---- */

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	ck_assert_msg(f, "%s: %s", path, strerror(errno));
	fputs(text, f);
	ck_assert_int_eq(fclose(f), 0);
}

static char *read_small(const char *path, char *buf, size_t len)
{
	FILE *f = fopen(path, "r");
	size_t n;

	if (!f)
		return NULL;
	n = fread(buf, 1, len - 1, f);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

static char tmpdir[64];

static void make_tmpdir(void)
{
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/dd-check-pressure.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void remove_tmpdir(void)
{
	char cmd[128];

	if (!tmpdir[0])
		return;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", tmpdir);
	tmpdir[0] = '\0';
}

static const char *tmp_path(const char *name)
{
	static char path[4][256];
	static int i;

	i = (i + 1) % 4;
	snprintf(path[i], sizeof(path[i]), "%s/%s", tmpdir, name);
	return path[i];
}

/* A meminfo with MemTotal 1,000,000 kB: @avail_kb of it available. */
static void fake_meminfo(uint64_t avail_kb)
{
	char text[256];

	snprintf(text, sizeof(text),
		 "MemTotal:        1000000 kB\nMemFree:          %llu kB\n"
		 "MemAvailable:     %llu kB\nBuffers:               0 kB\n",
		 (unsigned long long)avail_kb / 2, (unsigned long long)avail_kb);
	write_file(tmp_path("meminfo"), text);
}

static void fake_psi(const char *path, const char *some_avg10, const char *full_avg10)
{
	char text[256];

	snprintf(text, sizeof(text),
		 "some avg10=%s avg60=1.25 avg300=0.50 total=123456\n"
		 "full avg10=%s avg60=0.75 avg300=0.25 total=65432\n",
		 some_avg10, full_avg10);
	write_file(path, text);
}

/* A module on the fake files, without BPF. */
static struct dd_pressure *fake_new(const char *psi, const char *meminfo, const char *cgroup)
{
	struct dd_pressure_opts o = {
		.psi_path = psi,
		.meminfo_path = meminfo,
		.cgroup_path = cgroup,
	};
	struct dd_pressure *p = dd_pressure_new(&o);

	ck_assert_msg(p, "dd_pressure_new: %s", strerror(errno));
	return p;
}

static bool is_root(const char *test)
{
	if (geteuid() == 0)
		return true;
	printf("SKIP %s: needs root (BPF, memory cgroups)\n", test);
	return false;
}

/* ---- dd_pressure_decide ---- */

enum sig { NONE = 0, SOME = 1, FULL = 2, TRIG = 4, STALL = 8, OOM = 16, NOBPF = 32, NOPSI = 64 };

struct decide_case {
	int free_pm; /* -1: free memory unknown */
	unsigned int sig;
	enum dd_pstate prev, want;
};

#define H DD_PSTATE_HIGH
#define S DD_PSTATE_SOFT
#define D DD_PSTATE_HARD
#define L DD_PSTATE_LOW

static const struct decide_case decide_cases[] = {
	/* down from high: each threshold and one below */
	{ 10000, NONE, H, H },
	{ 600, NONE, H, H },
	{ 599, NONE, H, S },
	{ 400, NONE, H, S },
	{ 399, NONE, H, D },
	{ 200, NONE, H, D },
	{ 199, NONE, H, D },
	{ 100, NONE, H, D },
	{ 99, NONE, H, L },
	{ 0, NONE, H, L },
	/* from soft */
	{ 10000, NONE, S, H },
	{ 650, NONE, S, H },
	{ 649, NONE, S, S },
	{ 600, NONE, S, S },
	{ 400, NONE, S, S },
	{ 399, NONE, S, D },
	{ 150, NONE, S, D },
	{ 99, NONE, S, L },
	/* from hard: up needs threshold + 0.5 % margin; [1 %, 2 %) keeps hard */
	{ 650, NONE, D, H },
	{ 649, NONE, D, S },
	{ 450, NONE, D, S },
	{ 449, NONE, D, D },
	{ 400, NONE, D, D },
	{ 200, NONE, D, D },
	{ 150, NONE, D, D },
	{ 100, NONE, D, D },
	{ 99, NONE, D, L },
	/* from low: [1 %, 2.5 %) keeps low */
	{ 0, NONE, L, L },
	{ 99, NONE, L, L },
	{ 100, NONE, L, L },
	{ 150, NONE, L, L },
	{ 200, NONE, L, L },
	{ 249, NONE, L, L },
	{ 250, NONE, L, D },
	{ 449, NONE, L, D },
	{ 450, NONE, L, S },
	{ 649, NONE, L, S },
	{ 650, NONE, L, H },
	/* escalation: one step per signal kind, and only one step in all */
	{ 5000, SOME, H, S },
	{ 5000, FULL, H, S },
	{ 5000, TRIG, H, S },
	{ 5000, STALL, H, S },
	{ 5000, OOM, H, S },
	{ 5000, SOME | FULL | TRIG | STALL | OOM, H, S },
	{ 500, SOME, H, D },
	{ 500, STALL | OOM, S, D },
	{ 300, FULL, D, L },
	{ 50, SOME, L, L },
	{ 150, STALL, D, L },
	/* a signal from an invalid source counts for nothing */
	{ 5000, STALL | NOBPF, H, H },
	{ 5000, SOME | FULL | NOPSI, H, H },
	/* no ratchet: escalation is relative to free memory, not to prev */
	{ 420, SOME, D, D },
	{ 420, SOME, L, D },
	{ 620, SOME, S, S },
	{ 5000, SOME, S, S },
	{ 5000, SOME, L, S },
	/* the signal goes away */
	{ 5000, NONE, S, H },
	{ 620, NONE, S, S },
	{ 660, NONE, S, H },
	/* free memory unknown: high, or soft with a signal */
	{ -1, NONE, L, H },
	{ -1, NONE, H, H },
	{ -1, SOME, H, S },
	{ -1, STALL, D, S },
};

static struct dd_pressure_input make_input(int free_pm, unsigned int sig)
{
	struct dd_pressure_input in = {
		.free_valid = free_pm >= 0,
		.free_pm = free_pm >= 0 ? (uint32_t)free_pm : 0,
		.psi_valid = !(sig & NOPSI),
		.psi_some_avg10_pm = sig & SOME ? 1000 : 999,
		.psi_full_avg10_pm = sig & FULL ? 500 : 499,
		.psi_triggered = sig & TRIG,
		.bpf_valid = !(sig & NOBPF),
		.stalls_per_sec = sig & STALL ? 10 : 9,
		.oom_recent = sig & OOM,
	};
	return in;
}

START_TEST(test_decide_table)
{
	const struct dd_pressure_thresholds th = DD_PRESSURE_THRESHOLDS_DEFAULT;
	const struct decide_case *c = &decide_cases[_i];
	struct dd_pressure_input in = make_input(c->free_pm, c->sig);
	enum dd_pstate got = dd_pressure_decide(&in, c->prev, &th);

	ck_assert_msg(got == c->want, "case %d: free %d pm, signals %#x, from %s: got %s, want %s",
		      _i, c->free_pm, c->sig, dd_pstate_name(c->prev), dd_pstate_name(got),
		      dd_pstate_name(c->want));
}
END_TEST

START_TEST(test_decide_custom_thresholds)
{
	struct dd_pressure_thresholds th = DD_PRESSURE_THRESHOLDS_DEFAULT;
	struct dd_pressure_input in = make_input(200, NONE);

	th.margin_pm = 0; /* no margin: back to hard exactly at 2 % */
	ck_assert_int_eq(dd_pressure_decide(&in, L, &th), D);
	in = make_input(5000, SOME | FULL | STALL);
	th.psi_some_pm = th.psi_full_pm = th.stall_rate_per_sec = 0; /* 0: signal off */
	ck_assert_int_eq(dd_pressure_decide(&in, H, &th), H);
	/* low == hard: no band, 1.99 % is low straight away */
	th = (struct dd_pressure_thresholds)DD_PRESSURE_THRESHOLDS_DEFAULT;
	th.low_pm = th.hard_pm;
	in = make_input(199, NONE);
	ck_assert_int_eq(dd_pressure_decide(&in, H, &th), L);
	/* out of range prev is treated as high */
	in = make_input(500, NONE);
	ck_assert_int_eq(dd_pressure_decide(&in, (enum dd_pstate)7, &th), S);
}
END_TEST

START_TEST(test_decide_reasons)
{
	const struct dd_pressure_thresholds th = DD_PRESSURE_THRESHOLDS_DEFAULT;
	struct dd_pressure_input in = make_input(312, NONE);
	char why[DD_PRESSURE_REASON_MAX];

	ck_assert_int_eq(dd_pressure_decide_why(&in, H, &th, why, sizeof(why)), D);
	ck_assert_str_eq(why, "free 3.12% < 4.00%");
	in = make_input(50, NONE);
	ck_assert_int_eq(dd_pressure_decide_why(&in, D, &th, why, sizeof(why)), L);
	ck_assert_str_eq(why, "free 0.50% < 1.00%");
	in = make_input(260, NONE);
	ck_assert_int_eq(dd_pressure_decide_why(&in, L, &th, why, sizeof(why)), D);
	ck_assert_str_eq(why, "free 2.60% >= 2.00% + 0.50% margin");
	in = make_input(5000, STALL);
	in.stalls_per_sec = 42;
	ck_assert_int_eq(dd_pressure_decide_why(&in, H, &th, why, sizeof(why)), S);
	ck_assert_str_eq(why, "42 reclaim stalls/s >= 10");
	in = make_input(5000, SOME);
	in.psi_some_avg10_pm = 2345;
	dd_pressure_decide_why(&in, H, &th, why, sizeof(why));
	ck_assert_str_eq(why, "psi some avg10 23.45% >= 10.00%");
	in = make_input(5000, NONE);
	ck_assert_int_eq(dd_pressure_decide_why(&in, H, &th, why, sizeof(why)), H);
	ck_assert_str_eq(why, "");
}
END_TEST

START_TEST(test_names_and_thresholds)
{
	struct dd_pressure_thresholds th = DD_PRESSURE_THRESHOLDS_DEFAULT;

	ck_assert_str_eq(dd_pstate_name(DD_PSTATE_HIGH), "high");
	ck_assert_str_eq(dd_pstate_name(DD_PSTATE_SOFT), "soft");
	ck_assert_str_eq(dd_pstate_name(DD_PSTATE_HARD), "hard");
	ck_assert_str_eq(dd_pstate_name(DD_PSTATE_LOW), "low");
	ck_assert_str_eq(dd_pstate_name((enum dd_pstate)4), "?");
	ck_assert_int_eq(dd_pressure_thresholds_check(&th), 0);
	th.soft_pm = th.high_pm;
	ck_assert_int_eq(dd_pressure_thresholds_check(&th), -EINVAL);
	th = (struct dd_pressure_thresholds)DD_PRESSURE_THRESHOLDS_DEFAULT;
	th.low_pm = th.hard_pm + 1;
	ck_assert_int_eq(dd_pressure_thresholds_check(&th), -EINVAL);
	th = (struct dd_pressure_thresholds)DD_PRESSURE_THRESHOLDS_DEFAULT;
	th.high_pm = 10001;
	ck_assert_int_eq(dd_pressure_thresholds_check(&th), -EINVAL);
	ck_assert_int_eq(dd_pressure_thresholds_check(NULL), -EINVAL);
}
END_TEST

/* ---- fake /proc files ---- */

START_TEST(test_fake_transitions)
{
	static const struct {
		uint64_t avail_kb;
		enum dd_pstate want;
	} steps[] = {
		{ 500000, H }, { 50000, S }, { 30000, D }, { 15000, D },  { 5000, L },
		{ 15000, L },  { 24000, L }, { 26000, D }, { 100000, H },
	};
	const struct dd_pressure_snapshot *s;
	struct dd_pressure *p;
	char text[512];
	int changes = 0;

	make_tmpdir();
	fake_psi(tmp_path("psi"), "0.00", "0.00");
	fake_meminfo(steps[0].avail_kb);
	p = fake_new(tmp_path("psi"), tmp_path("meminfo"), NULL);
	s = dd_pressure_get(p);
	ck_assert_str_eq(s->source, "psi");
	ck_assert_str_eq(dd_pressure_source(p), "psi");
	ck_assert(strstr(s->bpf_error, "disabled by configuration"));
	/* a plain file must not get a trigger written into it */
	ck_assert(strstr(s->trigger_error, "not on procfs or cgroup2"));
	ck_assert_ptr_nonnull(read_small(tmp_path("psi"), text, sizeof(text)));
	ck_assert(!strncmp(text, "some avg10=0.00", 15));
	ck_assert_int_eq(s->psi_some_avg60_pm, 125);
	ck_assert_int_eq(s->psi_full_total_us, 65432);
	ck_assert_int_eq(s->total_bytes, 1000000ULL * 1024);

	for (unsigned int i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
		fake_meminfo(steps[i].avail_kb);
		changes += dd_pressure_tick(p, 1000 + i * 250);
		ck_assert_msg(s->state == steps[i].want, "step %u (%llu kB): %s, want %s", i,
			      (unsigned long long)steps[i].avail_kb, dd_pstate_name(s->state),
			      dd_pstate_name(steps[i].want));
		ck_assert_uint_eq(s->free_pm, steps[i].avail_kb / 100);
	}
	ck_assert_int_eq(changes, 5);
	ck_assert_uint_eq(s->nr_transitions, 5);
	ck_assert_int_eq(s->transitions[0].from, H);
	ck_assert_int_eq(s->transitions[0].to, S);
	ck_assert_str_eq(s->transitions[0].reason, "free 5.00% < 6.00%");
	ck_assert_uint_eq(s->transitions[0].at_ms, 1250);
	ck_assert_str_eq(s->transitions[3].reason, "free 2.60% >= 2.00% + 0.50% margin");
	ck_assert_uint_eq(s->since_ms, 1000 + 8 * 250);

	/* PSI escalates: some avg10 of 25 % makes high soft */
	fake_psi(tmp_path("psi"), "25.00", "0.00");
	ck_assert_int_eq(dd_pressure_tick(p, 5000), 1);
	ck_assert_int_eq(s->state, S);
	ck_assert_str_eq(s->transitions[s->nr_transitions - 1].reason,
			 "psi some avg10 25.00% >= 10.00%");
	fake_psi(tmp_path("psi"), "0.00", "7.50");
	ck_assert_int_eq(dd_pressure_tick(p, 5250), 0);
	ck_assert_int_eq(s->psi_full_avg10_pm, 750);
	fake_psi(tmp_path("psi"), "0.00", "0.00");
	ck_assert_int_eq(dd_pressure_tick(p, 5500), 1);
	ck_assert_int_eq(s->state, H);
	dd_pressure_free(p);
	remove_tmpdir();
}
END_TEST

START_TEST(test_fake_transition_ring)
{
	const struct dd_pressure_snapshot *s;
	struct dd_pressure *p;

	make_tmpdir();
	fake_psi(tmp_path("psi"), "0.00", "0.00");
	fake_meminfo(500000);
	p = fake_new(tmp_path("psi"), tmp_path("meminfo"), NULL);
	s = dd_pressure_get(p);
	for (int i = 0; i < 40; i++) {
		fake_meminfo(i % 2 ? 500000 : 5000);
		ck_assert_int_eq(dd_pressure_tick(p, 100 + i), 1);
	}
	ck_assert_uint_eq(s->nr_transitions, DD_PRESSURE_TRANSITIONS);
	ck_assert_uint_eq(s->transitions[DD_PRESSURE_TRANSITIONS - 1].at_ms, 139);
	ck_assert_uint_eq(s->transitions[0].at_ms, 139 - DD_PRESSURE_TRANSITIONS + 1);
	dd_pressure_free(p);
	remove_tmpdir();
}
END_TEST

static const char *const malformed_psi[] = {
	"garbage\n",
	"",
	"some avg10=abc avg60=0.00 avg300=0.00 total=0\n",
	"some avg10=0.00\n",
	"some avg10=101.00 avg60=0.00 avg300=0.00 total=0\n",
	"some avg10=1.00 avg60=0.00 avg300=0.00 total=x\n",
	"some avg10=1.00 avg60=0.00 avg300=0.00 total=1\nfull avg10=zz avg60=0 total=1\n",
};

START_TEST(test_fake_psi_malformed)
{
	const struct dd_pressure_snapshot *s;
	struct dd_pressure *p;
	uint32_t seq;

	make_tmpdir();
	write_file(tmp_path("psi"), malformed_psi[_i]);
	fake_meminfo(30000);
	p = fake_new(tmp_path("psi"), tmp_path("meminfo"), NULL);
	s = dd_pressure_get(p);
	ck_assert_msg(!s->psi_valid, "accepted '%s'", malformed_psi[_i]);
	ck_assert_msg(strstr(s->psi_error, tmp_path("psi")) && strstr(s->psi_error, "malformed"),
		      "unclear error '%s'", s->psi_error);
	ck_assert_str_eq(s->source, "free");
	ck_assert_int_eq(s->state, D); /* free memory alone still decides */
	/* the same error is reported once: errors_seq does not move */
	seq = s->errors_seq;
	dd_pressure_tick(p, 10000);
	dd_pressure_tick(p, 10250);
	ck_assert_uint_eq(s->errors_seq, seq);
	/* repaired: the error clears, once */
	fake_psi(tmp_path("psi"), "0.00", "0.00");
	dd_pressure_tick(p, 10500);
	ck_assert_str_eq(s->psi_error, "");
	ck_assert_uint_eq(s->errors_seq, seq + 1);
	ck_assert_str_eq(s->source, "psi");
	dd_pressure_free(p);
	remove_tmpdir();
}
END_TEST

START_TEST(test_fake_psi_unreadable)
{
	const struct dd_pressure_snapshot *s;
	struct dd_pressure *p;

	make_tmpdir();
	fake_meminfo(500000);
	p = fake_new(tmp_path("no-such-file"), tmp_path("meminfo"), NULL);
	s = dd_pressure_get(p);
	ck_assert(!s->psi_valid);
	ck_assert_msg(strstr(s->psi_error, "no-such-file: No such file or directory"), "'%s'",
		      s->psi_error);
	ck_assert(strstr(s->trigger_error, "no-such-file"));
	ck_assert_int_eq(s->state, H);
	dd_pressure_free(p);

	/* a directory: open works, read does not */
	p = fake_new(tmpdir, tmp_path("meminfo"), NULL);
	s = dd_pressure_get(p);
	ck_assert_msg(strstr(s->psi_error, "Is a directory"), "'%s'", s->psi_error);
	ck_assert_str_eq(s->source, "free");
	dd_pressure_free(p);
	remove_tmpdir();
}
END_TEST

static const struct {
	const char *text, *error;
} bad_meminfo[] = {
	{ "MemTotal: 1000000 kB\nMemFree: 5 kB\n", "no MemAvailable line" },
	{ "MemFree: 5 kB\nMemAvailable: 5 kB\n", "no MemTotal line" },
	{ "MemTotal: lots\nMemAvailable: 5 kB\n", "MemTotal is not a number" },
	{ "MemTotal: 0 kB\nMemAvailable: 0 kB\n", "MemTotal is 0" },
	{ "", "no MemTotal line" },
};

START_TEST(test_fake_meminfo_missing)
{
	const struct dd_pressure_snapshot *s;
	struct dd_pressure *p;

	make_tmpdir();
	fake_psi(tmp_path("psi"), "0.00", "0.00");
	write_file(tmp_path("meminfo"), bad_meminfo[_i].text);
	p = fake_new(tmp_path("psi"), tmp_path("meminfo"), NULL);
	s = dd_pressure_get(p);
	ck_assert(!s->free_valid);
	ck_assert_msg(strstr(s->free_error, bad_meminfo[_i].error) &&
			  strstr(s->free_error, tmp_path("meminfo")),
		      "'%s'", s->free_error);
	ck_assert_int_eq(s->state, H); /* nothing says otherwise */
	/* PSI alone can still escalate */
	fake_psi(tmp_path("psi"), "30.00", "0.00");
	ck_assert_int_eq(dd_pressure_tick(p, 1000), 1);
	ck_assert_int_eq(s->state, S);
	ck_assert_str_eq(s->transitions[0].reason, "psi some avg10 30.00% >= 10.00%");
	dd_pressure_free(p);

	p = fake_new(tmp_path("psi"), tmp_path("nothing"), NULL);
	ck_assert(strstr(dd_pressure_get(p)->free_error, "nothing: No such file or directory"));
	dd_pressure_free(p);
	remove_tmpdir();
}
END_TEST

START_TEST(test_fake_cgroups)
{
	const struct dd_pressure_snapshot *s;
	struct dd_pressure *p;
	char cg[256];

	make_tmpdir();
	fake_psi(tmp_path("psi"), "0.00", "0.00");
	fake_meminfo(500000);
	/* v1: limit - usage */
	snprintf(cg, sizeof(cg), "%s", tmp_path("v1"));
	ck_assert_int_eq(mkdir(cg, 0755), 0);
	write_file(tmp_path("v1/memory.limit_in_bytes"), "104857600\n");
	write_file(tmp_path("v1/memory.usage_in_bytes"), "101711872\n");
	p = fake_new(tmp_path("psi"), tmp_path("meminfo"), cg);
	s = dd_pressure_get(p);
	ck_assert_str_eq(s->free_error, "");
	ck_assert_uint_eq(s->total_bytes, 100 * MIB);
	ck_assert_uint_eq(s->free_bytes, 3 * MIB);
	ck_assert_uint_eq(s->free_pm, 300);
	ck_assert_int_eq(s->state, D);
	/* v1's "unlimited" is the host's size */
	write_file(tmp_path("v1/memory.limit_in_bytes"), "9223372036854771712\n");
	dd_pressure_tick(p, 1000);
	ck_assert_uint_eq(s->total_bytes, 1000000ULL * 1024);
	ck_assert_uint_eq(s->free_bytes, 500000ULL * 1024); /* capped by MemAvailable */
	write_file(tmp_path("v1/memory.usage_in_bytes"), "many\n");
	dd_pressure_tick(p, 1250);
	ck_assert(!s->free_valid);
	ck_assert_msg(strstr(s->free_error, "memory.usage_in_bytes: not a number"), "'%s'",
		      s->free_error);
	dd_pressure_free(p);

	/* v2: memory.max "max", and the cgroup's own memory.pressure */
	snprintf(cg, sizeof(cg), "%s", tmp_path("v2"));
	ck_assert_int_eq(mkdir(cg, 0755), 0);
	write_file(tmp_path("v2/memory.max"), "max\n");
	write_file(tmp_path("v2/memory.current"), "1002496000\n");
	fake_psi(tmp_path("v2/memory.pressure"), "12.00", "0.00");
	{
		struct dd_pressure_opts o = { .meminfo_path = tmp_path("meminfo"),
					      .cgroup_path = cg };

		p = dd_pressure_new(&o);
	}
	ck_assert_ptr_nonnull(p);
	s = dd_pressure_get(p);
	ck_assert_uint_eq(s->total_bytes, 1000000ULL * 1024);
	ck_assert_uint_eq(s->free_bytes, 1000000ULL * 1024 - 1002496000);
	ck_assert_uint_eq(s->free_pm, 210);
	ck_assert_int_eq(s->psi_some_avg10_pm, 1200);
	ck_assert_int_eq(s->state, L); /* 2.1 % is hard, plus PSI */
	dd_pressure_free(p);

	/* unlimited and no meminfo: says which */
	p = fake_new(tmp_path("psi"), tmp_path("nothing"), cg);
	ck_assert_msg(strstr(dd_pressure_get(p)->free_error, "has no limit and"), "'%s'",
		      dd_pressure_get(p)->free_error);
	dd_pressure_free(p);
	remove_tmpdir();
}
END_TEST

START_TEST(test_bad_opts)
{
	struct dd_pressure_thresholds th = DD_PRESSURE_THRESHOLDS_DEFAULT;
	struct dd_pressure_opts o = { 0 };
	struct dd_pressure *p;
	int fds[2];

	make_tmpdir();
	o.cgroup_path = tmpdir; /* a directory, but no memory cgroup */
	errno = 0;
	ck_assert_ptr_null(dd_pressure_new(&o));
	ck_assert_int_eq(errno, ENOENT);
	write_file(tmp_path("file"), "x");
	o.cgroup_path = tmp_path("file");
	ck_assert_ptr_null(dd_pressure_new(&o));
	ck_assert_int_eq(errno, ENOTDIR);
	o.cgroup_path = tmp_path("absent");
	ck_assert_ptr_null(dd_pressure_new(&o));
	ck_assert_int_eq(errno, ENOENT);
	o.cgroup_path = NULL;
	th.hard_pm = th.soft_pm;
	o.thresholds = &th;
	ck_assert_ptr_null(dd_pressure_new(&o));
	ck_assert_int_eq(errno, EINVAL);
	dd_pressure_free(NULL);

	/* set_thresholds checks too; fds with too little room */
	o.thresholds = NULL;
	o.psi_trigger = "";
	p = dd_pressure_new(&o);
	ck_assert_ptr_nonnull(p);
	ck_assert_int_eq(dd_pressure_set_thresholds(p, &th), -EINVAL);
	th = (struct dd_pressure_thresholds)DD_PRESSURE_THRESHOLDS_DEFAULT;
	th.high_pm = 9000;
	ck_assert_int_eq(dd_pressure_set_thresholds(p, &th), 0);
	ck_assert_uint_eq(dd_pressure_get(p)->th.high_pm, 9000);
	ck_assert_int_eq(dd_pressure_fds(p, fds, 2), 0); /* no BPF, no trigger */
	ck_assert_int_eq(dd_pressure_dispatch(p, 0), -EBADF);
	ck_assert_str_eq(dd_pressure_get(p)->trigger_error, "");
	ck_assert_str_eq(dd_pressure_get(p)->psi_trigger, "");
	dd_pressure_free(p);
	remove_tmpdir();
}
END_TEST

/* ---- memory cgroups for the real tests ---- */

struct cg {
	char dir[256];
	char usage[300]; /* memory.usage_in_bytes or memory.current */
	uint64_t limit;
};

static const char *memcg_root(bool *v2)
{
	if (access("/sys/fs/cgroup/memory/memory.limit_in_bytes", F_OK) == 0) {
		*v2 = false;
		return "/sys/fs/cgroup/memory";
	}
	*v2 = true;
	if (access("/sys/fs/cgroup/unified/memory.max", F_OK) == 0 ||
	    access("/sys/fs/cgroup/unified/cgroup.subtree_control", F_OK) == 0)
		return "/sys/fs/cgroup/unified";
	return NULL;
}

static void cg_name(char *buf, size_t len, const char *root, const char *tag)
{
	snprintf(buf, len, "%s/dd-check-pressure.%d.%s", root, (int)runner_pid, tag);
}

/* Kill what is left in a test cgroup and remove it; quiet if there is none. */
static void cg_remove(const char *tag)
{
	char dir[256], path[300], pids[4096], *l;
	const char *root;
	bool v2;

	root = memcg_root(&v2);
	if (!root)
		return;
	cg_name(dir, sizeof(dir), root, tag);
	snprintf(path, sizeof(path), "%s/cgroup.procs", dir);
	for (int tries = 0; tries < 50 && read_small(path, pids, sizeof(pids)); tries++) {
		if (!pids[0] && rmdir(dir) == 0)
			return;
		for (l = pids; *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : l + strlen(l))
			kill((pid_t)atoi(l), SIGKILL);
		usleep(20000);
	}
}

/* A memory cgroup limited to @limit, or false (with the reason printed) if none can be made. */
static bool cg_make(struct cg *c, const char *tag, uint64_t limit)
{
	char path[300], val[32];
	const char *root;
	bool v2;

	root = memcg_root(&v2);
	if (!root) {
		printf("SKIP: no memory cgroup hierarchy at /sys/fs/cgroup/{memory,unified}\n");
		return false;
	}
	cg_remove(tag);
	cg_name(c->dir, sizeof(c->dir), root, tag);
	ck_assert_msg(mkdir(c->dir, 0755) == 0, "mkdir %s: %s", c->dir, strerror(errno));
	snprintf(path, sizeof(path), "%s/%s", c->dir, v2 ? "memory.max" : "memory.limit_in_bytes");
	snprintf(val, sizeof(val), "%llu\n", (unsigned long long)limit);
	write_file(path, val);
	snprintf(c->usage, sizeof(c->usage), "%s/%s", c->dir,
		 v2 ? "memory.current" : "memory.usage_in_bytes");
	c->limit = limit;
	return true;
}

static uint64_t read_u64(const char *path)
{
	char buf[64];

	return read_small(path, buf, sizeof(buf)) ? strtoull(buf, NULL, 10) : 0;
}

/* A file of @size bytes on a disk filesystem (page cache is reclaimable, tmpfs is not). */
static void make_data_file(const char *path, uint64_t size)
{
	static char chunk[1 << 20];
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

	ck_assert_msg(fd >= 0, "%s: %s", path, strerror(errno));
	memset(chunk, 0x5a, sizeof(chunk));
	for (uint64_t off = 0; off < size; off += sizeof(chunk))
		ck_assert_int_eq(write(fd, chunk, sizeof(chunk)), (ssize_t)sizeof(chunk));
	ck_assert_int_eq(fsync(fd), 0);
	/* drop it from the cache, so the child's reads charge its own cgroup */
	posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
	close(fd);
}

/* ---- the allocating child ---- */

#define ALLOC_MAX (128 * MIB)
#define STEP_BYTES (64 * 1024)

struct cmd {
	char op;      /* 'U' anon to usage arg, 'F' file cache to usage arg, 'D' drop cache, 'Q' */
	uint64_t arg; /* bytes */
};

struct child {
	pid_t pid;
	int cmd_fd, ack_fd;
};

/* Touch or release anonymous memory until the cgroup's usage is @target (64 KiB below). */
static void child_adjust(const char *usage, char *region, size_t *touched, uint64_t target)
{
	uint64_t u = read_u64(usage);

	while (u < target && *touched + STEP_BYTES <= ALLOC_MAX) {
		for (size_t off = 0; off < STEP_BYTES; off += 4096)
			region[*touched + off] = 1;
		*touched += STEP_BYTES;
		u = read_u64(usage);
	}
	while (u > target && *touched >= STEP_BYTES) {
		*touched -= STEP_BYTES;
		madvise(region + *touched, STEP_BYTES, MADV_DONTNEED);
		u = read_u64(usage);
	}
}

/* Read the file until the cgroup has gone past its limit and usage is back at @target. */
static void child_fill_cache(const char *usage, int fd, uint64_t limit, uint64_t target)
{
	static char buf[STEP_BYTES];
	uint64_t start = read_u64(usage), done = 0, off = 0;
	struct stat st;

	if (fstat(fd, &st) < 0 || st.st_size < (off_t)STEP_BYTES)
		_exit(12);
	while (done < 8 * limit) {
		if (pread(fd, buf, sizeof(buf), (off_t)off) <= 0)
			_exit(13);
		off = (off + sizeof(buf)) % (uint64_t)st.st_size;
		done += sizeof(buf);
		if (done > limit - start + MIB && read_u64(usage) >= target)
			return;
	}
}

static void child_main(const struct cg *c, const char *datafile, int cmd_fd, int ack_fd)
{
	char path[300], pid[32];
	size_t touched = 0;
	struct cmd cmd;
	char *region;
	int fd;

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	snprintf(path, sizeof(path), "%s/cgroup.procs", c->dir);
	snprintf(pid, sizeof(pid), "%d\n", (int)getpid());
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, pid, strlen(pid)) < 0)
		_exit(10);
	close(fd);
	region = mmap(NULL, ALLOC_MAX, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (region == MAP_FAILED)
		_exit(11);
	madvise(region, ALLOC_MAX, MADV_NOHUGEPAGE); /* 4 KiB steps, not 2 MiB */
	fd = datafile ? open(datafile, O_RDONLY | O_CLOEXEC) : -1;
	while (read(cmd_fd, &cmd, sizeof(cmd)) == sizeof(cmd)) {
		if (cmd.op == 'U')
			child_adjust(c->usage, region, &touched, cmd.arg);
		else if (cmd.op == 'F')
			child_fill_cache(c->usage, fd, c->limit, cmd.arg);
		else if (cmd.op == 'D')
			posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
		else
			_exit(0);
		cmd.arg = read_u64(c->usage);
		if (write(ack_fd, &cmd, sizeof(cmd)) != sizeof(cmd))
			_exit(14);
	}
	_exit(0);
}

static void child_start(struct child *ch, const struct cg *c, const char *datafile)
{
	int cmd[2], ack[2];

	ck_assert_int_eq(pipe2(cmd, O_CLOEXEC), 0);
	ck_assert_int_eq(pipe2(ack, O_CLOEXEC), 0);
	ch->pid = fork();
	ck_assert_int_ge(ch->pid, 0);
	if (ch->pid == 0) {
		close(cmd[1]);
		close(ack[0]);
		child_main(c, datafile, cmd[0], ack[1]);
	}
	close(cmd[0]);
	close(ack[1]);
	ch->cmd_fd = cmd[1];
	ch->ack_fd = ack[0];
}

static int child_stop(struct child *ch)
{
	struct cmd q = { .op = 'Q' };
	int status = 0;

	if (write(ch->cmd_fd, &q, sizeof(q)) < 0)
		kill(ch->pid, SIGKILL);
	close(ch->cmd_fd);
	close(ch->ack_fd);
	waitpid(ch->pid, &status, 0);
	return status;
}

/* ---- the monitor: the daemon's loop in small ---- */

struct monitor {
	struct dd_pressure *p;
	int ep;
	uint64_t next_tick;
	unsigned int dispatches;
};

static void monitor_start(struct monitor *m, struct dd_pressure *p, int extra_fd)
{
	struct epoll_event ev = { .events = EPOLLIN | EPOLLPRI };
	int fds[DD_PRESSURE_MAX_FDS], n;

	m->p = p;
	m->ep = epoll_create1(EPOLL_CLOEXEC);
	ck_assert_int_ge(m->ep, 0);
	n = dd_pressure_fds(p, fds, DD_PRESSURE_MAX_FDS);
	ck_assert_int_ge(n, 0);
	for (int i = 0; i < n; i++) {
		ev.events = dd_pressure_fd_events(p, fds[i]);
		ck_assert_uint_ne(ev.events, 0);
		ev.data.fd = fds[i];
		ck_assert_int_eq(epoll_ctl(m->ep, EPOLL_CTL_ADD, fds[i], &ev), 0);
	}
	if (extra_fd >= 0) {
		ev.events = EPOLLIN;
		ev.data.fd = extra_fd;
		ck_assert_int_eq(epoll_ctl(m->ep, EPOLL_CTL_ADD, extra_fd, &ev), 0);
	}
	m->next_tick = dd_pressure_now_ms();
	m->dispatches = 0;
}

/* Run the loop until @until_ms; returns early with true when @fd is readable. */
static bool monitor_run(struct monitor *m, uint64_t until_ms, int fd)
{
	struct epoll_event ev[4];
	uint64_t now;
	int n;

	while ((now = dd_pressure_now_ms()) < until_ms) {
		if (now >= m->next_tick) {
			dd_pressure_tick(m->p, now);
			m->next_tick = now + TICK_MS;
		}
		n = epoll_wait(m->ep, ev, 4,
			       (int)((m->next_tick < until_ms ? m->next_tick : until_ms) - now));
		for (int i = 0; i < n; i++) {
			if (ev[i].data.fd == fd)
				return true;
			ck_assert_int_ge(dd_pressure_dispatch(m->p, ev[i].data.fd), 0);
			m->dispatches++;
		}
	}
	return false;
}

/* For step(): only the child's answer matters, not the state. */
#define ANY_STATE ((enum dd_pstate) - 1)

/*
 * Send @op to the child and run the loop until it has answered and the state
 * is @want (or ANY_STATE), within 2 s of the command (the crossing happens after the
 * command is sent, so this bounds the time from crossing to state change).
 */
static void step(struct monitor *m, struct child *ch, char op, uint64_t arg, enum dd_pstate want,
		 const char *what)
{
	const struct dd_pressure_snapshot *s = dd_pressure_get(m->p);
	struct cmd cmd = { .op = op, .arg = arg };
	uint64_t t_cmd = dd_pressure_now_ms(), t_ack = 0, deadline = t_cmd + 2000;
	bool acked = false;

	ck_assert_int_eq(write(ch->cmd_fd, &cmd, sizeof(cmd)), (ssize_t)sizeof(cmd));
	while (!acked || (want != ANY_STATE && s->state != want)) {
		if (!acked && monitor_run(m, deadline, ch->ack_fd)) {
			ck_assert_int_eq(read(ch->ack_fd, &cmd, sizeof(cmd)), (ssize_t)sizeof(cmd));
			acked = true;
			t_ack = dd_pressure_now_ms();
		} else if (acked) {
			monitor_run(m, dd_pressure_now_ms() + 10, -1);
		}
		ck_assert_msg(dd_pressure_now_ms() < deadline ||
				      (acked && (want == ANY_STATE || s->state == want)),
			      "%s: %s after 2 s, want %s (free %u pm, usage %llu, acked %d, "
			      "stalls/s %u, psi some %u full %u pm, last: %s)",
			      what, dd_pstate_name(s->state), dd_pstate_name(want), s->free_pm,
			      (unsigned long long)cmd.arg, acked, s->stalls_per_sec,
			      s->psi_some_avg10_pm, s->psi_full_avg10_pm,
			      s->nr_transitions ? s->transitions[s->nr_transitions - 1].reason
						: "-");
	}
	printf("  %-28s -> %-4s free %5.2f%%  %4llu ms after the command (%4lld after the "
	       "child's ack), stalls %llu, stalls/s %u\n",
	       what, dd_pstate_name(want), s->free_pm / 100.0,
	       (unsigned long long)(dd_pressure_now_ms() - t_cmd),
	       (long long)dd_pressure_now_ms() - (long long)t_ack,
	       (unsigned long long)s->scope_stalls, s->stalls_per_sec);
}

/* The usage at which the cgroup has @free_pm free. */
static uint64_t usage_for(const struct cg *c, uint32_t free_pm)
{
	return c->limit - c->limit * free_pm / 10000;
}

static void real_pressure(bool use_bpf)
{
	const char *tag = use_bpf ? "bpf" : "psi";
	const struct dd_pressure_snapshot *s;
	/* Every stall reported; no host PSI trigger: this cgroup's own reclaim
	 * stalls count in the host's PSI, and a trigger firing escalates the state
	 * a step for 2 s, racing the exact states expected here (PSI averages
	 * still count). */
	struct dd_pressure_opts o = { .use_bpf = use_bpf, .stall_report_us = 1, .psi_trigger = "" };
	struct dd_pressure *p;
	struct monitor m;
	struct child ch;
	struct cg c;
	char data[128];
	uint64_t hold_until, max_stalls = 0;

	if (!is_root(use_bpf ? "real pressure (bpf)" : "real pressure (psi)") ||
	    !cg_make(&c, tag, 64 * MIB))
		return;
	snprintf(data, sizeof(data), "/var/tmp/dd-check-pressure.%d.%s", (int)runner_pid, tag);
	make_data_file(data, 32 * MIB);
	o.cgroup_path = c.dir;
	p = dd_pressure_new(&o);
	ck_assert_msg(p, "dd_pressure_new(%s): %s", c.dir, strerror(errno));
	s = dd_pressure_get(p);
	ck_assert_str_eq(s->source, use_bpf ? "bpf+psi" : "psi");
	ck_assert_int_eq(s->state, H);
	child_start(&ch, &c, data);
	monitor_start(&m, p, ch.ack_fd);
	printf("%s: cgroup %s, limit 64 MiB, thresholds 6/4/2/1 %%, tick %d ms\n", tag, c.dir,
	       TICK_MS);

	step(&m, &ch, 'U', usage_for(&c, 5000), H, "anon to 50% free");
	step(&m, &ch, 'U', usage_for(&c, 500), S, "anon to 5% free");
	step(&m, &ch, 'U', usage_for(&c, 300), D, "anon to 3% free");
	step(&m, &ch, 'F', c.limit - 320 * 1024, L, "page cache past the limit");
	/* low holds while the cgroup sits at its limit */
	for (hold_until = dd_pressure_now_ms() + 2500; dd_pressure_now_ms() < hold_until;) {
		monitor_run(&m, dd_pressure_now_ms() + 50, -1);
		ck_assert_msg(s->state == L, "left low at free %u pm", s->free_pm);
		if (s->stalls_per_sec > max_stalls)
			max_stalls = s->stalls_per_sec;
	}
	if (use_bpf) {
		ck_assert_msg(s->scope_stalls > 0 && s->memcg_reclaims > 0,
			      "no reclaim stall seen by BPF in %s", c.dir);
		ck_assert_msg(s->events > 0, "no ring-buffer event");
		ck_assert_msg(m.dispatches > 0, "the ring buffer fd never woke the loop");
		printf("  bpf: %llu reclaim stalls in the cgroup, %llu us stalled, peak %llu/s, "
		       "%llu events (%u dispatches), kswapd wakes %llu, throttles %llu\n",
		       (unsigned long long)s->scope_stalls, (unsigned long long)s->scope_stall_us,
		       (unsigned long long)max_stalls, (unsigned long long)s->events, m.dispatches,
		       (unsigned long long)s->kswapd_wakes, (unsigned long long)s->throttles);
	} else {
		ck_assert_int_eq(s->scope_stalls, 0);
		ck_assert(!s->bpf_active);
	}
	step(&m, &ch, 'D', 0, D, "page cache dropped");
	step(&m, &ch, 'U', usage_for(&c, 325), D, "anon to 3.25% free");
	step(&m, &ch, 'U', usage_for(&c, 525), S, "anon to 5.25% free");
	step(&m, &ch, 'U', usage_for(&c, 5000), H, "anon to 50% free");
	for (unsigned int i = 0; i < s->nr_transitions; i++)
		printf("  transition %llu ms: %s -> %s: %s\n",
		       (unsigned long long)(s->transitions[i].at_ms - s->transitions[0].at_ms),
		       dd_pstate_name(s->transitions[i].from), dd_pstate_name(s->transitions[i].to),
		       s->transitions[i].reason);
	ck_assert_int_eq(child_stop(&ch), 0);
	close(m.ep);
	dd_pressure_free(p);
	unlink(data);
	cg_remove(tag);
}

START_TEST(test_real_pressure_bpf)
{
	real_pressure(true);
}
END_TEST

START_TEST(test_real_pressure_psi_only)
{
	real_pressure(false);
}
END_TEST

/* The program loads as root; its fds go into epoll; its counters move. */
START_TEST(test_bpf_loads)
{
	const struct dd_pressure_snapshot *s;
	struct dd_pressure_opts o = { .use_bpf = true };
	struct dd_pressure *p;
	struct monitor m;
	struct child ch;
	struct cg c;
	char data[128];
	uint64_t before;
	int fds[DD_PRESSURE_MAX_FDS];

	if (!is_root("bpf loads"))
		return;
	p = dd_pressure_new(&o);
	ck_assert_ptr_nonnull(p);
	s = dd_pressure_get(p);
	ck_assert_msg(s->bpf_active, "BPF did not load: %s", s->bpf_error);
	ck_assert_str_eq(s->bpf_error, "");
	ck_assert_str_eq(s->source, "bpf+psi");
	ck_assert_int_eq(dd_pressure_fds(p, fds, 1), -ENOSPC);
	ck_assert_int_eq(dd_pressure_fds(p, fds, DD_PRESSURE_MAX_FDS), 2);
	ck_assert_uint_eq(dd_pressure_fd_events(p, fds[0]), EPOLLIN);
	ck_assert_uint_eq(dd_pressure_fd_events(p, fds[1]), EPOLLPRI);
	ck_assert_uint_eq(dd_pressure_fd_events(p, -1), 0);
	ck_assert_msg(s->psi_trigger[0], "no PSI trigger: %s", s->trigger_error);
	printf("bpf: loaded; PSI trigger '%s'%s%s\n", s->psi_trigger,
	       s->trigger_error[0] ? ": " : "", s->trigger_error);
	ck_assert_int_eq(dd_pressure_dispatch(p, -1), -EBADF);

	/* a 16 MiB cgroup read through: memcg reclaim, counted host-wide */
	if (!cg_make(&c, "load", 16 * MIB)) {
		dd_pressure_free(p);
		return;
	}
	snprintf(data, sizeof(data), "/var/tmp/dd-check-pressure.%d.load", (int)runner_pid);
	make_data_file(data, 32 * MIB);
	before = s->memcg_reclaims;
	child_start(&ch, &c, data);
	monitor_start(&m, p, ch.ack_fd);
	/* Any state: the cgroup's own reclaim stalls count in the host's PSI, so
	 * the trigger may fire and escalate; this test is about the counters. */
	step(&m, &ch, 'F', c.limit - 320 * 1024, ANY_STATE, "read 16 MiB cgroup full");
	dd_pressure_tick(p, dd_pressure_now_ms());
	ck_assert_msg(s->memcg_reclaims > before, "memcg reclaim counter did not move");
	ck_assert_uint_gt(s->memcg_stall_us, 0);
	printf("bpf: %llu memcg reclaims (%llu us), %llu direct, kswapd %llu wakes\n",
	       (unsigned long long)(s->memcg_reclaims - before),
	       (unsigned long long)s->memcg_stall_us, (unsigned long long)s->direct_reclaims,
	       (unsigned long long)s->kswapd_wakes);
	ck_assert_int_eq(child_stop(&ch), 0);
	close(m.ep);
	dd_pressure_free(p);
	unlink(data);
	cg_remove("load");
}
END_TEST

/* Every OOM kill in the watched cgroup comes through the ring buffer. */
START_TEST(test_bpf_oom)
{
	const struct dd_pressure_snapshot *s;
	struct dd_pressure_opts o = { .use_bpf = true };
	struct dd_pressure *p;
	struct monitor m;
	struct child ch;
	struct cg c;
	struct cmd cmd = { .op = 'U', .arg = 64 * MIB };
	bool seen = false;
	int status;

	if (!is_root("bpf oom") || !cg_make(&c, "oom", 16 * MIB))
		return;
	o.cgroup_path = c.dir;
	p = dd_pressure_new(&o);
	ck_assert_ptr_nonnull(p);
	s = dd_pressure_get(p);
	ck_assert_msg(s->bpf_active, "%s", s->bpf_error);
	child_start(&ch, &c, NULL);
	monitor_start(&m, p, -1);
	ck_assert_int_eq(write(ch.cmd_fd, &cmd, sizeof(cmd)), (ssize_t)sizeof(cmd));
	for (uint64_t end = dd_pressure_now_ms() + 5000; !seen && dd_pressure_now_ms() < end;) {
		monitor_run(&m, dd_pressure_now_ms() + 50, -1);
		for (unsigned int i = 0; i < s->nr_events; i++)
			seen |= s->recent_events[i].type == DD_PEV_OOM &&
				s->recent_events[i].pid == (uint32_t)ch.pid;
	}
	ck_assert_msg(seen, "no OOM event for pid %d (ooms in scope %llu)", (int)ch.pid,
		      (unsigned long long)s->scope_ooms);
	ck_assert_uint_ge(s->scope_ooms, 1);
	ck_assert_uint_gt(s->scope_stalls, 0); /* reclaim was tried first */
	printf("oom: victim %d seen via the ring buffer; %llu stalls before it\n", (int)ch.pid,
	       (unsigned long long)s->scope_stalls);
	status = child_stop(&ch);
	ck_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
	close(m.ep);
	dd_pressure_free(p);
	cg_remove("oom");
}
END_TEST

/* Without privilege BPF cannot load: the module says why and carries on with PSI. */
START_TEST(test_bpf_unprivileged)
{
	pid_t pid;
	int status;

	if (!is_root("bpf unprivileged (needs root to drop it)"))
		return;
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		struct dd_pressure_opts o = { .use_bpf = true };
		const struct dd_pressure_snapshot *s;
		struct dd_pressure *p;

		if (setgroups(0, NULL) || setresgid(65534, 65534, 65534) ||
		    setresuid(65534, 65534, 65534))
			_exit(2);
		p = dd_pressure_new(&o);
		if (!p)
			_exit(3);
		s = dd_pressure_get(p);
		printf("unprivileged: source %s; bpf: %s; trigger: '%s' %s\n", s->source,
		       s->bpf_error, s->psi_trigger, s->trigger_error);
		fflush(stdout);
		if (s->bpf_active || !strstr(s->bpf_error, "pressure.bpf") ||
		    !strstr(s->bpf_error, "using PSI alone"))
			_exit(4);
		if (strcmp(s->source, "psi") || !s->free_valid)
			_exit(5);
		dd_pressure_free(p);
		_exit(0);
	}
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %#x", status);
}
END_TEST

static void real_teardown(void)
{
	static const char *const tags[] = { "bpf", "psi", "load", "oom" };
	char data[128];

	for (unsigned int i = 0; i < sizeof(tags) / sizeof(tags[0]); i++) {
		cg_remove(tags[i]);
		snprintf(data, sizeof(data), "/var/tmp/dd-check-pressure.%d.%s", (int)runner_pid,
			 tags[i]);
		unlink(data);
	}
}

static void fake_teardown(void)
{
	remove_tmpdir();
}

Suite *pressure_suite(void)
{
	Suite *s = suite_create("pressure");
	TCase *tc;

	tc = tcase_create("decide");
	tcase_add_loop_test(tc, test_decide_table, 0,
			    (int)(sizeof(decide_cases) / sizeof(decide_cases[0])));
	tcase_add_test(tc, test_decide_custom_thresholds);
	tcase_add_test(tc, test_decide_reasons);
	tcase_add_test(tc, test_names_and_thresholds);
	suite_add_tcase(s, tc);

	tc = tcase_create("fake_proc");
	tcase_add_checked_fixture(tc, NULL, fake_teardown);
	tcase_add_test(tc, test_fake_transitions);
	tcase_add_test(tc, test_fake_transition_ring);
	tcase_add_loop_test(tc, test_fake_psi_malformed, 0,
			    (int)(sizeof(malformed_psi) / sizeof(malformed_psi[0])));
	tcase_add_test(tc, test_fake_psi_unreadable);
	tcase_add_loop_test(tc, test_fake_meminfo_missing, 0,
			    (int)(sizeof(bad_meminfo) / sizeof(bad_meminfo[0])));
	tcase_add_test(tc, test_fake_cgroups);
	tcase_add_test(tc, test_bad_opts);
	suite_add_tcase(s, tc);

	tc = tcase_create("real");
	tcase_set_timeout(tc, 30);
	tcase_add_unchecked_fixture(tc, NULL, real_teardown);
	tcase_add_test(tc, test_bpf_loads);
	tcase_add_test(tc, test_bpf_unprivileged);
	tcase_add_test(tc, test_bpf_oom);
	tcase_add_test(tc, test_real_pressure_bpf);
	tcase_add_test(tc, test_real_pressure_psi_only);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(pressure_suite());
	int failed;

	runner_pid = getpid();
	signal(SIGPIPE, SIG_IGN); /* a child killed by the OOM killer closes its pipe */
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
