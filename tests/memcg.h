/* SPDX-License-Identifier: MIT */
/*
 * Test memory cgroups (v1 memory controller): make one with a limit, move a
 * process into it, read its usage, remove it with whatever is left inside.
 * Header-only, for the integration tests that need real memory pressure.
 * Names are <prefix>.<runner pid>.<tag> under MEMCG_ROOT so that a teardown
 * finds what a failed test left.
 */
#ifndef DD_MEMCG_H
#define DD_MEMCG_H

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MEMCG_ROOT "/sys/fs/cgroup/memory"

static inline bool memcg_available(void)
{
	return access(MEMCG_ROOT "/memory.limit_in_bytes", F_OK) == 0;
}

static inline void memcg_dir(char *buf, size_t len, const char *prefix, pid_t runner,
			     const char *tag)
{
	snprintf(buf, len, MEMCG_ROOT "/%s.%d.%s", prefix, (int)runner, tag);
}

static inline bool memcg_read(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return false;
	n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return false;
	buf[n] = 0;
	return true;
}

static inline int memcg_write(const char *dir, const char *file, const char *val)
{
	char path[512];
	int fd, r = 0;

	snprintf(path, sizeof(path), "%s/%s", dir, file);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (write(fd, val, strlen(val)) < 0)
		r = -errno;
	close(fd);
	return r;
}

/* Kill whatever is left in the cgroup and remove it; quiet if there is none. */
static inline void memcg_remove(const char *dir)
{
	char path[512], pids[4096];

	snprintf(path, sizeof(path), "%s/cgroup.procs", dir);
	for (int tries = 0; tries < 100 && memcg_read(path, pids, sizeof(pids)); tries++) {
		if (!pids[0] && rmdir(dir) == 0)
			return;
		for (char *l = pids; *l;) {
			kill((pid_t)atoi(l), SIGKILL);
			l = strchr(l, '\n') ? strchr(l, '\n') + 1 : l + strlen(l);
		}
		usleep(20000);
	}
}

/* A fresh cgroup with a memory limit. 0 or -errno. */
static inline int memcg_make(const char *dir, uint64_t limit)
{
	char val[32];

	memcg_remove(dir);
	if (mkdir(dir, 0755) < 0)
		return -errno;
	snprintf(val, sizeof(val), "%llu\n", (unsigned long long)limit);
	return memcg_write(dir, "memory.limit_in_bytes", val);
}

/* Move pid (0: the caller) into the cgroup. 0 or -errno. */
static inline int memcg_join(const char *dir, pid_t pid)
{
	char val[32];

	snprintf(val, sizeof(val), "%d\n", (int)(pid ? pid : getpid()));
	return memcg_write(dir, "cgroup.procs", val);
}

static inline uint64_t memcg_u64(const char *dir, const char *file)
{
	char path[512], buf[64];

	snprintf(path, sizeof(path), "%s/%s", dir, file);
	return memcg_read(path, buf, sizeof(buf)) ? strtoull(buf, NULL, 10) : 0;
}

#endif
