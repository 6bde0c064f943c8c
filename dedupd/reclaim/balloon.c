// SPDX-License-Identifier: MIT
/*
 * Balloon backends outside the client process: the front that the reclaim
 * thread calls (see balloon.h). This file owns what all backends share:
 *
 *  - struct dd_balloon: which backend, and that backend's own state (a
 *    connection, caches of the guest's size). Backends live in
 *    balloon_qmp.c (QEMU's JSON monitor protocol) and balloon_http.c
 *    (Firecracker and Cloud Hypervisor, HTTP over a UNIX socket).
 *  - the checks every call gets before a backend sees it, and the figures
 *    derived from what a backend read: a guest's available and committed
 *    memory, and from those Hyper-V's "memory pressure".
 *  - small helpers: one-sentence errors, quoting a peer's text, reading a
 *    byte count out of JSON the same way for every peer.
 */
#include "dedupd/reclaim/balloon.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <time.h>

struct dd_balloon {
	enum dd_balloon_kind kind;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	const struct dd_balloon_backend *ops;
	void *be; /* the backend's state */
};

const char *dd_balloon_kind_name(enum dd_balloon_kind kind)
{
	switch (kind) {
	case DD_BALLOON_KIND_QMP:
		return "qmp";
	case DD_BALLOON_KIND_FIRECRACKER:
		return "firecracker";
	case DD_BALLOON_KIND_CLOUD_HYPERVISOR:
		return "cloud-hypervisor";
	}
	return NULL;
}

static const struct dd_balloon_backend *backend_of(enum dd_balloon_kind kind)
{
	switch (kind) {
	case DD_BALLOON_KIND_QMP:
		return &dd_balloon_qmp_backend;
	case DD_BALLOON_KIND_FIRECRACKER:
	case DD_BALLOON_KIND_CLOUD_HYPERVISOR:
		return &dd_balloon_http_backend;
	}
	return NULL;
}

struct dd_balloon *dd_balloon_new(enum dd_balloon_kind kind, const char *path, int timeout_ms)
{
	const struct dd_balloon_backend *ops = backend_of(kind);
	struct dd_balloon *b;

	if (!ops || !path || !*path ||
	    strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path) || timeout_ms < 1) {
		errno = EINVAL;
		return NULL;
	}
	b = calloc(1, sizeof(*b));
	if (!b)
		return NULL;
	b->kind = kind;
	snprintf(b->path, sizeof(b->path), "%s", path);
	b->ops = ops;
	b->be = ops->create(kind, path, timeout_ms);
	if (!b->be) {
		int e = errno;

		dd_balloon_free(b);
		errno = e;
		return NULL;
	}
	return b;
}

void dd_balloon_free(struct dd_balloon *b)
{
	if (!b)
		return;
	if (b->be)
		b->ops->destroy(b->be);
	free(b);
}

/* The callers' err may be NULL: backends always get a buffer. */
static char *err_buf(char *err, size_t errlen, char *own, size_t ownlen, size_t *len)
{
	if (err && errlen) {
		err[0] = '\0';
		*len = errlen;
		return err;
	}
	own[0] = '\0';
	*len = ownlen;
	return own;
}

int dd_balloon_set(struct dd_balloon *b, uint64_t bytes, char *err, size_t errlen)
{
	char own[8], *e;
	size_t len;

	e = err_buf(err, errlen, own, sizeof(own), &len);
	if (bytes > INT64_MAX)
		return dd_balloon_fail(
		    e, len, -ERANGE, "%s %s: a balloon of %llu bytes is too large",
		    dd_balloon_kind_name(b->kind), b->path, (unsigned long long)bytes);
	return b->ops->set(b->be, bytes, e, len);
}

static void stats_reset(struct dd_balloon_stats *st)
{
	st->balloon_bytes = -1;
	st->target_bytes = -1;
	st->guest_ram_bytes = -1;
	st->guest_total_bytes = -1;
	st->guest_free_bytes = -1;
	st->guest_available_bytes = -1;
	st->guest_committed_bytes = -1;
}

void dd_balloon_stats_guest(struct dd_balloon_stats *st, int64_t total, int64_t free_bytes,
			    int64_t available, int64_t caches)
{
	st->guest_total_bytes = total;
	st->guest_free_bytes = free_bytes;
	/*
	 * A guest driver that reports free memory and disk caches but not
	 * "available" (Linux has sent it since 4.10) gets their sum: the
	 * estimate that MemAvailable refines.
	 */
	if (available < 0 && free_bytes >= 0 && caches >= 0 && free_bytes <= INT64_MAX - caches)
		available = free_bytes + caches;
	st->guest_available_bytes = available;
}

/*
 * Figures that agree with each other whatever the peer said: a balloon no
 * larger than the guest, available memory no larger than the total, and
 * committed memory (what the guest sees and cannot give up without paging)
 * between 0 and the total.
 */
static void stats_derive(struct dd_balloon_stats *st)
{
	if (st->guest_ram_bytes >= 0 && st->balloon_bytes > st->guest_ram_bytes)
		st->balloon_bytes = st->guest_ram_bytes;
	if (st->guest_total_bytes < 0 || st->guest_available_bytes < 0)
		return;
	if (st->guest_available_bytes > st->guest_total_bytes)
		st->guest_available_bytes = st->guest_total_bytes;
	st->guest_committed_bytes = st->guest_total_bytes - st->guest_available_bytes;
}

int dd_balloon_query(struct dd_balloon *b, struct dd_balloon_stats *st, char *err, size_t errlen)
{
	char own[8], *e;
	size_t len;
	int r;

	e = err_buf(err, errlen, own, sizeof(own), &len);
	stats_reset(st);
	r = b->ops->query(b->be, st, e, len);
	if (r < 0) {
		stats_reset(st);
		return r;
	}
	stats_derive(st);
	return 0;
}

int dd_balloon_guest_pressure(const struct dd_balloon_stats *st)
{
	int64_t total = st->guest_total_bytes, committed = st->guest_committed_bytes;

	if (total <= 0 || committed < 0 || committed > total)
		return -1;
	/* Both fit in 63 bits; scale down first so that * 100 cannot overflow. */
	while (total > INT64_MAX / 200) {
		total >>= 1;
		committed >>= 1;
	}
	return (int)((committed * 100 + total / 2) / total);
}

uint64_t dd_balloon_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int dd_balloon_fail(char *err, size_t errlen, int r, const char *fmt, ...)
{
	va_list ap;

	if (err && errlen) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return r;
}

void dd_balloon_quote(char *out, size_t outlen, const char *text, size_t max)
{
	size_t n = 0;

	if (!outlen)
		return;
	for (size_t i = 0; text && i < max && text[i] && n + 1 < outlen; i++) {
		unsigned char c = (unsigned char)text[i];

		out[n++] = c < 0x20 || c == 0x7f ? ' ' : (char)c;
	}
	while (n && out[n - 1] == ' ')
		n--;
	out[n] = '\0';
}

int64_t dd_balloon_json_bytes(struct json_object *obj, const char *key)
{
	struct json_object *v;
	int64_t n;

	if (!json_object_is_type(obj, json_type_object) ||
	    !json_object_object_get_ex(obj, key, &v) || !json_object_is_type(v, json_type_int))
		return -1;
	/* json-c keeps integers above INT64_MAX as uint64 and clamps them here. */
	n = json_object_get_int64(v);
	if (n < 0 || (n == INT64_MAX && json_object_get_uint64(v) != (uint64_t)INT64_MAX))
		return -1;
	return n;
}
