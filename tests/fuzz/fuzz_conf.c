// SPDX-License-Identifier: MIT
/*
 * Fuzz the configuration file parser: dd_conf_load() on a file holding the
 * input (conf/conf.c has no from-string entry point; the file lives in a
 * private tmpfs directory).
 *
 * Invariants checked on top of the sanitizers, from conf/conf.h's contract:
 *  - all or nothing: a failed load leaves the struct exactly as it was, and
 *    the error names the file;
 *  - dd_conf_dump() of a loaded configuration is read back by dd_conf_load()
 *    into an equal struct (when every dumped line fits the reader's limit of
 *    198 characters: a documented limitation, see tests/fuzz/README.md);
 *  - dd_conf_apply_reload() from the defaults to the loaded configuration and
 *    every key's dd_conf_get() work on whatever was loaded.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf/conf.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char file[128], dump_file[128];
static const char base[] = "[scan]\npages_to_scan = 100\n[client.vm1]\nmatch_comm = qemu\n"
			   "balloon = qmp\nballoon_socket = /run/vm1.qmp\n";
static volatile size_t sink;

static void on_change(const char *key, const char *old_value, const char *new_value, bool applied,
		      void *arg)
{
	sink += strlen(key) + strlen(old_value) + strlen(new_value) + applied;
}

/* The longest line of text. */
static size_t longest_line(const char *text, size_t n)
{
	size_t best = 0, cur = 0;

	for (size_t i = 0; i < n; i++) {
		cur = text[i] == '\n' ? 0 : cur + 1;
		if (cur > best)
			best = cur;
	}
	return best;
}

static void round_trip(const struct dd_conf *c)
{
	struct dd_conf back;
	char *text = NULL, err[1024];
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	int r;

	FZ_ASSERT(f && dd_conf_dump(c, f) == 0, "dd_conf_dump failed");
	fclose(f);
	fz_write(dump_file, text, len);
	dd_conf_init(&back);
	r = dd_conf_load(&back, dump_file, err, sizeof(err));
	if (longest_line(text, len) <= 198) {
		FZ_ASSERT(r == 0, "the dump does not load: %s\n--- dump ---\n%s", err, text);
		FZ_ASSERT(dd_conf_equal(c, &back), "the dump loads into another configuration:\n%s",
			  text);
	}
	dd_conf_free(&back);
	free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct dd_conf c, before, def;
	char err[1024], buf[8192];
	const char *key;
	int r;

	if (!file[0]) {
		fz_path(file, sizeof(file), "dedupd.conf");
		fz_path(dump_file, sizeof(dump_file), "dump.conf");
	}
	/* Load over a configuration that already has a client and a changed
	 * key: updates and the all-or-nothing rule then have something to keep. */
	fz_write(file, base, strlen(base));
	dd_conf_init(&c);
	r = dd_conf_load(&c, file, err, sizeof(err));
	FZ_ASSERT(r == 0, "%s", err);
	fz_write(file, data, size);
	FZ_ASSERT(dd_conf_copy(&before, &c) == 0, "out of memory");

	r = dd_conf_load(&c, file, err, sizeof(err));
	if (r < 0) {
		FZ_ASSERT(dd_conf_equal(&c, &before), "a failed load (%s) changed the struct", err);
		FZ_ASSERT(!strncmp(err, file, strlen(file)), "error does not name the file: %s",
			  err);
		dd_conf_free(&before);
		dd_conf_free(&c);
		return 0;
	}
	FZ_ASSERT(err[0] == 0, "success with an error message: %s", err);
	round_trip(&c);
	for (size_t i = 0; (key = dd_conf_key_at(i)); i++) {
		if (!strncmp(key, "client.", 7))
			continue; /* "client.*.key" needs a client name */
		FZ_ASSERT(dd_conf_get(&c, key, buf, sizeof(buf)) >= 0, "get %s", key);
	}
	for (size_t i = 0; i < c.nclients; i++) {
		const struct dd_conf_client *cl = &c.clients[i];
		char k[128];

		snprintf(k, sizeof(k), "client.%s.balloon", cl->name);
		FZ_ASSERT(dd_conf_get(&c, k, buf, sizeof(buf)) >= 0, "get %s", k);
		sink += dd_conf_client_shares(&c, cl) + dd_conf_client_min_bytes(&c, cl) +
			dd_conf_client_max_bytes(&c, cl);
	}
	sink += (size_t)dd_conf_match_client(&c, "qemu-system-x86", 1000);
	dd_conf_init(&def);
	FZ_ASSERT(dd_conf_apply_reload(&def, &c, on_change, NULL) >= 0, "apply_reload");
	dd_conf_free(&def);
	dd_conf_free(&before);
	dd_conf_free(&c);
	return 0;
}
