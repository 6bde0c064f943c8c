// SPDX-License-Identifier: MIT
/*
 * Operations (issue 5) against the real binaries:
 *
 *   metrics   /metrics while clients merge: the figures move, agree with
 *             `dedupctl stats --json`, carry per-client labels, and pass
 *             `promtool check metrics`; the exposition of made-up figures
 *             (label escaping, the client cap); the node_exporter textfile
 *             (atomic, follows a reload, removed at exit); HTTP errors;
 *             bad and busy listen addresses.
 *   estimate  `dedupctl estimate` on two unregistered processes with known
 *             duplicate, zero and unique pages: exact counts; its errors.
 *   ctl       --watch/--count, exit codes 0/1/2/3, a socket the caller may
 *             not connect to, --help against the man pages (groff -ww).
 *   config    files with unknown keys, bad units, out-of-range values: exit
 *             1 with file:line; bad option arguments: exit 2.
 *   systemd   `systemd-analyze verify` of the unit; READY/WATCHDOG/
 *             RELOADING/STOPPING on a NOTIFY_SOCKET the test reads.
 *   install   `make install-files` into a temporary DESTDIR lists every
 *             file; `make uninstall` removes them and keeps an edited config.
 *
 * Needs root (other processes' memory, uid 65534 for the permission cases)
 * and installs Debian's prometheus package for promtool if it is missing.
 */
#include "dedupd/daemon/metrics.h"
#include "dedupd/lib/dedup.h"
#include "tests/harness.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>

Suite *ops_suite(void);

#define PG 4096u

static const char *const quiet[] = { "--metrics-listen", "", "--no-bpf", NULL };

/* ---- running programs ------------------------------------------------------ */

struct proc_out {
	int status; /* exit code, or 128 + signal */
	char *out, *err;
};

static void proc_free(struct proc_out *p)
{
	free(p->out);
	free(p->err);
}

static char *slurp_fd(int fd)
{
	off_t len = lseek(fd, 0, SEEK_END);
	char *s = calloc(1, (size_t)len + 1);

	ck_assert_ptr_nonnull(s);
	ck_assert_int_eq(pread(fd, s, (size_t)len, 0), len);
	close(fd);
	return s;
}

/*
 * Run argv (argv[0] a path) with stdin from in_path (NULL: /dev/null), as
 * uid 65534 if nobody, with the make variables of a surrounding `make check`
 * dropped from the environment. Waits.
 */
static struct proc_out run_as(const char *const *argv, const char *in_path, bool nobody)
{
	char ofile[] = "/tmp/check_ops-out-XXXXXX", efile[] = "/tmp/check_ops-err-XXXXXX";
	int ofd = mkstemp(ofile), efd = mkstemp(efile), st;
	struct proc_out p;
	pid_t pid;

	ck_assert(ofd >= 0 && efd >= 0);
	unlink(ofile);
	unlink(efile);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		int in = open(in_path ? in_path : "/dev/null", O_RDONLY);

		dup2(in, 0);
		dup2(ofd, 1);
		dup2(efd, 2);
		unsetenv("MAKEFLAGS");
		unsetenv("MAKELEVEL");
		unsetenv("MFLAGS");
		if (nobody && (setgroups(0, NULL) < 0 || setresgid(65534, 65534, 65534) < 0 ||
			       setresuid(65534, 65534, 65534) < 0))
			_exit(126);
		execvp(argv[0], (char *const *)argv);
		_exit(127);
	}
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	p.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
	p.out = slurp_fd(ofd);
	p.err = slurp_fd(efd);
	ck_assert_msg(!strstr(p.err, "Sanitizer") && !strstr(p.err, "runtime error"),
		      "%s: sanitizer report:\n%s", argv[0], p.err);
	return p;
}

static struct proc_out run(const char *const *argv)
{
	return run_as(argv, NULL, false);
}

static const char *exe(const char *name)
{
	static char buf[4][300];
	static int i;
	char *b = buf[i++ % 4];

	snprintf(b, sizeof(buf[0]), "%s/%s", h_build(), name);
	return b;
}

/* dedupctl with args (NULL-terminated). */
static struct proc_out ctl(const char *first, ...)
{
	const char *argv[64] = { exe("dedupctl"), first };
	int n = 2;
	va_list ap;

	va_start(ap, first);
	while (first && n < 63 && (argv[n] = va_arg(ap, const char *)))
		n++;
	va_end(ap);
	argv[n] = NULL;
	return run(argv);
}

static void assert_says(const char *text, const char *words)
{
	ck_assert_msg(strstr(text, words), "'%s' does not say '%s'", text, words);
}

static char *read_file(const char *path)
{
	int fd = open(path, O_RDONLY);

	return fd < 0 ? NULL : slurp_fd(fd);
}

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	ck_assert_msg(f, "cannot write %s: %s", path, strerror(errno));
	fputs(text, f);
	ck_assert_int_eq(fclose(f), 0);
}

/* A fresh directory anyone may enter (the socket tests run as nobody). */
static void make_tmpdir(char *dir, size_t len)
{
	snprintf(dir, len, "/tmp/check_ops.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
	ck_assert_int_eq(chmod(dir, 0755), 0);
}

static void remove_tree(const char *dir)
{
	const char *argv[] = { "rm", "-rf", dir, NULL };
	struct proc_out p = run(argv);

	proc_free(&p);
}

/* The daemon's log (the harness appends it to <sock>.log). */
static char *daemon_log(const char *sock)
{
	char path[300];

	snprintf(path, sizeof(path), "%s.log", sock);
	return read_file(path);
}

static bool log_says(const char *sock, const char *words, unsigned timeout_ms)
{
	uint64_t end = h_now_ms() + timeout_ms;

	do {
		char *log = daemon_log(sock);
		bool yes = log && strstr(log, words);

		free(log);
		if (yes)
			return true;
		h_sleep_ms(20);
	} while (h_now_ms() < end);
	return false;
}

/* SIGTERM: a clean exit, and a log without sanitizer reports (then removed). */
static void daemon_stop_clean(pid_t pid, const char *sock)
{
	int st = h_daemon_stop(pid, SIGTERM);
	char *log = daemon_log(sock), path[300];

	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "dedupd exit status %#x (log %s.log)",
		      st, sock);
	ck_assert_msg(!log || (!strstr(log, "Sanitizer") && !strstr(log, "runtime error")),
		      "sanitizer report in %s.log:\n%s", sock, log);
	free(log);
	snprintf(path, sizeof(path), "%s.log", sock);
	unlink(path);
}

static int64_t json_int(struct json_object *o, const char *key)
{
	struct json_object *v;

	ck_assert_msg(json_object_object_get_ex(o, key, &v), "no '%s' in %s", key,
		      json_object_to_json_string(o));
	return json_object_get_int64(v);
}

/* ---- HTTP ------------------------------------------------------------------ */

/* A TCP port nobody listens on now. */
static unsigned free_port(void)
{
	struct sockaddr_in sa = { .sin_family = AF_INET,
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t l = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &l), 0);
	close(fd);
	return ntohs(sa.sin_port);
}

/* One HTTP/1.0 request to 127.0.0.1:port; the status code, the whole
 * response in *resp (malloc'ed) and the body in *body (inside *resp). */
