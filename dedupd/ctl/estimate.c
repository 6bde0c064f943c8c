// SPDX-License-Identifier: MIT
/*
 * The estimate (see estimate.h), in four passes over one array of 24-byte
 * page references, so a process with 16 GiB of RAM costs ~100 MB here:
 *
 *   1. collect: every present page of every private anonymous writable
 *      mapping (PAGEMAP_SCAN finds them without walking empty address
 *      space), with its frame number when pagemap shows it;
 *   2. frames: sorted by frame, pages mapping a frame seen before are already
 *      shared (fork) and dropped, as are pages on the kernel's zero page;
 *   3. read: in address order, runs of pages with one read of /proc/PID/mem
 *      each; zero pages are counted and dropped, the rest checksummed;
 *   4. group: sorted by checksum, each run of equal checksums is split into
 *      classes of byte-identical pages by reading them again (the checksum
 *      is only a filter); a class of k pages saves k - 1 pages, counted
 *      once over all processes and once within each.
 */
#include "dedupd/ctl/estimate.h"
#include "hash/pagehash.h"
#include "dedupd/common/uffd.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define PM_PRESENT (1ULL << 63)
#define PM_SWAP (1ULL << 62)
#define PM_PFN_MASK ((1ULL << 55) - 1)

#define READ_BATCH 256 /* pages per pagemap read and per memory read */
#define KEY_SHIFT 45   /* page numbers of user addresses fit in 45 bits (LA57) */
#define SKIP UINT64_MAX

/* One present page. key orders by process (the order given), then address. */
struct ref {
	uint64_t key;  /* pid index << KEY_SHIFT | page number */
	uint64_t pfn;  /* frame number; 0 if not visible; SKIP once dropped */
	uint64_t hash; /* checksum after pass 3 */
};

struct run {
	struct dd_estimate *e;
	struct ref *refs;
	size_t n, cap;
	bool pfn_visible;  /* pagemap shows frame numbers */
	uint64_t zero_pfn; /* the zero page's frame; 0: none seen */
	bool pagemap_scan; /* the kernel has PAGEMAP_SCAN (until it says no) */
	uint8_t *buf;	   /* READ_BATCH pages */
	int *mem;	   /* /proc/PID/mem of each process, -1 until opened */
	char *err;
	size_t errlen;
	bool mergeable; /* only the ranges below and the "mg" mappings */
	const struct dd_estimate_range *offered;
	size_t noffered;
	struct dd_estimate_range *only; /* this process's, during collect_pid() */
	size_t nonly, capnonly;
};

__attribute__((format(printf, 3, 4))) static int fail(struct run *r, int e, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(r->err, r->errlen, fmt, ap);
	va_end(ap);
	return e;
}

static unsigned pidx_of(const struct ref *x)
{
	return (unsigned)(x->key >> KEY_SHIFT);
}

static uint64_t addr_of(const struct ref *x)
{
	return (x->key & ((1ULL << KEY_SHIFT) - 1)) << DD_PAGE_SHIFT;
}

/*
 * Whether pagemap shows us frame numbers (CAP_SYS_ADMIN), and the frame of
 * the kernel's zero page in *zero_pfn: two read faults that land on the same
 * frame. Some kernels give every read fault a page of its own; then
 * *zero_pfn is 0 and such pages count as zero pages, which they are.
 */
static bool find_pfns(uint64_t *zero_pfn)
{
	volatile const uint8_t *p;
	uint64_t pm[2] = { 0, 0 };
	int fd;

	*zero_pfn = 0;
	p = mmap(NULL, 2 * DD_PAGE_SIZE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return false;
	(void)p[0]; /* a read fault maps the zero page, where there is one */
	(void)p[DD_PAGE_SIZE];
	fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		if (pread(fd, pm, sizeof(pm), (off_t)((uintptr_t)p / DD_PAGE_SIZE * 8)) !=
		    sizeof(pm))
			pm[0] = pm[1] = 0;
		close(fd);
	}
	munmap((void *)p, 2 * DD_PAGE_SIZE);
	if (!(pm[0] & PM_PRESENT) || !(pm[0] & PM_PFN_MASK))
		return false;
	if ((pm[0] & PM_PFN_MASK) == (pm[1] & PM_PFN_MASK))
		*zero_pfn = pm[0] & PM_PFN_MASK;
	return true;
}

