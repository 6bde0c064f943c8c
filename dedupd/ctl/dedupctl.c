// SPDX-License-Identifier: MIT
/*
 * dedupctl: inspect and steer a running dedupd. It sends one ADMIN command on
 * the daemon's socket and renders the JSON answer as text or passes it on
 * (--json); --watch repeats that every few seconds. `estimate` needs no
 * daemon: it reads the processes' memory itself (estimate.c), with the
 * caller's own credentials, so the kernel and not dedupd decides whose
 * memory the caller may read. Exit codes are part of the interface (usage).
 */
#include "dedupd/common/proto.h"
#include "dedupd/ctl/estimate.h"
#include "hash/pagehash.h"

#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <json-c/json.h>
#include <math.h>
#include <pwd.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { EXIT_OK = 0, EXIT_DAEMON = 1, EXIT_USAGE = 2, EXIT_UNREACHABLE = 3 };

static const char usage_text[] =
	"Usage: dedupctl [OPTIONS] COMMAND [ARGS]\n"
	"\n"
	"Inspect and steer a running dedupd, and estimate what it would save.\n"
	"\n"
	"Commands:\n"
	"  status              version, pid, uptime, socket, metrics address, scan knobs\n"
	"                      and counters\n"
	"  stats               counters with KSM's names: pages_shared, pages_sharing,\n"
	"                      pages_unshared, pages_volatile, zero_pages, full_scans, ...\n"
	"                      and bytes_saved_net (the saving minus all dedupd holds)\n"
	"  regions             one line per registered region: pid, command, start,\n"
	"                      pages, pages sharing, zero pages, share domain, VMAs\n"
	"  state               memory pressure: high, soft, hard or low, how long it has\n"
	"                      held, the inputs behind it (free memory, PSI, reclaim\n"
	"                      stalls from eBPF), the source, the scan rate, and the\n"
	"                      recent transitions\n"
	"  clients             one line per client: pid, command, shares, active\n"
	"                      fraction f, Pss, rho (shares per MiB, idle-taxed),\n"
	"                      target, minimum, balloon backend, balloon size/target,\n"
	"                      guest pressure, throttled; then each client's last\n"
	"                      reclaim actions with their reasons\n"
	"  set KEY=VALUE       change a setting at run time (root), with the rules of\n"
	"                      dedupd.conf(5): pages_to_scan, sleep_millisecs,\n"
	"                      merge_batch_pages, max_vmas_per_client, zero_pages, ...\n"
	"  estimate [--mergeable] --pid PID...\n"
	"                      read-only dry run over any processes, no daemon needed:\n"
	"                      pages scanned, zero pages, and the pages merging would\n"
	"                      save within each process and across them; reading\n"
	"                      another user's process needs root. All private\n"
	"                      writable memory; with -m, --mergeable only what the\n"
	"                      processes offer for merging: the ranges they registered\n"
	"                      with dedupd (asked of the daemon, when it answers) and\n"
	"                      the mappings they marked madvise(MADV_MERGEABLE)\n"
	"\n"
	"Options (also accepted after the command):\n"
	"  -s, --socket PATH      the daemon's socket (default $DEDUPD_SOCKET, else\n"
	"                         " DD_DEFAULT_SOCKET ")\n"
	"  -j, --json             print JSON (one document; one line per update with\n"
	"                         --watch)\n"
	"  -w, --watch [SECONDS]  redraw every SECONDS (default 2, at least 0.1) until\n"
	"                         interrupted; text output shows counters' change per\n"
	"                         second\n"
	"  -n, --count N          with --watch: stop after N updates\n"
	"  -h, --help             show this help\n"
	"  -V, --version          show the version\n"
	"\n"
	"Exit status:\n"
	"  0  success\n"
	"  1  the daemon refused or failed the request (its message is printed), or\n"
	"     estimate could not read a process\n"
	"  2  bad usage: unknown command or option, missing or malformed argument\n"
	"  3  the daemon could not be reached: no socket, nobody listening, or no\n"
	"     permission to connect to it\n"
	"With --watch, the status of the last update.\n"
	"\n"
	"Environment:\n"
	"  DEDUPD_SOCKET  the daemon's socket when --socket is not given\n"
	"\n"
	"Examples:\n"
	"  dedupctl stats\n"
	"  dedupctl --watch 1 stats\n"
	"  dedupctl set pages_to_scan=16384\n"
	"  dedupctl --json estimate --pid $(pgrep -d' ' qemu-system)\n"
	"\n"
	"See dedupctl(8), dedupd(8), dedupd.conf(5).\n";

