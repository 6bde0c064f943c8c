// SPDX-License-Identifier: MIT
/*
 * The agent thread. It waits for STORE, REMAP and ZAP messages from dedupd and
 * answers each batch with one AGENT_REPLY (one result per entry).
 *
 * The daemon freezes (write-protects) every page before asking, and the agent
 * checks in /proc/self/pagemap that each page still is frozen right before it
 * replaces it: a page that is no longer write-protected was unmapped or
 * replaced by the application meanwhile, and is left alone (-ESTALE).
 *
 * It also answers HASH: checksums of its own pages, read in place (no copy
 * through process_vm_readv), so that the daemon reads only the pages it
 * merges (see hash_pages()).
 *
 * The thread must never block on memory that dedupd may freeze: its stack is a
 * MAP_SHARED mapping (shared memory is never merged), it allocates nothing on
 * the heap after start, and all its buffers live on that stack.
 */
#include "dedupd/lib/agent.h"
#include "dedupd/common/proto.h"
#include "dedupd/common/uffd.h"
#include "hash/pagehash.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define AGENT_STACK_BYTES (512 * 1024)
#define AGENT_CMP_PAGES 16u /* store pages read per pread for DD_REMAP_VERIFY */
/* A read-only view of a whole store (the most store.c grows one to), for
 * DD_REMAP_VERIFY compares without a copy. */
#define AGENT_VIEW_BYTES (64ULL << 30)
#define AGENT_MAX_DOMAINS 64
#define PAGE_SIZE_ 4096u

struct dd_agent {
	int sock;
	int pagemap;
	int pidfd; /* our own process, for process_madvise(); -1 if unavailable */
	int uffd;  /* our copy of the client's userfaultfd (do_remaps()); -1 if none */
	pthread_t thread;
	void *stack;
	uint8_t *cmp; /* AGENT_CMP_PAGES, MAP_SHARED like the stack: never frozen */
	atomic_bool alive;
	atomic_bool stopping; /* dd_agent_stop(): no reconnect */
	dd_agent_lost_fn lost;
	unsigned remap_delay_ms; /* tests: $DEDUP_TEST_REMAP_DELAY_MS, a stalled agent */
	unsigned empty_delay_ms; /* tests: $DEDUP_TEST_EMPTY_DELAY_MS, runs left empty */
	bool old_proto;		 /* tests: $DEDUP_TEST_OLD_AGENT, no DD_REMAP_* flags */
	bool remap_fail;	 /* tests: $DEDUP_TEST_REMAP_FAIL, mmap() of emptied runs fails */
	bool no_view;		 /* tests: $DEDUP_TEST_NO_STORE_VIEW, compares use pread */
};

static _Atomic(dd_agent_balloon_fn) balloon_hook;

void dd_agent_set_balloon_hook(dd_agent_balloon_fn fn)
{
	atomic_store(&balloon_hook, fn);
}

/* A BALLOON request: pass it on; the size reached comes later, on the
 * control connection. */
static int do_balloon(const struct dd_msg_balloon *m)
{
	dd_agent_balloon_fn fn = atomic_load(&balloon_hook);

	return fn ? fn(m->bytes) : -ENOTSUP;
}

struct store_fd {
	uint32_t domain;
	int fd;
	const uint8_t *view; /* MAP_SHARED, read-only, AGENT_VIEW_BYTES; NULL if none */
};

static const struct store_fd *store_find(const struct store_fd *t, int n, uint32_t domain)
{
	for (int i = 0; i < n; i++)
		if (t[i].domain == domain)
			return &t[i];
	return NULL;
}

/*
 * The store as the agent gets it: its descriptor, and a read-only view of it
 * to compare against in place. The view is shared (the daemon's GC tells it
 * from a merge, which is private) and not inherited by a fork; without one,
 * compares read the store with pread.
 */
static struct store_fd store_open(const struct dd_agent *a, uint32_t domain, int fd)
{
	void *v = a->no_view ? MAP_FAILED
			     : mmap(NULL, AGENT_VIEW_BYTES, PROT_READ, MAP_SHARED | MAP_NORESERVE,
				    fd, 0);

	if (v != MAP_FAILED)
		madvise(v, AGENT_VIEW_BYTES, MADV_DONTFORK);
	return (struct store_fd){ domain, fd, v == MAP_FAILED ? NULL : v };
}

static void store_close(const struct store_fd *sf)
{
	if (sf->view)
		munmap((void *)sf->view, AGENT_VIEW_BYTES);
	close(sf->fd);
}

static bool frozen_entries(const uint64_t *pm, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		if ((pm[i] & (DD_PM_PRESENT | DD_PM_UFFD_WP)) != (DD_PM_PRESENT | DD_PM_UFFD_WP))
			return false;
	return true;
}

