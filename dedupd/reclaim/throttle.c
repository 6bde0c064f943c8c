// SPDX-License-Identifier: MIT
/*
 * Throttling clients with a memory cgroup each.
 *
 * The object knows its hierarchy by three paths: the root it works under
 * (usually the hierarchy's mount point), the mount point itself with the
 * hierarchy path mounted there (mountinfo's "root" field, "/" unless
 * bind-mounted), which together turn a line of /proc/PID/cgroup into a
 * directory, and its own group <root>/dedupd.throttle. It keeps an array of
 * held processes: pid, the directory of the cgroup the process came from,
 * and the limit in effect. Clients are few (one per throttled process), so
 * lookups are linear.
 *
 * Holding: mkdir client-PID, record the origin (in memory and as the xattr
 * trusted.dedupd.origin, for the crash cleanup), v1: disable the OOM killer
 * in the group, move the process with cgroup.procs (every thread), set the
 * limit. Where v1 charge moving works,
 * the group gets move_charge_at_immigrate = 3 and the limit is set after the
 * move (a limit below the charges to move would make the move fail);
 * otherwise the limit comes first, so nothing the process allocates escapes
 * it. Releasing undoes it in reverse: lift the limit, move the process back
 * if it is still in its group (a dead pid may have been reused by a process
 * that never was ours), rmdir.
 *
 * The v1 EBUSY path: writing a limit below the usage makes the kernel
 * reclaim inside the write, and it fails with EBUSY once reclaim makes no
 * progress (anonymous memory and no swap). The limit is then set to the
 * usage read just before (retried: the usage moves), which stops growth.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "dedupd/reclaim/throttle.h"
#include "dedupd/reclaim/errmsg.h"

#define ORIGIN_XATTR "trusted.dedupd.origin"
#define CLIENT_PREFIX "client-"
#define RAISE_TRIES 4		/* v1: usage-as-limit writes before giving up */
#define RMDIR_TRIES 50		/* a group whose last process is exiting is busy briefly */
#define RMDIR_WAIT_NS 10000000L /* 10 ms between tries: 0.5 s at most */

struct client {
	pid_t pid;
	uint64_t limit_bytes; /* in effect, as read back */
	char *origin;	      /* directory of the cgroup it came from */
};

struct dd_throttle {
	enum dd_throttle_kind kind;
	bool charges_move;
	char *root;	  /* where dedupd.throttle lives */
	char *mount;	  /* the hierarchy's mount point */
	char *mount_root; /* the hierarchy path mounted there, "/" normally */
	char *group;	  /* <root>/dedupd.throttle */
	struct client *clients;
	size_t nclients, cap;
};


/* ---- files ---- */

static int write_str(const char *path, const char *s)
{
	size_t len = strlen(s);
	int fd = open(path, O_WRONLY | O_CLOEXEC), r = 0;
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = write(fd, s, len);
	if (n < 0)
		r = -errno;
	else if ((size_t)n != len)
		r = -EIO;
	close(fd);
	return r;
}

static int read_text(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC), r;
	size_t got = 0;
	ssize_t n;

	if (fd < 0)
		return -errno;
	while (got + 1 < len && (n = read(fd, buf + got, len - 1 - got)) != 0) {
		if (n < 0) {
			if (errno == EINTR)
				continue;
			r = -errno;
			close(fd);
			return r;
		}
		got += (size_t)n;
	}
	buf[got] = '\0';
	close(fd);
	return 0;
}

/* A cgroup figure: a number, or "max" (v2) / the v1 "unlimited" number. */
static int read_u64(const char *path, uint64_t *v)
{
	char buf[64], *end;
	int r = read_text(path, buf, sizeof(buf));

	if (r < 0)
		return r;
	if (!strncmp(buf, "max", 3)) {
		*v = UINT64_MAX;
		return 0;
	}
	errno = 0;
	*v = strtoull(buf, &end, 10);
	return end == buf || errno || (*end && *end != '\n') ? -EINVAL : 0;
}

/* snprintf for paths and messages: cgroup paths stay far below PATH_MAX, a
 * message may be cut short. (Through va_list: no truncation warnings.) */
__attribute__((format(printf, 3, 4))) static void fmt(char *out, size_t len, const char *f, ...)
{
	va_list ap;

	va_start(ap, f);
	vsnprintf(out, len, f, ap);
	va_end(ap);
}

