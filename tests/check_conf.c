// SPDX-License-Identifier: MIT
/*
 * conf/: defaults, the shipped file, every knob, every class of error with
 * its file:line, dd_conf_set(), reloadable keys, reload merging, and the
 * dump -> load round trip. Files are written to a fresh temporary directory
 * per test; the shipped conf/dedupd.conf and dedupd.conf.5 are found through
 * $DD_SRCDIR, else relative to this file's path (the Makefile compiles from
 * the top of the tree).
 */
#include "conf/conf.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char tmpdir[64];
static int nfiles;

static void setup(void)
{
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/check_conf.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
	nfiles = 0;
}

static void teardown(void)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	ck_assert_int_eq(system(cmd), 0);
}

/* Write text to a new file in tmpdir; returns its path (static storage, one
 * of a small ring). */
static const char *write_conf(const char *text)
{
	static char paths[8][128];
	char *p = paths[nfiles % 8];
	FILE *f;

	snprintf(p, 128, "%s/f%d.conf", tmpdir, nfiles++);
	f = fopen(p, "w");
	ck_assert_ptr_nonnull(f);
	ck_assert_int_eq(fputs(text, f) >= 0, 1);
	ck_assert_int_eq(fclose(f), 0);
	return p;
}

/* The top of the source tree: $DD_SRCDIR; else the parent of this file's
 * directory as the compiler saw it (relative to where it ran); else two
 * levels above the test binary (build/tests/check_conf). */
static const char *srcdir(void)
{
	static char dir[PATH_MAX];
	char probe[PATH_MAX + 32];
	const char *env = getenv("DD_SRCDIR");
	ssize_t n;

	if (env)
		return env;
	snprintf(dir, sizeof(dir), "%s", __FILE__);
	for (int up = 0; up < 2; up++) {
		char *slash = strrchr(dir, '/');

		if (slash)
			*slash = 0;
		else
			snprintf(dir, sizeof(dir), strcmp(dir, ".") ? "." : "..");
	}
	snprintf(probe, sizeof(probe), "%s/conf/dedupd.conf", dir);
	if (access(probe, R_OK) == 0)
		return dir;
	n = readlink("/proc/self/exe", dir, sizeof(dir) - 8);
	ck_assert_int_gt(n, 0);
	dir[n] = 0;
	*strrchr(dir, '/') = 0;
	strcat(dir, "/../..");
	return dir;
}

static char *slurp(const char *path)
{
	FILE *f = fopen(path, "r");
	char *buf;
	long n;

	ck_assert_msg(f != NULL, "cannot open %s", path);
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	rewind(f);
	buf = malloc((size_t)n + 1);
	ck_assert_ptr_nonnull(buf);
	ck_assert_int_eq(fread(buf, 1, (size_t)n, f), n);
	buf[n] = 0;
	fclose(f);
	return buf;
}

/* ---- defaults --------------------------------------------------------------- */

START_TEST(test_defaults)
{
	struct dd_conf c;

	dd_conf_init(&c);
	ck_assert_str_eq(c.daemon.socket, "/run/dedupd/dedupd.sock");
	ck_assert_uint_eq(c.daemon.socket_mode, 0660);
	ck_assert_str_eq(c.daemon.socket_group, "");
	ck_assert_str_eq(c.daemon.admin_group, "");
	ck_assert(c.daemon.readonly_open);
	ck_assert_int_eq(c.daemon.log_level, DD_CONF_LOG_INFO);
	ck_assert(c.daemon.watchdog);
	ck_assert_uint_eq(c.daemon.agent_timeout_millisecs, 5000);
	ck_assert_uint_eq(c.scan.pages_to_scan, 4096);
	ck_assert_uint_eq(c.scan.sleep_millisecs, 20);
	ck_assert_uint_eq(c.scan.scan_threads, 0);
	ck_assert_uint_eq(c.scan.merge_batch_pages, 512);
	ck_assert_uint_eq(c.scan.max_vmas_per_client, 0);
	ck_assert(c.scan.zero_pages);
	ck_assert_int_eq(c.scan.share_domain, DD_CONF_DOMAIN_UID);
	ck_assert_int_eq(c.scan.thp, DD_CONF_THP_KEEP);
	ck_assert(c.scan.agent_hash);
	ck_assert(c.pressure.bpf);
	ck_assert_str_eq(c.pressure.psi_trigger, "some 150000 1000000");
	ck_assert_str_eq(c.pressure.cgroup, "");
	ck_assert(c.pressure.high_free_percent == 6);
	ck_assert(c.pressure.soft_free_percent == 4);
	ck_assert(c.pressure.hard_free_percent == 2);
	ck_assert(c.pressure.low_free_percent == 1);
	ck_assert_uint_eq(c.pressure.tick_millisecs, 250);
	ck_assert(c.reclaim.tax_rate == 0.75);
	ck_assert_uint_eq(c.reclaim.sample_period_sec, 30);
	ck_assert_uint_eq(c.reclaim.sample_pages, 100);
	ck_assert_uint_eq(c.reclaim.default_shares, 1000);
	ck_assert_uint_eq(c.reclaim.default_min_bytes, 0);
	ck_assert_uint_eq(c.reclaim.default_max_bytes, 0);
	ck_assert(c.reclaim.balloon && c.reclaim.pageout && c.reclaim.throttle);
	ck_assert_str_eq(c.metrics.listen, "127.0.0.1:9848");
	ck_assert_str_eq(c.metrics.textfile, "");
	ck_assert_uint_eq(c.metrics.textfile_interval_sec, 15);
	ck_assert_ptr_null(c.clients);
	ck_assert_uint_eq(c.nclients, 0);
	dd_conf_free(&c);
	dd_conf_free(NULL);
}
END_TEST

START_TEST(test_shipped_file_is_defaults)
{
	struct dd_conf def, c;
	char path[PATH_MAX], err[512];

	snprintf(path, sizeof(path), "%s/conf/dedupd.conf", srcdir());
	dd_conf_init(&def);
	dd_conf_init(&c);
	ck_assert_msg(dd_conf_load(&c, path, err, sizeof(err)) == 0, "%s", err);
	ck_assert(dd_conf_equal(&c, &def));
	dd_conf_free(&c);
}
END_TEST

/*
 * The values the shipped file documents are the real defaults: uncomment
 * every "#key = value" line before the client example and load the result.
 */
