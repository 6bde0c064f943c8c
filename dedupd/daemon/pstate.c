// SPDX-License-Identifier: MIT
/*
 * Memory-pressure glue (see pstate.h). The decision itself is the pure
 * dd_pressure_decide() in bpf/pressure.c; this file only wires it in.
 */
#include "dedupd/daemon/pstate.h"
#include "dedupd/daemon/log.h"
#include "dedupd/daemon/server.h"

#include <bpf/libbpf.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <unistd.h>

static int libbpf_to_log(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	char msg[512];
	size_t n;

	if (level == LIBBPF_DEBUG)
		return 0;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	n = strlen(msg);
	if (n && msg[n - 1] == '\n')
		msg[n - 1] = 0;
	dd_log(DD_LOG_DEBUG, "libbpf: %s", msg); /* the module reports the outcome */
	return 0;
}

static void thresholds(const struct dd_conf *c, struct dd_pressure_thresholds *th)
{
	*th = (struct dd_pressure_thresholds)DD_PRESSURE_THRESHOLDS_DEFAULT;
	th->high_pm = (uint32_t)lround(c->pressure.high_free_percent * 100);
	th->soft_pm = (uint32_t)lround(c->pressure.soft_free_percent * 100);
	th->hard_pm = (uint32_t)lround(c->pressure.hard_free_percent * 100);
	th->low_pm = (uint32_t)lround(c->pressure.low_free_percent * 100);
}

/* Log each source's problem when it appears or changes, and once when it
 * clears: a source that stays broken is not logged again because another
 * one came and went. */
static void log_errors(struct dd_pstate_ctl *pc)
{
	const struct dd_pressure_snapshot *s = dd_pressure_get(pc->p);
	const char *now[4] = { s->bpf_error, s->trigger_error, s->psi_error, s->free_error };
	static const char *const what[4] = { "eBPF", "the PSI trigger", "PSI", "free memory" };

	if (s->errors_seq == pc->errors_seen)
		return;
	pc->errors_seen = s->errors_seq;
	for (int i = 0; i < 4; i++) {
		if (!strcmp(now[i], pc->logged[i]))
			continue;
		if (now[i][0])
			log_warning("pressure: %s, ignoring", now[i]);
		else
			log_info("pressure: %s works again", what[i]);
		snprintf(pc->logged[i], sizeof(pc->logged[i]), "%s", now[i]);
	}
}

/* Why the pressure module refused o->cgroup_path, in words. */
static int cgroup_error(int e, const char *path)
{
	struct stat st;

	if ((e == ENOENT || e == ENOTDIR) && stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
		log_error("pressure: cgroup %s is no memory cgroup: it has neither memory.max (v2) "
			  "nor memory.limit_in_bytes (v1)", path);
		return -EINVAL;
	}
	return dd_log_errno(DD_LOG_ERR, -e, "pressure: cannot watch %s", path);
}

