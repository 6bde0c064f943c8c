// SPDX-License-Identifier: MIT
/*
 * dedupctl: inspect and steer a running dedupd. It sends one ADMIN command on
 * the daemon's socket and renders the JSON answer as a table or passes it on
 * (--json). Exit codes are part of the interface (see usage).
 */
#include "dedupd/common/proto.h"

#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { EXIT_OK = 0, EXIT_DAEMON = 1, EXIT_USAGE = 2, EXIT_UNREACHABLE = 3 };

static const char usage_text[] =
	"Usage: dedupctl [--socket PATH] [--json] COMMAND [ARGS]\n"
	"\n"
	"Inspect and steer a running dedupd.\n"
	"\n"
	"Commands:\n"
	"  stats            counters with KSM's names: pages_shared, pages_sharing,\n"
	"                   pages_unshared, pages_volatile, zero_pages, full_scans, ...\n"
	"                   and bytes_saved_net (saving minus everything dedupd holds)\n"
	"  status           version, pid, socket, scan knobs and counters\n"
	"  regions          one line per registered region: pid, command, pages, merged\n"
	"  state            memory pressure: high, soft, hard or low, how long it has\n"
	"                   held, the inputs behind it (free memory, PSI, reclaim stalls\n"
	"                   from eBPF), the source (bpf+psi or psi), the scan rate, and\n"
	"                   the recent transitions\n"
	"  set KEY=VALUE    change a knob at run time (root): pages_to_scan,\n"
	"                   sleep_millisecs, merge_batch_pages, max_vmas_per_client,\n"
	"                   zero_pages\n"
	"\n"
	"Options:\n"
	"  -s, --socket PATH   daemon socket (default $DEDUPD_SOCKET or " DD_DEFAULT_SOCKET ")\n"
	"  -j, --json          print the daemon's JSON answer\n"
	"  -h, --help          show this help\n"
	"\n"
	"Exit status: 0 success; 1 the daemon refused or failed the request; 2 bad\n"
	"usage; 3 the daemon could not be reached.\n";

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

static void print_value(const char *key, struct json_object *v, int width)
{
	printf("%-*s %s\n", width, key, json_object_get_string(v));
}

static void print_object(struct json_object *o, const char *prefix)
{
	json_object_object_foreach(o, key, val)
	{
		char name[256];

		snprintf(name, sizeof(name), "%s%s", prefix, key);
		if (json_object_is_type(val, json_type_object)) {
			print_object(val, strcat(name, "."));
		} else if (json_object_is_type(val, json_type_array)) {
			for (size_t i = 0; i < json_object_array_length(val); i++) {
				char item[300];

				snprintf(item, sizeof(item), "%s[%zu].", name, i);
				print_object(json_object_array_get_idx(val, i), item);
			}
		} else {
			print_value(name, val, 26);
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

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	const char *sock = getenv("DEDUPD_SOCKET");
	char cmd[4096] = "", *out = NULL;
	struct json_object *o;
	bool json = false;
	int c, r, status = 0;

	if (!sock || !*sock)
		sock = DD_DEFAULT_SOCKET;
	while ((c = getopt_long(argc, argv, "+s:jh", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			sock = optarg;
			break;
		case 'j':
			json = true;
			break;
		case 'h':
			fputs(usage_text, stdout);
			return EXIT_OK;
		default:
			fputs("Try 'dedupctl --help'.\n", stderr);
			return EXIT_USAGE;
		}
	}
	if (optind >= argc) {
		fputs("dedupctl: missing command\nTry 'dedupctl --help'.\n", stderr);
		return EXIT_USAGE;
	}
	/* Options may also follow the command: dedupctl stats --json. */
	for (int i = optind; i < argc; i++) {
		if (!strcmp(argv[i], "--json") || !strcmp(argv[i], "-j")) {
			json = true;
			continue;
		}
		if (strlen(cmd) + strlen(argv[i]) + 2 > sizeof(cmd)) {
			fputs("dedupctl: command too long\n", stderr);
			return EXIT_USAGE;
		}
		if (*cmd)
			strcat(cmd, " ");
		strcat(cmd, argv[i]);
	}
	if (strcmp(argv[optind], "stats") && strcmp(argv[optind], "status") &&
	    strcmp(argv[optind], "regions") && strcmp(argv[optind], "set") &&
	    strcmp(argv[optind], "state")) {
		fprintf(stderr, "dedupctl: unknown command '%s'\nTry 'dedupctl --help'.\n",
			argv[optind]);
		return EXIT_USAGE;
	}
	if (!strcmp(argv[optind], "set") && (argc - optind < 2 || !strchr(argv[optind + 1], '='))) {
		fputs("dedupctl: set: expected KEY=VALUE\n", stderr);
		return EXIT_USAGE;
	}
	r = request(sock, cmd, &out, &status);
	if (r < 0) {
		fprintf(stderr, "dedupctl: cannot reach dedupd at %s: %s\n", sock, strerror(-r));
		return EXIT_UNREACHABLE;
	}
	if (status < 0) {
		fprintf(stderr, "dedupctl: %s\n", *out ? out : strerror(-status));
		free(out);
		return EXIT_DAEMON;
	}
	if (json) {
		puts(out);
	} else {
		o = json_tokener_parse(out);
		if (!o) {
			fprintf(stderr, "dedupctl: the daemon's answer is not JSON\n");
			free(out);
			return EXIT_DAEMON;
		}
		if (json_object_is_type(o, json_type_array))
			print_regions(o);
		else
			print_object(o, "");
		json_object_put(o);
	}
	free(out);
	return EXIT_OK;
}
