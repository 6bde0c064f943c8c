// SPDX-License-Identifier: MIT
/*
 * dd-remapcost: what one merge's kernel work costs on this machine (issue 3).
 *
 * A merge in dedupd is, per run of pages: write-protect the run through the
 * client's userfaultfd (the freeze), read and compare it, then mmap() the
 * store's pages over it in the client (the remap), which unmaps the old
 * anonymous pages. This program times those two operations alone, in one
 * process, on 64 MiB of private anonymous memory and a memfd standing for the
 * store, for runs of 1, 16 and 64 pages (remaps of every other run, so that
 * each splits a VMA as in dedupd), under four conditions:
 *
 *   plain      no userfaultfd
 *   uffd-wp    the range registered for write-protect faults (as dedupd's
 *              clients are), no events
 *   +events    also UFFD_FEATURE_EVENT_UNMAP | EVENT_REMOVE, read by a
 *              monitor thread (dedupd's fault thread): the kernel waits in
 *              every remap until the event has been read
 *   +busy      also a thread of the process spinning on another CPU, so that
 *              every TLB flush must interrupt it (a busy client)
 *   rival      plain, while another process does the same (faults its
 *              memory in, remaps it) on another CPU: two agents merging at
 *              once, or an agent next to an application busy with its memory
 *   emptied    uffd-wp, the remap done as libdedup's agent does it: runs
 *              registered for missing-page faults, emptied 32 at a time in
 *              one process_madvise(MADV_DONTNEED), then mapped
 *
 * Usage: dd-remapcost [--mib N] [--rounds N]. Prints a table of microseconds
 * per operation and per page. Needs userfaultfd for unprivileged users
 * (vm.unprivileged_userfaultfd) or root.
 */

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <signal.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PG 4096UL

enum cond { PLAIN, UFFD_WP, EVENTS, BUSY, RIVAL, EMPTIED, NCOND };
static const char *const cond_name[NCOND] = { "plain",	"uffd-wp", "+events",
					      "+busy", "rival",	  "emptied" };

/* Runs per batch in the emptied condition (a merge batch has ~20 in W1). */
#define EMPTY_BATCH 32

static atomic_bool stop;

