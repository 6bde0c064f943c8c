// SPDX-License-Identifier: MIT
/*
 * dedupd: parse the command line, load the configuration, wire the server, run
 * it. Command-line options are applied on top of the configuration file as
 * `section.key=value` overrides (the same validation as the file and as
 * `dedupctl set`), and again after each SIGHUP reload.
 */
#include "dedupd/daemon/log.h"
#include "dedupd/daemon/server.h"
#include "dedupd/common/proto.h"
#include "conf/conf.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#include <urcu.h>

static const char usage_text[] =
	"Usage: dedupd [OPTIONS]\n"
	"\n"
	"Userspace memory-deduplication daemon. Finds identical 4 KiB pages in memory\n"
	"that client processes registered (libdedup's dedup_register(), or any program\n"
	"run under libdedup-preload.so that calls madvise(MADV_MERGEABLE)) and maps one\n"
	"copy-on-write copy into all of them.\n"
	"\n"
	"Options (each overrides the configuration file):\n"
	"  -c, --config FILE          configuration file (default " DD_CONF_DEFAULT_PATH ";\n"
	"                             a missing default file is fine, see dedupd.conf(5))\n"
	"  -f, --foreground           stay in the foreground (implied under systemd,\n"
	"                             i.e. when $NOTIFY_SOCKET is set)\n"
	"  -s, --socket PATH          control socket (default " DD_DEFAULT_SOCKET ")\n"
	"      --socket-mode MODE     octal mode of the socket (default 0660)\n"
	"      --pages-to-scan N      pages scanned per wake-up (default 4096)\n"
	"      --sleep-millisecs N    pause between wake-ups, ms (default 20)\n"
	"      --merge-batch N        merges per agent round trip, 1..1024 (default 512)\n"
	"      --agent-timeout-ms N   how long to wait for a client's agent (default 5000)\n"
	"      --no-zero-pages        do not zap all-zero pages\n"
	"      --log-level LEVEL      err, warning, info (default) or debug\n"
	"      --cgroup PATH          judge memory pressure by this memory cgroup (v1 or\n"
	"                             v2: limit minus usage) instead of the host\n"
	"      --no-bpf               use PSI alone for memory pressure (no eBPF probes)\n"
	"      --metrics-listen ADDR:PORT\n"
	"                             serve Prometheus metrics at http://ADDR:PORT/metrics\n"
	"                             (default 127.0.0.1:9848; \"\" turns it off)\n"
	"  -o, --set KEY=VALUE        set any configuration key (e.g. scan.pages_to_scan=8192)\n"
	"      --print-config         print the effective configuration and exit\n"
	"  -h, --help                 show this help\n"
	"  -V, --version              show the version\n"
	"\n"
	"Signals: SIGTERM/SIGINT stop the daemon; every client keeps running with its\n"
	"memory intact (merged pages stay shared until written). SIGHUP re-reads the\n"
	"configuration file and applies what can change at run time; a bad file keeps\n"
	"the running configuration.\n"
	"\n"
	"Exit status: 0 after a clean shutdown, 1 on a runtime or configuration error,\n"
	"2 on bad usage. See dedupd(8), dedupd.conf(5), dedupctl(8).\n";

enum { OPT_MODE = 256, OPT_PTS, OPT_SLEEP, OPT_BATCH, OPT_NOZERO, OPT_LOG, OPT_AGENT, OPT_PRINT,
       OPT_CGROUP, OPT_NOBPF, OPT_METRICS };

#define MAX_OVERRIDES 64

struct args {
	const char *config;
	bool foreground, print;
	const char *overrides[MAX_OVERRIDES + 1]; /* "key=value", NULL-terminated */
	const char *option[MAX_OVERRIDES];	  /* the option each came from, for messages */
	int n;
	char buf[MAX_OVERRIDES][512];
};

