// SPDX-License-Identifier: MIT
/*
 * The QEMU backend: virtio-balloon driven over QMP, QEMU's JSON monitor
 * protocol, on a UNIX stream socket (-qmp unix:PATH,server,nowait).
 *
 * A connection starts with QEMU's greeting ({"QMP": {...}}) and must
 * negotiate capabilities ({"execute": "qmp_capabilities"}) before any other
 * command. Every message is one JSON object on one line. A command carries
 * an "id" that QEMU copies into its reply, which is {"return": ...} or
 * {"error": {"class", "desc"}}. Events ({"event": ..., "data": ...}) arrive
 * whenever QEMU emits them, so also between a command and its reply: they
 * are skipped, and the latest BALLOON_CHANGE is remembered.
 *
 * QEMU's words differ from ours: `balloon` takes the guest's target size
 * and `query-balloon` reports the guest's size now ("actual"), both in
 * bytes, so the balloon is guest RAM minus either. Guest RAM is boot memory
 * plus hot-plugged DIMMs (query-memory-size-summary, QEMU >= 2.11), which is
 * what QEMU's balloon counts from; older QEMUs get the first "actual" seen.
 *
 * Guest statistics are QOM properties of the balloon device: setting
 * guest-stats-polling-interval makes QEMU ask the guest every N seconds,
 * and guest-stats holds the last answer. The device is found once per
 * connection: at /machine/peripheral/balloon0 (-device ...,id=balloon0, as
 * our VM harness starts it), else by listing the user-created and anonymous
 * devices for a child of a virtio-balloon type.
 *
 * Every call has one deadline (now + timeout): the socket is non-blocking
 * and every wait is a poll() bounded by it. A QMP error reply leaves the
 * connection in step and it is kept; any other failure (timeout, garbage,
 * hang-up) closes it, and the next call connects afresh.
 */
#include "dedupd/reclaim/balloon.h"

#include <errno.h>
#include <json-c/json.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* The longest message accepted: a qom-list of a large machine is ~20 KiB. */
#define QMP_MESSAGE_MAX (1u << 20)
#define QMP_PAGE_BYTES 4096u
/* How often QEMU polls the guest for statistics once we turn polling on. */
#define QMP_STATS_POLL_SECS 2
#define QMP_BALLOON_PATH "/machine/peripheral/balloon0"

struct qmp {
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	int timeout_ms;
	int fd; /* -1: not connected */
	char *buf;
	size_t len, cap;      /* bytes received and not yet consumed */
	uint64_t next_id;     /* of the next command */
	bool no_summary;      /* QEMU without query-memory-size-summary */
	int64_t ram_fallback; /* then: the first "actual" seen; -1 before */
	int64_t last_target;  /* the balloon size last asked for; -1: never */
	int64_t event_actual; /* "actual" of the latest BALLOON_CHANGE; -1: none yet */
	int stats_state;      /* this connection: 0 not looked for, 1 device found, -1 none */
	char stats_path[256]; /* the balloon device's QOM path when found */
};

/* One public call: its deadline, its error text, and how its last command failed. */
struct call {
	struct qmp *q;
	uint64_t deadline_ms;
	char *err;
	size_t errlen;
	bool qmp_error;	    /* the last failure was QEMU's error reply */
	char qmp_class[64]; /* and its class */
};