/* Every page of [addr, addr+npages) is present and write-protected by dedupd. */
static bool still_frozen(int pagemap, uint64_t addr, uint32_t npages)
{
	uint64_t pm[64];

	while (npages) {
		uint32_t n = npages < 64 ? npages : 64;
		off_t off = (off_t)(addr / PAGE_SIZE_ * sizeof(uint64_t));

		if (pread(pagemap, pm, n * sizeof(uint64_t), off) != (ssize_t)(n * sizeof(uint64_t)) ||
		    !frozen_entries(pm, n))
			return false;
		addr += (uint64_t)n * PAGE_SIZE_;
		npages -= n;
	}
	return true;
}

static bool entry_sane(const struct dd_remap_entry *e)
{
	return e->npages && !(e->addr % PAGE_SIZE_) && e->npages <= DD_BATCH_MAX * 64u &&
	       e->addr <= UINT64_MAX - (uint64_t)e->npages * PAGE_SIZE_;
}

/* pm: the batch's pagemap from lo on (span pages), or NULL: read it here. */
static int check_entry(struct dd_agent *a, const struct dd_remap_entry *e, const uint64_t *pm,
		       uint64_t lo, uint64_t span)
{
	if (!entry_sane(e))
		return -EINVAL;
	if (pm && e->addr >= lo && (e->addr - lo) / PAGE_SIZE_ + e->npages <= span)
		return frozen_entries(pm + (e->addr - lo) / PAGE_SIZE_, e->npages) ? 0 : -ESTALE;
	if (!still_frozen(a->pagemap, e->addr, e->npages))
		return -ESTALE;
	return 0;
}

/* The pagemap of the span from the lowest to the highest entry, in one read
 * when it is at most PM_SPAN pages (a batch is a stretch of one region):
 * one walk of the page tables instead of one per run. Its page count, or 0
 * (then each entry reads its own). */
#define PM_SPAN 4096u
static uint64_t batch_pagemap(struct dd_agent *a, const struct dd_remap_entry *e, uint32_t n,
			      uint64_t *pm, uint64_t *lo)
{
	uint64_t hi = 0, span;

	*lo = UINT64_MAX;
	for (uint32_t i = 0; i < n; i++) {
		if (!entry_sane(&e[i]))
			continue;
		*lo = e[i].addr < *lo ? e[i].addr : *lo;
		if (e[i].addr + (uint64_t)e[i].npages * PAGE_SIZE_ > hi)
			hi = e[i].addr + (uint64_t)e[i].npages * PAGE_SIZE_;
	}
	if (n < 2 || *lo >= hi || (span = (hi - *lo) / PAGE_SIZE_) > PM_SPAN)
		return 0;
	if (pread(a->pagemap, pm, span * sizeof(uint64_t),
		  (off_t)(*lo / PAGE_SIZE_ * sizeof(uint64_t))) != (ssize_t)(span * sizeof(uint64_t)))
		return 0;
	return span;
}

static int guard_ready(void);
static atomic_int guard_tid;
static sigjmp_buf guard_jmp;

/*
 * DD_REMAP_VERIFY: the run's pages, read in place (frozen: the caller found
 * them so), are all zero (a zap) or the same as its store pages (sf: read
 * in the store's view, or with pread AGENT_CMP_PAGES at a time without
 * one). The daemon then need not copy them out of this process to compare
 * them. 0, -EAGAIN (a page differs), -EFAULT (one faulted: unmapped
 * meanwhile, or past the end of the store), or -errno.
 */
static int verify_run(struct dd_agent *a, const struct dd_remap_entry *e,
		      const struct store_fd *sf)
{
	bool zap = e->flags & DD_REMAP_ZAP;
	volatile int r = 0;
	sigset_t faults;
	int tid = (int)syscall(SYS_gettid);

	if (guard_ready() < 0)
		return -EOPNOTSUPP;
	sigemptyset(&faults);
	sigaddset(&faults, SIGSEGV);
	sigaddset(&faults, SIGBUS);
	if (sigsetjmp(guard_jmp, 0)) { /* a page faulted */
		pthread_sigmask(SIG_UNBLOCK, &faults, NULL);
		return -EFAULT;
	}
	for (uint32_t j = 0; j < e->npages && !r; j += AGENT_CMP_PAGES) {
		uint32_t m = e->npages - j < AGENT_CMP_PAGES ? e->npages - j : AGENT_CMP_PAGES;
		const uint8_t *pg = (const uint8_t *)(uintptr_t)(e->addr + (uint64_t)j * PAGE_SIZE_);
		size_t len = (size_t)m * PAGE_SIZE_;

		uint64_t off = e->store_off + (uint64_t)j * PAGE_SIZE_;
		const uint8_t *ref = a->cmp;

		if (!zap && sf->view && off < AGENT_VIEW_BYTES && len <= AGENT_VIEW_BYTES - off) {
			ref = sf->view + off;
		} else if (!zap) {
			ssize_t got = pread(sf->fd, a->cmp, len, (off_t)off);

			if (got != (ssize_t)len)
				return got < 0 ? -errno : -EIO;
		}
		atomic_store(&guard_tid, tid);
		for (uint32_t x = 0; x < m && !r; x++)
			if (zap ? !dd_page_is_zero(pg + (size_t)x * PAGE_SIZE_)
				: memcmp(pg + (size_t)x * PAGE_SIZE_, ref + (size_t)x * PAGE_SIZE_,
					 PAGE_SIZE_) != 0)
				r = -EAGAIN;
		atomic_store(&guard_tid, 0);
	}
	return r;
}

