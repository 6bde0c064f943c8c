// SPDX-License-Identifier: MIT
/*
 * Tests of the reclaim actions that act on a client from outside:
 * dedupd/reclaim/pageout (process_madvise(MADV_PAGEOUT), swap and process
 * figures) and dedupd/reclaim/throttle (a memory cgroup per client).
 *
 *  - parse: the /proc parsers against fake meminfo and status files.
 *  - noswap: with no swap at all, pageout of anonymous memory is advised
 *    but pages out nothing; a v1 limit below anonymous usage is refused by
 *    the kernel (EBUSY) and becomes the usage; dead processes and bad ranges.
 *  - swap: with a zram swap device set up by tests/zram-swap.sh (removed in
 *    the tcase's unchecked teardown, and at exit, even when a test fails):
 *    half of a 64 MiB process paged out and read back intact; a process held
 *    to 48 MiB, updated, released; leftovers of a crashed instance cleaned.
 *
 * Real processes are "workers": forked children that allocate and verify
 * memory on command, and die with the test (PR_SET_PDEATHSIG). Cgroups
 * are made under <memory hierarchy>/dd-check-actions.<runner pid>.<tag> and
 * removed by the unchecked teardowns. Needs root; run from the repository
 * root (the zram script is found at tests/zram-swap.sh).
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "dedupd/reclaim/pageout.h"
#include "dedupd/reclaim/throttle.h"
#include "tests/harness.h"

Suite *actions_suite(void);

#define MIB (1024ULL * 1024)
#define PAGE 4096ULL
#define ZRAM_MIB 256
#define ZRAM_SCRIPT "tests/zram-swap.sh"

static pid_t runner_pid; /* the Check runner; forked tests name cgroups after it */

static double mib(uint64_t bytes)
{
	return (double)bytes / (double)MIB;
}

/* ---- files ---- */

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "we");

	ck_assert_msg(f, "%s: %s", path, strerror(errno));
	fputs(text, f);
	ck_assert_int_eq(fclose(f), 0);
}

/* Made by the runner before the forked tests, which inherit its name. */
static char tmpdir[64];

static const char *tmp_path(const char *name)
{
	static char path[256];

	snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
	return path;
}