static int call_fail(struct call *c, int r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int call_fail(struct call *c, int r, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return dd_balloon_fail(c->err, c->errlen, r, "qmp %s: %s", c->q->path, msg);
}

static int remaining_ms(const struct call *c)
{
	uint64_t now = dd_balloon_now_ms();

	return now >= c->deadline_ms ? 0 : (int)(c->deadline_ms - now);
}

static void qmp_disconnect(struct qmp *q)
{
	if (q->fd >= 0)
		close(q->fd);
	q->fd = -1;
	q->len = 0;
	q->stats_state = 0;
}

/* Wait until the socket is ready for events, within the call's deadline. */
static int wait_fd(struct call *c, short events)
{
	struct pollfd p = { .fd = c->q->fd, .events = events };
	int n;

	do
		n = poll(&p, 1, remaining_ms(c));
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return call_fail(c, -errno, "poll: %s", strerror(errno));
	if (n == 0)
		return call_fail(c, -ETIMEDOUT, "no %s within %d ms",
				 events & POLLIN ? "reply" : "room to send", c->q->timeout_ms);
	return 0;
}

static int qmp_connect(struct call *c)
{
	struct qmp *q = c->q;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd, r;

	memcpy(sa.sun_path, q->path, strlen(q->path));
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return call_fail(c, -errno, "socket: %s", strerror(errno));
	while (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		r = -errno;
		if (r == -EINTR)
			continue;
		/* A UNIX socket whose listen backlog is full: QEMU is busy. */
		if (r == -EAGAIN && remaining_ms(c) > 0) {
			poll(NULL, 0, remaining_ms(c) < 10 ? remaining_ms(c) : 10);
			continue;
		}
		close(fd);
		if (r == -EAGAIN)
			return call_fail(c, -ETIMEDOUT, "connect: not accepted within %d ms",
					 q->timeout_ms);
		return call_fail(c, r, "connect: %s", strerror(-r));
	}
	q->fd = fd;
	return 0;
}

static int send_all(struct call *c, const char *p, size_t n)
{
	while (n) {
		ssize_t w = send(c->q->fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
		int r;

		if (w >= 0) {
			p += w;
			n -= (size_t)w;
			continue;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN) {
			r = wait_fd(c, POLLOUT);
			if (r < 0)
				return r;
			continue;
		}
		r = errno == EPIPE ? -ECONNRESET : -errno;
		return call_fail(c, r, "send: %s", strerror(-r));
	}
	return 0;
}

static int grow(struct qmp *q)
{
	size_t cap = q->cap ? q->cap * 2 : 4096;
	char *b;

	if (cap > QMP_MESSAGE_MAX)
		cap = QMP_MESSAGE_MAX;
	b = realloc(q->buf, cap);
	if (!b)
		return -ENOMEM;
	q->buf = b;
	q->cap = cap;
	return 0;
}

/*
 * The next line from QEMU, NUL-terminated in place without its "\r\n";
 * *used is what to consume() once the caller is done with it.
 */
static int read_line(struct call *c, char **line, size_t *used)
{
	struct qmp *q = c->q;

	for (;;) {
		char *nl = q->len ? memchr(q->buf, '\n', q->len) : NULL;
		ssize_t n;
		int r;

		if (nl) {
			*nl = '\0';
			if (nl > q->buf && nl[-1] == '\r')
				nl[-1] = '\0';
			*line = q->buf;
			*used = (size_t)(nl - q->buf) + 1;
			return 0;
		}
		if (q->len == q->cap) {
			if (q->cap >= QMP_MESSAGE_MAX)
				return call_fail(c, -EPROTO, "a message longer than %u bytes",
						 QMP_MESSAGE_MAX);
			if (grow(q) < 0)
				return call_fail(c, -ENOMEM, "out of memory");
		}
		r = wait_fd(c, POLLIN);
		if (r < 0)
			return r;
		n = recv(q->fd, q->buf + q->len, q->cap - q->len, MSG_DONTWAIT);
		if (n > 0) {
			q->len += (size_t)n;
			continue;
		}
		if (n == 0)
			return call_fail(c, -ECONNRESET, "connection closed%s",
					 q->len ? " in the middle of a message" : "");
		if (errno == EINTR || errno == EAGAIN)
			continue;
		return call_fail(c, -errno, "recv: %s", strerror(errno));
	}
}

static void consume(struct qmp *q, size_t used)
{
	memmove(q->buf, q->buf + used, q->len - used);
	q->len -= used;
}

/* The next message: a JSON object, or -EPROTO. */
static int read_message(struct call *c, struct json_object **msg)
{
	for (;;) {
		enum json_tokener_error jerr;
		struct json_object *o;
		char *line = NULL, text[64];
		size_t used = 0;
		int r;

		r = read_line(c, &line, &used);
		if (r < 0)
			return r;
		if (!line[strspn(line, " \t\r")]) {
			consume(c->q, used);
			continue;
		}
		o = json_tokener_parse_verbose(line, &jerr);
		if (!json_object_is_type(o, json_type_object)) {
			json_object_put(o);
			dd_balloon_quote(text, sizeof(text), line, 48);
			consume(c->q, used);
			return call_fail(c, -EPROTO, "not a QMP message: \"%s\"", text);
		}
		consume(c->q, used);
		*msg = o;
		return 0;
	}
}

static const char *json_str(struct json_object *obj, const char *key, const char *dflt)
{
	struct json_object *v;

	if (!json_object_object_get_ex(obj, key, &v) || !json_object_is_type(v, json_type_string))
		return dflt;
	return json_object_get_string(v);
}

static void note_event(struct qmp *q, struct json_object *msg)
{
	struct json_object *data;
	int64_t actual;

	if (strcmp(json_str(msg, "event", ""), "BALLOON_CHANGE") ||
	    !json_object_object_get_ex(msg, "data", &data))
		return;
	actual = dd_balloon_json_bytes(data, "actual");
	if (actual >= 0)
		q->event_actual = actual;
}

/*
 * QEMU's error reply to cmd. The balloon's own classes mean there is none
 * (DeviceNotActive; KVMMissingCap: KVM cannot balloon), as does a missing
 * command; anything else is the peer refusing what we asked.
 */
static int reply_error(struct call *c, const char *cmd, struct json_object *e)
{
	const char *cls = json_str(e, "class", "GenericError");
	char desc[256];
	int r = -EPROTO;

	dd_balloon_quote(desc, sizeof(desc), json_str(e, "desc", "(no description)"), 200);
	c->qmp_error = true;
	snprintf(c->qmp_class, sizeof(c->qmp_class), "%s", cls);
	if (!strcmp(cls, "DeviceNotActive") || !strcmp(cls, "KVMMissingCap") ||
	    !strcmp(cls, "CommandNotFound"))
		r = -ENOTSUP;
	return call_fail(c, r, "%s: %s", cmd, desc);
}

/* Read until the reply to command id, skipping events. *ret: its "return", to put. */
static int await_reply(struct call *c, const char *cmd, int64_t id, struct json_object **ret)
{
	for (;;) {
		struct json_object *msg, *v;
		int r;

		r = read_message(c, &msg);
		if (r < 0)
			return r;
		if (json_object_object_get_ex(msg, "event", NULL)) {
			note_event(c->q, msg);
			json_object_put(msg);
			continue;
		}
		if (!json_object_object_get_ex(msg, "id", &v) ||
		    !json_object_is_type(v, json_type_int) || json_object_get_int64(v) != id) {
			json_object_put(msg);
			return call_fail(c, -EPROTO, "%s: a reply to another command", cmd);
		}
		if (json_object_object_get_ex(msg, "error", &v)) {
			r = reply_error(c, cmd, v);
			json_object_put(msg);
			return r;
		}
		if (!json_object_object_get_ex(msg, "return", &v)) {
			json_object_put(msg);
			return call_fail(c, -EPROTO, "%s: a reply with neither return nor error",
					 cmd);
		}
		*ret = json_object_get(v);
		json_object_put(msg);
		return 0;
	}
}

/* Run cmd with args (taken, may be NULL); *ret (may be NULL) gets its return value. */
static int execute(struct call *c, const char *cmd, struct json_object *args,
		   struct json_object **ret)
{
	struct json_object *msg = json_object_new_object(), *rv = NULL;
	int64_t id = (int64_t)++c->q->next_id;
	const char *text;
	int r;

	if (!msg) {
		json_object_put(args);
		return call_fail(c, -ENOMEM, "out of memory");
	}
	json_object_object_add(msg, "execute", json_object_new_string(cmd));
	if (args)
		json_object_object_add(msg, "arguments", args);
	json_object_object_add(msg, "id", json_object_new_int64(id));
	text = json_object_to_json_string_ext(msg, JSON_C_TO_STRING_PLAIN);
	if (!text) {
		json_object_put(msg);
		return call_fail(c, -ENOMEM, "out of memory");
	}
	c->qmp_error = false;
	r = send_all(c, text, strlen(text));
	json_object_put(msg);
	if (r == 0)
		r = send_all(c, "\n", 1);
	if (r == 0)
		r = await_reply(c, cmd, id, &rv);
	if (r == 0 && ret)
		*ret = rv;
	else
		json_object_put(rv);
	return r;
}

static struct json_object *args1(const char *key, struct json_object *val)
{
	struct json_object *a = json_object_new_object();

	if (a)
		json_object_object_add(a, key, val);
	else
		json_object_put(val);
	return a;
}

/* Connected and past capability negotiation, or disconnected with an error. */
static int qmp_begin(struct call *c)
{
	struct json_object *greeting;
	int r;

	if (c->q->fd >= 0)
		return 0;
	r = qmp_connect(c);
	if (r < 0)
		return r;
	r = read_message(c, &greeting);
	if (r == 0) {
		if (!json_object_object_get_ex(greeting, "QMP", NULL))
			r = call_fail(c, -EPROTO, "no QMP greeting");
		json_object_put(greeting);
	}
	if (r == 0)
		r = execute(c, "qmp_capabilities", NULL, NULL);
	if (r < 0) {
		c->qmp_error = false;
		qmp_disconnect(c->q);
	}
	return r;
}

static int query_actual(struct call *c, int64_t *actual)
{
	struct json_object *rv;
	int r;

	r = execute(c, "query-balloon", NULL, &rv);
	if (r < 0)
		return r;
	*actual = dd_balloon_json_bytes(rv, "actual");
	json_object_put(rv);
	if (*actual <= 0)
		return call_fail(c, -EPROTO, "query-balloon: no \"actual\" size in the reply");
	return 0;
}

static int guest_ram(struct call *c, int64_t *ram)
{
	struct qmp *q = c->q;
	struct json_object *rv;
	int64_t base, plugged;
	int r;

	if (!q->no_summary) {
		r = execute(c, "query-memory-size-summary", NULL, &rv);
		if (r == 0) {
			base = dd_balloon_json_bytes(rv, "base-memory");
			plugged = dd_balloon_json_bytes(rv, "plugged-memory");
			json_object_put(rv);
			if (base <= 0 || (plugged > 0 && base > INT64_MAX - plugged))
				return call_fail(c, -EPROTO,
						 "query-memory-size-summary: no "
						 "\"base-memory\" in the reply");
			*ram = base + (plugged > 0 ? plugged : 0);
			return 0;
		}
		if (!c->qmp_error || strcmp(c->qmp_class, "CommandNotFound"))
			return r;
		q->no_summary = true; /* QEMU before 2.11 */
	}
	if (q->ram_fallback < 0) {
		r = query_actual(c, &q->ram_fallback);
		if (r < 0)
			return r;
	}
	*ram = q->ram_fallback;
	return 0;
}

/* A qom-get of one property of the balloon device. */
static struct json_object *qom_args(const char *path, const char *property)
{
	struct json_object *a = json_object_new_object();

	if (a) {
		json_object_object_add(a, "path", json_object_new_string(path));
		json_object_object_add(a, "property", json_object_new_string(property));
	}
	return a;
}

static int qom_get_interval(struct call *c, const char *path, int64_t *secs)
{
	struct json_object *rv;
	int r;

	r = execute(c, "qom-get", qom_args(path, "guest-stats-polling-interval"), &rv);
	if (r < 0)
		return r;
	*secs = json_object_is_type(rv, json_type_int) ? json_object_get_int64(rv) : -1;
	json_object_put(rv);
	return 0;
}

/* A child of a virtio-balloon type (-pci, -ccw, -device, -pci-transitional...) in dir. */
static int qom_search(struct call *c, const char *dir, char *out, size_t outlen)
{
	struct json_object *rv;
	int found = 0;
	int r;

	r = execute(c, "qom-list", args1("path", json_object_new_string(dir)), &rv);
	if (r < 0)
		return r;
	for (size_t i = 0;
	     json_object_is_type(rv, json_type_array) && i < json_object_array_length(rv) && !found;
	     i++) {
		struct json_object *e = json_object_array_get_idx(rv, i);

		if (!strncmp(json_str(e, "type", ""), "child<virtio-balloon-", 21) &&
		    *json_str(e, "name", "")) {
			snprintf(out, outlen, "%s/%s", dir, json_str(e, "name", ""));
			found = 1;
		}
	}
	json_object_put(rv);
	return found;
}

/*
 * Find the balloon device in QOM and make QEMU poll the guest for
 * statistics (unless someone already set an interval). QEMU refusing any of
 * it leaves the statistics unknown; only a broken connection is an error.
 */
static int find_balloon(struct call *c)
{
	static const char *const dirs[] = { "/machine/peripheral", "/machine/peripheral-anon" };
	struct qmp *q = c->q;
	char path[sizeof(q->stats_path)] = QMP_BALLOON_PATH;
	int64_t secs = -1;
	int r, found = 0;

	r = qom_get_interval(c, path, &secs);
	found = r == 0;
	for (size_t i = 0; !found && i < sizeof(dirs) / sizeof(dirs[0]); i++) {
		if (r < 0 && !c->qmp_error)
			return r;
		r = qom_search(c, dirs[i], path, sizeof(path));
		if (r > 0) {
			r = qom_get_interval(c, path, &secs);
			found = r == 0;
		}
	}
	if (r < 0 && !c->qmp_error)
		return r;
	q->stats_state = found ? 1 : -1;
	if (!found)
		return 0;
	snprintf(q->stats_path, sizeof(q->stats_path), "%s", path);
	if (secs == 0) {
		struct json_object *a = qom_args(path, "guest-stats-polling-interval");

		if (a)
			json_object_object_add(a, "value",
					       json_object_new_int(QMP_STATS_POLL_SECS));
		r = execute(c, "qom-set", a, NULL);
		if (r < 0 && !c->qmp_error)
			return r;
	}
	return 0;
}

/*
 * The guest's last statistics. QEMU keeps 2^64 - 1 for what the guest has
 * not reported, and "last-update" 0 until it has reported anything.
 */
static int guest_stats(struct call *c, struct dd_balloon_stats *st)
{
	struct qmp *q = c->q;
	struct json_object *rv, *s;
	int r;

	if (q->stats_state == 0) {
		r = find_balloon(c);
		if (r < 0)
			return r;
	}
	if (q->stats_state < 0)
		return 0;
	r = execute(c, "qom-get", qom_args(q->stats_path, "guest-stats"), &rv);
	if (r < 0)
		return c->qmp_error ? 0 : r;
	if (dd_balloon_json_bytes(rv, "last-update") > 0 &&
	    json_object_object_get_ex(rv, "stats", &s))
		dd_balloon_stats_guest(st, dd_balloon_json_bytes(s, "stat-total-memory"),
				       dd_balloon_json_bytes(s, "stat-free-memory"),
				       dd_balloon_json_bytes(s, "stat-available-memory"),
				       dd_balloon_json_bytes(s, "stat-disk-caches"));
	json_object_put(rv);
	return 0;
}

static int do_set(struct call *c, uint64_t bytes)
{
	struct qmp *q = c->q;
	int64_t ram;
	int r;

	r = qmp_begin(c);
	if (r == 0)
		r = guest_ram(c, &ram);
	if (r < 0)
		return r;
	if (bytes >= (uint64_t)ram)
		return call_fail(
		    c, -ERANGE,
		    "a balloon of %llu bytes is not smaller than the guest's %lld bytes",
		    (unsigned long long)bytes, (long long)ram);
	bytes -= bytes % QMP_PAGE_BYTES;
	r = execute(c, "balloon", args1("value", json_object_new_int64(ram - (int64_t)bytes)),
		    NULL);
	if (r < 0)
		return r;
	q->last_target = (int64_t)bytes;
	return 0;
}

static int do_query(struct call *c, struct dd_balloon_stats *st)
{
	int64_t ram, actual;
	int r;

	r = qmp_begin(c);
	if (r == 0)
		r = guest_ram(c, &ram);
	if (r == 0)
		r = query_actual(c, &actual);
	if (r < 0)
		return r;
	st->guest_ram_bytes = ram;
	st->balloon_bytes = actual < ram ? ram - actual : 0;
	st->target_bytes = c->q->last_target;
	return guest_stats(c, st);
}

static void *qmp_create(enum dd_balloon_kind kind, const char *path, int timeout_ms)
{
	struct qmp *q = calloc(1, sizeof(*q));

	if (!q)
		return NULL;
	snprintf(q->path, sizeof(q->path), "%s", path);
	q->timeout_ms = timeout_ms;
	q->fd = -1;
	q->ram_fallback = -1;
	q->last_target = -1;
	q->event_actual = -1;
	return q;
}

static void qmp_destroy(void *be)
{
	struct qmp *q = be;

	qmp_disconnect(q);
	free(q->buf);
	free(q);
}

static void call_init(struct call *c, struct qmp *q, char *err, size_t errlen)
{
	memset(c, 0, sizeof(*c));
	c->q = q;
	c->deadline_ms = dd_balloon_now_ms() + (uint64_t)q->timeout_ms;
	c->err = err;
	c->errlen = errlen;
}

/* A QMP error reply keeps the connection in step; anything else ends it. */
static int call_end(struct call *c, int r)
{
	if (r < 0 && !c->qmp_error)
		qmp_disconnect(c->q);
	if (r == 0)
		c->err[0] = '\0';
	return r;
}

static int qmp_set(void *be, uint64_t bytes, char *err, size_t errlen)
{
	struct call c;

	call_init(&c, be, err, errlen);
	return call_end(&c, do_set(&c, bytes));
}

static int qmp_query(void *be, struct dd_balloon_stats *st, char *err, size_t errlen)
{
	struct call c;

	call_init(&c, be, err, errlen);
	return call_end(&c, do_query(&c, st));
}

const struct dd_balloon_backend dd_balloon_qmp_backend = {
	.create = qmp_create,
	.destroy = qmp_destroy,
	.set = qmp_set,
	.query = qmp_query,
};