static int http(unsigned port, const char *method, const char *path, char **resp, char **body)
{
	struct sockaddr_in sa = { .sin_family = AF_INET,
				  .sin_port = htons((uint16_t)port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	size_t len = 0, cap = 65536;
	char req[256], *buf = malloc(cap);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), code = -1;
	struct timeval tv = { 5, 0 };
	ssize_t n;

	ck_assert_ptr_nonnull(buf);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	ck_assert_msg(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0,
		      "connect 127.0.0.1:%u: %s", port, strerror(errno));
	snprintf(req, sizeof(req), "%s %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", method, path);
	ck_assert_int_eq(write(fd, req, strlen(req)), (ssize_t)strlen(req));
	while ((n = read(fd, buf + len, cap - len - 1)) > 0) {
		len += (size_t)n;
		if (cap - len < 4096) {
			cap *= 2;
			buf = realloc(buf, cap);
			ck_assert_ptr_nonnull(buf);
		}
	}
	close(fd);
	buf[len] = 0;
	sscanf(buf, "HTTP/1.%*d %d", &code);
	*body = strstr(buf, "\r\n\r\n");
	*body = *body ? *body + 4 : buf + len;
	*resp = buf;
	return code;
}

static char *scrape(unsigned port)
{
	char *resp, *body, *text;
	int code = http(port, "GET", "/metrics", &resp, &body);

	ck_assert_msg(code == 200, "GET /metrics: %d", code);
	assert_says(resp, "Content-Type: text/plain; version=0.0.4");
	text = strdup(body);
	free(resp);
	return text;
}

/* The value of the series whose name and labels are exactly `series`
 * ("dedupd_pages_sharing", "dedupd_pressure_state{state=\"high\"}"). */
static bool metric_get(const char *text, const char *series, double *v)
{
	size_t l = strlen(series);

	for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
		if (!strncmp(p, series, l) && p[l] == ' ') {
			*v = strtod(p + l + 1, NULL);
			return true;
		}
	return false;
}

static double metric(const char *text, const char *series)
{
	double v = -1;

	ck_assert_msg(metric_get(text, series, &v), "no series %s in the scrape", series);
	return v;
}

/* promtool, installing Debian's prometheus package if it is missing. */
static void promtool_check(const char *file)
{
	const char *argv[] = { "promtool", "check", "metrics", NULL };
	struct proc_out p = run_as(argv, file, false);

	if (p.status == 127) {
		const char *apt[] = {
			"apt-get",    "install", "-y", "-qq", "--no-install-recommends",
			"prometheus", NULL
		};
		struct proc_out a;

		fprintf(stderr, "promtool is missing: apt-get install prometheus\n");
		proc_free(&p);
		a = run(apt);
		ck_assert_msg(a.status == 0, "apt-get install prometheus failed: %s", a.err);
		proc_free(&a);
		p = run_as(argv, file, false);
	}
	ck_assert_msg(p.status == 0 && !p.out[0] && !p.err[0],
		      "promtool check metrics %s: exit %d: %s%s", file, p.status, p.out, p.err);
	proc_free(&p);
}

/* ---- registered clients (libdedup), for the metrics ------------------------- */

#define MP 64	/* pages per client */
#define MDUP 32 /* the same in every client */
#define MZERO 8

struct kid {
	pid_t pid;
	int to, from;
};

static void client_child(unsigned idx, int in, int out)
{
	uint8_t *m =
	    mmap(NULL, MP * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char c;
	int r;

	for (unsigned i = 0; i < MP; i++) {
		if (i < MDUP)
			h_fill(m + (size_t)i * PG, 1, i);
		else if (i < MDUP + MZERO)
			memset(m + (size_t)i * PG, 0, PG);
		else
			h_fill(m + (size_t)i * PG, 100 + idx, i);
	}
	r = dedup_register(m, MP * PG, NULL);
	if (write(out, &r, sizeof(r)) != sizeof(r))
		_exit(2);
	while (read(in, &c, 1) == 1 && c != 'q')
		;
	_exit(0);
}

/* A forked child; fn runs in it with its command pipe and answer pipe. */
static struct kid kid_fork(void (*fn)(unsigned, int, int), unsigned idx)
{
	int a[2], b[2];
	struct kid k;

	ck_assert_int_eq(pipe(a), 0);
	ck_assert_int_eq(pipe(b), 0);
	k.pid = fork();
	ck_assert_int_ge(k.pid, 0);
	if (k.pid == 0) {
		close(a[1]);
		close(b[0]);
		fn(idx, a[0], b[1]);
		_exit(0);
	}
	close(a[0]);
	close(b[1]);
	k.to = a[1];
	k.from = b[0];
	return k;
}

static int kid_read(struct kid *k)
{
	int r = -1;

	ck_assert_int_eq(read(k->from, &r, sizeof(r)), sizeof(r));
	return r;
}

static void kid_stop(struct kid *k)
{
	int st;

	if (write(k->to, "q", 1) != 1)
		kill(k->pid, SIGKILL);
	waitpid(k->pid, &st, 0);
	close(k->to);
	close(k->from);
}

/* ---- metrics ---------------------------------------------------------------- */

/*
 * The merge step figures of a converged run: every step took time, the runs
 * sent to agents are at most the pages merged, the steps fit in the wall time
 * the test has been running times the scan threads there can be (so they are
 * nanoseconds, not micro- or milliseconds), each remap took at least a
 * microsecond, and /metrics says the same in seconds.
 */
static void assert_merge_steps(struct json_object *st, const char *scrape_text, uint64_t wall_ms)
{
	static const char *const step[][2] = {
		{ "merge_freeze_ns", "dedupd_merge_step_seconds_total{step=\"freeze\"}" },
		{ "merge_verify_ns", "dedupd_merge_step_seconds_total{step=\"verify\"}" },
		{ "merge_agent_ns", "dedupd_merge_step_seconds_total{step=\"agent\"}" },
		{ "merge_settle_ns", "dedupd_merge_step_seconds_total{step=\"settle\"}" },
	};
	long long sum = 0, runs = json_int(st, "remap_runs") + json_int(st, "zap_runs");

	ck_assert(json_int(st, "merge_batches") > 0);
	ck_assert(json_int(st, "remap_runs") > 0);
	ck_assert(json_int(st, "zap_runs") > 0);
	ck_assert_msg(runs <= json_int(st, "merges") + json_int(st, "merge_failed"),
		      "%lld runs for %lld merges", runs, (long long)json_int(st, "merges"));
	ck_assert(json_int(st, "merge_batches") <= runs);
	for (size_t i = 0; i < sizeof(step) / sizeof(step[0]); i++) {
		long long ns = json_int(st, step[i][0]);
		double sec = metric(scrape_text, step[i][1]);

		ck_assert_msg(ns > 0, "%s is %lld", step[i][0], ns);
		/* the scrape came just before dedupctl: equal, as nothing
		 * merges once converged, or behind by a batch at most */
		ck_assert_msg(sec * 1e9 <= (double)ns + 1 && sec * 1e9 >= (double)ns - 1e6,
			      "%s %.9f s, dedupctl %lld ns", step[i][1], sec, ns);
		sum += ns;
	}
	ck_assert_msg((uint64_t)sum <= wall_ms * 1000000ULL * (uint64_t)sysconf(_SC_NPROCESSORS_ONLN),
		      "merge steps %lld ns in %llu ms of wall time", sum,
		      (unsigned long long)wall_ms);
	ck_assert_msg(json_int(st, "merge_agent_ns") >= json_int(st, "remap_runs") * 1000,
		      "%lld ns for %lld remaps", (long long)json_int(st, "merge_agent_ns"),
		      (long long)json_int(st, "remap_runs"));
	ck_assert(json_int(st, "agent_hash_wait_ns") > 0);
	ck_assert(metric(scrape_text, "dedupd_agent_hash_wait_seconds_total") * 1e9 <=
		  (double)json_int(st, "agent_hash_wait_ns") + 1);
}

static pid_t start_with_metrics(const char *sock, unsigned port)
{
	char listen[32];
	const char *args[] = { "--metrics-listen",
			       listen,
			       "--pages-to-scan",
			       "100000",
			       "--sleep-millisecs",
			       "5",
			       NULL };

	snprintf(listen, sizeof(listen), "127.0.0.1:%u", port);
	return h_daemon_start(sock, args);
}

/* dedupctl stats --json, parsed. */
static struct json_object *stats_json(const char *sock)
{
	struct proc_out p = ctl("--socket", sock, "stats", "--json", NULL);
	struct json_object *o;

	ck_assert_msg(p.status == 0, "dedupctl stats: %d %s", p.status, p.err);
	o = json_tokener_parse(p.out);
	ck_assert_ptr_nonnull(o);
	proc_free(&p);
	return o;
}

START_TEST(test_metrics_live)
{
	static const char *const same[][2] = {
		{ "pages_shared", "dedupd_pages_shared" },
		{ "pages_sharing", "dedupd_pages_sharing" },
		{ "zero_pages", "dedupd_zero_pages" },
		{ "pages_registered", "dedupd_pages_registered" },
		{ "clients", "dedupd_clients" },
		{ "regions", "dedupd_regions" },
		{ "store_pages", "dedupd_store_pages" },
		{ "store_pages_warm", "dedupd_store_pages_warm" },
		{ "merges", "dedupd_merges_total" },
		{ "cow_breaks", "dedupd_cow_breaks_total" },
		{ "pages_unmapped", "dedupd_pages_unmapped_total" },
		{ "merge_batches", "dedupd_merge_batches_total" },
		{ "agent_timeouts", "dedupd_agent_timeouts_total" },
		{ "remap_runs", "dedupd_agent_runs_total{op=\"remap\"}" },
		{ "zap_runs", "dedupd_agent_runs_total{op=\"zap\"}" },
	};
	char sock[256], series[256], file[] = "/tmp/check_ops-scrape-XXXXXX";
	unsigned port = free_port();
	struct json_object *st;
	char *before, *after, *later;
	struct kid k[2];
	uint64_t t_start;
	pid_t d;
	int fd;

	H_SKIP_UNLESS_ROOT();
	h_sock_path(sock, sizeof(sock), "ops-metrics");
	t_start = h_now_ms();
	d = start_with_metrics(sock, port);
	setenv("DEDUPD_SOCKET", sock, 1);
	before = scrape(port);
	ck_assert(metric(before, "dedupd_merges_total") == 0);
	ck_assert(metric(before, "dedupd_pages_sharing") == 0);
	ck_assert(metric(before, "dedupd_clients") == 0);

	for (unsigned i = 0; i < 2; i++) {
		k[i] = kid_fork(client_child, i);
		ck_assert_int_eq(kid_read(&k[i]), 0);
	}
	ck_assert(h_wait_stat(sock, "pages_sharing", MDUP, false, 15000));
	ck_assert(h_wait_stat(sock, "zero_pages", 2 * MZERO, false, 15000));
	h_sleep_ms(100);

	/* The figures moved, and agree with dedupctl; counters only grow. */
	after = scrape(port);
	st = stats_json(sock);
	later = scrape(port);
	for (size_t i = 0; i < sizeof(same) / sizeof(same[0]); i++)
		ck_assert_msg(metric(after, same[i][1]) == (double)json_int(st, same[i][0]),
			      "%s %g, dedupctl %s %lld", same[i][1], metric(after, same[i][1]),
			      same[i][0], (long long)json_int(st, same[i][0]));
	ck_assert(metric(after, "dedupd_pages_sharing") == MDUP);
	ck_assert(metric(after, "dedupd_zero_pages") == 2 * MZERO);
	ck_assert(metric(after, "dedupd_merges_total") > 0);
	ck_assert(metric(after, "dedupd_pages_scanned_total") <= json_int(st, "pages_scanned"));
	ck_assert(json_int(st, "pages_scanned") <= metric(later, "dedupd_pages_scanned_total"));
	ck_assert(metric(after, "dedupd_full_scans_total") <= json_int(st, "full_scans"));
	ck_assert(json_int(st, "full_scans") <= metric(later, "dedupd_full_scans_total"));
	ck_assert(metric(after, "dedupd_scan_cpu_seconds_total") * 1e9 <=
		  (double)json_int(st, "scan_cpu_ns") + 1);
	ck_assert(metric(later, "dedupd_process_cpu_seconds_total") > 0);
	assert_merge_steps(st, after, h_now_ms() - t_start);
	json_object_put(st);

	/* Per-client series, labelled and complete. */
	for (unsigned i = 0; i < 2; i++) {
		char needle[128];

		snprintf(needle, sizeof(needle), ",pid=\"%d\",command=\"check_ops\"} %u",
			 (int)k[i].pid, MP);
		ck_assert_msg(strstr(after, needle), "no client series '%s' in:\n%s", needle,
			      after);
	}
	ck_assert(metric(after, "dedupd_clients_other") == 0);

	/* One pressure state is 1, the one dedupctl state names. */
	{
		static const char *const states[] = { "high", "soft", "hard", "low" };
		struct proc_out p = ctl("--socket", sock, "state", "--json", NULL);
		struct json_object *o = json_tokener_parse(p.out), *v;
		double sum = 0;

		ck_assert(o && json_object_object_get_ex(o, "state", &v));
		for (int i = 0; i < 4; i++) {
			snprintf(series, sizeof(series), "dedupd_pressure_state{state=\"%s\"}",
				 states[i]);
			sum += metric(later, series);
		}
		ck_assert(sum == 1);
		snprintf(series, sizeof(series), "dedupd_pressure_state{state=\"%s\"}",
			 json_object_get_string(v));
		ck_assert(metric(later, series) == 1);
		json_object_put(o);
		proc_free(&p);
	}
	ck_assert(metric(later, "dedupd_scan_pages_to_scan") >= 100000);
	ck_assert(metric(later, "dedupd_memory_total_bytes") > 0);

	/* promtool accepts the live scrape. */
	fd = mkstemp(file);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, later, strlen(later)), (ssize_t)strlen(later));
	close(fd);
	promtool_check(file);
	unlink(file);

	/* dedupctl status names the endpoint. */
	{
		struct proc_out p = ctl("--socket", sock, "status", NULL);
		char want[64];

		snprintf(want, sizeof(want), "127.0.0.1:%u", port);
		assert_says(p.out, want);
		proc_free(&p);
	}
	for (unsigned i = 0; i < 2; i++)
		kid_stop(&k[i]);
	free(before), free(after), free(later);
	daemon_stop_clean(d, sock);
}
END_TEST