static void path_join(char *out, size_t len, const char *dir, const char *name)
{
	fmt(out, len, "%s/%s", dir, name);
}

static bool has_word(const char *list, const char *word, const char *seps)
{
	size_t wl = strlen(word);

	for (const char *p = list; (p = strstr(p, word)); p += wl)
		if ((p == list || strchr(seps, p[-1])) && (!p[wl] || strchr(seps, p[wl])))
			return true;
	return false;
}

static int move_pid(const char *dir, pid_t pid)
{
	char path[PATH_MAX], s[24];

	path_join(path, sizeof(path), dir, "cgroup.procs");
	fmt(s, sizeof(s), "%d", (int)pid);
	return write_str(path, s);
}

/* rmdir, waiting a little while the group is busy (its last process exiting). */
static int remove_group(const char *dir)
{
	const struct timespec ts = { 0, RMDIR_WAIT_NS };

	for (int i = 0; i < RMDIR_TRIES; i++) {
		if (rmdir(dir) == 0 || errno == ENOENT)
			return 0;
		if (errno != EBUSY)
			return -errno;
		nanosleep(&ts, NULL);
	}
	return -EBUSY;
}

/* ---- where things are ---- */

/* Undo mountinfo's octal escapes (\040 for a space) in place. */
static void unescape(char *s)
{
	char *w = s;

	for (; *s; s++) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' && s[2] <= '7' &&
		    s[3] >= '0' && s[3] <= '7') {
			*w++ = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
			s += 3;
		} else {
			*w++ = *s;
		}
	}
	*w = '\0';
}

/* Is dir inside (or at) mnt? */
static bool under(const char *dir, const char *mnt)
{
	size_t l = strlen(mnt);

	if (l == 1 && mnt[0] == '/')
		return dir[0] == '/';
	return !strncmp(dir, mnt, l) && (dir[l] == '/' || !dir[l]);
}

/*
 * The cgroup mount of this kind that holds dir (the longest), or with dir
 * NULL the first one: v2 any cgroup2, v1 a cgroup mount with "memory" among
 * its super options. 0 with mount point and hierarchy path, -ENOENT.
 */
static int find_mount(enum dd_throttle_kind kind, const char *dir, char *mnt, size_t mntlen,
		      char *hroot, size_t hrootlen)
{
	char line[4096], best[PATH_MAX] = "", best_root[PATH_MAX] = "";
	FILE *f = fopen("/proc/self/mountinfo", "re");

	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		char hr[PATH_MAX], mp[PATH_MAX], fstype[64], opts[1024];
		const char *dash = strstr(line, " - ");

		if (!dash || sscanf(line, "%*s %*s %*s %4095s %4095s", hr, mp) != 2 ||
		    sscanf(dash + 3, "%63s %*s %1023s", fstype, opts) != 2)
			continue;
		if (kind == DD_THROTTLE_V2
			? strcmp(fstype, "cgroup2")
			: strcmp(fstype, "cgroup") || !has_word(opts, "memory", ","))
			continue;
		unescape(hr);
		unescape(mp);
		if (dir ? under(dir, mp) && strlen(mp) > strlen(best) : !best[0]) {
			fmt(best, sizeof(best), "%s", mp);
			fmt(best_root, sizeof(best_root), "%s", hr);
		}
	}
	fclose(f);
	if (!best[0])
		return -ENOENT;
	fmt(mnt, mntlen, "%s", best);
	fmt(hroot, hrootlen, "%s", best_root);
	return 0;
}

/*
 * The path of pid's cgroup in this kind of hierarchy, from /proc/PID/cgroup
 * (v1: the line whose controllers include memory; v2: the "0::" line).
 * 0; -ESRCH (no such process); -ENOENT (no such line).
 */