int dd_pstate_start(struct dd_pstate_ctl *pc, const struct dd_conf *conf, int ep)
{
	struct dd_pressure_thresholds th;
	struct dd_pressure_opts o = { 0 };
	struct itimerspec its = { 0 };
	int fds[DD_PSTATE_MAX_SRC - 1], n;

	memset(pc, 0, sizeof(*pc));
	thresholds(conf, &th);
	o.use_bpf = conf->pressure.bpf;
	o.cgroup_path = conf->pressure.cgroup[0] ? conf->pressure.cgroup : NULL;
	o.psi_trigger = conf->pressure.psi_trigger;
	o.thresholds = &th;
	libbpf_set_print(libbpf_to_log);
	pc->p = dd_pressure_new(&o);
	if (!pc->p && o.cgroup_path)
		return cgroup_error(errno, o.cgroup_path);
	if (!pc->p)
		return dd_log_errno(DD_LOG_ERR, -errno, "pressure: cannot watch host memory");
	n = dd_pressure_fds(pc->p, fds, DD_PSTATE_MAX_SRC - 1);
	for (int i = 0; i < n; i++) {
		struct epoll_event ev = { .events = dd_pressure_fd_events(pc->p, fds[i]) };

		pc->src[pc->nsrc] = (struct dd_pstate_src){ 0, fds[i] };
		ev.data.ptr = &pc->src[pc->nsrc++];
		epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
	}
	pc->src[pc->nsrc].kind = 1;
	pc->src[pc->nsrc].fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	if (pc->src[pc->nsrc].fd >= 0) {
		struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &pc->src[pc->nsrc] };
		uint32_t ms = conf->pressure.tick_millisecs ? conf->pressure.tick_millisecs : 250;

		its.it_interval.tv_sec = ms / 1000;
		its.it_interval.tv_nsec = (long)(ms % 1000) * 1000000L;
		its.it_value = its.it_interval;
		timerfd_settime(pc->src[pc->nsrc].fd, 0, &its, NULL);
		epoll_ctl(ep, EPOLL_CTL_ADD, pc->src[pc->nsrc].fd, &ev);
		pc->nsrc++;
	}
	log_errors(pc);
	log_info("pressure: watching %s through %s, state %s",
		 o.cgroup_path ? o.cgroup_path : "host memory", dd_pressure_source(pc->p),
		 dd_pstate_name(dd_pressure_get(pc->p)->state));
	pc->applied = DD_PSTATE_HIGH;
	return 0;
}

void dd_pstate_stop(struct dd_pstate_ctl *pc)
{
	for (int i = 0; i < pc->nsrc; i++)
		if (pc->src[i].kind == 1 && pc->src[i].fd >= 0)
			close(pc->src[i].fd);
	dd_pressure_free(pc->p);
	memset(pc, 0, sizeof(*pc));
}

bool dd_pstate_ready(struct dd_pstate_ctl *pc, struct dd_pstate_src *src)
{
	const struct dd_pressure_snapshot *s;
	int r;

	if (!pc->p)
		return false;
	if (src->kind == 1) {
		uint64_t n;

		if (read(src->fd, &n, sizeof(n)) < 0 && errno != EAGAIN)
			return false;
		r = dd_pressure_tick(pc->p, dd_pressure_now_ms());
	} else {
		r = dd_pressure_dispatch(pc->p, src->fd);
	}
	log_errors(pc);
	if (r <= 0)
		return false;
	pc->transitions++;
	s = dd_pressure_get(pc->p);
	if (s->nr_transitions) { /* oldest first: the newest is last */
		unsigned n = s->nr_transitions < DD_PRESSURE_TRANSITIONS ? s->nr_transitions
									  : DD_PRESSURE_TRANSITIONS;
		const struct dd_pressure_transition *t = &s->transitions[n - 1];

		log_info("pressure: %s -> %s: %s", dd_pstate_name(t->from), dd_pstate_name(t->to),
			 t->reason);
	}
	return true;
}

void dd_pstate_knobs(const struct dd_pstate_ctl *pc, const struct dd_conf *conf,
		     struct dd_scan_knobs *k)
{
	enum dd_pstate st = pc->p ? dd_pressure_get(pc->p)->state : DD_PSTATE_HIGH;

	dd_server_knobs(conf, k);
	if (st != DD_PSTATE_HIGH) {
		/* Sharing is the cheapest reclaim: scan at full rate. */
		uint64_t pts = (uint64_t)k->pages_to_scan * 16;

		k->pages_to_scan = pts > 10000000 ? 10000000 : (uint32_t)pts;
		k->sleep_millisecs /= 4;
		k->idle_backoff_ms_max = 0;
		/* ESX breaks large pages only when memory is short. */
		k->thp_split = true;
	}
}

void dd_pstate_reconfigure(struct dd_pstate_ctl *pc, const struct dd_conf *conf)
{
	struct dd_pressure_thresholds th;

	if (!pc->p)
		return;
	thresholds(conf, &th);
	if (dd_pressure_set_thresholds(pc->p, &th) < 0)
		log_error("pressure: the new thresholds are not decreasing; keeping the old ones");
}

