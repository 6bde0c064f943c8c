/* SPDX-License-Identifier: MIT */
/*
 * Balloon backends that live outside the client process: QEMU virtio-balloon
 * over QMP, Firecracker and Cloud Hypervisor over their UNIX-socket HTTP APIs.
 * (The fourth backend, libdedup's dedup_set_balloon_handler() callback, talks
 * over the client's own dedupd connection and lives in the daemon.)
 *
 * One vocabulary for all of them: the *balloon size* is the memory taken from
 * the client, in bytes; 0 is a fully deflated balloon. Each backend converts:
 * QMP's `balloon` takes the target guest size (guest RAM minus the balloon),
 * Firecracker's `amount_mib` is the balloon size in MiB, Cloud Hypervisor's
 * `desired_balloon` is the balloon size in bytes.
 *
 * Calls block, each bounded as a whole by the timeout given to dd_balloon_new()
 * (a call may take several requests: the guest's size, the balloon, the
 * statistics): they run on the daemon's reclaim thread, never on the epoll
 * loop. One object is used by one thread at a time. Library code:
 * nothing here logs; failures come back as -errno with one sentence in err
 * that names the peer and the reason ("qmp /run/vm1.qmp: no reply within
 * 2000 ms", "firecracker /run/fc.sock: PATCH /balloon: HTTP 400: ...").
 * A failed call leaves the object usable: the next call reconnects.
 */
#ifndef DD_BALLOON_H
#define DD_BALLOON_H

#include <stddef.h>
#include <stdint.h>

enum dd_balloon_kind {
	DD_BALLOON_KIND_QMP = 2,	      /* = DD_CONF_BALLOON_QMP */
	DD_BALLOON_KIND_FIRECRACKER = 3,      /* = DD_CONF_BALLOON_FIRECRACKER */
	DD_BALLOON_KIND_CLOUD_HYPERVISOR = 4, /* = DD_CONF_BALLOON_CLOUD_HYPERVISOR */
};

/* What a backend knows; -1 in a field means "not reported by this peer". */
struct dd_balloon_stats {
	int64_t balloon_bytes;	 /* balloon size now (memory taken from the guest) */
	int64_t target_bytes;	 /* balloon size last asked for (by anyone) */
	int64_t guest_ram_bytes; /* the guest's memory: boot memory and hot-plugged */
	/* Guest-reported statistics (virtio-balloon stats, Firecracker's
	 * /balloon/statistics); -1 when the guest does not report them. */
	int64_t guest_total_bytes;     /* memory the guest sees now */
	int64_t guest_free_bytes;      /* free */
	int64_t guest_available_bytes; /* available (free + reclaimable cache) */
	int64_t guest_committed_bytes; /* total - available: what it uses */
};

struct dd_balloon;

/* "qmp", "firecracker", "cloud-hypervisor"; NULL for others. */
const char *dd_balloon_kind_name(enum dd_balloon_kind kind);

/*
 * A backend for the API socket at path. Does not connect yet (a VMM that is
 * still starting is not an error); the first call does.
 * timeout_ms (>= 1) bounds each call as a whole: connect, sends, every reply.
 * Returns NULL with errno set (EINVAL: bad kind, path too long or empty).
 */
struct dd_balloon *dd_balloon_new(enum dd_balloon_kind kind, const char *path, int timeout_ms);

/* Close the connection, free. NULL-safe. */
void dd_balloon_free(struct dd_balloon *b);

/*
 * Ask for a balloon of size bytes (0 deflates). Rounded down to what the
 * peer understands: 4 KiB pages (the virtio balloon's unit) for QMP and Cloud
 * Hypervisor, MiB for Firecracker. Does not wait for the guest to get there:
 * dd_balloon_query() tells how far it got.
 * Returns 0; -ECONNREFUSED/-ENOENT (no peer), -ETIMEDOUT (peer stalled),
 * -ECONNRESET (peer closed the connection before a whole reply),
 * -EPROTO (garbage, or an HTTP/QMP error: err has the peer's message),
 * -ERANGE (size not smaller than the guest's memory: nothing is sent),
 * -ENOTSUP (the VM has no balloon), -ENOMEM; rarely another socket error
 * (-EACCES: the socket's permissions, -EMFILE).
 * err (errlen bytes, may be NULL) gets one sentence on failure, "" on success.
 */
int dd_balloon_set(struct dd_balloon *b, uint64_t bytes, char *err, size_t errlen);

/*
 * Current balloon and guest figures; fields the peer does not report are -1
 * (QMP: target_bytes is the last size this object asked for; Firecracker:
 * balloon_bytes needs its statistics enabled); balloon_bytes is at most
 * guest_ram_bytes whatever the peer says. guest_available_bytes falls
 * back to free + disk caches for guests that report no "available";
 * guest_committed_bytes is derived here. Returns 0, or -errno as
 * dd_balloon_set() (not -ERANGE).
 */
int dd_balloon_query(struct dd_balloon *b, struct dd_balloon_stats *st, char *err, size_t errlen);

/*
 * Hyper-V's memory pressure of a guest: committed / visible * 100, rounded to
 * the nearest integer (0..100), from guest-reported statistics
 * (guest_committed_bytes / guest_total_bytes); -1 when they are not known.
 */
int dd_balloon_guest_pressure(const struct dd_balloon_stats *st);

/* ---- For the backends (balloon_qmp.c, balloon_http.c); callers need none of it ---- */

struct json_object;

/*
 * One backend. create() copies path (it fits a sockaddr_un, checked by
 * dd_balloon_new()) and does not connect; NULL with errno on failure.
 * set() and query() get a non-NULL err of errlen >= 1 and, for query(), st
 * with every field -1; they return as dd_balloon_set() and
 * dd_balloon_query(). destroy() closes and frees.
 */
struct dd_balloon_backend {
	void *(*create)(enum dd_balloon_kind kind, const char *path, int timeout_ms);
	void (*destroy)(void *be);
	int (*set)(void *be, uint64_t bytes, char *err, size_t errlen);
	int (*query)(void *be, struct dd_balloon_stats *st, char *err, size_t errlen);
};

extern const struct dd_balloon_backend dd_balloon_qmp_backend;	/* balloon_qmp.c */
extern const struct dd_balloon_backend dd_balloon_http_backend; /* balloon_http.c */

/*
 * Store what a guest reported (bytes, -1: not reported) in st; available
 * falls back to free + caches.
 */
void dd_balloon_stats_guest(struct dd_balloon_stats *st, int64_t total, int64_t free_bytes,
			    int64_t available, int64_t caches);

/* Monotonic clock in milliseconds: the backends' deadlines. */
uint64_t dd_balloon_now_ms(void);

/* Format err (printf-style) and return r: `return dd_balloon_fail(err, len, -EPROTO, ...)`. */
int dd_balloon_fail(char *err, size_t errlen, int r, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/*
 * Copy at most max bytes of a peer's text into out (outlen bytes) as one
 * printable line: control characters become spaces, the end is trimmed.
 */
void dd_balloon_quote(char *out, size_t outlen, const char *text, size_t max);

/*
 * A byte count or counter from a JSON object: obj[key] when it is an integer
 * in 0..INT64_MAX; -1 when obj is not an object, the key is missing, or the
 * value is not such an integer (QEMU reports an unknown virtio-balloon
 * statistic as 2^64 - 1).
 */
int64_t dd_balloon_json_bytes(struct json_object *obj, const char *key);

#endif