START_TEST(test_shipped_file_uncommented_is_defaults)
{
	struct dd_conf def, c;
	char path[PATH_MAX], err[512], *text, *out, *line, *save;
	size_t o = 0;
	int keys = 0;

	snprintf(path, sizeof(path), "%s/conf/dedupd.conf", srcdir());
	text = slurp(path);
	out = calloc(1, strlen(text) + 1);
	ck_assert_ptr_nonnull(out);
	for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		if (!strncmp(line, "#[client.", 9))
			break;
		if (line[0] == '#' && line[1] >= 'a' && line[1] <= 'z' && strstr(line, " = ")) {
			line++;
			keys++;
		}
		o += (size_t)sprintf(out + o, "%s\n", line);
	}
	/* Every main key appears once, uncommented. */
	for (int i = 0; dd_conf_key_at((size_t)i); i++)
		if (strncmp(dd_conf_key_at((size_t)i), "client.", 7))
			keys--;
	ck_assert_int_eq(keys, 0);
	dd_conf_init(&def);
	dd_conf_init(&c);
	ck_assert_msg(dd_conf_load(&c, write_conf(out), err, sizeof(err)) == 0, "%s", err);
	ck_assert(dd_conf_equal(&c, &def));
	free(text);
	free(out);
}
END_TEST

/* dedupd.conf and dedupd.conf.5 document every key. */
START_TEST(test_docs_name_every_key)
{
	static const char *const docs[] = { "conf/dedupd.conf", "conf/dedupd.conf.5" };
	char path[PATH_MAX], want[80];
	const char *key;

	for (size_t d = 0; d < 2; d++) {
		char *text;

		snprintf(path, sizeof(path), "%s/%s", srcdir(), docs[d]);
		text = slurp(path);
		for (size_t i = 0; (key = dd_conf_key_at(i)); i++) {
			const char *name = strrchr(key, '.') + 1;

			if (d == 0)
				snprintf(want, sizeof(want), "#%s = ", name);
			else
				snprintf(want, sizeof(want), ".B %s", name);
			ck_assert_msg(strstr(text, want), "%s does not document %s", docs[d], key);
		}
		free(text);
	}
}
END_TEST

/* ---- every knob -------------------------------------------------------------- */

static const char all_set[] = "# every key away from its default\n"
			      "[daemon]\n"
			      "socket = /run/x/y.sock\n"
			      "socket_mode = 0666\n"
			      "socket_group = dedup\n"
			      "admin_group = 1234\n"
			      "readonly_open = no\n"
			      "log_level = debug\n"
			      "watchdog = off\n"
			      "agent_timeout_millisecs = 2s\n"
			      "\n"
			      "[scan]\n"
			      "  pages_to_scan = 100000   ; indented, inline comment\n"
			      "sleep_millisecs = 0\n"
			      "scan_threads = 3\n"
			      "merge_batch_pages = 1024\n"
			      "max_vmas_per_client = 30000\n"
			      "zero_pages = FALSE\n"
			      "share_domain = client\n"
			      "thp = split\n"
			      "agent_hash = no\n"
			      "[pressure]\n"
			      "bpf = 0\n"
			      "psi_trigger = \"full 200000 2000000\"\n"
			      "cgroup = /sys/fs/cgroup/memory/vms\n"
			      "high_free_percent = 10.5\n"
			      "soft_free_percent = 8\n"
			      "hard_free_percent = 3\n"
			      "low_free_percent = 0.5\n"
			      "tick_millisecs = 1s\n"
			      "[reclaim]\n"
			      "tax_rate = 0\n"
			      "sample_period_sec = 2min\n"
			      "sample_pages = 500\n"
			      "default_shares = 10\n"
			      "default_min_bytes = 512M\n"
			      "default_max_bytes = 2GiB\n"
			      "balloon = off\n"
			      "pageout = no\n"
			      "throttle = false\n"
			      "[metrics]\n"
			      "listen = [::1]:9100\n"
			      "textfile = /var/lib/prometheus/node-exporter/dedupd.prom\n"
			      "textfile_interval_sec = 60\n"
			      "[client.vm1]\n"
			      "match_comm = qemu-system-x86\n"
			      "match_uid = 64055\n"
			      "shares = 2000\n"
			      "min_bytes = 1G\n"
			      "max_bytes = 4G\n"
			      "balloon = qmp\n"
			      "balloon_socket = /run/qemu/vm1.qmp\n"
			      "[client.workers]\n"
			      "match_uid = 1000\n"
			      "balloon = none\n";

static void check_all_set(const struct dd_conf *c)
{
	ck_assert_str_eq(c->daemon.socket, "/run/x/y.sock");
	ck_assert_uint_eq(c->daemon.socket_mode, 0666);
	ck_assert_str_eq(c->daemon.socket_group, "dedup");
	ck_assert_str_eq(c->daemon.admin_group, "1234");
	ck_assert(!c->daemon.readonly_open);
	ck_assert_int_eq(c->daemon.log_level, DD_CONF_LOG_DEBUG);
	ck_assert(!c->daemon.watchdog);
	ck_assert_uint_eq(c->daemon.agent_timeout_millisecs, 2000);
	ck_assert_uint_eq(c->scan.pages_to_scan, 100000);
	ck_assert_uint_eq(c->scan.sleep_millisecs, 0);
	ck_assert_uint_eq(c->scan.scan_threads, 3);
	ck_assert_uint_eq(c->scan.merge_batch_pages, 1024);
	ck_assert_uint_eq(c->scan.max_vmas_per_client, 30000);
	ck_assert(!c->scan.zero_pages);
	ck_assert_int_eq(c->scan.share_domain, DD_CONF_DOMAIN_CLIENT);
	ck_assert_int_eq(c->scan.thp, DD_CONF_THP_SPLIT);
	ck_assert(!c->scan.agent_hash);
	ck_assert(!c->pressure.bpf);
	ck_assert_str_eq(c->pressure.psi_trigger, "full 200000 2000000");
	ck_assert_str_eq(c->pressure.cgroup, "/sys/fs/cgroup/memory/vms");
	ck_assert(c->pressure.high_free_percent == 10.5);
	ck_assert(c->pressure.soft_free_percent == 8);
	ck_assert(c->pressure.hard_free_percent == 3);
	ck_assert(c->pressure.low_free_percent == 0.5);
	ck_assert_uint_eq(c->pressure.tick_millisecs, 1000);
	ck_assert(c->reclaim.tax_rate == 0);
	ck_assert_uint_eq(c->reclaim.sample_period_sec, 120);
	ck_assert_uint_eq(c->reclaim.sample_pages, 500);
	ck_assert_uint_eq(c->reclaim.default_shares, 10);
	ck_assert_uint_eq(c->reclaim.default_min_bytes, 512ull << 20);
	ck_assert_uint_eq(c->reclaim.default_max_bytes, 2ull << 30);
	ck_assert(!c->reclaim.balloon && !c->reclaim.pageout && !c->reclaim.throttle);
	ck_assert_str_eq(c->metrics.listen, "[::1]:9100");
	ck_assert_str_eq(c->metrics.textfile, "/var/lib/prometheus/node-exporter/dedupd.prom");
	ck_assert_uint_eq(c->metrics.textfile_interval_sec, 60);
	ck_assert_uint_eq(c->nclients, 2);
	ck_assert_str_eq(c->clients[0].name, "vm1");
	ck_assert_str_eq(c->clients[0].match_comm, "qemu-system-x86");
	ck_assert_int_eq(c->clients[0].match_uid, 64055);
	ck_assert_uint_eq(c->clients[0].shares, 2000);
	ck_assert_uint_eq(c->clients[0].min_bytes, 1ull << 30);
	ck_assert_uint_eq(c->clients[0].max_bytes, 4ull << 30);
	ck_assert_int_eq(c->clients[0].balloon, DD_CONF_BALLOON_QMP);
	ck_assert_str_eq(c->clients[0].balloon_socket, "/run/qemu/vm1.qmp");
	ck_assert_str_eq(c->clients[1].name, "workers");
	ck_assert_str_eq(c->clients[1].match_comm, "");
	ck_assert_int_eq(c->clients[1].match_uid, 1000);
	ck_assert_uint_eq(c->clients[1].shares, 0);
	ck_assert_uint_eq(c->clients[1].min_bytes, DD_CONF_UNSET);
	ck_assert_int_eq(c->clients[1].balloon, DD_CONF_BALLOON_NONE);
}

