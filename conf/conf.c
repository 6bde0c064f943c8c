// SPDX-License-Identifier: MIT
/*
 * The configuration: one table of knobs drives everything else.
 *
 * Each entry of knobs[] names a key, its section, the kind of value (integer,
 * duration, size, ratio, bool, octal mode, enumeration, string), where it
 * lives in struct dd_conf, its range and whether the daemon can change it at
 * run time. Defaults live in dd_conf_init(); the parser, dd_conf_set(), the
 * dump, the comparison and the reload merge all walk the table, so a new knob
 * is one line in the table, one in dd_conf_init() and one paragraph in
 * conf/dedupd.conf and dedupd.conf.5 (tests/check_conf.c checks those two
 * mention every key).
 *
 * Files are read with inih through our own line reader. The reader is what
 * gives us line numbers (inih's handler has none unless the library is built
 * with INI_HANDLER_LINENO, and Debian's is not); it also sees every section
 * header, so empty or unknown sections are caught, and it strips leading
 * whitespace, which turns off inih's multi-line continuation: an indented
 * "key = value" is an ordinary line, not a surprise continuation of the
 * previous value. Lines are limited by inih's 200-byte buffer; a longer one is
 * an error rather than being silently split.
 */
#include "conf/conf.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define CLIENT_NAME_MAX 40 /* inih keeps 50 bytes of a section name */
#define MSG_MAX 512
#define VALUE_MAX (DD_CONF_PATH_MAX + 64)

enum kind {
	K_BOOL,	  /* bool */
	K_U32,	  /* uint32_t, decimal */
	K_MSEC,	  /* uint32_t milliseconds; accepts ms, s, min, h */
	K_SEC,	  /* uint32_t seconds; accepts ms, s, min, h */
	K_SIZE,	  /* uint64_t bytes; accepts K, M, G, T, KiB, ... */
	K_DOUBLE, /* double */
	K_MODE,	  /* uint32_t, octal permission bits */
	K_ENUM,	  /* int, one of names[] */
	K_STR,	  /* char[size] */
	K_UID,	  /* int64_t, -1 when unset */
};

struct enum_name {
	const char *name;
	int value;
};

struct knob {
	const char *section; /* NULL: a [client.NAME] key */
	const char *name;
	const char *key; /* "section.name" or "client.*.name" */
	enum kind kind;
	size_t off;
	size_t size; /* K_STR: the buffer */
	uint64_t lo, hi;
	double dlo, dhi;
	const struct enum_name *names;
	/* K_STR: extra validation; writes why it is bad into why. */
	int (*check)(const char *v, char *why, size_t len);
	bool reloadable;
	bool skip_unset; /* dump: client keys left at "unset" are not printed */
};

static const struct enum_name log_levels[] = {
	{ "err", DD_CONF_LOG_ERR },
	{ "warning", DD_CONF_LOG_WARNING },
	{ "info", DD_CONF_LOG_INFO },
	{ "debug", DD_CONF_LOG_DEBUG },
	{ NULL, 0 },
};
static const struct enum_name domains[] = {
	{ "all", DD_CONF_DOMAIN_ALL },
	{ "uid", DD_CONF_DOMAIN_UID },
	{ "client", DD_CONF_DOMAIN_CLIENT },
	{ "salt", DD_CONF_DOMAIN_SALT },
	{ NULL, 0 },
};
static const struct enum_name thps[] = {
	{ "keep", DD_CONF_THP_KEEP },
	{ "split", DD_CONF_THP_SPLIT },
	{ NULL, 0 },
};
static const struct enum_name balloons[] = {
	{ "none", DD_CONF_BALLOON_NONE },
	{ "callback", DD_CONF_BALLOON_CALLBACK },
	{ "qmp", DD_CONF_BALLOON_QMP },
	{ "firecracker", DD_CONF_BALLOON_FIRECRACKER },
	{ "cloud-hypervisor", DD_CONF_BALLOON_CLOUD_HYPERVISOR },
	{ NULL, 0 },
};

static int check_abs_path(const char *v, char *why, size_t len);
static int check_group(const char *v, char *why, size_t len);
static int check_psi(const char *v, char *why, size_t len);
static int check_abs_or_empty(const char *v, char *why, size_t len);
static int check_textfile(const char *v, char *why, size_t len);
static int check_listen(const char *v, char *why, size_t len);

#define SZ(x) ((uint64_t)1 << (x))
/* Keys are spelt as their fields (section s, field n of struct dd_conf's
 * member s), so F() builds the key and the offset from one spelling. */
#define F(s, n) .section = #s, .name = #n, .key = #s "." #n, .off = offsetof(struct dd_conf, s.n)
#define RANGE(lo_, hi_) .lo = (lo_), .hi = (hi_)
#define STR(s, n, chk)                                                                             \
	F(s, n), .kind = K_STR, .size = sizeof(((struct dd_conf *)0)->s.n), .check = chk

static const struct knob knobs[] = {
	/* [daemon] */
	{ STR(daemon, socket, check_abs_path) },
	{ F(daemon, socket_mode), .kind = K_MODE, RANGE(0, 0777) },
	{ STR(daemon, socket_group, check_group) },
	{ STR(daemon, admin_group, check_group), .reloadable = true },
	{ F(daemon, readonly_open), .kind = K_BOOL, .reloadable = true },
	{ F(daemon, log_level), .kind = K_ENUM, .names = log_levels, .reloadable = true },
	{ F(daemon, watchdog), .kind = K_BOOL },
	{ F(daemon, agent_timeout_millisecs), .kind = K_MSEC, RANGE(10, 600000),
	  .reloadable = true },
	/* [scan] */
	{ F(scan, pages_to_scan), .kind = K_U32, RANGE(1, 10000000), .reloadable = true },
	{ F(scan, sleep_millisecs), .kind = K_MSEC, RANGE(0, 60000), .reloadable = true },
	{ F(scan, scan_threads), .kind = K_U32, RANGE(0, 1024) },
	{ F(scan, merge_batch_pages), .kind = K_U32, RANGE(1, 1024), .reloadable = true },
	{ F(scan, max_vmas_per_client), .kind = K_U32, RANGE(0, 100000000), .reloadable = true },
	{ F(scan, zero_pages), .kind = K_BOOL, .reloadable = true },
	{ F(scan, share_domain), .kind = K_ENUM, .names = domains },
	{ F(scan, thp), .kind = K_ENUM, .names = thps, .reloadable = true },
	{ F(scan, agent_hash), .kind = K_BOOL, .reloadable = true },
	/* [pressure] */
	{ F(pressure, bpf), .kind = K_BOOL },
	{ STR(pressure, psi_trigger, check_psi) },
	{ STR(pressure, cgroup, check_abs_or_empty) },
	{ F(pressure, high_free_percent), .kind = K_DOUBLE, .dhi = 100, .reloadable = true },
	{ F(pressure, soft_free_percent), .kind = K_DOUBLE, .dhi = 100, .reloadable = true },
	{ F(pressure, hard_free_percent), .kind = K_DOUBLE, .dhi = 100, .reloadable = true },
	{ F(pressure, low_free_percent), .kind = K_DOUBLE, .dhi = 100, .reloadable = true },
	{ F(pressure, tick_millisecs), .kind = K_MSEC, RANGE(10, 10000), .reloadable = true },
	/* [reclaim] */
	{ F(reclaim, tax_rate), .kind = K_DOUBLE, .dhi = 0.99, .reloadable = true },
	{ F(reclaim, sample_period_sec), .kind = K_SEC, RANGE(1, 3600), .reloadable = true },
	{ F(reclaim, sample_pages), .kind = K_U32, RANGE(1, 10000), .reloadable = true },
	{ F(reclaim, default_shares), .kind = K_U32, RANGE(1, 1000000), .reloadable = true },
	{ F(reclaim, default_min_bytes), .kind = K_SIZE, RANGE(0, SZ(52)), .reloadable = true },
	{ F(reclaim, default_max_bytes), .kind = K_SIZE, RANGE(0, SZ(52)), .reloadable = true },
	{ F(reclaim, balloon), .kind = K_BOOL, .reloadable = true },
	{ F(reclaim, pageout), .kind = K_BOOL, .reloadable = true },
	{ F(reclaim, throttle), .kind = K_BOOL, .reloadable = true },
	{ F(reclaim, client_overhead_bytes), .kind = K_SIZE, RANGE(0, SZ(40)), .reloadable = true },
	{ F(reclaim, balloon_timeout_millisecs), .kind = K_MSEC, RANGE(10, 60000),
	  .reloadable = true },
	/* [metrics] */
	{ STR(metrics, listen, check_listen) },
	{ STR(metrics, textfile, check_textfile), .reloadable = true },
	{ F(metrics, textfile_interval_sec), .kind = K_SEC, RANGE(1, 3600), .reloadable = true },
};
#undef F
#undef STR

