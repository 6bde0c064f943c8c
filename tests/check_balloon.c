// SPDX-License-Identifier: MIT
/*
 * Unit tests for dedupd/reclaim/balloon*.c against fake VMMs. Each test starts
 * one fake peer on a UNIX socket in a forked process group (one process per
 * connection, so a stalled connection never blocks the next), with the VM's
 * state and what the fake saw in a shared mapping the test reads:
 *
 *  - QEMU 7.2's QMP: greeting, capability negotiation required first (any
 *    command before it is a recorded violation and gets QEMU's refusal),
 *    "id" echoed, an unrelated event before every reply and BALLOON_CHANGE
 *    after a `balloon`, query-balloon/query-memory-size-summary/qom-list/
 *    qom-get/qom-set answered as QEMU does (2^64 - 1 for an unreported guest
 *    statistic, DeviceNotActive without a balloon).
 *  - Firecracker and Cloud Hypervisor: HTTP/1.1 with keep-alive; the method,
 *    path, Content-Type and body of every request are checked (a mismatch is
 *    a recorded violation and a 400/404), and the last body is kept so tests
 *    compare it byte for byte.
 *
 * Every test checks that the backend's guest sizes and units come out right,
 * that the fake recorded no violation, and that no file descriptor is left
 * behind (and all that the backend opens are close-on-exec). Bad peers: no
 * socket, nobody listening, silence (-ETIMEDOUT within about the timeout),
 * a hang-up mid-reply, garbage, truncated JSON, the peer's own error; after
 * each the next call against a good peer succeeds.
 */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dedupd/reclaim/balloon.h"

Suite *balloon_suite(void);

#define MIB (1ll << 20)
#define GIB (1ll << 30)
#define U64_MAX_TEXT "18446744073709551615"
#define MAX_FDS 1024

enum fake_kind { FAKE_QMP, FAKE_FC, FAKE_CH };

enum fake_mode {
	GOOD,
	SILENT,	   /* accepts, never answers (QMP: not even the greeting) */
	STALL,	   /* QMP: greeting and negotiation, then silence */
	HANGUP,	   /* closes in the middle of a reply */
	GARBAGE,   /* answers with something that is not the protocol */
	TRUNCATED, /* a complete message whose JSON is cut short */
	REFUSE,	   /* the peer's own error for a balloon change */
};

/* The fake VM and what the fake saw, shared with its processes. */
struct fake {
	int mode; /* enum fake_mode, read at every request */
	enum fake_kind kind;
	int64_t ram_bytes;
	int64_t balloon_bytes; /* the guest's balloon now: the fake guest obeys at once */
	int64_t target_bytes;  /* Firecracker, Cloud Hypervisor: as configured */
	bool has_balloon;
	bool qmp_summary;   /* QEMU >= 2.11: query-memory-size-summary */
	char qom_path[128]; /* the balloon device in QOM, "" for none */
	int64_t poll_secs;  /* guest statistics polling (QEMU, Firecracker) */
	bool guest_silent;  /* QEMU: the guest's driver never reports statistics */
	bool ch_stats;	    /* Cloud Hypervisor serves vm.balloon-stats */
	bool ch_zones;	    /* Cloud Hypervisor: RAM in two memory zones, one hot-plugged */
	int64_t free_bytes, avail_bytes, caches_bytes; /* avail -1: not reported */

	int connections;
	int requests;
	int events_sent;
	int violations;
	char violation[256];
	int balloon_cmds; /* QMP balloon / FC PATCH /balloon / CH vm.resize that succeeded */
	int64_t qmp_balloon_value;
	int stats_requests;
	char method[16], path[256], ctype[128], body[4096]; /* the last request with a body */
};

static struct fake *fk;
static pid_t fake_pid = -1;
static char sock_dir[64] = "/tmp/dd-balloon-XXXXXX"; /* one for the run, made by main() */
static char sock_path[108];

/* ---- fake peers: plumbing ------------------------------------------------ */

struct conn {
	int fd;
	char buf[16384];
	size_t len;
};