static int do_entry(struct dd_agent *a, const struct dd_remap_entry *e, int fd)
{
	if (mmap((void *)(uintptr_t)e->addr, (size_t)e->npages * PAGE_SIZE_,
		 PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, fd,
		 (off_t)e->store_off) == MAP_FAILED)
		return -errno;
	return 0;
}

static int uffd_register(int uffd, uint64_t addr, uint64_t len, uint64_t mode)
{
	struct uffdio_register reg = { .range = { addr, len }, .mode = mode };

	return ioctl(uffd, UFFDIO_REGISTER, &reg) < 0 ? -errno : 0;
}

/* ---- spans (DD_REMAP_SPAN) ---------------------------------------------- */

#define SPAN_MAX_PAGES 4096u

/* How many INSPAN runs follow the span entry e[0] (of n entries). */
static uint32_t span_runs(const struct dd_remap_entry *e, uint32_t n)
{
	uint32_t m = 0;

	while (1 + m < n && (e[1 + m].flags & DD_REMAP_INSPAN))
		m++;
	return m;
}

/* Do the m runs lie inside the span, in order, each where the span's
 * mapping puts its store pages? */
static bool span_sane(const struct dd_remap_entry *e, uint32_t m)
{
	uint64_t at = e->addr, end = e->addr + (uint64_t)e->npages * PAGE_SIZE_;

	if (!entry_sane(e) || e->npages > SPAN_MAX_PAGES || (e->store_off % PAGE_SIZE_) || !m)
		return false;
	for (uint32_t i = 1; i <= m; i++) {
		const struct dd_remap_entry *r = &e[i];

		if (!entry_sane(r) || r->addr < at ||
		    r->addr + (uint64_t)r->npages * PAGE_SIZE_ > end || r->domain != e->domain ||
		    r->store_off < e->store_off || r->store_off - e->store_off != r->addr - e->addr)
			return false;
		at = r->addr + (uint64_t)r->npages * PAGE_SIZE_;
	}
	return true;
}

/* Copy [src, src+len) of ours into the span's new mapping at dst (registered
 * for missing-page faults): UFFDIO_COPY puts anonymous pages there without
 * reading the store (a write would fault the store page in first). */
static int span_copy(int uffd, uint64_t dst, uint64_t src, uint64_t len)
{
	while (len) {
		struct uffdio_copy cp = { .dst = dst, .src = src, .len = len,
					  .mode = UFFDIO_COPY_MODE_DONTWAKE };

		if (ioctl(uffd, UFFDIO_COPY, &cp) == 0)
			return 0;
		if (cp.copy > 0) {
			dst += (uint64_t)cp.copy;
			src += (uint64_t)cp.copy;
			len -= (uint64_t)cp.copy;
			continue;
		}
		if (errno != EAGAIN && errno != EINTR)
			return -errno;
	}
	return 0;
}

/*
 * A span e[0] with its m runs e[1..m] (see DD_REMAP_SPAN): the new mapping
 * of the store is made aside, the pages we keep (all but the runs') are
 * copied into it, and mremap() moves it over the span, which replaces the
 * old pages in one step: another thread reads the old page or the new one,
 * never a hole, and its writes wait in the write-protect fault until the
 * daemon wakes the span. Nothing is changed if any step fails. A run that
 * differs from its store pages is kept like the gaps (its answer -EAGAIN,
 * in res[1..m]), unless all do. Returns the span's answer.
 */
static int do_span(struct dd_agent *a, const struct dd_remap_entry *e, uint32_t m,
		   const uint64_t *pm, uint64_t lo, uint64_t span, const struct store_fd *sf,
		   int32_t *res)
{
	uint64_t len = (uint64_t)e->npages * PAGE_SIZE_, at = e->addr;
	struct uffdio_range rg;
	uint32_t same = 0;
	uint8_t *tmp;
	int r;

	if (a->uffd < 0)
		return -ENODEV; /* no spans from us (the daemon stops sending them) */
	if (!span_sane(e, m))
		return -EINVAL;
	if ((r = check_entry(a, e, pm, lo, span)) < 0)
		return r;
	if (!sf)
		return -EBADF;
	for (uint32_t i = 1; i <= m; i++) {
		res[i] = (e[i].flags & DD_REMAP_VERIFY) ? verify_run(a, &e[i], sf) : 0;
		if (res[i] && res[i] != -EAGAIN)
			return res[i];
		same += !res[i];
	}
	if (!same)
		return -EAGAIN;
	tmp = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE, sf->fd, (off_t)e->store_off);
	if (tmp == MAP_FAILED)
		return -errno;
	rg = (struct uffdio_range){ (uintptr_t)tmp, len };
	r = uffd_register(a->uffd, rg.start, len, UFFDIO_REGISTER_MODE_MISSING);
	if (r == -EINVAL || r == -EPERM)
		r = -ENODEV; /* a kernel that will not: never again */
	for (uint32_t i = 1; i <= m + 1 && !r; i++) {
		uint64_t stop = i <= m ? e[i].addr : e->addr + len;

		if (i <= m && res[i])
			continue; /* kept with the gap after it */
		if (stop > at)
			r = span_copy(a->uffd, rg.start + (at - e->addr), at, stop - at);
		if (i <= m)
			at = e[i].addr + (uint64_t)e[i].npages * PAGE_SIZE_;
	}
	/* Unregistered before the move: a registered VMA that moves raises a
	 * REMAP event, and mremap() would wait for the daemon to read it. */
	if (ioctl(a->uffd, UFFDIO_UNREGISTER, &rg) < 0 && !r)
		r = -errno;
	if (!r && a->remap_fail)
		r = -ENOMEM;
	if (!r && mremap(tmp, len, len, MREMAP_MAYMOVE | MREMAP_FIXED,
			 (void *)(uintptr_t)e->addr) == MAP_FAILED)
		r = -errno;
	if (r)
		munmap(tmp, len);
	return r;
}

