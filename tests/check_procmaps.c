// SPDX-License-Identifier: MIT
/*
 * Unit tests for scanner/procmaps.c against this process's own memory through
 * /proc/self/maps, and against fake maps files: which ranges may be registered
 * (private anonymous read-write memory, dedupd store mappings) and which are
 * refused with which errno and message (holes, shared, read-only, file-backed,
 * locked memory); VMA counting and vm.max_map_count.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "scanner/procmaps.h"

Suite *procmaps_suite(void);

#define PG 4096UL
#define SELF "/proc/self/maps"

static char err[1024];

static int check(const void *addr, size_t len)
{
	memset(err, 0, sizeof(err));
	return dd_maps_check_range(SELF, (uintptr_t)addr, len, err, sizeof(err));
}

static char *map_anon(size_t pages, int prot, int flags)
{
	char *p = mmap(NULL, pages * PG, prot, flags | MAP_ANONYMOUS, -1, 0);

	ck_assert_ptr_ne(p, MAP_FAILED);
	return p;
}

/* err must name addr the way the module prints addresses (%#llx). */
static void assert_err_names(const void *addr)
{
	char hex[32];

	snprintf(hex, sizeof(hex), "%#llx", (unsigned long long)(uintptr_t)addr);
	ck_assert_msg(strstr(err, hex), "message '%s' does not name %s", err, hex);
}

/* How many lines of /proc/self/maps overlap [p, p+len). */
static int vmas_over(const void *p, size_t len)
{
	unsigned long long lo, hi, a = (uintptr_t)p, e = a + len;
	char line[4096];
	FILE *f = fopen(SELF, "re");
	int n = 0;

	ck_assert_ptr_nonnull(f);
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "%llx-%llx", &lo, &hi) == 2 && lo < e && hi > a)
			n++;
	fclose(f);
	return n;
}

START_TEST(test_private_anon_ok)
{
	char *p = map_anon(4, PROT_READ | PROT_WRITE, MAP_PRIVATE);

	ck_assert_int_eq(check(p, 4 * PG), 0);
	ck_assert_int_eq(check(p + PG, PG), 0);
	ck_assert_int_eq(check(p + 3 * PG, PG), 0);
	/* Not yet touched, then touched: the same answer. */
	memset(p, 1, 4 * PG);
	ck_assert_int_eq(check(p, 4 * PG), 0);
	munmap(p, 4 * PG);
}
END_TEST

START_TEST(test_hole)
{
	char *p = map_anon(3, PROT_READ | PROT_WRITE, MAP_PRIVATE);

	ck_assert_int_eq(munmap(p + PG, PG), 0);
	ck_assert_int_eq(check(p, 3 * PG), -EFAULT);
	assert_err_names(p + PG);
	/* Each side alone is fine. */
	ck_assert_int_eq(check(p, PG), 0);
	ck_assert_int_eq(check(p + 2 * PG, PG), 0);
	/* The hole alone, and a range starting in it. */
	ck_assert_int_eq(check(p + PG, PG), -EFAULT);
	assert_err_names(p + PG);
	ck_assert_int_eq(check(p + PG, 2 * PG), -EFAULT);
	assert_err_names(p + PG);
	munmap(p, PG);
	munmap(p + 2 * PG, PG);
}
END_TEST

START_TEST(test_runs_past_the_end)
{
	char *p = map_anon(3, PROT_READ | PROT_WRITE, MAP_PRIVATE);

	ck_assert_int_eq(munmap(p + 2 * PG, PG), 0);
	ck_assert_int_eq(check(p, 3 * PG), -EFAULT);
	assert_err_names(p + 2 * PG);
	munmap(p, 2 * PG);

	/* Far above anything mapped (x86-64 user space ends at 2^47). */
	ck_assert_int_eq(check((void *)(uintptr_t)0x7ffffffff000ULL, PG), -EFAULT);
	/* The first page is never mapped. */
	ck_assert_int_eq(check(NULL, PG), -EFAULT);
}
END_TEST

START_TEST(test_shared_anon)
{
	char *p = map_anon(2, PROT_READ | PROT_WRITE, MAP_SHARED);

	ck_assert_int_eq(check(p, 2 * PG), -EINVAL);
	ck_assert_msg(strstr(err, "shared"), "message '%s' does not say shared", err);
	assert_err_names(p);
	munmap(p, 2 * PG);
}
END_TEST