static void violation(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void violation(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(fk->violation, sizeof(fk->violation), fmt, ap);
	va_end(ap);
	__atomic_add_fetch(&fk->violations, 1, __ATOMIC_SEQ_CST);
}

static void put(int fd, const char *s)
{
	size_t n = strlen(s);

	while (n) {
		ssize_t w = send(fd, s, n, MSG_NOSIGNAL);

		if (w <= 0)
			return;
		s += w;
		n -= (size_t)w;
	}
}

static void putf(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void putf(int fd, const char *fmt, ...)
{
	char buf[8192];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	put(fd, buf);
}

/* Read until the client goes away. */
static void drain(int fd)
{
	char b[512];

	while (read(fd, b, sizeof(b)) > 0)
		;
}

/* One line without its "\r\n" into out; -1 at EOF. */
static int conn_line(struct conn *cn, char *out, size_t outlen)
{
	for (;;) {
		char *nl = memchr(cn->buf, '\n', cn->len);
		ssize_t n;

		if (nl) {
			size_t l = (size_t)(nl - cn->buf);

			snprintf(out, outlen, "%.*s", (int)(l && nl[-1] == '\r' ? l - 1 : l),
				 cn->buf);
			memmove(cn->buf, nl + 1, cn->len - l - 1);
			cn->len -= l + 1;
			return 0;
		}
		if (cn->len == sizeof(cn->buf))
			return -1;
		n = read(cn->fd, cn->buf + cn->len, sizeof(cn->buf) - cn->len);
		if (n <= 0)
			return -1;
		cn->len += (size_t)n;
	}
}

static int conn_bytes(struct conn *cn, char *out, size_t n)
{
	while (cn->len < n) {
		ssize_t r = read(cn->fd, cn->buf + cn->len, sizeof(cn->buf) - cn->len);

		if (r <= 0)
			return -1;
		cn->len += (size_t)r;
	}
	memcpy(out, cn->buf, n);
	out[n] = '\0';
	memmove(cn->buf, cn->buf + n, cn->len - n);
	cn->len -= n;
	return 0;
}

static int mode(void)
{
	return __atomic_load_n(&fk->mode, __ATOMIC_SEQ_CST);
}

static void set_mode(enum fake_mode m)
{
	__atomic_store_n(&fk->mode, m, __ATOMIC_SEQ_CST);
}

static const char *jstr(struct json_object *o, const char *key)
{
	struct json_object *v;

	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

/* ---- fake QEMU (QMP) ------------------------------------------------------ */

#define RET(...) snprintf(out, outlen, "\"return\": " __VA_ARGS__)
#define ERR(cls, ...)                                                                              \
	do {                                                                                       \
		int n_ =                                                                           \
		    snprintf(out, outlen, "\"error\": {\"class\": \"%s\", \"desc\": \"", cls);     \
		n_ += snprintf(out + n_, outlen - (size_t)n_, __VA_ARGS__);                        \
		snprintf(out + n_, outlen - (size_t)n_, "\"}");                                    \
	} while (0)

static void qmp_stats(char *out, size_t outlen)
{
	char avail[32];

	if (fk->poll_secs <= 0 || fk->guest_silent) { /* QEMU's initial values */
		RET("{\"stats\": {\"stat-swap-out\": " U64_MAX_TEXT
		    ", \"stat-available-memory\": " U64_MAX_TEXT
		    ", \"stat-free-memory\": " U64_MAX_TEXT ", \"stat-total-memory\": " U64_MAX_TEXT
		    "}, \"last-update\": 0}");
		return;
	}
	if (fk->avail_bytes < 0)
		snprintf(avail, sizeof(avail), U64_MAX_TEXT);
	else
		snprintf(avail, sizeof(avail), "%lld", (long long)fk->avail_bytes);
	RET("{\"stats\": {\"stat-swap-out\": 0, \"stat-available-memory\": %s, "
	    "\"stat-free-memory\": %lld, \"stat-minor-faults\": 131072, "
	    "\"stat-major-faults\": 17, \"stat-total-memory\": %lld, \"stat-swap-in\": 0, "
	    "\"stat-disk-caches\": %lld, \"stat-htlb-pgalloc\": 0, \"stat-htlb-pgfail\": 0}, "
	    "\"last-update\": 1700000000}",
	    avail, (long long)fk->free_bytes, (long long)(fk->ram_bytes - fk->balloon_bytes),
	    (long long)fk->caches_bytes);
}

static void qmp_qom_list(const char *path, char *out, size_t outlen)
{
	size_t dl = strlen(path);
	const char *dev = "";

	if (strcmp(path, "/machine/peripheral") && strcmp(path, "/machine/peripheral-anon")) {
		ERR("DeviceNotFound", "Device '%s' not found", path);
		return;
	}
	if (!strncmp(fk->qom_path, path, dl) && fk->qom_path[dl] == '/' &&
	    !strchr(fk->qom_path + dl + 1, '/'))
		dev = fk->qom_path + dl + 1;
	RET("[{\"name\": \"type\", \"type\": \"string\"}, {\"name\": \"net0\", \"type\": "
	    "\"child<virtio-net-pci>\"}%s%s%s]",
	    *dev ? ", {\"name\": \"" : "", dev,
	    *dev ? "\", \"type\": \"child<virtio-balloon-pci>\"}" : "");
}

static void qmp_qom(const char *cmd, struct json_object *args, char *out, size_t outlen)
{
	const char *path = jstr(args, "path"), *prop = jstr(args, "property");
	struct json_object *v;

	if (!path || !prop) {
		violation("%s without path or property", cmd);
		ERR("GenericError", "Parameter 'path' is missing");
	} else if (!*fk->qom_path || strcmp(path, fk->qom_path)) {
		ERR("DeviceNotFound", "Device '%s' not found", path);
	} else if (!strcmp(prop, "guest-stats-polling-interval") && !strcmp(cmd, "qom-get")) {
		RET("%lld", (long long)fk->poll_secs);
	} else if (!strcmp(prop, "guest-stats-polling-interval")) {
		if (!json_object_object_get_ex(args, "value", &v) ||
		    !json_object_is_type(v, json_type_int) || json_object_get_int64(v) < 0) {
			violation("qom-set of the polling interval without a valid value");
			ERR("GenericError", "Parameter 'value' expects integer");
		} else {
			fk->poll_secs = json_object_get_int64(v);
			RET("{}");
		}
	} else if (!strcmp(prop, "guest-stats") && !strcmp(cmd, "qom-get")) {
		fk->stats_requests++;
		qmp_stats(out, outlen);
	} else {
		ERR("GenericError", "Property 'virtio-balloon-pci.%s' not found", prop);
	}
}

/* QEMU 7.2's qmp_balloon() and virtio_balloon_to_target(). */
static void qmp_balloon(struct json_object *args, char *out, size_t outlen, bool *changed)
{
	struct json_object *v;
	int64_t value, target;

	if (!json_object_object_get_ex(args, "value", &v) ||
	    !json_object_is_type(v, json_type_int)) {
		violation("balloon without an integer value");
		ERR("GenericError", "Parameter 'value' is missing");
		return;
	}
	value = json_object_get_int64(v);
	if (!fk->has_balloon) {
		ERR("DeviceNotActive", "No balloon device has been activated");
	} else if (mode() == REFUSE) {
		ERR("GenericError", "Operation not allowed: the VM is being migrated");
	} else if (value <= 0) {
		ERR("GenericError", "Parameter 'target' expects a size");
	} else {
		target = value > fk->ram_bytes ? fk->ram_bytes : value;
		fk->balloon_bytes = ((fk->ram_bytes - target) >> 12) << 12;
		fk->qmp_balloon_value = value;
		fk->balloon_cmds++;
		*changed = true;
		RET("{}");
	}
}

static void qmp_command(bool *negotiated, const char *cmd, struct json_object *args, char *out,
			size_t outlen, bool *changed)
{
	if (!*negotiated && strcmp(cmd, "qmp_capabilities")) {
		violation("%s before qmp_capabilities", cmd);
		ERR("CommandNotFound",
		    "Expecting capabilities negotiation with 'qmp_capabilities'");
	} else if (!strcmp(cmd, "qmp_capabilities")) {
		if (*negotiated)
			ERR("CommandNotFound",
			    "Capabilities negotiation is already complete, command ignored");
		else
			RET("{}");
		*negotiated = true;
	} else if (!strcmp(cmd, "query-memory-size-summary") && fk->qmp_summary) {
		RET("{\"base-memory\": %lld, \"plugged-memory\": 0}", (long long)fk->ram_bytes);
	} else if (!strcmp(cmd, "query-balloon")) {
		if (fk->has_balloon)
			RET("{\"actual\": %lld}", (long long)(fk->ram_bytes - fk->balloon_bytes));
		else
			ERR("DeviceNotActive", "No balloon device has been activated");
	} else if (!strcmp(cmd, "balloon")) {
		qmp_balloon(args, out, outlen, changed);
	} else if (!strcmp(cmd, "qom-get") || !strcmp(cmd, "qom-set")) {
		qmp_qom(cmd, args, out, outlen);
	} else if (!strcmp(cmd, "qom-list")) {
		qmp_qom_list(jstr(args, "path") ?: "", out, outlen);
	} else {
		ERR("CommandNotFound", "The command %s has not been found", cmd);
	}
}

/* A bad peer's answer instead of a reply; false: stop serving this connection. */
static bool qmp_misbehave(int fd, int m)
{
	switch (m) {
	case STALL:
		drain(fd);
		return false;
	case HANGUP:
		put(fd, "{\"return\": {\"actu");
		return false;
	case GARBAGE:
		put(fd, "Welcome to the machine. Have a cigar.\r\n");
		return true;
	case TRUNCATED:
		put(fd, "{\"return\": {\"actual\": 1073\r\n");
		return true;
	}
	return true;
}

static void qmp_serve(int fd)
{
	struct conn cn = { .fd = fd };
	bool negotiated = false;
	char line[4096], out[4096];

	if (mode() == SILENT) {
		drain(fd);
		return;
	}
	put(fd, "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}, "
		"\"package\": \"Debian 1:7.2+dfsg-7+deb12u7\"}, \"capabilities\": [\"oob\"]}}\r\n");
	while (conn_line(&cn, line, sizeof(line)) == 0) {
		struct json_object *msg = json_tokener_parse(line), *id = NULL, *args = NULL;
		const char *cmd = jstr(msg, "execute");
		bool changed = false;
		char idtext[64] = "";
		int m = mode();

		__atomic_add_fetch(&fk->requests, 1, __ATOMIC_SEQ_CST);
		if (!cmd) {
			violation("not a QMP command: %.100s", line);
			put(fd, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input "
				"must be a JSON object\"}}\r\n");
			json_object_put(msg);
			continue;
		}
		if (json_object_object_get_ex(msg, "id", &id))
			snprintf(idtext, sizeof(idtext), ", \"id\": %s",
				 json_object_to_json_string_ext(id, JSON_C_TO_STRING_PLAIN));
		json_object_object_get_ex(msg, "arguments", &args);
		if (negotiated && m != GOOD && m != REFUSE) {
			json_object_put(msg);
			if (!qmp_misbehave(fd, m))
				return;
			continue;
		}
		putf(fd,
		     "{\"timestamp\": {\"seconds\": %ld, \"microseconds\": 4242}, \"event\": "
		     "\"RTC_CHANGE\", \"data\": {\"offset\": 0, \"qom-path\": "
		     "\"/machine/unattached/device[8]\"}}\r\n",
		     (long)time(NULL));
		fk->events_sent++;
		qmp_command(&negotiated, cmd, args, out, sizeof(out), &changed);
		putf(fd, "{%s%s}\r\n", out, idtext);
		/* The guest acknowledges at once; QEMU then reports the new size. */
		if (changed) {
			putf(fd,
			     "{\"timestamp\": {\"seconds\": %ld, \"microseconds\": 5}, \"event\": "
			     "\"BALLOON_CHANGE\", \"data\": {\"actual\": %lld}}\r\n",
			     (long)time(NULL), (long long)(fk->ram_bytes - fk->balloon_bytes));
			fk->events_sent++;
		}
		json_object_put(msg);
	}
}

/* ---- fake Firecracker and Cloud Hypervisor (HTTP) ------------------------- */

struct http_req {
	char method[16], path[256], ctype[128], body[4096];
	long clen;
};

static int read_request(struct conn *cn, struct http_req *rq)
{
	char line[1024];

	memset(rq, 0, sizeof(*rq));
	if (conn_line(cn, line, sizeof(line)) < 0)
		return -1;
	if (sscanf(line, "%15s %255s HTTP/1.1", rq->method, rq->path) != 2) {
		violation("bad request line: %.100s", line);
		return -1;
	}
	for (;;) {
		if (conn_line(cn, line, sizeof(line)) < 0)
			return -1;
		if (!*line)
			break;
		if (!strncasecmp(line, "Content-Type:", 13))
			snprintf(rq->ctype, sizeof(rq->ctype), "%s",
				 line + 13 + strspn(line + 13, " "));
		else if (!strncasecmp(line, "Content-Length:", 15))
			rq->clen = atol(line + 15);
		else if (!strncasecmp(line, "Transfer-Encoding:", 18))
			violation("%s %s with %s", rq->method, rq->path, line);
		else if (!strncasecmp(line, "Expect:", 7))
			violation("%s %s with %s", rq->method, rq->path, line);
	}
	if (rq->clen < 0 || rq->clen >= (long)sizeof(rq->body)) {
		violation("%s %s: Content-Length %ld", rq->method, rq->path, rq->clen);
		return -1;
	}
	return conn_bytes(cn, rq->body, (size_t)rq->clen);
}

static void respond(int fd, int status, const char *json)
{
	const char *reason = status == 200   ? "OK"
			     : status == 204 ? "No Content"
			     : status == 400 ? "Bad Request"
			     : status == 404 ? "Not Found"
					     : "Internal Server Error";

	if (!json) {
		putf(fd,
		     "HTTP/1.1 %d %s\r\nServer: Firecracker API\r\nConnection: keep-alive\r\n\r\n",
		     status, reason);
		return;
	}
	putf(fd,
	     "HTTP/1.1 %d %s\r\nServer: Firecracker API\r\nConnection: keep-alive\r\n"
	     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
	     status, reason, strlen(json), json);
}

static void fault(int fd, const char *msg)
{
	char body[512];

	snprintf(body, sizeof(body), "{\"fault_message\": \"%s\"}", msg);
	respond(fd, 400, body);
}

/*
 * A request with a JSON body: Content-Type application/json and an object
 * whose only member is key, a non-negative integer. Returns it, or -1.
 */
static int64_t json_body(const struct http_req *rq, const char *key)
{
	struct json_object *o = json_tokener_parse(rq->body), *v;
	int64_t n = -1;

	if (strcmp(rq->ctype, "application/json"))
		violation("%s %s: Content-Type \"%s\"", rq->method, rq->path, rq->ctype);
	else if (!json_object_is_type(o, json_type_object) || json_object_object_length(o) != 1 ||
		 !json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int) ||
		 json_object_get_int64(v) < 0)
		violation("%s %s: body %.100s", rq->method, rq->path, rq->body);
	else
		n = json_object_get_int64(v);
	json_object_put(o);
	return n;
}

static bool is(const struct http_req *rq, const char *method, const char *path)
{
	return !strcmp(rq->method, method) && !strcmp(rq->path, path);
}

static void fc_statistics(int fd)
{
	char body[1024], avail[64] = "";

	if (fk->avail_bytes >= 0)
		snprintf(avail, sizeof(avail), "\"available_memory\": %lld, ",
			 (long long)fk->avail_bytes);
	snprintf(body, sizeof(body),
		 "{\"target_pages\": %lld, \"actual_pages\": %lld, \"target_mib\": %lld, "
		 "\"actual_mib\": %lld, \"swap_in\": 0, \"swap_out\": 0, \"major_faults\": 17, "
		 "\"minor_faults\": 131072, \"free_memory\": %lld, \"total_memory\": %lld, %s"
		 "\"disk_caches\": %lld, \"hugetlb_allocations\": 0, \"hugetlb_failures\": 0}",
		 (long long)(fk->target_bytes >> 12), (long long)(fk->balloon_bytes >> 12),
		 (long long)(fk->target_bytes >> 20), (long long)(fk->balloon_bytes >> 20),
		 (long long)fk->free_bytes, (long long)(fk->ram_bytes - fk->balloon_bytes), avail,
		 (long long)fk->caches_bytes);
	respond(fd, 200, body);
}

static void fc_route(int fd, const struct http_req *rq)
{
	char body[1024];
	int64_t n;

	if (strcmp(rq->method, "PATCH") && rq->clen)
		violation("%s %s with a body", rq->method, rq->path);
	if (is(rq, "GET", "/machine-config")) {
		snprintf(body, sizeof(body),
			 "{\"vcpu_count\": 2, \"smt\": false, \"mem_size_mib\": %lld, "
			 "\"track_dirty_pages\": false, \"huge_pages\": \"None\"}",
			 (long long)(fk->ram_bytes >> 20));
		respond(fd, 200, body);
	} else if (is(rq, "GET", "/balloon")) {
		if (!fk->has_balloon) {
			fault(fd, "Balloon device not configured.");
			return;
		}
		snprintf(body, sizeof(body),
			 "{\"amount_mib\": %lld, \"deflate_on_oom\": true, "
			 "\"stats_polling_interval_s\": %lld}",
			 (long long)(fk->target_bytes >> 20), (long long)fk->poll_secs);
		respond(fd, 200, body);
	} else if (is(rq, "PATCH", "/balloon")) {
		n = json_body(rq, "amount_mib");
		if (n < 0)
			fault(fd,
			      "An error occurred when deserializing the json body of a request.");
		else if (!fk->has_balloon)
			fault(fd, "Balloon config error: No balloon device found.");
		else if (mode() == REFUSE)
			fault(fd,
			      "Balloon config error: Device is inactive, check if balloon driver "
			      "is enabled in guest kernel.");
		else if (n > fk->ram_bytes >> 20)
			fault(fd, "Balloon config error: Amount of pages requested is too large.");
		else {
			fk->target_bytes = fk->balloon_bytes = n * MIB;
			fk->balloon_cmds++;
			respond(fd, 204, NULL);
		}
	} else if (is(rq, "GET", "/balloon/statistics")) {
		fk->stats_requests++;
		if (!fk->has_balloon)
			fault(fd, "Balloon device not configured.");
		else if (fk->poll_secs <= 0)
			fault(fd, "Balloon config error: Statistics for the balloon device are not "
				  "enabled");
		else
			fc_statistics(fd);
	} else {
		violation("unexpected request %s %s", rq->method, rq->path);
		snprintf(body, sizeof(body), "Invalid request method and/or path: %s %s.",
			 rq->method, rq->path);
		fault(fd, body);
	}
}

static void ch_info(int fd)
{
	char body[2048], balloon[256] = "null", memory[512];

	if (fk->has_balloon)
		snprintf(balloon, sizeof(balloon),
			 "{\"id\": \"__balloon\", \"size\": %lld, \"deflate_on_oom\": false, "
			 "\"free_page_reporting\": false, \"pci_segment\": 0}",
			 (long long)fk->target_bytes);
	if (fk->ch_zones) /* --memory size=0 --memory-zone id=mem0,... id=mem1,...,hotplug */
		snprintf(memory, sizeof(memory),
			 "\"size\": 0, \"zones\": [{\"id\": \"mem0\", \"size\": %lld, "
			 "\"shared\": false}, {\"id\": \"mem1\", \"size\": %lld, "
			 "\"hotplug_size\": %lld, \"hotplugged_size\": %lld}]",
			 (long long)(fk->ram_bytes / 2), (long long)(fk->ram_bytes / 4),
			 (long long)(fk->ram_bytes / 2), (long long)(fk->ram_bytes / 4));
	else
		snprintf(memory, sizeof(memory), "\"size\": %lld", (long long)fk->ram_bytes);
	snprintf(body, sizeof(body),
		 "{\"config\": {\"cpus\": {\"boot_vcpus\": 2, \"max_vcpus\": 2}, \"memory\": "
		 "{%s, \"mergeable\": false, \"hotplug_method\": \"Acpi\", "
		 "\"shared\": false, \"hugepages\": false, \"prefault\": false, \"thp\": true}, "
		 "\"payload\": {\"kernel\": \"/var/lib/vm/vmlinux\"}, \"balloon\": %s, "
		 "\"iommu\": false, \"watchdog\": false, \"pvpanic\": false}, \"state\": "
		 "\"Running\", \"memory_actual_size\": %lld, \"device_tree\": {}}",
		 memory, balloon, (long long)(fk->ram_bytes - fk->balloon_bytes));
	respond(fd, 200, body);
}

static void ch_balloon_stats(int fd)
{
	char body[1024], avail[64] = "";

	if (fk->avail_bytes >= 0)
		snprintf(avail, sizeof(avail), "\"available_memory\": %lld, ",
			 (long long)fk->avail_bytes);
	snprintf(
	    body, sizeof(body),
	    "{\"balloon_actual\": %lld, \"last_update\": 1700000000123, \"stats\": "
	    "{\"swap_in\": 0, \"swap_out\": 0, \"major_faults\": 17, \"minor_faults\": 131072, "
	    "\"free_memory\": %lld, \"total_memory\": %lld, %s\"disk_caches\": %lld}}",
	    (long long)fk->balloon_bytes, (long long)fk->free_bytes,
	    (long long)(fk->ram_bytes - fk->balloon_bytes), avail, (long long)fk->caches_bytes);
	respond(fd, 200, body);
}

static void ch_route(int fd, const struct http_req *rq)
{
	int64_t n;

	if (strcmp(rq->method, "PUT") && rq->clen)
		violation("%s %s with a body", rq->method, rq->path);
	if (is(rq, "GET", "/api/v1/vm.info")) {
		ch_info(fd);
	} else if (is(rq, "PUT", "/api/v1/vm.resize")) {
		n = json_body(rq, "desired_balloon");
		if (n < 0)
			respond(fd, 400, "[\"Error from API\",\"Failed to deserialize JSON\"]");
		else if (!fk->has_balloon || mode() == REFUSE)
			respond(fd, 500,
				"[\"Error from API\",\"The VM could not be resized\","
				"\"Error resizing VM\",\"Cannot resize the balloon\"]");
		else {
			fk->target_bytes = fk->balloon_bytes = n;
			fk->balloon_cmds++;
			respond(fd, 204, NULL);
		}
	} else if (is(rq, "GET", "/api/v1/vm.balloon-stats")) {
		fk->stats_requests++;
		if (fk->ch_stats)
			ch_balloon_stats(fd);
		else
			respond(fd, 404, "[\"Not Found\"]");
	} else {
		violation("unexpected request %s %s", rq->method, rq->path);
		respond(fd, 404, "[\"Not Found\"]");
	}
}

static void http_serve(int fd)
{
	struct conn cn = { .fd = fd };
	struct http_req rq;

	while (read_request(&cn, &rq) == 0) {
		__atomic_add_fetch(&fk->requests, 1, __ATOMIC_SEQ_CST);
		switch (mode()) {
		case SILENT:
			drain(fd);
			return;
		case HANGUP:
			put(fd, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
				"Content-Length: 300\r\n\r\n{\"mem_size_mib\": 10");
			return;
		case GARBAGE:
			put(fd, "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n");
			return;
		case TRUNCATED:
			respond(fd, 200, "{\"mem_size_mib\": 1024, \"vcpu_count\"");
			continue;
		}
		if (rq.clen) {
			snprintf(fk->method, sizeof(fk->method), "%s", rq.method);
			snprintf(fk->path, sizeof(fk->path), "%s", rq.path);
			snprintf(fk->ctype, sizeof(fk->ctype), "%s", rq.ctype);
			snprintf(fk->body, sizeof(fk->body), "%s", rq.body);
		}
		if (fk->kind == FAKE_FC)
			fc_route(fd, &rq);
		else
			ch_route(fd, &rq);
	}
}

/* ---- starting and stopping a fake ----------------------------------------- */

static void fake_serve(int lfd)
{
	signal(SIGCHLD, SIG_IGN); /* connection processes reap themselves */
	for (;;) {
		int cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);

		if (cfd < 0)
			continue;
		__atomic_add_fetch(&fk->connections, 1, __ATOMIC_SEQ_CST);
		if (fork() == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL); /* the fake's parent is alive: it forks */
			close(lfd);
			if (fk->kind == FAKE_QMP)
				qmp_serve(cfd);
			else
				http_serve(cfd);
			_exit(0);
		}
		close(cfd);
	}
}