static int check_comm(const char *v, char *why, size_t len);

#define C(n)                                                                                       \
	.name = #n, .key = "client.*." #n, .off = offsetof(struct dd_conf_client, n),              \
	.reloadable = true
static const struct knob client_knobs[] = {
	{ C(match_comm), .kind = K_STR, .size = DD_CONF_COMM_MAX, .check = check_comm,
	  .skip_unset = true },
	{ C(match_uid), .kind = K_UID, RANGE(0, 4294967294u), .skip_unset = true },
	{ C(shares), .kind = K_U32, RANGE(0, 1000000), .skip_unset = true },
	{ C(min_bytes), .kind = K_SIZE, RANGE(0, SZ(52)), .skip_unset = true },
	{ C(max_bytes), .kind = K_SIZE, RANGE(0, SZ(52)), .skip_unset = true },
	{ C(balloon), .kind = K_ENUM, .names = balloons },
	{ C(balloon_socket), .kind = K_STR, .size = DD_CONF_SOCKET_MAX, .check = check_abs_or_empty,
	  .skip_unset = true },
};
#undef C

static const char *const sections[] = { "daemon", "scan", "pressure", "reclaim", "metrics" };

void dd_conf_init(struct dd_conf *c)
{
	*c = (struct dd_conf){
		.daemon = {
			.socket = DD_CONF_DEFAULT_SOCKET,
			.socket_mode = 0660,
			.readonly_open = true,
			.log_level = DD_CONF_LOG_INFO,
			.watchdog = true,
			/* A healthy agent answers a 256-page batch in ~250 us
			 * even under write contention (DESIGN.md §10); 5 s
			 * only trips on a stopped or wedged client. */
			.agent_timeout_millisecs = 5000,
		},
		.scan = {
			/* 4096 pages / 20 ms caps the scan at ~800 MB/s: a
			 * trickle for a 14 GB/s-per-core read+hash loop. */
			.pages_to_scan = 4096,
			.sleep_millisecs = 20,
			.merge_batch_pages = 512,
			.zero_pages = true,
			.share_domain = DD_CONF_DOMAIN_UID,
			.thp = DD_CONF_THP_KEEP,
			.agent_hash = true,
		},
		.pressure = {
			.bpf = true,
			.psi_trigger = "some 150000 1000000",
			/* ESX's thresholds (Waldspurger, OSDI '02, "Dynamic Reallocation"). */
			.high_free_percent = 6,
			.soft_free_percent = 4,
			.hard_free_percent = 2,
			.low_free_percent = 1,
			.tick_millisecs = 250,
		},
		.reclaim = {
			.tax_rate = 0.75,
			.sample_period_sec = 30,
			.sample_pages = 100,
			.default_shares = 1000,
			.balloon = true,
			.pageout = true,
			.throttle = true,
			.client_overhead_bytes = 32 << 20,
			.balloon_timeout_millisecs = 2000,
		},
		.metrics = {
			.listen = "127.0.0.1:9848",
			.textfile_interval_sec = 15,
		},
	};
}

void dd_conf_free(struct dd_conf *c)
{
	if (!c)
		return;
	free(c->clients);
	c->clients = NULL;
	c->nclients = 0;
}

int dd_conf_copy(struct dd_conf *dst, const struct dd_conf *src)
{
	struct dd_conf_client *cl = NULL;

	if (src->nclients) {
		cl = malloc(src->nclients * sizeof(*cl));
		if (!cl)
			return -ENOMEM;
		memcpy(cl, src->clients, src->nclients * sizeof(*cl));
	}
	*dst = *src;
	dst->clients = cl;
	return 0;
}

/* ---- string checks ------------------------------------------------------ */

static int check_abs_path(const char *v, char *why, size_t len)
{
	if (v[0] != '/') {
		snprintf(why, len, "expected an absolute path");
		return -EINVAL;
	}
	return 0;
}

static int check_abs_or_empty(const char *v, char *why, size_t len)
{
	return v[0] ? check_abs_path(v, why, len) : 0;
}

static int check_textfile(const char *v, char *why, size_t len)
{
	size_t n = strlen(v);

	if (!n)
		return 0;
	if (check_abs_path(v, why, len) < 0)
		return -EINVAL;
	/* node_exporter's textfile collector reads only *.prom. */
	if (n < 6 || strcmp(v + n - 5, ".prom")) {
		snprintf(why, len,
			 "expected a file name ending in .prom (node_exporter's "
			 "textfile collector reads nothing else)");
		return -EINVAL;
	}
	return 0;
}

static int check_group(const char *v, char *why, size_t len)
{
	for (const char *p = v; *p; p++) {
		if (!isalnum((unsigned char)*p) && !strchr("_.-", *p)) {
			snprintf(why, len, "expected a group name or number");
			return -EINVAL;
		}
	}
	if (v[0] == '-') {
		snprintf(why, len, "expected a group name or number");
		return -EINVAL;
	}
	return 0;
}

static int check_comm(const char *v, char *why, size_t len)
{
	for (const char *p = v; *p; p++) {
		if (!isprint((unsigned char)*p)) {
			snprintf(why, len, "expected a command name as in /proc/PID/comm");
			return -EINVAL;
		}
	}
	return 0;
}

/* Decimal digits only, no sign, no blanks. -EINVAL if not a number, -ERANGE
 * if it does not fit. */
static int parse_u64(const char *s, const char **end, uint64_t *out)
{
	uint64_t v = 0;
	const char *p = s;

	if (!isdigit((unsigned char)*p))
		return -EINVAL;
	for (; isdigit((unsigned char)*p); p++) {
		if (v > (UINT64_MAX - (uint64_t)(*p - '0')) / 10)
			return -ERANGE;
		v = v * 10 + (uint64_t)(*p - '0');
	}
	if (end)
		*end = p;
	else if (*p)
		return -EINVAL;
	*out = v;
	return 0;
}

/* The kernel accepts PSI windows of 500 ms to 10 s, and a stall threshold
 * no longer than the window (Documentation/accounting/psi.rst). */
