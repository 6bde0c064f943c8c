/* SPDX-License-Identifier: MIT */
/*
 * The agent thread libdedup runs in each client: it performs the two operations
 * only the owner of an address space can do (DESIGN.md §1) — remap a frozen
 * page onto a page of the daemon's store, and zap an all-zero page.
 */
#ifndef DD_AGENT_H
#define DD_AGENT_H

#include <stdbool.h>
#include <stdint.h>

struct dd_agent;

/* Called on the agent thread, once, when the daemon goes away (not after
 * dd_agent_stop()). It must not wait for the agent thread. */
typedef void (*dd_agent_lost_fn)(void);

/* Called on the agent thread for a BALLOON request: hand the size to the
 * balloon thread and return at once, 0 or -ENOTSUP (no handler). It must not
 * block or allocate. */
typedef int (*dd_agent_balloon_fn)(uint64_t bytes);
void dd_agent_set_balloon_hook(dd_agent_balloon_fn fn);

/* Connect the agent channel and start the thread. uffd: the agent's own
 * copy of the client's userfaultfd (or -1), which it owns from now on, also
 * on failure. 0 or -errno. */
int dd_agent_start(const char *sock_path, uint64_t client_id, uint64_t token, int uffd,
		   dd_agent_lost_fn lost, struct dd_agent **out);

/* Stop the thread and close its connection; NULL-safe. */
void dd_agent_stop(struct dd_agent *a);

/* pthread_atfork() prepare, and parent and child: fork() waits while the
 * agent has pages of a remap emptied (a child would keep them empty). */
void dd_agent_fork_prepare(void);
void dd_agent_fork_done(void);

/* After fork(): drop the parent's agent without touching its thread. */
void dd_agent_forget(struct dd_agent *a);

/* false once the daemon has gone away (or a is NULL). */
bool dd_agent_alive(const struct dd_agent *a);

#endif