static void read_identity(struct dd_estimate_pid *p)
{
	char path[64], line[256];
	unsigned uid;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/comm", (int)p->pid);
	f = fopen(path, "re");
	if (f) {
		if (fgets(p->comm, sizeof(p->comm), f))
			p->comm[strcspn(p->comm, "\n")] = 0;
		fclose(f);
	}
	snprintf(path, sizeof(path), "/proc/%d/status", (int)p->pid);
	f = fopen(path, "re");
	if (f) {
		while (fgets(line, sizeof(line), f))
			if (sscanf(line, "Uid: %u", &uid) == 1)
				p->uid = uid;
		fclose(f);
	}
}

static int push(struct run *r, uint64_t key, uint64_t pfn)
{
	if (r->n == r->cap) {
		size_t cap = r->cap ? r->cap * 2 : 4096;
		struct ref *v = realloc(r->refs, cap * sizeof(*v));

		if (!v)
			return fail(r, -ENOMEM, "out of memory after %zu pages", r->n);
		r->refs = v;
		r->cap = cap;
	}
	r->refs[r->n++] = (struct ref){ .key = key, .pfn = pfn };
	return 0;
}

/* Private, anonymous (no file behind it) and writable: what dedupd shares. */
static bool mapping_wanted(const char *perms, unsigned long inode, const char *name)
{
	if (perms[0] != 'r' || perms[1] != 'w' || perms[3] != 'p' || inode != 0)
		return false;
	return !name[0] || !strncmp(name, "[heap]", 6) || !strncmp(name, "[stack", 6) ||
	       !strncmp(name, "[anon:", 6);
}

/* Pass 1 for [lo, hi) of one mapping: one pagemap entry per page. */
static int read_pagemap(struct run *r, unsigned pidx, int pm_fd, uint64_t lo, uint64_t hi)
{
	struct dd_estimate_pid *p = &r->e->pids[pidx];
	uint64_t pm[READ_BATCH];

	for (uint64_t a = lo; a < hi;) {
		size_t n = (size_t)((hi - a) / DD_PAGE_SIZE);
		ssize_t got;

		n = n < READ_BATCH ? n : READ_BATCH;
		got = pread(pm_fd, pm, n * 8, (off_t)(a / DD_PAGE_SIZE * 8));
		if (got < 0)
			return fail(r, -errno, "pid %d: cannot read /proc/%d/pagemap: %s",
				    (int)p->pid, (int)p->pid, strerror(errno));
		n = (size_t)got / 8;
		if (!n)
			break;
		for (size_t i = 0; i < n; i++, a += DD_PAGE_SIZE) {
			uint64_t pfn = pm[i] & PM_PFN_MASK;

			if (!(pm[i] & PM_PRESENT)) {
				p->pages_swapped += !!(pm[i] & PM_SWAP);
				continue;
			}
			p->pages_present++;
			if (r->zero_pfn && pfn == r->zero_pfn) {
				p->pages_zero_mapped++;
				continue;
			}
			if (push(r, (uint64_t)pidx << KEY_SHIFT | a >> DD_PAGE_SHIFT,
				 r->pfn_visible ? pfn : 0) < 0)
				return -ENOMEM;
		}
	}
	return 0;
}

/* PAGEMAP_SCAN (dedupd/common/uffd.h): a sanitizer's shadow or a VM's sparse
 * guest RAM reserves terabytes of which little is mapped: reading one pagemap
 * entry per page of those would take hours. */

/* Pass 1 for one mapping through PAGEMAP_SCAN; -ENOTTY or -EINVAL if the
 * kernel has none (nothing counted then). */