static void fake_start(enum fake_kind kind)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	pid_t parent;
	int lfd;

	fk->kind = kind;
	lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert_int_ge(lfd, 0);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock_path);
	ck_assert_int_eq(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ck_assert_int_eq(listen(lfd, 16), 0);
	parent = getpid();
	fake_pid = fork();
	ck_assert_int_ge(fake_pid, 0);
	if (fake_pid == 0) {
		/* A failed assertion ends the test process without its teardown. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(0);
		setpgid(0, 0);
		fake_serve(lfd);
		_exit(0);
	}
	setpgid(fake_pid, fake_pid);
	close(lfd);
}

/* The VM every test starts from: 2 GiB, a deflated balloon, statistics off. */
static void setup(void)
{
	fk = mmap(NULL, sizeof(*fk), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(fk, MAP_FAILED);
	memset(fk, 0, sizeof(*fk));
	fk->ram_bytes = 2 * GIB;
	fk->has_balloon = true;
	fk->qmp_summary = true;
	snprintf(fk->qom_path, sizeof(fk->qom_path), "/machine/peripheral/balloon0");
	fk->ch_stats = true;
	fk->free_bytes = 300 * MIB;
	fk->avail_bytes = 512 * MIB;
	fk->caches_bytes = 150 * MIB;
	snprintf(sock_path, sizeof(sock_path), "%s/vmm-%d.sock", sock_dir, (int)getpid());
}

static void teardown(void)
{
	if (fake_pid > 0) {
		kill(-fake_pid, SIGKILL);
		waitpid(fake_pid, NULL, 0);
		fake_pid = -1;
	}
	unlink(sock_path);
	munmap(fk, sizeof(*fk));
}

/* ---- client-side helpers -------------------------------------------------- */

static void fds_open(bool open[MAX_FDS])
{
	char path[64];

	for (int i = 0; i < MAX_FDS; i++) {
		snprintf(path, sizeof(path), "/proc/self/fd/%d", i);
		open[i] = access(path, F_OK) == 0;
	}
}

static int count_fds(void)
{
	bool open[MAX_FDS];
	int n = 0;

	fds_open(open);
	for (int i = 0; i < MAX_FDS; i++)
		n += open[i];
	return n;
}

/* Every fd opened since before[] was taken is close-on-exec. */
static void assert_new_fds_cloexec(const bool before[MAX_FDS])
{
	bool now[MAX_FDS];

	fds_open(now);
	for (int i = 0; i < MAX_FDS; i++)
		if (now[i] && !before[i])
			ck_assert_msg(fcntl(i, F_GETFD) & FD_CLOEXEC, "fd %d is not close-on-exec",
				      i);
}

static int fds_at_start;

static struct dd_balloon *peer(enum dd_balloon_kind kind, int timeout_ms)
{
	struct dd_balloon *b;

	fds_at_start = count_fds();
	b = dd_balloon_new(kind, sock_path, timeout_ms);
	ck_assert_ptr_nonnull(b);
	return b;
}

static void peer_free(struct dd_balloon *b)
{
	dd_balloon_free(b);
	ck_assert_int_eq(count_fds(), fds_at_start);
	ck_assert_msg(fk->violations == 0, "the fake saw %d violations, the last: %s",
		      fk->violations, fk->violation);
}

#define assert_err_has(err, needle)                                                                \
	ck_assert_msg(strstr(err, needle), "err \"%s\" lacks \"%s\"", err, needle)

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* A call against the good fake works, and reports the fake's balloon. */
static void assert_recovers(struct dd_balloon *b)
{
	struct dd_balloon_stats st;
	char err[256];

	set_mode(GOOD);
	ck_assert_msg(dd_balloon_query(b, &st, err, sizeof(err)) == 0, "no recovery: %s", err);
	ck_assert_str_eq(err, "");
	ck_assert_int_eq(st.balloon_bytes, fk->balloon_bytes);
	ck_assert_int_eq(st.guest_ram_bytes, fk->ram_bytes);
}

/* ---- the API itself -------------------------------------------------------- */

START_TEST(test_new_refuses_bad_arguments)
{
	char longpath[200];

	memset(longpath, 'x', sizeof(longpath) - 1);
	longpath[sizeof(longpath) - 1] = '\0';
	errno = 0;
	ck_assert_ptr_null(dd_balloon_new((enum dd_balloon_kind)1, "/run/vm.sock", 100));
	ck_assert_int_eq(errno, EINVAL);
	ck_assert_ptr_null(dd_balloon_new(DD_BALLOON_KIND_QMP, "", 100));
	ck_assert_int_eq(errno, EINVAL);
	ck_assert_ptr_null(dd_balloon_new(DD_BALLOON_KIND_QMP, NULL, 100));
	ck_assert_ptr_null(dd_balloon_new(DD_BALLOON_KIND_FIRECRACKER, longpath, 100));
	ck_assert_int_eq(errno, EINVAL);
	ck_assert_ptr_null(dd_balloon_new(DD_BALLOON_KIND_CLOUD_HYPERVISOR, "/run/ch.sock", 0));
	ck_assert_int_eq(errno, EINVAL);
	ck_assert_str_eq(dd_balloon_kind_name(DD_BALLOON_KIND_QMP), "qmp");
	ck_assert_str_eq(dd_balloon_kind_name(DD_BALLOON_KIND_FIRECRACKER), "firecracker");
	ck_assert_str_eq(dd_balloon_kind_name(DD_BALLOON_KIND_CLOUD_HYPERVISOR),
			 "cloud-hypervisor");
	ck_assert_ptr_null(dd_balloon_kind_name((enum dd_balloon_kind)0));
	dd_balloon_free(NULL);
}
END_TEST

START_TEST(test_guest_pressure)
{
	struct dd_balloon_stats st = { .guest_total_bytes = 3 * GIB,
				       .guest_committed_bytes = 2 * GIB };

	ck_assert_int_eq(dd_balloon_guest_pressure(&st), 67); /* 66.7 rounds up */
	st.guest_committed_bytes = GIB;
	ck_assert_int_eq(dd_balloon_guest_pressure(&st), 33);
	st.guest_committed_bytes = 0;
	ck_assert_int_eq(dd_balloon_guest_pressure(&st), 0);
	st.guest_committed_bytes = 3 * GIB;
	ck_assert_int_eq(dd_balloon_guest_pressure(&st), 100);
	st.guest_total_bytes = INT64_MAX; /* no overflow in the arithmetic */
	st.guest_committed_bytes = INT64_MAX / 4;
	ck_assert_int_eq(dd_balloon_guest_pressure(&st), 25);
	st.guest_committed_bytes = -1;
	ck_assert_int_eq(dd_balloon_guest_pressure(&st), -1);
	st.guest_committed_bytes = GIB;
	st.guest_total_bytes = -1;
	ck_assert_int_eq(dd_balloon_guest_pressure(&st), -1);
	st.guest_total_bytes = 0;
	ck_assert_int_eq(dd_balloon_guest_pressure(&st), -1);
}
END_TEST

/* No socket file: -ENOENT; a socket nobody listens on: -ECONNREFUSED; err may be NULL. */
START_TEST(test_no_peer)
{
	static const enum dd_balloon_kind kinds[] = { DD_BALLOON_KIND_QMP,
						      DD_BALLOON_KIND_FIRECRACKER,
						      DD_BALLOON_KIND_CLOUD_HYPERVISOR };
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct dd_balloon_stats st;
	char err[256];
	int fd;

	for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
		struct dd_balloon *b = peer(kinds[i], 500);

		ck_assert_int_eq(dd_balloon_query(b, &st, err, sizeof(err)), -ENOENT);
		assert_err_has(err, sock_path);
		assert_err_has(err, dd_balloon_kind_name(kinds[i]));
		ck_assert_int_eq(st.balloon_bytes, -1);
		ck_assert_int_eq(st.guest_ram_bytes, -1);
		ck_assert_int_eq(dd_balloon_set(b, MIB, NULL, 0), -ENOENT);
		peer_free(b);
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock_path);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
		struct dd_balloon *b = peer(kinds[i], 500);

		ck_assert_int_eq(dd_balloon_set(b, MIB, err, sizeof(err)), -ECONNREFUSED);
		ck_assert_int_eq(dd_balloon_query(b, &st, NULL, 0), -ECONNREFUSED);
		peer_free(b);
	}
	close(fd);
}
END_TEST

/* ---- QMP -------------------------------------------------------------------- */

START_TEST(test_qmp_set_query_round_trip)
{
	struct dd_balloon *b;
	struct dd_balloon_stats st;
	bool before[MAX_FDS];
	char err[256];

	fake_start(FAKE_QMP);
	b = peer(DD_BALLOON_KIND_QMP, 2000);
	fds_open(before);
	ck_assert_int_eq(dd_balloon_query(b, &st, err, sizeof(err)), 0);
	ck_assert_int_eq(st.guest_ram_bytes, 2 * GIB);
	ck_assert_int_eq(st.balloon_bytes, 0);
	ck_assert_int_eq(st.target_bytes, -1); /* QEMU does not tell; we asked for nothing */

	/* QEMU takes the guest's target size: RAM minus the balloon, in whole pages. */
	ck_assert_int_eq(dd_balloon_set(b, 512 * MIB + 100, err, sizeof(err)), 0);
	ck_assert_str_eq(err, "");
	ck_assert_int_eq(fk->qmp_balloon_value, 2 * GIB - 512 * MIB);
	ck_assert_int_eq(fk->balloon_bytes, 512 * MIB);
	ck_assert_int_eq(dd_balloon_query(b, &st, err, sizeof(err)), 0);
	ck_assert_int_eq(st.balloon_bytes, 512 * MIB);
	ck_assert_int_eq(st.target_bytes, 512 * MIB);
	ck_assert_int_eq(st.guest_ram_bytes, 2 * GIB);

	ck_assert_int_eq(dd_balloon_set(b, 0, err, sizeof(err)), 0); /* deflate */
	ck_assert_int_eq(fk->qmp_balloon_value, 2 * GIB);
	ck_assert_int_eq(dd_balloon_query(b, &st, err, sizeof(err)), 0);
	ck_assert_int_eq(st.balloon_bytes, 0);
	ck_assert_int_eq(st.target_bytes, 0);

	/* One connection for all of it; events came before every reply. */
	ck_assert_int_eq(fk->connections, 1);
	ck_assert_int_ge(fk->events_sent, fk->requests);
	ck_assert_int_eq(fk->balloon_cmds, 2);
	assert_new_fds_cloexec(before);
	peer_free(b);
}
END_TEST

/* Statistics: polling turned on at the harness's balloon0, figures and pressure. */
START_TEST(test_qmp_guest_stats)
{
	struct dd_balloon *b;
	struct dd_balloon_stats st;
	char err[256];

	fake_start(FAKE_QMP);
	b = peer(DD_BALLOON_KIND_QMP, 2000);
	ck_assert_int_eq(dd_balloon_set(b, 512 * MIB, err, sizeof(err)), 0);
	ck_assert_int_eq(dd_balloon_query(b, &st, err, sizeof(err)), 0);
	ck_assert_int_eq(fk->poll_secs, 2);
	ck_assert_int_eq(st.guest_total_bytes, 2 * GIB - 512 * MIB);
	ck_assert_int_eq(st.guest_free_bytes, 300 * MIB);
	ck_assert_int_eq(st.guest_available_bytes, 512 * MIB);
	ck_assert_int_eq(st.guest_committed_bytes, GIB);
	ck_assert_int_eq(dd_balloon_guest_pressure(&st), 67);

	/* A guest that reports no MemAvailable: free + disk caches. */
	fk->avail_bytes = -1;
	ck_assert_int_eq(dd_balloon_query(b, &st, err, sizeof(err)), 0);
	ck_assert_int_eq(st.guest_available_bytes, 450 * MIB);
	ck_assert_int_eq(st.guest_committed_bytes, 1536 * MIB - 450 * MIB);
	ck_assert_int_eq(fk->stats_requests, 2);
	ck_assert_int_eq(fk->connections, 1);
	peer_free(b);
}
END_TEST

/*
 * Someone else's polling interval is kept. A guest that never reported
 * (QEMU's 2^64 - 1 and last-update 0) and a VM without a balloon device in
 * QOM both give -1 statistics, and the call succeeds.
 */
START_TEST(test_qmp_stats_interval_kept_and_unreported)
{
	struct dd_balloon *b;
	struct dd_balloon_stats st;
	char err[256];

	fake_start(FAKE_QMP);
	fk->poll_secs = 5;
	b = peer(DD_BALLOON_KIND_QMP, 2000);
	ck_assert_int_eq(dd_balloon_query(b, &st, err, sizeof(err)), 0);
	ck_assert_int_eq(fk->poll_secs, 5);
	ck_assert_int_eq(st.guest_total_bytes, 2 * GIB);
	ck_assert_int_eq(st.guest_committed_bytes, 2 * GIB - 512 * MIB);
	peer_free(b);

	fk->guest_silent = true;
	b = peer(DD_BALLOON_KIND_QMP, 2000);
	ck_assert_int_eq(dd_balloon_query(b, &st, err, sizeof(err)), 0);
	ck_assert_int_eq(fk->stats_requests, 2);
	ck_assert_int_eq(st.balloon_bytes, 0);
	ck_assert_int_eq(st.guest_total_bytes, -1);
	ck_assert_int_eq(st.guest_free_bytes, -1);
	ck_assert_int_eq(st.guest_available_bytes, -1);
	ck_assert_int_eq(st.guest_committed_bytes, -1);
	ck_assert_int_eq(dd_balloon_guest_pressure(&st), -1);
	peer_free(b);

	fk->guest_silent = false;
	fk->qom_path[0] = '\0';
	b = peer(DD_BALLOON_KIND_QMP, 2000);
	ck_assert_int_eq(dd_balloon_query(b, &st, err, sizeof(err)), 0);
	ck_assert_str_eq(err, "");
	ck_assert_int_eq(st.guest_ram_bytes, 2 * GIB);
	ck_assert_int_eq(st.guest_total_bytes, -1);
	ck_assert_int_eq(fk->stats_requests, 2);
	peer_free(b);
}
END_TEST

/* A balloon with another id, or none: found by qom-list under peripheral-anon. */
START_TEST(test_qmp_finds_anonymous_balloon)
{
	struct dd_balloon *b;
	struct dd_balloon_stats st;
	char err[256];

	fake_start(FAKE_QMP);
	snprintf(fk->qom_path, sizeof(fk->qom_path), "/machine/peripheral-anon/device[3]");
	b = peer(DD_BALLOON_KIND_QMP, 2000);
	ck_assert_int_eq(dd_balloon_query(b, &st, err, sizeof(err)), 0);
	ck_assert_int_eq(fk->poll_secs, 2);
	ck_assert_int_eq(st.guest_total_bytes, 2 * GIB);
	ck_assert_int_eq(st.guest_committed_bytes, 2 * GIB - 512 * MIB);
	ck_assert_int_eq(fk->stats_requests, 1);
	peer_free(b);
}
END_TEST

/* QEMU before 2.11 has no query-memory-size-summary: RAM is the first "actual". */
START_TEST(test_qmp_old_qemu_ram_fallback)
{
	struct dd_balloon *b;
	struct dd_balloon_stats st;
	char err[256];

	fake_start(FAKE_QMP);
	fk->qmp_summary = false;
	b = peer(DD_BALLOON_KIND_QMP, 2000);
	ck_assert_int_eq(dd_balloon_set(b, 256 * MIB, err, sizeof(err)), 0);
	ck_assert_int_eq(fk->qmp_balloon_value, 2 * GIB - 256 * MIB);
	ck_assert_int_eq(dd_balloon_query(b, &st, err, sizeof(err)), 0);
	ck_assert_int_eq(st.guest_ram_bytes, 2 * GIB);
	ck_assert_int_eq(st.balloon_bytes, 256 * MIB);
	peer_free(b);
}
END_TEST

/* A balloon as large as the guest is refused here: nothing reaches QEMU. */
START_TEST(test_qmp_erange)
{
	struct dd_balloon *b;
	char err[256];

	fake_start(FAKE_QMP);
	b = peer(DD_BALLOON_KIND_QMP, 2000);
	ck_assert_int_eq(dd_balloon_set(b, 2 * GIB, err, sizeof(err)), -ERANGE);
	assert_err_has(err, "not smaller than the guest");
	ck_assert_int_eq(dd_balloon_set(b, UINT64_MAX, err, sizeof(err)), -ERANGE);
	ck_assert_int_eq(fk->balloon_cmds, 0);
	ck_assert_int_eq(dd_balloon_set(b, 2 * GIB - 4096, err, sizeof(err)), 0);
	ck_assert_int_eq(fk->qmp_balloon_value, 4096);
	peer_free(b);
}
END_TEST

START_TEST(test_qmp_no_balloon_device)
{
	struct dd_balloon *b;
	struct dd_balloon_stats st;
	char err[256];

	fake_start(FAKE_QMP);
	fk->has_balloon = false;
	b = peer(DD_BALLOON_KIND_QMP, 2000);
	ck_assert_int_eq(dd_balloon_query(b, &st, err, sizeof(err)), -ENOTSUP);
	assert_err_has(err, "No balloon device has been activated");
	ck_assert_int_eq(dd_balloon_set(b, MIB, err, sizeof(err)), -ENOTSUP);
	assert_err_has(err, "balloon: No balloon device has been activated");
	ck_assert_int_eq(fk->connections, 1); /* an error reply keeps the connection */
	peer_free(b);
}
END_TEST

/* QEMU's error for the command: -EPROTO with its desc; the connection stays. */
START_TEST(test_qmp_error_reply)
{
	struct dd_balloon *b;
	char err[256];

	fake_start(FAKE_QMP);
	b = peer(DD_BALLOON_KIND_QMP, 2000);
	set_mode(REFUSE);
	ck_assert_int_eq(dd_balloon_set(b, 64 * MIB, err, sizeof(err)), -EPROTO);
	assert_err_has(err, "qmp ");
	assert_err_has(err, "Operation not allowed: the VM is being migrated");
	assert_recovers(b);
	ck_assert_int_eq(fk->connections, 1);
	peer_free(b);
}
END_TEST

static void qmp_bad_peer(enum fake_mode m, int expect, const char *needle)
{
	struct dd_balloon *b;
	struct dd_balloon_stats st;
	char err[256];

	fake_start(FAKE_QMP);
	b = peer(DD_BALLOON_KIND_QMP, 400);
	ck_assert_int_eq(dd_balloon_set(b, 128 * MIB, err, sizeof(err)), 0);
	set_mode(m);
	ck_assert_int_eq(dd_balloon_query(b, &st, err, sizeof(err)), expect);
	assert_err_has(err, needle);
	ck_assert_int_eq(st.balloon_bytes, -1);
	assert_recovers(b);
	ck_assert_int_eq(fk->connections, 2); /* the broken connection was dropped */
	peer_free(b);
}

START_TEST(test_qmp_hangup_mid_reply)
{
	qmp_bad_peer(HANGUP, -ECONNRESET, "in the middle of a message");
}
END_TEST

START_TEST(test_qmp_garbage)
{
	qmp_bad_peer(GARBAGE, -EPROTO, "not a QMP message: \"Welcome to the machine");
}
END_TEST

START_TEST(test_qmp_truncated_json)
{
	qmp_bad_peer(TRUNCATED, -EPROTO, "not a QMP message: \"{\"return\": {\"actual\": 1073\"");
}
END_TEST

START_TEST(test_qmp_stall_after_negotiation)
{
	qmp_bad_peer(STALL, -ETIMEDOUT, "no reply within 400 ms");
}
END_TEST

/* Accepts and never says a word: -ETIMEDOUT after about the timeout, not later. */
START_TEST(test_qmp_silent_peer_times_out)
{
	struct dd_balloon *b;
	char err[256];
	uint64_t t0, ms;

	fake_start(FAKE_QMP);
	set_mode(SILENT);
	b = peer(DD_BALLOON_KIND_QMP, 300);
	t0 = now_ms();
	ck_assert_int_eq(dd_balloon_set(b, 64 * MIB, err, sizeof(err)), -ETIMEDOUT);
	ms = now_ms() - t0;
	ck_assert_msg(ms >= 290 && ms < 800, "timed out after %llu ms", (unsigned long long)ms);
	assert_err_has(err, "no reply within 300 ms");
	assert_recovers(b);
	peer_free(b);
}
END_TEST

/* ---- Firecracker ------------------------------------------------------------- */

START_TEST(test_fc_set_query_round_trip)
{
	struct dd_balloon *b;
	struct dd_balloon_stats st;
	bool before[MAX_FDS];
	char err[256];

	fake_start(FAKE_FC);
	fk->poll_secs = 1;
	b = peer(DD_BALLOON_KIND_FIRECRACKER, 2000);
	fds_open(before);
	/* Firecracker counts whole MiB: 300 MiB and a bit is 300. */
	ck_assert_int_eq(dd_balloon_set(b, 300 * MIB + 123456, err, sizeof(err)), 0);
	ck_assert_str_eq(err, "");
	ck_assert_str_eq(fk->method, "PATCH");
	ck_assert_str_eq(fk->path, "/balloon");
	ck_assert_str_eq(fk->ctype, "application/json");
	ck_assert_str_eq(fk->body, "{\"amount_mib\":300}");
	ck_assert_int_eq(fk->target_bytes, 300 * MIB);

	ck_assert_int_eq(dd_balloon_query(b, &st, err, sizeof(err)), 0);
	ck_assert_int_eq(st.guest_ram_bytes, 2 * GIB);
	ck_assert_int_eq(st.target_bytes, 300 * MIB);
	ck_assert_int_eq(st.balloon_bytes, 300 * MIB);
	ck_assert_int_eq(st.guest_total_bytes, 2 * GIB - 300 * MIB);
	ck_assert_int_eq(st.guest_free_bytes, 300 * MIB);
	ck_assert_int_eq(st.guest_available_bytes, 512 * MIB);
	ck_assert_int_eq(st.guest_committed_bytes, 2 * GIB - 812 * MIB);
	ck_assert_int_eq(dd_balloon_guest_pressure(&st), 71); /* 1236 / 1748 = 70.7 % */

	ck_assert_int_eq(dd_balloon_set(b, MIB - 1, err, sizeof(err)), 0); /* < 1 MiB: 0 */
	ck_assert_str_eq(fk->body, "{\"amount_mib\":0}");
	ck_assert_int_eq(fk->balloon_cmds, 2);
	/* One connection a call, shared by its requests, none left open between calls. */
	ck_assert_int_eq(fk->connections, 3);
	ck_assert_int_eq(fk->requests, 5);
	assert_new_fds_cloexec(before);
	peer_free(b);
}
END_TEST

/* Statistics off at boot: the target is known, the balloon's size is not. */
START_TEST(test_fc_without_statistics)
{
	struct dd_balloon *b;
	struct dd_balloon_stats st;
	char err[256];

	fake_start(FAKE_FC);
	b = peer(DD_BALLOON_KIND_FIRECRACKER, 2000);
	ck_assert_int_eq(dd_balloon_set(b, 64 * MIB, err, sizeof(err)), 0);
	ck_assert_int_eq(dd_balloon_query(b, &st, err, sizeof(err)), 0);
	ck_assert_str_eq(err, "");
	ck_assert_int_eq(st.target_bytes, 64 * MIB);
	ck_assert_int_eq(st.balloon_bytes, -1);
	ck_assert_int_eq(st.guest_total_bytes, -1);
	ck_assert_int_eq(dd_balloon_guest_pressure(&st), -1);
	ck_assert_int_eq(fk->stats_requests, 1);
	peer_free(b);
}
END_TEST

/* A peer that claims a balloon larger than the guest is held to the guest's size. */
START_TEST(test_fc_balloon_clamped_to_guest)
{
	struct dd_balloon *b;
	struct dd_balloon_stats st;
	char err[256];

	fake_start(FAKE_FC);
	fk->poll_secs = 1;
	fk->balloon_bytes = 3 * GIB;
	fk->target_bytes = GIB;
	b = peer(DD_BALLOON_KIND_FIRECRACKER, 2000);
	ck_assert_int_eq(dd_balloon_query(b, &st, err, sizeof(err)), 0);
	ck_assert_int_eq(st.guest_ram_bytes, 2 * GIB);
	ck_assert_int_eq(st.balloon_bytes, 2 * GIB);
	ck_assert_int_eq(st.target_bytes, GIB);
	ck_assert_int_eq(st.guest_total_bytes, -1); /* the fake's negative total: not a size */
	peer_free(b);
}
END_TEST

START_TEST(test_fc_fault_message)
{
	struct dd_balloon *b;
	char err[256];

	fake_start(FAKE_FC);
	fk->poll_secs = 1;
	b = peer(DD_BALLOON_KIND_FIRECRACKER, 2000);
	set_mode(REFUSE);
	ck_assert_int_eq(dd_balloon_set(b, 64 * MIB, err, sizeof(err)), -EPROTO);
	assert_err_has(err, "firecracker ");
	assert_err_has(err, "PATCH /balloon: HTTP 400: Balloon config error: Device is inactive");
	assert_recovers(b);
	peer_free(b);
}
END_TEST

START_TEST(test_fc_no_balloon_device)
{
	struct dd_balloon *b;
	struct dd_balloon_stats st;
	char err[256];

	fake_start(FAKE_FC);
	fk->has_balloon = false;
	b = peer(DD_BALLOON_KIND_FIRECRACKER, 2000);
	ck_assert_int_eq(dd_balloon_set(b, 64 * MIB, err, sizeof(err)), -ENOTSUP);
	assert_err_has(err,
		       "PATCH /balloon: HTTP 400: Balloon config error: No balloon device found.");
	ck_assert_int_eq(dd_balloon_query(b, &st, err, sizeof(err)), -ENOTSUP);
	assert_err_has(err, "GET /balloon: HTTP 400: Balloon device not configured.");
	peer_free(b);
}
END_TEST

START_TEST(test_fc_erange)
{
	struct dd_balloon *b;
	char err[256];

	fake_start(FAKE_FC);
	b = peer(DD_BALLOON_KIND_FIRECRACKER, 2000);
	ck_assert_int_eq(dd_balloon_set(b, 2 * GIB, err, sizeof(err)), -ERANGE);
	ck_assert_int_eq(dd_balloon_set(b, 3 * GIB, err, sizeof(err)), -ERANGE);
	ck_assert_int_eq(fk->balloon_cmds, 0);
	ck_assert_int_eq(fk->body[0], '\0');
	peer_free(b);
}
END_TEST

static void http_bad_peer(enum fake_kind kind, enum fake_mode m, int expect, const char *needle)
{
	enum dd_balloon_kind bk =
	    kind == FAKE_FC ? DD_BALLOON_KIND_FIRECRACKER : DD_BALLOON_KIND_CLOUD_HYPERVISOR;
	struct dd_balloon *b;
	struct dd_balloon_stats st;
	char err[256];
	uint64_t t0, ms;

	fake_start(kind);
	fk->poll_secs = 1;
	b = peer(bk, 400);
	ck_assert_int_eq(dd_balloon_set(b, 128 * MIB, err, sizeof(err)), 0);
	set_mode(m);
	t0 = now_ms();
	ck_assert_int_eq(dd_balloon_query(b, &st, err, sizeof(err)), expect);
	ms = now_ms() - t0;
	assert_err_has(err, needle);
	ck_assert_int_eq(st.balloon_bytes, -1);
	if (expect == -ETIMEDOUT)
		ck_assert_msg(ms >= 390 && ms < 900, "timed out after %llu ms",
			      (unsigned long long)ms);
	assert_recovers(b);
	peer_free(b);
}

START_TEST(test_fc_silent_peer_times_out)
{
	http_bad_peer(FAKE_FC, SILENT, -ETIMEDOUT, "GET /balloon: no reply within 400 ms");
}
END_TEST

START_TEST(test_fc_hangup_mid_reply)
{
	http_bad_peer(FAKE_FC, HANGUP, -ECONNRESET, "connection closed before a whole reply");
}
END_TEST

START_TEST(test_fc_garbage)
{
	http_bad_peer(FAKE_FC, GARBAGE, -EPROTO, "GET /balloon: not an HTTP reply");
}
END_TEST

START_TEST(test_fc_truncated_json)
{
	http_bad_peer(
	    FAKE_FC, TRUNCATED, -EPROTO,
	    "GET /balloon: not a JSON object: \"{\"mem_size_mib\": 1024, \"vcpu_count\"\"");
}
END_TEST

/* ---- Cloud Hypervisor ---------------------------------------------------------- */

START_TEST(test_ch_set_query_round_trip)
{
	struct dd_balloon *b;
	struct dd_balloon_stats st;
	bool before[MAX_FDS];
	char err[256];

	fake_start(FAKE_CH);
	b = peer(DD_BALLOON_KIND_CLOUD_HYPERVISOR, 2000);
	fds_open(before);
	/* Bytes, in whole 4 KiB pages. */
	ck_assert_int_eq(dd_balloon_set(b, 256 * MIB + 5000, err, sizeof(err)), 0);
	ck_assert_str_eq(err, "");
	ck_assert_str_eq(fk->method, "PUT");
	ck_assert_str_eq(fk->path, "/api/v1/vm.resize");
	ck_assert_str_eq(fk->ctype, "application/json");
	ck_assert_str_eq(fk->body, "{\"desired_balloon\":268439552}");
	ck_assert_int_eq(fk->target_bytes, 256 * MIB + 4096);

	ck_assert_int_eq(dd_balloon_query(b, &st, err, sizeof(err)), 0);
	ck_assert_int_eq(st.guest_ram_bytes, 2 * GIB);
	ck_assert_int_eq(st.target_bytes, 256 * MIB + 4096);
	ck_assert_int_eq(st.balloon_bytes, 256 * MIB + 4096);
	ck_assert_int_eq(st.guest_total_bytes, 2 * GIB - 256 * MIB - 4096);
	ck_assert_int_eq(st.guest_available_bytes, 512 * MIB);
	ck_assert_int_eq(st.guest_committed_bytes, 1280 * MIB - 4096);
	ck_assert_int_eq(dd_balloon_guest_pressure(&st), 71);
	ck_assert_int_eq(fk->connections, 2);
	ck_assert_int_eq(fk->requests, 4);
	assert_new_fds_cloexec(before);
	peer_free(b);
}
END_TEST

/* Releases without vm.balloon-stats: the size from memory_actual_size, asked once. */
START_TEST(test_ch_without_balloon_stats_endpoint)
{
	struct dd_balloon *b;
	struct dd_balloon_stats st;
	char err[256];

	fake_start(FAKE_CH);
	fk->ch_stats = false;
	b = peer(DD_BALLOON_KIND_CLOUD_HYPERVISOR, 2000);
	ck_assert_int_eq(dd_balloon_set(b, GIB, err, sizeof(err)), 0);
	ck_assert_int_eq(dd_balloon_query(b, &st, err, sizeof(err)), 0);
	ck_assert_str_eq(err, "");
	ck_assert_int_eq(st.balloon_bytes, GIB);
	ck_assert_int_eq(st.target_bytes, GIB);
	ck_assert_int_eq(st.guest_total_bytes, -1);
	ck_assert_int_eq(dd_balloon_query(b, &st, err, sizeof(err)), 0);
	ck_assert_int_eq(fk->stats_requests, 1);
	peer_free(b);
}
END_TEST

/* RAM in memory zones, one with hot-plugged memory: all of it is the guest's. */
START_TEST(test_ch_memory_zones)
{
	struct dd_balloon *b;
	struct dd_balloon_stats st;
	char err[256];

	fake_start(FAKE_CH);
	fk->ch_zones = true;
	b = peer(DD_BALLOON_KIND_CLOUD_HYPERVISOR, 2000);
	ck_assert_int_eq(dd_balloon_set(b, 2 * GIB - 4096, err, sizeof(err)), 0);
	ck_assert_int_eq(dd_balloon_set(b, 2 * GIB, err, sizeof(err)), -ERANGE);
	ck_assert_int_eq(dd_balloon_set(b, 512 * MIB, err, sizeof(err)), 0);
	ck_assert_int_eq(dd_balloon_query(b, &st, err, sizeof(err)), 0);
	ck_assert_int_eq(st.guest_ram_bytes, 2 * GIB);
	ck_assert_int_eq(st.balloon_bytes, 512 * MIB);
	peer_free(b);
}
END_TEST

START_TEST(test_ch_no_balloon_device)
{
	struct dd_balloon *b;
	struct dd_balloon_stats st;
	char err[256];

	fake_start(FAKE_CH);
	fk->has_balloon = false;
	b = peer(DD_BALLOON_KIND_CLOUD_HYPERVISOR, 2000);
	ck_assert_int_eq(dd_balloon_set(b, 64 * MIB, err, sizeof(err)), -ENOTSUP);
	assert_err_has(err, "no balloon device");
	ck_assert_int_eq(dd_balloon_query(b, &st, err, sizeof(err)), -ENOTSUP);
	ck_assert_int_eq(fk->balloon_cmds, 0);
	ck_assert_int_eq(fk->body[0], '\0');
	peer_free(b);
}
END_TEST

START_TEST(test_ch_error_messages)
{
	struct dd_balloon *b;
	char err[256];

	fake_start(FAKE_CH);
	b = peer(DD_BALLOON_KIND_CLOUD_HYPERVISOR, 2000);
	set_mode(REFUSE);
	ck_assert_int_eq(dd_balloon_set(b, 64 * MIB, err, sizeof(err)), -EPROTO);
	assert_err_has(err, "cloud-hypervisor ");
	assert_err_has(err, "PUT /api/v1/vm.resize: HTTP 500: Error from API: The VM could not be "
			    "resized: Error resizing VM: Cannot resize the balloon");
	ck_assert_int_eq(dd_balloon_set(b, 2 * GIB, err, sizeof(err)), -ERANGE);
	assert_recovers(b);
	peer_free(b);
}
END_TEST

START_TEST(test_ch_silent_peer_times_out)
{
	http_bad_peer(FAKE_CH, SILENT, -ETIMEDOUT, "GET /api/v1/vm.info: no reply within 400 ms");
}
END_TEST

START_TEST(test_ch_hangup_mid_reply)
{
	http_bad_peer(FAKE_CH, HANGUP, -ECONNRESET, "connection closed before a whole reply");
}
END_TEST

START_TEST(test_ch_truncated_json)
{
	http_bad_peer(FAKE_CH, TRUNCATED, -EPROTO, "GET /api/v1/vm.info: not a JSON object");
}
END_TEST

Suite *balloon_suite(void)
{
	Suite *s = suite_create("balloon");
	TCase *tc;

	tc = tcase_create("api");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_new_refuses_bad_arguments);
	tcase_add_test(tc, test_guest_pressure);
	tcase_add_test(tc, test_no_peer);
	suite_add_tcase(s, tc);

	tc = tcase_create("qmp");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_qmp_set_query_round_trip);
	tcase_add_test(tc, test_qmp_guest_stats);
	tcase_add_test(tc, test_qmp_stats_interval_kept_and_unreported);
	tcase_add_test(tc, test_qmp_finds_anonymous_balloon);
	tcase_add_test(tc, test_qmp_old_qemu_ram_fallback);
	tcase_add_test(tc, test_qmp_erange);
	tcase_add_test(tc, test_qmp_no_balloon_device);
	tcase_add_test(tc, test_qmp_error_reply);
	tcase_add_test(tc, test_qmp_hangup_mid_reply);
	tcase_add_test(tc, test_qmp_garbage);
	tcase_add_test(tc, test_qmp_truncated_json);
	tcase_add_test(tc, test_qmp_stall_after_negotiation);
	tcase_add_test(tc, test_qmp_silent_peer_times_out);
	suite_add_tcase(s, tc);

	tc = tcase_create("firecracker");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_fc_set_query_round_trip);
	tcase_add_test(tc, test_fc_without_statistics);
	tcase_add_test(tc, test_fc_balloon_clamped_to_guest);
	tcase_add_test(tc, test_fc_fault_message);
	tcase_add_test(tc, test_fc_no_balloon_device);
	tcase_add_test(tc, test_fc_erange);
	tcase_add_test(tc, test_fc_silent_peer_times_out);
	tcase_add_test(tc, test_fc_hangup_mid_reply);
	tcase_add_test(tc, test_fc_garbage);
	tcase_add_test(tc, test_fc_truncated_json);
	suite_add_tcase(s, tc);

	tc = tcase_create("cloud-hypervisor");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_ch_set_query_round_trip);
	tcase_add_test(tc, test_ch_without_balloon_stats_endpoint);
	tcase_add_test(tc, test_ch_memory_zones);
	tcase_add_test(tc, test_ch_no_balloon_device);
	tcase_add_test(tc, test_ch_error_messages);
	tcase_add_test(tc, test_ch_silent_peer_times_out);
	tcase_add_test(tc, test_ch_hangup_mid_reply);
	tcase_add_test(tc, test_ch_truncated_json);
	suite_add_tcase(s, tc);
	return s;
}

/* Sockets of tests that failed before their teardown. */
static void remove_sock_dir(void)
{
	struct dirent *e;
	DIR *d = opendir(sock_dir);
	char path[sizeof(sock_dir) + 300];

	while (d && (e = readdir(d)))
		if (e->d_name[0] != '.') {
			snprintf(path, sizeof(path), "%s/%s", sock_dir, e->d_name);
			unlink(path);
		}
	if (d)
		closedir(d);
	rmdir(sock_dir);
}

int main(void)
{
	SRunner *sr;
	int failed;

	if (!mkdtemp(sock_dir)) {
		perror("mkdtemp");
		return 1;
	}
	sr = srunner_create(balloon_suite());
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	remove_sock_dir();
	return failed ? 1 : 0;
}
