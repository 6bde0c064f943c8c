// SPDX-License-Identifier: MIT
/*
 * Memory pressure: loader of pressure.bpf.c, PSI reader and trigger, and the
 * high / soft / hard / low state machine of DESIGN.md §6.
 *
 * Three sources feed one decision:
 *  - free memory, re-read every tick: MemAvailable / MemTotal from
 *    /proc/meminfo, or for a watched memory cgroup its limit minus its usage
 *    (v1 memory.limit_in_bytes / memory.usage_in_bytes, v2 memory.max /
 *    memory.current), capped by the host's MemAvailable;
 *  - PSI: some/full avg10, avg60 and total, re-read every tick, plus a PSI
 *    trigger whose EPOLLPRI wakes the caller within the trigger's window;
 *  - the BPF probes: host-wide counters read from the program's .bss through
 *    the skeleton's mmap (no syscall), the watched cgroup's counters from a
 *    hash map, and a ring buffer of threshold crossings (long stalls,
 *    throttles, OOM kills) that wakes the caller at once.
 *
 * The decision itself, dd_pressure_decide(), is a pure function of a
 * struct dd_pressure_input and the previous state, so the tests drive it
 * with tables. The module keeps the last DD_PRESSURE_TRANSITIONS transitions
 * with a reason each, and the last DD_PRESSURE_EVENTS ring-buffer events,
 * for dedupctl state.
 *
 * A source that cannot be used is written into the snapshot's error strings
 * and left out of the decision; the module never logs.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <time.h>
#include <unistd.h>

#include <bpf/libbpf.h>

#include "bpf/pressure.h"
#include "bpf/pressure_event.h"
#include "pressure.skel.h"

#define DEFAULT_PSI_PATH "/proc/pressure/memory"
#define DEFAULT_MEMINFO_PATH "/proc/meminfo"
#define DEFAULT_TRIGGER "some 150000 1000000" /* 150 ms of stall within 1 s */
#define DEFAULT_STALL_REPORT_US 10000	      /* a 10 ms reclaim stall is felt by users */
#define DEFAULT_HOLD_MS 2000
#define STALL_WINDOW_MS 1000 /* stalls/s is counted over windows this long */
#define TEXT_MAX 8192	     /* /proc/meminfo is ~1.5 KiB on 6.18 */

struct dd_pressure {
	struct dd_pressure_snapshot snap; /* what dd_pressure_get() returns */
	struct dd_pressure_thresholds th;
	char *psi_path;
	char *meminfo_path;
	char *cgroup_path;		     /* NULL: the host */
	const char *limit_name, *usage_name; /* v1 or v2 file names in cgroup_path */
	uint64_t cgroup_id;		     /* inode of cgroup_path = kernfs id in BPF */
	uint32_t hold_ms;
	int psi_fd; /* PSI trigger, or -1 */
	struct pressure_bpf *skel;
	struct ring_buffer *rb;
	/* stalls/s: the last complete window and the one in progress */
	uint64_t win_start_ms, win_start_stalls;
	uint32_t last_win_rate;
	bool win_started;
	uint64_t last_trigger_ms, last_oom_ms;
	bool seen_trigger, seen_oom;
};

/* ---- names, clock, thresholds ---- */

const char *dd_pstate_name(enum dd_pstate s)
{
	static const char *const names[DD_PSTATE_COUNT] = { "high", "soft", "hard", "low" };

	return (unsigned int)s < DD_PSTATE_COUNT ? names[s] : "?";
}

uint64_t dd_pressure_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int dd_pressure_thresholds_check(const struct dd_pressure_thresholds *th)
{
	if (!th || th->high_pm > 10000 || th->high_pm <= th->soft_pm ||
	    th->soft_pm <= th->hard_pm || th->hard_pm < th->low_pm || th->margin_pm > 10000)
		return -EINVAL;
	return 0;
}

/* ---- the decision (pure) ---- */

/* The state free memory alone gives, without hysteresis; [low, hard) counts as hard. */
static enum dd_pstate free_level(uint32_t free_pm, const struct dd_pressure_thresholds *th)
{
	if (free_pm >= th->high_pm)
		return DD_PSTATE_HIGH;
	if (free_pm >= th->soft_pm)
		return DD_PSTATE_SOFT;
	if (free_pm >= th->low_pm)
		return DD_PSTATE_HARD;
	return DD_PSTATE_LOW;
}

/* Free memory (before the margin) at which @s is entered from a worse state. */
static uint32_t enter_pm(enum dd_pstate s, const struct dd_pressure_thresholds *th)
{
	return s == DD_PSTATE_HIGH ? th->high_pm : s == DD_PSTATE_SOFT ? th->soft_pm : th->hard_pm;
}