static int scan_vma(struct run *r, unsigned pidx, int pm_fd, uint64_t lo, uint64_t hi)
{
	struct dd_estimate_pid *p = &r->e->pids[pidx];
	struct dd_page_region v[64];
	struct dd_pm_scan_arg arg;
	int n, rc;

	for (uint64_t at = lo; at < hi;) {
		arg = (struct dd_pm_scan_arg){
			.size = sizeof(arg),
			.start = at,
			.end = hi,
			.vec = (uint64_t)(uintptr_t)v,
			.vec_len = 64,
			.category_anyof_mask = DD_PAGE_IS_PRESENT | DD_PAGE_IS_SWAPPED,
			.return_mask = DD_PAGE_IS_PRESENT | DD_PAGE_IS_SWAPPED | DD_PAGE_IS_PFNZERO,
		};
		n = ioctl(pm_fd, DD_PAGEMAP_SCAN, &arg);
		if (n < 0 && (errno == ENOTTY || errno == EINVAL) && at == lo)
			return -errno;
		if (n < 0)
			return fail(r, -errno, "pid %d: PAGEMAP_SCAN of /proc/%d/pagemap: %s",
				    (int)p->pid, (int)p->pid, strerror(errno));
		for (int i = 0; i < n; i++) {
			uint64_t pages = (v[i].end - v[i].start) / DD_PAGE_SIZE;

			if (!(v[i].categories & DD_PAGE_IS_PRESENT)) {
				p->pages_swapped += pages;
			} else if (v[i].categories & DD_PAGE_IS_PFNZERO) {
				p->pages_present += pages;
				p->pages_zero_mapped += pages;
			} else {
				rc = read_pagemap(r, pidx, pm_fd, v[i].start, v[i].end);
				if (rc < 0)
					return rc;
			}
		}
		if (arg.walk_end <= at)
			break;
		at = arg.walk_end;
	}
	return 0;
}

/* Pass 1 for one mapping. */
static int collect_vma(struct run *r, unsigned pidx, int pm_fd, uint64_t lo, uint64_t hi)
{
	int rc;

	if (r->pagemap_scan) {
		rc = scan_vma(r, pidx, pm_fd, lo, hi);
		if (rc != -ENOTTY && rc != -EINVAL)
			return rc;
		r->pagemap_scan = false; /* an older kernel: one entry per page */
	}
	return read_pagemap(r, pidx, pm_fd, lo, hi);
}

/* The sentence for a /proc/PID file that would not open. Returns -e. */
static int proc_error(struct run *r, pid_t pid, const char *what, int e)
{
	if (e == ENOENT || e == ESRCH)
		return fail(r, -ESRCH, "pid %d: no such process", (int)pid);
	if (e == EACCES || e == EPERM)
		return fail(r, -e,
			    "pid %d: cannot open /proc/%d/%s: %s (reading another user's process "
			    "needs root or CAP_SYS_PTRACE)",
			    (int)pid, (int)pid, what, strerror(e));
	return fail(r, -e, "pid %d: cannot open /proc/%d/%s: %s", (int)pid, (int)pid, what,
		    strerror(e));
}

static int open_proc(struct run *r, pid_t pid, const char *what)
{
	char path[64];
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, what);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	return fd >= 0 ? fd : proc_error(r, pid, what, errno);
}

/*
 * The /proc/PID/mem of process pidx, opened on first use and kept; when the
 * file limit is reached, the cache is emptied once. -errno on failure.
 */
static int mem_fd(struct run *r, unsigned pidx)
{
	char path[64];
	int fd;

	if (r->mem[pidx] >= 0)
		return r->mem[pidx];
	snprintf(path, sizeof(path), "/proc/%d/mem", (int)r->e->pids[pidx].pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 && (errno == EMFILE || errno == ENFILE)) {
		for (size_t i = 0; i < r->e->npids; i++)
			if (r->mem[i] >= 0) {
				close(r->mem[i]);
				r->mem[i] = -1;
			}
		fd = open(path, O_RDONLY | O_CLOEXEC);
	}
	if (fd < 0)
		return errno == ENOENT ? -ESRCH : -errno;
	return r->mem[pidx] = fd;
}

static int add_only(struct run *r, pid_t pid, uint64_t lo, uint64_t hi)
{
	if (r->nonly == r->capnonly) {
		size_t cap = r->capnonly ? 2 * r->capnonly : 64;
		struct dd_estimate_range *v = realloc(r->only, cap * sizeof(*v));

		if (!v)
			return fail(r, -ENOMEM, "out of memory");
		r->only = v;
		r->capnonly = cap;
	}
	r->only[r->nonly++] = (struct dd_estimate_range){ pid, lo, hi };
	return 0;
}

