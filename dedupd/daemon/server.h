/* SPDX-License-Identifier: MIT */
/*
 * The daemon proper: the control socket shared by clients and dedupctl, the
 * epoll loop, client bookkeeping and the agent channels the scanner uses.
 */
#ifndef DD_SERVER_H
#define DD_SERVER_H

#include <stdbool.h>
#include <sys/types.h>

#include "scanner/scanner.h"
#include "conf/conf.h"

struct dd_server_opts {
	struct dd_conf *conf;          /* the running configuration; the server updates it */
	const char *config_path;       /* NULL: the default path (may be missing) */
	const char *const *overrides;  /* "key=value" from the command line, NULL-terminated */
	bool metrics_listen_required;  /* metrics.listen was set explicitly: failing to bind
					* it is fatal (the built-in default only warns) */
};

/*
 * Load the configuration file (path, or the default if NULL) into c and apply
 * the overrides. 0, or -errno with a message naming the file, line or option.
 */
int dd_server_load_config(struct dd_conf *c, const char *path, const char *const *overrides,
			  char *err, size_t errlen);

/* The scan knobs a configuration asks for. */
void dd_server_knobs(const struct dd_conf *c, struct dd_scan_knobs *k);

struct dd_server;

/* Bind the socket (refusing if another dedupd answers on it) and start the
 * scanner. NULL on failure, after logging why. */
struct dd_server *dd_server_new(const struct dd_server_opts *o);

/* Run the epoll loop until SIGTERM or SIGINT. 0, or -errno. */
int dd_server_run(struct dd_server *srv);

/* Stop the scanner, unfreeze everything, close every connection, remove the
 * socket. Clients keep running with their data. NULL-safe. */
void dd_server_free(struct dd_server *srv);

#endif
