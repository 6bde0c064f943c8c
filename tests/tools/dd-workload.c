// SPDX-License-Identifier: MIT
/*
 * dd-workload: processes with known duplicate, zero and unique pages — the
 * demo for `make run` and the workload of the tests and the benchmark.
 *
 * Each of --procs children maps --mib MiB of private anonymous memory and
 * fills it: --dup percent of pages get content that depends only on the page's
 * offset (the same in every child, like identical guests), in runs of 1..64
 * pages (or, with --scatter, single pages between non-duplicate neighbours:
 * every even page up to 50 %); --zero percent are zero;
 * the rest are unique to the child. Then it offers the memory to dedupd
 * (dedup_register) or to kernel KSM (--ksm: madvise(MADV_MERGEABLE)), says
 * READY, and waits. With --rewrite-pct P it rewrites P % of its pages every
 * second (keeping its shadow copy up to date). With --hold it says FILLED and
 * waits for SIGUSR1 before offering its memory. On SIGTERM (or after
 * --seconds) every child checks each byte of its memory against what it
 * wrote and exits 1 on any difference. The parent prints one line per child
 * ("pid N") and exits with the worst child status.
 */
#include "dedupd/lib/dedup.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u

static struct {
	int procs, seconds, rewrite_pct;
	unsigned long mib;
	int dup_pct, zero_pct;
	bool scatter, ksm, noreg, quiet, hold;
} opt = { .procs = 4, .mib = 64, .dup_pct = 50, .zero_pct = 10, .seconds = -1 };

static volatile sig_atomic_t stop, go;

static void on_term(int sig)
{
	(void)sig;
	stop = 1;
}

static void on_usr1(int sig)
{
	(void)sig;
	go = 1;
}

static uint64_t mix(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	return x ^ (x >> 33);
}

enum kind { K_DUP, K_ZERO, K_UNIQ };

/* The same layout in every child: decided by page index only. */
static enum kind page_kind(size_t i)
{
	uint64_t run = i / (1 + mix(i / 64) % 64);
	uint64_t r = mix(run * 7919 + 1) % 100;

	if (opt.scatter) {
		/* W3: duplicates are single pages with a unique (or zero)
		 * page on each side: --dup % of all pages, at most 50. */
		uint64_t q = mix(i * 31 + 7) % 100;

		if (i % 2 == 0)
			return q < (uint64_t)opt.dup_pct * 2 ? K_DUP : K_UNIQ;
		return q < (uint64_t)opt.zero_pct ? K_ZERO : K_UNIQ;
	}
	if (r < (uint64_t)opt.dup_pct)
		return K_DUP;
	if (r < (uint64_t)(opt.dup_pct + opt.zero_pct))
		return K_ZERO;
	return K_UNIQ;
}

static void fill_page(uint8_t *p, size_t i, uint64_t salt, enum kind k)
{
	uint64_t *w = (uint64_t *)p;

	if (k == K_ZERO) {
		memset(p, 0, PAGE);
		return;
	}
	for (size_t j = 0; j < PAGE / 8; j++)
		w[j] = mix((k == K_DUP ? 0 : salt) ^ (i * 512 + j) ^ 0x5a5a);
}