/* The ranges of pid offered for merging: given ones and "mg" mappings. */
static int mergeable_ranges(struct run *r, pid_t pid)
{
	unsigned long long lo = 0, hi = 0;
	char *line = NULL;
	size_t cap = 0;
	int fd, rc = 0;
	FILE *f;

	r->nonly = 0;
	for (size_t i = 0; i < r->noffered && rc == 0; i++)
		if (r->offered[i].pid == pid && r->offered[i].end > r->offered[i].start)
			rc = add_only(r, pid, r->offered[i].start, r->offered[i].end);
	fd = open_proc(r, pid, "smaps");
	if (fd < 0)
		return fd;
	f = fdopen(fd, "re");
	if (!f) {
		close(fd);
		return fail(r, -ENOMEM, "out of memory");
	}
	while (rc == 0 && getline(&line, &cap, f) > 0) {
		unsigned long long a, b;
		int off = 0;

		if (sscanf(line, "%llx-%llx %n", &a, &b, &off) == 2 && off) {
			lo = a;
			hi = b;
		} else if (!strncmp(line, "VmFlags:", 8) && strstr(line, " mg")) {
			rc = add_only(r, pid, lo, hi);
		}
	}
	free(line);
	fclose(f);
	return rc;
}

/* [lo, hi) of a wanted mapping, cut to the ranges offered for merging. */
static int collect_offered(struct run *r, unsigned pidx, int pm_fd, uint64_t lo, uint64_t hi)
{
	int rc = 0;

	for (size_t i = 0; i < r->nonly && rc == 0; i++) {
		uint64_t a = r->only[i].start > lo ? r->only[i].start : lo;
		uint64_t b = r->only[i].end < hi ? r->only[i].end : hi;

		if (a < b) {
			r->e->pids[pidx].pages_mapped += (b - a) / DD_PAGE_SIZE;
			rc = collect_vma(r, pidx, pm_fd, a, b);
		}
	}
	return rc;
}

static int collect_pid(struct run *r, unsigned pidx)
{
	struct dd_estimate_pid *p = &r->e->pids[pidx];
	unsigned long long lo, hi, inode;
	char *line = NULL, perms[5];
	size_t cap = 0;
	int maps_fd, pm_fd, rc = 0, off;
	FILE *f;

	maps_fd = open_proc(r, p->pid, "maps");
	if (maps_fd < 0)
		return maps_fd;
	pm_fd = open_proc(r, p->pid, "pagemap");
	if (pm_fd < 0) {
		close(maps_fd);
		return pm_fd;
	}
	rc = mem_fd(r, pidx); /* ptrace access to the memory itself, checked now */
	if (rc < 0) {
		close(maps_fd);
		close(pm_fd);
		return proc_error(r, p->pid, "mem", -rc);
	}
	rc = r->mergeable ? mergeable_ranges(r, p->pid) : 0;
	if (rc < 0) {
		close(maps_fd);
		close(pm_fd);
		return rc;
	}
	read_identity(p);
	f = fdopen(maps_fd, "re");
	if (!f) {
		close(maps_fd);
		close(pm_fd);
		return fail(r, -ENOMEM, "out of memory");
	}
	while (rc == 0 && getline(&line, &cap, f) > 0) {
		char *name;

		off = 0;
		if (sscanf(line, "%llx-%llx %4s %*x %*x:%*x %llu %n", &lo, &hi, perms, &inode,
			   &off) < 4 ||
		    !off)
			continue;
		name = line + off;
		name[strcspn(name, "\n")] = 0;
		if (!mapping_wanted(perms, (unsigned long)inode, name))
			continue;
		p->vmas++;
		if (r->mergeable) {
			rc = collect_offered(r, pidx, pm_fd, lo, hi);
			continue;
		}
		p->pages_mapped += (hi - lo) / DD_PAGE_SIZE;
		rc = collect_vma(r, pidx, pm_fd, lo, hi);
	}
	if (rc == 0 && ferror(f))
		rc = fail(r, -EIO, "pid %d: cannot read /proc/%d/maps", (int)p->pid, (int)p->pid);
	free(line);
	fclose(f);
	close(pm_fd);
	return rc;
}

