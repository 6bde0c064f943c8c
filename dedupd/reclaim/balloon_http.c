// SPDX-License-Identifier: MIT
/*
 * The Firecracker and Cloud Hypervisor backends: their REST APIs, HTTP/1.1
 * over the VMM's UNIX socket, spoken through libcurl (CURLOPT_UNIX_SOCKET_PATH).
 *
 * A call's requests share one curl handle and so one keep-alive connection;
 * the handle goes at the end of the call, so nothing stays open between
 * calls: the VMM's API server keeps a few connection slots for its
 * orchestrator, and libcurl before 8.8 opens its internal wake-up socketpair
 * without SOCK_CLOEXEC (curl issue #13618), so it must not outlive the call.
 * A transport failure drops the handle at once; the next call starts afresh.
 *
 * Firecracker (src/firecracker/swagger/firecracker.yaml, docs/ballooning.md):
 *   GET   /machine-config      {"mem_size_mib": N, ...}: guest RAM (read once)
 *   PATCH /balloon             {"amount_mib": N} -> 204: the balloon's target
 *   GET   /balloon             {"amount_mib": N, ...}; 400: no balloon device
 *   GET   /balloon/statistics  actual_pages, total_memory, available_memory...
 *                              (bytes); 400 unless statistics were enabled at
 *                              boot (stats_polling_interval_s > 0)
 *   Errors: 400 with {"fault_message": "..."}.
 *
 * Cloud Hypervisor (vmm/src/api/openapi/cloud-hypervisor.yaml):
 *   GET /api/v1/vm.info           config.memory.size (+ hot-plugged, zones),
 *                                 config.balloon.size (the target; the
 *                                 balloon is absent or null without one), and
 *                                 memory_actual_size = RAM - balloon now
 *   PUT /api/v1/vm.resize         {"desired_balloon": BYTES} -> 204
 *   GET /api/v1/vm.balloon-stats  balloon_actual and the guest's statistics
 *                                 (newer releases; 404 before: remembered)
 *   Errors: 4xx/5xx with a JSON array of messages (newer) or plain text.
 *
 * Every call has one deadline; each request gets what is left of it as
 * CURLOPT_TIMEOUT_MS. Sockets are opened close-on-exec through
 * CURLOPT_OPENSOCKETFUNCTION; CURLOPT_NOSIGNAL keeps curl away from signals.
 */
#include "dedupd/reclaim/balloon.h"

#include <curl/curl.h>
#include <errno.h>
#include <json-c/json.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

/* The largest reply accepted: vm.info of a VM with many devices is ~10 KiB. */
#define HTTP_REPLY_MAX (1u << 20)
#define MIB_BYTES (1ll << 20)
#define PAGE_BYTES 4096ll

struct http {
	enum dd_balloon_kind kind;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	int timeout_ms;
	int64_t fc_ram_bytes; /* Firecracker's mem_size_mib in bytes, once read; -1 */
	bool ch_no_stats;     /* Cloud Hypervisor without vm.balloon-stats */
};

/* One public call: its connection, deadline and error text. */
struct call {
	struct http *h;
	CURL *curl; /* NULL until the first request, and after a failure */
	uint64_t deadline_ms;
	char *err;
	size_t errlen;
};

