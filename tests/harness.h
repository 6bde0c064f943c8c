/* SPDX-License-Identifier: MIT */
/*
 * Helpers for integration tests that drive the real binaries: start dedupd on
 * a private socket under the build tree, ask it for figures (the same ADMIN
 * protocol dedupctl uses), wait for conditions with a deadline, and read the
 * kernel's own accounting of a process. Header-only: each test is one file.
 *
 * Tests run from the repository root (tests/run.sh does that); $BUILD names
 * the build tree (default build).
 */
#ifndef DD_HARNESS_H
#define DD_HARNESS_H

#include <check.h>
#include <errno.h>
#include <json-c/json.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dedupd/common/proto.h"

static inline const char *h_build(void)
{
	const char *b = getenv("BUILD");

	return b && *b ? b : "build";
}

static inline uint64_t h_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static inline void h_sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* A socket path unique to this test process. */
static inline void h_sock_path(char *buf, size_t len, const char *tag)
{
	char dir[128];

	snprintf(dir, sizeof(dir), "%s/test-sockets", h_build());
	mkdir(dir, 0755);
	snprintf(buf, len, "%s/%s-%d.sock", dir, tag, (int)getpid());
}

/*
 * Start dedupd in the foreground on sock with extra arguments (NULL-terminated
 * array, may be NULL); wait until it answers. Its log goes to
 * $BUILD/test-sockets/<tag>.log. Returns the pid.
 */
static inline pid_t h_daemon_start(const char *sock, const char *const *extra)
{
	char exe[256], log[300];
	const char *argv[64];
	int n = 0;
	pid_t pid;

	snprintf(exe, sizeof(exe), "%s/dedupd", h_build());
	snprintf(log, sizeof(log), "%s.log", sock);
	argv[n++] = exe;
	argv[n++] = "--foreground";
	argv[n++] = "--socket";
	argv[n++] = sock;
	for (; extra && *extra && n < 62; extra++)
		argv[n++] = *extra;
	argv[n] = NULL;
	pid = fork();
	if (pid == 0) {
		FILE *f = freopen(log, "a", stderr);
		(void)f;
		execv(exe, (char *const *)argv);
		_exit(127);
	}
	ck_assert_int_gt(pid, 0);
	for (int i = 0; i < 500; i++) {
		int fd = dd_sock_connect(sock);
		if (fd >= 0) {
			close(fd);
			return pid;
		}
		h_sleep_ms(10);
	}
	ck_abort_msg("dedupd did not come up on %s (see %s)", sock, log);
	return -1;
}

/* Stop dedupd with sig and reap it; returns its wait status. */
static inline int h_daemon_stop(pid_t pid, int sig)
{
	int st = -1;

	kill(pid, sig);
	waitpid(pid, &st, 0);
	return st;
}

/* Send an admin command; returns the status and the answer text (malloc'ed). */
static inline int h_admin(const char *sock, const char *cmd, char **text)
{
	char buf[DD_MSG_MAX];
	struct dd_msg_admin *m = (struct dd_msg_admin *)buf;
	const struct dd_msg_result *res = (const void *)buf;
	size_t len = strlen(cmd);
	ssize_t n;
	int fd = dd_sock_connect(sock), r;

	*text = NULL;
	if (fd < 0)
		return fd;
	memset(m, 0, sizeof(*m));
	dd_msg_init(&m->h, DD_MSG_ADMIN, sizeof(*m) + len, 7);
	m->text_len = (uint32_t)len;
	memcpy(m->text, cmd, len);
	r = dd_msg_send(fd, m, sizeof(*m) + len, -1);
	if (r == 0) {
		n = dd_msg_recv(fd, buf, sizeof(buf), NULL, 10000);
		r = n <= 0 ? (n == 0 ? -ECONNRESET : (int)n) : res->status;
		if (n > 0)
			*text = strndup(res->text, res->text_len);
	}
	close(fd);
	return r;
}

/* One figure of `stats`, or -1 if the daemon does not answer. */
static inline int64_t h_stat(const char *sock, const char *name)
{
	char *t;
	struct json_object *o, *v;
	int64_t x = -1;

	if (h_admin(sock, "stats", &t) < 0 || !t) {
		free(t);
		return -1;
	}
	o = json_tokener_parse(t);
	if (o && json_object_object_get_ex(o, name, &v))
		x = json_object_get_int64(v);
	json_object_put(o);
	free(t);
	return x;
}

/* Wait until stat `name` == want (or >= want with at_least); true if it did. */
static inline bool h_wait_stat(const char *sock, const char *name, int64_t want, bool at_least,
			       unsigned timeout_ms)
{
	uint64_t end = h_now_ms() + timeout_ms;

	do {
		int64_t v = h_stat(sock, name);
		if (v == want || (at_least && v >= want))
			return true;
		h_sleep_ms(20);
	} while (h_now_ms() < end);
	return false;
}

/* A "Field:  N kB" line of /proc/PID/<file> in KiB, or -1. */
static inline long h_proc_kib(pid_t pid, const char *file, const char *field)
{
	char path[64], line[256];
	size_t fl = strlen(field);
	long v = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, file);
	f = fopen(path, "re");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, field, fl) && line[fl] == ':')
			v = strtol(line + fl + 1, NULL, 10);
	fclose(f);
	return v;
}

/* A field of /proc/PID/smaps_rollup in KiB ("Anonymous", "Rss"), or -1. */
static inline long h_smaps_kib(pid_t pid, const char *field)
{
	return h_proc_kib(pid, "smaps_rollup", field);
}

/* Deterministic page content: page i of a stream identified by seed. */
static inline void h_fill(void *page, uint64_t seed, uint64_t i)
{
	uint64_t *w = page;

	for (unsigned j = 0; j < 512; j++) {
		uint64_t x = seed * 0x9e3779b97f4a7c15ULL + i * 512 + j + 1;
		x ^= x >> 31;
		x *= 0xbf58476d1ce4e5b9ULL;
		w[j] = x ^ (x >> 29);
	}
}

static inline bool h_is_root(void)
{
	return geteuid() == 0;
}

#define H_SKIP_UNLESS_ROOT()                                                                 \
	do {                                                                                 \
		if (!h_is_root()) {                                                          \
			fprintf(stderr, "SKIP %s: needs root (userfaultfd, pagemap, "       \
					"process_vm_readv of other processes)\n", __func__); \
			return;                                                              \
		}                                                                            \
	} while (0)

#endif
