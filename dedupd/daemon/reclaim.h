/* SPDX-License-Identifier: MIT */
/*
 * The reclaim engine (DESIGN.md §7): per-client allocation parameters,
 * active-memory sampling, victim choice by the idle-memory tax, and the
 * actions by memory state — balloon (soft), page out (hard), throttle (low) —
 * each undone when the state recovers. It runs on its own thread, so a
 * balloon backend that stalls never stops the epoll loop; the main thread
 * only tells it about clients and pressure, and asks it for JSON.
 *
 * Admission control lives here too: a client that declares a minimum is
 * admitted only if every admitted minimum, plus an overhead per client, fits.
 */
#ifndef DD_RECLAIM_H
#define DD_RECLAIM_H

#include <json-c/json.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "bpf/pressure.h"
#include "conf/conf.h"
#include "scanner/scanner.h"

struct dd_reclaim_ops {
	/* Send a BALLOON request to the client's agent; 0 or -errno (-ENOTSUP:
	 * the application has no handler). Called on the reclaim thread. */
	int (*balloon)(void *agent, uint64_t bytes);
};

struct dd_reclaim;

/* NULL on failure (errno set). Does not start the thread. */
struct dd_reclaim *dd_reclaim_new(const struct dd_conf *conf, struct dd_scanner *s,
				  const struct dd_reclaim_ops *ops);
int dd_reclaim_start(struct dd_reclaim *r);

/* Stop the thread, deflate every balloon and lift every limit it set, free.
 * NULL-safe. */
void dd_reclaim_free(struct dd_reclaim *r);

/* The configuration changed (reload, dedupctl set): re-read the knobs and
 * match the clients to their [client.NAME] sections again. */
void dd_reclaim_configure(struct dd_reclaim *r, const struct dd_conf *conf);

/* The memory state and the figures behind it, every pressure tick. */
void dd_reclaim_pressure(struct dd_reclaim *r, enum dd_pstate state, uint64_t total_bytes,
			 uint64_t free_bytes);

/* A client's agent is connected: it can be sampled and reclaimed from.
 * 0, -ENOMEM. */
int dd_reclaim_add(struct dd_reclaim *r, uint64_t id, pid_t pid, uid_t uid, void *agent);

/*
 * A registration: shares (0: configured) and the declared minimum. The first
 * minimum a client declares, or a larger one, goes through admission control.
 * 0; -ENOSPC with the figures in err when the minimum does not fit; -ESRCH.
 */
int dd_reclaim_register(struct dd_reclaim *r, uint64_t id, uint32_t shares, uint64_t min_bytes,
			char *err, size_t errlen);

/*
 * The client's BALLOON_INFO: its backend (enum dd_backend_kind), the API
 * socket of a VMM backend, and the balloon size its handler reached. A VMM
 * socket must be a socket owned by the client's user (or the client is
 * root): dedupd connects to it as root. 0, -EINVAL/-EPERM with err, -ESRCH.
 */
int dd_reclaim_balloon_info(struct dd_reclaim *r, uint64_t id, uint32_t backend,
			    const char *path, int64_t bytes, int32_t status, char *err,
			    size_t errlen);

/* The client is gone. Waits while the reclaim thread is talking to it. */
void dd_reclaim_remove(struct dd_reclaim *r, uint64_t id);

/* `dedupctl clients`: every client with shares, f, rho, target, balloon,
 * the last actions; plus the host figures (new reference). */
struct json_object *dd_reclaim_json(struct dd_reclaim *r);

/* Totals for the metrics. */
struct dd_reclaim_totals {
	uint64_t clients;
	uint64_t balloon_bytes;	  /* all balloons, reached */
	uint64_t balloon_target_bytes;
	uint64_t pageout_bytes;	  /* advised since start */
	uint64_t throttled;	  /* clients held by a limit now */
	uint64_t actions;	  /* since start */
	uint64_t admission_refused;
	uint64_t reserved_bytes;  /* admitted minimums */
};
void dd_reclaim_totals(struct dd_reclaim *r, struct dd_reclaim_totals *t);

#endif