static int add_override(struct args *a, const char *option, const char *key, const char *value)
{
	if (a->n >= MAX_OVERRIDES) {
		fprintf(stderr, "dedupd: too many options\n");
		return -E2BIG;
	}
	if (key)
		snprintf(a->buf[a->n], sizeof(a->buf[0]), "%s=%s", key, value);
	else
		snprintf(a->buf[a->n], sizeof(a->buf[0]), "%s", value);
	a->option[a->n] = option;
	a->overrides[a->n] = a->buf[a->n];
	a->overrides[++a->n] = NULL;
	return 0;
}

/* The command-line options that are configuration keys: option -> key. */
static const struct {
	int val;
	const char *name, *key, *value; /* value NULL: the option's argument */
} keyed[] = {
	{ OPT_MODE, "--socket-mode", "daemon.socket_mode", NULL },
	{ OPT_PTS, "--pages-to-scan", "scan.pages_to_scan", NULL },
	{ OPT_SLEEP, "--sleep-millisecs", "scan.sleep_millisecs", NULL },
	{ OPT_BATCH, "--merge-batch", "scan.merge_batch_pages", NULL },
	{ OPT_AGENT, "--agent-timeout-ms", "daemon.agent_timeout_millisecs", NULL },
	{ OPT_NOZERO, "--no-zero-pages", "scan.zero_pages", "no" },
	{ OPT_LOG, "--log-level", "daemon.log_level", NULL },
	{ OPT_CGROUP, "--cgroup", "pressure.cgroup", NULL },
	{ OPT_NOBPF, "--no-bpf", "pressure.bpf", "no" },
	{ OPT_METRICS, "--metrics-listen", "metrics.listen", NULL },
};

/* An option of keyed[]: 0, -E2BIG, or -ENOENT if c is not one. */
static int add_keyed(struct args *a, int c, const char *arg)
{
	for (size_t i = 0; i < sizeof(keyed) / sizeof(keyed[0]); i++)
		if (keyed[i].val == c)
			return add_override(a, keyed[i].name, keyed[i].key,
					    keyed[i].value ? keyed[i].value : arg);
	return -ENOENT;
}

static int add_socket(struct args *a, const char *path)
{
	char cwd[256], abs_path[400];

	if (path[0] != '/' && getcwd(cwd, sizeof(cwd))) {
		/* relative to where dedupd was started, not to / */
		snprintf(abs_path, sizeof(abs_path), "%s/%s", cwd, path);
		return add_override(a, "--socket", "daemon.socket", abs_path);
	}
	return add_override(a, "--socket", "daemon.socket", path);
}

static int parse_args(int argc, char **argv, struct args *a)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "foreground", no_argument, NULL, 'f' },
		{ "socket", required_argument, NULL, 's' },
		{ "set", required_argument, NULL, 'o' },
		{ "socket-mode", required_argument, NULL, OPT_MODE },
		{ "pages-to-scan", required_argument, NULL, OPT_PTS },
		{ "sleep-millisecs", required_argument, NULL, OPT_SLEEP },
		{ "merge-batch", required_argument, NULL, OPT_BATCH },
		{ "agent-timeout-ms", required_argument, NULL, OPT_AGENT },
		{ "no-zero-pages", no_argument, NULL, OPT_NOZERO },
		{ "log-level", required_argument, NULL, OPT_LOG },
		{ "print-config", no_argument, NULL, OPT_PRINT },
		{ "cgroup", required_argument, NULL, OPT_CGROUP },
		{ "no-bpf", no_argument, NULL, OPT_NOBPF },
		{ "metrics-listen", required_argument, NULL, OPT_METRICS },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ 0 },
	};
	int c, r = 0;

	while (r == 0 && (c = getopt_long(argc, argv, "c:fs:o:hV", opts, NULL)) != -1) {
		switch (c) {
		case 'c': a->config = optarg; break;
		case 'f': a->foreground = true; break;
		case 's': r = add_socket(a, optarg); break;
		case 'o':
			if (!strchr(optarg, '=')) {
				fprintf(stderr, "dedupd: --set: expected KEY=VALUE, got '%s'\n", optarg);
				return -EINVAL;
			}
			r = add_override(a, "--set", NULL, optarg);
			break;
		case OPT_PRINT: a->print = true; break;
		case 'h': fputs(usage_text, stdout); exit(0);
		case 'V': puts("dedupd 0.1.0"); exit(0);
		default:
			r = add_keyed(a, c, optarg);
			if (r == -ENOENT) {
				fputs("Try 'dedupd --help'.\n", stderr);
				return -EINVAL;
			}
		}
	}
	if (r == 0 && optind < argc) {
		fprintf(stderr, "dedupd: unexpected argument '%s'\nTry 'dedupd --help'.\n",
			argv[optind]);
		return -EINVAL;
	}
	return r;
}

