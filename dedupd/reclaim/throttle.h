/* SPDX-License-Identifier: MIT */
/*
 * Throttling a client (the reclaim action of the low state): the client
 * process is moved into a memory cgroup of its own,
 * <root>/dedupd.throttle/client-PID, whose limit holds it to a target, and
 * moved back when the limit is lifted.
 *
 *  - cgroup v2 (when the memory controller is enabled there): memory.high.
 *    Above it the kernel reclaims from the group and slows the process
 *    down; it is never OOM-killed for it.
 *  - cgroup v1 (the memory hierarchy): memory.limit_in_bytes, the hard
 *    limit, plus memory.soft_limit_in_bytes at the same figure. The kernel
 *    reclaims to stay under it; where it cannot (anonymous memory, no swap)
 *    it would OOM-kill in the group, so the group's OOM killer is disabled
 *    (memory.oom_control): the process waits in its page fault, killable,
 *    until the limit is raised or lifted. A throttle must not kill.
 *
 * Which memory the limit bites on: a process's pages stay charged to the
 * cgroup they were charged in; moving the process moves only its future
 * charges. Cgroup v1 could move existing charges along
 * (memory.move_charge_at_immigrate = 3), and it is set where the kernel still
 * accepts it, but Linux removed charge moving in 6.13 (on 6.18 here writing 3
 * fails with EINVAL; 0 is accepted, with a deprecation warning in the kernel
 * log once per boot). Then the limit holds only memory charged after the
 * move: new allocations, and pages faulted in for the first time. Pages the
 * client already had stay charged to its original cgroup, also after a
 * pageout: the swap entry remembers the cgroup, and swap-in charges it there.
 * Measured on 6.18, v1: a process with 96 MiB resident held at 48 MiB keeps
 * its 96 MiB and the group's usage is 0; those 96 MiB paged out and read back
 * come back charged to the old cgroup; 96 MiB allocated after the move hold
 * at 47.8 MiB in the group with 48.4 MiB swapped. dd_throttle_charges_move()
 * says which case applies.
 * Not used, though it works: process_madvise(MADV_COLLAPSE) re-charges what
 * it collapses to the process's current cgroup (measured: 96 MiB collapsed
 * held at 48 MiB, 49 MiB swapped), but it turns the client's memory into huge
 * pages, fills holes (zero pages dedupd dropped come back) and copies pages
 * shared copy-on-write: the opposite of what dedupd is for.
 *
 * The object owns <root>/dedupd.throttle: one instance per root, one thread
 * (nothing here locks). The original cgroup of each held process is also
 * written to its group as the extended attribute trusted.dedupd.origin, so
 * that the next instance can move the processes a crashed daemon left
 * behind back where they came from.
 *
 * Library code: nothing here logs; errors come back as -errno with one
 * sentence in err that names the file and the reason. err may be NULL when
 * errlen is 0. Needs root (CAP_SYS_ADMIN over the cgroup hierarchy).
 */
#ifndef DD_THROTTLE_H
#define DD_THROTTLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* dd_throttle_hold(): the limit was set higher than asked, see there. */
#define DD_THROTTLE_RAISED 1

/* The name of the group the object owns under its root. */
#define DD_THROTTLE_GROUP "dedupd.throttle"

enum dd_throttle_kind {
	DD_THROTTLE_V1 = 1, /* memory.limit_in_bytes + memory.soft_limit_in_bytes */
	DD_THROTTLE_V2 = 2, /* memory.high */
};

struct dd_throttle;

/*
 * Take over <root>/dedupd.throttle (made if missing). root NULL: cgroup v2
 * if this process's v2 cgroup has the memory controller, at the v2 mount
 * point; else the v1 memory hierarchy's mount point (/sys/fs/cgroup/memory).
 * A root given is a cgroup directory of either kind (v2: with memory in its
 * cgroup.subtree_control).
 *
 * A previous instance that crashed may have left client groups with
 * processes in them: every process found under dedupd.throttle is moved back
 * to the cgroup recorded in its group's trusted.dedupd.origin (or to the
 * hierarchy's root when there is none, or it is gone), and the groups are
 * removed. A crashed daemon must not leave its clients limited forever, and
 * nobody else would lift those limits.
 *
 * Returns the object; err is "" or, when leftovers were cleaned up, a
 * sentence saying what was done and what could not be (worth logging).
 * NULL with errno and err on failure: ENOENT (no memory cgroup hierarchy,
 * or root does not exist), ENOTSUP (root is not a memory cgroup, or v2
 * without the memory controller), ENOMEM, or the errno of a failed mkdir or
 * write (EACCES, EROFS, ...).
 */
struct dd_throttle *dd_throttle_new(const char *root, char *err, size_t errlen);

/* Release every held process (dd_throttle_release()), remove
 * dedupd.throttle, free. NULL-safe. */
void dd_throttle_free(struct dd_throttle *t);

/*
 * Hold pid (the whole process, all its threads) to limit_bytes: make
 * dedupd.throttle/client-PID, record the process's current cgroup in this
 * hierarchy, move the process there and set the limit. Called again for a
 * held pid, it only sets the new limit (up or down).
 *
 * Setting a limit below the group's usage makes the kernel reclaim from the
 * group at once (swap for anonymous memory). v1 refuses (EBUSY) when it
 * cannot get under the limit, e.g. anonymous memory without swap; then the
 * limit is set to the group's usage at that moment instead, so that the
 * group cannot grow, and DD_THROTTLE_RAISED is returned with a sentence in
 * err giving both figures; dd_throttle_limit() has the limit in effect.
 *
 * Returns 0 (err ""), DD_THROTTLE_RAISED, or -errno with err: -EINVAL (pid
 * <= 0 or limit_bytes 0), -ESRCH (no such process), -ENOMEM, -EBUSY (v1:
 * not even the usage could be set as the limit), or the errno of a failed
 * cgroup write. On failure a process held before keeps its previous limit,
 * and a process not held before is back in its cgroup.
 */
int dd_throttle_hold(struct dd_throttle *t, pid_t pid, uint64_t limit_bytes, char *err,
		     size_t errlen);

/*
 * Lift pid's limit, move it back to the cgroup it came from (the hierarchy's
 * root if that cgroup is gone), remove its group. A process that has exited,
 * or that is no longer in its group, is not moved.
 * Returns 0; -ENOENT (pid is not held); -EBUSY (the group could not be
 * removed; the next dd_throttle_new() removes it); or -errno of a failed
 * move, with err. The pid is not held afterwards in every case.
 */
int dd_throttle_release(struct dd_throttle *t, pid_t pid, char *err, size_t errlen);

/*
 * The memory charged to pid's group (v1 memory.usage_in_bytes, v2
 * memory.current): what the limit is measured against.
 * Returns 0; -ENOENT (pid is not held); -errno from reading.
 */
int dd_throttle_usage(struct dd_throttle *t, pid_t pid, uint64_t *usage_bytes);

/* The limit in effect for pid, as the kernel reports it (rounded down to
 * pages). 0; -ENOENT (pid is not held). */
int dd_throttle_limit(struct dd_throttle *t, pid_t pid, uint64_t *limit_bytes);

enum dd_throttle_kind dd_throttle_kind(const struct dd_throttle *t);

/* The root the object works under, e.g. "/sys/fs/cgroup/memory". */
const char *dd_throttle_root(const struct dd_throttle *t);

/* Whether a held process's existing memory moves into its group (v1 with
 * memory.move_charge_at_immigrate, Linux before 6.13), or only memory
 * charged after the move is limited. */
bool dd_throttle_charges_move(const struct dd_throttle *t);

#endif
