/* SPDX-License-Identifier: MIT */
/*
 * Admin requests from dedupctl: a text command in, a RESULT whose text is a
 * JSON object out. Read-only commands are open to every local user; commands
 * that change the daemon need root.
 */
#ifndef DD_ADMIN_H
#define DD_ADMIN_H

#include <stdbool.h>
#include <sys/types.h>
#include <time.h>

#include "dedupd/common/proto.h"
#include "scanner/scanner.h"
#include "conf/conf.h"
#include "dedupd/daemon/pstate.h"
#include "dedupd/daemon/reclaim.h"

struct admin_ctx {
	struct dd_scanner *scanner;
	const char *socket_path;
	time_t started;
	struct dd_conf *conf;      /* the running configuration */
	void (*apply)(void *arg);  /* push conf to the modules after a change */
	void *apply_arg;
	const struct dd_pstate_ctl *pc; /* memory pressure */
	const char *metrics_address;    /* "127.0.0.1:9848", "" if /metrics is off */
	struct dd_reclaim *reclaim;     /* clients' allocations and reclaim actions */
};

/*
 * Answer one ADMIN message on fd. privileged: the peer is root or in
 * admin_group (the server decides from SO_PEERCRED / SO_PEERGROUPS); only
 * they may change dedupd, and with readonly_open = no only they may read.
 * 0, or -errno if the answer could not be sent.
 */
int dd_admin_handle(struct admin_ctx *a, int fd, bool privileged, const struct dd_msg_admin *m);

#endif