static void sort_refs(struct run *r, int (*cmp)(const void *, const void *))
{
	if (r->n > 1)
		qsort(r->refs, r->n, sizeof(*r->refs), cmp);
}

static int by_pfn(const void *a, const void *b)
{
	const struct ref *x = a, *y = b;

	if (x->pfn != y->pfn)
		return x->pfn < y->pfn ? -1 : 1;
	return x->key < y->key ? -1 : x->key > y->key;
}

static int by_key(const void *a, const void *b)
{
	const struct ref *x = a, *y = b;

	return x->key < y->key ? -1 : x->key > y->key;
}

static int by_hash(const void *a, const void *b)
{
	const struct ref *x = a, *y = b;

	if (x->hash != y->hash)
		return x->hash < y->hash ? -1 : 1;
	return x->key < y->key ? -1 : x->key > y->key;
}

/* Drop the references marked SKIP. */
static void compact(struct run *r)
{
	size_t w = 0;

	for (size_t i = 0; i < r->n; i++)
		if (r->refs[i].pfn != SKIP)
			r->refs[w++] = r->refs[i];
	r->n = w;
}

/* Pass 2: a frame mapped by several pages is read once, at its first page. */
static void drop_shared_frames(struct run *r)
{
	sort_refs(r, by_pfn);
	for (size_t i = 0; i < r->n;) {
		size_t j = i + 1;

		for (; j < r->n && r->refs[j].pfn == r->refs[i].pfn; j++)
			r->e->pids[pidx_of(&r->refs[j])].pages_already_shared++;
		for (size_t k = i + 1; k < j; k++)
			r->refs[k].pfn = SKIP;
		i = j;
	}
	compact(r);
	sort_refs(r, by_key);
}

/*
 * Read n pages at addr of process pidx into buf. Pages read, or -errno if
 * none. Through /proc/PID/mem, not process_vm_readv(): that pins the pages,
 * and the kernel unshares (copies) an anonymous page that is copy-on-write
 * shared when it is pinned, so a dry run over forked workers would cost them
 * the very memory it measures.
 */
static ssize_t read_pages(struct run *r, unsigned pidx, uint64_t addr, size_t n, uint8_t *buf)
{
	int fd = mem_fd(r, pidx);
	ssize_t got;

	if (fd < 0)
		return fd;
	got = pread(fd, buf, n * DD_PAGE_SIZE, (off_t)addr);
	if (got < 0)
		return errno == EIO ? -EFAULT : -errno;
	return got / DD_PAGE_SIZE;
}

/* Take one page's content: zero, checksum, or unreadable. */
static void take_page(struct run *r, struct ref *x, const uint8_t *page)
{
	struct dd_estimate_pid *p = &r->e->pids[pidx_of(x)];

	p->pages_scanned++;
	if (dd_page_is_zero(page)) {
		p->zero_pages++;
		x->pfn = SKIP;
	} else {
		x->hash = dd_page_hash(page);
	}
}

static int read_error(struct run *r, struct ref *x, int e)
{
	struct dd_estimate_pid *p = &r->e->pids[pidx_of(x)];

	if (e == -ESRCH)
		return fail(r, -ESRCH, "pid %d exited during the estimate", (int)p->pid);
	if (e == -EPERM || e == -EACCES)
		return fail(r, e,
			    "pid %d: cannot read its memory: %s (another user's process needs "
			    "root or CAP_SYS_PTRACE; see also kernel.yama.ptrace_scope)",
			    (int)p->pid, strerror(-e));
	if (e == -ENOMEM)
		return fail(r, e, "out of memory");
	p->pages_unreadable++; /* EFAULT: unmapped meanwhile, or not readable */
	x->pfn = SKIP;
	return 0;
}