#define TRY_HELP "Try 'dedupctl --help'.\n"

struct opts {
	const char *sock;
	bool json;
	double watch_sec; /* 0: no --watch */
	long count;	  /* updates with --watch; 0: until interrupted */
	char cmd[4096];	  /* the command and its words, space-separated */
	const char *verb; /* cmd's first word */
	pid_t pids[DD_ESTIMATE_MAX_PIDS];
	size_t npids;
	bool mergeable; /* estimate --mergeable */
};

/* ---- talking to the daemon ---------------------------------------------- */

static int request(const char *sock_path, const char *cmd, char **out, int *status)
{
	char buf[DD_MSG_MAX];
	struct dd_msg_admin *m = (struct dd_msg_admin *)buf;
	const struct dd_msg_result *res = (const void *)buf;
	size_t len = strlen(cmd);
	ssize_t n;
	int fd, r;

	if (len > DD_TEXT_MAX - sizeof(*m))
		return -E2BIG;
	fd = dd_sock_connect(sock_path);
	if (fd < 0)
		return fd;
	memset(m, 0, sizeof(*m));
	dd_msg_init(&m->h, DD_MSG_ADMIN, sizeof(*m) + len, 1);
	m->text_len = (uint32_t)len;
	memcpy(m->text, cmd, len);
	r = dd_msg_send(fd, m, sizeof(*m) + len, -1);
	if (r == 0) {
		n = dd_msg_recv(fd, buf, sizeof(buf), NULL, 10000);
		r = n == 0 ? -ECONNRESET : n < 0 ? (int)n : 0;
		if (r == 0 && res->h.type != DD_MSG_RESULT)
			r = -EBADMSG;
	}
	close(fd);
	if (r < 0)
		return r;
	*status = res->status;
	*out = strndup(res->text, res->text_len);
	return *out ? 0 : -ENOMEM;
}

/* Why connect() failed, in words an operator can act on. */
static void explain_unreachable(const char *path, int e)
{
	char hint[300] = "";
	struct stat st;

	if ((e == -EACCES || e == -EPERM) && stat(path, &st) == 0) {
		struct passwd *pw = getpwuid(st.st_uid);
		struct group *gr = getgrgid(st.st_gid);

		snprintf(hint, sizeof(hint),
			 " (the socket is mode %04o, owner %s, group %s: connecting needs write "
			 "permission on it; run as root or as a member of its group, see "
			 "socket_mode and socket_group in dedupd.conf(5))",
			 (unsigned)(st.st_mode & 07777), pw ? pw->pw_name : "?",
			 gr ? gr->gr_name : "?");
	} else if (e == -EACCES) {
		snprintf(hint, sizeof(hint), " (a directory on the way to the socket is closed "
					     "to this user)");
	} else if (e == -ENOENT) {
		snprintf(hint, sizeof(hint),
			 " (is dedupd running? the socket is --socket or $DEDUPD_SOCKET)");
	} else if (e == -ECONNREFUSED) {
		snprintf(hint, sizeof(hint), " (nobody is listening: dedupd is not running)");
	}
	fprintf(stderr, "dedupctl: cannot reach dedupd at %s: %s%s\n", path, strerror(-e), hint);
}

/* ---- rendering ------------------------------------------------------------ */

/* Counters of the previous update, by flattened name, for --watch rates. */
struct prev {
	char (*name)[256];
	long long *value;
	size_t n, cap;
	double at, dt; /* dt: seconds since the previous update, 0 on the first */
};

static bool prev_get(const struct prev *p, const char *name, long long *v)
{
	for (size_t i = 0; p && i < p->n; i++)
		if (!strcmp(p->name[i], name)) {
			*v = p->value[i];
			return true;
		}
	return false;
}