static int check_psi(const char *v, char *why, size_t len)
{
	char type[8], stall[24], window[24], extra[2];
	uint64_t s, w;

	if (!v[0])
		return 0;
	if (sscanf(v, "%7s %23s %23s %1s", type, stall, window, extra) != 3 ||
	    (strcmp(type, "some") && strcmp(type, "full")) || parse_u64(stall, NULL, &s) < 0 ||
	    parse_u64(window, NULL, &w) < 0) {
		snprintf(why, len,
			 "expected \"some|full STALL_USEC WINDOW_USEC\", e.g. "
			 "\"some 150000 1000000\"");
		return -EINVAL;
	}
	if (w < 500000 || w > 10000000) {
		snprintf(why, len, "window %s out of range 500000..10000000 microseconds", window);
		return -EINVAL;
	}
	if (s == 0 || s > w) {
		snprintf(why, len, "stall %s out of range 1..%s microseconds (the window)", stall,
			 window);
		return -EINVAL;
	}
	return 0;
}

static int check_listen(const char *v, char *why, size_t len)
{
	char host[DD_CONF_SHORT_MAX];
	const char *colon, *h = v;
	unsigned char addr[16];
	uint64_t port;
	size_t n;

	if (!v[0])
		return 0;
	if (v[0] == '[') {
		colon = strstr(v, "]:");
		if (!colon)
			goto bad;
		h = v + 1;
		n = (size_t)(colon - h);
		colon++;
	} else {
		colon = strrchr(v, ':');
		if (!colon)
			goto bad;
		n = (size_t)(colon - v);
	}
	if (n == 0 || n >= sizeof(host))
		goto bad;
	memcpy(host, h, n);
	host[n] = 0;
	if (v[0] == '[') {
		if (inet_pton(AF_INET6, host, addr) != 1)
			goto bad;
	} else if (strchr(host, ':')) {
		snprintf(why, len, "write an IPv6 address in brackets, e.g. [::1]:9848");
		return -EINVAL;
	} else if (inet_pton(AF_INET, host, addr) != 1) {
		for (const char *p = host; *p; p++)
			if (!isalnum((unsigned char)*p) && *p != '-' && *p != '.')
				goto bad;
	}
	if (parse_u64(colon + 1, NULL, &port) < 0 || port == 0 || port > 65535)
		goto bad;
	return 0;
bad:
	snprintf(why, len,
		 "expected ADDRESS:PORT, e.g. 127.0.0.1:9848 or [::1]:9848, "
		 "or \"\" to turn the listener off");
	return -EINVAL;
}

/* ---- values --------------------------------------------------------------- */

static size_t kind_size(const struct knob *k)
{
	switch (k->kind) {
	case K_BOOL:
		return sizeof(bool);
	case K_U32:
	case K_MSEC:
	case K_SEC:
	case K_MODE:
		return sizeof(uint32_t);
	case K_SIZE:
		return sizeof(uint64_t);
	case K_DOUBLE:
		return sizeof(double);
	case K_ENUM:
		return sizeof(int);
	case K_UID:
		return sizeof(int64_t);
	case K_STR:
		return k->size;
	}
	return 0;
}

static const char *enum_name(const struct enum_name *t, int v)
{
	for (; t->name; t++)
		if (t->value == v)
			return t->name;
	return "?";
}

const char *dd_conf_share_domain_name(int v)
{
	return enum_name(domains, v);
}

const char *dd_conf_balloon_name(int v)
{
	return enum_name(balloons, v);
}

const char *dd_conf_log_level_name(int v)
{
	return enum_name(log_levels, v);
}

static void format_size(uint64_t v, char *buf, size_t len)
{
	static const char units[] = "TGMK";

	for (int i = 0; i < 4; i++) {
		uint64_t u = SZ(10 * (4 - i));

		if (v && v % u == 0) {
			snprintf(buf, len, "%llu%c", (unsigned long long)(v / u), units[i]);
			return;
		}
	}
	snprintf(buf, len, "%llu", (unsigned long long)v);
}

/* The shortest text that strtod() reads back as exactly d. */
static void format_double(double d, char *buf, size_t len)
{
	for (int prec = 1; prec <= 17; prec++) {
		snprintf(buf, len, "%.*g", prec, d);
		if (strtod(buf, NULL) == d)
			return;
	}
}

static bool str_needs_quotes(const char *s)
{
	size_t n = strlen(s);

	return !n || isspace((unsigned char)s[0]) || isspace((unsigned char)s[n - 1]) ||
	       (n >= 2 && s[0] == '"' && s[n - 1] == '"');
}

static void format_value(const struct knob *k, const void *base, char *buf, size_t len)
{
	const char *p = (const char *)base + k->off;
	uint32_t u32;
	uint64_t u64;
	int64_t i64;
	double d;
	int e;

	switch (k->kind) {
	case K_BOOL:
		snprintf(buf, len, "%s", *(const bool *)p ? "yes" : "no");
		break;
	case K_U32:
	case K_MSEC:
	case K_SEC:
		memcpy(&u32, p, sizeof(u32));
		snprintf(buf, len, "%u", u32);
		break;
	case K_MODE:
		memcpy(&u32, p, sizeof(u32));
		snprintf(buf, len, "%04o", u32);
		break;
	case K_SIZE:
		memcpy(&u64, p, sizeof(u64));
		format_size(u64, buf, len);
		break;
	case K_DOUBLE:
		memcpy(&d, p, sizeof(d));
		format_double(d, buf, len);
		break;
	case K_ENUM:
		memcpy(&e, p, sizeof(e));
		snprintf(buf, len, "%s", enum_name(k->names, e));
		break;
	case K_UID:
		memcpy(&i64, p, sizeof(i64));
		snprintf(buf, len, "%lld", (long long)i64);
		break;
	case K_STR:
		/* Quoted when the file would not read it back as it is: empty, blanks
		 * at either end (trimmed), or quotes at both ends (one pair stripped). */
		if (str_needs_quotes(p))
			snprintf(buf, len, "\"%s\"", p);
		else
			snprintf(buf, len, "%s", p);
		break;
	}
}

static void format_range(const struct knob *k, char *buf, size_t len)
{
	char lo[32], hi[32];

	switch (k->kind) {
	case K_SIZE:
		format_size(k->lo, lo, sizeof(lo));
		format_size(k->hi, hi, sizeof(hi));
		snprintf(buf, len, "%s..%s", lo, hi);
		break;
	case K_DOUBLE:
		format_double(k->dlo, lo, sizeof(lo));
		format_double(k->dhi, hi, sizeof(hi));
		snprintf(buf, len, "%s..%s", lo, hi);
		break;
	case K_MODE:
		snprintf(buf, len, "0..0%o", (unsigned)k->hi);
		break;
	default:
		snprintf(buf, len, "%llu..%llu", (unsigned long long)k->lo,
			 (unsigned long long)k->hi);
		break;
	}
}

static int parse_bool(const char *v, bool *out)
{
	static const char *const yes[] = { "yes", "true", "on", "1" };
	static const char *const no[] = { "no", "false", "off", "0" };

	for (size_t i = 0; i < ARRAY_SIZE(yes); i++) {
		if (!strcasecmp(v, yes[i]) || !strcasecmp(v, no[i])) {
			*out = !strcasecmp(v, yes[i]);
			return 0;
		}
	}
	return -EINVAL;
}