static int proc_cgroup(pid_t pid, enum dd_throttle_kind kind, char *out, size_t len)
{
	char path[64], line[4096];
	int r = -ENOENT;
	FILE *f;

	if (pid > 0)
		fmt(path, sizeof(path), "/proc/%d/cgroup", (int)pid);
	else
		fmt(path, sizeof(path), "/proc/self/cgroup");
	f = fopen(path, "re");
	if (!f)
		return errno == ENOENT ? -ESRCH : -errno;
	while (r == -ENOENT && fgets(line, sizeof(line), f)) {
		char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;

		if (!c2)
			continue;
		*c2 = '\0';
		if (kind == DD_THROTTLE_V2 ? strcmp(line, "0") || c2 != c1 + 1
					   : !has_word(c1 + 1, "memory", ","))
			continue;
		c2[1 + strcspn(c2 + 1, "\n")] = '\0';
		fmt(out, len, "%s", c2 + 1);
		r = 0;
	}
	fclose(f);
	return r;
}

/* The directory of pid's cgroup in t's hierarchy; the mount point if it is
 * outside what is mounted. 0, -ESRCH, -ENOENT. */
static int cgroup_dir(const struct dd_throttle *t, pid_t pid, char *out, size_t len)
{
	char cg[PATH_MAX];
	size_t l = strlen(t->mount_root);
	int r = proc_cgroup(pid, t->kind, cg, sizeof(cg));

	if (r < 0)
		return r;
	if (!under(cg, t->mount_root)) {
		fmt(out, len, "%s", t->mount);
		return 0;
	}
	if (l == 1)
		l = 0; /* mount_root "/": keep cg's leading slash */
	if (!strcmp(cg + l, "/") || !cg[l])
		fmt(out, len, "%s", t->mount);
	else
		fmt(out, len, "%s%s", t->mount, cg + l);
	return 0;
}

/* ---- detection ---- */

/* The v2 mount point, if this process's v2 cgroup has the memory controller. */
static int detect_v2(char *root, size_t len)
{
	char cg[PATH_MAX], mnt[PATH_MAX], hroot[PATH_MAX], path[PATH_MAX * 2 + 32], ctl[256];

	if (proc_cgroup(0, DD_THROTTLE_V2, cg, sizeof(cg)) < 0 ||
	    find_mount(DD_THROTTLE_V2, NULL, mnt, sizeof(mnt), hroot, sizeof(hroot)) < 0 ||
	    !under(cg, hroot))
		return -ENOENT;
	fmt(path, sizeof(path), "%s%s/cgroup.controllers", mnt,
	    cg + (strlen(hroot) == 1 ? 0 : strlen(hroot)));
	if (read_text(path, ctl, sizeof(ctl)) < 0 || !has_word(ctl, "memory", " \n"))
		return -ENOENT;
	fmt(root, len, "%s", mnt);
	return 0;
}

/* The kind of memory cgroup dir is: v1 has memory.limit_in_bytes everywhere;
 * v2 needs memory in dir's cgroup.subtree_control for groups under it. */
static int root_kind(const char *dir, enum dd_throttle_kind *kind, char *err, size_t errlen)
{
	char path[PATH_MAX], ctl[256];

	path_join(path, sizeof(path), dir, "memory.limit_in_bytes");
	if (access(path, F_OK) == 0) {
		*kind = DD_THROTTLE_V1;
		return 0;
	}
	path_join(path, sizeof(path), dir, "cgroup.subtree_control");
	if (read_text(path, ctl, sizeof(ctl)) == 0) {
		if (has_word(ctl, "memory", " \n")) {
			*kind = DD_THROTTLE_V2;
			return 0;
		}
		dd_set_err(err, errlen,
			"throttle: %s: the memory controller is not enabled in its "
			"cgroup.subtree_control",
			dir);
		return -ENOTSUP;
	}
	dd_set_err(err, errlen, "throttle: %s is not a memory cgroup (neither v1 nor v2)", dir);
	return -ENOTSUP;
}

static int find_root(const char *root, char *out, size_t len, enum dd_throttle_kind *kind,
		     char *err, size_t errlen)
{
	char hroot[PATH_MAX];

	if (root) {
		if (!realpath(root, out)) {
			int e = errno;

			dd_set_err(err, errlen, "throttle: cgroup root %s: %s", root, strerror(e));
			return -e;
		}
		return root_kind(out, kind, err, errlen);
	}
	if (detect_v2(out, len) == 0 && root_kind(out, kind, NULL, 0) == 0 &&
	    *kind == DD_THROTTLE_V2)
		return 0;
	if (find_mount(DD_THROTTLE_V1, NULL, out, len, hroot, sizeof(hroot)) == 0) {
		*kind = DD_THROTTLE_V1;
		return 0;
	}
	dd_set_err(err, errlen,
		"throttle: no memory cgroup: neither a cgroup v2 with the memory controller "
		"nor a v1 memory hierarchy is mounted");
	return -ENOENT;
}