/*
 * The mmap() of a run emptied by do_remaps() failed: put its pages back
 * from the store (the daemon compared them with it under freeze, so they
 * are the same bytes), then register the run for write-protect faults only.
 * UFFDIO_COPY wakes the threads waiting for those pages.
 */
static void restore_run(struct dd_agent *a, const struct dd_remap_entry *e, int fd)
{
	uint8_t page[PAGE_SIZE_]; /* on the agent's stack, which is never frozen */
	struct uffdio_range rg = { e->addr, (uint64_t)e->npages * PAGE_SIZE_ };

	for (uint32_t i = 0; i < e->npages; i++) {
		struct uffdio_copy cp = { .dst = e->addr + (uint64_t)i * PAGE_SIZE_,
					  .src = (uintptr_t)page, .len = PAGE_SIZE_ };

		if (pread(fd, page, PAGE_SIZE_, (off_t)(e->store_off + (uint64_t)i * PAGE_SIZE_)) !=
		    PAGE_SIZE_)
			memset(page, 0, PAGE_SIZE_); /* a hole reads as zeros too */
		for (int tries = 0; tries < 100; tries++) {
			if (ioctl(a->uffd, UFFDIO_COPY, &cp) == 0 || errno == EEXIST)
				break; /* EEXIST: this page was never emptied */
			if (errno != EAGAIN && errno != ENOMEM && errno != EINTR)
				break;
			usleep(1000);
		}
	}
	/* No missing-page mode may stay: the daemon leaves those faults to us. */
	if (ioctl(a->uffd, UFFDIO_UNREGISTER, &rg) == 0 &&
	    uffd_register(a->uffd, rg.start, rg.len, UFFDIO_REGISTER_MODE_WP) == 0)
		return;
	for (uint32_t i = 0; i < e->npages; i++) { /* part of it unmapped meanwhile */
		struct uffdio_range one = { e->addr + (uint64_t)i * PAGE_SIZE_, PAGE_SIZE_ };

		if (ioctl(a->uffd, UFFDIO_UNREGISTER, &one) == 0)
			uffd_register(a->uffd, one.start, one.len, UFFDIO_REGISTER_MODE_WP);
	}
}

/* Is [addr, +len) still in VMAs registered with our uffd for write-protect
 * faults (the application did not unmap it, or map something else there,
 * meanwhile)? Write-protecting pages that are not there changes nothing. */
static bool still_ours(int uffd, uint64_t addr, uint64_t len)
{
	struct uffdio_writeprotect wp = { .range = { addr, len },
					  .mode = UFFDIO_WRITEPROTECT_MODE_WP };

	return ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) == 0;
}

/* Close our copy of the uffd, unless the application closed that descriptor
 * (a daemonizing close of every fd) and the number now names something else. */
static void uffd_close(int fd)
{
	if (dd_is_userfaultfd(fd))
		close(fd);
}

/* fork() waits while runs are emptied: a child would keep them empty. */
static pthread_mutex_t window_lock = PTHREAD_MUTEX_INITIALIZER;

void dd_agent_fork_prepare(void)
{
	pthread_mutex_lock(&window_lock);
}

void dd_agent_fork_done(void)
{
	pthread_mutex_unlock(&window_lock);
}

/*
 * REMAP: map each run's store pages over it, and zap the zero runs (entries
 * flagged DD_REMAP_ZAP, or every entry of a ZAP).
 *
 * Zapping or mapping over pages that are present flushes them from the TLB:
 * one exit to the hypervisor per page (up to 33) or a full flush on this
 * kind of guest, which made a remap ~70 us a run. So the zero runs and the
 * runs to remap that lie in anonymous memory (DD_REMAP_ANON) are all emptied
 * in one process_madvise(MADV_DONTNEED) on ourselves (one flush), and the
 * mmap()s then find nothing to flush.
 *
 * A zapped zero page reads as zeros, as it should. But no thread of ours may
 * read a page to remap between the emptying and its mmap(): it would read
 * zeros (and a write would be lost). So each such run is registered for
 * missing-page faults on our copy of the uffd first: a thread that touches
 * it waits in the kernel until the run is mapped and we wake it. We do that
 * ourselves, not the daemon, so that a daemon that dies meanwhile changes
 * nothing: the uffd lives on through our copy until we close it.
 */