/*
 * The whole number at the start of v, and where its unit starts (blanks
 * skipped). 1 on success; 0 if the number is too large for 64 bits (the
 * caller reports it out of range); -EINVAL with a sentence in why if there is
 * no whole number.
 */
static int number_and_unit(const char *v, uint64_t *n, const char **unit, const char *units,
			   char *why, size_t len)
{
	const char *end = v;
	int r = parse_u64(v, &end, n);

	if (r == -EINVAL || (r == 0 && *end == '.')) {
		snprintf(why, len, "expected a whole number, optionally with a unit (%s)", units);
		return -EINVAL;
	}
	if (r < 0)
		return 0;
	while (*end == ' ' || *end == '\t')
		end++;
	*unit = end;
	return 1;
}

/* A whole number with an optional time unit, in the unit of the key
 * (unit_ms: 1 for milliseconds, 1000 for seconds). */
static int parse_duration(const char *v, uint64_t unit_ms, uint64_t *out, char *why, size_t len)
{
	static const struct {
		const char *name;
		uint64_t ms;
	} units[] = { { "ms", 1 },    { "s", 1000 },	{ "sec", 1000 },
		      { "m", 60000 }, { "min", 60000 }, { "h", 3600000 } };
	const char *end;
	uint64_t n;
	int r = number_and_unit(v, &n, &end, "ms, s, min, h", why, len);

	if (r <= 0) {
		*out = UINT64_MAX; /* r == 0: too large for any unit, out of range */
		return r;
	}
	if (!*end) {
		*out = n;
		return 0;
	}
	for (size_t i = 0; i < ARRAY_SIZE(units); i++) {
		if (strcmp(end, units[i].name))
			continue;
		if (n > UINT64_MAX / units[i].ms) {
			*out = UINT64_MAX;
			return 0;
		}
		n *= units[i].ms;
		if (n % unit_ms) {
			snprintf(why, len, "not a whole number of %s",
				 unit_ms == 1000 ? "seconds" : "milliseconds");
			return -EINVAL;
		}
		*out = n / unit_ms;
		return 0;
	}
	snprintf(why, len, "unknown unit '%s' (expected ms, s, min or h)", end);
	return -EINVAL;
}

static int parse_size(const char *v, uint64_t *out, char *why, size_t len)
{
	static const char *const units[] = {
		"", "B", "K", "KiB", "M", "MiB", "G", "GiB", "T", "TiB"
	};
	const char *end;
	uint64_t n;
	int r = number_and_unit(v, &n, &end, "K, M, G, T, KiB, MiB, GiB, TiB", why, len);

	if (r <= 0) {
		*out = UINT64_MAX; /* r == 0: too large for any unit, out of range */
		return r;
	}
	for (size_t i = 0; i < ARRAY_SIZE(units); i++) {
		unsigned shift = (unsigned)(i / 2) * 10;

		if (strcmp(end, units[i]))
			continue;
		*out = n > (UINT64_MAX >> shift) ? UINT64_MAX : n << shift;
		return 0;
	}
	snprintf(why, len, "unknown unit '%s' (expected K, M, G, T, KiB, MiB, GiB or TiB)", end);
	return -EINVAL;
}

static int parse_double(const char *v, double *out)
{
	char *end;

	if (!*v || strspn(v, "0123456789.eE+-") != strlen(v))
		return -EINVAL;
	errno = 0;
	*out = strtod(v, &end);
	if (*end || errno || !isfinite(*out))
		return -EINVAL;
	return 0;
}

static void expected_enum(const struct enum_name *t, char *why, size_t len)
{
	size_t n = 0, o;

	while (t[n].name)
		n++;
	o = (size_t)snprintf(why, len, "expected ");
	for (size_t i = 0; i < n && o < len; i++)
		o += (size_t)snprintf(why + o, len - o, "%s%s", t[i].name,
				      i + 2 < n	   ? ", "
				      : i + 2 == n ? " or "
						   : "");
}

/* K_STR: the text itself, checked. */
static int parse_string(const struct knob *k, char *p, const char *v, char *why, size_t len)
{
	size_t n = strlen(v);

	for (const char *q = v; *q; q++) {
		/* ';' would start a comment when the value is read back. */
		if (iscntrl((unsigned char)*q) || *q == ';') {
			snprintf(why, len, "control characters and ';' are not allowed");
			return -EINVAL;
		}
	}
	if (n >= k->size) {
		snprintf(why, len, "too long (at most %zu characters)", k->size - 1);
		return -EINVAL;
	}
	if (k->check && k->check(v, why, len) < 0)
		return -EINVAL;
	memcpy(p, v, n + 1);
	return 0;
}

/* The kinds held as unsigned numbers, into *u in the key's unit (UINT64_MAX
 * if too large for anything). */
static int parse_unsigned(const struct knob *k, const char *v, uint64_t *u, char *why, size_t len)
{
	size_t n = strlen(v);
	int r;

	switch (k->kind) {
	case K_MSEC:
	case K_SEC:
		return parse_duration(v, k->kind == K_SEC ? 1000 : 1, u, why, len);
	case K_SIZE:
		return parse_size(v, u, why, len);
	case K_MODE:
		if (!*v || n > 5 || strspn(v, "01234567") != n) {
			snprintf(why, len, "expected an octal mode such as 0660");
			return -EINVAL;
		}
		*u = strtoull(v, NULL, 8);
		return 0;
	default: /* K_U32, K_UID */
		r = parse_u64(v, NULL, u);
		if (r == -ERANGE)
			*u = UINT64_MAX;
		else if (r < 0)
			snprintf(why, len, "expected %s",
				 k->kind == K_UID ? "a numeric uid" : "an integer");
		return r == -ERANGE ? 0 : r;
	}
}

static void store_unsigned(const struct knob *k, char *p, uint64_t u)
{
	if (k->kind == K_SIZE)
		memcpy(p, &u, sizeof(u));
	else if (k->kind == K_UID)
		memcpy(p, &(int64_t){ (int64_t)u }, sizeof(int64_t));
	else
		memcpy(p, &(uint32_t){ (uint32_t)u }, sizeof(uint32_t));
}

/* "sleep_millisecs 90000 out of range 0..60000", with the value converted to
 * the key's unit when it was written with another. */
static void out_of_range(const struct knob *k, const char *v, uint64_t u, char *msg, size_t len)
{
	char range[80];
	bool converted = (k->kind == K_MSEC || k->kind == K_SEC) && u != UINT64_MAX &&
			 strspn(v, "0123456789") != strlen(v);

	format_range(k, range, sizeof(range));
	if (converted)
		snprintf(msg, len, "%s %s (%llu %s) out of range %s", k->name, v,
			 (unsigned long long)u, k->kind == K_SEC ? "seconds" : "milliseconds",
			 range);
	else
		snprintf(msg, len, "%s %s out of range %s", k->name, v, range);
}

/*
 * Parse v as the value of knob k and store it in base (struct dd_conf or
 * struct dd_conf_client). On failure nothing is stored and msg holds the
 * whole sentence ("bad value ... for ...: ...", "... out of range ...").
 */