/* One exchange: status 0 when no HTTP reply came. */
struct reply {
	long status;
	char *body; /* NUL-terminated, or NULL when empty */
	size_t len;
	bool too_big;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_FAILED_INIT;

static void curl_init(void)
{
	curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static const char *kind_name(const struct http *h)
{
	return dd_balloon_kind_name(h->kind);
}

static int call_fail(struct call *c, int r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int call_fail(struct call *c, int r, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return dd_balloon_fail(c->err, c->errlen, r, "%s %s: %s", kind_name(c->h), c->h->path, msg);
}

static long remaining_ms(const struct call *c)
{
	uint64_t now = dd_balloon_now_ms();

	return now >= c->deadline_ms ? 0 : (long)(c->deadline_ms - now);
}

static curl_socket_t open_cloexec(void *arg, curlsocktype purpose, struct curl_sockaddr *a)
{
	return socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
}

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
	struct reply *rep = arg;
	size_t len = size * n;
	char *b;

	if (rep->len + len >= HTTP_REPLY_MAX) {
		rep->too_big = true;
		return 0;
	}
	b = realloc(rep->body, rep->len + len + 1);
	if (!b)
		return 0;
	memcpy(b + rep->len, p, len);
	rep->len += len;
	b[rep->len] = '\0';
	rep->body = b;
	return len;
}

static void reply_free(struct reply *rep)
{
	free(rep->body);
	memset(rep, 0, sizeof(*rep));
}

/* A curl failure as -errno: the socket's, a timeout, a hang-up, or not HTTP. */
static int transport_error(struct call *c, CURLcode rc, const char *method, const char *path,
			   const struct reply *rep)
{
	long os_errno = 0;

	switch (rc) {
	case CURLE_COULDNT_CONNECT:
		curl_easy_getinfo(c->curl, CURLINFO_OS_ERRNO, &os_errno);
		if (os_errno <= 0)
			os_errno = ECONNREFUSED;
		return call_fail(c, -(int)os_errno, "connect: %s", strerror((int)os_errno));
	case CURLE_OPERATION_TIMEDOUT:
		return call_fail(c, -ETIMEDOUT, "%s %s: no reply within %d ms", method, path,
				 c->h->timeout_ms);
	case CURLE_GOT_NOTHING:
	case CURLE_PARTIAL_FILE:
	case CURLE_RECV_ERROR:
	case CURLE_SEND_ERROR:
		return call_fail(c, -ECONNRESET,
				 "%s %s: connection closed before a whole reply (%s)", method, path,
				 curl_easy_strerror(rc));
	case CURLE_OUT_OF_MEMORY:
		return call_fail(c, -ENOMEM, "%s %s: out of memory", method, path);
	case CURLE_WRITE_ERROR:
		if (rep->too_big)
			return call_fail(c, -EPROTO, "%s %s: a reply longer than %u bytes", method,
					 path, HTTP_REPLY_MAX);
		return call_fail(c, -ENOMEM, "%s %s: out of memory", method, path);
	default:
		return call_fail(c, -EPROTO, "%s %s: not an HTTP reply (%s)", method, path,
				 curl_easy_strerror(rc));
	}
}

static int set_headers(CURL *curl, struct curl_slist **hdrs, bool body)
{
	static const char *const all[] = { "Accept: application/json", "Expect:" };
	struct curl_slist *l = NULL, *n;

	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]) + body; i++) {
		n = curl_slist_append(l, i < 2 ? all[i] : "Content-Type: application/json");
		if (!n) {
			curl_slist_free_all(l);
			return -ENOMEM;
		}
		l = n;
	}
	*hdrs = l;
	return curl_easy_setopt(curl, CURLOPT_HTTPHEADER, l) == CURLE_OK ? 0 : -ENOMEM;
}

/* Everything one request needs; the connection survives curl_easy_reset(). */
static int set_options(struct call *c, const char *method, const char *url, const char *body,
		       struct reply *rep, long left)
{
	CURL *e = c->curl;
	CURLcode rc;

	curl_easy_reset(e);
	rc = curl_easy_setopt(e, CURLOPT_URL, url);
	if (!rc)
		rc = curl_easy_setopt(e, CURLOPT_UNIX_SOCKET_PATH, c->h->path);
	if (!rc)
		rc = curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http");
	if (!rc)
		rc = curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	if (!rc)
		rc = curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, left);
	if (!rc)
		rc = curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, left);
	if (!rc)
		rc = curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, open_cloexec);
	if (!rc)
		rc = curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
	if (!rc)
		rc = curl_easy_setopt(e, CURLOPT_WRITEDATA, rep);
	if (!rc && strcmp(method, "GET"))
		rc = curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
	if (!rc && body)
		rc = curl_easy_setopt(e, CURLOPT_POSTFIELDS,
				      body); /* not copied: outlives perform */
	if (!rc && body)
		rc = curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
	return rc == CURLE_OK ? 0 : -ENOMEM;
}