START_TEST(test_every_knob)
{
	struct dd_conf c;
	char err[512];

	dd_conf_init(&c);
	ck_assert_msg(dd_conf_load(&c, write_conf(all_set), err, sizeof(err)) == 0, "%s", err);
	check_all_set(&c);
	ck_assert_int_eq(c.clients[0].line, 45);
	ck_assert_int_eq(c.clients[1].line, 53);
	dd_conf_free(&c);
}
END_TEST

/* "scan.pages_to_scan" for "pages_to_scan" */
static const char *full_key(const char *bare)
{
	const char *k;

	for (size_t i = 0; (k = dd_conf_key_at(i)); i++)
		if (!strcmp(strrchr(k, '.') + 1, bare))
			return k;
	ck_abort_msg("no key %s", bare);
	return NULL;
}

START_TEST(test_values)
{
	static const struct {
		const char *key, *value, *want;
	} ok[] = {
		{ "zero_pages", "Yes", "yes" },
		{ "zero_pages", "ON", "yes" },
		{ "zero_pages", "true", "yes" },
		{ "zero_pages", "1", "yes" },
		{ "zero_pages", "No", "no" },
		{ "zero_pages", "off", "no" },
		{ "zero_pages", "False", "no" },
		{ "zero_pages", "0", "no" },
		{ "default_min_bytes", "0", "0" },
		{ "default_min_bytes", "4096", "4K" },
		{ "default_min_bytes", "1000", "1000" },
		{ "default_min_bytes", "7B", "7" },
		{ "default_min_bytes", "3K", "3K" },
		{ "default_min_bytes", "3KiB", "3K" },
		{ "default_min_bytes", "2048M", "2G" },
		{ "default_min_bytes", "1TiB", "1T" },
		{ "default_min_bytes", "4096T", "4096T" },
		{ "default_min_bytes", "5 G", "5G" },
		{ "sleep_millisecs", "2 s", "2000" },
		{ "sleep_millisecs", "250ms", "250" },
		{ "sleep_millisecs", "1min", "60000" },
		{ "sleep_millisecs", "1m", "60000" },
		{ "sample_period_sec", "1h", "3600" },
		{ "sample_period_sec", "5000ms", "5" },
		{ "sample_period_sec", "7s", "7" },
		{ "sample_period_sec", "9sec", "9" },
		{ "socket_mode", "600", "0600" },
		{ "socket_mode", "0777", "0777" },
		{ "socket_mode", "0", "0000" },
		{ "tax_rate", "0.99", "0.99" },
		{ "tax_rate", "1e-1", "0.1" },
		{ "low_free_percent", "0", "0" },
		{ "psi_trigger", "", "\"\"" },
		{ "psi_trigger", "some 500000 500000", NULL },
		{ "listen", "", "\"\"" },
		{ "listen", "0.0.0.0:1", NULL },
		{ "listen", "localhost:65535", NULL },
		{ "listen", "[::]:9848", NULL },
		{ "cgroup", "/sys/fs/cgroup/unified/x", NULL },
		{ "socket_group", "_dedup-users.1", NULL },
		{ "log_level", "err", NULL },
		{ "log_level", "warning", NULL },
		{ "share_domain", "all", NULL },
		{ "share_domain", "salt", NULL },
	};
	struct dd_conf c;
	char err[512], got[256], text[256];

	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		const char *want = ok[i].want ? ok[i].want : ok[i].value;
		const char *full = full_key(ok[i].key);

		dd_conf_init(&c);
		ck_assert_msg(dd_conf_set(&c, ok[i].key, ok[i].value, err, sizeof(err)) == 0,
			      "%s=%s: %s", ok[i].key, ok[i].value, err);
		ck_assert_int_ge(dd_conf_get(&c, ok[i].key, got, sizeof(got)), 0);
		ck_assert_msg(!strcmp(got, want), "%s=%s reads back as %s, not %s", ok[i].key,
			      ok[i].value, got, want);
		/* The same through a file. */
		dd_conf_init(&c);
		snprintf(text, sizeof(text), "[%.*s]\n%s = %s\n", (int)(strchr(full, '.') - full),
			 full, ok[i].key, ok[i].value);
		ck_assert_msg(dd_conf_load(&c, write_conf(text), err, sizeof(err)) == 0, "%s", err);
		ck_assert_int_ge(dd_conf_get(&c, full, got, sizeof(got)), 0);
		ck_assert_msg(!strcmp(got, want), "file: %s=%s reads back as %s, not %s", ok[i].key,
			      ok[i].value, got, want);
	}
}
END_TEST