START_TEST(test_metrics_http_errors)
{
	unsigned port = free_port();
	char sock[256], *resp, *body;
	pid_t d;

	h_sock_path(sock, sizeof(sock), "ops-http");
	d = start_with_metrics(sock, port);
	ck_assert_int_eq(http(port, "GET", "/nope", &resp, &body), 404);
	free(resp);
	ck_assert_int_eq(http(port, "POST", "/metrics", &resp, &body), 405);
	assert_says(resp, "Allow: GET, HEAD");
	free(resp);
	ck_assert_int_eq(http(port, "GET", "/", &resp, &body), 200);
	assert_says(body, "/metrics");
	free(resp);
	ck_assert_int_eq(http(port, "HEAD", "/metrics", &resp, &body), 200);
	ck_assert_str_eq(body, "");
	free(resp);
	daemon_stop_clean(d, sock);
}
END_TEST

/* The exposition of made-up figures: escaping, the cap, promtool. */
START_TEST(test_metrics_format)
{
	struct dd_metrics_client cl[100], other;
	struct dd_metrics_snapshot s = { 0 };
	char file[] = "/tmp/check_ops-fmt-XXXXXX", *text = NULL;
	size_t len = 0, keep;
	FILE *f;
	int fd;

	memset(cl, 0, sizeof(cl));
	for (unsigned i = 0; i < 100; i++) {
		cl[i].client_id = 1000 - i;
		cl[i].pid = (pid_t)(5000 + i);
		cl[i].pages_registered = i; /* the 64 largest: ids 900..963 */
		cl[i].pages_sharing = 1;
		cl[i].regions = 1;
		snprintf(cl[i].comm, sizeof(cl[i].comm), "w%u", i);
	}
	snprintf(cl[99].comm, sizeof(cl[99].comm), "a\"b\\c\nd");
	keep = dd_metrics_cap_clients(cl, 100, &other);
	ck_assert_uint_eq(keep, DD_METRICS_MAX_CLIENTS);
	ck_assert_uint_eq(cl[0].client_id, 901); /* sorted by id */
	ck_assert_uint_eq(cl[63].client_id, 964);
	ck_assert_uint_eq(other.pages_registered, 35 * 36 / 2); /* 0..35 */
	ck_assert_uint_eq(other.pages_sharing, 36);
	ck_assert_uint_eq(other.regions, 36);

	s.st.pages_sharing = 7;
	s.st.scan_cpu_ns = 1234567890;
	s.st.merge_agent_ns = 2000000001;
	s.st.zap_runs = 12;
	s.st.bytes_saved_net = -4096;
	s.knobs.pages_to_scan = 100;
	s.knobs.sleep_millisecs = 20;
	s.pressure_valid = true;
	s.ps.state = DD_PSTATE_HARD;
	s.ps.source = "psi";
	s.ps.psi_valid = true;
	s.ps.psi_some_avg10_pm = 1234;
	s.clients = cl;
	s.nclients = keep;
	s.other = other;
	s.nother = 100 - keep;
	f = open_memstream(&text, &len);
	ck_assert_int_eq(dd_metrics_format(f, &s), 0);
	fclose(f);
	assert_says(text, "dedupd_scan_cpu_seconds_total 1.234567890\n");
	assert_says(text, "dedupd_merge_step_seconds_total{step=\"agent\"} 2.000000001\n");
	assert_says(text, "dedupd_merge_step_seconds_total{step=\"freeze\"} 0.000000000\n");
	assert_says(text, "dedupd_agent_runs_total{op=\"zap\"} 12\n");
	assert_says(text, "dedupd_bytes_saved_net -4096\n");
	assert_says(text, "dedupd_pressure_state{state=\"hard\"} 1\n");
	assert_says(text, "dedupd_pressure_state{state=\"high\"} 0\n");
	assert_says(text, "dedupd_psi_memory_avg10_ratio{kind=\"some\"} 0.1234\n");
	assert_says(text, "dedupd_scan_sleep_seconds 0.020\n");
	assert_says(text, "command=\"a\\\"b\\\\c\\nd\"} 99\n"); /* escaped */
	assert_says(text, "dedupd_client_pages_registered{client=\"other\"} 630\n");
	assert_says(text, "dedupd_clients_other 36\n");
	ck_assert_ptr_null(strstr(text, "dedupd_reclaim_stalls_total")); /* no BPF */
	fd = mkstemp(file);
	ck_assert_int_eq(write(fd, text, len), (ssize_t)len);
	close(fd);
	promtool_check(file);
	unlink(file);
	free(text);
}
END_TEST

/* A file is written within a second, atomically, follows a reload to a new
 * path, reports a directory it cannot write once, and goes at exit. */