/*
 * The file, then the command line over it. A problem in the file is a
 * configuration error (exit 1); a bad option argument is bad usage (exit 2).
 */
static int load_config(struct dd_conf *conf, const struct args *a)
{
	char err[1024];
	int r = dd_conf_load(conf, a->config, err, sizeof(err));

	if (r < 0) {
		fprintf(stderr, "dedupd: %s\n", err);
		return 1;
	}
	for (int i = 0; i < a->n; i++) {
		const char *eq = strchr(a->overrides[i], '=');
		char key[128];

		snprintf(key, sizeof(key), "%.*s", (int)(eq - a->overrides[i]), a->overrides[i]);
		r = dd_conf_set(conf, key, eq + 1, err, sizeof(err));
		if (r < 0) {
			fprintf(stderr, "dedupd: %s: %s\nTry 'dedupd --help'.\n", a->option[i], err);
			return 2;
		}
	}
	return 0;
}

/*
 * Whether metrics.listen was chosen (command line or file) rather than left
 * at the built-in default: loading the file over a value no file can hold
 * tells whether the file sets the key.
 */
static bool metrics_listen_explicit(const struct args *a)
{
	struct dd_conf probe;
	char err[16];
	bool set;

	for (int i = 0; i < a->n; i++)
		if (!strncmp(a->overrides[i], "metrics.listen=", 15) ||
		    !strncmp(a->overrides[i], "listen=", 7))
			return true;
	dd_conf_init(&probe);
	strcpy(probe.metrics.listen, "\x01");
	set = dd_conf_load(&probe, a->config, err, sizeof(err)) == 0 &&
	      strcmp(probe.metrics.listen, "\x01") != 0;
	dd_conf_free(&probe);
	return set;
}

/* Each client holds two connections and a userfaultfd: take the hard limit. */
static void raise_fd_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			log_warning("cannot raise the open-file limit: %s, ignoring", strerror(errno));
	}
}

int main(int argc, char **argv)
{
	static struct args a;
	struct dd_server_opts o;
	struct dd_conf conf;
	struct dd_server *srv;
	int r;

	r = parse_args(argc, argv, &a);
	if (r < 0)
		return 2;
	dd_conf_init(&conf);
	r = load_config(&conf, &a);
	if (r) {
		dd_conf_free(&conf);
		return r;
	}
	if (a.print) {
		dd_conf_dump(&conf, stdout);
		dd_conf_free(&conf);
		return 0;
	}
	dd_log_set_level(conf.daemon.log_level);
	if (geteuid() != 0)
		log_warning("not running as root: reading other processes' memory needs "
			    "CAP_SYS_PTRACE and pagemap needs CAP_SYS_ADMIN");
	if (!a.foreground && !getenv("NOTIFY_SOCKET") && daemon(0, 1) < 0) {
		log_error("cannot go to the background: %s", strerror(errno));
		return 1;
	}
	raise_fd_limit();
	rcu_register_thread();
	o = (struct dd_server_opts){ .conf = &conf, .config_path = a.config,
				     .overrides = a.overrides,
				     .metrics_listen_required = metrics_listen_explicit(&a) };
	srv = dd_server_new(&o);
	if (!srv) {
		rcu_unregister_thread();
		dd_conf_free(&conf);
		return 1;
	}
	r = dd_server_run(srv);
	dd_server_free(srv);
	rcu_unregister_thread();
	dd_conf_free(&conf);
	log_info("stopped");
	return r < 0 ? 1 : 0;
}
