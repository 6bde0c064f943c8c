/* SPDX-License-Identifier: MIT */
/*
 * QEMU guests for integration tests: a thin C face of tests/vm/vm.sh (see
 * tests/vm/README.md). Every function runs vm.sh (through /bin/sh, with
 * posix_spawn) and reads what it prints; vm.sh's own messages go to this
 * process's stderr, i.e. the test log. Header-only, like tests/harness.h, and it
 * does not need check.h.
 *
 * Tests run from the repository root (tests/run.sh does that), where vm.sh is
 * tests/vm/vm.sh; $DEDUP_VM_SH names another path. Guest names are global to the
 * run directory (default build/vm): give each test its own, e.g. with its pid.
 *
 *	char why[256], out[4096];
 *	if (!vm_available(why, sizeof(why))) {
 *		fprintf(stderr, "SKIP %s: %s\n", __func__, why);
 *		return;
 *	}
 *	ck_assert_int_eq(vm_boot("t1", 256, "DEDUPD_SOCKET=build/x.sock"), 0);
 *	ck_assert_int_eq(vm_run("t1", "dd-work fill 32 1", out, sizeof(out)), 0);
 *	...
 *	vm_stop("t1");
 *
 * Booting takes 3-7 s under TCG; filling 32 MiB ~5 s; a balloon change 1-2 s.
 */
#ifndef DD_VMHARNESS_H
#define DD_VMHARNESS_H

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define VM_ARGS_MAX 48

static inline const char *vm_sh(void)
{
	const char *p = getenv("DEDUP_VM_SH");

	return p && *p ? p : "tests/vm/vm.sh";
}

/*
 * Run `vm.sh ARGS...` (args NULL-terminated). Its stdout (and its stderr too
 * with merge_stderr) goes to out, NUL-terminated and cut at outlen - 1 (out may
 * be NULL: then it is discarded). Returns vm.sh's exit status, or -1 if it could
 * not be started or died of a signal.
 */