/* ---- limits ---- */

static const char *limit_file(const struct dd_throttle *t)
{
	return t->kind == DD_THROTTLE_V2 ? "memory.high" : "memory.limit_in_bytes";
}

static const char *usage_file(const struct dd_throttle *t)
{
	return t->kind == DD_THROTTLE_V2 ? "memory.current" : "memory.usage_in_bytes";
}

static void client_dir(const struct dd_throttle *t, pid_t pid, char *out, size_t len)
{
	fmt(out, len, "%s/" CLIENT_PREFIX "%d", t->group, (int)pid);
}

/* Write a limit (v1: and the soft limit) into dir; "-1"/"max" lifts it. */
static int write_limit(const struct dd_throttle *t, const char *dir, const char *val)
{
	char path[PATH_MAX];
	int r;

	path_join(path, sizeof(path), dir, limit_file(t));
	r = write_str(path, val);
	if (r < 0 || t->kind == DD_THROTTLE_V2)
		return r;
	path_join(path, sizeof(path), dir, "memory.soft_limit_in_bytes");
	return write_str(path, val);
}

/* v1 EBUSY: the group's usage becomes its limit. */
static int raise_to_usage(const struct dd_throttle *t, const char *dir, uint64_t want, char *err,
			  size_t errlen)
{
	char path[PATH_MAX], val[24];
	uint64_t usage = 0;
	int r = -EBUSY;

	path_join(path, sizeof(path), dir, usage_file(t));
	for (int i = 0; i < RAISE_TRIES && r == -EBUSY; i++) {
		r = read_u64(path, &usage);
		if (r < 0)
			break;
		if (usage < want) /* it fell meanwhile: what was asked may fit now */
			usage = want;
		fmt(val, sizeof(val), "%llu", (unsigned long long)usage);
		r = write_limit(t, dir, val);
	}
	if (r == 0 && usage == want)
		return 0;
	if (r < 0) {
		dd_set_err(err, errlen,
			"throttle: %s: cannot get under %llu bytes, nor set the usage %llu as "
			"the limit: %s",
			dir, (unsigned long long)want, (unsigned long long)usage, strerror(-r));
		return r;
	}
	dd_set_err(err, errlen,
		"throttle: %s: the kernel could not reclaim down to %llu bytes (nothing "
		"more it can reclaim: no swap?); the limit is the usage, %llu bytes, instead",
		dir, (unsigned long long)want, (unsigned long long)usage);
	return DD_THROTTLE_RAISED;
}

/* Set c's limit; 0, DD_THROTTLE_RAISED or -errno with err. */
static int set_limit(const struct dd_throttle *t, struct client *c, uint64_t limit, char *err,
		     size_t errlen)
{
	char dir[PATH_MAX], path[PATH_MAX + 32], val[24];
	int r;

	client_dir(t, c->pid, dir, sizeof(dir));
	fmt(val, sizeof(val), "%llu", (unsigned long long)limit);
	r = write_limit(t, dir, val);
	if (r == -EBUSY && t->kind == DD_THROTTLE_V1)
		r = raise_to_usage(t, dir, limit, err, errlen);
	else if (r < 0)
		dd_set_err(err, errlen, "throttle: %s/%s: cannot set %s: %s", dir, limit_file(t), val,
			strerror(-r));
	if (r < 0)
		return r;
	path_join(path, sizeof(path), dir, limit_file(t));
	if (read_u64(path, &c->limit_bytes) < 0)
		c->limit_bytes = limit;
	return r;
}

/* ---- clients ---- */

static struct client *find_client(struct dd_throttle *t, pid_t pid)
{
	for (size_t i = 0; i < t->nclients; i++)
		if (t->clients[i].pid == pid)
			return &t->clients[i];
	return NULL;
}

static void drop_client(struct dd_throttle *t, struct client *c)
{
	free(c->origin);
	*c = t->clients[--t->nclients];
}

static struct client *add_client(struct dd_throttle *t, pid_t pid, const char *origin)
{
	struct client *c;