static void prev_put(struct prev *p, const char *name, long long v)
{
	for (size_t i = 0; i < p->n; i++)
		if (!strcmp(p->name[i], name)) {
			p->value[i] = v;
			return;
		}
	if (p->n == p->cap) {
		size_t cap = p->cap ? p->cap * 2 : 64;
		void *a = realloc(p->name, cap * sizeof(*p->name));
		void *b = a ? realloc(p->value, cap * sizeof(*p->value)) : NULL;

		if (a)
			p->name = a;
		if (!b)
			return;
		p->value = b;
		p->cap = cap;
	}
	snprintf(p->name[p->n], sizeof(p->name[0]), "%s", name);
	p->value[p->n++] = v;
}

static void print_value(const char *key, struct json_object *v, struct prev *prev)
{
	long long old, now;

	printf("%-32s %s", key, json_object_get_string(v));
	if (prev && json_object_is_type(v, json_type_int)) {
		now = (long long)json_object_get_int64(v);
		if (prev->dt > 0 && prev_get(prev, key, &old) && old != now)
			printf("  (%+.0f/s)", (double)(now - old) / prev->dt);
		prev_put(prev, key, now);
	}
	putchar('\n');
}

static void print_object(struct json_object *o, const char *prefix, struct prev *prev)
{
	json_object_object_foreach(o, key, val)
	{
		char name[256];

		snprintf(name, sizeof(name), "%s%s", prefix, key);
		if (json_object_is_type(val, json_type_object)) {
			print_object(val, strcat(name, "."), prev);
		} else if (json_object_is_type(val, json_type_array)) {
			for (size_t i = 0; i < json_object_array_length(val); i++) {
				char item[300];

				snprintf(item, sizeof(item), "%s[%zu].", name, i);
				print_object(json_object_array_get_idx(val, i), item, prev);
			}
		} else {
			print_value(name, val, prev);
		}
	}
}

static void print_regions(struct json_object *a)
{
	size_t n = json_object_array_length(a);

	printf("%-8s %-16s %-18s %10s %10s %10s %6s %6s\n", "PID", "COMMAND", "START", "PAGES",
	       "SHARING", "ZERO", "DOMAIN", "VMAS");
	for (size_t i = 0; i < n; i++) {
		struct json_object *r = json_object_array_get_idx(a, i), *v;
#define F(k) (json_object_object_get_ex(r, k, &v) ? json_object_get_int64(v) : 0)
		json_object_object_get_ex(r, "command", &v);
		printf("%-8lld %-16s %#-18llx %10lld %10lld %10lld %6lld %6lld\n",
		       (long long)F("pid"), v ? json_object_get_string(v) : "?",
		       (unsigned long long)F("start"), (long long)F("pages"),
		       (long long)F("pages_sharing"), (long long)F("zero_pages"),
		       (long long)F("domain"), (long long)F("vmas"));
#undef F
	}
	if (!n)
		printf("(no registered regions)\n");
}

static double mibf(struct json_object *o, const char *k)
{
	struct json_object *v;

	return json_object_object_get_ex(o, k, &v) ? (double)json_object_get_int64(v) / 1048576.0
						   : 0;
}

static const char *str_of(struct json_object *o, const char *k)
{
	struct json_object *v;

	return json_object_object_get_ex(o, k, &v) ? json_object_get_string(v) : "";
}