static void do_remaps(struct dd_agent *a, const struct dd_remap_entry *e, uint32_t n,
		      const struct store_fd *stores, int nstores, int32_t *res)
{
	struct iovec iov[DD_BATCH_MAX];
	uint32_t at[DD_BATCH_MAX], k = 0;
	bool emptied[DD_BATCH_MAX];
	const struct store_fd *sf[DD_BATCH_MAX];
	int fds[DD_BATCH_MAX];
	uint64_t pm[PM_SPAN], lo, span = batch_pagemap(a, e, n, pm, &lo);
	ssize_t done = -1;
	bool spanned[DD_BATCH_MAX];

	/* Spans first, each in one step with its runs. */
	for (uint32_t i = 0; i < n; i++) {
		uint32_t m;

		spanned[i] = (e[i].flags & (DD_REMAP_SPAN | DD_REMAP_INSPAN)) != 0;
		if (!(e[i].flags & DD_REMAP_SPAN)) {
			if (e[i].flags & DD_REMAP_INSPAN)
				res[i] = -EINVAL; /* a run with no span before it */
			continue;
		}
		m = span_runs(&e[i], n - i);
		for (uint32_t j = 1; j <= m; j++)
			res[i + j] = 0;
		pthread_mutex_lock(&window_lock);
		res[i] = do_span(a, &e[i], m, span ? pm : NULL, lo, span,
				 store_find(stores, nstores, e[i].domain), &res[i]);
		pthread_mutex_unlock(&window_lock);
		for (uint32_t j = 1; j <= m; j++) {
			res[i + j] = res[i] ? res[i] : res[i + j];
			spanned[i + j] = true;
		}
		i += m;
	}
	for (uint32_t i = 0; i < n; i++) {
		bool zap = e[i].flags & DD_REMAP_ZAP;

		emptied[i] = false;
		if (spanned[i])
			continue;
		sf[i] = zap ? NULL : store_find(stores, nstores, e[i].domain);
		fds[i] = sf[i] ? sf[i]->fd : -1;
		res[i] = check_entry(a, &e[i], span ? pm : NULL, lo, span);
		if (!res[i] && !zap && fds[i] < 0)
			res[i] = -EBADF;
		if (!res[i] && (e[i].flags & DD_REMAP_VERIFY))
			res[i] = verify_run(a, &e[i], sf[i]);
		if (res[i] || (!zap && (!(e[i].flags & DD_REMAP_ANON) || a->uffd < 0 ||
					a->pidfd < 0)))
			continue;
		if (!zap && uffd_register(a->uffd, e[i].addr, (uint64_t)e[i].npages * PAGE_SIZE_,
					  UFFDIO_REGISTER_MODE_MISSING |
						  UFFDIO_REGISTER_MODE_WP) < 0)
			continue; /* mapped the plain way */
		emptied[i] = !zap;
		iov[k] = (struct iovec){ (void *)(uintptr_t)e[i].addr,
					 (size_t)e[i].npages * PAGE_SIZE_ };
		at[k++] = i;
	}
	if (k) {
		pthread_mutex_lock(&window_lock);
		if (a->pidfd >= 0 && (k > 1 || emptied[at[0]]))
			done = syscall(SYS_process_madvise, a->pidfd, iov, k, MADV_DONTNEED, 0);
		/* Runs it did not reach: a zap is done on its own; a remap's
		 * mmap() flushes the pages it replaces. */
		for (uint32_t j = 0; j < k; j++) {
			if (done >= (ssize_t)iov[j].iov_len) {
				done -= (ssize_t)iov[j].iov_len;
				continue;
			}
			done = -1;
			if (e[at[j]].flags & DD_REMAP_ZAP)
				res[at[j]] = madvise(iov[j].iov_base, iov[j].iov_len, MADV_DONTNEED)
						     ? -errno
						     : 0;
		}
		if (a->empty_delay_ms)
			usleep(a->empty_delay_ms * 1000u);
	}
	for (uint32_t i = 0; i < n; i++) {
		struct uffdio_range rg = { e[i].addr, (uint64_t)e[i].npages * PAGE_SIZE_ };

		if (res[i] || (e[i].flags & DD_REMAP_ZAP) || spanned[i])
			continue;
		if (emptied[i] && !still_ours(a->uffd, rg.start, rg.len)) {
			res[i] = -ESTALE; /* never map over what the application put there */
			restore_run(a, &e[i], fds[i]);
			continue;
		}
		res[i] = emptied[i] && a->remap_fail ? -ENOMEM : do_entry(a, &e[i], fds[i]);
		if (emptied[i] && res[i] == 0)
			ioctl(a->uffd, UFFDIO_WAKE, &rg);
		else if (emptied[i])
			restore_run(a, &e[i], fds[i]);
	}
	if (k)
		pthread_mutex_unlock(&window_lock);
}

