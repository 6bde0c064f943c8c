/* SPDX-License-Identifier: MIT */
/*
 * The part of fuzz_qmp.c and fuzz_http.c that is the same for every balloon
 * backend: the operations line, the scripted peer, and the checks of what
 * the calls return (balloon.h's contract).
 */
#ifndef DD_FUZZ_BALLOON_H
#define DD_FUZZ_BALLOON_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dedupd/reclaim/balloon.h"
#include "tests/fuzz/fuzz.h"

#define TIMEOUT_MS 100 /* only a stuck peer reaches it; the script never stalls */

static struct fz_peer peer;

static bool documented(int r)
{
	switch (-r) {
	case 0:
	case ECONNREFUSED:
	case ENOENT:
	case ETIMEDOUT:
	case ECONNRESET:
	case EPROTO:
	case ERANGE:
	case ENOTSUP:
	case ENOMEM:
		return true;
	}
	return false;
}

static void check_err(int r, const char *err, const char *op)
{
	if (getenv("FZ_VERBOSE")) /* for writing seeds: what each call made of the script */
		fprintf(stderr, "%s: %d %s\n", op, r, err);
	FZ_ASSERT(documented(r), "%s returned %d (%s): %s", op, r, strerror(-r), err);
	FZ_ASSERT(r < 0 || !err[0], "%s succeeded with err '%s'", op, err);
	FZ_ASSERT(r == 0 || err[0], "%s failed (%d) without a message", op, r);
	for (const char *p = err; *p; p++)
		FZ_ASSERT((unsigned char)*p >= 0x20 && *p != 0x7f,
			  "%s: control character %#x in err '%s'", op, (unsigned char)*p, err);
}

static void check_stats(const struct dd_balloon_stats *st)
{
	int gp = dd_balloon_guest_pressure(st);

	FZ_ASSERT(st->guest_ram_bytes > 0, "query without guest RAM: %lld",
		  (long long)st->guest_ram_bytes);
	FZ_ASSERT(st->balloon_bytes >= -1 && st->balloon_bytes <= st->guest_ram_bytes,
		  "balloon %lld of guest %lld", (long long)st->balloon_bytes,
		  (long long)st->guest_ram_bytes);
	FZ_ASSERT(st->target_bytes >= -1, "target %lld", (long long)st->target_bytes);
	FZ_ASSERT(st->guest_committed_bytes == -1 ||
		      (st->guest_committed_bytes >= 0 &&
		       st->guest_committed_bytes <= st->guest_total_bytes),
		  "committed %lld of total %lld", (long long)st->guest_committed_bytes,
		  (long long)st->guest_total_bytes);
	FZ_ASSERT(gp == -1 || (gp >= 0 && gp <= 100), "guest pressure %d", gp);
}

static void run_ops(struct dd_balloon *b, const char *ops)
{
	char word[16], err[512];
	unsigned long long bytes;
	int used, nops = 0;

	while (nops++ < 4 && sscanf(ops, " %15s%n", word, &used) == 1) {
		ops += used;
		if (!strcmp(word, "set") && sscanf(ops, " %llu%n", &bytes, &used) == 1) {
			ops += used;
			check_err(dd_balloon_set(b, bytes, err, sizeof(err)), err, "set");
		} else if (!strcmp(word, "query")) {
			struct dd_balloon_stats st;
			int r = dd_balloon_query(b, &st, err, sizeof(err));

			check_err(r, err, "query");
			if (r == 0 && getenv("FZ_VERBOSE"))
				fprintf(stderr,
					"  balloon %lld target %lld ram %lld total %lld free %lld "
					"available %lld committed %lld\n",
					(long long)st.balloon_bytes, (long long)st.target_bytes,
					(long long)st.guest_ram_bytes,
					(long long)st.guest_total_bytes,
					(long long)st.guest_free_bytes,
					(long long)st.guest_available_bytes,
					(long long)st.guest_committed_bytes);
			if (r == 0)
				check_stats(&st);
		} else {
			return;
		}
	}
}

/*
 * One input: ops is its first line (NUL-terminated), script the rest, for a
 * backend of kind.
 */
static void fz_balloon_run(enum dd_balloon_kind kind, const char *ops, const uint8_t *script,
			   size_t size)
{
	struct dd_balloon *b;
	int mark;

	if (!peer.path[0])
		fz_peer_init(&peer, "vmm.sock");
	mark = fz_fd_mark();
	peer.nchunks = fz_split(script, size, "@@\n", peer.chunks, FZ_PEER_CHUNKS);
	b = dd_balloon_new(kind, peer.path, TIMEOUT_MS);
	FZ_ASSERT(b, "dd_balloon_new: %s", strerror(errno));
	fz_peer_start(&peer);
	run_ops(b, ops);
	dd_balloon_free(b);
	fz_peer_stop(&peer);
	fz_fd_check(mark, "balloon backend");
}

/* Cut the first line off data into ops; false if there is none or it is too long. */
static bool fz_balloon_ops(const uint8_t *data, size_t size, char *ops, size_t len,
			   const uint8_t **script, size_t *script_size)
{
	const uint8_t *nl = memchr(data, '\n', size);

	if (!nl || (size_t)(nl - data) >= len)
		return false;
	memcpy(ops, data, (size_t)(nl - data));
	ops[nl - data] = 0;
	*script = nl + 1;
	*script_size = size - (size_t)(nl + 1 - data);
	return true;
}

#endif