START_TEST(test_metrics_textfile)
{
	char dir[64], conf[128], prom[128], prom2[128], text[512], sock[256];
	const char *args[] = { "--config", conf, "--metrics-listen", "", "--no-bpf", NULL };
	struct stat st1, st2;
	char *body;
	pid_t d;

	make_tmpdir(dir, sizeof(dir));
	snprintf(conf, sizeof(conf), "%s/dedupd.conf", dir);
	snprintf(prom, sizeof(prom), "%s/dedupd.prom", dir);
	snprintf(prom2, sizeof(prom2), "%s/other.prom", dir);
	snprintf(text, sizeof(text), "[metrics]\ntextfile = %s\ntextfile_interval_sec = 1\n", prom);
	write_file(conf, text);
	h_sock_path(sock, sizeof(sock), "ops-textfile");
	d = h_daemon_start(sock, args);
	for (int i = 0; i < 100 && stat(prom, &st1) < 0; i++)
		h_sleep_ms(20);
	ck_assert_msg(stat(prom, &st1) == 0, "no textfile %s after 2 s", prom);
	body = read_file(prom);
	assert_says(body, "# TYPE dedupd_pages_scanned_total counter\n");
	assert_says(body, "dedupd_build_info{version=");
	free(body);
	promtool_check(prom);
	/* Rewritten by rename: a new inode, and no temporary left behind. */
	h_sleep_ms(1300);
	ck_assert_int_eq(stat(prom, &st2), 0);
	ck_assert_uint_ne(st1.st_ino, st2.st_ino);
	{
		DIR *dd = opendir(dir);
		struct dirent *de;

		while ((de = readdir(dd)))
			ck_assert_msg(!strstr(de->d_name, ".tmp"), "left behind: %s", de->d_name);
		closedir(dd);
	}
	/* SIGHUP with a new path: the old file goes, the new one comes. */
	snprintf(text, sizeof(text), "[metrics]\ntextfile = %s\ntextfile_interval_sec = 1\n",
		 prom2);
	write_file(conf, text);
	kill(d, SIGHUP);
	for (int i = 0; i < 100 && (access(prom2, F_OK) < 0 || access(prom, F_OK) == 0); i++)
		h_sleep_ms(20);
	ck_assert_msg(access(prom2, F_OK) == 0, "no %s after the reload", prom2);
	ck_assert_msg(access(prom, F_OK) < 0, "%s still there after the reload", prom);
	/* A directory that does not exist: one warning, the daemon runs on. */
	write_file(conf, "[metrics]\ntextfile = /nonexistent-dir/dedupd.prom\n"
			 "textfile_interval_sec = 1\n");
	kill(d, SIGHUP);
	ck_assert(
	    log_says(sock, "metrics textfile: cannot create /nonexistent-dir/dedupd.prom", 3000));
	ck_assert_int_ge(h_stat(sock, "clients"), 0);
	ck_assert_msg(access(prom2, F_OK) < 0, "%s still there after turning it off", prom2);
	/* Back to a good file; at exit it is removed. */
	snprintf(text, sizeof(text), "[metrics]\ntextfile = %s\ntextfile_interval_sec = 1\n", prom);
	write_file(conf, text);
	kill(d, SIGHUP);
	for (int i = 0; i < 100 && access(prom, F_OK) < 0; i++)
		h_sleep_ms(20);
	ck_assert_int_eq(access(prom, F_OK), 0);
	daemon_stop_clean(d, sock);
	ck_assert_msg(access(prom, F_OK) < 0, "%s outlived the daemon", prom);
	remove_tree(dir);
}
END_TEST

/* dedupd with args on sock, expected to fail at once: its exit and stderr. */
static struct proc_out dedupd_fails(const char *sock, const char *const *args)
{
	const char *argv[32] = { exe("dedupd"), "--foreground", "--socket", sock };
	int n = 4;

	for (; args && *args && n < 31; args++)
		argv[n++] = *args;
	argv[n] = NULL;
	return run(argv);
}