/*
 * One HTTP exchange within what is left of the call's time. Returns 0 with
 * rep->status set whatever the status, or -errno when no reply came.
 */
static int request(struct call *c, const char *method, const char *path, const char *body,
		   struct reply *rep)
{
	struct curl_slist *hdrs = NULL;
	long left = remaining_ms(c);
	char url[256];
	CURLcode rc;
	int r;

	memset(rep, 0, sizeof(*rep));
	if (left <= 0)
		return call_fail(c, -ETIMEDOUT, "%s %s: no time left within %d ms", method, path,
				 c->h->timeout_ms);
	if (!c->curl && !(c->curl = curl_easy_init()))
		return call_fail(c, -ENOMEM, "curl_easy_init failed");
	snprintf(url, sizeof(url), "http://localhost%s", path);
	r = set_options(c, method, url, body, rep, left);
	if (r == 0)
		r = set_headers(c->curl, &hdrs, body);
	if (r < 0) {
		curl_slist_free_all(hdrs);
		return call_fail(c, r, "%s %s: setting up the request failed", method, path);
	}
	rc = curl_easy_perform(c->curl);
	curl_slist_free_all(hdrs);
	if (rc != CURLE_OK) {
		r = transport_error(c, rc, method, path, rep);
		reply_free(rep);
		curl_easy_cleanup(c->curl);
		c->curl = NULL;
		return r;
	}
	curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &rep->status);
	return 0;
}

/*
 * What the peer said about a failure: Firecracker's fault_message, Cloud
 * Hypervisor's array of messages (outermost first), or the text itself.
 */
static void peer_message(const struct reply *rep, char *out, size_t outlen)
{
	struct json_object *o = rep->body ? json_tokener_parse(rep->body) : NULL, *v;
	char joined[512] = "";
	size_t n = 0;

	if (json_object_object_get_ex(o, "fault_message", &v) &&
	    json_object_is_type(v, json_type_string)) {
		dd_balloon_quote(out, outlen, json_object_get_string(v), 300);
	} else if (json_object_is_type(o, json_type_array)) {
		for (size_t i = 0; i < json_object_array_length(o) && n < sizeof(joined); i++) {
			v = json_object_array_get_idx(o, i);
			if (json_object_is_type(v, json_type_string))
				n += (size_t)snprintf(joined + n, sizeof(joined) - n, "%s%s",
						      n ? ": " : "", json_object_get_string(v));
		}
		dd_balloon_quote(out, outlen, joined, sizeof(joined));
	} else {
		dd_balloon_quote(out, outlen, rep->body, 300);
	}
	json_object_put(o);
}

static int status_error(struct call *c, const char *method, const char *path,
			const struct reply *rep)
{
	char msg[320];

	peer_message(rep, msg, sizeof(msg));
	return call_fail(c, -EPROTO, "%s %s: HTTP %ld%s%s", method, path, rep->status,
			 *msg ? ": " : "", msg);
}

/*
 * GET path and parse the JSON object it returns. *status (may be NULL) gets
 * the HTTP status, 0 when none came: callers tell a peer's refusal (-EPROTO
 * with a status >= 300) from the rest.
 */