START_TEST(test_read_only)
{
	char *p = map_anon(2, PROT_READ, MAP_PRIVATE);
	char *q = map_anon(1, PROT_NONE, MAP_PRIVATE);

	ck_assert_int_eq(check(p, 2 * PG), -EINVAL);
	ck_assert_msg(strstr(err, "read-write"), "message '%s' does not say read-write", err);
	assert_err_names(p);
	ck_assert_int_eq(check(q, PG), -EINVAL);
	munmap(p, 2 * PG);
	munmap(q, PG);
}
END_TEST

START_TEST(test_file_mapping)
{
	char path[] = "/tmp/check_procmaps-XXXXXX";
	int fd = mkstemp(path);
	char *p;

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, 2 * PG), 0);
	p = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	ck_assert_ptr_ne(p, MAP_FAILED);
	p[0] = 1; /* a private copy of the first page: still a file mapping */
	ck_assert_int_eq(check(p, 2 * PG), -EINVAL);
	ck_assert_msg(strstr(err, path), "message '%s' does not name %s", err, path);
	ck_assert_int_eq(check(p, PG), -EINVAL);
	munmap(p, 2 * PG);
	close(fd);
	unlink(path);
}
END_TEST

START_TEST(test_memfd_store_mapping)
{
	int store = memfd_create("dedupd-store-7", MFD_CLOEXEC);
	int other = memfd_create("some-other-memfd", MFD_CLOEXEC);
	char *p, *q;

	ck_assert_int_ge(store, 0);
	ck_assert_int_ge(other, 0);
	ck_assert_int_eq(ftruncate(store, 2 * PG), 0);
	ck_assert_int_eq(ftruncate(other, 2 * PG), 0);
	/* A private mapping of a store (a page dedupd already merged) is fine. */
	p = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, store, 0);
	ck_assert_ptr_ne(p, MAP_FAILED);
	ck_assert_int_eq(check(p, 2 * PG), 0);
	/* Any other memfd is a file like any other. */
	q = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, other, 0);
	ck_assert_ptr_ne(q, MAP_FAILED);
	ck_assert_int_eq(check(q, 2 * PG), -EINVAL);
	ck_assert_msg(strstr(err, "some-other-memfd"), "message '%s' does not name the file", err);
	munmap(p, 2 * PG);
	munmap(q, 2 * PG);
	close(store);
	close(other);
}
END_TEST

START_TEST(test_adjacent_vmas)
{
	char *p = map_anon(5, PROT_READ | PROT_WRITE, MAP_PRIVATE);

	/* mprotect to read-only and back: the kernel merges the VMAs again,
	 * and the answer follows the current protection. */
	ck_assert_int_eq(mprotect(p + 2 * PG, PG, PROT_READ), 0);
	ck_assert_int_eq(vmas_over(p, 5 * PG), 3);
	ck_assert_int_eq(check(p, 5 * PG), -EINVAL);
	assert_err_names(p + 2 * PG);
	ck_assert_int_eq(check(p, 2 * PG), 0);
	ck_assert_int_eq(mprotect(p + 2 * PG, PG, PROT_READ | PROT_WRITE), 0);
	ck_assert_int_eq(check(p, 5 * PG), 0);

	/* Two rw VMAs side by side that the kernel keeps apart (rw- next to rwx,
	 * and a MADV_DONTFORK page): the range spans them and is accepted. */
	ck_assert_int_eq(mprotect(p + 3 * PG, 2 * PG, PROT_READ | PROT_WRITE | PROT_EXEC), 0);
	ck_assert_int_eq(vmas_over(p, 5 * PG), 2);
	ck_assert_int_eq(check(p, 5 * PG), 0);
	ck_assert_int_eq(check(p + 2 * PG, 2 * PG), 0);
	ck_assert_int_eq(madvise(p + PG, PG, MADV_DONTFORK), 0);
	ck_assert_int_eq(vmas_over(p, 5 * PG), 4);
	ck_assert_int_eq(check(p, 5 * PG), 0);
	munmap(p, 5 * PG);
}
END_TEST