START_TEST(test_metrics_bad_listen)
{
	static const char *const bad[] = { "nonsense", "127.0.0.1:99999", "127.0.0.1:",
					   ":9848",    "::1:9848",	  "localhost" };
	struct sockaddr_in sa = { .sin_family = AF_INET,
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	char sock[256], listen_arg[64], dir[64], conf[128], text[128];
	socklen_t l = sizeof(sa);
	struct proc_out p;
	int busy;

	h_sock_path(sock, sizeof(sock), "ops-badlisten");
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		const char *args[] = { "--metrics-listen", bad[i], NULL };

		p = dedupd_fails(sock, args);
		char want[64];

		ck_assert_msg(p.status == 2, "--metrics-listen %s: exit %d", bad[i], p.status);
		snprintf(want, sizeof(want), "--metrics-listen: bad value '%s' for listen", bad[i]);
		assert_says(p.err, want);
		proc_free(&p);
	}
	/* An address in use: refused, with bind()'s reason. */
	busy = socket(AF_INET, SOCK_STREAM, 0);
	ck_assert_int_eq(bind(busy, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ck_assert_int_eq(listen(busy, 1), 0);
	ck_assert_int_eq(getsockname(busy, (struct sockaddr *)&sa, &l), 0);
	snprintf(listen_arg, sizeof(listen_arg), "127.0.0.1:%u", ntohs(sa.sin_port));
	{
		const char *args[] = { "--metrics-listen", listen_arg, "--no-bpf", NULL };

		p = dedupd_fails(sock, args);
		ck_assert_msg(p.status == 1, "busy %s: exit %d", listen_arg, p.status);
		assert_says(p.err, "cannot listen on");
		assert_says(p.err, listen_arg);
		assert_says(p.err, "Address already in use");
		proc_free(&p);
	}
	/* The same in the configuration file: also fatal. */
	make_tmpdir(dir, sizeof(dir));
	snprintf(conf, sizeof(conf), "%s/dedupd.conf", dir);
	snprintf(text, sizeof(text), "[metrics]\nlisten = %s\n", listen_arg);
	write_file(conf, text);
	{
		const char *args[] = { "--config", conf, "--no-bpf", NULL };

		p = dedupd_fails(sock, args);
		ck_assert_msg(p.status == 1, "busy %s in a file: exit %d", listen_arg, p.status);
		assert_says(p.err, "Address already in use");
		proc_free(&p);
	}
	close(busy);
	remove_tree(dir);
	/* An address that is not this host's. */
	{
		const char *args[] = { "--metrics-listen", "192.0.2.1:9848", "--no-bpf", NULL };

		p = dedupd_fails(sock, args);
		ck_assert_int_eq(p.status, 1);
		assert_says(p.err, "Cannot assign requested address");
		proc_free(&p);
	}
}
END_TEST

/* The built-in default address taken: dedupd warns and runs without it. */
START_TEST(test_metrics_default_busy)
{
	struct sockaddr_in sa = { .sin_family = AF_INET,
				  .sin_port = htons(9848),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	const char *args[] = { "--no-bpf", NULL };
	int busy = socket(AF_INET, SOCK_STREAM, 0), one = 1;
	char sock[256];
	struct proc_out p;
	pid_t d;

	setsockopt(busy, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(busy, (struct sockaddr *)&sa, sizeof(sa)) == 0)
		listen(busy, 1); /* else someone else holds it: just as good */
	h_sock_path(sock, sizeof(sock), "ops-defaultbusy");
	d = h_daemon_start(sock, args);
	ck_assert(log_says(sock, "running without /metrics", 2000));
	p = ctl("--socket", sock, "status", "--json", NULL);
	assert_says(p.out, "\"metrics\":{\"listen\":\"\"");
	proc_free(&p);
	daemon_stop_clean(d, sock);
	close(busy);
}
END_TEST

/* ---- estimate ------------------------------------------------------------ */

#define EP 64 /* pages of the region: */
/* 0..15 the same in both processes; 16..23 written with zeros; 24..31 eight
 * copies of one page, different per process; 32..47 unique; 48..55 only
 * read (the kernel's zero page); 56..63 never touched. */

static void est_fill(uint8_t *m, unsigned idx)
{
	volatile uint8_t sink = 0;

	for (unsigned i = 0; i < 16; i++)
		h_fill(m + (size_t)i * PG, 7, i);
	for (unsigned i = 16; i < 24; i++)
		memset(m + (size_t)i * PG, 0, PG);
	for (unsigned i = 24; i < 32; i++)
		h_fill(m + (size_t)i * PG, 20 + idx, 0);
	for (unsigned i = 32; i < 48; i++)
		h_fill(m + (size_t)i * PG, 40 + idx, i);
	for (unsigned i = 48; i < 56; i++)
		sink ^= m[(size_t)i * PG];
	(void)sink;
}

/* Not a dedupd client: it only fills its memory and sleeps. The first fill
 * is thrown away, so that the second touches no new stack or heap. */
static void est_child(unsigned idx, int in, int out)
{
	uint8_t *m =
	    mmap(NULL, EP * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int ok = 0;
	char c;

	madvise(m, EP * PG, MADV_NOHUGEPAGE);
	est_fill(m, idx);
	madvise(m, EP * PG, MADV_DONTNEED);
	if (write(out, &ok, sizeof(ok)) != sizeof(ok))
		_exit(2);
	while (read(in, &c, 1) == 1 && c != 'q') {
		est_fill(m, idx);
		if (write(out, &ok, sizeof(ok)) != sizeof(ok))
			_exit(2);
	}
	_exit(0);
}

static struct json_object *estimate(pid_t a, pid_t b)
{
	char pa[16], pb[16];
	struct proc_out p;
	struct json_object *o;

	snprintf(pa, sizeof(pa), "%d", (int)a);
	snprintf(pb, sizeof(pb), "%d", (int)b);
	p = ctl("estimate", "--pid", pa, pb, "--json", NULL);
	ck_assert_msg(p.status == 0, "estimate: exit %d: %s", p.status, p.err);
	o = json_tokener_parse(p.out);
	ck_assert_msg(o, "not JSON: %s", p.out);
	proc_free(&p);
	return o;
}

static struct json_object *pid_entry(struct json_object *o, int i)
{
	struct json_object *a;

	ck_assert(json_object_object_get_ex(o, "pids", &a));
	return json_object_array_get_idx(a, (size_t)i);
}

#define DELTA(o0, o1, key) (json_int(o1, key) - json_int(o0, key))

/* Whether read faults map the kernel's shared zero page here (some kernels
 * give each its own page), as dedupctl decides it. */
static bool read_faults_share_zero_page(void)
{
	volatile const uint8_t *p =
	    mmap(NULL, 2 * PG, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint64_t pm[2] = { 0, 0 };
	int fd = open("/proc/self/pagemap", O_RDONLY);

	(void)p[0];
	(void)p[PG];
	ck_assert_int_eq(pread(fd, pm, sizeof(pm), (off_t)((uintptr_t)p / PG * 8)), sizeof(pm));
	close(fd);
	munmap((void *)p, 2 * PG);
	return (pm[0] & ((1ULL << 55) - 1)) == (pm[1] & ((1ULL << 55) - 1));
}

START_TEST(test_estimate_exact)
{
	struct json_object *e0, *e1, *v;
	struct kid k[2];
	/* pages 48..55 are on the zero page, or zero pages of their own */
	int zm;

	H_SKIP_UNLESS_ROOT();
	zm = read_faults_share_zero_page() ? 8 : 0;
	for (unsigned i = 0; i < 2; i++) {
		k[i] = kid_fork(est_child, i);
		ck_assert_int_eq(kid_read(&k[i]), 0);
	}
	e0 = estimate(k[0].pid, k[1].pid);
	for (unsigned i = 0; i < 2; i++) {
		ck_assert_int_eq(write(k[i].to, "f", 1), 1);
		ck_assert_int_eq(kid_read(&k[i]), 0);
	}
	e1 = estimate(k[0].pid, k[1].pid);
	ck_assert(json_object_object_get_ex(e1, "pfn_visible", &v) && json_object_get_boolean(v));
	ck_assert_int_gt(json_int(pid_entry(e0, 1), "pages_already_shared"), 0); /* fork() */
	/* What the region added to each process, and to both. */
	for (int i = 0; i < 2; i++) {
		struct json_object *p0 = pid_entry(e0, i), *p1 = pid_entry(e1, i);

		ck_assert_int_eq(json_int(p1, "pid"), k[i].pid);
		ck_assert_int_eq(DELTA(p0, p1, "pages_present"), 56);
		ck_assert_int_eq(DELTA(p0, p1, "pages_zero_mapped"), zm);
		ck_assert_int_eq(DELTA(p0, p1, "pages_scanned"), 56 - zm);
		ck_assert_int_eq(DELTA(p0, p1, "zero_pages"), 16 - zm);
		ck_assert_int_eq(DELTA(p0, p1, "distinct_pages"), 33);
		/* Reading changed nothing: the frames the two processes shared
		 * after fork() are still shared (process_vm_readv() would have
		 * unshared every one of them). */
		ck_assert_int_eq(DELTA(p0, p1, "pages_already_shared"), 0);
		ck_assert_int_eq(DELTA(p0, p1, "pages_saved_if_merged"), 7);
	}
	ck_assert_int_eq(DELTA(e0, e1, "pages_scanned"), 2 * (56 - zm));
	ck_assert_int_eq(DELTA(e0, e1, "zero_pages"), 2 * (16 - zm));
	ck_assert_int_eq(DELTA(e0, e1, "pages_zero_mapped"), 2 * zm);
	/* Across the two processes, one page outside the region can differ:
	 * a stack page the two children held alike at the first estimate may
	 * differ at the second (each answered the pipe in its own time), which
	 * moves the global counts by one. The per-process figures above and the
	 * within-process sum are exact. */
	ck_assert_int_ge(DELTA(e0, e1, "distinct_pages"), 49);
	ck_assert_int_le(DELTA(e0, e1, "distinct_pages"), 51);
	ck_assert_int_eq(DELTA(e0, e1, "distinct_pages") + DELTA(e0, e1, "pages_saved_if_merged"), 80);
	ck_assert_int_eq(DELTA(e0, e1, "pages_saved_within_pids"), 14);
	ck_assert_int_eq(DELTA(e0, e1, "pages_saved_across_pids"),
			 DELTA(e0, e1, "pages_saved_if_merged") - 14);
	ck_assert_int_eq(DELTA(e0, e1, "bytes_saved_if_merged"),
			 DELTA(e0, e1, "pages_saved_if_merged") * PG);
	ck_assert_int_eq(json_int(e1, "hash_collisions"), 0);
	/* The totals add up. */
	ck_assert_int_eq(json_int(e1, "pages_saved_if_merged"), json_int(e1, "pages_scanned") -
								    json_int(e1, "zero_pages") -
								    json_int(e1, "distinct_pages"));
	ck_assert_int_eq(json_int(e1, "pages_saved_if_merged"),
			 json_int(e1, "pages_saved_within_pids") +
			     json_int(e1, "pages_saved_across_pids"));
	json_object_put(e0);
	json_object_put(e1);
	/* The text form. */
	{
		char pa[16], pb[16];
		struct proc_out p;

		snprintf(pa, sizeof(pa), "%d", (int)k[0].pid);
		snprintf(pb, sizeof(pb), "--pid=%d", (int)k[1].pid);
		p = ctl("estimate", "--pid", pa, pb, NULL);
		ck_assert_int_eq(p.status, 0);
		assert_says(p.out, "merging would save");
		assert_says(p.out, pa);
		proc_free(&p);
	}
	for (unsigned i = 0; i < 2; i++)
		kid_stop(&k[i]);
}
END_TEST

/* --mergeable: three 16-page regions, the same in both children: A
 * registered with dedupd (its scanner paused), B marked MADV_MERGEABLE
 * (kernel KSM), C neither. */
#define MR 16
static void mergeable_child(unsigned idx, int in, int out)
{
	uint8_t *m = mmap(NULL, 3 * MR * PG, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char c;
	int r;

	(void)idx;
	madvise(m, 3 * MR * PG, MADV_NOHUGEPAGE);
	for (unsigned i = 0; i < 3 * MR; i++)
		h_fill(m + (size_t)i * PG, 5 + i / MR, i);
	r = dedup_register(m, MR * PG, NULL);
	if (r == 0 && madvise(m + MR * PG, MR * PG, MADV_MERGEABLE))
		r = -errno;
	/* C must not merge into B's mapping: a guard page between them */
	if (r == 0 && mprotect(m + 2 * MR * PG - PG, PG, PROT_READ))
		r = -errno;
	if (write(out, &r, sizeof(r)) != sizeof(r))
		_exit(2);
	while (read(in, &c, 1) == 1 && c != 'q')
		;
	_exit(0);
}

static struct json_object *estimate_mergeable(const char *sock, pid_t a, pid_t b)
{
	char pa[16], pb[16];
	struct proc_out p;
	struct json_object *o;

	snprintf(pa, sizeof(pa), "%d", (int)a);
	snprintf(pb, sizeof(pb), "%d", (int)b);
	p = ctl("--socket", sock, "estimate", "--mergeable", "--pid", pa, pb, "--json", NULL);
	ck_assert_msg(p.status == 0, "estimate: exit %d: %s", p.status, p.err);
	o = json_tokener_parse(p.out);
	ck_assert_msg(o, "not JSON: %s", p.out);
	proc_free(&p);
	return o;
}

START_TEST(test_estimate_mergeable)
{
	const char *args[] = { "--pages-to-scan", "1", "--sleep-millisecs", "60000", NULL };
	char sock[256], gone[300];
	struct json_object *e, *v;
	struct kid k[2];
	pid_t d;

	H_SKIP_UNLESS_ROOT();
	h_sock_path(sock, sizeof(sock), "estm");
	snprintf(gone, sizeof(gone), "%s.none", sock);
	d = h_daemon_start(sock, args);
	setenv("DEDUPD_SOCKET", sock, 1);
	for (unsigned i = 0; i < 2; i++) {
		k[i] = kid_fork(mergeable_child, i);
		ck_assert_int_eq(kid_read(&k[i]), 0);
	}
	/* A (registered) and B (MADV_MERGEABLE, less its read-only last page):
	 * 31 pages each, the same in both children. */
	e = estimate_mergeable(sock, k[0].pid, k[1].pid);
	ck_assert(json_object_object_get_ex(e, "daemon_reached", &v) && json_object_get_boolean(v));
	ck_assert_int_eq(json_int(e, "registered_ranges"), 2);
	for (int i = 0; i < 2; i++) {
		ck_assert_int_eq(json_int(pid_entry(e, i), "pages_mapped"), 2 * MR - 1);
		ck_assert_int_eq(json_int(pid_entry(e, i), "pages_scanned"), 2 * MR - 1);
		ck_assert_int_eq(json_int(pid_entry(e, i), "pages_saved_if_merged"), 0);
	}
	ck_assert_int_eq(json_int(e, "pages_saved_if_merged"), 2 * MR - 1);
	ck_assert_int_eq(json_int(e, "pages_saved_across_pids"), 2 * MR - 1);
	json_object_put(e);
	/* No daemon on the socket: B only, and it says so. */
	e = estimate_mergeable(gone, k[0].pid, k[1].pid);
	ck_assert(json_object_object_get_ex(e, "daemon_reached", &v) && !json_object_get_boolean(v));
	ck_assert_int_eq(json_int(e, "pages_scanned"), 2 * (MR - 1));
	ck_assert_int_eq(json_int(e, "pages_saved_if_merged"), MR - 1);
	json_object_put(e);
	{
		char pa[16];
		struct proc_out p;

		snprintf(pa, sizeof(pa), "%d", (int)k[0].pid);
		p = ctl("--socket", gone, "estimate", "-m", "--pid", pa, NULL);
		ck_assert_int_eq(p.status, 0);
		assert_says(p.out, "only memory offered for merging: 0 range(s) registered with "
				   "dedupd (no daemon answered");
		proc_free(&p);
	}
	for (unsigned i = 0; i < 2; i++)
		kid_stop(&k[i]);
	h_daemon_stop(d, SIGTERM);
	unsetenv("DEDUPD_SOCKET");
}
END_TEST

/* Without frame numbers (not root): still counts, and says so. */
static void est_sleeper(unsigned idx, int in, int out)
{
	char c;
	int ok = 0;

	prctl(PR_SET_DUMPABLE, 1); /* setuid() cleared it: /proc/PID would stay root's */
	prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY); /* Yama: let a sibling read us */
	if (write(out, &ok, sizeof(ok)) != sizeof(ok))
		_exit(2);
	while (read(in, &c, 1) == 1 && c != 'q')
		;
	_exit(0);
}

START_TEST(test_estimate_errors)
{
	char self[16], nobody_pid[16];
	struct proc_out p;

	H_SKIP_UNLESS_ROOT();
	p = ctl("estimate", "--pid", "99999999999", NULL);
	ck_assert_int_eq(p.status, 2); /* not a pid at all */
	proc_free(&p);
	p = ctl("estimate", "--pid", "4194000", NULL);
	ck_assert_int_eq(p.status, 1);
	assert_says(p.err, "pid 4194000: no such process");
	proc_free(&p);
	p = ctl("estimate", NULL);
	ck_assert_int_eq(p.status, 2);
	assert_says(p.err, "no process given");
	proc_free(&p);
	p = ctl("estimate", "--pid", "12x", NULL);
	ck_assert_int_eq(p.status, 2);
	assert_says(p.err, "'12x' is not a process id");
	proc_free(&p);
	snprintf(self, sizeof(self), "%d", (int)getpid());
	p = ctl("estimate", "--pid", self, self, NULL);
	ck_assert_int_eq(p.status, 2);
	assert_says(p.err, "given twice");
	proc_free(&p);

	/* uid 65534 may not read a root process: exit 1, and why. */
	{
		const char *argv[] = { exe("dedupctl"), "estimate", "--pid", self, NULL };

		p = run_as(argv, NULL, true);
		ck_assert_msg(p.status == 1, "exit %d: %s", p.status, p.err);
		assert_says(p.err, "Permission denied");
		assert_says(p.err, "needs root");
		proc_free(&p);
	}
	/* It may read its own user's process; frame numbers are hidden then. */
	{
		pid_t kid = fork();
		int st;

		ck_assert_int_ge(kid, 0);
		if (kid == 0) {
			struct kid s;
			const char *argv[] = { exe("dedupctl"), "--json",   "estimate",
					       "--pid",		nobody_pid, NULL };

			if (setgroups(0, NULL) < 0 || setresgid(65534, 65534, 65534) < 0 ||
			    setresuid(65534, 65534, 65534) < 0)
				_exit(10);
			s = kid_fork(est_sleeper, 0);
			kid_read(&s);
			snprintf(nobody_pid, sizeof(nobody_pid), "%d", (int)s.pid);
			p = run(argv);
			kid_stop(&s);
			if (p.status != 0)
				_exit(11);
			if (!strstr(p.out, "\"pfn_visible\":false"))
				_exit(12);
			if (!strstr(p.out, "\"pages_scanned\":"))
				_exit(13);
			_exit(0);
		}
		ck_assert_int_eq(waitpid(kid, &st, 0), kid);
		ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
			      "nobody's own estimate: exit %d (10 setuid, 11 dedupctl failed, 12 "
			      "pfn_visible not false, 13 no pages_scanned)",
			      WEXITSTATUS(st));
	}
}
END_TEST

/* ---- dedupctl ------------------------------------------------------------- */

static int count_of(const char *text, const char *words)
{
	int n = 0;

	for (const char *p = text; (p = strstr(p, words)); p += strlen(words))
		n++;
	return n;
}

START_TEST(test_ctl_watch)
{
	char sock[256], gone[300];
	struct proc_out p;
	uint64_t t0;
	pid_t d;

	h_sock_path(sock, sizeof(sock), "ops-watch");
	d = h_daemon_start(sock, quiet);
	t0 = h_now_ms();
	p = ctl("--socket", sock, "--watch", "0.2", "--count", "3", "stats", NULL);
	ck_assert_msg(p.status == 0, "exit %d: %s", p.status, p.err);
	ck_assert_int_eq(count_of(p.out, "Every 0.2s: dedupctl stats"), 3);
	ck_assert_int_eq(count_of(p.out, "\npages_sharing "), 3);
	ck_assert_uint_ge(h_now_ms() - t0, 380);
	ck_assert_uint_lt(h_now_ms() - t0, 3000);
	proc_free(&p);
	/* JSON: one document per line; options after the command. */
	p = ctl("--socket", sock, "stats", "--json", "-w", "0.1", "-n", "2", NULL);
	ck_assert_int_eq(p.status, 0);
	ck_assert_int_eq(count_of(p.out, "\n"), 2);
	ck_assert_int_eq(count_of(p.out, "{\"pages_registered\":"), 2);
	proc_free(&p);
	/* counters show their rate once they move */
	p = ctl("--socket", sock, "--watch=0.2", "--count=2", "status", NULL);
	ck_assert_int_eq(p.status, 0);
	assert_says(p.out, "uptime_sec");
	proc_free(&p);
	/* An unreachable daemon: every update says so; the status is 3. */
	snprintf(gone, sizeof(gone), "%s.gone", sock);
	p = ctl("--socket", gone, "--watch", "0.1", "--count", "2", "stats", NULL);
	ck_assert_int_eq(p.status, 3);
	ck_assert_int_eq(count_of(p.err, "cannot reach dedupd"), 2);
	proc_free(&p);
	/* Bad uses. */
	p = ctl("--socket", sock, "--watch", "0", "stats", NULL);
	ck_assert_int_eq(p.status, 2);
	assert_says(p.err, "--watch");
	proc_free(&p);
	p = ctl("--socket", sock, "--count", "3", "stats", NULL);
	ck_assert_int_eq(p.status, 2);
	assert_says(p.err, "--count goes with --watch");
	proc_free(&p);
	p = ctl("--socket", sock, "--watch", "set", "pages_to_scan=5", NULL);
	ck_assert_int_eq(p.status, 2);
	proc_free(&p);
	p = ctl("--socket", sock, "-w", "0.1", "-n", "zero", "stats", NULL);
	ck_assert_int_eq(p.status, 2);
	proc_free(&p);
	/* SIGINT ends a watch cleanly, with the last status. */
	{
		const char *argv[] = { exe("dedupctl"), "--socket", sock, "--watch",
				       "0.1",		"stats",    NULL };
		pid_t w = fork();
		int st;

		ck_assert_int_ge(w, 0);
		if (w == 0) {
			int null = open("/dev/null", O_WRONLY);

			dup2(null, 1);
			execv(argv[0], (char *const *)argv);
			_exit(127);
		}
		h_sleep_ms(350);
		kill(w, SIGINT);
		ck_assert_int_eq(waitpid(w, &st, 0), w);
		ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %#x", st);
	}
	daemon_stop_clean(d, sock);
}
END_TEST

START_TEST(test_ctl_exit_codes)
{
	char sock[256], gone[300];
	struct proc_out p;
	pid_t d;

	h_sock_path(sock, sizeof(sock), "ops-exit");
	d = h_daemon_start(sock, quiet);
	p = ctl("--socket", sock, "stats", NULL);
	ck_assert_int_eq(p.status, 0);
	proc_free(&p);
	p = ctl("--socket", sock, "set", "pages_to_scan=0", NULL); /* refused by the daemon */
	ck_assert_int_eq(p.status, 1);
	assert_says(p.err, "out of range");
	proc_free(&p);
	p = ctl("--socket", sock, "frobnicate", NULL);
	ck_assert_int_eq(p.status, 2);
	proc_free(&p);
	p = ctl("--socket", sock, "--no-such-option", "stats", NULL);
	ck_assert_int_eq(p.status, 2);
	proc_free(&p);
	snprintf(gone, sizeof(gone), "%s.gone", sock);
	p = ctl("--socket", gone, "stats", NULL);
	ck_assert_int_eq(p.status, 3);
	assert_says(p.err, "No such file or directory (is dedupd running?");
	proc_free(&p);
	/* A stale socket nobody listens on. */
	{
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		int fd = socket(AF_UNIX, SOCK_SEQPACKET, 0);

		ck_assert_uint_lt(strlen(gone), sizeof(sa.sun_path));
		memcpy(sa.sun_path, gone, strlen(gone) + 1);
		ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
		close(fd);
		p = ctl("--socket", gone, "stats", NULL);
		ck_assert_int_eq(p.status, 3);
		assert_says(p.err, "Connection refused");
		proc_free(&p);
		unlink(gone);
	}
	p = ctl("--version", NULL);
	ck_assert_int_eq(p.status, 0);
	assert_says(p.out, "dedupctl 0.1.0");
	proc_free(&p);
	daemon_stop_clean(d, sock);
}
END_TEST

/* A socket the caller may not connect to: exit 3, and what to do. */
START_TEST(test_ctl_socket_permission)
{
	const char *args[] = { "--socket-mode", "0660", "--metrics-listen", "", "--no-bpf", NULL };
	char dir[64], sock[128];
	struct proc_out p;
	pid_t d;

	H_SKIP_UNLESS_ROOT();
	make_tmpdir(dir, sizeof(dir));
	snprintf(sock, sizeof(sock), "%s/dedupd.sock", dir);
	d = h_daemon_start(sock, args);
	{
		const char *argv[] = { exe("dedupctl"), "--socket", sock, "stats", NULL };

		p = run_as(argv, NULL, true);
		ck_assert_msg(p.status == 3, "exit %d: %s", p.status, p.err);
		assert_says(p.err, "cannot reach dedupd at");
		assert_says(p.err, "Permission denied");
		assert_says(p.err, "mode 0660, owner root, group root");
		proc_free(&p);
	}
	p = ctl("--socket", sock, "stats", NULL);
	ck_assert_int_eq(p.status, 0);
	proc_free(&p);
	daemon_stop_clean(d, sock);
	remove_tree(dir);
}
END_TEST

/* Every long option and command of --help is in the man page, and groff
 * finds nothing to warn about in the pages. */
static void help_in_man(const char *prog, const char *man, const char *const *words)
{
	const char *argv[] = { exe(prog), "--help", NULL };
	struct proc_out p = run(argv);
	char *page = read_file(man), *s;

	ck_assert_int_eq(p.status, 0);
	ck_assert_msg(page, "cannot read %s", man);
	for (s = p.out; (s = strstr(s, "--")); s += 2) {
		char opt[64], esc[80];
		size_t n = strspn(s + 2, "abcdefghijklmnopqrstuvwxyz-");

		if (n < 2)
			continue;
		snprintf(opt, sizeof(opt), "%.*s", (int)n, s + 2);
		/* in groff source: \-\-metrics\-listen */
		snprintf(esc, sizeof(esc), "\\-\\-");
		for (char *o = opt; *o; o++) {
			size_t l = strlen(esc);

			if (*o == '-')
				snprintf(esc + l, sizeof(esc) - l, "\\-");
			else
				snprintf(esc + l, sizeof(esc) - l, "%c", *o);
		}
		ck_assert_msg(strstr(page, esc), "%s --help has --%s, %s does not", prog, opt, man);
	}
	for (; words && *words; words++)
		ck_assert_msg(strstr(page, *words), "%s does not mention '%s'", man, *words);
	free(page);
	proc_free(&p);
}

START_TEST(test_man_pages)
{
	static const char *const ctl_words[] = { ".B status",	  ".B stats", ".B regions",
						 ".B state",	  "set",      "estimate",
						 "DEDUPD_SOCKET", ".B 3",     NULL };
	static const char *const d_words[] = {
		"SIGHUP", "SIGTERM", "NOTIFY_SOCKET", "WATCHDOG_USEC", "/metrics", ".B 2", NULL
	};
	static const char *const pages[] = { "conf/dedupd.8", "conf/dedupctl.8",
					     "conf/dedupd.conf.5" };

	help_in_man("dedupctl", "conf/dedupctl.8", ctl_words);
	help_in_man("dedupd", "conf/dedupd.8", d_words);
	for (size_t i = 0; i < sizeof(pages) / sizeof(pages[0]); i++) {
		const char *argv[] = { "groff", "-man", "-ww", "-Tutf8", "-z", pages[i], NULL };
		struct proc_out p = run(argv);

		ck_assert_msg(p.status == 0 && !p.err[0], "groff -ww %s: %d %s", pages[i], p.status,
			      p.err);
		proc_free(&p);
	}
}
END_TEST

/* ---- configuration: bad files and options ----------------------------------- */

START_TEST(test_config_bad_input)
{
	static const struct {
		const char *text, *says;
	} bad[] = {
		{ "[scan]\npages_to_scn = 5\n", ":2: unknown key 'pages_to_scn' in [scan]" },
		{ "[scan]\nsleep_millisecs = 5 minutes\n", ":2: bad value '5 minutes' for "
							   "sleep_millisecs: unknown unit" },
		{ "[reclaim]\ndefault_min_bytes = 12Q\n", ":2: bad value '12Q'" },
		{ "\n[scan]\npages_to_scan = 0\n", ":3: pages_to_scan 0 out of range" },
		{ "[metrics]\nlisten = 127.0.0.1:99999\n", ":2: bad value '127.0.0.1:99999' for "
							   "listen" },
		{ "[nosuch]\n", ":1: unknown section [nosuch]" },
	};
	char dir[64], conf[128], sock[256];
	struct proc_out p;

	make_tmpdir(dir, sizeof(dir));
	snprintf(conf, sizeof(conf), "%s/dedupd.conf", dir);
	h_sock_path(sock, sizeof(sock), "ops-badconf");
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		const char *args[] = { "--config", conf, "--no-bpf", NULL };
		char want[300];

		write_file(conf, bad[i].text);
		p = dedupd_fails(sock, args);
		ck_assert_msg(p.status == 1, "'%s': exit %d", bad[i].text, p.status);
		snprintf(want, sizeof(want), "dedupd: %s%s", conf, bad[i].says);
		assert_says(p.err, want);
		ck_assert_msg(access(sock, F_OK) < 0, "the daemon started on a bad file");
		proc_free(&p);
	}
	/* A missing file named on the command line. */
	{
		const char *args[] = { "--config", "/nonexistent/dedupd.conf", NULL };

		p = dedupd_fails(sock, args);
		ck_assert_int_eq(p.status, 1);
		assert_says(p.err, "/nonexistent/dedupd.conf: cannot open: No such file");
		proc_free(&p);
	}
	/* Bad option arguments and options: bad usage, exit 2. */
	{
		static const char *const opts[][3] = {
			{ "--pages-to-scan", "abc", "--pages-to-scan: bad value 'abc'" },
			{ "--sleep-millisecs", "999999",
			  "--sleep-millisecs: sleep_millisecs 999999 "
			  "out of range" },
			{ "--set", "scan.nope=1", "--set: unknown key" },
			{ "--set", "novalue", "expected KEY=VALUE" },
			{ "--log-level", "loud", "--log-level: bad value 'loud'" },
			{ "--bogus", NULL, "unrecognized option '--bogus'" },
		};

		for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++) {
			const char *args[] = { opts[i][0], opts[i][1], NULL };

			p = dedupd_fails(sock, args);
			ck_assert_msg(p.status == 2, "%s %s: exit %d", opts[i][0], opts[i][1],
				      p.status);
			assert_says(p.err, opts[i][2]);
			proc_free(&p);
		}
	}
	remove_tree(dir);
}
END_TEST

/* ---- systemd ---------------------------------------------------------------- */

START_TEST(test_unit_verify)
{
	char dir[64], unit[128], path[700], sed[PATH_MAX + 64], abs_build[PATH_MAX], man[128],
	    env[200];
	struct proc_out p;

	ck_assert_ptr_nonnull(realpath(h_build(), abs_build));
	make_tmpdir(dir, sizeof(dir));
	snprintf(unit, sizeof(unit), "%s/dedupd.service", dir);
	snprintf(sed, sizeof(sed), "s|@PREFIX@/sbin/dedupd|%s/dedupd|;s|@PREFIX@|/usr/local|g",
		 abs_build);
	{
		const char *argv[] = { "sed", "-e", sed, "conf/dedupd.service", NULL };

		p = run(argv);
		ck_assert_int_eq(p.status, 0);
		write_file(unit, p.out);
		ck_assert_ptr_null(strstr(p.out, "@PREFIX@"));
		proc_free(&p);
	}
	/* Documentation= names man pages: install them where man finds them. */
	snprintf(man, sizeof(man), "%s/man", dir);
	snprintf(path, sizeof(path),
		 "mkdir -p %s/man5 %s/man8 && cp conf/dedupd.conf.5 %s/man5/ && "
		 "cp conf/dedupd.8 conf/dedupctl.8 %s/man8/",
		 man, man, man, man);
	ck_assert_int_eq(system(path), 0);
	snprintf(env, sizeof(env), "%s", man);
	setenv("MANPATH", env, 1);
	{
		const char *argv[] = { "systemd-analyze", "verify", unit, NULL };

		p = run(argv);
		ck_assert_msg(p.status == 0 && !strstr(p.err, "dedupd"),
			      "systemd-analyze verify: exit %d:\n%s%s", p.status, p.out, p.err);
		proc_free(&p);
	}
	unsetenv("MANPATH");
	remove_tree(dir);
}
END_TEST

/* Collects sd_notify datagrams until `want` is among them. */
static bool notify_wait(int fd, char *log, size_t len, const char *want, unsigned timeout_ms)
{
	uint64_t end = h_now_ms() + timeout_ms;

	for (;;) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		char buf[4096];
		ssize_t n;
		char *hit = strstr(log, want);

		if (hit) {
			/* consume up to and including this message */
			memmove(log, hit + strlen(want), strlen(hit + strlen(want)) + 1);
			return true;
		}
		if (h_now_ms() >= end || poll(&pfd, 1, 50) < 0)
			return false;
		if (!(pfd.revents & POLLIN))
			continue;
		n = recv(fd, buf, sizeof(buf) - 1, 0);
		if (n <= 0)
			continue;
		buf[n] = 0;
		if (strlen(log) + (size_t)n + 2 < len) {
			strcat(log, buf);
			strcat(log, "\n");
		}
	}
}

START_TEST(test_sd_notify)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char dir[64], conf[128], sock[256], log[65536] = "", mainpid[64];
	int fd, st;
	pid_t d;

	make_tmpdir(dir, sizeof(dir));
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/notify", dir);
	snprintf(conf, sizeof(conf), "%s/dedupd.conf", dir);
	write_file(conf, "[daemon]\nwatchdog = yes\n");
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	h_sock_path(sock, sizeof(sock), "ops-notify");
	d = fork();
	ck_assert_int_ge(d, 0);
	if (d == 0) {
		char wd_pid[16], logf[300];
		const char *argv[] = { exe("dedupd"),	   "--config", conf,	   "--socket", sock,
				       "--metrics-listen", "",	       "--no-bpf", NULL };

		/* No --foreground: NOTIFY_SOCKET alone keeps it in the foreground. */
		snprintf(wd_pid, sizeof(wd_pid), "%d", (int)getpid());
		snprintf(logf, sizeof(logf), "%s.log", sock);
		setenv("NOTIFY_SOCKET", sa.sun_path, 1);
		setenv("WATCHDOG_USEC", "200000", 1);
		setenv("WATCHDOG_PID", wd_pid, 1);
		if (!freopen(logf, "w", stderr))
			_exit(126);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	snprintf(mainpid, sizeof(mainpid), "MAINPID=%d", (int)d);
	ck_assert_msg(notify_wait(fd, log, sizeof(log), "READY=1", 5000), "no READY=1: %s", log);
	ck_assert_msg(notify_wait(fd, log, sizeof(log), mainpid, 1000), "no %s: %s", mainpid, log);
	ck_assert_msg(notify_wait(fd, log, sizeof(log), "WATCHDOG=1", 1000), "no WATCHDOG=1: %s",
		      log);
	ck_assert_msg(notify_wait(fd, log, sizeof(log), "STATUS=", 1000), "no STATUS=: %s", log);
	/* twice per period: another one within 0.2 s */
	ck_assert_msg(notify_wait(fd, log, sizeof(log), "WATCHDOG=1", 300), "watchdog too slow");
	kill(d, SIGHUP);
	ck_assert_msg(notify_wait(fd, log, sizeof(log), "RELOADING=1", 2000), "no RELOADING=1: %s",
		      log);
	ck_assert_msg(notify_wait(fd, log, sizeof(log), "READY=1", 2000),
		      "no READY=1 after reload: %s", log);
	/* A bad file on reload: the running configuration stays. */
	write_file(conf, "[daemon]\nwatchdog = sometimes\n");
	kill(d, SIGHUP);
	ck_assert(notify_wait(fd, log, sizeof(log), "RELOADING=1", 2000));
	ck_assert(notify_wait(fd, log, sizeof(log), "READY=1", 2000));
	ck_assert(log_says(sock, "keeping the running configuration", 2000));
	ck_assert(notify_wait(fd, log, sizeof(log), "WATCHDOG=1", 1000));
	ck_assert_int_ge(h_stat(sock, "clients"), 0);
	kill(d, SIGTERM);
	ck_assert_msg(notify_wait(fd, log, sizeof(log), "STOPPING=1", 3000), "no STOPPING=1: %s",
		      log);
	ck_assert_int_eq(waitpid(d, &st, 0), d); /* it never forked away */
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %#x", st);
	{
		char *dlog = daemon_log(sock);

		char logf[300];

		ck_assert_msg(dlog && !strstr(dlog, "Sanitizer") && !strstr(dlog, "runtime error"),
			      "sanitizer report in %s.log", sock);
		free(dlog);
		snprintf(logf, sizeof(logf), "%s.log", sock);
		unlink(logf);
	}
	close(fd);
	remove_tree(dir);
}
END_TEST

/* ---- make install ------------------------------------------------------------ */

static char listing[8192];

static int list_one(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
	if ((type == FTW_F || type == FTW_SL) &&
	    strlen(listing) + strlen(path) + 2 < sizeof(listing)) {
		strcat(listing, path);
		strcat(listing, "\n");
	}
	return 0;
}

/* Files (not directories) under root, relative, sorted by nftw's walk. */
static void list_files(const char *root)
{
	char cwd[PATH_MAX];

	listing[0] = 0;
	ck_assert_ptr_nonnull(getcwd(cwd, sizeof(cwd)));
	ck_assert_int_eq(chdir(root), 0);
	nftw(".", list_one, 16, FTW_PHYS);
	ck_assert_int_eq(chdir(cwd), 0);
}

START_TEST(test_make_install)
{
	static const char *const want[] = {
		"./usr/local/sbin/dedupd",
		"./usr/local/bin/dedupctl",
		"./usr/local/lib/libdedup.so.0",
		"./usr/local/lib/libdedup.so",
		"./usr/local/lib/libdedup-preload.so",
		"./usr/local/include/dedup.h",
		"./usr/local/lib/pkgconfig/libdedup.pc",
		"./usr/local/share/man/man8/dedupd.8",
		"./usr/local/share/man/man8/dedupctl.8",
		"./usr/local/share/man/man5/dedupd.conf.5",
		"./etc/dedupd/dedupd.conf",
		"./etc/sysctl.d/99-dedupd.conf",
		"./lib/systemd/system/dedupd.service",
	};
	char dir[64], from[PATH_MAX], dvar[128], bvar[128], fvar[PATH_MAX + 8], path[256];
	struct proc_out p;
	char *unit;
	int n = 0;

	make_tmpdir(dir, sizeof(dir));
	ck_assert_ptr_nonnull(realpath(h_build(), from));
	snprintf(dvar, sizeof(dvar), "DESTDIR=%s/root", dir);
	snprintf(bvar, sizeof(bvar), "BUILD=%s/build", dir); /* leaves $BUILD/.flags alone */
	snprintf(fvar, sizeof(fvar), "FROM=%s", from);
	{
		const char *argv[] = { "make",
				       "-s",
				       "--no-print-directory",
				       "install-files",
				       fvar,
				       bvar,
				       dvar,
				       "NODEPS=1",
				       "PREFIX=/usr/local",
				       NULL };

		p = run(argv);
		ck_assert_msg(p.status == 0, "make install-files: %d %s", p.status, p.err);
		proc_free(&p);
	}
	snprintf(path, sizeof(path), "%s/root", dir);
	list_files(path);
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		char line[200];

		snprintf(line, sizeof(line), "%s\n", want[i]);
		ck_assert_msg(strstr(listing, line), "make install did not install %s; it did:\n%s",
			      want[i], listing);
	}
	for (const char *s = listing; (s = strchr(s, '\n')); s++)
		n++;
	ck_assert_msg(n == (int)(sizeof(want) / sizeof(want[0])), "unexpected files:\n%s", listing);
	snprintf(path, sizeof(path), "%s/root/lib/systemd/system/dedupd.service", dir);
	unit = read_file(path);
	assert_says(unit, "ExecStart=/usr/local/sbin/dedupd --config /etc/dedupd/dedupd.conf");
	ck_assert_ptr_null(strstr(unit, "@PREFIX@"));
	free(unit);

	/* uninstall: everything goes, but a configuration with local changes. */
	snprintf(path, sizeof(path), "%s/root/etc/dedupd/dedupd.conf", dir);
	{
		FILE *f = fopen(path, "a");

		ck_assert_ptr_nonnull(f);
		fputs("[scan]\npages_to_scan = 8192\n", f);
		fclose(f);
	}
	{
		const char *argv[] = {
			"make", "-s",	    "--no-print-directory", "uninstall", bvar,
			dvar,	"NODEPS=1", "PREFIX=/usr/local",    NULL
		};

		p = run(argv);
		ck_assert_msg(p.status == 0, "make uninstall: %d %s", p.status, p.err);
		assert_says(p.out, "it has local changes");
		proc_free(&p);
	}
	snprintf(path, sizeof(path), "%s/root", dir);
	list_files(path);
	ck_assert_str_eq(listing, "./etc/dedupd/dedupd.conf\n");
	remove_tree(dir);
}
END_TEST

