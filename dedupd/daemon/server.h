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

struct dd_server_opts {
	const char *socket_path;
	mode_t socket_mode;
	int agent_timeout_ms;
	struct dd_scan_knobs knobs;
};

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
