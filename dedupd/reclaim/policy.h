/* SPDX-License-Identifier: MIT */
/*
 * Share-based reclaim with an idle-memory tax (ESX, Waldspurger OSDI 2002 §5),
 * as pure functions over a snapshot so that tests drive them without a
 * machine.
 *
 * A client holding P bytes with shares S, of which a fraction f is active,
 * has the adjusted shares-per-byte ratio
 *
 *	rho = S / (P * (f + k * (1 - f))),	k = 1 / (1 - tau)
 *
 * where tau is the tax rate: tau = 0 is pure proportional share, tau = 0.75
 * (the default, as in ESX) makes an idle byte cost four active ones. Under
 * pressure memory is taken from the client with the lowest rho (min-funding
 * revocation); taking memory lowers P and so raises rho, and the plan below
 * repeats that choice in small steps, which spreads a large target over
 * several clients exactly as iterated revocation would.
 *
 * Reclaim takes idle memory first: the active bytes A = f * P stay, so after
 * t bytes are taken the client's active fraction is min(1, A / (P - t)).
 */
#ifndef DD_POLICY_H
#define DD_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define DD_TAX_RATE_MAX 0.99

struct dd_rc_client {
	uint32_t shares;    /* S; 0 is treated as 1 */
	uint64_t bytes;     /* P: memory the client holds now */
	uint64_t min_bytes; /* never planned below this */
	uint64_t max_bytes; /* 0: no maximum; above it a client is reclaimed first */
	double active;      /* f, clamped to 0..1 */
	bool eligible;      /* it has an action that can take memory in this state */
};

/* k = 1 / (1 - tau), tau clamped to 0..DD_TAX_RATE_MAX. */
double dd_rc_tax_k(double tax_rate);

/* rho of one client; +inf for a client that holds nothing. */
double dd_rc_rho(uint32_t shares, uint64_t bytes, double active, double tax_rate);

/*
 * The client to reclaim from now: a client above its maximum first (the one
 * furthest above), else the eligible client with the lowest rho that still
 * holds more than its minimum. -1 if there is none.
 */
ssize_t dd_rc_victim(const struct dd_rc_client *c, size_t n, double tax_rate);

/*
 * Plan to take need bytes: fills take[0..n) (bytes per client, a multiple of
 * step except where a minimum or the need cuts a step short) by repeating the
 * victim choice over the shrinking allocations. Returns the bytes planned,
 * less than need when minimums leave too little. step 0 picks one: need/1024,
 * at least 1 MiB.
 */
uint64_t dd_rc_plan(const struct dd_rc_client *c, size_t n, double tax_rate, uint64_t need,
		    uint64_t step, uint64_t *take);

/*
 * Bytes to reclaim so that free memory gets back to the high threshold:
 * total * high_free_percent / 100 - free, or 0.
 */
uint64_t dd_rc_need(uint64_t total_bytes, uint64_t free_bytes, double high_free_percent);

/*
 * Admission (ESX powers a VM on only if its reservation fits): may a client
 * with min_bytes join clients whose admitted minimums sum to admitted_bytes?
 * Every client is charged overhead_bytes besides its minimum. capacity is host
 * memory (or the watched cgroup's limit). true if
 * admitted + overheads + min + overhead <= capacity.
 */
bool dd_rc_admit(uint64_t capacity_bytes, uint64_t admitted_bytes, size_t nadmitted,
		 uint64_t min_bytes, uint64_t overhead_bytes);

#endif