static int child(int idx)
{
	size_t n = opt.mib * 256, bad = 0;
	uint8_t *mem, *shadow;
	uint64_t salt = mix((uint64_t)idx + 1000) | 1;
	time_t end = opt.seconds >= 0 ? time(NULL) + opt.seconds : 0;
	int r;

	mem = mmap(NULL, n * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	/* The shadow lives in a shared mapping: dedupd never merges those. */
	shadow = mmap(NULL, opt.rewrite_pct ? n * PAGE : PAGE, PROT_READ | PROT_WRITE,
		      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED || shadow == MAP_FAILED) {
		perror("dd-workload: mmap");
		return 1;
	}
	madvise(mem, n * PAGE, MADV_NOHUGEPAGE);
	for (size_t i = 0; i < n; i++) {
		fill_page(mem + i * PAGE, i, salt, page_kind(i));
		if (opt.rewrite_pct)
			memcpy(shadow + i * PAGE, mem + i * PAGE, PAGE);
	}
	if (opt.hold) { /* let the caller measure before anything is shared */
		printf("FILLED %d\n", (int)getpid());
		fflush(stdout);
		while (!go && !stop)
			pause();
	}
	if (opt.ksm)
		r = madvise(mem, n * PAGE, MADV_MERGEABLE) ? -errno : 0;
	else if (!opt.noreg)
		r = dedup_register(mem, n * PAGE, NULL);
	else
		r = 0;
	if (r < 0) {
		fprintf(stderr, "dd-workload: cannot offer memory: %s (%s)\n", strerror(-r),
			dedup_strerror());
		return 1;
	}
	printf("READY %d\n", (int)getpid());
	fflush(stdout);
	while (!stop && (!end || time(NULL) < end)) {
		struct timespec ts = { 1, 0 };

		nanosleep(&ts, NULL);
		for (size_t k = 0; opt.rewrite_pct && k < n * (size_t)opt.rewrite_pct / 100; k++) {
			size_t i = mix((uint64_t)time(NULL) * 131 + k + salt) % n;
			uint64_t v = mix(i ^ (uint64_t)k ^ salt);

			memcpy(mem + i * PAGE + (k % 512) * 8, &v, 8);
			memcpy(shadow + i * PAGE + (k % 512) * 8, &v, 8);
		}
	}
	for (size_t i = 0; i < n; i++) {
		uint8_t want[PAGE];

		if (opt.rewrite_pct)
			memcpy(want, shadow + i * PAGE, PAGE);
		else
			fill_page(want, i, salt, page_kind(i));
		bad += memcmp(want, mem + i * PAGE, PAGE) != 0;
	}
	if (bad)
		fprintf(stderr, "dd-workload: pid %d: %zu of %zu pages differ from what was written\n",
			(int)getpid(), bad, n);
	else if (!opt.quiet)
		fprintf(stderr, "dd-workload: pid %d: all %zu pages verified\n", (int)getpid(), n);
	return bad ? 1 : 0;
}

static const char usage[] =
	"Usage: dd-workload [--procs N] [--mib M] [--dup PCT] [--zero PCT] [--scatter]\n"
	"                   [--rewrite-pct P] [--seconds S] [--ksm | --no-register] [--hold]\n"
	"                   [--quiet]\n"
	"Children fill memory with known duplicate/zero/unique pages, offer it to dedupd\n"
	"(or KSM with --ksm), print 'READY PID', and verify every byte on SIGTERM.\n";

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "procs", 1, 0, 'p' }, { "mib", 1, 0, 'm' },	  { "dup", 1, 0, 'd' },
		{ "zero", 1, 0, 'z' },	{ "scatter", 0, 0, 'S' }, { "rewrite-pct", 1, 0, 'r' },
		{ "seconds", 1, 0, 's' }, { "ksm", 0, 0, 'k' },	  { "no-register", 0, 0, 'n' },
		{ "quiet", 0, 0, 'q' },	{ "help", 0, 0, 'h' },	  { "hold", 0, 0, 'H' },
		{ 0 },
	};
	struct sigaction sa = { .sa_handler = on_term };
	pid_t *pids;
	int c, worst = 0;

	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 'p': opt.procs = atoi(optarg); break;
		case 'm': opt.mib = strtoul(optarg, NULL, 10); break;
		case 'd': opt.dup_pct = atoi(optarg); break;
		case 'z': opt.zero_pct = atoi(optarg); break;
		case 'S': opt.scatter = true; break;
		case 'r': opt.rewrite_pct = atoi(optarg); break;
		case 's': opt.seconds = atoi(optarg); break;
		case 'k': opt.ksm = true; break;
		case 'n': opt.noreg = true; break;
		case 'q': opt.quiet = true; break;
		case 'H': opt.hold = true; break;
		case 'h': fputs(usage, stdout); return 0;
		default: fputs(usage, stderr); return 2;
		}
	}
	if (opt.procs < 1 || opt.procs > 256 || !opt.mib || opt.dup_pct < 0 || opt.zero_pct < 0 ||
	    opt.dup_pct + opt.zero_pct > 100) {
		fputs("dd-workload: bad arguments\n", stderr);
		return 2;
	}
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	pids = calloc((size_t)opt.procs, sizeof(*pids));
	for (int i = 0; i < opt.procs; i++) {
		pids[i] = fork();
		if (pids[i] == 0)
			_exit(child(i));
	}
	while (!stop) {
		int st;
		pid_t p = waitpid(-1, &st, 0);

		if (p < 0)
			break;
		for (int i = 0; i < opt.procs; i++)
			if (pids[i] == p) {
				pids[i] = 0;
				if (!WIFEXITED(st) || WEXITSTATUS(st))
					worst = 1;
			}
	}
	for (int i = 0; i < opt.procs; i++)
		if (pids[i] > 0)
			kill(pids[i], SIGTERM);
	for (int i = 0; i < opt.procs; i++) {
		int st;

		if (pids[i] > 0 && waitpid(pids[i], &st, 0) == pids[i] &&
		    (!WIFEXITED(st) || WEXITSTATUS(st)))
			worst = 1;
	}
	free(pids);
	return worst;
}