static void print_clients(struct json_object *o)
{
	struct json_object *a = NULL, *v;
	size_t n;

	printf("state %s, free %.0f of %.0f MiB, to free %.0f MiB, tax rate %s, reserved %.0f MiB\n",
	       str_of(o, "state"), mibf(o, "free_bytes"), mibf(o, "total_bytes"),
	       mibf(o, "need_bytes"), str_of(o, "tax_rate"), mibf(o, "reserved_bytes"));
	json_object_object_get_ex(o, "clients", &a);
	n = a ? json_object_array_length(a) : 0;
	printf("%-8s %-16s %7s %5s %9s %9s %9s %8s %-11s %15s %5s %4s\n", "PID", "COMMAND",
	       "SHARES", "F", "PSS_MiB", "RHO", "TARGET", "MIN_MiB", "BALLOON", "SIZE/TGT_MiB",
	       "GUEST", "THR");
	for (size_t i = 0; i < n; i++) {
		struct json_object *c = json_object_array_get_idx(a, i);
		char size[32], gp[8];
		double f = 0, rho = 0;
		int g = -1;

		if (json_object_object_get_ex(c, "active_fraction", &v))
			f = json_object_get_double(v);
		if (json_object_object_get_ex(c, "rho", &v))
			rho = json_object_get_double(v);
		if (json_object_object_get_ex(c, "guest_pressure", &v))
			g = json_object_get_int(v);
		snprintf(size, sizeof(size), "%.0f/%.0f", mibf(c, "balloon_bytes") < 0 ? 0 :
			 mibf(c, "balloon_bytes"), mibf(c, "balloon_target_bytes"));
		snprintf(gp, sizeof(gp), g < 0 ? "-" : "%d%%", g);
		printf("%-8s %-16s %7s %5.2f %9.1f %9.3g %9.1f %8.0f %-11s %15s %5s %4s\n",
		       str_of(c, "pid"), str_of(c, "comm"), str_of(c, "shares"), f,
		       mibf(c, "pss_bytes"), rho, mibf(c, "target_bytes"), mibf(c, "min_bytes"),
		       str_of(c, "balloon_backend"), size, gp,
		       json_object_object_get_ex(c, "throttled", &v) && json_object_get_boolean(v)
			       ? "yes" : "no");
	}
	if (!n)
		printf("(no clients)\n");
	for (size_t i = 0; i < n; i++) {
		struct json_object *c = json_object_array_get_idx(a, i), *acts = NULL;

		if (json_object_object_get_ex(c, "balloon_error", &v) && *json_object_get_string(v))
			printf("pid %s: balloon: %s\n", str_of(c, "pid"), json_object_get_string(v));
		if (!json_object_object_get_ex(c, "actions", &acts))
			continue;
		for (size_t k = 0; k < json_object_array_length(acts); k++) {
			struct json_object *e = json_object_array_get_idx(acts, k);
			time_t t = (time_t)(json_object_object_get_ex(e, "at_ms", &v)
						    ? json_object_get_int64(v) / 1000 : 0);
			char when[32];

			strftime(when, sizeof(when), "%H:%M:%S", localtime(&t));
			printf("pid %s %s: %s\n", str_of(c, "pid"), when, str_of(e, "action"));
		}
	}
}

/* ---- estimate ------------------------------------------------------------- */

#define ADD_U64(o, k, v) json_object_object_add(o, k, json_object_new_uint64(v))

static struct json_object *estimate_json(const struct dd_estimate *e)
{
	struct json_object *o = json_object_new_object(), *a = json_object_new_array();

	ADD_U64(o, "pages_scanned", e->pages_scanned);
	ADD_U64(o, "zero_pages", e->zero_pages);
	ADD_U64(o, "distinct_pages", e->distinct);
	ADD_U64(o, "pages_saved_if_merged", e->pages_saved_if_merged);
	ADD_U64(o, "pages_saved_within_pids", e->pages_saved_within);
	ADD_U64(o, "pages_saved_across_pids", e->pages_saved_across);
	ADD_U64(o, "bytes_scanned", e->pages_scanned * DD_PAGE_SIZE);
	ADD_U64(o, "zero_bytes", e->zero_pages * DD_PAGE_SIZE);
	ADD_U64(o, "bytes_saved_if_merged", e->pages_saved_if_merged * DD_PAGE_SIZE);
	ADD_U64(o, "bytes_saved_total", (e->pages_saved_if_merged + e->zero_pages) * DD_PAGE_SIZE);
	ADD_U64(o, "pages_zero_mapped", e->pages_zero_mapped);
	ADD_U64(o, "pages_already_shared", e->pages_already_shared);
	ADD_U64(o, "pages_swapped", e->pages_swapped);
	ADD_U64(o, "pages_unreadable", e->pages_unreadable);
	ADD_U64(o, "hash_collisions", e->hash_collisions);
	json_object_object_add(o, "pfn_visible", json_object_new_boolean(e->pfn_visible));
	ADD_U64(o, "page_size", DD_PAGE_SIZE);
	ADD_U64(o, "elapsed_ms", e->elapsed_ms);
	for (size_t i = 0; i < e->npids; i++) {
		const struct dd_estimate_pid *p = &e->pids[i];
		struct json_object *q = json_object_new_object();

		json_object_object_add(q, "pid", json_object_new_int(p->pid));
		json_object_object_add(q, "command", json_object_new_string(p->comm));
		ADD_U64(q, "uid", p->uid);
		ADD_U64(q, "vmas", p->vmas);
		ADD_U64(q, "pages_mapped", p->pages_mapped);
		ADD_U64(q, "pages_present", p->pages_present);
		ADD_U64(q, "pages_scanned", p->pages_scanned);
		ADD_U64(q, "zero_pages", p->zero_pages);
		ADD_U64(q, "distinct_pages", p->distinct);
		ADD_U64(q, "pages_saved_if_merged", p->pages_saved_if_merged);
		ADD_U64(q, "bytes_saved_if_merged", p->pages_saved_if_merged * DD_PAGE_SIZE);
		ADD_U64(q, "pages_zero_mapped", p->pages_zero_mapped);
		ADD_U64(q, "pages_already_shared", p->pages_already_shared);
		ADD_U64(q, "pages_swapped", p->pages_swapped);
		ADD_U64(q, "pages_unreadable", p->pages_unreadable);
		json_object_array_add(a, q);
	}
	json_object_object_add(o, "pids", a);
	return o;
}

