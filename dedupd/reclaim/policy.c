// SPDX-License-Identifier: MIT
/*
 * Min-funding revocation with an idle-memory tax (see policy.h). Everything
 * here is arithmetic over the caller's snapshot: no I/O, no globals, so
 * tests/check_reclaim.c checks it against hand-computed equilibria.
 */
#include "dedupd/reclaim/policy.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MIB (1024ull * 1024)

static double clamp01(double v)
{
	if (!(v > 0)) /* also NaN */
		return 0;
	return v > 1 ? 1 : v;
}

double dd_rc_tax_k(double tax_rate)
{
	if (!(tax_rate > 0))
		tax_rate = 0;
	if (tax_rate > DD_TAX_RATE_MAX)
		tax_rate = DD_TAX_RATE_MAX;
	return 1.0 / (1.0 - tax_rate);
}

double dd_rc_rho(uint32_t shares, uint64_t bytes, double active, double tax_rate)
{
	double f = clamp01(active), k = dd_rc_tax_k(tax_rate);

	if (!bytes)
		return INFINITY;
	return (double)(shares ? shares : 1) / ((double)bytes * (f + k * (1 - f)));
}

/* The active fraction after taken bytes went, idle ones first. */
static double active_after(const struct dd_rc_client *c, uint64_t taken)
{
	double a = clamp01(c->active) * (double)c->bytes;

	if (taken >= c->bytes)
		return 1;
	return clamp01(a / (double)(c->bytes - taken));
}

/* The victim among c[] with taken[] already planned (NULL: none). */
static ssize_t victim_after(const struct dd_rc_client *c, size_t n, double tax_rate,
			    const uint64_t *taken)
{
	ssize_t best = -1, over = -1;
	double best_rho = INFINITY;
	uint64_t over_by = 0;

	for (size_t i = 0; i < n; i++) {
		uint64_t t = taken ? taken[i] : 0, held = c[i].bytes - t;
		double rho;

		if (!c[i].eligible || held <= c[i].min_bytes)
			continue;
		if (c[i].max_bytes && held > c[i].max_bytes && held - c[i].max_bytes > over_by) {
			over = (ssize_t)i;
			over_by = held - c[i].max_bytes;
		}
		rho = dd_rc_rho(c[i].shares, held, active_after(&c[i], t), tax_rate);
		if (best < 0 || rho < best_rho) {
			best = (ssize_t)i;
			best_rho = rho;
		}
	}
	return over >= 0 ? over : best;
}

ssize_t dd_rc_victim(const struct dd_rc_client *c, size_t n, double tax_rate)
{
	return victim_after(c, n, tax_rate, NULL);
}

uint64_t dd_rc_plan(const struct dd_rc_client *c, size_t n, double tax_rate, uint64_t need,
		    uint64_t step, uint64_t *take)
{
	uint64_t planned = 0;

	memset(take, 0, n * sizeof(*take));
	if (!step) {
		step = need / 1024;
		if (step < MIB)
			step = MIB;
	}
	while (planned < need) {
		ssize_t v = victim_after(c, n, tax_rate, take);
		uint64_t held, room, chunk = need - planned < step ? need - planned : step;

		if (v < 0)
			break;
		held = c[v].bytes - take[v];
		room = held - c[v].min_bytes;
		if (c[v].max_bytes && held > c[v].max_bytes && held - c[v].max_bytes < chunk)
			chunk = held - c[v].max_bytes; /* down to the maximum, then by rho */
		if (chunk > room)
			chunk = room;
		take[v] += chunk;
		planned += chunk;
	}
	return planned;
}

uint64_t dd_rc_need(uint64_t total_bytes, uint64_t free_bytes, double high_free_percent)
{
	double want = (double)total_bytes * high_free_percent / 100.0;

	if (!(want > (double)free_bytes))
		return 0;
	return (uint64_t)(want - (double)free_bytes);
}

bool dd_rc_admit(uint64_t capacity_bytes, uint64_t admitted_bytes, size_t nadmitted,
		 uint64_t min_bytes, uint64_t overhead_bytes)
{
	/* In long double: sums of 64-bit sizes must not wrap. */
	long double sum = (long double)admitted_bytes + (long double)nadmitted * overhead_bytes +
			  min_bytes + overhead_bytes;

	return sum <= (long double)capacity_bytes;
}