/*
 * Reading the application's memory in place: another thread of the
 * application may unmap or mprotect a page between the daemon's look at
 * pagemap and the read, and the read then raises SIGSEGV (or SIGBUS) in the
 * agent thread. A process-wide handler, installed before the first HASH is
 * served, sends the agent back to its checkpoint when the fault is the
 * agent's own (the page is reported unreadable) and passes every other
 * signal on to the handler that was there before, or to the default action.
 * If the application installs a handler of its own later, the agent stops
 * hashing (the daemon copies the pages instead): a fault of the agent must
 * never reach the application's handler.
 */
static pthread_mutex_t guard_lock = PTHREAD_MUTEX_INITIALIZER;
static struct sigaction prev_segv, prev_bus;
static atomic_int guard_tid; /* the agent thread while it reads memory, else 0 */

static void on_fault(int sig, siginfo_t *si, void *uc)
{
	const struct sigaction *prev = sig == SIGBUS ? &prev_bus : &prev_segv;
	struct sigaction dfl = { .sa_handler = SIG_DFL };

	/* si_code > 0: raised by the kernel for a fault, not sent by kill() */
	if (si->si_code > 0 && atomic_load(&guard_tid) == (int)syscall(SYS_gettid)) {
		atomic_store(&guard_tid, 0);
		siglongjmp(guard_jmp, 1);
	}
	if ((prev->sa_flags & SA_SIGINFO) && prev->sa_handler != SIG_DFL &&
	    prev->sa_handler != SIG_IGN) {
		prev->sa_sigaction(sig, si, uc);
	} else if (prev->sa_handler == SIG_IGN) {
		if (si->si_code > 0) { /* a fault cannot be ignored */
			sigaction(sig, &dfl, NULL);
		}
	} else if (prev->sa_handler != SIG_DFL) {
		prev->sa_handler(sig);
	} else {
		/* The default action: a fault happens again when the instruction
		 * is retried; a signal sent with kill() is raised again here. */
		sigaction(sig, &dfl, NULL);
		if (si->si_code <= 0)
			raise(sig);
	}
}

static bool guard_is_ours(int sig)
{
	struct sigaction cur;

	return sigaction(sig, NULL, &cur) == 0 && (cur.sa_flags & SA_SIGINFO) &&
	       cur.sa_sigaction == on_fault;
}

/* Install the handler once per process; 0, or -EOPNOTSUPP if another
 * handler replaced it since (or it cannot be installed). */
static int guard_ready(void)
{
	static bool installed;
	struct sigaction sa = { .sa_sigaction = on_fault, .sa_flags = SA_SIGINFO | SA_ONSTACK };
	int r = 0;

	pthread_mutex_lock(&guard_lock);
	if (!installed) {
		sigemptyset(&sa.sa_mask);
		if (sigaction(SIGSEGV, &sa, &prev_segv) < 0)
			r = -EOPNOTSUPP;
		else if (sigaction(SIGBUS, &sa, &prev_bus) < 0) {
			sigaction(SIGSEGV, &prev_segv, NULL);
			r = -EOPNOTSUPP;
		}
		installed = r == 0;
	} else if (!guard_is_ours(SIGSEGV) || !guard_is_ours(SIGBUS)) {
		r = -EOPNOTSUPP;
	}
	pthread_mutex_unlock(&guard_lock);
	return r;
}

static uint64_t thread_cpu_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
	return (uint64_t)t.tv_sec * 1000000000ULL + (uint64_t)t.tv_nsec;
}

/* Checksum every page of the request's ranges into out[]; the caller checked
 * the ranges. A page that faults gets flags 0. */
static void hash_pages(const struct dd_msg_hash *m, struct dd_hash_result *out)
{
	volatile uint32_t r = 0, j = 0, k = 0;
	int tid = (int)syscall(SYS_gettid);
	sigset_t faults;

	sigemptyset(&faults);
	sigaddset(&faults, SIGSEGV);
	sigaddset(&faults, SIGBUS);
	if (sigsetjmp(guard_jmp, 0)) { /* page k faulted */
		pthread_sigmask(SIG_UNBLOCK, &faults, NULL);
		out[k] = (struct dd_hash_result){ 0 };
		j++;
		k++;
	}
	atomic_store(&guard_tid, tid);
	for (; r < m->n; r++, j = 0)
		for (; j < m->e[r].npages; j++, k++) {
			const void *pg = (const void *)(uintptr_t)(m->e[r].addr +
								   (uint64_t)j * PAGE_SIZE_);
			uint64_t csum = dd_page_hash(pg);

			out[k] = (struct dd_hash_result){
				.csum = csum,
				.flags = DD_HASH_OK | (dd_page_is_zero(pg) ? DD_HASH_ZERO : 0),
			};
		}
	atomic_store(&guard_tid, 0);
}