/* Free memory below which @s is entered from a better state. */
static uint32_t fall_pm(enum dd_pstate s, const struct dd_pressure_thresholds *th)
{
	return s == DD_PSTATE_SOFT ? th->high_pm : s == DD_PSTATE_HARD ? th->soft_pm : th->low_pm;
}

#define PM_FMT "%u.%02u%%"
#define PM_ARG(pm) (unsigned int)((pm) / 100), (unsigned int)((pm) % 100)

/* Free memory with hysteresis. */
static enum dd_pstate base_state(uint32_t free_pm, enum dd_pstate prev,
				 const struct dd_pressure_thresholds *th, char *why, size_t len)
{
	enum dd_pstate raw = free_level(free_pm, th), s = prev;

	if (raw >= prev) {
		if (raw > prev)
			snprintf(why, len, "free " PM_FMT " < " PM_FMT, PM_ARG(free_pm),
				 PM_ARG(fall_pm(raw, th)));
		return raw;
	}
	while (s > raw && free_pm >= enter_pm(s - 1, th) + th->margin_pm)
		s--;
	if (s < prev)
		snprintf(why, len, "free " PM_FMT " >= " PM_FMT " + " PM_FMT " margin",
			 PM_ARG(free_pm), PM_ARG(enter_pm(s, th)), PM_ARG(th->margin_pm));
	return s;
}

/* The first pressure signal present, described in @why; false if none. */
static bool pressure_signal(const struct dd_pressure_input *in,
			    const struct dd_pressure_thresholds *th, char *why, size_t len)
{
	if (in->psi_valid && th->psi_full_pm && in->psi_full_avg10_pm >= th->psi_full_pm)
		snprintf(why, len, "psi full avg10 " PM_FMT " >= " PM_FMT,
			 PM_ARG(in->psi_full_avg10_pm), PM_ARG(th->psi_full_pm));
	else if (in->psi_valid && th->psi_some_pm && in->psi_some_avg10_pm >= th->psi_some_pm)
		snprintf(why, len, "psi some avg10 " PM_FMT " >= " PM_FMT,
			 PM_ARG(in->psi_some_avg10_pm), PM_ARG(th->psi_some_pm));
	else if (in->psi_triggered)
		snprintf(why, len, "psi trigger fired");
	else if (in->bpf_valid && th->stall_rate_per_sec &&
		 in->stalls_per_sec >= th->stall_rate_per_sec)
		snprintf(why, len, "%u reclaim stalls/s >= %u", in->stalls_per_sec,
			 th->stall_rate_per_sec);
	else if (in->oom_recent)
		snprintf(why, len, "oom kill");
	else
		return false;
	return true;
}

enum dd_pstate dd_pressure_decide_why(const struct dd_pressure_input *in, enum dd_pstate prev,
				      const struct dd_pressure_thresholds *th, char *why,
				      size_t why_len)
{
	enum dd_pstate raw = DD_PSTATE_HIGH, base = DD_PSTATE_HIGH, next;
	char base_why[DD_PRESSURE_REASON_MAX] = "", sig[DD_PRESSURE_REASON_MAX];
	const char *reason = base_why;

	if ((unsigned int)prev >= DD_PSTATE_COUNT)
		prev = DD_PSTATE_HIGH;
	if (in->free_valid) {
		raw = free_level(in->free_pm, th);
		base = base_state(in->free_pm, prev, th, base_why, sizeof(base_why));
	} else {
		snprintf(base_why, sizeof(base_why), "free memory unknown");
	}
	next = base;
	if (pressure_signal(in, th, sig, sizeof(sig)) && raw + 1 > base && raw < DD_PSTATE_LOW) {
		next = raw + 1;
		reason = sig;
	}
	if (why)
		snprintf(why, why_len, "%s", next != prev ? reason : "");
	return next;
}

enum dd_pstate dd_pressure_decide(const struct dd_pressure_input *in, enum dd_pstate prev,
				  const struct dd_pressure_thresholds *th)
{
	return dd_pressure_decide_why(in, prev, th, NULL, 0);
}

/* ---- error strings ---- */

