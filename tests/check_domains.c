// SPDX-License-Identifier: MIT
/*
 * Share domains (DESIGN.md §5), checked on physical pages: two clients with
 * identical memory share page frames (same PFN in /proc/PID/pagemap) only
 * when they are in the same domain. Cases: the same user (default policy
 * uid: shared), two users (never shared), two different salts (never), the
 * same salt (shared), policy client (never). A negative case waits three
 * full scans, so the pages were seen, hashed and matched, and still no frame
 * is common. Needs root (PFNs, and becoming uid 65534).
 */
#include "tests/harness.h"
#include "dedupd/lib/dedup.h"
#include "dedupd/common/uffd.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <grp.h>
#include <sys/mman.h>
#include <sys/prctl.h>

#define NPAGES 256
#define NOBODY 65534

struct kid {
	pid_t pid;
	int ready[2]; /* the child writes its struct hello when registered */
	uint64_t addr;
};

struct hello {
	int r; /* dedup_register()'s result */
	uint64_t addr;
};

static void kid_main(int wfd, uid_t uid, uint32_t domain, uint64_t salt)
{
	struct dedup_opts o = { .domain = domain, .salt = salt };
	struct hello h;
	uint8_t *m;

	if (uid && (setgroups(0, NULL) < 0 || setgid(uid) < 0 || setuid(uid) < 0))
		_exit(90);
	/* setuid() made us non-dumpable, which locks our own /proc files (the
	 * agent reads /proc/self/pagemap); a user's own process started
	 * normally is dumpable. */
	prctl(PR_SET_DUMPABLE, 1);
	m = mmap(NULL, NPAGES * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	for (uint64_t i = 0; i < NPAGES; i++)
		h_fill(m + i * 4096, 4242, i); /* the same in every child */
	h.r = dedup_register(m, NPAGES * 4096, &o);
	h.addr = (uintptr_t)m;
	if (h.r)
		fprintf(stderr, "register as uid %u: %s\n", (unsigned)uid, dedup_strerror());
	if (write(wfd, &h, sizeof(h)) != sizeof(h))
		_exit(91);
	for (;;)
		pause();
}

static void kid_start(struct kid *k, uid_t uid, uint32_t domain, uint64_t salt)
{
	struct hello h = { .r = -1 };

	ck_assert_int_eq(pipe(k->ready), 0);
	k->pid = fork();
	ck_assert_int_ge(k->pid, 0);
	if (k->pid == 0)
		kid_main(k->ready[1], uid, domain, salt);
	ck_assert_int_eq(read(k->ready[0], &h, sizeof(h)), (ssize_t)sizeof(h));
	ck_assert_msg(h.r == 0, "registration failed: %d", h.r);
	k->addr = h.addr;
	close(k->ready[0]);
	close(k->ready[1]);
}

static void fault_in(pid_t pid, uint64_t addr)
{
	static uint8_t buf[NPAGES * 4096];
	char path[64];
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/mem", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(pread(fd, buf, sizeof(buf), (off_t)addr), (ssize_t)sizeof(buf));
	close(fd);
	for (uint64_t i = 0; i < NPAGES; i++) {
		uint8_t want[4096];

		h_fill(want, 4242, i);
		ck_assert_msg(!memcmp(want, buf + i * 4096, 4096), "page %llu changed",
			      (unsigned long long)i);
	}
}

/* How many of the NPAGES pages the two children map to the same frame. */
static int common_frames(pid_t p1, uint64_t a1, pid_t p2, uint64_t a2)
{
	uint64_t pm1[NPAGES], pm2[NPAGES];
	char path[64];
	int fd, same = 0;

	/* Merged pages are mapped lazily: read them (as the process would) so
	 * that their page table entries exist. */
	fault_in(p1, a1);
	fault_in(p2, a2);
	snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)p1);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	ck_assert_int_eq(pread(fd, pm1, sizeof(pm1), (off_t)(a1 / 4096 * 8)), (ssize_t)sizeof(pm1));
	close(fd);
	snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)p2);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	ck_assert_int_eq(pread(fd, pm2, sizeof(pm2), (off_t)(a2 / 4096 * 8)), (ssize_t)sizeof(pm2));
	close(fd);
	for (int i = 0; i < NPAGES; i++) {
		uint64_t f1 = pm1[i] & DD_PM_PFN_MASK, f2 = pm2[i] & DD_PM_PFN_MASK;

		same += (pm1[i] >> 63) && (pm2[i] >> 63) && f1 && f1 == f2;
	}
	return same;
}