START_TEST(test_mlocked_refused)
{
	char *p = map_anon(2, PROT_READ | PROT_WRITE, MAP_PRIVATE);

	/* procmaps.h: locked memory is refused with -EINVAL (DESIGN.md §4:
	 * mlocked ranges are never merged). */
	/* The system call itself: ASan's mlock() interceptor does nothing. */
	ck_assert_int_eq(syscall(SYS_mlock, p, 2 * PG), 0);
	ck_assert_msg(check(p, 2 * PG) == -EINVAL,
		      "an mlocked range was accepted (procmaps.h promises -EINVAL)");
	syscall(SYS_munlock, p, 2 * PG);
	munmap(p, 2 * PG);
}
END_TEST

START_TEST(test_wrapping_range_refused)
{
	char *p = map_anon(1, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	uint64_t len = (uint64_t)0 - (uintptr_t)p + PG; /* addr + len wraps to PG */

	memset(err, 0, sizeof(err));
	ck_assert_msg(dd_maps_check_range(SELF, (uintptr_t)p, len, err, sizeof(err)) < 0,
		      "range %p+%#llx, which wraps past 2^64, was accepted", (void *)p,
		      (unsigned long long)len);
	munmap(p, PG);
}
END_TEST

/* ---- fake maps files ---------------------------------------------------- */

static char fake[64];

static void write_fake(const char *text)
{
	int fd;

	strcpy(fake, "/tmp/check_procmaps-fake-XXXXXX");
	fd = mkstemp(fake);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
}

static int fcheck(uint64_t addr, uint64_t len)
{
	memset(err, 0, sizeof(err));
	return dd_maps_check_range(fake, addr, len, err, sizeof(err));
}

START_TEST(test_fake_maps)
{
	write_fake("00400000-00401000 r-xp 00000000 08:01 1234   /usr/bin/app\n"
		   "10000000-10004000 rw-p 00000000 00:00 0 \n"
		   "10004000-10006000 rw-p 00000000 00:00 0\n"
		   "10008000-10009000 rw-p 00000000 00:00 0                          [heap]\n"
		   "20000000-20002000 rw-s 00000000 00:01 99  /dev/zero (deleted)\n"
		   "30000000-30001000 rw-p 00000000 08:01 777  /tmp/a file with spaces\n"
		   "40000000-40002000 rw-p 00003000 00:01 5    /memfd:dedupd-store-3 (deleted)\n"
		   "40002000-40003000 rw-p 00000000 00:00 0\n");
	ck_assert_int_eq(fcheck(0x10000000, 0x6000), 0);
	ck_assert_int_eq(fcheck(0x10005000, 0x1000), 0);
	ck_assert_int_eq(fcheck(0x10000000, 0x7000), -EFAULT);
	ck_assert_msg(strstr(err, "0x10006000"), "'%s'", err);
	ck_assert_int_eq(fcheck(0x10008000, 0x1000), 0); /* [heap] is anonymous */
	ck_assert_int_eq(fcheck(0x10008000, 0x2000), -EFAULT);
	ck_assert_msg(strstr(err, "0x10009000"), "'%s'", err);
	ck_assert_int_eq(fcheck(0x00400000, 0x1000), -EINVAL);
	ck_assert_int_eq(fcheck(0x20000000, 0x1000), -EINVAL);
	ck_assert_msg(strstr(err, "shared"), "'%s'", err);
	ck_assert_int_eq(fcheck(0x30000000, 0x1000), -EINVAL);
	ck_assert_msg(strstr(err, "/tmp/a file with spaces"), "'%s'", err);
	ck_assert_int_eq(fcheck(0x40000000, 0x3000), 0);
	ck_assert_int_eq(fcheck(0x50000000, 0x1000), -EFAULT);
	ck_assert_msg(strstr(err, "0x50000000"), "'%s'", err);
	unlink(fake);

	ck_assert_int_eq(dd_maps_check_range("/nonexistent/maps", 0x1000, 0x1000, err, sizeof(err)),
			 -ENOENT);
	ck_assert_msg(strstr(err, "/nonexistent/maps"), "'%s'", err);
	ck_assert_int_eq(dd_maps_count("/nonexistent/maps"), -ENOENT);
}
END_TEST

/* A file name longer than the line buffer must not be read as a line of its
 * own: a client controls its file names and could forge a mapping (found by
 * fuzzing, tests/fuzz/regress/procmaps/long_path_forges_vma). */
START_TEST(test_long_path_forges_nothing)
{
	static char text[12000];
	int n;

	n = snprintf(text, sizeof(text), "10000000-10001000 rw-s 00000000 00:01 9   /tmp/");
	/* The forged line starts where a 4096-byte fgets() buffer ends. */
	memset(text + n, 'a', 4095 - (size_t)n);
	snprintf(text + 4095, sizeof(text) - 4095, "60000000-60001000 rw-p 00000000 00:00 0\n");
	write_fake(text);
	ck_assert_int_eq(fcheck(0x60000000, 0x1000), -EFAULT);
	ck_assert_int_eq(fcheck(0x10000000, 0x1000), -EINVAL);
	unlink(fake);
}
END_TEST

/* ---- reading every VMA ------------------------------------------------------ */

static long count_lines(const char *path)
{
	FILE *f = fopen(path, "re");
	long n = 0;
	int c;

	ck_assert_ptr_nonnull(f);
	while ((c = fgetc(f)) != EOF)
		n += c == '\n';
	fclose(f);
	return n;
}


START_TEST(test_read_fake)
{
	static char text[12000];
	struct dd_vma *v = NULL;
	size_t cap = 0;
	long n;
	int k;

	write_fake("00400000-00401000 r-xp 00000000 08:01 1234   /usr/bin/app\n"
		   "not a mapping at all\n"
		   "10000000-10004000 rw-p 00000000 00:00 0 \n"
		   "10005000-10004000 rw-p 00000000 00:00 0\n" /* ends before it starts */
		   "30000000-30001000 rw-p 0000a000 08:01 777  /tmp/a file with spaces\n"
		   "40000000-40002000 rw-p 00003000 00:01 5    /memfd:dedupd-store-3 (deleted)\n"
		   "7fffffffe000-7ffffffff000 rw-p 00000000 00:00 0   [stack]\n"
		   "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0  [vsyscall]\n"
		   "1ffffffffff600000-1ffffffffff601000 --xp 00000000 00:00 0\n"); /* 17 digits */
	n = dd_maps_read(fake, &v, &cap);
	ck_assert_int_eq(n, 6);
	ck_assert_uint_ge(cap, 6);
	ck_assert_uint_eq(v[0].start, 0x400000);
	ck_assert_uint_eq(v[0].end, 0x401000);
	ck_assert_uint_eq(v[0].ino, 1234);
	ck_assert_uint_eq(v[1].start, 0x10000000);
	ck_assert_uint_eq(v[1].end, 0x10004000);
	ck_assert_uint_eq(v[1].ino, 0);
	ck_assert_uint_eq(v[2].off, 0xa000);
	ck_assert_uint_eq(v[2].ino, 777);
	ck_assert_uint_eq(v[3].start, 0x40000000);
	ck_assert_uint_eq(v[3].off, 0x3000);
	ck_assert_uint_eq(v[3].ino, 5);
	ck_assert_uint_eq(v[4].start, 0x7fffffffe000ULL);
	ck_assert_uint_eq(v[5].end, 0xffffffffff601000ULL);
	unlink(fake);

	/* A file name longer than the line buffer forges no mapping. */
	k = snprintf(text, sizeof(text), "10000000-10001000 rw-p 00000000 00:01 9   /tmp/");
	memset(text + k, 'a', 4095 - (size_t)k);
	snprintf(text + 4095, sizeof(text) - 4095, "60000000-60001000 rw-p 00000000 00:00 0\n");
	write_fake(text);
	ck_assert_int_eq(dd_maps_read(fake, &v, &cap), 1);
	ck_assert_uint_eq(v[0].start, 0x10000000);
	ck_assert_uint_eq(v[0].ino, 9);
	unlink(fake);
	ck_assert_int_eq(dd_maps_read("/nonexistent/maps", &v, &cap), -ENOENT);
	free(v);
}
END_TEST

/* This process's own maps: an anonymous mapping, and a memfd mapped from its
 * third page on, found with their ranges, inode and offset, in order; and a
 * copy of the file (the live one changes under ASan between two reads) gives
 * as many VMAs as it has lines. */
START_TEST(test_read_self)
{
	int fd = memfd_create("check_procmaps-read", MFD_CLOEXEC);
	struct dd_vma *v = NULL;
	size_t cap = 0;
	struct stat sb;
	char *a, *m;
	long n;
	bool seen_a = false, seen_m = false;

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, 8 * PG), 0);
	ck_assert_int_eq(fstat(fd, &sb), 0);
	a = map_anon(3, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	m = mmap(NULL, 4 * PG, PROT_READ, MAP_PRIVATE, fd, 2 * PG);
	ck_assert_ptr_ne(m, MAP_FAILED);
	{
		static char text[1 << 20];
		FILE *f = fopen(SELF, "re");
		size_t len;

		ck_assert_ptr_nonnull(f);
		len = fread(text, 1, sizeof(text) - 1, f);
		fclose(f);
		text[len] = 0;
		write_fake(text);
		ck_assert_int_eq(dd_maps_read(fake, &v, &cap), count_lines(fake));
		unlink(fake);
	}
	n = dd_maps_read(SELF, &v, &cap);
	ck_assert_int_gt(n, 0);
	for (long i = 0; i < n; i++) {
		if (i)
			ck_assert_uint_ge(v[i].start, v[i - 1].end);
		if (v[i].start <= (uintptr_t)a && (uintptr_t)a < v[i].end) {
			ck_assert_uint_eq(v[i].ino, 0);
			seen_a = true;
		}
		if (v[i].start == (uintptr_t)m) {
			ck_assert_uint_eq(v[i].end, (uintptr_t)m + 4 * PG);
			ck_assert_uint_eq(v[i].ino, sb.st_ino);
			ck_assert_uint_eq(v[i].off, 2 * PG);
			seen_m = true;
		}
	}
	ck_assert(seen_a && seen_m);
	munmap(a, 3 * PG);
	munmap(m, 4 * PG);
	close(fd);
	free(v);
}
END_TEST