/* A HASH request: fill reply (n results); status 0 or -errno. */
static void do_hash(const struct dd_msg_hash *m, struct dd_msg_hash_reply *reply)
{
	uint64_t t0 = thread_cpu_ns(), total = 0;

	reply->n = 0;
	reply->status = 0;
	for (uint32_t i = 0; i < m->n; i++) {
		if (m->e[i].addr % PAGE_SIZE_ || m->e[i].npages > DD_HASH_MAX ||
		    m->e[i].addr + (uint64_t)m->e[i].npages * PAGE_SIZE_ < m->e[i].addr)
			reply->status = -EINVAL;
		total += m->e[i].npages;
	}
	if (!reply->status && total > DD_HASH_MAX)
		reply->status = -E2BIG;
	if (!reply->status)
		reply->status = guard_ready();
	if (!reply->status) {
		hash_pages(m, reply->res);
		reply->n = (uint32_t)total;
	}
	reply->cpu_ns = thread_cpu_ns() - t0;
}

static void *agent_main(void *arg)
{
	struct dd_agent *a = arg;
	struct store_fd stores[AGENT_MAX_DOMAINS];
	union {
		char raw[DD_MSG_MAX];
		struct dd_msg_hdr h;
		struct dd_msg_store store;
		struct dd_msg_batch batch;
		struct dd_msg_balloon balloon;
		struct dd_msg_hash hash;
	} in;
	union {
		char raw[sizeof(struct dd_msg_hash_reply) + DD_HASH_MAX * sizeof(struct dd_hash_result)];
		struct dd_msg_agent_reply r;
		struct dd_msg_hash_reply hr;
	} out;
	int nstores = 0, fd;
	sigset_t faults;
	ssize_t n;

	/* Created with every signal blocked; a fault that is blocked kills the
	 * process, so let the two a read can raise through (see on_fault()). */
	sigemptyset(&faults);
	sigaddset(&faults, SIGSEGV);
	sigaddset(&faults, SIGBUS);
	pthread_sigmask(SIG_UNBLOCK, &faults, NULL);
	for (;;) {
		n = dd_msg_recv(a->sock, in.raw, sizeof(in.raw), &fd, -1);
		if (n <= 0)
			break; /* daemon gone or spoke nonsense: stop serving */
		if (in.h.type == DD_MSG_STORE) {
			if (fd >= 0 && nstores < AGENT_MAX_DOMAINS)
				stores[nstores++] = store_open(a, in.store.domain, fd);
			else if (fd >= 0)
				close(fd);
			continue;
		}
		if (fd >= 0)
			close(fd);
		if (in.h.type == DD_MSG_HASH) {
			do_hash(&in.hash, &out.hr);
			dd_msg_init(&out.hr.h, DD_MSG_HASH_REPLY,
				    sizeof(out.hr) + out.hr.n * sizeof(out.hr.res[0]), in.h.seq);
			if (dd_msg_send(a->sock, &out.hr, out.hr.h.len, -1) < 0)
				break;
			continue;
		}
		if (in.h.type == DD_MSG_BALLOON) {
			out.r.res[0] = do_balloon(&in.balloon);
			out.r.n = 1;
		} else if (in.h.type == DD_MSG_ZAP) { /* from a daemon that sends ZAPs */
			for (uint32_t i = 0; i < in.batch.n; i++)
				in.batch.e[i].flags = DD_REMAP_ZAP;
			do_remaps(a, in.batch.e, in.batch.n, stores, nstores, out.r.res);
			out.r.n = in.batch.n;
		} else if (in.h.type == DD_MSG_REMAP && a->old_proto) {
			/* An agent that predates the flags read them as part of
			 * npages, and refused the entry. */
			for (uint32_t i = 0; i < in.batch.n; i++)
				if (in.batch.e[i].flags)
					in.batch.e[i].npages = 0; /* -EINVAL */
			do_remaps(a, in.batch.e, in.batch.n, stores, nstores, out.r.res);
			out.r.n = in.batch.n;
		} else if (in.h.type == DD_MSG_REMAP) {
			if (a->remap_delay_ms)
				usleep(a->remap_delay_ms * 1000u);
			do_remaps(a, in.batch.e, in.batch.n, stores, nstores, out.r.res);
			out.r.n = in.batch.n;
		} else {
			continue;
		}
		out.r.pad = 0;
		dd_msg_init(&out.r.h, DD_MSG_AGENT_REPLY,
			    sizeof(out.r) + out.r.n * sizeof(int32_t), in.h.seq);
		if (dd_msg_send(a->sock, &out.r, out.r.h.len, -1) < 0)
			break;
	}
	for (int i = 0; i < nstores; i++)
		store_close(&stores[i]);
	/* Ours was the last copy of the uffd if the daemon is gone: closing it
	 * releases every frozen page and wakes every waiter. */
	uffd_close(a->uffd);
	a->uffd = -1;
	atomic_store(&a->alive, false);
	if (!atomic_load(&a->stopping) && a->lost)
		a->lost(); /* nothing is frozen any more: the daemon is gone */
	return NULL;
}