/* ---- errors ----------------------------------------------------------------------- */

struct bad {
	const char *text;
	int line;	 /* 0: the message has no line */
	const char *msg; /* the whole message after "FILE:LINE: " */
};

static const struct bad bad_files[] = {
	{ "[scan]\npages_to_scan = 1\n[scn]\n", 3,
	  "unknown section [scn] (expected daemon, scan, pressure, reclaim, metrics or "
	  "client.NAME)" },
	{ "[scan]\n[metric]\n", 2, NULL },
	{ "[scan]\n# c\n\npages_to_scn = 4\n", 4,
	  "unknown key 'pages_to_scn' in [scan]; did you mean 'pages_to_scan'?" },
	{ "[scan]\ntax_rate = 0.5\n", 2,
	  "unknown key 'tax_rate' in [scan]; it belongs in [reclaim]" },
	{ "[scan]\nfrobnicate = 1\n", 2, "unknown key 'frobnicate' in [scan]" },
	{ "[client.a]\nmatch_uid = 1\nshare = 4\n", 3,
	  "unknown key 'share' in [client.a]; did you mean 'shares'?" },
	{ "[scan]\npages_to_scan = 12q\n", 2,
	  "bad value '12q' for pages_to_scan: expected an integer" },
	{ "[scan]\npages_to_scan = -1\n", 2,
	  "bad value '-1' for pages_to_scan: expected an integer" },
	{ "[scan]\npages_to_scan = \n", 2, "bad value '' for pages_to_scan: expected an integer" },
	{ "[scan]\npages_to_scan = 1 # no\n", 2,
	  "bad value '1 # no' for pages_to_scan: expected an integer" },
	{ "[scan]\nzero_pages = maybe\n", 2,
	  "bad value 'maybe' for zero_pages: expected yes/no, true/false, on/off or 1/0" },
	{ "[reclaim]\ndefault_min_bytes = 512MB\n", 2,
	  "bad value '512MB' for default_min_bytes: unknown unit 'MB' (expected K, M, G, T, KiB, "
	  "MiB, GiB or TiB)" },
	{ "[reclaim]\ndefault_min_bytes = 1.5G\n", 2,
	  "bad value '1.5G' for default_min_bytes: expected a whole number, optionally with a "
	  "unit (K, M, G, T, KiB, MiB, GiB, TiB)" },
	{ "[client.a]\nmatch_uid = 1\nmax_bytes = 5 GB\n", 3,
	  "bad value '5 GB' for max_bytes: unknown unit 'GB' (expected K, M, G, T, KiB, MiB, GiB "
	  "or TiB)" },
	{ "[scan]\nsleep_millisecs = 0.5s\n", 2,
	  "bad value '0.5s' for sleep_millisecs: expected a whole number, optionally with a unit "
	  "(ms, s, min, h)" },
	{ "[scan]\nsleep_millisecs = 99999999999999999999999ms\n", 2,
	  "sleep_millisecs 99999999999999999999999ms out of range 0..60000" },
	{ "[reclaim]\nsample_period_sec = 1500ms\n", 2,
	  "bad value '1500ms' for sample_period_sec: not a whole number of seconds" },
	{ "[scan]\nsleep_millisecs = 5d\n", 2,
	  "bad value '5d' for sleep_millisecs: unknown unit 'd' (expected ms, s, min or h)" },
	{ "[scan]\nsleep_millisecs = 90000\n", 2, "sleep_millisecs 90000 out of range 0..60000" },
	{ "[scan]\nsleep_millisecs = 2min\n", 2,
	  "sleep_millisecs 2min (120000 milliseconds) out of range 0..60000" },
	{ "[scan]\npages_to_scan = 0\n", 2, "pages_to_scan 0 out of range 1..10000000" },
	{ "[scan]\npages_to_scan = 99999999999999999999999\n", 2,
	  "pages_to_scan 99999999999999999999999 out of range 1..10000000" },
	{ "[reclaim]\ntax_rate = 1\n", 2, "tax_rate 1 out of range 0..0.99" },
	{ "[reclaim]\ntax_rate = nan\n", 2, "bad value 'nan' for tax_rate: expected a number" },
	{ "[reclaim]\ndefault_max_bytes = 5000T\n", 2,
	  "default_max_bytes 5000T out of range 0..4096T" },
	{ "[daemon]\nsocket_mode = 0x1ff\n", 2,
	  "bad value '0x1ff' for socket_mode: expected an octal mode such as 0660" },
	{ "[daemon]\nsocket_mode = 1777\n", 2, "socket_mode 1777 out of range 0..0777" },
	{ "[scan]\nshare_domain = everyone\n", 2,
	  "bad value 'everyone' for share_domain: expected all, uid, client or salt" },
	{ "[daemon]\nlog_level = notice\n", 2,
	  "bad value 'notice' for log_level: expected err, warning, info or debug" },
	{ "[daemon]\nsocket = run/dedupd.sock\n", 2,
	  "bad value 'run/dedupd.sock' for socket: expected an absolute path" },
	{ "[pressure]\npsi_trigger = some 150000\n", 2, NULL },
	{ "[pressure]\npsi_trigger = some 150000 100000\n", 2,
	  "bad value 'some 150000 100000' for psi_trigger: window 100000 out of range "
	  "500000..10000000 microseconds" },
	{ "[pressure]\npsi_trigger = full 2000000 1000000\n", 2,
	  "bad value 'full 2000000 1000000' for psi_trigger: stall 2000000 out of range "
	  "1..1000000 microseconds (the window)" },
	{ "[metrics]\nlisten = 9848\n", 2, NULL },
	{ "[metrics]\nlisten = ::1:9848\n", 2,
	  "bad value '::1:9848' for listen: write an IPv6 address in brackets, e.g. [::1]:9848" },
	{ "[metrics]\nlisten = 127.0.0.1:70000\n", 2, NULL },
	{ "[metrics]\ntextfile = /tmp/dedupd.txt\n", 2, NULL },
	{ "[pressure]\nsoft_free_percent = 7\n", 2,
	  "soft_free_percent 7 must be below high_free_percent 6 (thresholds must decrease: "
	  "high > soft > hard > low)" },
	{ "[pressure]\nhard_free_percent = 1\nlow_free_percent = 0.5\nlow_free_percent = 1\n", 4,
	  "low_free_percent 1 must be below hard_free_percent 1 (thresholds must decrease: "
	  "high > soft > hard > low)" },
	{ "[pressure]\nlow_free_percent = 3\nhigh_free_percent = 2.5\n", 3,
	  "high_free_percent 2.5 must be above soft_free_percent 4 (thresholds must decrease: "
	  "high > soft > hard > low)" },
	{ "[reclaim]\ndefault_max_bytes = 1G\n\ndefault_min_bytes = 2G\n", 4,
	  "default_min_bytes 2G is above default_max_bytes 1G" },
	{ "[scan]\n\n[client.vm1]\nshares = 3\n", 3, "[client.vm1] needs match_comm or match_uid" },
	{ "[client.vm1]\nmatch_comm = qemu\nballoon = firecracker\n", 1,
	  "[client.vm1] balloon = firecracker needs balloon_socket" },
	{ "[client.vm1]\nmatch_comm = qemu\nmin_bytes = 2G\nmax_bytes = 1G\n", 1,
	  "[client.vm1] min_bytes 2G is above max_bytes 1G" },
	{ "[client.vm1]\nmatch_comm = qemu-system-x86_64\n", 2,
	  "bad value 'qemu-system-x86_64' for match_comm: too long (at most 15 characters)" },
	{ "[client.vm1]\nmatch_uid = root\n", 2,
	  "bad value 'root' for match_uid: expected a numeric uid" },
	{ "[client.vm1]\nmatch_uid = 1\nballoon = virtio\n", 3,
	  "bad value 'virtio' for balloon: expected none, callback, qmp, firecracker or "
	  "cloud-hypervisor" },
	{ "[client.vm 1]\n", 1, NULL },
	{ "[client \"vm1\"]\n", 1, "unknown section [client \"vm1\"]: write [client.vm1]" },
	{ "[client.]\n", 1, "bad client name '': expected 1 to 40 letters, digits, '-' or '_'" },
	{ "pages_to_scan = 5\n", 1,
	  "key 'pages_to_scan' outside any section; it belongs in [scan]" },
	{ "[scan]\npages_to_scan\n", 2, "expected 'key = value' or '[section]'" },
	{ "[scan\n", 1, "missing ']' in section header" },
	{ "[scan]\n[ scan ]\n", 2, NULL },
};

