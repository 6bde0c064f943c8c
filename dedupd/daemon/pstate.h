/* SPDX-License-Identifier: MIT */
/*
 * The daemon's side of memory pressure: owns the bpf/ pressure module, puts
 * its fds and a tick timer in the epoll loop, logs transitions and errors
 * once, turns the state into a scan rate, and renders `dedupctl state`.
 */
#ifndef DD_PSTATE_H
#define DD_PSTATE_H

#include <json-c/json.h>
#include <stdbool.h>

#include "bpf/pressure.h"
#include "conf/conf.h"
#include "scanner/scanner.h"

#define DD_PSTATE_MAX_SRC 8

struct dd_pstate_src { /* epoll data.ptr for every pressure fd */
	int kind; /* 0: module fd, 1: tick timer */
	int fd;
};

struct dd_pstate_ctl {
	struct dd_pressure *p;
	struct dd_pstate_src src[DD_PSTATE_MAX_SRC];
	int nsrc;
	uint32_t errors_seen;
	char logged[4][DD_PRESSURE_ERROR_MAX]; /* each source's error as last logged */
	enum dd_pstate applied; /* the state the scan rate was last set for */
	uint64_t transitions;   /* state changes since start, for the metrics */
};

/* Start the pressure module and add its fds to ep. 0, or -errno after logging
 * (a bad cgroup path; BPF or PSI failing is not an error: it is logged once). */
int dd_pstate_start(struct dd_pstate_ctl *pc, const struct dd_conf *conf, int ep);
void dd_pstate_stop(struct dd_pstate_ctl *pc);

/* An fd from src is ready. true if the state changed. */
bool dd_pstate_ready(struct dd_pstate_ctl *pc, struct dd_pstate_src *src);

/* The scan knobs for conf under the current state: the configured rate in
 * high, 16x more pages at a quarter of the sleep in soft and worse. */
void dd_pstate_knobs(const struct dd_pstate_ctl *pc, const struct dd_conf *conf,
		     struct dd_scan_knobs *k);

/* New thresholds after a reload. */
void dd_pstate_reconfigure(struct dd_pstate_ctl *pc, const struct dd_conf *conf);

/* `dedupctl state` as JSON (new reference). */
struct json_object *dd_pstate_json(const struct dd_pstate_ctl *pc, const struct dd_scan_knobs *k);

#endif