#define ADD(o, k, v) json_object_object_add(o, k, v)

struct json_object *dd_pstate_json(const struct dd_pstate_ctl *pc, const struct dd_scan_knobs *k)
{
	const struct dd_pressure_snapshot *s = pc->p ? dd_pressure_get(pc->p) : NULL;
	struct json_object *o = json_object_new_object(), *in, *tr, *scan;
	uint64_t now = dd_pressure_now_ms();

	if (!s) {
		ADD(o, "state", json_object_new_string("high"));
		ADD(o, "source", json_object_new_string("none"));
		return o;
	}
	ADD(o, "state", json_object_new_string(dd_pstate_name(s->state)));
	ADD(o, "source", json_object_new_string(s->source));
	ADD(o, "held_sec", json_object_new_double((double)(now - s->since_ms) / 1000.0));
	in = json_object_new_object();
	ADD(in, "free_bytes", json_object_new_uint64(s->free_bytes));
	ADD(in, "total_bytes", json_object_new_uint64(s->total_bytes));
	ADD(in, "free_percent", json_object_new_double(s->free_pm / 100.0));
	ADD(in, "psi_some_avg10", json_object_new_double(s->psi_some_avg10_pm / 100.0));
	ADD(in, "psi_some_avg60", json_object_new_double(s->psi_some_avg60_pm / 100.0));
	ADD(in, "psi_full_avg10", json_object_new_double(s->psi_full_avg10_pm / 100.0));
	ADD(in, "psi_full_avg60", json_object_new_double(s->psi_full_avg60_pm / 100.0));
	ADD(in, "psi_some_total_us", json_object_new_uint64(s->psi_some_total_us));
	ADD(in, "psi_full_total_us", json_object_new_uint64(s->psi_full_total_us));
	ADD(in, "reclaim_stalls_per_sec", json_object_new_uint64(s->stalls_per_sec));
	ADD(in, "reclaim_stalls", json_object_new_uint64(s->scope_stalls));
	ADD(in, "reclaim_stall_us", json_object_new_uint64(s->scope_stall_us));
	ADD(in, "direct_reclaims", json_object_new_uint64(s->direct_reclaims));
	ADD(in, "memcg_reclaims", json_object_new_uint64(s->memcg_reclaims));
	ADD(in, "kswapd_wakes", json_object_new_uint64(s->kswapd_wakes));
	ADD(in, "throttles", json_object_new_uint64(s->throttles));
	ADD(in, "ooms", json_object_new_uint64(s->ooms));
	ADD(o, "inputs", in);
	ADD(o, "bpf_error", json_object_new_string(s->bpf_error));
	ADD(o, "psi_trigger", json_object_new_string(s->psi_trigger));
	scan = json_object_new_object();
	ADD(scan, "pages_to_scan", json_object_new_uint64(k->pages_to_scan));
	ADD(scan, "sleep_millisecs", json_object_new_uint64(k->sleep_millisecs));
	ADD(scan, "max_bytes_per_sec",
	    json_object_new_uint64((uint64_t)k->pages_to_scan * 4096 * 1000 /
				   (k->sleep_millisecs ? k->sleep_millisecs : 1)));
	ADD(o, "scan_rate", scan);
	tr = json_object_new_array();
	for (unsigned i = 0; i < s->nr_transitions && i < DD_PRESSURE_TRANSITIONS; i++) {
		const struct dd_pressure_transition *t = &s->transitions[i];
		struct json_object *e = json_object_new_object();

		ADD(e, "ago_sec", json_object_new_double((double)(now - t->at_ms) / 1000.0));
		ADD(e, "from", json_object_new_string(dd_pstate_name(t->from)));
		ADD(e, "to", json_object_new_string(dd_pstate_name(t->to)));
		ADD(e, "reason", json_object_new_string(t->reason));
		json_object_array_add(tr, e);
	}
	ADD(o, "transitions", tr);
	return o;
}