static int get_json(struct call *c, const char *path, struct json_object **obj, long *status)
{
	struct reply rep;
	char text[64];
	int r;

	*obj = NULL;
	r = request(c, "GET", path, NULL, &rep);
	if (status)
		*status = rep.status;
	if (r < 0)
		return r;
	if (rep.status < 200 || rep.status > 299) {
		r = status_error(c, "GET", path, &rep);
	} else {
		*obj = rep.body ? json_tokener_parse(rep.body) : NULL;
		if (!json_object_is_type(*obj, json_type_object)) {
			json_object_put(*obj);
			*obj = NULL;
			dd_balloon_quote(text, sizeof(text), rep.body, 48);
			r = call_fail(c, -EPROTO, "GET %s: not a JSON object: \"%s\"", path, text);
		}
	}
	reply_free(&rep);
	return r;
}

/* method path with the body {"key": value}; 2xx is success. */
static int send_json(struct call *c, const char *method, const char *path, const char *key,
		     int64_t value, long *status)
{
	struct json_object *o = json_object_new_object();
	struct reply rep;
	const char *body;
	int r;

	*status = 0;
	if (o)
		json_object_object_add(o, key, json_object_new_int64(value));
	body = o ? json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN) : NULL;
	if (!body) {
		json_object_put(o);
		return call_fail(c, -ENOMEM, "%s %s: out of memory", method, path);
	}
	r = request(c, method, path, body, &rep);
	json_object_put(o);
	*status = rep.status;
	if (r == 0 && (rep.status < 200 || rep.status > 299))
		r = status_error(c, method, path, &rep);
	reply_free(&rep);
	return r;
}

/* v units as bytes; -1 when v is unknown or would overflow. */
static int64_t scaled(int64_t v, int64_t unit)
{
	return v < 0 || v > INT64_MAX / unit ? -1 : v * unit;
}

/* ---- Firecracker ---- */

static int fc_ram(struct call *c, int64_t *ram)
{
	struct json_object *o;
	int r;

	if (c->h->fc_ram_bytes < 0) {
		r = get_json(c, "/machine-config", &o, NULL);
		if (r < 0)
			return r;
		c->h->fc_ram_bytes = scaled(dd_balloon_json_bytes(o, "mem_size_mib"), MIB_BYTES);
		json_object_put(o);
		if (c->h->fc_ram_bytes <= 0) {
			c->h->fc_ram_bytes = -1;
			return call_fail(c, -EPROTO, "GET /machine-config: no mem_size_mib");
		}
	}
	*ram = c->h->fc_ram_bytes;
	return 0;
}

/* GET /balloon answers 400 exactly when the VM has no balloon device. */
static int fc_balloon(struct call *c, struct json_object **cfg)
{
	long status;
	int r;

	r = get_json(c, "/balloon", cfg, &status);
	return r == -EPROTO && status == 400 ? -ENOTSUP : r;
}

static int fc_set(struct call *c, uint64_t bytes)
{
	struct json_object *cfg;
	char first[512];
	int64_t ram;
	long status;
	int r;

	r = fc_ram(c, &ram);
	if (r < 0)
		return r;
	if (bytes >= (uint64_t)ram)
		return call_fail(
		    c, -ERANGE,
		    "a balloon of %llu bytes is not smaller than the guest's %lld bytes",
		    (unsigned long long)bytes, (long long)ram);
	r = send_json(c, "PATCH", "/balloon", "amount_mib", (int64_t)(bytes / MIB_BYTES), &status);
	if (r != -EPROTO || status != 400)
		return r;
	/* Refused: keep Firecracker's reason, and tell whether there is a balloon at all. */
	snprintf(first, sizeof(first), "%s", c->err);
	if (fc_balloon(c, &cfg) == -ENOTSUP)
		r = -ENOTSUP;
	json_object_put(cfg);
	snprintf(c->err, c->errlen, "%s", first);
	return r;
}