static double mib(uint64_t pages)
{
	return (double)pages * DD_PAGE_SIZE / (1024.0 * 1024.0);
}

static void print_estimate(const struct dd_estimate *e)
{
	printf("%-8s %-16s %10s %10s %10s %10s %10s\n", "PID", "COMMAND", "PRESENT", "SCANNED",
	       "ZERO", "DISTINCT", "SAVED");
	for (size_t i = 0; i < e->npids; i++) {
		const struct dd_estimate_pid *p = &e->pids[i];

		printf("%-8d %-16s %10llu %10llu %10llu %10llu %10llu\n", (int)p->pid, p->comm,
		       (unsigned long long)p->pages_present, (unsigned long long)p->pages_scanned,
		       (unsigned long long)p->zero_pages, (unsigned long long)p->distinct,
		       (unsigned long long)p->pages_saved_if_merged);
	}
	printf("%-8s %-16s %10s %10llu %10llu %10llu %10llu\n", "all", "", "",
	       (unsigned long long)e->pages_scanned, (unsigned long long)e->zero_pages,
	       (unsigned long long)e->distinct, (unsigned long long)e->pages_saved_if_merged);
	printf("\nmerging would save %llu pages (%.1f MiB): %llu within each process, %llu "
	       "across them;\nzapping zero pages %llu more (%.1f MiB). Pages are 4 KiB.\n",
	       (unsigned long long)e->pages_saved_if_merged, mib(e->pages_saved_if_merged),
	       (unsigned long long)e->pages_saved_within,
	       (unsigned long long)e->pages_saved_across, (unsigned long long)e->zero_pages,
	       mib(e->zero_pages));
	printf("not counted: %llu pages already shared (fork), %llu on the kernel's zero page, "
	       "%llu swapped out, %llu unreadable.\n",
	       (unsigned long long)e->pages_already_shared,
	       (unsigned long long)e->pages_zero_mapped, (unsigned long long)e->pages_swapped,
	       (unsigned long long)e->pages_unreadable);
	if (!e->pfn_visible)
		printf("note: page frame numbers are hidden from this user (needs "
		       "CAP_SYS_ADMIN): pages already shared or on the zero page are counted "
		       "as if they were not.\n");
}

/*
 * The ranges the given processes registered with the daemon, from its
 * regions list; none (and *reached false) when no daemon answers.
 */
static int registered_ranges(const struct opts *o, struct dd_estimate_range **out, size_t *n,
			     bool *reached)
{
	struct json_object *j;
	char *text = NULL;
	int status = 0;

	*out = NULL;
	*n = 0;
	*reached = false;
	if (request(o->sock, "regions", &text, &status) < 0 || status < 0) {
		free(text);
		return 0;
	}
	j = json_tokener_parse(text);
	free(text);
	if (!j || !json_object_is_type(j, json_type_array)) {
		json_object_put(j);
		fprintf(stderr, "dedupctl: the daemon's regions answer is not a JSON array\n");
		return -EPROTO;
	}
	*reached = true;
	*out = calloc(json_object_array_length(j) + 1, sizeof(**out));
	if (!*out) {
		json_object_put(j);
		return -ENOMEM;
	}
	for (size_t i = 0; i < json_object_array_length(j); i++) {
		struct json_object *g = json_object_array_get_idx(j, i), *v;
		pid_t pid = 0;
		uint64_t start = 0, pages = 0;

		if (json_object_object_get_ex(g, "pid", &v))
			pid = (pid_t)json_object_get_int(v);
		if (json_object_object_get_ex(g, "start", &v))
			start = json_object_get_uint64(v);
		if (json_object_object_get_ex(g, "pages", &v))
			pages = json_object_get_uint64(v);
		for (size_t k = 0; k < o->npids; k++)
			if (o->pids[k] == pid && pages)
				(*out)[(*n)++] = (struct dd_estimate_range){ pid, start,
									     start + pages * DD_PAGE_SIZE };
	}
	json_object_put(j);
	return 0;
}