static double now_s(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* The monitor: reads (and drops) every event, as dedupd's fault thread does. */
static void *monitor(void *arg)
{
	int uffd = *(int *)arg;
	struct uffd_msg m[64];

	while (!atomic_load(&stop)) {
		struct pollfd p = { .fd = uffd, .events = POLLIN };

		if (poll(&p, 1, 100) > 0 && read(uffd, m, sizeof(m)) < 0 && errno != EAGAIN)
			break;
	}
	return NULL;
}

static void *spinner(void *arg)
{
	volatile unsigned long x = 0;

	(void)arg;
	while (!atomic_load(&stop))
		x++;
	return NULL;
}

/* The rival: a child process with 64 MiB of its own that faults its memory
 * in and remaps every other run of it, round after round, until killed. */
static pid_t rival_start(size_t run, size_t npages, int memfd)
{
	pid_t pid = fork();

	if (pid < 0) {
		perror("dd-remapcost: fork");
		exit(1);
	}
	if (pid > 0) {
		usleep(20000); /* let it get going */
		return pid;
	}
	for (;;) {
		uint8_t *m = mmap(NULL, npages * PG, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		if (m == MAP_FAILED)
			_exit(1);
		madvise(m, npages * PG, MADV_NOHUGEPAGE);
		memset(m, 1, npages * PG);
		for (size_t i = 0; i + run <= npages; i += 2 * run)
			if (mmap(m + i * PG, run * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED,
				 memfd, (off_t)(i * PG)) == MAP_FAILED)
				_exit(1);
		munmap(m, npages * PG);
	}
}

static int uffd_open(bool events)
{
	struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_PAGEFAULT_FLAG_WP };
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

	if (events)
		api.features |= UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_EVENT_REMOVE;
	if (fd < 0 || ioctl(fd, UFFDIO_API, &api) < 0) {
		fprintf(stderr, "dd-remapcost: userfaultfd: %s\n", strerror(errno));
		exit(1);
	}
	return fd;
}

/*
 * The remap as libdedup's agent does it (agent.c, do_remaps()), EMPTY_BATCH
 * runs at a time: each run registered for missing-page faults, all emptied
 * in one process_madvise(MADV_DONTNEED) (one TLB flush), then each mapped
 * and woken. Returns the number of runs.
 */
static size_t remap_emptied(uint8_t *m, size_t run, size_t npages, int memfd, int uffd)
{
	int pidfd = (int)syscall(SYS_pidfd_open, getpid(), 0);
	struct iovec iov[EMPTY_BATCH];
	size_t n = 0, k = 0;

	if (pidfd < 0) {
		perror("dd-remapcost: pidfd_open");
		exit(1);
	}
	for (size_t i = 0; i + run <= npages; i += 2 * run) {
		struct uffdio_register reg = { .range = { (uintptr_t)(m + i * PG), run * PG },
					       .mode = UFFDIO_REGISTER_MODE_MISSING |
						       UFFDIO_REGISTER_MODE_WP };

		if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0) {
			perror("dd-remapcost: UFFDIO_REGISTER");
			exit(1);
		}
		iov[k++] = (struct iovec){ m + i * PG, run * PG };
		if (k < EMPTY_BATCH && i + 3 * run <= npages)
			continue;
		if (syscall(SYS_process_madvise, pidfd, iov, k, MADV_DONTNEED, 0) < 0) {
			perror("dd-remapcost: process_madvise");
			exit(1);
		}
		for (size_t j = 0; j < k; j++) {
			struct uffdio_range rg = { (uintptr_t)iov[j].iov_base, iov[j].iov_len };

			if (mmap(iov[j].iov_base, iov[j].iov_len, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_FIXED, memfd,
				 (off_t)((uint8_t *)iov[j].iov_base - m)) == MAP_FAILED) {
				perror("dd-remapcost: remap");
				exit(1);
			}
			ioctl(uffd, UFFDIO_WAKE, &rg);
		}
		n += k;
		k = 0;
	}
	close(pidfd);
	return n;
}

struct result {
	double remap_us, wp_us; /* per operation */
};

/* One condition, one run length: fresh memory, then freeze + unfreeze and
 * remap of every other run. */
static struct result measure(enum cond c, size_t run, size_t npages, int memfd)
{
	uint8_t *m = mmap(NULL, npages * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			  -1, 0);
	pthread_t mon, spin;
	struct result r = { 0, 0 };
	pid_t rival = -1;
	int uffd = -1;
	size_t n = 0;
	double t0;