/* Pass 3: runs of consecutive pages of one process, one read per run. */
static int read_all(struct run *r)
{
	size_t i = 0;

	while (i < r->n) {
		struct ref *x = &r->refs[i];
		unsigned pidx = pidx_of(x);
		size_t len = 1;
		ssize_t got;

		while (i + len < r->n && len < READ_BATCH && r->refs[i + len].key == x->key + len)
			len++;
		got = read_pages(r, pidx, addr_of(x), len, r->buf);
		if (got < 0 && got != -EFAULT)
			return read_error(r, x, (int)got);
		if (got < 0)
			got = 0;
		for (size_t j = 0; j < (size_t)got; j++)
			take_page(r, &r->refs[i + j], r->buf + j * DD_PAGE_SIZE);
		for (size_t j = (size_t)got; j < len; j++) { /* page by page past a hole */
			ssize_t one = read_pages(r, pidx, addr_of(&r->refs[i + j]), 1, r->buf);
			int rc = 0;

			if (one == 1)
				take_page(r, &r->refs[i + j], r->buf);
			else
				rc = read_error(r, &r->refs[i + j], one < 0 ? (int)one : -EFAULT);
			if (rc < 0)
				return rc;
		}
		i += len;
	}
	compact(r);
	return 0;
}

struct class
{
	uint8_t *page;	   /* content of the class */
	unsigned last_pid; /* the last process index counted for this class, +1 */
};

/* Split refs[0..n) (equal checksums, in key order) into classes of equal
 * content. Returns the number of classes, or -errno. */
static int split_run(struct run *r, struct ref *refs, size_t n, struct class **cls, size_t *ncap)
{
	size_t nc = 0;

	for (size_t i = 0; i < n; i++) {
		struct ref *x = &refs[i];
		struct dd_estimate_pid *p = &r->e->pids[pidx_of(x)];
		ssize_t got = read_pages(r, pidx_of(x), addr_of(x), 1, r->buf);
		size_t c;

		if (got != 1) {
			int rc = read_error(r, x, got < 0 ? (int)got : -EFAULT);

			if (rc < 0)
				return rc;
			p->pages_scanned--; /* no longer there: as if never read */
			continue;
		}
		for (c = 0; c < nc; c++)
			if (!memcmp((*cls)[c].page, r->buf, DD_PAGE_SIZE))
				break;
		if (c == nc) {
			if (nc == *ncap) {
				size_t cap = *ncap ? *ncap * 2 : 4;
				struct class *v = realloc(*cls, cap * sizeof(*v));

				if (!v)
					return fail(r, -ENOMEM, "out of memory");
				for (size_t k = *ncap; k < cap; k++)
					v[k].page = NULL;
				*cls = v;
				*ncap = cap;
			}
			if (!(*cls)[nc].page && !((*cls)[nc].page = malloc(DD_PAGE_SIZE)))
				return fail(r, -ENOMEM, "out of memory");
			memcpy((*cls)[nc].page, r->buf, DD_PAGE_SIZE);
			(*cls)[nc].last_pid = 0;
			nc++;
		}
		/* refs are in process order: a class meets each process once */
		if ((*cls)[c].last_pid != pidx_of(x) + 1) {
			(*cls)[c].last_pid = pidx_of(x) + 1;
			p->distinct++;
		}
	}
	return (int)nc;
}

/* Pass 4. */
static int group_all(struct run *r)
{
	struct class *cls = NULL;
	size_t ncap = 0;
	int rc = 0;

	sort_refs(r, by_hash);
	for (size_t i = 0; i < r->n && rc >= 0;) {
		size_t len = 1;

		while (i + len < r->n && r->refs[i + len].hash == r->refs[i].hash)
			len++;
		if (len == 1) {
			r->e->pids[pidx_of(&r->refs[i])].distinct++;
			r->e->distinct++;
		} else {
			rc = split_run(r, &r->refs[i], len, &cls, &ncap);
			if (rc > 0) {
				r->e->distinct += (uint64_t)rc;
				r->e->hash_collisions += (uint64_t)rc - 1;
			}
		}
		i += len;
	}
	for (size_t k = 0; k < ncap; k++)
		free(cls[k].page);
	free(cls);
	return rc < 0 ? rc : 0;
}