static int run_estimate(const struct opts *o)
{
	struct dd_estimate e;
	struct dd_estimate_range *reg = NULL;
	size_t nreg = 0;
	bool reached = false;
	char err[512];
	int r;

	if (o->mergeable) {
		r = registered_ranges(o, &reg, &nreg, &reached);
		if (r < 0) {
			free(reg);
			return EXIT_DAEMON;
		}
		r = dd_estimate_run_mergeable(o->pids, o->npids, reg, nreg, &e, err, sizeof(err));
		free(reg);
	} else {
		r = dd_estimate_run(o->pids, o->npids, &e, err, sizeof(err));
	}

	if (r < 0) {
		fprintf(stderr, "dedupctl: %s\n", err);
		return r == -EINVAL ? EXIT_USAGE : EXIT_DAEMON;
	}
	if (o->json) {
		struct json_object *j = estimate_json(&e);

		if (o->mergeable) {
			json_object_object_add(j, "mergeable_only", json_object_new_boolean(true));
			json_object_object_add(j, "daemon_reached", json_object_new_boolean(reached));
			ADD_U64(j, "registered_ranges", nreg);
		}

		puts(json_object_to_json_string_ext(j, JSON_C_TO_STRING_PLAIN));
		json_object_put(j);
	} else {
		print_estimate(&e);
		if (o->mergeable)
			printf("only memory offered for merging: %zu range(s) registered with dedupd%s, "
			       "and mappings marked madvise(MADV_MERGEABLE) for kernel KSM.\n",
			       nreg, reached ? "" : " (no daemon answered on the socket)");
	}
	dd_estimate_free(&e);
	return EXIT_OK;
}

/* ---- one update ------------------------------------------------------------ */

static int run_once(const struct opts *o, struct prev *prev)
{
	struct json_object *j;
	char *out = NULL;
	int r, status = 0;

	if (!strcmp(o->verb, "estimate"))
		return run_estimate(o);
	r = request(o->sock, o->cmd, &out, &status);
	if (r < 0) {
		explain_unreachable(o->sock, r);
		return EXIT_UNREACHABLE;
	}
	if (status < 0) {
		fprintf(stderr, "dedupctl: %s\n", *out ? out : strerror(-status));
		free(out);
		return EXIT_DAEMON;
	}
	if (o->json) {
		puts(out);
		free(out);
		return EXIT_OK;
	}
	j = json_tokener_parse(out);
	free(out);
	if (!j) {
		fprintf(stderr, "dedupctl: the daemon's answer is not JSON\n");
		return EXIT_DAEMON;
	}
	if (json_object_is_type(j, json_type_array))
		print_regions(j);
	else if (!strcmp(o->verb, "clients"))
		print_clients(j);
	else
		print_object(j, "", prev);
	json_object_put(j);
	return EXIT_OK;
}

/* ---- --watch ------------------------------------------------------------------ */

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
	interrupted = sig;
}