static void set_error(struct dd_pressure *p, char *dst, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void store_error(struct dd_pressure *p, char *dst, const char *msg)
{
	if (strcmp(dst, msg)) {
		snprintf(dst, DD_PRESSURE_ERROR_MAX, "%s", msg);
		p->snap.errors_seq++;
	}
}

/* Set one of the snapshot's error strings, bumping errors_seq if it changed. */
static void set_error(struct dd_pressure *p, char *dst, const char *fmt, ...)
{
	char msg[DD_PRESSURE_ERROR_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	store_error(p, dst, msg);
}

/* ---- file readers ---- */

static void say(char *buf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* snprintf() for messages, where truncating a long path is fine. */
static void say(char *buf, size_t len, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, len, fmt, ap);
	va_end(ap);
}

/* Read @path into @buf (NUL-terminated). Returns the length or -errno. */
static ssize_t read_text(const char *path, char *buf, size_t size)
{
	size_t len = 0;
	ssize_t n;
	int fd;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	while (len < size - 1) {
		n = read(fd, buf + len, size - 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			n = -errno;
			close(fd);
			return n;
		}
		if (n == 0)
			break;
		len += n;
	}
	close(fd);
	buf[len] = '\0';
	return len;
}

/* The value of "NAME:   123 kB" in meminfo-style @text, in bytes. -ENOENT, -EINVAL. */
static int meminfo_field(const char *text, const char *name, uint64_t *bytes)
{
	size_t n = strlen(name);
	const char *l = text;
	char *end;

	for (; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : NULL) {
		if (strncmp(l, name, n) || l[n] != ':')
			continue;
		errno = 0;
		*bytes = strtoull(l + n + 1, &end, 10) * 1024;
		if (errno || end == l + n + 1)
			return -EINVAL;
		return 0;
	}
	return -ENOENT;
}

static int read_meminfo(const char *path, uint64_t *total, uint64_t *avail, char *err, size_t len)
{
	static const char *const names[] = { "MemTotal", "MemAvailable" };
	uint64_t *vals[] = { total, avail };
	char text[TEXT_MAX];
	ssize_t n;
	int r;

	n = read_text(path, text, sizeof(text));
	if (n < 0) {
		say(err, len, "%s: %s", path, strerror((int)-n));
		return (int)n;
	}
	for (int i = 0; i < 2; i++) {
		r = meminfo_field(text, names[i], vals[i]);
		if (r == -ENOENT)
			say(err, len, "%s: no %s line", path, names[i]);
		else if (r)
			say(err, len, "%s: %s is not a number", path, names[i]);
		if (r)
			return r;
	}
	if (*total == 0) {
		say(err, len, "%s: MemTotal is 0", path);
		return -EINVAL;
	}
	return 0;
}

/* A cgroup file holding a byte count, or "max" (*unlimited). */
static int read_cgroup_u64(const char *dir, const char *name, uint64_t *v, bool *unlimited,
			   char *err, size_t len)
{
	char path[4096], text[64], *end;
	ssize_t n;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	n = read_text(path, text, sizeof(text));
	if (n < 0) {
		say(err, len, "%s: %s", path, strerror((int)-n));
		return (int)n;
	}
	*unlimited = !strncmp(text, "max", 3);
	if (*unlimited)
		return 0;
	errno = 0;
	*v = strtoull(text, &end, 10);
	if (errno || end == text || (*end && *end != '\n')) {
		say(err, len, "%s: not a number: '%.20s'", path, text);
		return -EINVAL;
	}
	return 0;
}

/* Free memory of the watched cgroup: limit - usage, capped by the host's MemAvailable. */
static int sample_cgroup(struct dd_pressure *p, uint64_t *total, uint64_t *free_bytes, char *err,
			 size_t len)
{
	uint64_t limit = 0, usage = 0, host_total = 0, host_avail = 0;
	bool unlimited, dummy;
	char host_err[DD_PRESSURE_ERROR_MAX];
	int r, host;

	r = read_cgroup_u64(p->cgroup_path, p->limit_name, &limit, &unlimited, err, len);
	if (!r)
		r = read_cgroup_u64(p->cgroup_path, p->usage_name, &usage, &dummy, err, len);
	if (r)
		return r;
	host = read_meminfo(p->meminfo_path, &host_total, &host_avail, host_err, sizeof(host_err));
	/* v1 spells "no limit" as PAGE_COUNTER_MAX pages: anything over the host total */
	if (unlimited || (!host && limit > host_total)) {
		if (host) {
			say(err, len, "%s has no limit and %s", p->cgroup_path, host_err);
			return host;
		}
		limit = host_total;
	}
	*total = limit;
	*free_bytes = limit > usage ? limit - usage : 0;
	if (!host && *free_bytes > host_avail)
		*free_bytes = host_avail;
	return 0;
}

static void sample_free(struct dd_pressure *p)
{
	struct dd_pressure_snapshot *s = &p->snap;
	char err[DD_PRESSURE_ERROR_MAX] = "";
	uint64_t total = 0, free_bytes = 0;
	int r;

	if (p->cgroup_path)
		r = sample_cgroup(p, &total, &free_bytes, err, sizeof(err));
	else
		r = read_meminfo(p->meminfo_path, &total, &free_bytes, err, sizeof(err));
	s->free_valid = !r && total;
	if (s->free_valid) {
		s->total_bytes = total;
		s->free_bytes = free_bytes < total ? free_bytes : total;
		s->free_pm = (uint32_t)(s->free_bytes * 10000 / total);
	}
	store_error(p, s->free_error, r ? err : "");
}

/* "12.34" -> 1234 without locale: PSI prints two decimals. -EINVAL if not a number. */
static int parse_pm(const char *s, uint32_t *pm)
{
	uint32_t whole = 0, frac = 0;
	const char *c = s;

	while (*c >= '0' && *c <= '9' && whole < 1000000)
		whole = whole * 10 + (uint32_t)(*c++ - '0');
	if (c == s)
		return -EINVAL;
	if (*c == '.') {
		c++;
		for (int k = 0; *c >= '0' && *c <= '9'; c++, k++)
			if (k < 2)
				frac += (uint32_t)(*c - '0') * (k ? 1 : 10);
	}
	if (*c && *c != ' ' && *c != '\n')
		return -EINVAL;
	*pm = whole * 100 + frac;
	return 0;
}

/* One "some avg10=.. avg60=.. avg300=.. total=.." line. -EINVAL if malformed. */
static int parse_psi_line(const char *line, uint32_t *avg10, uint32_t *avg60, uint64_t *total)
{
	const char *a10 = strstr(line, " avg10="), *a60 = strstr(line, " avg60=");
	const char *tot = strstr(line, " total=");
	const char *eol = strchr(line, '\n');
	char *end;

	if (!a10 || !a60 || !tot || (eol && (a10 > eol || a60 > eol || tot > eol)))
		return -EINVAL;
	if (parse_pm(a10 + 7, avg10) || parse_pm(a60 + 7, avg60) || *avg10 > 10000 ||
	    *avg60 > 10000)
		return -EINVAL;
	errno = 0;
	*total = strtoull(tot + 7, &end, 10);
	if (errno || end == tot + 7)
		return -EINVAL;
	return 0;
}

static int parse_psi(struct dd_pressure *p, const char *text, char *err, size_t len)
{
	struct dd_pressure_snapshot *s = &p->snap;
	const char *some = NULL, *full = NULL, *bad = NULL, *l;
	uint32_t f10 = 0, f60 = 0;
	uint64_t ftot = 0;

	for (l = text; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : NULL) {
		if (!strncmp(l, "some ", 5))
			some = l;
		else if (!strncmp(l, "full ", 5))
			full = l;
	}
	if (!some) {
		say(err, len, "%s: malformed, no 'some' line: '%.*s'", p->psi_path,
		    (int)strcspn(text, "\n") < 40 ? (int)strcspn(text, "\n") : 40, text);
		return -EINVAL;
	}
	if (parse_psi_line(some, &s->psi_some_avg10_pm, &s->psi_some_avg60_pm,
			   &s->psi_some_total_us))
		bad = some;
	else if (full && parse_psi_line(full, &f10, &f60, &ftot))
		bad = full;
	if (bad) {
		say(err, len, "%s: malformed line: '%.*s'", p->psi_path,
		    (int)strcspn(bad, "\n") < 60 ? (int)strcspn(bad, "\n") : 60, bad);
		return -EINVAL;
	}
	/* no full line (older kernels' cpu file style): full stays 0 */
	s->psi_full_avg10_pm = f10;
	s->psi_full_avg60_pm = f60;
	s->psi_full_total_us = ftot;
	return 0;
}

static void sample_psi(struct dd_pressure *p)
{
	char text[1024], err[DD_PRESSURE_ERROR_MAX] = "";
	ssize_t n;
	int r;

	n = read_text(p->psi_path, text, sizeof(text));
	if (n < 0) {
		r = (int)n;
		say(err, sizeof(err), "%s: %s", p->psi_path, strerror(-r));
	} else {
		r = parse_psi(p, text, err, sizeof(err));
	}
	p->snap.psi_valid = !r;
	store_error(p, p->snap.psi_error, r ? err : "");
}

/* ---- BPF ---- */

static void push_event(struct dd_pressure *p, const struct dd_pressure_recent_event *e)
{
	struct dd_pressure_snapshot *s = &p->snap;

	if (s->nr_events == DD_PRESSURE_EVENTS) {
		memmove(s->recent_events, s->recent_events + 1,
			sizeof(s->recent_events[0]) * (DD_PRESSURE_EVENTS - 1));
		s->nr_events--;
	}
	s->recent_events[s->nr_events++] = *e;
}

/* ring_buffer__consume() callback: one struct dd_pressure_event. */
static int on_event(void *ctx, void *data, size_t size)
{
	const struct dd_pressure_event *e = data;
	struct dd_pressure_recent_event r = { 0 };
	struct dd_pressure *p = ctx;

	if (size < sizeof(*e))
		return 0;
	p->snap.events++;
	r.at_ms = e->ts_ns / 1000000;
	r.type = e->type;
	r.pid = e->pid;
	r.value = e->value;
	r.cgroup_id = e->cgroup_id;
	memcpy(r.comm, e->comm, sizeof(r.comm));
	r.comm[sizeof(r.comm) - 1] = '\0';
	push_event(p, &r);
	if (e->type == DD_PEV_OOM) {
		p->last_oom_ms = r.at_ms;
		p->seen_oom = true;
	}
	return 0;
}

static void stop_bpf(struct dd_pressure *p)
{
	ring_buffer__free(p->rb);
	p->rb = NULL;
	pressure_bpf__destroy(p->skel);
	p->skel = NULL;
	p->snap.bpf_active = false;
}

static int bpf_fail(struct dd_pressure *p, int err, const char *what)
    __attribute__((warn_unused_result));

/* Record why BPF is off, undo what start_bpf() did, return @err. */
static int bpf_fail(struct dd_pressure *p, int err, const char *what)
{
	const char *hint = "";

	if (err == -EPERM)
		hint = " (needs root, or CAP_BPF and CAP_PERFMON)";
	else if (err == -EACCES)
		hint = " (rejected by the verifier: see libbpf's log)";
	set_error(p, p->snap.bpf_error, "pressure.bpf: %s failed: %s%s; using PSI alone", what,
		  strerror(-err), hint);
	stop_bpf(p);
	return err;
}

/* Attach every program by itself, so an error names the tracepoint. */
static int attach_all(struct dd_pressure *p)
{
	const struct bpf_object_skeleton *s = p->skel->skeleton;
	char what[128];

	for (int i = 0; i < s->prog_cnt; i++) {
		struct bpf_program *prog = *s->progs[i].prog;
		struct bpf_link *link = bpf_program__attach(prog);

		if (!link) {
			int err = -errno;

			snprintf(what, sizeof(what), "attach to %s",
				 bpf_program__section_name(prog));
			return bpf_fail(p, err, what);
		}
		*s->progs[i].link = link;
	}
	return 0;
}

static int start_bpf(struct dd_pressure *p, uint32_t stall_report_us)
{
	int err;

	p->skel = pressure_bpf__open();
	if (!p->skel)
		return bpf_fail(p, -errno, "open");
	p->skel->rodata->stall_report_ns = (uint64_t)stall_report_us * 1000;
	p->skel->rodata->watch_cgroup_id = p->cgroup_id;
	err = pressure_bpf__load(p->skel);
	if (err)
		return bpf_fail(p, err < 0 ? err : -EINVAL, "load");
	err = attach_all(p);
	if (err)
		return err;
	p->rb = ring_buffer__new(bpf_map__fd(p->skel->maps.events), on_event, p, NULL);
	if (!p->rb)
		return bpf_fail(p, -errno, "ring buffer");
	p->snap.bpf_active = true;
	return 0;
}

/* Stalls per second: the last complete window, or the current one if higher. */
static void update_stall_rate(struct dd_pressure *p, uint64_t stalls, uint64_t now)
{
	uint64_t elapsed, cur;

	if (!p->win_started || stalls < p->win_start_stalls || now < p->win_start_ms) {
		p->win_started = true; /* first sample, or an LRU eviction reset the entry */
		p->win_start_ms = now;
		p->win_start_stalls = stalls;
		p->last_win_rate = 0;
	}
	elapsed = now - p->win_start_ms;
	cur = (stalls - p->win_start_stalls) * 1000 /
	      (elapsed > STALL_WINDOW_MS ? elapsed : STALL_WINDOW_MS);
	if (elapsed >= STALL_WINDOW_MS) {
		p->last_win_rate = cur > UINT32_MAX ? UINT32_MAX : (uint32_t)cur;
		p->win_start_ms = now;
		p->win_start_stalls = stalls;
		cur = 0;
	}
	p->snap.stalls_per_sec = cur > p->last_win_rate ? (uint32_t)cur : p->last_win_rate;
}

static void sample_bpf(struct dd_pressure *p, uint64_t now)
{
	struct dd_pressure_snapshot *s = &p->snap;
	const volatile struct dd_pressure_counters *c;
	struct dd_pressure_cgroup_counters cg = { 0 };

	if (!p->skel)
		return;
	c = &p->skel->bss->counters;
	s->direct_reclaims = c->direct_reclaims;
	s->direct_stall_us = c->direct_stall_ns / 1000;
	s->memcg_reclaims = c->memcg_reclaims;
	s->memcg_stall_us = c->memcg_stall_ns / 1000;
	s->long_stalls = c->long_stalls;
	s->kswapd_wakes = c->kswapd_wakes;
	s->kswapd_awake_us = c->kswapd_awake_ns / 1000;
	s->throttles = c->throttles;
	s->throttle_delay_us = c->throttle_delay_us;
	s->ooms = c->ooms;
	s->events_lost = c->events_lost;
	if (p->cgroup_path) {
		/* ENOENT: nothing happened in the cgroup yet, all zero */
		bpf_map__lookup_elem(p->skel->maps.cgroup_counters, &p->cgroup_id,
				     sizeof(p->cgroup_id), &cg, sizeof(cg), 0);
		s->scope_stalls = cg.direct_reclaims + cg.memcg_reclaims;
		s->scope_stall_us = (cg.direct_stall_ns + cg.memcg_stall_ns) / 1000;
		s->scope_throttles = cg.throttles;
		s->scope_ooms = cg.ooms;
	} else {
		s->scope_stalls = s->direct_reclaims;
		s->scope_stall_us = s->direct_stall_us;
		s->scope_throttles = s->throttles;
		s->scope_ooms = s->ooms;
	}
	update_stall_rate(p, s->scope_stalls, now);
}

/* ---- PSI trigger ---- */

/*
 * Register @trigger on @fd; @used gets the trigger in force. Without
 * CAP_SYS_RESOURCE the kernel takes only windows that are whole multiples of
 * 2 s (measured here: root in this container lacks it, and "some 150000
 * 1000000" gets EINVAL), so then the window is rounded up and the stall
 * scaled with it, which keeps the stall fraction. Returns 0, 1 if adapted,
 * or -errno.
 */
static int write_trigger(int fd, const char *trigger, char *used, size_t len)
{
	unsigned long stall_us, window_us, window2;
	char kind[8];
	int err;

	say(used, len, "%s", trigger);
	if (write(fd, trigger, strlen(trigger) + 1) >= 0)
		return 0;
	err = -errno;
	if (err != -EINVAL || sscanf(trigger, "%7s %lu %lu", kind, &stall_us, &window_us) != 3 ||
	    !window_us || window_us % 2000000 == 0)
		return err;
	window2 = (window_us + 1999999) / 2000000 * 2000000;
	say(used, len, "%s %lu %lu", kind, stall_us * window2 / window_us, window2);
	if (write(fd, used, strlen(used) + 1) >= 0)
		return 1;
	say(used, len, "%s", "");
	return err;
}

static void start_trigger(struct dd_pressure *p, const char *trigger)
{
	struct statfs sf;
	int fd, r;

	if (!*trigger)
		return; /* configured off: PSI is polled every tick */
	/* Writing the trigger into a plain file would overwrite it. */
	if (statfs(p->psi_path, &sf) < 0) {
		set_error(p, p->snap.trigger_error, "%s: %s; no PSI trigger", p->psi_path,
			  strerror(errno));
		return;
	}
	if (sf.f_type != PROC_SUPER_MAGIC && sf.f_type != CGROUP2_SUPER_MAGIC) {
		set_error(p, p->snap.trigger_error,
			  "%s is not on procfs or cgroup2; no PSI trigger, polled every tick",
			  p->psi_path);
		return;
	}
	fd = open(p->psi_path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		set_error(p, p->snap.trigger_error, "%s: open for a trigger: %s", p->psi_path,
			  strerror(errno));
		return;
	}
	r = write_trigger(fd, trigger, p->snap.psi_trigger, sizeof(p->snap.psi_trigger));
	if (r < 0) {
		set_error(p, p->snap.trigger_error,
			  "%s: trigger '%s' rejected: %s; polled every tick", p->psi_path, trigger,
			  strerror(-r));
		close(fd);
		return;
	}
	if (r > 0)
		set_error(p, p->snap.trigger_error,
			  "%s: trigger '%s' needs CAP_SYS_RESOURCE (else windows are multiples "
			  "of 2 s); using '%s'",
			  p->psi_path, trigger, p->snap.psi_trigger);
	p->psi_fd = fd;
}

/* ---- sampling and deciding ---- */

static const char *source_name(const struct dd_pressure *p)
{
	if (p->snap.bpf_active)
		return p->snap.psi_valid ? "bpf+psi" : "bpf";
	return p->snap.psi_valid ? "psi" : "free";
}

static bool held(bool seen, uint64_t at_ms, uint64_t now, uint32_t hold_ms)
{
	return seen && now < at_ms + hold_ms;
}

static void push_transition(struct dd_pressure *p, uint64_t now, enum dd_pstate to, const char *why)
{
	struct dd_pressure_snapshot *s = &p->snap;
	struct dd_pressure_transition *t;

	if (s->nr_transitions == DD_PRESSURE_TRANSITIONS) {
		memmove(s->transitions, s->transitions + 1,
			sizeof(s->transitions[0]) * (DD_PRESSURE_TRANSITIONS - 1));
		s->nr_transitions--;
	}
	t = &s->transitions[s->nr_transitions++];
	t->at_ms = now;
	t->from = s->state;
	t->to = to;
	snprintf(t->reason, sizeof(t->reason), "%s", why);
}

/* Sample every source and decide. Returns 1 if the state changed. */
static int evaluate(struct dd_pressure *p, uint64_t now)
{
	struct dd_pressure_snapshot *s = &p->snap;
	struct dd_pressure_input in;
	char why[DD_PRESSURE_REASON_MAX];
	enum dd_pstate next;

	sample_free(p);
	sample_psi(p);
	sample_bpf(p, now);
	in = (struct dd_pressure_input){
		.free_valid = s->free_valid,
		.free_pm = s->free_pm,
		.psi_valid = s->psi_valid,
		.psi_some_avg10_pm = s->psi_some_avg10_pm,
		.psi_full_avg10_pm = s->psi_full_avg10_pm,
		.psi_triggered = held(p->seen_trigger, p->last_trigger_ms, now, p->hold_ms),
		.bpf_valid = s->bpf_active,
		.stalls_per_sec = s->stalls_per_sec,
		.oom_recent = held(p->seen_oom, p->last_oom_ms, now, p->hold_ms),
	};
	s->sampled_ms = now;
	s->source = source_name(p);
	next = dd_pressure_decide_why(&in, s->state, &p->th, why, sizeof(why));
	if (next == s->state)
		return 0;
	push_transition(p, now, next, why);
	s->state = next;
	s->since_ms = now;
	return 1;
}

int dd_pressure_tick(struct dd_pressure *p, uint64_t now_ms)
{
	/* Events the caller's loop has not dispatched yet (no syscall if there are none). */
	if (p->rb)
		ring_buffer__consume(p->rb);
	return evaluate(p, now_ms);
}

int dd_pressure_dispatch(struct dd_pressure *p, int fd)
{
	uint64_t now = dd_pressure_now_ms();
	int r;

	if (p->rb && fd == ring_buffer__epoll_fd(p->rb)) {
		r = ring_buffer__consume(p->rb);
		if (r < 0)
			return r;
	} else if (fd >= 0 && fd == p->psi_fd) {
		/*
		 * Nothing to read: the trigger's EPOLLPRI is cleared by the poll
		 * itself. POLLERR means the kernel dropped the trigger (its cgroup
		 * was removed); closing the fd also takes it out of the caller's epoll.
		 */
		struct pollfd pfd = { .fd = fd, .events = POLLPRI };

		if (poll(&pfd, 1, 0) == 1 && (pfd.revents & (POLLERR | POLLNVAL))) {
			close(p->psi_fd);
			p->psi_fd = -1;
			p->snap.psi_trigger[0] = '\0';
			set_error(p, p->snap.trigger_error,
				  "%s: the kernel dropped the PSI trigger; polled every tick",
				  p->psi_path);
		} else {
			p->snap.psi_triggers++;
			p->last_trigger_ms = now;
			p->seen_trigger = true;
		}
	} else {
		return -EBADF;
	}
	return evaluate(p, now);
}

/* ---- life cycle ---- */

/* Find the cgroup's files (v2 first) and its id. -ENOENT if it is no memory cgroup. */
static int setup_cgroup(struct dd_pressure *p, const char *path)
{
	char file[4096];
	struct stat st;

	if (stat(path, &st) < 0)
		return -errno;
	if (!S_ISDIR(st.st_mode))
		return -ENOTDIR;
	p->cgroup_id = st.st_ino;
	snprintf(file, sizeof(file), "%s/memory.max", path);
	if (access(file, R_OK) == 0) {
		p->limit_name = "memory.max";
		p->usage_name = "memory.current";
		return 0;
	}
	snprintf(file, sizeof(file), "%s/memory.limit_in_bytes", path);
	if (access(file, R_OK) == 0) {
		p->limit_name = "memory.limit_in_bytes";
		p->usage_name = "memory.usage_in_bytes";
		return 0;
	}
	return -ENOENT;
}

static int setup_paths(struct dd_pressure *p, const struct dd_pressure_opts *o)
{
	char file[4096];
	int r;

	p->meminfo_path = strdup(o->meminfo_path ? o->meminfo_path : DEFAULT_MEMINFO_PATH);
	if (!p->meminfo_path)
		return -ENOMEM;
	if (o->cgroup_path) {
		p->cgroup_path = strdup(o->cgroup_path);
		if (!p->cgroup_path)
			return -ENOMEM;
		r = setup_cgroup(p, o->cgroup_path);
		if (r)
			return r;
	}
	/* v2 has per-cgroup PSI; v1 has only the host's */
	if (o->cgroup_path)
		snprintf(file, sizeof(file), "%s/memory.pressure", o->cgroup_path);
	if (o->psi_path)
		p->psi_path = strdup(o->psi_path);
	else if (o->cgroup_path && access(file, R_OK) == 0)
		p->psi_path = strdup(file);
	else
		p->psi_path = strdup(DEFAULT_PSI_PATH);
	return p->psi_path ? 0 : -ENOMEM;
}

struct dd_pressure *dd_pressure_new(const struct dd_pressure_opts *o)
{
	static const struct dd_pressure_opts none;
	static const struct dd_pressure_thresholds def = DD_PRESSURE_THRESHOLDS_DEFAULT;
	struct dd_pressure *p;
	uint64_t now = dd_pressure_now_ms();
	int r;

	if (!o)
		o = &none;
	if (o->thresholds && dd_pressure_thresholds_check(o->thresholds)) {
		errno = EINVAL;
		return NULL;
	}
	p = calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	p->psi_fd = -1;
	p->th = o->thresholds ? *o->thresholds : def;
	p->snap.th = p->th;
	p->snap.state = DD_PSTATE_HIGH;
	p->snap.since_ms = now;
	p->hold_ms = o->signal_hold_ms ? o->signal_hold_ms : DEFAULT_HOLD_MS;
	r = setup_paths(p, o);
	if (r)
		goto err_free;
	if (o->use_bpf)
		start_bpf(p, o->stall_report_us ? o->stall_report_us : DEFAULT_STALL_REPORT_US);
	else
		set_error(p, p->snap.bpf_error, "disabled by configuration; using PSI alone");
	start_trigger(p, o->psi_trigger ? o->psi_trigger : DEFAULT_TRIGGER);
	evaluate(p, now);
	return p;

err_free:
	dd_pressure_free(p);
	errno = -r;
	return NULL;
}

void dd_pressure_free(struct dd_pressure *p)
{
	if (!p)
		return;
	stop_bpf(p);
	if (p->psi_fd >= 0)
		close(p->psi_fd);
	free(p->psi_path);
	free(p->meminfo_path);
	free(p->cgroup_path);
	free(p);
}

uint32_t dd_pressure_fd_events(const struct dd_pressure *p, int fd)
{
	if (p->rb && fd == ring_buffer__epoll_fd(p->rb))
		return EPOLLIN;
	if (fd >= 0 && fd == p->psi_fd)
		return EPOLLPRI; /* a PSI file is always EPOLLIN: never ask for it */
	return 0;
}

int dd_pressure_fds(struct dd_pressure *p, int *fds, int max)
{
	int n = 0, want = (p->rb != NULL) + (p->psi_fd >= 0);

	if (want > max)
		return -ENOSPC;
	if (p->rb)
		fds[n++] = ring_buffer__epoll_fd(p->rb);
	if (p->psi_fd >= 0)
		fds[n++] = p->psi_fd;
	return n;
}

const struct dd_pressure_snapshot *dd_pressure_get(const struct dd_pressure *p)
{
	return &p->snap;
}

const char *dd_pressure_source(const struct dd_pressure *p)
{
	return p->snap.source;
}

int dd_pressure_set_thresholds(struct dd_pressure *p, const struct dd_pressure_thresholds *th)
{
	if (dd_pressure_thresholds_check(th))
		return -EINVAL;
	p->th = *th;
	p->snap.th = *th;
	return 0;
}