/* ---- suite ------------------------------------------------------------------ */

Suite *ops_suite(void)
{
	Suite *s = suite_create("ops");
	TCase *tc;

	tc = tcase_create("metrics");
	tcase_set_timeout(tc, 300); /* may install promtool */
	tcase_add_test(tc, test_metrics_format);
	tcase_add_test(tc, test_metrics_live);
	tcase_add_test(tc, test_metrics_http_errors);
	tcase_add_test(tc, test_metrics_textfile);
	tcase_add_test(tc, test_metrics_bad_listen);
	tcase_add_test(tc, test_metrics_default_busy);
	suite_add_tcase(s, tc);

	tc = tcase_create("estimate");
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_estimate_exact);
	tcase_add_test(tc, test_estimate_errors);
	tcase_add_test(tc, test_estimate_mergeable);
	suite_add_tcase(s, tc);

	tc = tcase_create("ctl");
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_ctl_watch);
	tcase_add_test(tc, test_ctl_exit_codes);
	tcase_add_test(tc, test_ctl_socket_permission);
	tcase_add_test(tc, test_man_pages);
	suite_add_tcase(s, tc);

	tc = tcase_create("config");
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_config_bad_input);
	suite_add_tcase(s, tc);

	tc = tcase_create("systemd");
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_unit_verify);
	tcase_add_test(tc, test_sd_notify);
	suite_add_tcase(s, tc);

	tc = tcase_create("install");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_make_install);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(ops_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