	if (t->nclients == t->cap) {
		size_t cap = t->cap ? t->cap * 2 : 8;
		struct client *n = realloc(t->clients, cap * sizeof(*n));

		if (!n)
			return NULL;
		t->clients = n;
		t->cap = cap;
	}
	c = &t->clients[t->nclients];
	c->pid = pid;
	c->limit_bytes = UINT64_MAX;
	c->origin = strdup(origin);
	if (!c->origin)
		return NULL;
	t->nclients++;
	return c;
}

/* Move pid back to origin, or to the hierarchy's root if origin is gone. */
static int move_back(const struct dd_throttle *t, pid_t pid, const char *origin)
{
	int r = origin ? move_pid(origin, pid) : -ENOENT;

	if (r == -ENOENT || r == -ENODEV)
		r = move_pid(t->mount, pid);
	return r == -ESRCH ? 0 : r;
}

/* Is pid (still) in the group dir? */
static bool in_group(const struct dd_throttle *t, pid_t pid, const char *dir)
{
	char now[PATH_MAX];

	return cgroup_dir(t, pid, now, sizeof(now)) == 0 && !strcmp(now, dir);
}

/* mkdir the client group and set it up, before the process goes in. */
static int prepare_group(const struct dd_throttle *t, const char *dir, const char *origin,
			 char *err, size_t errlen)
{
	char path[PATH_MAX];
	int r;

	if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
		r = -errno;
		dd_set_err(err, errlen, "throttle: mkdir %s: %s", dir, strerror(errno));
		return r;
	}
	/* Only for the crash cleanup; a kernel without cgroupfs xattrs falls
	 * back to the hierarchy's root there. */
	(void)setxattr(dir, ORIGIN_XATTR, origin, strlen(origin), 0);
	if (t->kind != DD_THROTTLE_V1)
		return 0;
	/* At a v1 limit with nothing left to reclaim the kernel OOM-kills in the
	 * group. A throttle must not kill the client: with oom_kill_disable it
	 * waits (killable) until the limit is raised or lifted, as under v2's
	 * memory.high. */
	path_join(path, sizeof(path), dir, "memory.oom_control");
	r = write_str(path, "1");
	if (r < 0) {
		dd_set_err(err, errlen, "throttle: %s: cannot disable the OOM killer: %s", path,
			strerror(-r));
		return r;
	}
	if (t->charges_move) {
		path_join(path, sizeof(path), dir, "memory.move_charge_at_immigrate");
		(void)write_str(path, "3"); /* probed in dd_throttle_new() */
	}
	return 0;
}

int dd_throttle_hold(struct dd_throttle *t, pid_t pid, uint64_t limit_bytes, char *err,
		     size_t errlen)
{
	char dir[PATH_MAX], origin[PATH_MAX];
	struct client *c;
	int r;

	dd_set_err(err, errlen, "%s", "");
	if (pid <= 0 || limit_bytes == 0) {
		dd_set_err(err, errlen, "throttle: pid %d, limit %llu: invalid", (int)pid,
			(unsigned long long)limit_bytes);
		return -EINVAL;
	}
	c = find_client(t, pid);
	if (c)
		return set_limit(t, c, limit_bytes, err, errlen);

	r = cgroup_dir(t, pid, origin, sizeof(origin));
	if (r < 0) {
		dd_set_err(err, errlen, "throttle: pid %d: %s", (int)pid,
			r == -ESRCH ? "no such process" : "not in the memory hierarchy");
		return r == -ESRCH ? -ESRCH : -ENOENT;
	}
	client_dir(t, pid, dir, sizeof(dir));
	r = prepare_group(t, dir, origin, err, errlen);
	if (r < 0)
		goto remove_group;
	c = add_client(t, pid, origin);
	if (!c) {
		dd_set_err(err, errlen, "throttle: pid %d: out of memory", (int)pid);
		r = -ENOMEM;
		goto remove_group;
	}
	/* Moving charges into a group below them fails: then the limit comes
	 * after the move. Otherwise before, so that nothing escapes it. */
	if (!t->charges_move && (r = set_limit(t, c, limit_bytes, err, errlen)) < 0)
		goto drop;
	r = move_pid(dir, pid);
	if (r < 0) {
		dd_set_err(err, errlen, "throttle: moving pid %d into %s: %s", (int)pid, dir,
			r == -ESRCH ? "no such process" : strerror(-r));
		goto drop;
	}
	if (t->charges_move && (r = set_limit(t, c, limit_bytes, err, errlen)) < 0)
		goto move_back;
	return r;

move_back:
	move_back(t, pid, c->origin);
drop:
	drop_client(t, c);
remove_group:
	remove_group(dir);
	return r;
}