static double now_sec(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void watch_header(const struct opts *o, bool tty)
{
	char host[64] = "", when[32] = "";
	time_t t = time(NULL);
	struct tm tm;

	gethostname(host, sizeof(host) - 1);
	if (localtime_r(&t, &tm))
		strftime(when, sizeof(when), "%F %T", &tm);
	if (tty)
		fputs("\033[H\033[2J", stdout); /* home, clear: as watch(1) */
	printf("Every %.1fs: dedupctl %s    %s: %s\n\n", o->watch_sec, o->cmd, host, when);
}

static int watch(const struct opts *o)
{
	struct sigaction sa = { .sa_handler = on_signal };
	bool tty = isatty(STDOUT_FILENO);
	struct prev prev = { 0 };
	int status = EXIT_OK;
	double next = now_sec();

	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	for (long i = 0; !interrupted && (!o->count || i < o->count); i++) {
		double t = now_sec(), wait;

		prev.dt = prev.at > 0 ? t - prev.at : 0;
		prev.at = t;
		if (!o->json)
			watch_header(o, tty);
		status = run_once(o, &prev);
		if (!o->json && !tty)
			putchar('\n');
		fflush(stdout);
		if (o->count && i + 1 >= o->count)
			break;
		next += o->watch_sec;
		wait = next - now_sec();
		if (wait < 0)
			next = now_sec(); /* fell behind (slow daemon): no burst of updates */
		else {
			struct timespec ts = { (time_t)wait,
					       (long)((wait - floor(wait)) * 1e9) };

			nanosleep(&ts, NULL); /* a signal cuts it short */
		}
	}
	free(prev.name);
	free(prev.value);
	return status;
}

/* ---- arguments ----------------------------------------------------------- */

/* A positive number of seconds >= 0.1, or -1. */
static double parse_seconds(const char *s)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || *end || !(v >= 0.1) || v > 86400)
		return -1;
	return v;
}

static bool is_number(const char *s)
{
	return s && *s && strspn(s, "0123456789.") == strlen(s);
}

static int parse_count(const char *s, long *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < 1) {
		fprintf(stderr, "dedupctl: --count: expected a positive integer, got '%s'\n" TRY_HELP,
			s);
		return -EINVAL;
	}
	*out = v;
	return 0;
}

static int set_watch(struct opts *o, const char *arg)
{
	o->watch_sec = arg ? parse_seconds(arg) : 2.0;
	if (o->watch_sec < 0) {
		fprintf(stderr, "dedupctl: --watch: expected seconds from 0.1 to 86400, got '%s'\n"
				TRY_HELP, arg);
		return -EINVAL;
	}
	return 0;
}

static int add_pid(struct opts *o, const char *s)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v <= 0 || v > 0x3fffffff) {
		fprintf(stderr, "dedupctl: estimate: '%s' is not a process id\n" TRY_HELP, s);
		return -EINVAL;
	}
	if (o->npids == DD_ESTIMATE_MAX_PIDS) {
		fprintf(stderr, "dedupctl: estimate: at most %d pids\n", DD_ESTIMATE_MAX_PIDS);
		return -E2BIG;
	}
	o->pids[o->npids++] = (pid_t)v;
	return 0;
}

static int add_word(struct opts *o, const char *w)
{
	if (strlen(o->cmd) + strlen(w) + 2 > sizeof(o->cmd)) {
		fputs("dedupctl: command too long\n", stderr);
		return -E2BIG;
	}
	if (*o->cmd)
		strcat(o->cmd, " ");
	strcat(o->cmd, w);
	return 0;
}

/* Options after the command, and estimate's --pid list. */
static int parse_tail(struct opts *o, int argc, char **argv, int i)
{
	bool pids = false;
	int r = 0;

	for (; i < argc && r == 0; i++) {
		const char *a = argv[i];

		if (!strcmp(a, "--json") || !strcmp(a, "-j")) {
			o->json = true;
		} else if (!strcmp(a, "--watch") || !strcmp(a, "-w")) {
			r = set_watch(o, i + 1 < argc && is_number(argv[i + 1]) ? argv[++i] : NULL);
		} else if (!strncmp(a, "--watch=", 8)) {
			r = set_watch(o, a + 8);
		} else if (!strcmp(a, "--count") || !strcmp(a, "-n")) {
			if (i + 1 >= argc) {
				fprintf(stderr, "dedupctl: %s needs a number\n" TRY_HELP, a);
				return -EINVAL;
			}
			r = parse_count(argv[++i], &o->count);
		} else if (!strncmp(a, "--count=", 8)) {
			r = parse_count(a + 8, &o->count);
		} else if (!strcmp(a, "--socket") || !strcmp(a, "-s")) {
			if (i + 1 >= argc) {
				fprintf(stderr, "dedupctl: %s needs a path\n" TRY_HELP, a);
				return -EINVAL;
			}
			o->sock = argv[++i];
		} else if (!strcmp(o->verb, "estimate") && (!strcmp(a, "--mergeable") || !strcmp(a, "-m"))) {
			o->mergeable = true;
		} else if (!strcmp(o->verb, "estimate") && (!strcmp(a, "--pid") || !strcmp(a, "-p"))) {
			pids = true;
		} else if (!strcmp(o->verb, "estimate") && !strncmp(a, "--pid=", 6)) {
			char buf[4096], *save = NULL;

			snprintf(buf, sizeof(buf), "%s", a + 6);
			for (char *t = strtok_r(buf, ",", &save); t && r == 0;
			     t = strtok_r(NULL, ",", &save))
				r = add_pid(o, t);
			pids = true;
		} else if (!strcmp(o->verb, "estimate")) {
			if (!pids || a[0] == '-') {
				fprintf(stderr, "dedupctl: estimate: unexpected '%s'; usage: "
						"dedupctl estimate --pid PID...\n" TRY_HELP, a);
				return -EINVAL;
			}
			r = add_pid(o, a);
		} else {
			r = add_word(o, a);
		}
	}
	return r;
}