/* ---- counts ---------------------------------------------------------------- */


START_TEST(test_count)
{
	long before, after, lines;
	int fd = memfd_create("check_procmaps-count", MFD_CLOEXEC);
	void *p;

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, PG), 0);
	before = dd_maps_count(SELF);
	ck_assert_int_gt(before, 0);
	lines = count_lines(SELF);
	ck_assert_int_eq(dd_maps_count(SELF), lines);
	ck_assert_int_eq(dd_maps_count(SELF), before);
	/* A mapping of a fresh file merges with nothing: exactly one more VMA. */
	p = mmap(NULL, PG, PROT_READ, MAP_SHARED, fd, 0);
	ck_assert_ptr_ne(p, MAP_FAILED);
	after = dd_maps_count(SELF);
	ck_assert_int_eq(after, before + 1);
	munmap(p, PG);
	ck_assert_int_eq(dd_maps_count(SELF), before);
	close(fd);

	write_fake("1000-2000 rw-p 00000000 00:00 0\n3000-4000 rw-p 00000000 00:00 0\n");
	ck_assert_int_eq(dd_maps_count(fake), 2);
	unlink(fake);
}
END_TEST

START_TEST(test_max_map_count)
{
	FILE *f = fopen("/proc/sys/vm/max_map_count", "re");
	long v = -1;

	ck_assert_ptr_nonnull(f);
	ck_assert_int_eq(fscanf(f, "%ld", &v), 1);
	fclose(f);
	ck_assert_int_gt(v, 0);
	ck_assert_int_eq(dd_max_map_count(), v);
}
END_TEST

Suite *procmaps_suite(void)
{
	Suite *s = suite_create("procmaps");
	TCase *tc;

	tc = tcase_create("check_range");
	tcase_add_test(tc, test_private_anon_ok);
	tcase_add_test(tc, test_hole);
	tcase_add_test(tc, test_runs_past_the_end);
	tcase_add_test(tc, test_shared_anon);
	tcase_add_test(tc, test_read_only);
	tcase_add_test(tc, test_file_mapping);
	tcase_add_test(tc, test_memfd_store_mapping);
	tcase_add_test(tc, test_adjacent_vmas);
	tcase_add_test(tc, test_mlocked_refused);
	tcase_add_test(tc, test_wrapping_range_refused);
	tcase_add_test(tc, test_fake_maps);
	tcase_add_test(tc, test_long_path_forges_nothing);
	suite_add_tcase(s, tc);

	tc = tcase_create("read");
	tcase_add_test(tc, test_read_fake);
	tcase_add_test(tc, test_read_self);
	suite_add_tcase(s, tc);

	tc = tcase_create("count");
	tcase_add_test(tc, test_count);
	tcase_add_test(tc, test_max_map_count);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(procmaps_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