int dd_throttle_release(struct dd_throttle *t, pid_t pid, char *err, size_t errlen)
{
	char dir[PATH_MAX];
	struct client *c = find_client(t, pid);
	int r = 0, rr;

	dd_set_err(err, errlen, "%s", "");
	if (!c) {
		dd_set_err(err, errlen, "throttle: pid %d is not held", (int)pid);
		return -ENOENT;
	}
	client_dir(t, pid, dir, sizeof(dir));
	/* Lifted first: that wakes the process if it waits at the limit (v1), and
	 * the pages charged to the group stay charged to it, until freed, after
	 * the process has left. */
	(void)write_limit(t, dir, t->kind == DD_THROTTLE_V2 ? "max" : "-1");
	if (in_group(t, pid, dir)) {
		r = move_back(t, pid, c->origin);
		if (r < 0)
			dd_set_err(err, errlen, "throttle: moving pid %d back to %s: %s", (int)pid,
				c->origin, strerror(-r));
	}
	rr = remove_group(dir);
	if (rr < 0 && r == 0) {
		r = rr;
		dd_set_err(err, errlen, "throttle: rmdir %s: %s (it goes at the next start)", dir,
			strerror(-rr));
	}
	drop_client(t, c);
	return r;
}

int dd_throttle_usage(struct dd_throttle *t, pid_t pid, uint64_t *usage_bytes)
{
	char dir[PATH_MAX], path[PATH_MAX + 32];

	if (!find_client(t, pid))
		return -ENOENT;
	client_dir(t, pid, dir, sizeof(dir));
	path_join(path, sizeof(path), dir, usage_file(t));
	return read_u64(path, usage_bytes);
}

int dd_throttle_limit(struct dd_throttle *t, pid_t pid, uint64_t *limit_bytes)
{
	struct client *c = find_client(t, pid);

	if (!c)
		return -ENOENT;
	*limit_bytes = c->limit_bytes;
	return 0;
}

enum dd_throttle_kind dd_throttle_kind(const struct dd_throttle *t)
{
	return t->kind;
}

const char *dd_throttle_root(const struct dd_throttle *t)
{
	return t->root;
}

bool dd_throttle_charges_move(const struct dd_throttle *t)
{
	return t->charges_move;
}

/* ---- creation and the crash cleanup ---- */

struct cleanup {
	unsigned groups, removed, moved, failed;
	char first_failure[256];
};

/* Move every process out of dir, to target or the hierarchy's root. */
static void empty_group(const struct dd_throttle *t, const char *dir, const char *target,
			struct cleanup *cl)
{
	char path[PATH_MAX], pids[4096];
	char *p, *end;

	path_join(path, sizeof(path), dir, "cgroup.procs");
	/* Processes found in a later read were forked meanwhile: read again. */
	for (int pass = 0; pass < 4 && read_text(path, pids, sizeof(pids)) == 0 && pids[0];
	     pass++) {
		for (p = pids; *p; p = end) {
			long pid = strtol(p, &end, 10);
			int r;

			if (end == p)
				break;
			r = move_back(t, (pid_t)pid, target);
			if (r == 0) {
				cl->moved++;
			} else if (!cl->failed++) {
				fmt(cl->first_failure, sizeof(cl->first_failure),
				    "moving pid %ld out of %s: %s", pid, dir, strerror(-r));
			}
		}
	}
}

static void cleanup_client_group(const struct dd_throttle *t, const char *dir, struct cleanup *cl)
{
	char origin[PATH_MAX];
	ssize_t n = getxattr(dir, ORIGIN_XATTR, origin, sizeof(origin) - 1);
	int r;

	cl->groups++;
	if (n > 0)
		origin[n] = '\0';
	(void)write_limit(t, dir, t->kind == DD_THROTTLE_V2 ? "max" : "-1");
	empty_group(t, dir, n > 0 ? origin : NULL, cl);
	r = remove_group(dir);
	if (r == 0)
		cl->removed++;
	else if (!cl->failed++)
		fmt(cl->first_failure, sizeof(cl->first_failure), "rmdir %s: %s", dir,
		    strerror(-r));
}