static void expect_bad(const struct bad *b)
{
	struct dd_conf c, before;
	char err[512], want[600];
	const char *path = write_conf(b->text);
	int r;

	dd_conf_init(&c);
	ck_assert_int_eq(dd_conf_set(&c, "scan.pages_to_scan", "777", err, sizeof(err)), 0);
	ck_assert_int_eq(dd_conf_copy(&before, &c), 0);
	r = dd_conf_load(&c, path, err, sizeof(err));
	ck_assert_msg(r == -EINVAL, "%s: returned %d, err '%s'", b->text, r, err);
	snprintf(want, sizeof(want), "%s:%d: ", path, b->line);
	ck_assert_msg(!strncmp(err, want, strlen(want)), "'%s' does not start with '%s'", err,
		      want);
	if (b->msg)
		ck_assert_str_eq(err + strlen(want), b->msg);
	/* All or nothing: nothing of the file is kept. */
	ck_assert(dd_conf_equal(&c, &before));
	dd_conf_free(&c);
	dd_conf_free(&before);
}

START_TEST(test_bad_file)
{
	expect_bad(&bad_files[_i]);
}
END_TEST

/* "# <250 characters>\n[metrics]\ntextfile = /aaa...a.prom\n", the last line
 * len characters long. */
static void long_line_conf(char *text, size_t size, int len)
{
	int n = snprintf(text, size, "# %0250d\n[metrics]\ntextfile = /", 0);
	int fill = len - 12 - 5;

	memset(text + n, 'a', (size_t)fill);
	snprintf(text + n + fill, size - (size_t)(n + fill), ".prom\n");
}

START_TEST(test_line_too_long)
{
	char text[512], err[512];
	struct bad b = { text, 3, "line too long (199 characters, at most 198)" };
	struct dd_conf c;

	/* A long comment is fine; a long key line is not. */
	long_line_conf(text, sizeof(text), 199);
	expect_bad(&b);
	long_line_conf(text, sizeof(text), 198);
	dd_conf_init(&c);
	ck_assert_msg(dd_conf_load(&c, write_conf(text), err, sizeof(err)) == 0, "%s", err);
	ck_assert_uint_eq(strlen(c.metrics.textfile), 198 - 11);
}
END_TEST

START_TEST(test_missing_explicit_file)
{
	struct dd_conf c;
	char err[512], path[128], want[256];

	snprintf(path, sizeof(path), "%s/nonexistent.conf", tmpdir);
	dd_conf_init(&c);
	ck_assert_int_eq(dd_conf_load(&c, path, err, sizeof(err)), -ENOENT);
	snprintf(want, sizeof(want), "%s: cannot open: No such file or directory", path);
	ck_assert_str_eq(err, want);
}
END_TEST

START_TEST(test_missing_default_file)
{
	struct dd_conf c, def;
	char err[512] = "untouched";

	if (access(DD_CONF_DEFAULT_PATH, F_OK) == 0) {
		fprintf(stderr, "SKIP %s: %s exists on this host\n", __func__,
			DD_CONF_DEFAULT_PATH);
		return;
	}
	dd_conf_init(&c);
	dd_conf_init(&def);
	ck_assert_int_eq(dd_conf_load(&c, NULL, err, sizeof(err)), 0);
	ck_assert(dd_conf_equal(&c, &def));
}
END_TEST

START_TEST(test_directory)
{
	struct dd_conf c;
	char err[512], want[256];

	dd_conf_init(&c);
	ck_assert_int_eq(dd_conf_load(&c, tmpdir, err, sizeof(err)), -EISDIR);
	snprintf(want, sizeof(want), "%s: is a directory, not a configuration file", tmpdir);
	ck_assert_str_eq(err, want);
}
END_TEST

/* Root reads any file, so as root the load runs in a child that became
 * nobody; the file is root's, mode 0600. */
