// SPDX-License-Identifier: MIT
/*
 * The moving averages behind a client's active-memory estimate (active.h).
 * The first valid sample seeds both averages, so the estimate starts at the
 * first measurement instead of creeping up from zero or down from one.
 */
#include "dedupd/reclaim/active.h"

static double max3(double a, double b, double c)
{
	double m = a > b ? a : b;

	return m > c ? m : c;
}

void dd_active_init(struct dd_active *a)
{
	*a = (struct dd_active){ .slow = 1, .fast = 1, .last = 1, .estimate = 1 };
}

double dd_active_update(struct dd_active *a, uint32_t touched, uint32_t valid)
{
	double f;

	if (!valid)
		return a->estimate;
	if (touched > valid)
		touched = valid;
	f = (double)touched / valid;
	if (!a->periods) {
		a->slow = a->fast = f;
	} else {
		a->fast += DD_ACTIVE_FAST_GAIN * (f - a->fast);
		a->slow += DD_ACTIVE_SLOW_GAIN * (f - a->slow);
	}
	a->last = f;
	a->periods++;
	a->estimate = max3(a->slow, a->fast, a->last);
	return a->estimate;
}
