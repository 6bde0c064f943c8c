/* SPDX-License-Identifier: MIT */
/*
 * Prometheus metrics: the text exposition format (0.0.4) rendered from a
 * snapshot of the daemon, served at /metrics by libmicrohttpd on a thread of
 * its own, and written to a node_exporter textfile from the main loop.
 *
 * Threads: the HTTP thread reads only what is safe to read from any thread:
 * dd_scanner_stats(), dd_scanner_get_knobs(), dd_scanner_regions() (all
 * locked inside the scanner) and the pressure figures, which the main thread
 * copies in with dd_metrics_set_pressure() under the module's own mutex. Every
 * other function is called from the main thread.
 *
 * Nothing here logs: failures come back as -errno with a sentence in err.
 */
#ifndef DD_METRICS_H
#define DD_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "bpf/pressure.h"
#include "scanner/scanner.h"
#include "dedupd/daemon/reclaim.h"

/* Per-client series are kept for this many clients (those with the most
 * registered pages); the rest are summed under client="other", so a host
 * with thousands of short-lived clients cannot blow up Prometheus. */
#define DD_METRICS_MAX_CLIENTS 64

/* One client, summed over its regions. */
struct dd_metrics_client {
	uint64_t client_id;
	pid_t pid;
	char comm[16]; /* /proc/PID/comm, "" if gone */
	uint64_t regions;
	uint64_t pages_registered;
	uint64_t pages_sharing; /* its pages mapped onto store pages */
	uint64_t zero_pages;
	uint64_t vmas; /* VMAs of the whole process */
};

/* Everything one scrape shows. dd_metrics_format() reads nothing else. */
struct dd_metrics_snapshot {
	struct dd_scan_stats st;
	struct dd_scan_knobs knobs;
	bool pressure_valid;
	struct dd_pressure_snapshot ps;
	uint64_t pressure_transitions; /* state changes since start */
	uint64_t now_ms;	       /* CLOCK_MONOTONIC, the clock of ps */
	double process_cpu_sec;	       /* user + system, the whole daemon */
	uint64_t process_rss_bytes;
	uint64_t process_open_fds;
	double start_time_sec;			 /* Unix time the daemon started */
	const struct dd_metrics_client *clients; /* at most DD_METRICS_MAX_CLIENTS */
	size_t nclients;
	bool reclaim_valid;
	struct dd_reclaim_totals rt;	/* balloons, pageouts, limits, admission */
	struct dd_metrics_client other; /* the rest, summed; client_id unused */
	size_t nother;			/* how many clients are in other */
};

/* The reclaim engine whose totals a scrape shows (NULL: none). */
struct dd_metrics;
void dd_metrics_set_reclaim(struct dd_metrics *m, struct dd_reclaim *r);

/* Render s in the text exposition format. 0, or -EIO if writing failed. */
int dd_metrics_format(FILE *f, const struct dd_metrics_snapshot *s);

/*
 * Split clients[0..n) (any order) into the DD_METRICS_MAX_CLIENTS with the
 * most registered pages, sorted by client id in place at the front, and the
 * sum of the rest in *other. Returns how many were kept.
 */
size_t dd_metrics_cap_clients(struct dd_metrics_client *clients, size_t n,
			      struct dd_metrics_client *other);

/*
 * Parse "ADDR:PORT" ("127.0.0.1:9848", "[::1]:9848", "localhost:9848") into
 * a socket address; a host name is resolved. 0, or -EINVAL / -ENOENT with a
 * sentence in err.
 */
struct sockaddr_storage;
int dd_metrics_parse_listen(const char *listen, struct sockaddr_storage *ss, unsigned *sslen,
			    char *err, size_t errlen);

struct dd_metrics_opts {
	struct dd_scanner *scanner;
	const char *listen;		/* "ADDR:PORT"; "" or NULL: no HTTP listener */
	const char *textfile;		/* node_exporter *.prom; "" or NULL: none */
	uint32_t textfile_interval_sec; /* 1..3600 */
};

struct dd_metrics;

/*
 * Bind the listener and start the HTTP thread (call with the signals the
 * main loop handles already blocked: the thread inherits the mask), and
 * create the textfile timer. NULL with errno set and a sentence in err:
 * EINVAL (bad address), EADDRINUSE, EACCES, EADDRNOTAVAIL, ... from bind().
 */
struct dd_metrics *dd_metrics_new(const struct dd_metrics_opts *o, char *err, size_t errlen);

/* Stop the HTTP thread and close everything. Does not remove the textfile
 * (see dd_metrics_remove_textfile()). NULL-safe. */
void dd_metrics_free(struct dd_metrics *m);

/* The address the listener is bound to ("127.0.0.1:9848"), "" if none. */
const char *dd_metrics_address(const struct dd_metrics *m);

/* Copy the pressure figures for the HTTP thread (ps NULL: none). */
void dd_metrics_set_pressure(struct dd_metrics *m, const struct dd_pressure_snapshot *ps,
			     uint64_t transitions);

/* Render a scrape into a malloc'ed buffer. 0 or -ENOMEM. Thread-safe. */
int dd_metrics_render(struct dd_metrics *m, char **buf, size_t *len);

/* The textfile timer (a timerfd for the caller's epoll set), always >= 0. */
int dd_metrics_textfile_fd(const struct dd_metrics *m);

/* Change the textfile or its interval (SIGHUP); "" stops writing. */
void dd_metrics_set_textfile(struct dd_metrics *m, const char *path, uint32_t interval_sec);

/*
 * The timer fired: write the textfile atomically (a temporary file in the
 * same directory, then rename()). 0, 1 if there is nothing to write, or
 * -errno with a sentence in err.
 */
int dd_metrics_textfile_tick(struct dd_metrics *m, char *err, size_t errlen);

/* Remove the textfile, so that figures of a stopped daemon are not served. */
void dd_metrics_remove_textfile(struct dd_metrics *m);

#endif