static inline int vm_sh_exec(const char *const *args, char *out, size_t outlen, bool merge_stderr)
{
	const char *argv[VM_ARGS_MAX + 3];
	posix_spawn_file_actions_t fa;
	size_t used = 0;
	int p[2], st = 0, n = 0, r;
	pid_t pid;

	if (out && outlen)
		out[0] = '\0';
	argv[n++] = "/bin/sh";
	argv[n++] = vm_sh();
	for (; args && *args && n < VM_ARGS_MAX + 2; args++)
		argv[n++] = *args;
	argv[n] = NULL;
	if (pipe2(p, O_CLOEXEC) < 0)
		return -1;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_adddup2(&fa, p[1], 1);
	if (merge_stderr)
		posix_spawn_file_actions_adddup2(&fa, p[1], 2);
#if defined(__GLIBC__) && defined(__GLIBC_PREREQ)
#if __GLIBC_PREREQ(2, 34)
	/* QEMU outlives vm.sh: it must not keep the test's descriptors open. */
	posix_spawn_file_actions_addclosefrom_np(&fa, 3);
#endif
#endif
	r = posix_spawn(&pid, "/bin/sh", &fa, NULL, (char *const *)argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(p[1]);
	if (r != 0) {
		close(p[0]);
		errno = r;
		return -1;
	}
	for (;;) {
		char buf[4096];
		ssize_t k = read(p[0], buf, sizeof(buf));

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			break;
		if (out && outlen > used + 1) {
			size_t c = (size_t)k < outlen - 1 - used ? (size_t)k : outlen - 1 - used;

			memcpy(out + used, buf, c);
			used += c;
			out[used] = '\0';
		}
	}
	close(p[0]);
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Copy src into dst[len], cut if need be, always NUL-terminated. */
static inline void vm_copy(char *dst, size_t len, const char *src)
{
	size_t n = strlen(src);

	if (!dst || !len)
		return;
	if (n >= len)
		n = len - 1;
	memcpy(dst, src, n);
	dst[n] = '\0';
}

/* The text after "prefix" on the first line of text that starts with it. */
static inline bool vm_field(const char *text, const char *prefix, char *buf, size_t len)
{
	size_t pl = strlen(prefix);

	for (const char *l = text; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : NULL) {
		if (!strncmp(l, prefix, pl)) {
			const char *v = l + pl, *e = strchr(v, '\n');
			size_t n = e ? (size_t)(e - v) : strlen(v);

			if (n >= len)
				n = len - 1;
			memcpy(buf, v, n);
			buf[n] = '\0';
			return true;
		}
	}
	return false;
}

/*
 * Can this machine boot test guests? Runs `vm.sh fetch` and `vm.sh initramfs`
 * (installs QEMU, busybox-static, socat and downloads the kernel once, as root;
 * a few tens of milliseconds once done). false, with the reason in why, if not.
 */
static inline bool vm_available(char *why, size_t len)
{
	static int known; /* 1 yes, -1 no */
	static char reason[256];
	const char *fetch[] = { "fetch", NULL }, *initrd[] = { "initramfs", NULL };
	char out[4096];
	int r;

	if (!known) {
		if (access(vm_sh(), R_OK) < 0) {
			snprintf(reason, sizeof(reason), "%.120s: %.120s", vm_sh(), strerror(errno));
			known = -1;
		} else if ((r = vm_sh_exec(fetch, out, sizeof(out), true)) != 0 ||
			   (r = vm_sh_exec(initrd, out, sizeof(out), true)) != 0) {
			char *e = out + strlen(out);

			while (e > out && e[-1] == '\n')
				*--e = '\0';
			e = strrchr(out, '\n');
			snprintf(reason, sizeof(reason), "%.200s (vm.sh status %d)",
				 e ? e + 1 : out, r);
			known = -1;
		} else {
			known = 1;
		}
	}
	vm_copy(why, len, known > 0 ? "" : reason);
	return known > 0;
}

/*
 * Boot guest name with mib MiB of RAM and wait until it is ready. extra_env
 * (may be NULL): blank-separated KEY=VALUE words for QEMU's environment, e.g.
 * "DEDUPD_SOCKET=build/t.sock DEDUP_DOMAIN=all". QEMU also inherits this
 * process's environment: set DEDUP_VM_PRELOAD=build/libdedup-preload.so (and
 * DEDUP_*) there, or pass LD_PRELOAD=... in extra_env. Returns 0, or -1 (vm.sh
 * said why on stderr).
 */
static inline int vm_boot(const char *name, unsigned mib, const char *extra_env)
{
	const char *args[VM_ARGS_MAX + 1];
	char m[16], env[2048], out[512];
	int n = 0, r;

	snprintf(m, sizeof(m), "%u", mib);
	args[n++] = "boot";
	args[n++] = name;
	args[n++] = "-m";
	args[n++] = m;
	vm_copy(env, sizeof(env), extra_env ? extra_env : "");
	for (char *sp, *t = strtok_r(env, " \t\n", &sp); t && n < VM_ARGS_MAX;
	     t = strtok_r(NULL, " \t\n", &sp))
		args[n++] = t;
	args[n] = NULL;
	r = vm_sh_exec(args, out, sizeof(out), false);
	fprintf(stderr, "vm_boot %s: %s", name, out[0] ? out : "(no READY line)\n");
	return r == 0 ? 0 : -1;
}

/* Stop guest name (QMP quit, then signals). 0, or -1. Stopping a stopped guest is 0. */
static inline int vm_stop(const char *name)
{
	const char *args[] = { "stop", name, NULL };

	return vm_sh_exec(args, NULL, 0, false) == 0 ? 0 : -1;
}

/*
 * Run a shell command in guest name (sh -c, stdin /dev/null); its stdout and
 * stderr go to out. Returns the command's exit status, 124 if it was not done
 * within timeout_s seconds (it goes on in the guest), -1 if the harness failed.
 */
static inline int vm_run_timeout(const char *name, unsigned timeout_s, const char *cmd, char *out,
				 size_t outlen)
{
	char t[16];
	const char *args[] = { "run", name, "-t", t, cmd, NULL };
	int r;

	snprintf(t, sizeof(t), "%u", timeout_s);
	r = vm_sh_exec(args, out, outlen, false);
	return r == 125 ? -1 : r;
}

static inline int vm_run(const char *name, const char *cmd, char *out, size_t outlen)
{
	return vm_run_timeout(name, 300, cmd, out, outlen);
}

/*
 * Send one QMP command (JSON text) on the harness's own QMP socket of guest
 * name; the reply (one line, events skipped) goes to out. Returns 0 for a
 * "return" reply, 1 for an "error" reply, -1 if there was no reply.
 */
static inline int vm_qmp(const char *name, const char *json, char *out, size_t outlen)
{
	char buf[8192];
	const char *args[] = { "qmp", name, json, NULL };
	int r = vm_sh_exec(args, buf, sizeof(buf), false);

	vm_copy(out, outlen, buf);
	if (r == 0)
		return 0;
	return !strncmp(buf, "{\"error\"", 8) ? 1 : -1;
}

/*
 * The path of guest name's QMP socket for the code under test (NAME.qmp; the
 * harness itself uses another one, so both can be connected at once). 0 or -1.
 */
static inline int vm_qmp_path(const char *name, char *buf, size_t len)
{
	const char *args[] = { "paths", name, NULL };
	char out[2048];

	if (vm_sh_exec(args, out, sizeof(out), false) != 0)
		return -1;
	return vm_field(out, "qmp ", buf, len) ? 0 : -1;
}

/* The pid of guest name's QEMU, or -1 if it is not running. */
static inline pid_t vm_pid(const char *name)
{
	const char *args[] = { "pid", name, NULL };
	char out[64];

	if (vm_sh_exec(args, out, sizeof(out), false) != 0)
		return -1;
	return (pid_t)strtol(out, NULL, 10);
}

/* query-balloon's "actual" (bytes of RAM the guest has), or -1. */
static inline int64_t vm_balloon_actual(const char *name)
{
	char out[512];
	const char *a;

	if (vm_qmp(name, "{\"execute\":\"query-balloon\"}", out, sizeof(out)) != 0)
		return -1;
	a = strstr(out, "\"actual\":");
	return a ? strtoll(a + 9, NULL, 10) : -1;
}

/* Ask the balloon for a guest size of bytes. 0 or -1. */
static inline int vm_balloon_set(const char *name, int64_t bytes)
{
	char json[128];

	snprintf(json, sizeof(json), "{\"execute\":\"balloon\",\"arguments\":{\"value\":%" PRId64 "}}",
		 bytes);
	return vm_qmp(name, json, NULL, 0) == 0 ? 0 : -1;
}

/* Wait until |actual - bytes| <= slack; the last actual, or -1 on time-out. */
static inline int64_t vm_balloon_wait(const char *name, int64_t bytes, int64_t slack,
				      unsigned timeout_ms)
{
	struct timespec now, end, nap = { 0, 100 * 1000000L };

	clock_gettime(CLOCK_MONOTONIC, &end);
	end.tv_sec += timeout_ms / 1000;
	end.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
	for (;;) {
		int64_t a = vm_balloon_actual(name);

		if (a >= 0 && (a > bytes ? a - bytes : bytes - a) <= slack)
			return a;
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec * 1000000000L + now.tv_nsec >
		    end.tv_sec * 1000000000L + end.tv_nsec)
			return -1;
		nanosleep(&nap, NULL);
	}
}

/*
 * One figure (KiB) of `vm.sh mem NAME`: "rss_kib", "anon_kib", "anon_huge_kib",
 * "ksm_kib", "swap_kib" of the guest RAM mapping, "process_rss_kib",
 * "process_anon_kib" of the whole QEMU process. -1 if unknown.
 */
static inline long vm_mem_kib(const char *name, const char *field)
{
	const char *args[] = { "mem", name, NULL };
	char out[1024], key[64];
	const char *p;
	size_t kl;

	if (vm_sh_exec(args, out, sizeof(out), false) != 0)
		return -1;
	kl = (size_t)snprintf(key, sizeof(key), "%s=", field);
	for (p = out; (p = strstr(p, key)); p += kl)
		if (p == out || p[-1] == ' ' || p[-1] == '\n')
			return strtol(p + kl, NULL, 10);
	return -1;
}

/*
 * The checksum (32 hex digits) that dd-work must show in a guest after
 * `dd-work fill mib seed` and `dd-work rewrite PCT` for each PCT in pcts
 * (blank-separated, may be NULL), computed on the host. 0 or -1.
 */
static inline int vm_expect(unsigned mib, unsigned seed, const char *pcts, char *sum, size_t len)
{
	const char *args[VM_ARGS_MAX + 1];
	char m[16], s[16], list[512], out[256];
	int n = 0;

	snprintf(m, sizeof(m), "%u", mib);
	snprintf(s, sizeof(s), "%u", seed);
	args[n++] = "expect";
	args[n++] = m;
	args[n++] = s;
	vm_copy(list, sizeof(list), pcts ? pcts : "");
	for (char *sp, *t = strtok_r(list, " ", &sp); t && n < VM_ARGS_MAX; t = strtok_r(NULL, " ", &sp))
		args[n++] = t;
	args[n] = NULL;
	if (vm_sh_exec(args, out, sizeof(out), false) != 0)
		return -1;
	return vm_field(out, "DD-EXPECT ", sum, len) ? 0 : -1;
}

#define VM_SKIP_UNLESS_AVAILABLE()                                                  \
	do {                                                                        \
		char vm_why_[256];                                                  \
		if (!vm_available(vm_why_, sizeof(vm_why_))) {                      \
			fprintf(stderr, "SKIP %s: no test VM: %s\n", __func__, vm_why_); \
			return;                                                     \
		}                                                                   \
	} while (0)

#endif
