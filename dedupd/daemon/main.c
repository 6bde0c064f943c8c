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
       OPT_CGROUP, OPT_NOBPF };

#define MAX_OVERRIDES 64

struct args {
	const char *config;
	bool foreground, print;
	const char *overrides[MAX_OVERRIDES + 1]; /* "key=value", NULL-terminated */
	int n;
	char buf[MAX_OVERRIDES][512];
};

static int add_override(struct args *a, const char *key, const char *value)
{
	if (a->n >= MAX_OVERRIDES) {
		fprintf(stderr, "dedupd: too many options\n");
		return -E2BIG;
	}
	if (key)
		snprintf(a->buf[a->n], sizeof(a->buf[0]), "%s=%s", key, value);
	else
		snprintf(a->buf[a->n], sizeof(a->buf[0]), "%s", value);
	a->overrides[a->n] = a->buf[a->n];
	a->overrides[++a->n] = NULL;
	return 0;
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
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ 0 },
	};
	char cwd[256], abs_path[400];
	int c, r = 0;

	while (r == 0 && (c = getopt_long(argc, argv, "c:fs:o:hV", opts, NULL)) != -1) {
		switch (c) {
		case 'c': a->config = optarg; break;
		case 'f': a->foreground = true; break;
		case 's':
			if (optarg[0] != '/' && getcwd(cwd, sizeof(cwd))) {
				/* relative to where dedupd was started, not to / */
				snprintf(abs_path, sizeof(abs_path), "%s/%s", cwd, optarg);
				r = add_override(a, "daemon.socket", abs_path);
			} else {
				r = add_override(a, "daemon.socket", optarg);
			}
			break;
		case 'o':
			if (!strchr(optarg, '=')) {
				fprintf(stderr, "dedupd: --set: expected KEY=VALUE, got '%s'\n", optarg);
				return -EINVAL;
			}
			r = add_override(a, NULL, optarg);
			break;
		case OPT_MODE: r = add_override(a, "daemon.socket_mode", optarg); break;
		case OPT_PTS: r = add_override(a, "scan.pages_to_scan", optarg); break;
		case OPT_SLEEP: r = add_override(a, "scan.sleep_millisecs", optarg); break;
		case OPT_BATCH: r = add_override(a, "scan.merge_batch_pages", optarg); break;
		case OPT_AGENT: r = add_override(a, "daemon.agent_timeout_millisecs", optarg); break;
		case OPT_NOZERO: r = add_override(a, "scan.zero_pages", "no"); break;
		case OPT_LOG: r = add_override(a, "daemon.log_level", optarg); break;
		case OPT_PRINT: a->print = true; break;
		case OPT_CGROUP: r = add_override(a, "pressure.cgroup", optarg); break;
		case OPT_NOBPF: r = add_override(a, "pressure.bpf", "no"); break;
		case 'h': fputs(usage_text, stdout); exit(0);
		case 'V': puts("dedupd 0.1.0"); exit(0);
		default: fputs("Try 'dedupd --help'.\n", stderr); return -EINVAL;
		}
	}
	if (r == 0 && optind < argc) {
		fprintf(stderr, "dedupd: unexpected argument '%s'\nTry 'dedupd --help'.\n",
			argv[optind]);
		return -EINVAL;
	}
	return r;
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
	char err[1024];
	int r;

	if (parse_args(argc, argv, &a) < 0)
		return 2;
	dd_conf_init(&conf);
	r = dd_server_load_config(&conf, a.config, a.overrides, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "dedupd: %s\n", err);
		dd_conf_free(&conf);
		return r == -EINVAL && !a.config ? 1 : (r == -E2BIG ? 2 : 1);
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
				     .overrides = a.overrides };
	srv = dd_server_new(&o);
	if (!srv) {
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