static void cleanup_leftovers(const struct dd_throttle *t, char *err, size_t errlen)
{
	struct cleanup cl = { 0 };
	struct dirent *de;
	char dir[PATH_MAX];
	DIR *d = opendir(t->group);

	if (!d)
		return;
	while ((de = readdir(d))) {
		if (de->d_type != DT_DIR || de->d_name[0] == '.')
			continue;
		path_join(dir, sizeof(dir), t->group, de->d_name);
		cleanup_client_group(t, dir, &cl);
	}
	closedir(d);
	empty_group(t, t->group, NULL, &cl); /* nothing should be here; be sure */
	if (cl.groups || cl.moved || cl.failed)
		dd_set_err(err, errlen,
			"throttle: cleaned up after a previous instance in %s: %u of %u groups "
			"removed, %u processes moved back%s%s",
			t->group, cl.removed, cl.groups, cl.moved, cl.failed ? "; failed: " : "",
			cl.first_failure);
}

/* Does this kernel still move v1 charges? 6.13+ accepts only 0. */
static bool probe_charge_moving(const struct dd_throttle *t)
{
	char path[PATH_MAX];

	if (t->kind != DD_THROTTLE_V1)
		return false;
	path_join(path, sizeof(path), t->group, "memory.move_charge_at_immigrate");
	if (write_str(path, "3") < 0)
		return false;
	(void)write_str(path, "0");
	return true;
}

static int make_group(struct dd_throttle *t, char *err, size_t errlen)
{
	char path[PATH_MAX];
	int r;

	if (mkdir(t->group, 0755) < 0 && errno != EEXIST) {
		r = -errno;
		dd_set_err(err, errlen, "throttle: mkdir %s: %s", t->group, strerror(errno));
		return r;
	}
	if (t->kind == DD_THROTTLE_V2) {
		path_join(path, sizeof(path), t->group, "cgroup.subtree_control");
		r = write_str(path, "+memory");
		if (r < 0) {
			dd_set_err(err, errlen, "throttle: %s: cannot enable +memory: %s", path,
				strerror(-r));
			return r;
		}
	}
	return 0;
}

struct dd_throttle *dd_throttle_new(const char *root, char *err, size_t errlen)
{
	char dir[PATH_MAX], mnt[PATH_MAX], hroot[PATH_MAX], group[PATH_MAX + 32];
	struct dd_throttle *t;
	enum dd_throttle_kind kind = DD_THROTTLE_V1;
	int r;

	dd_set_err(err, errlen, "%s", "");
	r = find_root(root, dir, sizeof(dir), &kind, err, errlen);
	if (r < 0)
		goto fail;
	r = find_mount(kind, dir, mnt, sizeof(mnt), hroot, sizeof(hroot));
	if (r < 0) {
		dd_set_err(err, errlen, "throttle: %s is not on a %s mount", dir,
			kind == DD_THROTTLE_V2 ? "cgroup2" : "cgroup v1 memory");
		r = -ENOTSUP;
		goto fail;
	}
	path_join(group, sizeof(group), dir, DD_THROTTLE_GROUP);
	t = calloc(1, sizeof(*t));
	if (!t || !(t->root = strdup(dir)) || !(t->mount = strdup(mnt)) ||
	    !(t->mount_root = strdup(hroot)) || !(t->group = strdup(group))) {
		dd_set_err(err, errlen, "throttle: out of memory");
		dd_throttle_free(t);
		errno = ENOMEM;
		return NULL;
	}
	t->kind = kind;
	r = make_group(t, err, errlen);
	if (r < 0) {
		dd_throttle_free(t);
		errno = -r;
		return NULL;
	}
	cleanup_leftovers(t, err, errlen);
	t->charges_move = probe_charge_moving(t);
	return t;

fail:
	errno = -r;
	return NULL;
}

void dd_throttle_free(struct dd_throttle *t)
{
	if (!t)
		return;
	while (t->nclients)
		dd_throttle_release(t, t->clients[0].pid, NULL, 0);
	if (t->group)
		rmdir(t->group);
	free(t->clients);
	free(t->group);
	free(t->mount_root);
	free(t->mount);
	free(t->root);
	free(t);
}