static void parse_setup(void)
{
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/dd-check-actions.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void parse_teardown(void)
{
	char cmd[128];

	if (!tmpdir[0])
		return;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", tmpdir);
	tmpdir[0] = '\0';
}

/* The memory line's path of /proc/PID/cgroup ("" if none). */
static void memcg_of(pid_t pid, char *out, size_t len)
{
	char path[64], line[512];
	FILE *f;

	out[0] = '\0';
	snprintf(path, sizeof(path), "/proc/%d/cgroup", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;

		if (!c2)
			continue;
		*c2 = '\0';
		if (strstr(c1 + 1, "memory") || (!strcmp(line, "0") && c2 == c1 + 1 && !out[0])) {
			c2[1 + strcspn(c2 + 1, "\n")] = '\0';
			snprintf(out, len, "%s", c2 + 1);
		}
	}
	fclose(f);
}

/* ---- swap ---- */

static bool swap_configured(void)
{
	uint64_t total = 0, free_b = 0;

	return dd_swap_status(&total, &free_b) == 0 && total > 0;
}

static void zram_down(void)
{
	if (getpid() != runner_pid) /* atexit also runs in forked tests */
		return;
	if (system(ZRAM_SCRIPT " down >/dev/null") != 0)
		fprintf(stderr, "%s down failed: check /proc/swaps\n", ZRAM_SCRIPT);
}

static void zram_up(void)
{
	char dev[64] = "", cmd[128];
	FILE *p;

	snprintf(cmd, sizeof(cmd), "%s up %d", ZRAM_SCRIPT, ZRAM_MIB);
	p = popen(cmd, "r");
	ck_assert_msg(p, "%s: %s", ZRAM_SCRIPT, strerror(errno));
	if (!fgets(dev, sizeof(dev), p))
		dev[0] = '\0';
	ck_assert_msg(pclose(p) == 0 && dev[0] == '/', "%s up %d failed", ZRAM_SCRIPT, ZRAM_MIB);
	printf("zram swap: %s", dev);
}

/* ---- workers ---- */

#define WORKER_REGIONS 8

struct wmsg {
	char op;       /* 'A' allocate len with seed, 'R' reserve len, 'V' verify, 'Q' quit */
	uint64_t len;  /* 'A' */
	uint64_t seed; /* 'A' */
	uint64_t res;  /* reply: 'A' the address, 'V' bad pages */
};

struct worker {
	pid_t pid;
	int to, from;
};

static void worker_main(int in, int out, pid_t parent)
{
	struct {
		char *p;
		uint64_t len, seed;
	} reg[WORKER_REGIONS];
	char page[PAGE];
	struct wmsg m;
	int n = 0;

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent)
		_exit(1);
	while (read(in, &m, sizeof(m)) == sizeof(m)) {
		if (m.op == 'A' && n < WORKER_REGIONS) {
			char *p = mmap(NULL, m.len, PROT_READ | PROT_WRITE,
				       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

			if (p == MAP_FAILED)
				_exit(2);
			madvise(p, m.len, MADV_NOHUGEPAGE); /* 4 KiB pages: exact figures */
			for (uint64_t i = 0; i < m.len / PAGE; i++)
				h_fill(p + i * PAGE, m.seed, i);
			reg[n].p = p;
			reg[n].len = m.len;
			reg[n++].seed = m.seed;
			m.res = (uint64_t)(uintptr_t)p;
		} else if (m.op == 'R' && n < WORKER_REGIONS) { /* reserved, never touched */
			char *p = mmap(NULL, m.len, PROT_READ | PROT_WRITE,
				       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

			if (p == MAP_FAILED)
				_exit(2);
			m.res = (uint64_t)(uintptr_t)p;
		} else if (m.op == 'V') {
			m.res = 0;
			for (int r = 0; r < n; r++)
				for (uint64_t i = 0; i < reg[r].len / PAGE; i++) {
					h_fill(page, reg[r].seed, i);
					m.res += memcmp(page, reg[r].p + i * PAGE, PAGE) != 0;
				}
		} else {
			_exit(0);
		}
		if (write(out, &m, sizeof(m)) != sizeof(m))
			_exit(3);
	}
	_exit(0);
}

static void worker_start(struct worker *w)
{
	int to[2], from[2];
	pid_t parent = getpid();

	ck_assert_int_eq(pipe2(to, O_CLOEXEC), 0);
	ck_assert_int_eq(pipe2(from, O_CLOEXEC), 0);
	w->pid = fork();
	ck_assert_int_ge(w->pid, 0);
	if (w->pid == 0) {
		close(to[1]);
		close(from[0]);
		worker_main(to[0], from[1], parent);
	}
	close(to[0]);
	close(from[1]);
	w->to = to[1];
	w->from = from[0];
}

static void worker_send(struct worker *w, char op, uint64_t len, uint64_t seed)
{
	struct wmsg m = { .op = op, .len = len, .seed = seed };

	ck_assert_int_eq(write(w->to, &m, sizeof(m)), (ssize_t)sizeof(m));
}

static uint64_t worker_reply(struct worker *w)
{
	struct wmsg m;

	ck_assert_msg(read(w->from, &m, sizeof(m)) == sizeof(m), "worker %d died", (int)w->pid);
	return m.res;
}

static uint64_t worker_call(struct worker *w, char op, uint64_t len, uint64_t seed)
{
	worker_send(w, op, len, seed);
	return worker_reply(w);
}

static uint64_t worker_alloc(struct worker *w, uint64_t len, uint64_t seed)
{
	return worker_call(w, 'A', len, seed);
}

static uint64_t worker_verify(struct worker *w)
{
	return worker_call(w, 'V', 0, 0);
}

static void worker_kill(struct worker *w)
{
	if (w->pid <= 0)
		return;
	kill(w->pid, SIGKILL);
	waitpid(w->pid, NULL, 0);
	close(w->to);
	close(w->from);
	w->pid = 0;
}

static int pidfd_open(pid_t pid)
{
	int fd = (int)syscall(SYS_pidfd_open, pid, 0);

	ck_assert_msg(fd >= 0, "pidfd_open(%d): %s", (int)pid, strerror(errno));
	return fd;
}

static struct dd_proc_mem proc_mem(pid_t pid)
{
	struct dd_proc_mem m;

	ck_assert_int_eq(dd_proc_mem(pid, &m), 0);
	return m;
}

/* ---- parsers ---- */

START_TEST(test_swap_status_parse)
{
	uint64_t total = 1, free_b = 1;

	write_file(tmp_path("meminfo"),
		   "MemTotal:       24683616 kB\nSwapCached:            0 kB\n"
		   "SwapTotal:       1048576 kB\nSwapFree:         524288 kB\n");
	ck_assert_int_eq(dd_swap_status_at(tmp_path("meminfo"), &total, &free_b), 0);
	ck_assert_uint_eq(total, 1024 * MIB);
	ck_assert_uint_eq(free_b, 512 * MIB);

	write_file(tmp_path("meminfo"), "SwapTotal:             0 kB\nSwapFree:              0 kB");
	ck_assert_int_eq(dd_swap_status_at(tmp_path("meminfo"), &total, &free_b), 0);
	ck_assert_uint_eq(total, 0);
	ck_assert_uint_eq(free_b, 0);

	/* the real one */
	ck_assert_int_eq(dd_swap_status(&total, &free_b), 0);
	ck_assert_uint_le(free_b, total);
}
END_TEST

static const struct {
	const char *text;
	int want;
} bad_meminfo[] = {
	{ NULL, -ENOENT }, /* no file */
	{ "", -ENODATA },
	{ "MemTotal: 100 kB\n", -ENODATA },
	{ "SwapTotal: 100 kB\n", -ENODATA },
	{ "SwapFree: 100 kB\n", -ENODATA },
	{ "SwapTotalX: 100 kB\nSwapFreeX: 1 kB\n", -ENODATA },
	{ "SwapTotal: abc kB\nSwapFree: 1 kB\n", -EINVAL },
	{ "SwapTotal: 100 MB\nSwapFree: 1 kB\n", -EINVAL },
	{ "SwapTotal: 100\nSwapFree: 1 kB\n", -EINVAL },
	{ "SwapTotal: -100 kB\nSwapFree: 1 kB\n", -EINVAL },
	{ "SwapTotal: 99999999999999999999 kB\nSwapFree: 1 kB\n", -EINVAL },
	{ "SwapTotal: 18014398509481984 kB\nSwapFree: 1 kB\n", -EINVAL }, /* * 1024 overflows */
	{ "SwapTotal: 100 kB\nSwapFree: 200 kB\n", -EINVAL },		  /* free > total */
	{ "SwapTotal: 12 34 kB\nSwapFree: 1 kB\n", -EINVAL },
};

START_TEST(test_swap_status_bad)
{
	const char *path = tmp_path("meminfo");
	uint64_t total = 7, free_b = 7;

	if (bad_meminfo[_i].text)
		write_file(path, bad_meminfo[_i].text);
	else
		path = tmp_path("absent");
	ck_assert_msg(dd_swap_status_at(path, &total, &free_b) == bad_meminfo[_i].want,
		      "case %d: got %d, want %d", _i, dd_swap_status_at(path, &total, &free_b),
		      bad_meminfo[_i].want);
	ck_assert_uint_eq(total, 7); /* untouched on failure */
	ck_assert_uint_eq(free_b, 7);
}
END_TEST

START_TEST(test_proc_mem_parse)
{
	struct dd_proc_mem m;

	write_file(tmp_path("status"), "Name:\tx\nVmRSS:\t   99880 kB\nRssAnon:\t   98404 kB\n"
				       "RssFile:\t    1476 kB\nVmSwap:\t     512 kB\n");
	ck_assert_int_eq(dd_proc_mem_at(tmp_path("status"), &m), 0);
	ck_assert_uint_eq(m.rss_bytes, 99880 * 1024ULL);
	ck_assert_uint_eq(m.rss_anon_bytes, 98404 * 1024ULL);
	ck_assert_uint_eq(m.swap_bytes, 512 * 1024ULL);
	/* a zombie's status has no Vm lines */
	write_file(tmp_path("status"), "Name:\tx\nState:\tZ (zombie)\nThreads:\t1\n");
	ck_assert_int_eq(dd_proc_mem_at(tmp_path("status"), &m), -ENODATA);
	write_file(tmp_path("status"), "VmRSS: 1 kB\nRssAnon: x kB\nVmSwap: 0 kB\n");
	ck_assert_int_eq(dd_proc_mem_at(tmp_path("status"), &m), -EINVAL);
	ck_assert_int_eq(dd_proc_mem_at(tmp_path("absent"), &m), -ENOENT);
	/* real ones */
	ck_assert_int_eq(dd_proc_mem(getpid(), &m), 0);
	ck_assert_uint_gt(m.rss_bytes, 0);
	ck_assert_uint_le(m.rss_anon_bytes, m.rss_bytes);
	ck_assert_int_eq(dd_proc_mem(0, &m), -ESRCH);
	ck_assert_int_eq(dd_proc_mem(0x3fffffff, &m), -ESRCH);
	ck_assert_int_eq(dd_proc_mem(2, &m), -ENODATA); /* kthreadd */
}
END_TEST

/* ---- pageout ---- */

static void noswap_setup(void)
{
	zram_down(); /* ours, if a run that died left it */
}

#define SKIP_IF_SWAP()                                                                             \
	do {                                                                                       \
		if (swap_configured()) {                                                           \
			printf("SKIP %s: swap is configured by something else (/proc/swaps); "     \
			       "this test needs none\n",                                           \
			       __func__);                                                          \
			return;                                                                    \
		}                                                                                  \
	} while (0)

START_TEST(test_pageout_noswap)
{
	struct worker w;
	uint64_t total = 1, free_b = 1, len = 16 * MIB, addr;
	struct dd_proc_mem before, after;
	struct iovec iov;
	char err[256];
	int64_t n;
	int pidfd;

	SKIP_IF_SWAP();
	ck_assert_int_eq(dd_swap_status(&total, &free_b), 0);
	ck_assert_uint_eq(total, 0);
	ck_assert_uint_eq(free_b, 0);
	worker_start(&w);
	addr = worker_alloc(&w, len, 11);
	pidfd = pidfd_open(w.pid);
	before = proc_mem(w.pid);
	iov = (struct iovec){ (void *)(uintptr_t)addr, len };
	n = dd_pageout(pidfd, &iov, 1, err, sizeof(err));
	after = proc_mem(w.pid);
	printf(
	    "no swap: pageout of %.0f MiB anonymous: advised %.1f MiB; RssAnon %.1f -> %.1f MiB, "
	    "VmSwap %.1f MiB\n",
	    mib(len), mib((uint64_t)n), mib(before.rss_anon_bytes), mib(after.rss_anon_bytes),
	    mib(after.swap_bytes));
	/* the kernel counts the range as advised, but anonymous pages have nowhere to go */
	ck_assert_int_eq(n, (int64_t)len);
	ck_assert_str_eq(err, "");
	ck_assert_uint_ge(after.rss_anon_bytes, before.rss_anon_bytes - before.rss_anon_bytes / 20);
	ck_assert_uint_eq(after.swap_bytes, 0);
	ck_assert_uint_eq(worker_verify(&w), 0);
	close(pidfd);
	worker_kill(&w);
}
END_TEST

START_TEST(test_pageout_dead)
{
	struct worker w;
	uint64_t addr;
	struct iovec iov;
	siginfo_t si;
	char err[256];
	int pidfd;

	worker_start(&w);
	addr = worker_alloc(&w, MIB, 12);
	pidfd = pidfd_open(w.pid);
	iov = (struct iovec){ (void *)(uintptr_t)addr, MIB };
	kill(w.pid, SIGKILL);
	/* a zombie: exited, not reaped */
	ck_assert_int_eq(waitid(P_PID, (id_t)w.pid, &si, WEXITED | WNOWAIT), 0);
	ck_assert_int_eq(dd_pageout(pidfd, &iov, 1, err, sizeof(err)), -ESRCH);
	ck_assert_msg(strstr(err, "exited"), "err: %s", err);
	/* reaped */
	worker_kill(&w);
	ck_assert_int_eq(dd_pageout(pidfd, &iov, 1, err, sizeof(err)), -ESRCH);
	close(pidfd);
}
END_TEST

START_TEST(test_pageout_bad_ranges)
{
	struct worker w;
	uint64_t addr;
	struct iovec iov[4];
	char err[256];
	int64_t n;
	int pidfd, fd;

	worker_start(&w);
	addr = worker_alloc(&w, 4 * MIB, 13);
	pidfd = pidfd_open(w.pid);

	iov[0] = (struct iovec){ (void *)(uintptr_t)(addr + 1), PAGE };
	ck_assert_int_eq(dd_pageout(pidfd, iov, 1, err, sizeof(err)), -EINVAL);
	ck_assert_msg(strstr(err, "1 of 1 ranges skipped") && strstr(err, "EINVAL"), "%s", err);

	iov[0] = (struct iovec){ (void *)(uintptr_t)0x1000, PAGE }; /* below mmap_min_addr */
	ck_assert_int_eq(dd_pageout(pidfd, iov, 1, err, sizeof(err)), -ENOMEM);
	ck_assert_msg(strstr(err, "not mapped"), "%s", err);

	iov[0] = (struct iovec){ (void *)(uintptr_t)0xffff888000000000ULL, PAGE };
	n = dd_pageout(pidfd, iov, 1, err, sizeof(err));
	printf("pageout of a kernel address: %s (%s)\n", strerror((int)-n), err);
	ck_assert_int_eq(n, -EFAULT);

	/* good, unmapped, empty, good: the good ones are done, the bad one said */
	iov[0] = (struct iovec){ (void *)(uintptr_t)addr, MIB };
	iov[1] = (struct iovec){ (void *)(uintptr_t)0x1000, PAGE };
	iov[2] = (struct iovec){ (void *)(uintptr_t)addr, 0 };
	iov[3] = (struct iovec){ (void *)(uintptr_t)(addr + 2 * MIB), MIB };
	n = dd_pageout(pidfd, iov, 4, err, sizeof(err));
	ck_assert_int_eq(n, (int64_t)(2 * MIB));
	ck_assert_msg(strstr(err, "1 of 3 ranges skipped") && strstr(err, "0x1000"), "%s", err);

	/* a kernel address among good ones fails the whole vector in the kernel */
	iov[1] = (struct iovec){ (void *)(uintptr_t)0xffff888000000000ULL, PAGE };
	ck_assert_int_eq(dd_pageout(pidfd, iov, 4, err, sizeof(err)), (int64_t)(2 * MIB));

	ck_assert_int_eq(dd_pageout(pidfd, iov, 0, err, sizeof(err)), 0);
	ck_assert_int_eq(dd_pageout(pidfd, iov + 2, 1, err, sizeof(err)), 0); /* empty range */
	ck_assert_int_eq(dd_pageout(pidfd, NULL, 1, err, sizeof(err)), -EINVAL);
	ck_assert_int_eq(dd_pageout(-1, iov, 1, err, sizeof(err)), -EBADF);
	fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	ck_assert_int_eq(dd_pageout(fd, iov, 1, NULL, 0), -EBADF);
	close(fd);
	ck_assert_uint_eq(worker_verify(&w), 0);
	close(pidfd);
	worker_kill(&w);
}
END_TEST

/* Past 2 GiB per call the kernel cuts the vector short (MAX_RW_COUNT) and
 * returns what it did: dd_pageout() carries on from there. */
START_TEST(test_pageout_large)
{
	const uint64_t len = 4096 * MIB + 8 * MIB;
	struct iovec iov[2];
	struct worker w;
	char err[256];
	uint64_t addr;
	int pidfd;

	worker_start(&w);
	addr = worker_call(&w, 'R', len, 0);
	pidfd = pidfd_open(w.pid);
	iov[0] = (struct iovec){ (void *)(uintptr_t)addr, len - MIB };
	iov[1] = (struct iovec){ (void *)(uintptr_t)(addr + len - MIB), MIB };
	ck_assert_int_eq(dd_pageout(pidfd, iov, 2, err, sizeof(err)), (int64_t)len);
	ck_assert_str_eq(err, "");
	close(pidfd);
	worker_kill(&w);
}
END_TEST

START_TEST(test_pageout_swap)
{
	const uint64_t len = 64 * MIB, half = len / 2, npages = half / PAGE;
	struct dd_proc_mem before, after, read_back;
	uint64_t total, free_b, addr;
	struct iovec *iov;
	struct worker w;
	char err[256];
	int64_t n;
	int pidfd;

	ck_assert_int_eq(dd_swap_status(&total, &free_b), 0);
	ck_assert_uint_ge(total, ZRAM_MIB * MIB - MIB);
	worker_start(&w);
	addr = worker_alloc(&w, len, 1);
	pidfd = pidfd_open(w.pid);
	/* one range per page: 8192 ranges, 8 calls of IOV_MAX */
	iov = calloc(npages, sizeof(*iov));
	ck_assert_ptr_nonnull(iov);
	for (uint64_t i = 0; i < npages; i++)
		iov[i] = (struct iovec){ (void *)(uintptr_t)(addr + i * PAGE), PAGE };
	before = proc_mem(w.pid);
	n = dd_pageout(pidfd, iov, npages, err, sizeof(err));
	after = proc_mem(w.pid);
	ck_assert_msg(n == (int64_t)half, "advised %lld: %s", (long long)n, err);
	ck_assert_str_eq(err, "");
	printf(
	    "pageout of %.0f of %.0f MiB (%llu ranges): VmSwap %.1f -> %.1f MiB, RssAnon %.1f -> "
	    "%.1f MiB, VmRSS %.1f -> %.1f MiB\n",
	    mib(half), mib(len), (unsigned long long)npages, mib(before.swap_bytes),
	    mib(after.swap_bytes), mib(before.rss_anon_bytes), mib(after.rss_anon_bytes),
	    mib(before.rss_bytes), mib(after.rss_bytes));
	ck_assert_uint_ge(after.swap_bytes - before.swap_bytes, half * 8 / 10);
	ck_assert_uint_le(after.rss_anon_bytes, before.rss_anon_bytes - half * 8 / 10);
	ck_assert_int_eq(dd_swap_status(&total, &free_b), 0);
	ck_assert_uint_lt(free_b, total);

	/* every byte comes back */
	ck_assert_uint_eq(worker_verify(&w), 0);
	read_back = proc_mem(w.pid);
	printf("read back: RssAnon %.1f MiB, VmSwap %.1f MiB, all %.0f MiB verified\n",
	       mib(read_back.rss_anon_bytes), mib(read_back.swap_bytes), mib(len));
	ck_assert_uint_ge(read_back.rss_anon_bytes, len);
	free(iov);
	close(pidfd);
	worker_kill(&w);
}
END_TEST

/* ---- throttle ---- */

/* The memory hierarchy tests make their groups in (as dd_throttle_new(NULL)
 * picks it); v2 says so in *v2. */
static const char *memcg_base(bool *v2)
{
	static const char *const v2_mounts[] = { "/sys/fs/cgroup/unified", "/sys/fs/cgroup" };
	char path[128], ctl[256];

	for (unsigned i = 0; i < 2; i++) {
		FILE *f;
		size_t n;

		snprintf(path, sizeof(path), "%s/cgroup.subtree_control", v2_mounts[i]);
		f = fopen(path, "re");
		if (!f)
			continue;
		n = fread(ctl, 1, sizeof(ctl) - 1, f);
		ctl[n] = '\0';
		fclose(f);
		if (strstr(ctl, "memory")) {
			*v2 = true;
			return v2_mounts[i];
		}
	}
	*v2 = false;
	return "/sys/fs/cgroup/memory";
}

static void test_root(char *out, size_t len, const char *tag)
{
	bool v2;

	snprintf(out, len, "%s/dd-check-actions.%d.%s", memcg_base(&v2), (int)runner_pid, tag);
}

/* Make the test root (v2: with memory for the groups below). */
static void make_test_root(char *out, size_t len, const char *tag)
{
	char path[512];
	bool v2;

	memcg_base(&v2);
	test_root(out, len, tag);
	ck_assert_msg(mkdir(out, 0755) == 0 || errno == EEXIST, "mkdir %s: %s", out,
		      strerror(errno));
	if (v2) {
		snprintf(path, sizeof(path), "%s/cgroup.subtree_control", out);
		write_file(path, "+memory");
	}
}

/* Kill whatever is in dir and below, and remove it all. */
static void remove_tree(const char *dir)
{
	char cmd[1024];

	snprintf(cmd, sizeof(cmd),
		 "d='%s'; [ -d \"$d\" ] || exit 0; for i in 1 2 3 4 5 6 7 8 9 10; do "
		 "find \"$d\" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -9 "
		 "2>/dev/null; find \"$d\" -depth -type d -exec rmdir {} + 2>/dev/null; "
		 "[ -d \"$d\" ] || exit 0; sleep 0.1; done; exit 1",
		 dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", dir);
}

static void throttle_teardown(void)
{
	static const char *const tags[] = { "hold", "ebusy", "nooom", "dead", "left" };
	char dir[256];

	for (unsigned i = 0; i < sizeof(tags) / sizeof(tags[0]); i++) {
		test_root(dir, sizeof(dir), tags[i]);
		remove_tree(dir);
	}
}

static void swap_setup(void)
{
	zram_up();
}

static void swap_teardown(void)
{
	throttle_teardown();
	zram_down();
}

static bool is_dir(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Page out what a held process had before it was moved, and have it read it
 * back: swap-in charges the cgroup the pages came from, not the group. */
static void pageout_and_read_back(struct dd_throttle *t, struct worker *w, uint64_t addr,
				  uint64_t len)
{
	struct iovec iov = { (void *)(uintptr_t)addr, len };
	struct dd_proc_mem out, back;
	uint64_t usage;
	char err[256];
	int pidfd = pidfd_open(w->pid);

	ck_assert_int_eq(dd_pageout(pidfd, &iov, 1, err, sizeof(err)), (int64_t)len);
	close(pidfd);
	out = proc_mem(w->pid);
	ck_assert_uint_eq(worker_verify(w), 0);
	back = proc_mem(w->pid);
	ck_assert_int_eq(dd_throttle_usage(t, w->pid, &usage), 0);
	printf("old memory paged out (RssAnon %.1f MiB, VmSwap %.1f MiB) and read back: RssAnon "
	       "%.1f MiB, group usage %.1f MiB\n",
	       mib(out.rss_anon_bytes), mib(out.swap_bytes), mib(back.rss_anon_bytes), mib(usage));
	ck_assert_uint_ge(out.swap_bytes, len * 8 / 10);
	ck_assert_uint_ge(back.rss_anon_bytes, len);
	ck_assert_uint_le(usage, 4 * MIB);
}

START_TEST(test_throttle_hold_release)
{
	char root[256], group[512], orig[512], now[512], err[512];
	struct dd_proc_mem before, held, grown;
	uint64_t usage, limit, addr;
	struct dd_throttle *t;
	struct worker w;
	int r;

	make_test_root(root, sizeof(root), "hold");
	t = dd_throttle_new(root, err, sizeof(err));
	ck_assert_msg(t, "dd_throttle_new(%s): %s", root, err);
	ck_assert_str_eq(err, "");
	printf("throttle: %s under %s, charges %s\n",
	       dd_throttle_kind(t) == DD_THROTTLE_V2 ? "v2 memory.high" : "v1 limit_in_bytes",
	       dd_throttle_root(t), dd_throttle_charges_move(t) ? "move" : "do not move");

	worker_start(&w);
	addr = worker_alloc(&w, 96 * MIB, 2);
	memcg_of(w.pid, orig, sizeof(orig));
	before = proc_mem(w.pid);
	r = dd_throttle_hold(t, w.pid, 48 * MIB, err, sizeof(err));
	ck_assert_msg(r == 0, "hold: %d %s", r, err);
	memcg_of(w.pid, now, sizeof(now));
	snprintf(group, sizeof(group), "/" DD_THROTTLE_GROUP "/client-%d", (int)w.pid);
	ck_assert_msg(strlen(now) > strlen(group) &&
			  !strcmp(now + strlen(now) - strlen(group), group),
		      "in %s", now);
	ck_assert_int_eq(dd_throttle_usage(t, w.pid, &usage), 0);
	ck_assert_int_eq(dd_throttle_limit(t, w.pid, &limit), 0);
	ck_assert_uint_eq(limit, 48 * MIB);
	held = proc_mem(w.pid);
	printf("held at 48 MiB: group usage %.1f MiB; RSS %.1f -> %.1f MiB, VmSwap %.1f MiB\n",
	       mib(usage), mib(before.rss_bytes), mib(held.rss_bytes), mib(held.swap_bytes));
	ck_assert_uint_le(usage, limit);
	if (dd_throttle_charges_move(t)) {
		ck_assert_uint_le(held.rss_anon_bytes, limit + 4 * MIB);
	} else {
		/* what it had stays charged to its old cgroup: the limit does not
		 * see it, and it stays resident */
		ck_assert_uint_ge(held.rss_anon_bytes, before.rss_anon_bytes - 4 * MIB);
		ck_assert_uint_le(usage, 4 * MIB);
		pageout_and_read_back(t, &w, addr, 96 * MIB);
	}

	/* new memory is charged to the group: it holds at the limit, the rest swaps */
	worker_alloc(&w, 96 * MIB, 3);
	grown = proc_mem(w.pid);
	ck_assert_int_eq(dd_throttle_usage(t, w.pid, &usage), 0);
	printf("allocated 96 MiB more: group usage %.1f MiB; RSS %.1f MiB (+%.1f), VmSwap %.1f "
	       "MiB\n",
	       mib(usage), mib(grown.rss_bytes), mib(grown.rss_bytes - held.rss_bytes),
	       mib(grown.swap_bytes));
	ck_assert_uint_le(usage, limit);
	ck_assert_uint_ge(grown.swap_bytes, 40 * MIB);
	ck_assert_uint_le(grown.rss_bytes, held.rss_bytes + 48 * MIB + 4 * MIB);

	/* a second hold updates the limit, both ways */
	ck_assert_int_eq(dd_throttle_hold(t, w.pid, 64 * MIB, err, sizeof(err)), 0);
	ck_assert_int_eq(dd_throttle_limit(t, w.pid, &limit), 0);
	ck_assert_uint_eq(limit, 64 * MIB);
	ck_assert_int_eq(dd_throttle_hold(t, w.pid, 32 * MIB, err, sizeof(err)), 0);
	ck_assert_int_eq(dd_throttle_limit(t, w.pid, &limit), 0);
	ck_assert_uint_eq(limit, 32 * MIB);
	ck_assert_int_eq(dd_throttle_usage(t, w.pid, &usage), 0);
	printf("limit 48 -> 64 -> 32 MiB: group usage %.1f MiB\n", mib(usage));
	ck_assert_uint_le(usage, 32 * MIB);

	ck_assert_int_eq(dd_throttle_release(t, w.pid, err, sizeof(err)), 0);
	ck_assert_str_eq(err, "");
	memcg_of(w.pid, now, sizeof(now));
	ck_assert_str_eq(now, orig);
	snprintf(group, sizeof(group), "%s/" DD_THROTTLE_GROUP "/client-%d", root, (int)w.pid);
	ck_assert(!is_dir(group));
	ck_assert_int_eq(dd_throttle_usage(t, w.pid, &usage), -ENOENT);
	ck_assert_int_eq(dd_throttle_release(t, w.pid, err, sizeof(err)), -ENOENT);
	ck_assert_uint_eq(worker_verify(&w), 0); /* all 192 MiB, swapped or not */
	dd_throttle_free(t);
	snprintf(group, sizeof(group), "%s/" DD_THROTTLE_GROUP, root);
	ck_assert(!is_dir(group));
	worker_kill(&w);
	ck_assert_int_eq(rmdir(root), 0);
}
END_TEST

START_TEST(test_throttle_ebusy)
{
	char root[256], err[512];
	uint64_t usage, limit;
	struct dd_throttle *t;
	struct worker w;
	int r;

	SKIP_IF_SWAP();
	make_test_root(root, sizeof(root), "ebusy");
	t = dd_throttle_new(root, err, sizeof(err));
	ck_assert_msg(t, "dd_throttle_new(%s): %s", root, err);
	if (dd_throttle_kind(t) != DD_THROTTLE_V1) {
		printf("SKIP %s: memory.high never refuses a limit (v2)\n", __func__);
		dd_throttle_free(t);
		return;
	}
	worker_start(&w);
	ck_assert_int_eq(dd_throttle_hold(t, w.pid, 256 * MIB, err, sizeof(err)), 0);
	worker_alloc(&w, 64 * MIB, 4); /* charged to the group: the worker is in it */
	r = dd_throttle_hold(t, w.pid, 16 * MIB, err, sizeof(err));
	ck_assert_int_eq(dd_throttle_usage(t, w.pid, &usage), 0);
	ck_assert_int_eq(dd_throttle_limit(t, w.pid, &limit), 0);
	printf("no swap, 64 MiB anonymous, limit 16 MiB: returned %d, limit %.1f MiB, usage %.1f "
	       "MiB: %s\n",
	       r, mib(limit), mib(usage), err);
	ck_assert_int_eq(r, DD_THROTTLE_RAISED);
	ck_assert_msg(strstr(err, "instead"), "%s", err);
	ck_assert_uint_ge(limit, 60 * MIB);
	ck_assert_uint_le(limit, 80 * MIB);
	ck_assert_uint_le(usage, limit);
	/* back up is fine */
	ck_assert_int_eq(dd_throttle_hold(t, w.pid, 128 * MIB, err, sizeof(err)), 0);
	ck_assert_int_eq(dd_throttle_release(t, w.pid, err, sizeof(err)), 0);
	ck_assert_uint_eq(worker_verify(&w), 0);
	dd_throttle_free(t);
	worker_kill(&w);
	ck_assert_int_eq(rmdir(root), 0);
}
END_TEST

static bool group_under_oom(const char *group)
{
	char path[600], text[256];
	FILE *f;
	size_t n;

	snprintf(path, sizeof(path), "%s/memory.oom_control", group);
	f = fopen(path, "re");
	if (!f)
		return false;
	n = fread(text, 1, sizeof(text) - 1, f);
	text[n] = '\0';
	fclose(f);
	return strstr(text, "under_oom 1") != NULL;
}

/* v1, no swap: a held process that allocates past its limit waits, and is
 * not killed; lifting the limit lets it go on. */
START_TEST(test_throttle_no_oom)
{
	char root[256], group[512], err[512];
	struct dd_throttle *t;
	struct worker w;
	uint64_t usage, end;
	bool waiting = false;

	SKIP_IF_SWAP();
	make_test_root(root, sizeof(root), "nooom");
	t = dd_throttle_new(root, err, sizeof(err));
	ck_assert_msg(t, "dd_throttle_new(%s): %s", root, err);
	if (dd_throttle_kind(t) != DD_THROTTLE_V1) {
		printf("SKIP %s: v1 only (memory.high never OOM-kills)\n", __func__);
		dd_throttle_free(t);
		return;
	}
	worker_start(&w);
	ck_assert_int_eq(dd_throttle_hold(t, w.pid, 32 * MIB, err, sizeof(err)), 0);
	snprintf(group, sizeof(group), "%s/" DD_THROTTLE_GROUP "/client-%d", root, (int)w.pid);
	worker_send(&w, 'A', 64 * MIB, 5);
	for (end = h_now_ms() + 5000; !waiting && h_now_ms() < end; h_sleep_ms(20))
		waiting = group_under_oom(group);
	ck_assert_int_eq(dd_throttle_usage(t, w.pid, &usage), 0);
	printf("no swap, 64 MiB into a 32 MiB limit: %s at %.1f MiB, alive\n",
	       waiting ? "waiting" : "NOT waiting", mib(usage));
	ck_assert(waiting);
	ck_assert_int_eq(waitpid(w.pid, NULL, WNOHANG), 0);
	ck_assert_int_eq(dd_throttle_release(t, w.pid, err, sizeof(err)), 0);
	ck_assert_uint_ne(worker_reply(&w), 0); /* the allocation finished */
	ck_assert_uint_eq(worker_verify(&w), 0);
	dd_throttle_free(t);
	worker_kill(&w);
	ck_assert_int_eq(rmdir(root), 0);
}
END_TEST

START_TEST(test_throttle_dead)
{
	char root[256], group[512], err[512];
	struct dd_throttle *t;
	struct worker w;
	pid_t pid;

	make_test_root(root, sizeof(root), "dead");
	t = dd_throttle_new(root, err, sizeof(err));
	ck_assert_msg(t, "dd_throttle_new(%s): %s", root, err);
	worker_start(&w);
	pid = w.pid;
	ck_assert_int_eq(dd_throttle_hold(t, pid, 64 * MIB, err, sizeof(err)), 0);
	snprintf(group, sizeof(group), "%s/" DD_THROTTLE_GROUP "/client-%d", root, (int)pid);
	ck_assert(is_dir(group));
	worker_kill(&w);
	ck_assert_int_eq(dd_throttle_release(t, pid, err, sizeof(err)), 0);
	ck_assert_str_eq(err, "");
	ck_assert(!is_dir(group));

	/* a zombie, too */
	worker_start(&w);
	pid = w.pid;
	ck_assert_int_eq(dd_throttle_hold(t, pid, 64 * MIB, err, sizeof(err)), 0);
	kill(pid, SIGKILL);
	{
		siginfo_t si;

		ck_assert_int_eq(waitid(P_PID, (id_t)pid, &si, WEXITED | WNOWAIT), 0);
	}
	ck_assert_int_eq(dd_throttle_release(t, pid, err, sizeof(err)), 0);
	worker_kill(&w);

	/* nobody, nonsense */
	ck_assert_int_eq(dd_throttle_hold(t, 0x3fffffff, 64 * MIB, err, sizeof(err)), -ESRCH);
	ck_assert_msg(strstr(err, "no such process"), "%s", err);
	snprintf(group, sizeof(group), "%s/" DD_THROTTLE_GROUP "/client-%d", root, 0x3fffffff);
	ck_assert(!is_dir(group));
	ck_assert_int_eq(dd_throttle_hold(t, 0, 64 * MIB, err, sizeof(err)), -EINVAL);
	ck_assert_int_eq(dd_throttle_hold(t, getpid(), 0, err, sizeof(err)), -EINVAL);
	ck_assert_int_eq(dd_throttle_release(t, getpid(), err, sizeof(err)), -ENOENT);
	dd_throttle_free(t);
	dd_throttle_free(NULL);
	ck_assert_int_eq(rmdir(root), 0);
}
END_TEST

static void move_to(const char *dir, pid_t pid)
{
	char path[512], s[24];

	snprintf(path, sizeof(path), "%s/cgroup.procs", dir);
	snprintf(s, sizeof(s), "%d", (int)pid);
	write_file(path, s);
}

START_TEST(test_throttle_leftovers)
{
	char root[256], parent[320], ga[400], gb[400], gc[400], orig_a[512], orig_dir[600],
	    now[512], err[512];
	const char *base;
	struct dd_throttle *t;
	struct worker a, b;
	bool v2;

	/* what a crashed instance leaves: a group with its origin recorded and a
	 * process in it, one without a record, one empty */
	base = memcg_base(&v2);
	make_test_root(root, sizeof(root), "left");
	snprintf(parent, sizeof(parent), "%s/" DD_THROTTLE_GROUP, root);
	ck_assert_int_eq(mkdir(parent, 0755), 0);
	if (v2) {
		snprintf(ga, sizeof(ga), "%s/cgroup.subtree_control", parent);
		write_file(ga, "+memory");
	}
	snprintf(ga, sizeof(ga), "%s/client-111", parent);
	snprintf(gb, sizeof(gb), "%s/client-222", parent);
	snprintf(gc, sizeof(gc), "%s/client-333", parent);
	ck_assert_int_eq(mkdir(ga, 0755), 0);
	ck_assert_int_eq(mkdir(gb, 0755), 0);
	ck_assert_int_eq(mkdir(gc, 0755), 0);
	worker_start(&a);
	worker_start(&b);
	memcg_of(a.pid, orig_a, sizeof(orig_a));
	snprintf(orig_dir, sizeof(orig_dir), "%s%s", base, strcmp(orig_a, "/") ? orig_a : "");
	ck_assert_int_eq(setxattr(ga, "trusted.dedupd.origin", orig_dir, strlen(orig_dir), 0), 0);
	move_to(ga, a.pid);
	move_to(gb, b.pid);
	snprintf(now, sizeof(now), "%s/%s", gb, v2 ? "memory.high" : "memory.limit_in_bytes");
	write_file(now, "67108864");

	t = dd_throttle_new(root, err, sizeof(err));
	ck_assert_msg(t, "dd_throttle_new(%s): %s", root, err);
	printf("leftovers: %s\n", err);
	ck_assert_msg(strstr(err, "3 of 3 groups removed, 2 processes moved back"), "%s", err);
	ck_assert(!is_dir(ga) && !is_dir(gb) && !is_dir(gc));
	ck_assert(is_dir(parent));
	memcg_of(a.pid, now, sizeof(now));
	ck_assert_str_eq(now, orig_a); /* where it came from */
	memcg_of(b.pid, now, sizeof(now));
	ck_assert_str_eq(now, "/"); /* no record: the hierarchy's root */
	dd_throttle_free(t);
	ck_assert(!is_dir(parent));
	worker_kill(&a);
	worker_kill(&b);

	/* nothing left: nothing to say */
	t = dd_throttle_new(root, err, sizeof(err));
	ck_assert_ptr_nonnull(t);
	ck_assert_str_eq(err, "");
	dd_throttle_free(t);
	ck_assert_int_eq(rmdir(root), 0);
}
END_TEST

START_TEST(test_throttle_new)
{
	char err[512], path[256];
	struct dd_throttle *t;
	const char *base;
	bool v2;

	base = memcg_base(&v2);
	snprintf(path, sizeof(path), "%s/" DD_THROTTLE_GROUP, base);
	if (is_dir(path)) {
		printf("SKIP %s: %s exists (a running dedupd?); not touching it\n", __func__, path);
	} else {
		t = dd_throttle_new(NULL, err, sizeof(err));
		ck_assert_msg(t, "dd_throttle_new(NULL): %s", err);
		printf("auto-detected: %s at %s, charges %s\n",
		       dd_throttle_kind(t) == DD_THROTTLE_V2 ? "v2" : "v1", dd_throttle_root(t),
		       dd_throttle_charges_move(t) ? "move" : "do not move");
		ck_assert_str_eq(dd_throttle_root(t), base);
		ck_assert_int_eq(dd_throttle_kind(t), v2 ? DD_THROTTLE_V2 : DD_THROTTLE_V1);
		ck_assert(is_dir(path));
		dd_throttle_free(t);
		ck_assert(!is_dir(path));
	}

	errno = 0;
	ck_assert_ptr_null(dd_throttle_new("/nonexistent/cgroup", err, sizeof(err)));
	ck_assert_int_eq(errno, ENOENT);
	ck_assert_msg(strstr(err, "/nonexistent/cgroup"), "%s", err);
	ck_assert_ptr_null(dd_throttle_new("/tmp", err, sizeof(err)));
	ck_assert_int_eq(errno, ENOTSUP);
	ck_assert_msg(strstr(err, "not a memory cgroup"), "%s", err);
	if (is_dir("/sys/fs/cgroup/cpu")) { /* another v1 hierarchy */
		ck_assert_ptr_null(dd_throttle_new("/sys/fs/cgroup/cpu", err, sizeof(err)));
		ck_assert_int_eq(errno, ENOTSUP);
	}
	if (!v2 && is_dir("/sys/fs/cgroup/unified")) { /* v2 without the memory controller */
		ck_assert_ptr_null(dd_throttle_new("/sys/fs/cgroup/unified", err, sizeof(err)));
		ck_assert_int_eq(errno, ENOTSUP);
		ck_assert_msg(strstr(err, "not enabled"), "%s", err);
	}
}
END_TEST

Suite *actions_suite(void)
{
	Suite *s = suite_create("actions");
	TCase *tc;

	tc = tcase_create("parse");
	tcase_add_unchecked_fixture(tc, parse_setup, parse_teardown);
	tcase_add_test(tc, test_swap_status_parse);
	tcase_add_loop_test(tc, test_swap_status_bad, 0,
			    (int)(sizeof(bad_meminfo) / sizeof(bad_meminfo[0])));
	tcase_add_test(tc, test_proc_mem_parse);
	suite_add_tcase(s, tc);

	tc = tcase_create("noswap");
	tcase_set_timeout(tc, 30);
	tcase_add_unchecked_fixture(tc, noswap_setup, throttle_teardown);
	tcase_add_test(tc, test_pageout_noswap);
	tcase_add_test(tc, test_pageout_dead);
	tcase_add_test(tc, test_pageout_bad_ranges);
	tcase_add_test(tc, test_pageout_large);
	tcase_add_test(tc, test_throttle_ebusy);
	tcase_add_test(tc, test_throttle_no_oom);
	tcase_add_test(tc, test_throttle_dead);
	tcase_add_test(tc, test_throttle_leftovers);
	tcase_add_test(tc, test_throttle_new);
	suite_add_tcase(s, tc);

	tc = tcase_create("swap");
	tcase_set_timeout(tc, 60);
	tcase_add_unchecked_fixture(tc, swap_setup, swap_teardown);
	tcase_add_test(tc, test_pageout_swap);
	tcase_add_test(tc, test_throttle_hold_release);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr;
	int failed;

	if (!h_is_root()) {
		printf("SKIP check_actions: needs root (process_madvise, cgroups, swapon)\n");
		return EXIT_SUCCESS;
	}
	runner_pid = getpid();
	atexit(zram_down); /* the swap goes even if the runner itself fails */
	signal(SIGPIPE, SIG_IGN);
	sr = srunner_create(actions_suite());
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