START_TEST(test_unreadable_file)
{
	const char *path = write_conf("[scan]\n");
	char err[512], want[256];
	struct dd_conf c;
	pid_t pid;
	int st;

	ck_assert_int_eq(chmod(path, 0), 0);
	ck_assert_int_eq(chmod(tmpdir, 0755), 0);
	snprintf(want, sizeof(want), "%s: cannot open: Permission denied", path);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		if (geteuid() == 0 &&
		    (setresgid(65534, 65534, 65534) < 0 || setresuid(65534, 65534, 65534) < 0))
			_exit(3);
		dd_conf_init(&c);
		if (dd_conf_load(&c, path, err, sizeof(err)) != -EACCES)
			_exit(1);
		if (strcmp(err, want)) {
			fprintf(stderr, "got '%s', want '%s'\n", err, want);
			_exit(2);
		}
		_exit(0);
	}
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %d", st);
}
END_TEST

/* ---- loading in layers ------------------------------------------------------------ */

START_TEST(test_layers)
{
	struct dd_conf c;
	char err[512];

	dd_conf_init(&c);
	ck_assert_int_eq(dd_conf_load(&c,
				      write_conf("[scan]\npages_to_scan = 10\n"
						 "sleep_millisecs = 5\n[client.a]\n"
						 "match_uid = 5\nshares = 7\n"),
				      err, sizeof(err)),
			 0);
	ck_assert_int_eq(dd_conf_load(&c,
				      write_conf("[scan]\nsleep_millisecs = 6\n"
						 "sleep_millisecs = 7\n[client.a]\n"
						 "shares = 8\n[client.b]\nmatch_comm = b\n"
						 "[scan]\nzero_pages = no\n"),
				      err, sizeof(err)),
			 0);
	ck_assert_uint_eq(c.scan.pages_to_scan, 10);
	ck_assert_uint_eq(c.scan.sleep_millisecs, 7); /* the last assignment wins */
	ck_assert(!c.scan.zero_pages);		      /* a section may be reopened */
	ck_assert_uint_eq(c.nclients, 2);
	ck_assert_int_eq(c.clients[0].match_uid, 5);
	ck_assert_uint_eq(c.clients[0].shares, 8);
	ck_assert_str_eq(c.clients[1].match_comm, "b");
	dd_conf_free(&c);
}
END_TEST

/* ---- dd_conf_set ------------------------------------------------------------------- */

START_TEST(test_set)
{
	struct dd_conf c, before;
	char err[512];

	dd_conf_init(&c);
	ck_assert_int_eq(dd_conf_load(&c, write_conf(all_set), err, sizeof(err)), 0);
	ck_assert_int_eq(dd_conf_set(&c, "pages_to_scan", "5", err, sizeof(err)), 0);
	ck_assert_uint_eq(c.scan.pages_to_scan, 5);
	ck_assert_int_eq(dd_conf_set(&c, "scan.pages_to_scan", " 6 ", err, sizeof(err)), 0);
	ck_assert_uint_eq(c.scan.pages_to_scan, 6);
	ck_assert_int_eq(dd_conf_set(&c, "reclaim.balloon", "yes", err, sizeof(err)), 0);
	ck_assert(c.reclaim.balloon);
	ck_assert_int_eq(
	    dd_conf_set(&c, "client.vm1.balloon", "cloud-hypervisor", err, sizeof(err)), 0);
	ck_assert_int_eq(c.clients[0].balloon, DD_CONF_BALLOON_CLOUD_HYPERVISOR);
	ck_assert_int_eq(dd_conf_set(&c, "client.vm1.shares", "3", err, sizeof(err)), 0);
	ck_assert_uint_eq(c.clients[0].shares, 3);
	ck_assert_int_eq(dd_conf_set(&c, "psi_trigger", "\"some 1 500000\"", err, sizeof(err)), 0);
	ck_assert_str_eq(c.pressure.psi_trigger, "some 1 500000");
	ck_assert_int_eq(dd_conf_set(&c, "metrics.textfile", "", err, sizeof(err)), 0);
	ck_assert_str_eq(c.metrics.textfile, "");
	ck_assert_int_eq(dd_conf_set(&c, "socket", "/run/other.sock", err, sizeof(err)), 0);
	ck_assert_str_eq(c.daemon.socket, "/run/other.sock");

	ck_assert_int_eq(dd_conf_copy(&before, &c), 0);
#define SET_FAILS(k, v, r, m)                                                                      \
	do {                                                                                       \
		ck_assert_int_eq(dd_conf_set(&c, k, v, err, sizeof(err)), r);                      \
		ck_assert_str_eq(err, m);                                                          \
		ck_assert(dd_conf_equal(&c, &before));                                             \
	} while (0)
	SET_FAILS("pages_to_scn", "1", -ENOENT,
		  "unknown key 'pages_to_scn'; did you mean 'pages_to_scan'?");
	SET_FAILS("scan.tax_rate", "1", -ENOENT,
		  "unknown key 'tax_rate' in [scan]; it belongs in [reclaim]");
	SET_FAILS("scna.pages_to_scan", "1", -ENOENT,
		  "unknown section [scna] in key 'scna.pages_to_scan'");
	SET_FAILS("client.vm9.shares", "1", -ENOENT,
		  "no client 'vm9': add a [client.vm9] section to the configuration file and "
		  "reload");
	SET_FAILS("client.vm1.sharez", "1", -ENOENT,
		  "unknown key 'sharez' in [client.vm1]; did you mean 'shares'?");
	SET_FAILS("client.shares", "1", -ENOENT,
		  "bad key 'client.shares': expected client.NAME.KEY");
	SET_FAILS("pages_to_scan", "12q", -EINVAL,
		  "bad value '12q' for pages_to_scan: expected an integer");
	SET_FAILS("sleep_millisecs", "90000", -EINVAL,
		  "sleep_millisecs 90000 out of range 0..60000");
	SET_FAILS("zero_pages", "2", -EINVAL,
		  "bad value '2' for zero_pages: expected yes/no, true/false, on/off or 1/0");
	SET_FAILS("default_max_bytes", "1K", -EINVAL,
		  "default_min_bytes 512M is above default_max_bytes 1K");
	SET_FAILS("high_free_percent", "8", -EINVAL,
		  "high_free_percent 8 must be above soft_free_percent 8 (thresholds must "
		  "decrease: high > soft > hard > low)");
	SET_FAILS("hard_free_percent", "9", -EINVAL,
		  "hard_free_percent 9 must be below soft_free_percent 8 (thresholds must "
		  "decrease: high > soft > hard > low)");
	SET_FAILS("client.vm1.balloon_socket", "", -EINVAL,
		  "[client.vm1] balloon = cloud-hypervisor needs balloon_socket");
	SET_FAILS("client.vm1.match_comm", "a;b", -EINVAL,
		  "bad value 'a;b' for match_comm: control characters and ';' are not allowed");
	SET_FAILS("socket", "/run/tab\there", -EINVAL,
		  "bad value '/run/tab\there' for socket: control characters and ';' are not "
		  "allowed");
#undef SET_FAILS
	/* Moving all four thresholds down works in the right order. */
	ck_assert_int_eq(dd_conf_set(&c, "low_free_percent", "0.1", err, sizeof(err)), 0);
	ck_assert_int_eq(dd_conf_set(&c, "hard_free_percent", "0.2", err, sizeof(err)), 0);
	ck_assert_int_eq(dd_conf_set(&c, "soft_free_percent", "0.3", err, sizeof(err)), 0);
	ck_assert_int_eq(dd_conf_set(&c, "high_free_percent", "0.4", err, sizeof(err)), 0);
	dd_conf_free(&c);
	dd_conf_free(&before);
}
END_TEST