	if (m == MAP_FAILED) {
		perror("dd-remapcost: mmap");
		exit(1);
	}
	madvise(m, npages * PG, MADV_NOHUGEPAGE);
	memset(m, 1, npages * PG);
	atomic_store(&stop, false);
	if (c == RIVAL)
		rival = rival_start(run, npages, memfd);
	if (c != PLAIN && c != RIVAL) {
		struct uffdio_register reg = { .range = { (uintptr_t)m, npages * PG },
					       .mode = UFFDIO_REGISTER_MODE_WP };

		uffd = uffd_open(c == EVENTS || c == BUSY);
		if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0) {
			fprintf(stderr, "dd-remapcost: UFFDIO_REGISTER: %s\n", strerror(errno));
			exit(1);
		}
		pthread_create(&mon, NULL, monitor, &uffd);
	}
	if (c == BUSY) {
		pthread_create(&spin, NULL, spinner, NULL);
		usleep(10000);
	}
	if (c != PLAIN && c != RIVAL) { /* the freeze: write-protect a run and lift it again */
		t0 = now_s();
		for (size_t i = 0; i + run <= npages; i += 2 * run, n++) {
			struct uffdio_writeprotect wp = {
				.range = { (uintptr_t)(m + i * PG), run * PG },
				.mode = UFFDIO_WRITEPROTECT_MODE_WP
			};

			ioctl(uffd, UFFDIO_WRITEPROTECT, &wp);
			wp.mode = 0;
			ioctl(uffd, UFFDIO_WRITEPROTECT, &wp);
		}
		r.wp_us = (now_s() - t0) / (double)n * 1e6;
	}
	n = 0;
	t0 = now_s();
	if (c == EMPTIED)
		n = remap_emptied(m, run, npages, memfd, uffd);
	else
		for (size_t i = 0; i + run <= npages; i += 2 * run, n++)
			if (mmap(m + i * PG, run * PG, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_FIXED, memfd, (off_t)(i * PG)) == MAP_FAILED) {
				perror("dd-remapcost: remap");
				exit(1);
			}
	r.remap_us = (now_s() - t0) / (double)n * 1e6;
	atomic_store(&stop, true);
	if (rival > 0) {
		kill(rival, SIGKILL);
		waitpid(rival, NULL, 0);
	}
	if (c == BUSY)
		pthread_join(spin, NULL);
	if (c != PLAIN && c != RIVAL) {
		pthread_join(mon, NULL);
		close(uffd);
	}
	munmap(m, npages * PG);
	return r;
}

int main(int argc, char **argv)
{
	static const size_t runs[] = { 1, 16, 64 };
	size_t mib = 64, npages;
	int rounds = 3, memfd;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--mib") && i + 1 < argc) {
			mib = strtoul(argv[++i], NULL, 10);
		} else if (!strcmp(argv[i], "--rounds") && i + 1 < argc) {
			rounds = atoi(argv[++i]);
		} else {
			fprintf(stderr, "usage: dd-remapcost [--mib N] [--rounds N]\n"
					"Times dedupd's per-run kernel work (freeze, remap) on this "
					"machine; see the comment at the top of tests/tools/dd-remapcost.c.\n");
			return strcmp(argv[i], "--help") ? 2 : 0;
		}
	}
	if (!mib || mib > 4096 || rounds < 1) {
		fprintf(stderr, "dd-remapcost: --mib 1..4096, --rounds >= 1\n");
		return 2;
	}
	npages = mib * 1024 * 1024 / PG;
	memfd = memfd_create("dd-remapcost-store", MFD_CLOEXEC);
	if (memfd < 0 || ftruncate(memfd, (off_t)(npages * PG)) < 0) {
		perror("dd-remapcost: memfd");
		return 1;
	}
	{ /* the store's pages exist, as merged pages' do */
		uint8_t *s = mmap(NULL, npages * PG, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);

		if (s == MAP_FAILED) {
			perror("dd-remapcost: mmap store");
			return 1;
		}
		memset(s, 1, npages * PG);
		munmap(s, npages * PG);
	}
	printf("%-9s %5s %12s %12s %14s\n", "condition", "run", "remap us", "remap us/pg",
	       "freeze+lift us");
	for (int c = 0; c < NCOND; c++)
		for (size_t k = 0; k < sizeof(runs) / sizeof(runs[0]); k++) {
			struct result best = { 1e30, 1e30 };

			for (int i = 0; i < rounds; i++) { /* the best of the rounds */
				struct result r = measure((enum cond)c, runs[k], npages, memfd);

				if (r.remap_us < best.remap_us)
					best.remap_us = r.remap_us;
				if (r.wp_us < best.wp_us)
					best.wp_us = r.wp_us;
			}
			printf("%-9s %5zu %12.1f %12.2f", cond_name[c], runs[k], best.remap_us,
			       best.remap_us / (double)runs[k]);
			if (c == PLAIN || c == RIVAL)
				printf(" %14s\n", "-");
			else
				printf(" %14.1f\n", best.wp_us);
		}
	return 0;
}