static int parse_knob(const struct knob *k, void *base, const char *v, char *msg, size_t len)
{
	char why[MSG_MAX / 2] = "";
	char *p = (char *)base + k->off;
	uint64_t u;
	double d;
	bool b;
	int r = 0;

	switch (k->kind) {
	case K_BOOL:
		r = parse_bool(v, &b);
		if (r < 0)
			snprintf(why, sizeof(why), "expected yes/no, true/false, on/off or 1/0");
		else
			*(bool *)p = b;
		break;
	case K_DOUBLE:
		r = parse_double(v, &d);
		if (r < 0) {
			snprintf(why, sizeof(why), "expected a number");
		} else if (d < k->dlo || d > k->dhi) {
			out_of_range(k, v, 0, msg, len);
			return -EINVAL;
		} else {
			memcpy(p, &d, sizeof(d));
		}
		break;
	case K_ENUM:
		for (const struct enum_name *e = k->names; e->name; e++) {
			if (!strcmp(v, e->name)) {
				memcpy(p, &e->value, sizeof(int));
				return 0;
			}
		}
		expected_enum(k->names, why, sizeof(why));
		r = -EINVAL;
		break;
	case K_STR:
		r = parse_string(k, p, v, why, sizeof(why));
		break;
	default:
		r = parse_unsigned(k, v, &u, why, sizeof(why));
		if (r == 0 && (u < k->lo || u > k->hi)) {
			out_of_range(k, v, u, msg, len);
			return -EINVAL;
		}
		if (r == 0)
			store_unsigned(k, p, u);
		break;
	}
	if (r < 0)
		snprintf(msg, len, "bad value '%s' for %s: %s", v, k->name, why);
	return r < 0 ? -EINVAL : 0;
}

static bool knob_equal(const struct knob *k, const void *a, const void *b)
{
	const char *pa = (const char *)a + k->off, *pb = (const char *)b + k->off;
	double da, db;

	if (k->kind == K_STR)
		return !strcmp(pa, pb);
	if (k->kind == K_DOUBLE) {
		memcpy(&da, pa, sizeof(da));
		memcpy(&db, pb, sizeof(db));
		return da == db;
	}
	return !memcmp(pa, pb, kind_size(k));
}

static void knob_copy(const struct knob *k, void *dst, const void *src)
{
	memcpy((char *)dst + k->off, (const char *)src + k->off, kind_size(k));
}

/* Client keys left at "follow the default / match anything" are not dumped. */
static bool knob_unset(const struct knob *k, const void *base)
{
	const char *p = (const char *)base + k->off;
	uint64_t u64;
	uint32_t u32;
	int64_t i64;

	if (!k->skip_unset)
		return false;
	switch (k->kind) {
	case K_STR:
		return !p[0];
	case K_UID:
		memcpy(&i64, p, sizeof(i64));
		return i64 < 0;
	case K_SIZE:
		memcpy(&u64, p, sizeof(u64));
		return u64 == DD_CONF_UNSET;
	case K_U32:
		memcpy(&u32, p, sizeof(u32));
		return u32 == 0;
	default:
		return false;
	}
}

/* ---- keys ------------------------------------------------------------------ */

static bool valid_client_name(const char *s, size_t n)
{
	if (n == 0 || n > CLIENT_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '-')
			return false;
	return true;
}

static bool known_section(const char *s)
{
	for (size_t i = 0; i < ARRAY_SIZE(sections); i++)
		if (!strcmp(s, sections[i]))
			return true;
	return false;
}

static const struct knob *find_main(const char *section, const char *name)
{
	for (size_t i = 0; i < ARRAY_SIZE(knobs); i++)
		if ((!section || !strcmp(knobs[i].section, section)) &&
		    !strcmp(knobs[i].name, name))
			return &knobs[i];
	return NULL;
}

static const struct knob *find_client_knob(const char *name)
{
	for (size_t i = 0; i < ARRAY_SIZE(client_knobs); i++)
		if (!strcmp(client_knobs[i].name, name))
			return &client_knobs[i];
	return NULL;
}

static struct dd_conf_client *find_client(const struct dd_conf *c, const char *name, size_t n)
{
	for (size_t i = 0; i < c->nclients; i++)
		if (strlen(c->clients[i].name) == n && !strncmp(c->clients[i].name, name, n))
			return &c->clients[i];
	return NULL;
}

static size_t edit_distance(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b), prev[64], cur[64];

	if (la >= 63 || lb >= 63)
		return 99;
	for (size_t j = 0; j <= lb; j++)
		prev[j] = j;
	for (size_t i = 1; i <= la; i++) {
		cur[0] = i;
		for (size_t j = 1; j <= lb; j++) {
			size_t sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
			size_t del = prev[j] + 1, ins = cur[j - 1] + 1;

			cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
		}
		memcpy(prev, cur, (lb + 1) * sizeof(size_t));
	}
	return prev[lb];
}

/* "; did you mean 'x'?" or "; it belongs in [y]", or "" */
static void key_hint(const char *section, const char *name, char *buf, size_t len)
{
	const struct knob *k, *best = NULL;
	size_t n, bestn = 3;

	buf[0] = 0;
	if (section && (k = find_main(NULL, name))) {
		snprintf(buf, len, "; it belongs in [%s]", k->section);
		return;
	}
	for (size_t i = 0; i < ARRAY_SIZE(knobs) + ARRAY_SIZE(client_knobs); i++) {
		k = i < ARRAY_SIZE(knobs) ? &knobs[i] : &client_knobs[i - ARRAY_SIZE(knobs)];
		if (section ? !k->section || strcmp(k->section, section) : !!k->section)
			continue;
		n = edit_distance(name, k->name);
		if (n < bestn)
			best = k, bestn = n;
	}
	if (best)
		snprintf(buf, len, "; did you mean '%s'?", best->name);
}

struct resolved {
	const struct knob *k;
	const char *client; /* NULL for a main key */
	size_t client_len;
};

/* Resolve "section.key", "key" or "client.NAME.key". 0 or -ENOENT (msg set). */
static int resolve_key(const char *key, struct resolved *out, char *msg, size_t len)
{
	const char *dot = strchr(key, '.'), *last;
	char section[32], hint[96];
	const struct knob *k = NULL;
	size_t n;

	*out = (struct resolved){ 0 };
	if (!strncmp(key, "client.", 7)) {
		last = strrchr(key, '.');
		n = (size_t)(last - (key + 7));
		if (last == key + 6 || !valid_client_name(key + 7, n)) {
			snprintf(msg, len, "bad key '%s': expected client.NAME.KEY", key);
			return -ENOENT;
		}
		out->k = find_client_knob(last + 1);
		out->client = key + 7;
		out->client_len = n;
		if (!out->k) {
			key_hint(NULL, last + 1, hint, sizeof(hint));
			snprintf(msg, len, "unknown key '%s' in [client.%.*s]%s", last + 1, (int)n,
				 key + 7, hint);
			return -ENOENT;
		}
		return 0;
	}
	if (dot) {
		n = (size_t)(dot - key);
		if (n >= sizeof(section)) {
			snprintf(msg, len, "unknown key '%s'", key);
			return -ENOENT;
		}
		memcpy(section, key, n);
		section[n] = 0;
		if (!known_section(section)) {
			snprintf(msg, len, "unknown section [%s] in key '%s'", section, key);
			return -ENOENT;
		}
		out->k = find_main(section, dot + 1);
		if (!out->k) {
			key_hint(section, dot + 1, hint, sizeof(hint));
			snprintf(msg, len, "unknown key '%s' in [%s]%s", dot + 1, section, hint);
			return -ENOENT;
		}
		return 0;
	}
	for (size_t i = 0; i < ARRAY_SIZE(knobs); i++) {
		if (strcmp(knobs[i].name, key))
			continue;
		if (k) {
			snprintf(msg, len, "ambiguous key '%s': write %s or %s", key, k->key,
				 knobs[i].key);
			return -ENOENT;
		}
		k = &knobs[i];
	}
	if (!k) {
		key_hint(NULL, key, hint, sizeof(hint));
		/* A bare key has no section: search all for a suggestion. */
		for (size_t i = 0; !hint[0] && i < ARRAY_SIZE(sections); i++)
			key_hint(sections[i], key, hint, sizeof(hint));
		snprintf(msg, len, "unknown key '%s'%s", key, hint);
		return -ENOENT;
	}
	out->k = k;
	return 0;
}