static int fc_query(struct call *c, struct dd_balloon_stats *st)
{
	struct json_object *o;
	int64_t ram, pages;
	long status;
	int r;

	r = fc_ram(c, &ram);
	if (r == 0)
		r = fc_balloon(c, &o);
	if (r < 0)
		return r;
	st->guest_ram_bytes = ram;
	st->target_bytes = scaled(dd_balloon_json_bytes(o, "amount_mib"), MIB_BYTES);
	json_object_put(o);
	if (st->target_bytes < 0)
		return call_fail(c, -EPROTO, "GET /balloon: no amount_mib");

	r = get_json(c, "/balloon/statistics", &o, &status);
	if (r == -EPROTO && status == 400)
		return 0; /* statistics were not enabled at boot: the balloon's size is unknown */
	if (r < 0)
		return r;
	pages = dd_balloon_json_bytes(o, "actual_pages");
	st->balloon_bytes = pages >= 0 ? scaled(pages, PAGE_BYTES)
				       : scaled(dd_balloon_json_bytes(o, "actual_mib"), MIB_BYTES);
	dd_balloon_stats_guest(
	    st, dd_balloon_json_bytes(o, "total_memory"), dd_balloon_json_bytes(o, "free_memory"),
	    dd_balloon_json_bytes(o, "available_memory"), dd_balloon_json_bytes(o, "disk_caches"));
	json_object_put(o);
	return 0;
}

/* ---- Cloud Hypervisor ---- */

/* A sum of byte counts a peer chose: a missing one (-1) adds 0; overflow is -1 for good. */
static int64_t add_bytes(int64_t sum, int64_t v)
{
	if (sum < 0 || v <= 0)
		return sum;
	return sum > INT64_MAX - v ? -1 : sum + v;
}

/* Boot memory, hot-plugged memory and memory zones: what memory_actual_size counts from. */
static int64_t ch_ram(struct json_object *mem)
{
	static const char *const keys[] = { "size", "hotplugged_size" };
	struct json_object *zones = NULL;
	size_t nzones;
	int64_t sum = 0;

	for (size_t k = 0; k < 2; k++)
		sum = add_bytes(sum, dd_balloon_json_bytes(mem, keys[k]));
	json_object_object_get_ex(mem, "zones", &zones);
	nzones = json_object_is_type(zones, json_type_array) ? json_object_array_length(zones) : 0;
	for (size_t i = 0; i < nzones; i++) {
		struct json_object *z = json_object_array_get_idx(zones, i);

		for (size_t k = 0; k < 2; k++)
			sum = add_bytes(sum, dd_balloon_json_bytes(z, keys[k]));
	}
	return sum > 0 ? sum : -1;
}

/* vm.info into st: guest RAM, the balloon's target and its size now. */
static int ch_info(struct call *c, struct dd_balloon_stats *st)
{
	struct json_object *info, *config, *mem = NULL, *balloon = NULL;
	bool has_balloon;
	int64_t actual;
	int r;

	r = get_json(c, "/api/v1/vm.info", &info, NULL);
	if (r < 0)
		return r;
	if (json_object_object_get_ex(info, "config", &config)) {
		json_object_object_get_ex(config, "memory", &mem);
		json_object_object_get_ex(config, "balloon", &balloon);
	}
	st->guest_ram_bytes = ch_ram(mem);
	st->target_bytes = dd_balloon_json_bytes(balloon, "size");
	actual = dd_balloon_json_bytes(info, "memory_actual_size");
	has_balloon = json_object_is_type(balloon, json_type_object);
	json_object_put(info);
	if (st->guest_ram_bytes <= 0)
		return call_fail(c, -EPROTO, "GET /api/v1/vm.info: no config.memory.size");
	if (!has_balloon)
		return call_fail(c, -ENOTSUP, "the VM has no balloon device (no config.balloon)");
	if (actual >= 0)
		st->balloon_bytes = actual < st->guest_ram_bytes ? st->guest_ram_bytes - actual : 0;
	return 0;
}