static int check_command(const struct opts *o)
{
	static const char *const verbs[] = { "stats", "status", "regions", "state", "clients",
					     "set", "estimate" };
	bool known = false;

	for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++)
		known |= !strcmp(o->verb, verbs[i]);
	if (!known) {
		fprintf(stderr, "dedupctl: unknown command '%s'\n" TRY_HELP, o->verb);
		return -EINVAL;
	}
	if (!strcmp(o->verb, "set") && (!strchr(o->cmd, ' ') || !strchr(o->cmd, '='))) {
		fputs("dedupctl: set: expected KEY=VALUE\n" TRY_HELP, stderr);
		return -EINVAL;
	}
	if (!strcmp(o->verb, "set") && o->watch_sec > 0) {
		fputs("dedupctl: --watch does not repeat set\n" TRY_HELP, stderr);
		return -EINVAL;
	}
	if (!strcmp(o->verb, "estimate") && !o->npids) {
		fputs("dedupctl: estimate: no process given; usage: dedupctl estimate --pid "
		      "PID...\n" TRY_HELP, stderr);
		return -EINVAL;
	}
	if (o->count && o->watch_sec <= 0) {
		fputs("dedupctl: --count goes with --watch\n" TRY_HELP, stderr);
		return -EINVAL;
	}
	return 0;
}

static int parse_args(int argc, char **argv, struct opts *o)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "json", no_argument, NULL, 'j' },
		{ "watch", optional_argument, NULL, 'w' },
		{ "count", required_argument, NULL, 'n' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ 0 },
	};
	int c, r = 0;

	o->sock = getenv("DEDUPD_SOCKET");
	if (!o->sock || !*o->sock)
		o->sock = DD_DEFAULT_SOCKET;
	while (r == 0 && (c = getopt_long(argc, argv, "+s:jw::n:hV", opts, NULL)) != -1) {
		switch (c) {
		case 's': o->sock = optarg; break;
		case 'j': o->json = true; break;
		case 'w':
			/* --watch 5: the optional argument as its own word */
			if (!optarg && optind < argc && is_number(argv[optind]))
				optarg = argv[optind++];
			r = set_watch(o, optarg);
			break;
		case 'n': r = parse_count(optarg, &o->count); break;
		case 'h': fputs(usage_text, stdout); exit(EXIT_OK);
		case 'V': puts("dedupctl 0.1.0"); exit(EXIT_OK);
		default: fputs(TRY_HELP, stderr); return -EINVAL;
		}
	}
	if (r < 0)
		return r;
	if (optind >= argc) {
		fputs("dedupctl: missing command\n" TRY_HELP, stderr);
		return -EINVAL;
	}
	o->verb = argv[optind];
	r = add_word(o, argv[optind]);
	if (r == 0)
		r = parse_tail(o, argc, argv, optind + 1);
	return r < 0 ? r : check_command(o);
}

int main(int argc, char **argv)
{
	static struct opts o;

	if (parse_args(argc, argv, &o) < 0)
		return EXIT_USAGE;
	if (o.watch_sec > 0)
		return watch(&o);
	return run_once(&o, NULL);
}