/* The sum of fn over the descriptors of process pid (fd: its number as text,
 * link: what it names). */
static int fd_sum(pid_t pid, int (*fn)(pid_t pid, const char *fd, const char *link))
{
	char dir[64], path[512], link[256];
	struct dirent *e;
	int n = 0;
	DIR *d;

	snprintf(dir, sizeof(dir), "/proc/%d/fd", (int)pid);
	d = opendir(dir);
	ck_assert_ptr_nonnull(d);
	while ((e = readdir(d))) {
		ssize_t len;

		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		len = readlink(path, link, sizeof(link) - 1);
		if (len <= 0)
			continue;
		link[len] = 0;
		n += fn(pid, e->d_name, link);
	}
	closedir(d);
	return n;
}

/* A store descriptor must be read-only, of a file only its owner may open
 * for writing (0600), so that a client cannot write into pages it shares
 * with others. 1 for a store descriptor, else 0. */
static int store_fd_read_only(pid_t pid, const char *fd, const char *link)
{
	char path[512], line[128];
	unsigned flags = ~0u;
	struct stat sb;
	FILE *f;

	if (!strstr(link, "dedupd-store"))
		return 0;
	snprintf(path, sizeof(path), "/proc/%d/fd/%s", (int)pid, fd);
	ck_assert_int_eq(stat(path, &sb), 0);
	ck_assert_msg((sb.st_mode & 0777) == 0600, "%s: mode %o", link, sb.st_mode & 0777);
	snprintf(path, sizeof(path), "/proc/%d/fdinfo/%s", (int)pid, fd);
	f = fopen(path, "re");
	ck_assert_ptr_nonnull(f);
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "flags: %o", &flags) == 1)
			break;
	fclose(f);
	ck_assert_msg((flags & O_ACCMODE) == O_RDONLY, "%s held with flags %o", link, flags);
	return 1;
}

/* The store descriptors the agent of pid holds, each checked. Their number. */
static int store_fds_read_only(pid_t pid)
{
	return fd_sum(pid, store_fd_read_only);
}

static int is_uffd(pid_t pid, const char *fd, const char *link)
{
	(void)pid;
	(void)fd;
	return !strcmp(link, "anon_inode:[userfaultfd]");
}

/* How many userfaultfds process pid holds: its agent's copy, unless the
 * uffd is user-mode-only (the agent then maps runs the plain way). */
static int uffd_fds(pid_t pid)
{
	return fd_sum(pid, is_uffd);
}

/*
 * Two children with identical pages in the given domains; the number of
 * frames they share after the daemon has scanned them three times, or after
 * it merged everything (expect_shared).
 */
