/* SPDX-License-Identifier: MIT */
/*
 * Active-memory estimate of one client, as ESX computes it (Waldspurger 2002
 * §5.3): each sampling period n random resident pages are watched, and the
 * fraction touched, f = touched / n, feeds a slow and a fast exponentially
 * weighted moving average. The estimate is the largest of the slow average,
 * the fast average and the current sample, so it rises as soon as a client
 * starts using more memory and falls only slowly when it stops.
 *
 * Pure arithmetic: the daemon does the sampling (dd_scanner_sample_*) and
 * feeds the counts here.
 */
#ifndef DD_ACTIVE_H
#define DD_ACTIVE_H

#include <stdbool.h>
#include <stdint.h>

/* Gains per period. With 30 s periods the fast average forgets half of a
 * change in one period and the slow one in about five (2.5 minutes). */
#define DD_ACTIVE_FAST_GAIN 0.5
#define DD_ACTIVE_SLOW_GAIN 0.125

struct dd_active {
	double slow, fast, last; /* the averages and the last sample, 0..1 */
	double estimate;	 /* max(slow, fast, last) */
	uint64_t periods;	 /* samples taken (with at least one valid page) */
};

/* A client nothing is known about yet: estimate 1 (all active), so a new
 * client is not taxed before it has been measured. */
void dd_active_init(struct dd_active *a);

/* One period's result: touched of valid sampled pages. A period with no valid
 * page (nothing resident) changes nothing. Returns the new estimate. */
double dd_active_update(struct dd_active *a, uint32_t touched, uint32_t valid);

#endif