static int agent_hello(int sock, uint64_t client_id, uint64_t token)
{
	struct dd_msg_agent_hello m = { .client_id = client_id, .token = token };
	char buf[512];
	const struct dd_msg_result *res = (const void *)buf;
	ssize_t n;
	int r;

	dd_msg_init(&m.h, DD_MSG_AGENT_HELLO, sizeof(m), 1);
	r = dd_msg_send(sock, &m, sizeof(m), -1);
	if (r < 0)
		return r;
	n = dd_msg_recv(sock, buf, sizeof(buf), NULL, 10000);
	if (n <= 0)
		return n == 0 ? -ECONNRESET : (int)n;
	if (res->h.type != DD_MSG_RESULT)
		return -EBADMSG;
	return res->status;
}

int dd_agent_start(const char *sock_path, uint64_t client_id, uint64_t token, int uffd,
		   dd_agent_lost_fn lost, struct dd_agent **out)
{
	struct dd_agent *a = calloc(1, sizeof(*a));
	sigset_t all, old;
	pthread_attr_t attr;
	int r;

	if (!a) {
		uffd_close(uffd);
		return -ENOMEM;
	}
	a->sock = a->pagemap = a->pidfd = -1;
	a->uffd = uffd;
	a->stack = MAP_FAILED;
	a->cmp = MAP_FAILED;
	a->lost = lost;
	if (getenv("DEDUP_TEST_REMAP_DELAY_MS"))
		a->remap_delay_ms = (unsigned)strtoul(getenv("DEDUP_TEST_REMAP_DELAY_MS"), NULL, 10);
	a->old_proto = getenv("DEDUP_TEST_OLD_AGENT") && strcmp(getenv("DEDUP_TEST_OLD_AGENT"), "0");
	a->remap_fail = getenv("DEDUP_TEST_REMAP_FAIL") && strcmp(getenv("DEDUP_TEST_REMAP_FAIL"), "0");
	a->no_view = getenv("DEDUP_TEST_NO_STORE_VIEW") &&
		     strcmp(getenv("DEDUP_TEST_NO_STORE_VIEW"), "0");
	if (getenv("DEDUP_TEST_EMPTY_DELAY_MS"))
		a->empty_delay_ms = (unsigned)strtoul(getenv("DEDUP_TEST_EMPTY_DELAY_MS"), NULL, 10);
	r = dd_sock_connect(sock_path);
	if (r < 0)
		goto fail;
	a->sock = r;
	r = agent_hello(a->sock, client_id, token);
	if (r < 0)
		goto fail;
	a->pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (a->pagemap < 0) {
		r = -errno;
		goto fail;
	}
	a->pidfd = (int)syscall(SYS_pidfd_open, getpid(), 0); /* -1: madvise() run by run */
	/* MAP_SHARED: never registered, never merged, never frozen. */
	a->stack = mmap(NULL, AGENT_STACK_BYTES, PROT_READ | PROT_WRITE,
			MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (a->stack == MAP_FAILED) {
		r = -errno;
		goto fail;
	}
	a->cmp = mmap(NULL, (size_t)AGENT_CMP_PAGES * PAGE_SIZE_, PROT_READ | PROT_WRITE,
		      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (a->cmp == MAP_FAILED) {
		r = -errno;
		goto fail;
	}
	atomic_store(&a->alive, true);
	pthread_attr_init(&attr);
	pthread_attr_setstack(&attr, a->stack, AGENT_STACK_BYTES);
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	r = -pthread_create(&a->thread, &attr, agent_main, a);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_attr_destroy(&attr);
	if (r < 0)
		goto fail;
	pthread_setname_np(a->thread, "dedup-agent");
	*out = a;
	return 0;
fail:
	atomic_store(&a->alive, false);
	dd_agent_forget(a);
	return r;
}

void dd_agent_stop(struct dd_agent *a)
{
	if (!a)
		return;
	atomic_store(&a->stopping, true);
	if (a->sock >= 0)
		shutdown(a->sock, SHUT_RDWR);
	if (a->stack != MAP_FAILED)
		pthread_join(a->thread, NULL);
	dd_agent_forget(a);
}

void dd_agent_forget(struct dd_agent *a)
{
	if (!a)
		return;
	if (a->sock >= 0)
		close(a->sock);
	if (a->pagemap >= 0)
		close(a->pagemap);
	if (a->pidfd >= 0)
		close(a->pidfd);
	/* After fork() as well: a child's copy would keep the parent's uffd
	 * alive after the daemon's death, and its frozen writers waiting. */
	uffd_close(a->uffd);
	/* The stack of a thread that was not joined (after fork) must stay. */
	if (a->stack != MAP_FAILED && !atomic_load(&a->alive))
		munmap(a->stack, AGENT_STACK_BYTES);
	if (a->cmp != MAP_FAILED && !atomic_load(&a->alive))
		munmap(a->cmp, (size_t)AGENT_CMP_PAGES * PAGE_SIZE_);
	free(a);
}

bool dd_agent_alive(const struct dd_agent *a)
{
	return a && atomic_load(&a->alive);
}
