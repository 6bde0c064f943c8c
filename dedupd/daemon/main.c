// SPDX-License-Identifier: MIT
/*
 * dedupd: parse the command line, wire the server, run it.
 */
#include "dedupd/daemon/log.h"
#include "dedupd/daemon/server.h"
#include "dedupd/common/proto.h"

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
	"Options:\n"
	"  -f, --foreground           stay in the foreground (always so under systemd)\n"
	"  -s, --socket PATH          control socket (default " DD_DEFAULT_SOCKET ")\n"
	"  -c, --config FILE          configuration file (see dedupd.conf(5))\n"
	"      --socket-mode MODE     octal mode of the socket (default 0666: any user may\n"
	"                             offer its own memory; admin commands need root)\n"
	"      --pages-to-scan N      pages scanned per wake-up (default 4096)\n"
	"      --sleep-millisecs N    pause between wake-ups, ms (default 20)\n"
	"      --merge-batch N        merges per agent round trip, 1..1024 (default 512)\n"
	"      --agent-timeout-ms N   how long to wait for a client's agent (default 5000)\n"
	"      --no-zero-pages        do not zap all-zero pages\n"
	"      --log-level LEVEL      err, warning, info (default) or debug\n"
	"  -h, --help                 show this help\n"
	"  -V, --version              show the version\n"
	"\n"
	"Signals: SIGTERM/SIGINT stop the daemon; every client keeps running with its\n"
	"memory intact (merged pages stay shared until written). SIGHUP reloads the\n"
	"configuration file.\n"
	"\n"
	"Exit status: 0 after a clean shutdown, 1 on a runtime error, 2 on bad usage.\n"
	"See dedupd(8), dedupctl(8).\n";

enum { OPT_MODE = 256, OPT_PTS, OPT_SLEEP, OPT_BATCH, OPT_NOZERO, OPT_LOG, OPT_AGENT };

static int parse_num(const char *opt, const char *v, unsigned long lo, unsigned long hi,
		     unsigned long *out, int base)
{
	char *end;

	errno = 0;
	*out = strtoul(v, &end, base);
	if (errno || !*v || *end || *v == '-' || *out < lo || *out > hi) {
		fprintf(stderr, "dedupd: %s: bad value '%s' (expected %lu..%lu)\n", opt, v, lo, hi);
		return -EINVAL;
	}
	return 0;
}

static int parse_args(int argc, char **argv, struct dd_server_opts *o, bool *fg)
{
	static const struct option opts[] = {
		{ "foreground", no_argument, NULL, 'f' },
		{ "socket", required_argument, NULL, 's' },
		{ "config", required_argument, NULL, 'c' },
		{ "socket-mode", required_argument, NULL, OPT_MODE },
		{ "pages-to-scan", required_argument, NULL, OPT_PTS },
		{ "sleep-millisecs", required_argument, NULL, OPT_SLEEP },
		{ "merge-batch", required_argument, NULL, OPT_BATCH },
		{ "agent-timeout-ms", required_argument, NULL, OPT_AGENT },
		{ "no-zero-pages", no_argument, NULL, OPT_NOZERO },
		{ "log-level", required_argument, NULL, OPT_LOG },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ 0 },
	};
	unsigned long v;
	int c, lvl;

	while ((c = getopt_long(argc, argv, "fs:c:hV", opts, NULL)) != -1) {
		switch (c) {
		case 'f':
			*fg = true;
			break;
		case 's':
			o->socket_path = optarg;
			break;
		case 'c':
			fprintf(stderr, "dedupd: --config: configuration files are not supported "
				"by this build yet\n");
			return -EINVAL;
		case OPT_MODE:
			if (parse_num("--socket-mode", optarg, 0, 0777, &v, 8) < 0)
				return -EINVAL;
			o->socket_mode = (mode_t)v;
			break;
		case OPT_PTS:
			if (parse_num("--pages-to-scan", optarg, 1, 10000000, &v, 10) < 0)
				return -EINVAL;
			o->knobs.pages_to_scan = (uint32_t)v;
			break;
		case OPT_SLEEP:
			if (parse_num("--sleep-millisecs", optarg, 0, 60000, &v, 10) < 0)
				return -EINVAL;
			o->knobs.sleep_millisecs = (uint32_t)v;
			break;
		case OPT_BATCH:
			if (parse_num("--merge-batch", optarg, 1, DD_BATCH_MAX, &v, 10) < 0)
				return -EINVAL;
			o->knobs.merge_batch_pages = (uint32_t)v;
			break;
		case OPT_AGENT:
			if (parse_num("--agent-timeout-ms", optarg, 10, 600000, &v, 10) < 0)
				return -EINVAL;
			o->agent_timeout_ms = (int)v;
			break;
		case OPT_NOZERO:
			o->knobs.zero_pages = false;
			break;
		case OPT_LOG:
			lvl = dd_log_level_parse(optarg);
			if (lvl < 0) {
				fprintf(stderr, "dedupd: --log-level: unknown level '%s' (err, "
					"warning, info, debug)\n", optarg);
				return -EINVAL;
			}
			dd_log_set_level(lvl);
			break;
		case 'h':
			fputs(usage_text, stdout);
			exit(0);
		case 'V':
			puts("dedupd 0.1.0");
			exit(0);
		default:
			fputs("Try 'dedupd --help'.\n", stderr);
			return -EINVAL;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "dedupd: unexpected argument '%s'\nTry 'dedupd --help'.\n",
			argv[optind]);
		return -EINVAL;
	}
	return 0;
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
	struct dd_server_opts o = {
		.socket_path = DD_DEFAULT_SOCKET,
		.socket_mode = 0666,
		.agent_timeout_ms = 5000,
	};
	struct dd_server *srv;
	bool fg = false;
	int r;

	dd_scan_knobs_default(&o.knobs);
	if (parse_args(argc, argv, &o, &fg) < 0)
		return 2;
	if (geteuid() != 0)
		log_warning("not running as root: reading other processes' memory needs "
			    "CAP_SYS_PTRACE and pagemap needs CAP_SYS_ADMIN");
	if (!fg && daemon(0, 1) < 0) {
		log_error("cannot go to the background: %s", strerror(errno));
		return 1;
	}
	raise_fd_limit();
	rcu_register_thread();
	srv = dd_server_new(&o);
	if (!srv)
		return 1;
	r = dd_server_run(srv);
	dd_server_free(srv);
	rcu_unregister_thread();
	log_info("stopped");
	return r < 0 ? 1 : 0;
}
