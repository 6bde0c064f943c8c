// SPDX-License-Identifier: MIT
/*
 * Fuzz dd_conf_set(), which serves `dedupctl set KEY=VALUE` (any user in
 * admin_group reaches it over the socket, through the daemon's admin handler,
 * which splits at the first '=' the same way) and command-line overrides.
 * The input is "KEY=VALUE" (a NUL or newline ends it); the configuration has
 * one client, vm1, so "client.vm1.key" resolves.
 *
 * Invariants checked on top of the sanitizers, from conf/conf.h's contract:
 *  - a refused value leaves the configuration unchanged, with a message;
 *  - an accepted value reads back with dd_conf_get(), and setting what get
 *    returned is accepted and changes nothing (get and set agree);
 *  - dd_conf_key_reloadable() and dd_conf_get() agree with set on which keys
 *    exist.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf/conf.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct dd_conf base;
static volatile int sink;

static void init_base(void)
{
	static const char text[] = "[client.vm1]\nmatch_comm = qemu\n";
	char path[128], err[1024];

	fz_path(path, sizeof(path), "base.conf");
	fz_write(path, text, sizeof(text) - 1);
	dd_conf_init(&base);
	if (dd_conf_load(&base, path, err, sizeof(err)) < 0) {
		fprintf(stderr, "%s\n", err);
		abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char in[8192], err[1024], v1[8192], v2[8192], *eq;
	struct dd_conf c, before;
	int r, g;

	if (size >= sizeof(in))
		return -1;
	if (!base.clients)
		init_base();
	memcpy(in, data, size);
	in[size] = 0;
	in[strcspn(in, "\n")] = 0;
	eq = strchr(in, '=');
	if (!eq)
		return 0;
	*eq = 0;
	FZ_ASSERT(dd_conf_copy(&c, &base) == 0 && dd_conf_copy(&before, &base) == 0, "no memory");

	r = dd_conf_set(&c, in, eq + 1, err, sizeof(err));
	sink += dd_conf_key_reloadable(in);
	g = dd_conf_get(&c, in, v1, sizeof(v1));
	if (r < 0) {
		FZ_ASSERT(dd_conf_equal(&c, &before), "refused '%s' = '%s' (%s) but changed it", in,
			  eq + 1, err);
		FZ_ASSERT(err[0], "refused '%s' without a message", in);
		if (r == -ENOENT)
			FZ_ASSERT(g == -ENOENT, "set: no key '%s' (%s), but get finds it", in, err);
		else
			FZ_ASSERT(g >= 0, "set: bad value for '%s' (%s), but get fails (%d)", in,
				  err, g);
	} else {
		FZ_ASSERT(g >= 0, "set '%s' accepted, get fails (%d)", in, g);
		r = dd_conf_set(&c, in, v1, err, sizeof(err));
		FZ_ASSERT(r == 0, "'%s' = '%s' accepted, but not its get value '%s': %s", in,
			  eq + 1, v1, err);
		g = dd_conf_get(&c, in, v2, sizeof(v2));
		FZ_ASSERT(g >= 0 && !strcmp(v1, v2), "'%s': get gave '%s', then '%s'", in, v1, v2);
	}
	dd_conf_free(&before);
	dd_conf_free(&c);
	return 0;
}