static int ch_set(struct call *c, uint64_t bytes)
{
	struct dd_balloon_stats st = { 0 };
	long status;
	int r;

	r = ch_info(c, &st);
	if (r < 0)
		return r;
	if (bytes >= (uint64_t)st.guest_ram_bytes)
		return call_fail(
		    c, -ERANGE,
		    "a balloon of %llu bytes is not smaller than the guest's %lld bytes",
		    (unsigned long long)bytes, (long long)st.guest_ram_bytes);
	bytes -= bytes % PAGE_BYTES;
	return send_json(c, "PUT", "/api/v1/vm.resize", "desired_balloon", (int64_t)bytes, &status);
}

/*
 * The guest's statistics, from releases that serve vm.balloon-stats. A 404
 * means an older release (remembered); other refusals (500: the guest's
 * driver has no statistics) leave them unknown.
 */
static int ch_stats(struct call *c, struct dd_balloon_stats *st)
{
	struct json_object *o, *s;
	int64_t actual;
	long status;
	int r;

	if (c->h->ch_no_stats)
		return 0;
	r = get_json(c, "/api/v1/vm.balloon-stats", &o, &status);
	if (r == -EPROTO && status >= 300) {
		c->h->ch_no_stats = status == 404;
		return 0;
	}
	if (r < 0)
		return r;
	actual = dd_balloon_json_bytes(o, "balloon_actual");
	if (actual >= 0)
		st->balloon_bytes = actual;
	if (dd_balloon_json_bytes(o, "last_update") > 0 &&
	    json_object_object_get_ex(o, "stats", &s))
		dd_balloon_stats_guest(st, dd_balloon_json_bytes(s, "total_memory"),
				       dd_balloon_json_bytes(s, "free_memory"),
				       dd_balloon_json_bytes(s, "available_memory"),
				       dd_balloon_json_bytes(s, "disk_caches"));
	json_object_put(o);
	return 0;
}

static int ch_query(struct call *c, struct dd_balloon_stats *st)
{
	int r = ch_info(c, st);

	return r < 0 ? r : ch_stats(c, st);
}

/* ---- the backend ---- */

static void *http_create(enum dd_balloon_kind kind, const char *path, int timeout_ms)
{
	struct http *h;

	pthread_once(&curl_once, curl_init);
	if (curl_init_rc != CURLE_OK) {
		errno = ENOMEM;
		return NULL;
	}
	h = calloc(1, sizeof(*h));
	if (!h)
		return NULL;
	h->kind = kind;
	snprintf(h->path, sizeof(h->path), "%s", path);
	h->timeout_ms = timeout_ms;
	h->fc_ram_bytes = -1;
	return h;
}

static void http_destroy(void *be)
{
	free(be);
}

static void call_init(struct call *c, struct http *h, char *err, size_t errlen)
{
	c->h = h;
	c->curl = NULL;
	c->deadline_ms = dd_balloon_now_ms() + (uint64_t)h->timeout_ms;
	c->err = err;
	c->errlen = errlen;
}

static int call_end(struct call *c, int r)
{
	if (c->curl)
		curl_easy_cleanup(c->curl);
	c->curl = NULL;
	if (r == 0)
		c->err[0] = '\0';
	return r;
}

static int http_set(void *be, uint64_t bytes, char *err, size_t errlen)
{
	struct http *h = be;
	struct call c;
	int r;

	call_init(&c, h, err, errlen);
	r = h->kind == DD_BALLOON_KIND_FIRECRACKER ? fc_set(&c, bytes) : ch_set(&c, bytes);
	return call_end(&c, r);
}

static int http_query(void *be, struct dd_balloon_stats *st, char *err, size_t errlen)
{
	struct http *h = be;
	struct call c;
	int r;

	call_init(&c, h, err, errlen);
	r = h->kind == DD_BALLOON_KIND_FIRECRACKER ? fc_query(&c, st) : ch_query(&c, st);
	return call_end(&c, r);
}

const struct dd_balloon_backend dd_balloon_http_backend = {
	.create = http_create,
	.destroy = http_destroy,
	.set = http_set,
	.query = http_query,
};