static void totals(struct dd_estimate *e)
{
	for (size_t i = 0; i < e->npids; i++) {
		struct dd_estimate_pid *p = &e->pids[i];

		p->pages_saved_if_merged = p->pages_scanned - p->zero_pages - p->distinct;
		e->pages_scanned += p->pages_scanned;
		e->zero_pages += p->zero_pages;
		e->pages_saved_within += p->pages_saved_if_merged;
		e->pages_zero_mapped += p->pages_zero_mapped;
		e->pages_already_shared += p->pages_already_shared;
		e->pages_swapped += p->pages_swapped;
		e->pages_unreadable += p->pages_unreadable;
	}
	e->pages_saved_if_merged = e->pages_scanned - e->zero_pages - e->distinct;
	e->pages_saved_across = e->pages_saved_if_merged - e->pages_saved_within;
}

static int check_pids(struct run *r, const pid_t *pids, size_t n)
{
	if (n == 0 || n > DD_ESTIMATE_MAX_PIDS)
		return fail(r, -EINVAL, "estimate: give 1 to %d pids", DD_ESTIMATE_MAX_PIDS);
	for (size_t i = 0; i < n; i++) {
		if (pids[i] <= 0)
			return fail(r, -EINVAL, "estimate: bad pid %d", (int)pids[i]);
		for (size_t j = 0; j < i; j++)
			if (pids[j] == pids[i])
				return fail(r, -EINVAL, "estimate: pid %d given twice",
					    (int)pids[i]);
	}
	return 0;
}

static int estimate(struct run *r, const pid_t *pids, size_t n);

int dd_estimate_run(const pid_t *pids, size_t n, struct dd_estimate *e, char *err, size_t errlen)
{
	struct run r = { .e = e, .err = err, .errlen = errlen };

	return estimate(&r, pids, n);
}

int dd_estimate_run_mergeable(const pid_t *pids, size_t n, const struct dd_estimate_range *offered,
			      size_t noffered, struct dd_estimate *e, char *err, size_t errlen)
{
	struct run r = { .e = e, .err = err, .errlen = errlen, .mergeable = true,
			 .offered = offered, .noffered = noffered };
	int rc = estimate(&r, pids, n);

	if (rc == 0)
		e->mergeable_only = true;
	return rc;
}

static int estimate(struct run *rp, const pid_t *pids, size_t n)
{
	struct run r = *rp;
	struct dd_estimate *e = r.e;
	struct timespec t0, t1;
	int rc;

	memset(e, 0, sizeof(*e));
	clock_gettime(CLOCK_MONOTONIC, &t0);
	rc = check_pids(&r, pids, n);
	if (rc < 0)
		return rc;
	e->pids = calloc(n, sizeof(*e->pids));
	r.buf = malloc(READ_BATCH * DD_PAGE_SIZE);
	r.mem = malloc(n * sizeof(*r.mem));
	if (!e->pids || !r.buf || !r.mem) {
		rc = fail(&r, -ENOMEM, "out of memory");
		goto out;
	}
	e->npids = n;
	for (size_t i = 0; i < n; i++)
		r.mem[i] = -1;
	r.pfn_visible = e->pfn_visible = find_pfns(&r.zero_pfn);
	r.pagemap_scan = true;
	for (size_t i = 0; i < n; i++)
		e->pids[i].pid = pids[i];
	for (size_t i = 0; i < n && rc == 0; i++)
		rc = collect_pid(&r, (unsigned)i);
	if (rc == 0 && e->pfn_visible)
		drop_shared_frames(&r);
	if (rc == 0)
		rc = read_all(&r);
	if (rc == 0)
		rc = group_all(&r);
	if (rc == 0)
		totals(e);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	e->elapsed_ms = (uint64_t)(t1.tv_sec - t0.tv_sec) * 1000 +
			(uint64_t)((t1.tv_nsec - t0.tv_nsec) / 1000000);
out:
	for (size_t i = 0; r.mem && i < e->npids; i++)
		if (r.mem[i] >= 0)
			close(r.mem[i]);
	free(r.mem);
	free(r.refs);
	free(r.buf);
	free(r.only);
	if (rc < 0)
		dd_estimate_free(e);
	return rc;
}

void dd_estimate_free(struct dd_estimate *e)
{
	if (!e)
		return;
	free(e->pids);
	e->pids = NULL;
	e->npids = 0;
}