START_TEST(test_get)
{
	struct dd_conf c;
	char err[512], buf[64];

	dd_conf_init(&c);
	ck_assert_int_eq(dd_conf_load(&c, write_conf(all_set), err, sizeof(err)), 0);
	ck_assert_int_eq(dd_conf_get(&c, "scan.pages_to_scan", buf, sizeof(buf)), 6);
	ck_assert_str_eq(buf, "100000");
	ck_assert_int_eq(dd_conf_get(&c, "client.vm1.max_bytes", buf, sizeof(buf)), 2);
	ck_assert_str_eq(buf, "4G");
	ck_assert_int_eq(dd_conf_get(&c, "client.nope.max_bytes", buf, sizeof(buf)), -ENOENT);
	ck_assert_int_eq(dd_conf_get(&c, "nope", buf, sizeof(buf)), -ENOENT);
	ck_assert_int_eq(dd_conf_get(&c, "textfile", buf, 8), -ENOSPC);
	dd_conf_free(&c);
}
END_TEST

/* ---- reload ------------------------------------------------------------------------ */

START_TEST(test_reloadable)
{
	static const char *const yes[] = {
		"pages_to_scan",     "scan.sleep_millisecs",
		"merge_batch_pages", "max_vmas_per_client",
		"zero_pages",	     "thp",
		"agent_hash",	     "high_free_percent", "pressure.low_free_percent",
		"tick_millisecs",    "tax_rate",
		"sample_period_sec", "sample_pages",
		"default_shares",    "default_min_bytes",
		"default_max_bytes", "reclaim.balloon",
		"pageout",	     "throttle",
		"metrics.textfile",  "textfile_interval_sec",
		"log_level",	     "admin_group",
		"readonly_open",     "agent_timeout_millisecs",
		"client.vm1.shares", "client.anything.balloon_socket",
	};
	static const char *const no[] = {
		"socket",
		"daemon.socket",
		"socket_mode",
		"socket_group",
		"watchdog",
		"scan_threads",
		"share_domain",
		"bpf",
		"psi_trigger",
		"cgroup",
		"listen",
		"metrics.listen",
		"nonsense",
		"scan.nonsense",
		"client.vm1.nonsense",
		"",
	};

	for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
		ck_assert_msg(dd_conf_key_reloadable(yes[i]), "%s should be reloadable", yes[i]);
	for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
		ck_assert_msg(!dd_conf_key_reloadable(no[i]), "%s should not be reloadable", no[i]);
}
END_TEST

struct seen {
	char keys[32][64];
	bool applied[32];
	int n;
};

static void on_change(const char *key, const char *old_value, const char *new_value, bool applied,
		      void *arg)
{
	struct seen *s = arg;

	ck_assert_int_lt(s->n, 32);
	ck_assert_str_ne(old_value, new_value);
	snprintf(s->keys[s->n], sizeof(s->keys[0]), "%s", key);
	s->applied[s->n++] = applied;
}

START_TEST(test_apply_reload)
{
	struct dd_conf cur, next;
	struct seen seen = { .n = 0 };
	char err[512];

	dd_conf_init(&cur);
	ck_assert_int_eq(dd_conf_load(&cur,
				      write_conf("[client.a]\nmatch_uid = 1\n"
						 "[client.gone]\nmatch_uid = 2\n"),
				      err, sizeof(err)),
			 0);
	dd_conf_init(&next);
	ck_assert_int_eq(dd_conf_load(&next,
				      write_conf("[daemon]\nsocket = /run/new.sock\n"
						 "[scan]\npages_to_scan = 9\n"
						 "[client.a]\nmatch_uid = 1\nshares = 4\n"
						 "[client.new]\nmatch_comm = x\n"),
				      err, sizeof(err)),
			 0);
	ck_assert_int_eq(dd_conf_apply_reload(&cur, &next, on_change, &seen), 1);
	ck_assert_str_eq(cur.daemon.socket, DD_CONF_DEFAULT_SOCKET);
	ck_assert_uint_eq(cur.scan.pages_to_scan, 9);
	ck_assert_uint_eq(cur.nclients, 2);
	ck_assert_str_eq(cur.clients[1].name, "new");
	ck_assert_ptr_ne(cur.clients, next.clients);
	ck_assert_int_eq(seen.n, 5);
	ck_assert_str_eq(seen.keys[0], "daemon.socket");
	ck_assert(!seen.applied[0]);
	ck_assert_str_eq(seen.keys[1], "scan.pages_to_scan");
	ck_assert(seen.applied[1]);
	ck_assert_str_eq(seen.keys[2], "client.a.shares");
	ck_assert_str_eq(seen.keys[3], "client.gone");
	ck_assert_str_eq(seen.keys[4], "client.new");
	/* Applying it again changes nothing but what cannot change. */
	seen.n = 0;
	ck_assert_int_eq(dd_conf_apply_reload(&cur, &next, NULL, NULL), 1);
	dd_conf_free(&next);
	ck_assert_str_eq(cur.clients[0].name, "a");
	dd_conf_free(&cur);
}
END_TEST

/* ---- dump -------------------------------------------------------------------------- */

static void round_trip(const struct dd_conf *c)
{
	struct dd_conf back;
	char path[128], err[512];
	FILE *f;

	snprintf(path, sizeof(path), "%s/dump%d.conf", tmpdir, nfiles++);
	f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	ck_assert_int_eq(dd_conf_dump(c, f), 0);
	fclose(f);
	dd_conf_init(&back);
	ck_assert_msg(dd_conf_load(&back, path, err, sizeof(err)) == 0, "%s", err);
	ck_assert(dd_conf_equal(c, &back));
	dd_conf_free(&back);
}

