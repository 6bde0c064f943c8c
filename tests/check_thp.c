// SPDX-License-Identifier: MIT
/*
 * Transparent huge pages. Two clients hold the same 16 MiB in THPs
 * (MADV_HUGEPAGE, 2 MiB aligned), in a memory cgroup whose usage is the
 * kernel's own count of what they hold.
 *  - thp = keep (the default) and no pressure: THP pages are left alone,
 *    nothing merges, the huge pages stay;
 *  - thp = split: each THP is split (process_madvise MADV_COLD over 4 KiB of
 *    it), the pages merge, and the memory really goes back: the cgroup's
 *    usage falls by both copies (the one copy left lives in dedupd's store,
 *    charged to dedupd). Unmapping 4 KiB pages of an unsplit THP
 *    would not free anything until a deferred split under pressure.
 *  - thp = split with THPs mapped page by page (their PMD split, not the
 *    folio): found through /proc/kpageflags, split and freed all the same.
 * Needs root and THP (enabled = always or madvise); says why when it skips.
 */
#include "tests/harness.h"
#include "tests/memcg.h"
#include "dedupd/lib/dedup.h"

#include <sys/mman.h>

#define MIB ((uint64_t)1 << 20)
#define LEN (16 * MIB)

static pid_t runner;

static bool thp_usable(const char *test)
{
	char buf[128];

	if (!h_is_root()) {
		printf("SKIP %s: needs root\n", test);
		return false;
	}
	if (!memcg_available()) {
		printf("SKIP %s: no cgroup v1 memory controller\n", test);
		return false;
	}
	if (!memcg_read("/sys/kernel/mm/transparent_hugepage/enabled", buf, sizeof(buf)) ||
	    strstr(buf, "[never]")) {
		printf("SKIP %s: transparent huge pages are off\n", test);
		return false;
	}
	return true;
}

/* A child: LEN of THP-backed memory, the same in every child; registered.
 * pte_mapped: each THP is then mapped page by page (mprotect of 4 KiB of it
 * splits its PMD, not the large folio), as our own activity sampling or an
 * application's mprotect leaves it; PAGEMAP_SCAN no longer calls it huge.
 * Its odd pages are then the child's own, so that merging the others leaves
 * every folio partly mapped unless it was split. */
static pid_t thp_kid(const char *cg, bool pte_mapped, int idx, int *ready_fd)
{
	int p[2];
	pid_t pid;

	ck_assert_int_eq(pipe(p), 0);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		uint8_t *raw, *m;
		int r;

		if (memcg_join(cg, 0) < 0)
			_exit(90);
		raw = mmap(NULL, LEN + 2 * MIB, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		m = (uint8_t *)(((uintptr_t)raw + 2 * MIB - 1) & ~(uintptr_t)(2 * MIB - 1));
		madvise(m, LEN, MADV_HUGEPAGE);
		for (uint64_t i = 0; i < LEN / 4096; i++)
			h_fill(m + i * 4096, pte_mapped && (i & 1) ? 1000 + idx : 77, i);
		for (uint64_t o = 0; pte_mapped && o < LEN; o += 2 * MIB) {
			if (mprotect(m + o + 4096, 4096, PROT_READ) ||
			    mprotect(m + o + 4096, 4096, PROT_READ | PROT_WRITE))
				_exit(92);
		}
		r = dedup_register(m, LEN, NULL);
		if (write(p[1], &r, sizeof(r)) != sizeof(r))
			_exit(91);
		for (;;)
			pause();
	}
	close(p[1]);
	*ready_fd = p[0];
	return pid;
}