static int run_pair(const char *tag, uid_t uid2, uint32_t dom1, uint64_t salt1, uint32_t dom2,
		    uint64_t salt2, bool expect_shared)
{
	const char *args[] = { "--no-bpf", "--set", "pressure.psi_trigger=", "--set",
			       "daemon.socket_mode=0666", "--pages-to-scan", "10000", NULL };
	struct kid k1, k2;
	char sock[256];
	int64_t scans0;
	uint64_t a1, a2;
	pid_t d;
	int same;

	h_sock_path(sock, sizeof(sock), tag);
	chmod(h_build(), 0755);
	setenv("DEDUPD_SOCKET", sock, 1);
	setenv("DEDUP_UFFD_USER_MODE_ONLY", "1", 1); /* uid 65534 may not catch kernel faults */
	d = h_daemon_start(sock, args);
	kid_start(&k1, 0, dom1, salt1);
	kid_start(&k2, uid2, dom2, salt2);
	scans0 = h_stat(sock, "full_scans");
	if (expect_shared)
		h_wait_stat(sock, "pages_sharing", NPAGES, true, 20000);
	else
		h_wait_stat(sock, "full_scans", scans0 + 3, true, 20000);
	a1 = k1.addr;
	a2 = k2.addr;
	same = a1 && a2 ? common_frames(k1.pid, a1, k2.pid, a2) : -1;
	if (expect_shared) /* both agents were sent the store */
		ck_assert_int_eq(store_fds_read_only(k1.pid) + store_fds_read_only(k2.pid), 2);
	if (expect_shared) { /* root's uffd sees kernel faults; uid 65534's does not */
		ck_assert_int_eq(uffd_fds(k1.pid), 1);
		ck_assert_int_eq(uffd_fds(k2.pid), (uid2 ? 0 : 1));
	}
	printf("%s: %d of %d pages on common frames (pages_sharing %lld, merges %lld)\n", tag,
	       same, NPAGES, (long long)h_stat(sock, "pages_sharing"),
	       (long long)h_stat(sock, "merges"));
	kill(k1.pid, SIGKILL);
	kill(k2.pid, SIGKILL);
	waitpid(k1.pid, NULL, 0);
	waitpid(k2.pid, NULL, 0);
	h_daemon_stop(d, SIGTERM);
	ck_assert_msg(a1 && a2, "buffers not found in the children's maps");
	return same;
}

START_TEST(test_same_user_shares)
{
	H_SKIP_UNLESS_ROOT();
	ck_assert_int_eq(run_pair("dom-uid", 0, DEDUP_DOMAIN_DEFAULT, 0, DEDUP_DOMAIN_DEFAULT, 0,
				  true), NPAGES);
}
END_TEST

START_TEST(test_other_user_never_shares)
{
	H_SKIP_UNLESS_ROOT();
	ck_assert_int_eq(run_pair("dom-users", NOBODY, DEDUP_DOMAIN_DEFAULT, 0,
				  DEDUP_DOMAIN_DEFAULT, 0, false), 0);
}
END_TEST

START_TEST(test_salts)
{
	H_SKIP_UNLESS_ROOT();
	ck_assert_int_eq(run_pair("dom-salt2", 0, DEDUP_DOMAIN_SALT, 1, DEDUP_DOMAIN_SALT, 2,
				  false), 0);
	ck_assert_int_eq(run_pair("dom-salt1", 0, DEDUP_DOMAIN_SALT, 7, DEDUP_DOMAIN_SALT, 7,
				  true), NPAGES);
}
END_TEST

/* Domain "all", opted into by root and by uid 65534: they share, and the
 * unprivileged one holds the store read-only (store_fds_read_only()). */
START_TEST(test_all_domain_across_users)
{
	H_SKIP_UNLESS_ROOT();
	ck_assert_int_eq(run_pair("dom-all", NOBODY, DEDUP_DOMAIN_ALL, 0, DEDUP_DOMAIN_ALL, 0,
				  true), NPAGES);
}
END_TEST

START_TEST(test_client_domain_never_shares)
{
	H_SKIP_UNLESS_ROOT();
	ck_assert_int_eq(run_pair("dom-client", 0, DEDUP_DOMAIN_CLIENT, 0, DEDUP_DOMAIN_CLIENT, 0,
				  false), 0);
}
END_TEST

static Suite *domains_suite(void)
{
	Suite *s = suite_create("domains");
	TCase *tc = tcase_create("pfn");

	tcase_set_timeout(tc, 90);
	tcase_add_test(tc, test_same_user_shares);
	tcase_add_test(tc, test_other_user_never_shares);
	tcase_add_test(tc, test_salts);
	tcase_add_test(tc, test_client_domain_never_shares);
	tcase_add_test(tc, test_all_domain_across_users);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(domains_suite());

	setvbuf(stdout, NULL, _IONBF, 0);
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