START_TEST(test_dump_round_trip)
{
	struct dd_conf c;
	char err[512];

	dd_conf_init(&c);
	round_trip(&c);
	ck_assert_int_eq(dd_conf_load(&c, write_conf(all_set), err, sizeof(err)), 0);
	round_trip(&c);
	/* Values whose text is not the obvious one. */
	ck_assert_int_eq(dd_conf_set(&c, "tax_rate", "0.1", err, sizeof(err)), 0);
	ck_assert_int_eq(
	    dd_conf_set(&c, "low_free_percent", "0.30000000000000004", err, sizeof(err)), 0);
	ck_assert_int_eq(dd_conf_set(&c, "default_min_bytes", "1025", err, sizeof(err)), 0);
	ck_assert_int_eq(dd_conf_set(&c, "socket_mode", "7", err, sizeof(err)), 0);
	ck_assert_int_eq(dd_conf_set(&c, "client.vm1.match_uid", "0", err, sizeof(err)), 0);
	round_trip(&c);
	/* Blanks at the ends, quotes at both ends: quoted in the dump, so they
	 * read back as they were (found by fuzzing). */
	ck_assert_int_eq(dd_conf_set(&c, "client.vm1.match_comm", " a ", err, sizeof(err)), 0);
	round_trip(&c);
	ck_assert_int_eq(dd_conf_set(&c, "client.vm1.match_comm", "\"\"x\"\"", err, sizeof(err)),
			 0);
	round_trip(&c);
	dd_conf_free(&c);
}
END_TEST

START_TEST(test_dump_text)
{
	struct dd_conf c;
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	dd_conf_init(&c);
	ck_assert_int_eq(dd_conf_dump(&c, f), 0);
	fclose(f);
	ck_assert_ptr_nonnull(
	    strstr(buf, "\n[scan]\npages_to_scan = 4096\nsleep_millisecs = 20\n"));
	ck_assert_ptr_nonnull(strstr(buf, "\nsocket_mode = 0660\n"));
	ck_assert_ptr_nonnull(strstr(buf, "\ntax_rate = 0.75\n"));
	ck_assert_ptr_nonnull(strstr(buf, "\ncgroup = \"\"\n"));
	ck_assert_ptr_null(strstr(buf, "[client."));
	free(buf);
}
END_TEST

/* ---- clients ------------------------------------------------------------------------ */

START_TEST(test_match_client)
{
	struct dd_conf c;
	char err[512];
	const struct dd_conf_client *cl;

	dd_conf_init(&c);
	ck_assert_int_eq(dd_conf_load(&c, write_conf(all_set), err, sizeof(err)), 0);
	cl = dd_conf_match_client(&c, "qemu-system-x86", 64055);
	ck_assert_ptr_eq(cl, &c.clients[0]);
	ck_assert_ptr_eq(dd_conf_match_client(&c, "qemu-system-x86", 1000), &c.clients[1]);
	ck_assert_ptr_null(dd_conf_match_client(&c, "qemu-system-x86", 1));
	ck_assert_ptr_null(dd_conf_match_client(&c, NULL, 64055));
	ck_assert_uint_eq(dd_conf_client_shares(&c, cl), 2000);
	ck_assert_uint_eq(dd_conf_client_min_bytes(&c, cl), 1ull << 30);
	ck_assert_uint_eq(dd_conf_client_max_bytes(&c, cl), 4ull << 30);
	cl = &c.clients[1];
	ck_assert_uint_eq(dd_conf_client_shares(&c, cl), 10);
	ck_assert_uint_eq(dd_conf_client_min_bytes(&c, cl), 512ull << 20);
	ck_assert_uint_eq(dd_conf_client_max_bytes(&c, cl), 2ull << 30);
	ck_assert_uint_eq(dd_conf_client_shares(&c, NULL), 10);
	ck_assert_str_eq(dd_conf_balloon_name(DD_CONF_BALLOON_FIRECRACKER), "firecracker");
	ck_assert_str_eq(dd_conf_share_domain_name(DD_CONF_DOMAIN_SALT), "salt");
	ck_assert_str_eq(dd_conf_log_level_name(DD_CONF_LOG_WARNING), "warning");
	dd_conf_free(&c);
}
END_TEST

START_TEST(test_key_list)
{
	size_t n = 0;
	const char *k;

	for (; (k = dd_conf_key_at(n)); n++) {
		ck_assert_ptr_nonnull(strchr(k, '.'));
		for (size_t j = 0; j < n; j++)
			ck_assert_str_ne(dd_conf_key_at(j), k);
		/* Every main key resolves in both spellings. */
		if (strncmp(k, "client.", 7)) {
			struct dd_conf c;
			char a[256], b[256];

			dd_conf_init(&c);
			ck_assert_int_ge(dd_conf_get(&c, k, a, sizeof(a)), 0);
			ck_assert_int_ge(dd_conf_get(&c, strchr(k, '.') + 1, b, sizeof(b)), 0);
			ck_assert_str_eq(a, b);
		}
	}
	ck_assert_uint_eq(n, 39 + 7);
}
END_TEST

static Suite *conf_suite(void)
{
	Suite *s = suite_create("conf");
	TCase *tc = tcase_create("conf");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_defaults);
	tcase_add_test(tc, test_shipped_file_is_defaults);
	tcase_add_test(tc, test_shipped_file_uncommented_is_defaults);
	tcase_add_test(tc, test_docs_name_every_key);
	tcase_add_test(tc, test_every_knob);
	tcase_add_test(tc, test_values);
	tcase_add_loop_test(tc, test_bad_file, 0, (int)(sizeof(bad_files) / sizeof(bad_files[0])));
	tcase_add_test(tc, test_line_too_long);
	tcase_add_test(tc, test_missing_explicit_file);
	tcase_add_test(tc, test_missing_default_file);
	tcase_add_test(tc, test_directory);
	tcase_add_test(tc, test_unreadable_file);
	tcase_add_test(tc, test_layers);
	tcase_add_test(tc, test_set);
	tcase_add_test(tc, test_get);
	tcase_add_test(tc, test_reloadable);
	tcase_add_test(tc, test_apply_reload);
	tcase_add_test(tc, test_dump_round_trip);
	tcase_add_test(tc, test_dump_text);
	tcase_add_test(tc, test_match_client);
	tcase_add_test(tc, test_key_list);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(conf_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