static void run(const char *mode, bool pte_mapped, long *huge_kib_after, int64_t *sharing, int64_t *split,
		int64_t *skipped, int64_t *usage_drop)
{
	char sock[256], cg[256], set[64];
	const char *args[] = { "--no-bpf", "--set", "pressure.psi_trigger=", "--set", set,
			       "--pages-to-scan", "20000", NULL };
	pid_t d, k[2];
	uint64_t before, after;
	int fd[2], r;

	memcg_dir(cg, sizeof(cg), "dd-check-thp", runner, pte_mapped ? "pte" : mode);
	ck_assert_int_eq(memcg_make(cg, 1ULL << 30), 0);
	snprintf(set, sizeof(set), "scan.thp=%s", mode);
	h_sock_path(sock, sizeof(sock), "thp");
	setenv("DEDUPD_SOCKET", sock, 1);
	d = h_daemon_start(sock, args);
	for (int i = 0; i < 2; i++) {
		k[i] = thp_kid(cg, pte_mapped, i, &fd[i]);
		ck_assert_int_eq(read(fd[i], &r, sizeof(r)), (ssize_t)sizeof(r));
		ck_assert_int_eq(r, 0);
		close(fd[i]);
	}
	before = memcg_u64(cg, "memory.usage_in_bytes");
	printf("%s: AnonHugePages before: %ld + %ld KiB\n", mode,
	       h_smaps_kib(k[0], "AnonHugePages"), h_smaps_kib(k[1], "AnonHugePages"));
	if (!strcmp(mode, "split"))
		h_wait_stat(sock, "pages_sharing", LEN / 4096 / (pte_mapped ? 2 : 1), false, 20000);
	else
		h_wait_stat(sock, "full_scans", 4, true, 20000);
	h_sleep_ms(300);
	after = memcg_u64(cg, "memory.usage_in_bytes");
	*huge_kib_after = h_smaps_kib(k[0], "AnonHugePages") + h_smaps_kib(k[1], "AnonHugePages");
	*sharing = h_stat(sock, "pages_sharing");
	*split = h_stat(sock, "thp_split");
	*skipped = h_stat(sock, "thp_pages_skipped");
	*usage_drop = (int64_t)before - (int64_t)after;
	printf("%s: AnonHugePages after %ld KiB, pages_sharing %lld, thp_split %lld, "
	       "thp_pages_skipped %lld, cgroup usage %llu -> %llu KiB (%lld KiB freed)\n", mode,
	       *huge_kib_after, (long long)*sharing, (long long)*split, (long long)*skipped,
	       (unsigned long long)before / 1024, (unsigned long long)after / 1024,
	       (long long)*usage_drop / 1024);
	for (int i = 0; i < 2; i++) {
		kill(k[i], SIGKILL);
		waitpid(k[i], NULL, 0);
	}
	h_daemon_stop(d, SIGTERM);
	memcg_remove(cg);
}

START_TEST(test_thp_keep)
{
	long huge;
	int64_t sharing, split, skipped, drop;

	if (!thp_usable(__func__))
		return;
	run("keep", false, &huge, &sharing, &split, &skipped, &drop);
	if (huge <= 0) {
		printf("SKIP %s: the kernel gave no huge pages\n", __func__);
		return;
	}
	ck_assert_int_eq(sharing, 0);
	ck_assert_int_eq(split, 0);
	ck_assert_int_gt(skipped, 0);
	/* What the kernel made huge stays huge (it may not give every
	 * process THPs: compaction). */
	ck_assert_int_ge(huge, 12 * 1024);
}
END_TEST

START_TEST(test_thp_split_frees_memory)
{
	long huge;
	int64_t sharing, split, skipped, drop;

	if (!thp_usable(__func__))
		return;
	run("split", false, &huge, &sharing, &split, &skipped, &drop);
	ck_assert_int_eq(sharing, LEN / 4096);
	ck_assert_int_ge(split, 8); /* at least one client's THPs */
	ck_assert_int_eq(huge, 0);
	/* Both clients' pages now map dedupd's store (one copy, charged to
	 * dedupd), so both copies left the clients' cgroup: the THPs were really
	 * freed. An unsplit THP with 4 KiB unmapped stays charged whole. */
	ck_assert_msg(drop >= (int64_t)(28 * MIB), "only %lld KiB freed", (long long)drop / 1024);
}
END_TEST

/* THPs mapped page by page (PMD split, folio not): still found, split and
 * freed; a partly mapped large folio would stay charged until the kernel's
 * deferred split runs under memory pressure. */
START_TEST(test_thp_split_pte_mapped)
{
	long huge;
	int64_t sharing, split, skipped, drop;

	if (!thp_usable(__func__))
		return;
	run("split", true, &huge, &sharing, &split, &skipped, &drop);
	ck_assert_int_eq(sharing, LEN / 4096 / 2);
	ck_assert_int_ge(split, 8);
	/* Half of each client's pages left its cgroup. */
	ck_assert_msg(drop >= (int64_t)(12 * MIB), "only %lld KiB freed", (long long)drop / 1024);
}
END_TEST

static void teardown(void)
{
	char cg[256];

	memcg_dir(cg, sizeof(cg), "dd-check-thp", runner, "keep");
	memcg_remove(cg);
	memcg_dir(cg, sizeof(cg), "dd-check-thp", runner, "split");
	memcg_remove(cg);
	memcg_dir(cg, sizeof(cg), "dd-check-thp", runner, "pte");
	memcg_remove(cg);
}

static Suite *thp_suite(void)
{
	Suite *s = suite_create("thp");
	TCase *tc = tcase_create("thp");

	tcase_set_timeout(tc, 60);
	tcase_add_unchecked_fixture(tc, NULL, teardown);
	tcase_add_test(tc, test_thp_keep);
	tcase_add_test(tc, test_thp_split_frees_memory);
	tcase_add_test(tc, test_thp_split_pte_mapped);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(thp_suite());
	int failed;

	setvbuf(stdout, NULL, _IONBF, 0);
	runner = getpid();
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