/* ---- checks across keys ----------------------------------------------------- */

/*
 * What a single key cannot check: the thresholds decrease, min <= max, every
 * client matches something and has the socket its balloon backend needs.
 * lines[] (may be NULL) gives the line each main key was set on: of a bad
 * pair, the key set later is blamed and its line stored in *line (else 0).
 * Without lines, the pair is described from the side of focus, the key just
 * set, if it is one of them.
 */
static int check_thresholds(const struct dd_conf *c, const int *lines, const struct knob *focus,
			    char *msg, size_t len, int *line)
{
	static const char *const th[] = { "high_free_percent", "soft_free_percent",
					  "hard_free_percent", "low_free_percent" };
	const double v[] = { c->pressure.high_free_percent, c->pressure.soft_free_percent,
			     c->pressure.hard_free_percent, c->pressure.low_free_percent };
	char a[32], b[32];

	for (int i = 0; i < 3; i++) {
		const struct knob *upper = find_main("pressure", th[i]);
		const struct knob *lower = find_main("pressure", th[i + 1]);

		if (v[i] > v[i + 1])
			continue;
		if (lines) {
			int lu = lines[upper - knobs], ll = lines[lower - knobs];

			*line = lu > ll ? lu : ll;
			focus = lu > ll ? upper : lower;
		}
		format_double(v[i], a, sizeof(a));
		format_double(v[i + 1], b, sizeof(b));
		if (focus == upper)
			snprintf(msg, len, "%s %s must be above %s %s", th[i], a, th[i + 1], b);
		else
			snprintf(msg, len, "%s %s must be below %s %s", th[i + 1], b, th[i], a);
		snprintf(msg + strlen(msg), len - strlen(msg),
			 " (thresholds must decrease: high > soft > hard > low)");
		return -EINVAL;
	}
	return 0;
}

static int check_default_sizes(const struct dd_conf *c, const int *lines, char *msg, size_t len,
			       int *line)
{
	char a[32], b[32];

	if (!c->reclaim.default_max_bytes ||
	    c->reclaim.default_min_bytes <= c->reclaim.default_max_bytes)
		return 0;
	if (lines) {
		int lmin = lines[find_main("reclaim", "default_min_bytes") - knobs];
		int lmax = lines[find_main("reclaim", "default_max_bytes") - knobs];

		*line = lmin > lmax ? lmin : lmax;
	}
	format_size(c->reclaim.default_min_bytes, a, sizeof(a));
	format_size(c->reclaim.default_max_bytes, b, sizeof(b));
	snprintf(msg, len, "default_min_bytes %s is above default_max_bytes %s", a, b);
	return -EINVAL;
}

/* Blamed on the client's section header. */
static int check_clients(const struct dd_conf *c, bool from_file, char *msg, size_t len, int *line)
{
	char a[32], b[32];

	for (size_t i = 0; i < c->nclients; i++) {
		const struct dd_conf_client *cl = &c->clients[i];
		uint64_t mn = dd_conf_client_min_bytes(c, cl), mx = dd_conf_client_max_bytes(c, cl);

		*line = from_file ? cl->line : 0;
		if (!cl->match_comm[0] && cl->match_uid < 0) {
			snprintf(msg, len, "[client.%s] needs match_comm or match_uid", cl->name);
			return -EINVAL;
		}
		if (cl->balloon >= DD_CONF_BALLOON_QMP && !cl->balloon_socket[0]) {
			snprintf(msg, len, "[client.%s] balloon = %s needs balloon_socket",
				 cl->name, dd_conf_balloon_name(cl->balloon));
			return -EINVAL;
		}
		if (mx && mn > mx) {
			format_size(mn, a, sizeof(a));
			format_size(mx, b, sizeof(b));
			snprintf(msg, len, "[client.%s] min_bytes %s is above max_bytes %s",
				 cl->name, a, b);
			return -EINVAL;
		}
	}
	*line = 0;
	return 0;
}

static int check_all(const struct dd_conf *c, const int *lines, const struct knob *focus, char *msg,
		     size_t len, int *line)
{
	*line = 0;
	if (check_thresholds(c, lines, focus, msg, len, line) < 0 ||
	    check_default_sizes(c, lines, msg, len, line) < 0 ||
	    check_clients(c, lines != NULL, msg, len, line) < 0)
		return -EINVAL;
	return 0;
}

/* ---- loading ------------------------------------------------------------------ */

struct load {
	struct dd_conf *c;
	FILE *f;
	const char *path;
	char *buf;
	size_t cap;
	int line;
	int err;	   /* first error, -errno; 0 while all is well */
	char msg[MSG_MAX]; /* its sentence, without file and line */
	int err_line;	   /* its line; 0 for the file as a whole */
	int lines[ARRAY_SIZE(knobs)];
};

static void fail(struct load *x, int r, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void fail(struct load *x, int r, int line, const char *fmt, ...)
{
	va_list ap;

	if (x->err)
		return;
	x->err = r;
	x->err_line = line;
	va_start(ap, fmt);
	vsnprintf(x->msg, sizeof(x->msg), fmt, ap);
	va_end(ap);
}

static int add_client(struct dd_conf *c, const char *name, size_t n, int line)
{
	struct dd_conf_client *cl = realloc(c->clients, (c->nclients + 1) * sizeof(*cl));

	if (!cl)
		return -ENOMEM;
	c->clients = cl;
	cl += c->nclients++;
	*cl = (struct dd_conf_client){
		.match_uid = -1,
		.min_bytes = DD_CONF_UNSET,
		.max_bytes = DD_CONF_UNSET,
		.balloon = DD_CONF_BALLOON_CALLBACK,
		.line = line,
	};
	memcpy(cl->name, name, n);
	cl->name[n] = 0;
	return 0;
}

/* s: a line starting with '['. Mirrors inih's reading of it. */
static void section_header(struct load *x, const char *s)
{
	const char *end = strchr(s, ']');
	const char *name = s + 1;
	size_t n;

	if (!end) {
		fail(x, -EINVAL, x->line, "missing ']' in section header");
		return;
	}
	n = (size_t)(end - name);
	if (n >= 7 && !strncmp(name, "client.", 7)) {
		if (!valid_client_name(name + 7, n - 7)) {
			fail(x, -EINVAL, x->line,
			     "bad client name '%.*s': expected 1 to %d letters, digits, '-' or '_'",
			     (int)(n - 7), name + 7, CLIENT_NAME_MAX);
			return;
		}
		if (!find_client(x->c, name + 7, n - 7) &&
		    add_client(x->c, name + 7, n - 7, x->line) < 0)
			fail(x, -ENOMEM, 0, "out of memory");
		return;
	}
	for (size_t i = 0; i < ARRAY_SIZE(sections); i++)
		if (strlen(sections[i]) == n && !strncmp(name, sections[i], n))
			return;
	if (n >= 6 && !strncmp(name, "client", 6)) {
		/* [client "vm1"], git style: say how to spell it here. */
		size_t a = 6 + strspn(name + 6, " \t\""), b = n;

		while (b > a && strchr(" \t\"", name[b - 1]))
			b--;
		fail(x, -EINVAL, x->line, "unknown section [%.*s]: write [client.%.*s]", (int)n,
		     name, b > a ? (int)(b - a) : 4, b > a ? name + a : "NAME");
	} else
		fail(x, -EINVAL, x->line,
		     "unknown section [%.*s] (expected daemon, scan, pressure, reclaim, metrics "
		     "or client.NAME)",
		     (int)n, name);
}

/*
 * inih's line reader: one line of the file per call, so that x->line is the
 * number of the line inih is about to parse. Blank and comment lines are
 * passed as empty lines (whatever their length); content lines lose their
 * leading blanks and are checked for length and section headers.
 */
static char *read_line(char *str, int num, void *stream)
{
	struct load *x = stream;
	ssize_t got;
	size_t n;
	char *s;

	if (x->err)
		return NULL;
	got = getline(&x->buf, &x->cap, x->f);
	if (got < 0) {
		if (ferror(x->f))
			fail(x, errno ? -errno : -EIO, 0, "cannot read: %s",
			     strerror(errno ? errno : EIO));
		return NULL;
	}
	x->line++;
	s = x->buf;
	if (memchr(s, 0, (size_t)got)) {
		fail(x, -EINVAL, x->line, "NUL byte in line: not a text file");
		return NULL;
	}
	if (x->line == 1 && !strncmp(s, "\xef\xbb\xbf", 3))
		s += 3;
	while (isspace((unsigned char)*s))
		s++;
	n = strlen(s);
	while (n && isspace((unsigned char)s[n - 1]))
		n--;
	str[0] = 0;
	if (!n || *s == '#' || *s == ';')
		return str;
	if (n + 2 > (size_t)num) {
		fail(x, -EINVAL, x->line, "line too long (%zu characters, at most %d)", n, num - 2);
		return NULL;
	}
	if (*s == '[')
		section_header(x, s);
	else if (!strpbrk(s, "=:"))
		fail(x, -EINVAL, x->line, "expected 'key = value' or '[section]'");
	if (x->err)
		return NULL;
	memcpy(str, s, n);
	str[n] = '\n';
	str[n + 1] = 0;
	return str;
}

static int on_key(void *user, const char *section, const char *name, const char *value)
{
	struct load *x = user;
	const struct knob *k;
	struct dd_conf_client *cl = NULL;
	char v[VALUE_MAX], hint[96], msg[MSG_MAX];
	size_t n = strlen(value);

	if (x->err)
		return 0;
	if (!section[0]) {
		k = find_main(NULL, name);
		fail(x, -EINVAL, x->line, "key '%s' outside any section%s%s%s", name,
		     k ? "; it belongs in [" : "", k ? k->section : "", k ? "]" : "");
		return 0;
	}
	if (!strncmp(section, "client.", 7)) {
		cl = find_client(x->c, section + 7, strlen(section + 7));
		k = cl ? find_client_knob(name) : NULL;
	} else {
		k = find_main(section, name);
	}
	if (!k) {
		key_hint(cl ? NULL : section, name, hint, sizeof(hint));
		fail(x, -EINVAL, x->line, "unknown key '%s' in [%s]%s", name, section, hint);
		return 0;
	}
	/* Strings may be quoted: psi_trigger = "some 150000 1000000". */
	if (k->kind == K_STR && n >= 2 && value[0] == '"' && value[n - 1] == '"')
		snprintf(v, sizeof(v), "%.*s", (int)(n - 2), value + 1);
	else
		snprintf(v, sizeof(v), "%s", value);
	if (parse_knob(k, cl ? (void *)cl : (void *)x->c, v, msg, sizeof(msg)) < 0) {
		fail(x, -EINVAL, x->line, "%s", msg);
		return 0;
	}
	if (!cl)
		x->lines[k - knobs] = x->line;
	return 1;
}

static void format_error(const struct load *x, char *err, size_t errlen)
{
	if (!errlen)
		return;
	if (x->err_line)
		snprintf(err, errlen, "%s:%d: %s", x->path, x->err_line, x->msg);
	else
		snprintf(err, errlen, "%s: %s", x->path, x->msg);
}

static int parse_file(struct load *x)
{
	struct stat st;
	int r;

	if (fstat(fileno(x->f), &st) < 0) {
		fail(x, -errno, 0, "cannot stat: %s", strerror(errno));
		return x->err;
	}
	if (S_ISDIR(st.st_mode)) {
		fail(x, -EISDIR, 0, "is a directory, not a configuration file");
		return x->err;
	}
	r = ini_parse_stream(read_line, x, on_key, x);
	if (!x->err && r > 0)
		fail(x, -EINVAL, r, "syntax error");
	else if (!x->err && r < 0)
		fail(x, -ENOMEM, 0, "out of memory");
	if (!x->err) {
		char msg[MSG_MAX];
		int line;

		if (check_all(x->c, x->lines, NULL, msg, sizeof(msg), &line) < 0)
			fail(x, -EINVAL, line, "%s", msg);
	}
	return x->err;
}

int dd_conf_load(struct dd_conf *c, const char *path, char *err, size_t errlen)
{
	struct dd_conf tmp;
	struct load x = { .path = path ? path : DD_CONF_DEFAULT_PATH };
	int r;

	if (errlen)
		err[0] = 0;
	x.f = fopen(x.path, "re");
	if (!x.f) {
		r = -errno;
		if (!path && r == -ENOENT)
			return 0;
		fail(&x, r, 0, "cannot open: %s", strerror(-r));
		format_error(&x, err, errlen);
		return r;
	}
	if (dd_conf_copy(&tmp, c) < 0) {
		fclose(x.f);
		fail(&x, -ENOMEM, 0, "out of memory");
		format_error(&x, err, errlen);
		return -ENOMEM;
	}
	x.c = &tmp;
	r = parse_file(&x);
	free(x.buf);
	fclose(x.f);
	if (r < 0) {
		format_error(&x, err, errlen);
		dd_conf_free(&tmp);
		return r;
	}
	dd_conf_free(c);
	*c = tmp;
	return 0;
}

/* ---- run time ------------------------------------------------------------------ */

int dd_conf_set(struct dd_conf *c, const char *key, const char *value, char *err, size_t errlen)
{
	char msg[MSG_MAX], v[VALUE_MAX], old[DD_CONF_PATH_MAX];
	struct resolved rk;
	void *base = c;
	size_t n;
	int line, r;

	if (errlen)
		err[0] = 0;
	r = resolve_key(key, &rk, msg, sizeof(msg));
	if (r == 0 && rk.client) {
		base = find_client(c, rk.client, rk.client_len);
		if (!base) {
			snprintf(msg, sizeof(msg),
				 "no client '%.*s': add a [client.%.*s] section to the "
				 "configuration file and reload",
				 (int)rk.client_len, rk.client, (int)rk.client_len, rk.client);
			r = -ENOENT;
		}
	}
	if (r < 0) {
		if (errlen)
			snprintf(err, errlen, "%s", msg);
		return r;
	}
	/* The same trimming as in the file. */
	while (isspace((unsigned char)*value))
		value++;
	n = strlen(value);
	while (n && isspace((unsigned char)value[n - 1]))
		n--;
	if (rk.k->kind == K_STR && n >= 2 && value[0] == '"' && value[n - 1] == '"')
		value++, n -= 2;
	snprintf(v, sizeof(v), "%.*s", (int)n, value);

	memcpy(old, (char *)base + rk.k->off, kind_size(rk.k));
	r = parse_knob(rk.k, base, v, msg, sizeof(msg));
	if (r == 0 &&
	    (r = check_all(c, NULL, rk.client ? NULL : rk.k, msg, sizeof(msg), &line)) < 0)
		memcpy((char *)base + rk.k->off, old, kind_size(rk.k));
	if (r < 0 && errlen)
		snprintf(err, errlen, "%s", msg);
	return r;
}

int dd_conf_get(const struct dd_conf *c, const char *key, char *buf, size_t len)
{
	char msg[MSG_MAX], v[VALUE_MAX];
	struct resolved rk;
	const void *base = c;
	int n;

	if (resolve_key(key, &rk, msg, sizeof(msg)) < 0)
		return -ENOENT;
	if (rk.client && !(base = find_client(c, rk.client, rk.client_len)))
		return -ENOENT;
	format_value(rk.k, base, v, sizeof(v));
	n = snprintf(buf, len, "%s", v);
	return (size_t)n < len ? n : -ENOSPC;
}

bool dd_conf_key_reloadable(const char *key)
{
	struct resolved rk;
	char msg[MSG_MAX];

	return resolve_key(key, &rk, msg, sizeof(msg)) == 0 && rk.k->reloadable;
}

static bool client_equal(const struct dd_conf_client *a, const struct dd_conf_client *b)
{
	if (strcmp(a->name, b->name))
		return false;
	for (size_t i = 0; i < ARRAY_SIZE(client_knobs); i++)
		if (!knob_equal(&client_knobs[i], a, b))
			return false;
	return true;
}

bool dd_conf_equal(const struct dd_conf *a, const struct dd_conf *b)
{
	for (size_t i = 0; i < ARRAY_SIZE(knobs); i++)
		if (!knob_equal(&knobs[i], a, b))
			return false;
	if (a->nclients != b->nclients)
		return false;
	for (size_t i = 0; i < a->nclients; i++)
		if (!client_equal(&a->clients[i], &b->clients[i]))
			return false;
	return true;
}

static void report_clients(const struct dd_conf *cur, const struct dd_conf *next,
			   dd_conf_change_fn cb, void *arg)
{
	char key[DD_CONF_NAME_MAX + 64], a[VALUE_MAX], b[VALUE_MAX];

	for (size_t i = 0; i < cur->nclients; i++) {
		const struct dd_conf_client *o = &cur->clients[i];
		const struct dd_conf_client *n = find_client(next, o->name, strlen(o->name));

		if (!n) {
			snprintf(key, sizeof(key), "client.%s", o->name);
			cb(key, "defined", "removed", true, arg);
			continue;
		}
		for (size_t j = 0; j < ARRAY_SIZE(client_knobs); j++) {
			const struct knob *k = &client_knobs[j];

			if (knob_equal(k, o, n))
				continue;
			snprintf(key, sizeof(key), "client.%s.%s", o->name, k->name);
			format_value(k, o, a, sizeof(a));
			format_value(k, n, b, sizeof(b));
			cb(key, a, b, true, arg);
		}
	}
	for (size_t i = 0; i < next->nclients; i++) {
		const struct dd_conf_client *n = &next->clients[i];

		if (find_client(cur, n->name, strlen(n->name)))
			continue;
		snprintf(key, sizeof(key), "client.%s", n->name);
		cb(key, "undefined", "added", true, arg);
	}
}

int dd_conf_apply_reload(struct dd_conf *cur, const struct dd_conf *next, dd_conf_change_fn cb,
			 void *arg)
{
	char a[VALUE_MAX], b[VALUE_MAX];
	struct dd_conf_client *cl = NULL;
	int kept = 0;

	if (next->nclients) {
		cl = malloc(next->nclients * sizeof(*cl));
		if (!cl)
			return -ENOMEM;
		memcpy(cl, next->clients, next->nclients * sizeof(*cl));
	}
	for (size_t i = 0; i < ARRAY_SIZE(knobs); i++) {
		const struct knob *k = &knobs[i];

		if (knob_equal(k, cur, next))
			continue;
		if (cb) {
			format_value(k, cur, a, sizeof(a));
			format_value(k, next, b, sizeof(b));
			cb(k->key, a, b, k->reloadable, arg);
		}
		if (k->reloadable)
			knob_copy(k, cur, next);
		else
			kept++;
	}
	if (cb)
		report_clients(cur, next, cb, arg);
	free(cur->clients);
	cur->clients = cl;
	cur->nclients = next->nclients;
	return kept;
}

int dd_conf_dump(const struct dd_conf *c, FILE *f)
{
	char v[VALUE_MAX];
	const char *section = "";

	fprintf(f, "# dedupd effective configuration; see dedupd.conf(5)\n");
	for (size_t i = 0; i < ARRAY_SIZE(knobs); i++) {
		if (strcmp(section, knobs[i].section)) {
			section = knobs[i].section;
			fprintf(f, "\n[%s]\n", section);
		}
		format_value(&knobs[i], c, v, sizeof(v));
		fprintf(f, "%s = %s\n", knobs[i].name, v);
	}
	for (size_t i = 0; i < c->nclients; i++) {
		const struct dd_conf_client *cl = &c->clients[i];

		fprintf(f, "\n[client.%s]\n", cl->name);
		for (size_t j = 0; j < ARRAY_SIZE(client_knobs); j++) {
			if (knob_unset(&client_knobs[j], cl))
				continue;
			format_value(&client_knobs[j], cl, v, sizeof(v));
			fprintf(f, "%s = %s\n", client_knobs[j].name, v);
		}
	}
	return fflush(f) == 0 && !ferror(f) ? 0 : -EIO;
}

const char *dd_conf_key_at(size_t i)
{
	if (i < ARRAY_SIZE(knobs))
		return knobs[i].key;
	i -= ARRAY_SIZE(knobs);
	return i < ARRAY_SIZE(client_knobs) ? client_knobs[i].key : NULL;
}

const struct dd_conf_client *dd_conf_match_client(const struct dd_conf *c, const char *comm,
						  uid_t uid)
{
	for (size_t i = 0; i < c->nclients; i++) {
		const struct dd_conf_client *cl = &c->clients[i];

		if (cl->match_comm[0] && (!comm || strcmp(cl->match_comm, comm)))
			continue;
		if (cl->match_uid >= 0 && (int64_t)uid != cl->match_uid)
			continue;
		return cl;
	}
	return NULL;
}

uint32_t dd_conf_client_shares(const struct dd_conf *c, const struct dd_conf_client *cl)
{
	return cl && cl->shares ? cl->shares : c->reclaim.default_shares;
}

uint64_t dd_conf_client_min_bytes(const struct dd_conf *c, const struct dd_conf_client *cl)
{
	return cl && cl->min_bytes != DD_CONF_UNSET ? cl->min_bytes : c->reclaim.default_min_bytes;
}

uint64_t dd_conf_client_max_bytes(const struct dd_conf *c, const struct dd_conf_client *cl)
{
	return cl && cl->max_bytes != DD_CONF_UNSET ? cl->max_bytes : c->reclaim.default_max_bytes;
}
