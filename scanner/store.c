// SPDX-License-Identifier: MIT
/*
 * Stable store (see store.h). Slot state lives in one array indexed by slot
 * (sharers, pending, node), grown under st->lock; page contents live in a
 * MAP_SHARED|MAP_NORESERVE reservation of the memfd that never moves, so they
 * are read without the lock. The file grows in STORE_GROW_SLOTS steps.
 *
 * Freeing: a slot whose sharers and pending drop to zero becomes a GC
 * candidate. It is punched out (fallocate PUNCH_HOLE) only when no process maps
 * it: punching a page that some private mapping still reads through would turn
 * that page into zeros. Until then it stays in the stable table and can be
 * shared again.
 */
#include "scanner/store.h"
#include "hash/pagehash.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <urcu.h>

/* 64 GiB of address space reserved per store: enough slots for any host here. */
#define STORE_MAX_SLOTS (16u << 20)
#define STORE_GROW_SLOTS 16384u /* 64 MiB of file per growth step */
#define STORE_WARM_CHUNK 64u /* slots allocated ahead per populate call */

struct slot {
	uint32_t sharers;
	uint32_t pending;
	struct dd_stable *node;
};

struct dd_store {
	pthread_mutex_t lock;
	uint32_t domain;
	int memfd;
	int rofd; /* the same file opened read-only: what clients get */
	dev_t dev;
	ino_t ino;
	uint8_t *base;
	struct dd_table *stable;
	struct slot *slots;
	uint64_t *used; /* bitmap */
	uint64_t *warm; /* bitmap: free slots whose page is allocated (dd_store_warm()) */
	uint32_t nslots;   /* file size in slots */
	uint32_t cursor;
	uint64_t nr_used, nr_shared, nr_sharers, nr_freed, nr_candidates;
	uint64_t nr_holes; /* slots taken with no content (is_hole()) */
	uint32_t gc_epoch; /* GC runs begun: a hole's sharers field holds the one
			    * current when it was last let go (holes have no sharers) */
	uint64_t nr_warm, reserved; /* warm slots now; slots reserved, ever */
};

static int grow(struct dd_store *st);
static bool is_used(const struct dd_store *st, uint32_t i);

/*
 * What clients get of the store: a read-only descriptor (their MAP_PRIVATE
 * mappings need no more), of a file only its owner, the daemon's user, may
 * open again for writing (through /proc/PID/fd/N). A client holding the
 * read-write memfd could write into every page it shares with others,
 * processes of other users among them in domain "all". 0, or -1 (errno).
 */
static int open_read_only(struct dd_store *st)
{
	char path[64];

	if (fchmod(st->memfd, 0600) < 0)
		return -1;
	snprintf(path, sizeof(path), "/proc/self/fd/%d", st->memfd);
	st->rofd = open(path, O_RDONLY | O_CLOEXEC);
	return st->rofd < 0 ? -1 : 0;
}

struct dd_store *dd_store_new(uint32_t domain, struct dd_table *stable)
{
	struct dd_store *st = calloc(1, sizeof(*st));
	char name[64];
	struct stat sb;

	if (!st)
		return NULL;
	pthread_mutex_init(&st->lock, NULL);
	st->domain = domain;
	st->stable = stable;
	st->base = MAP_FAILED;
	st->rofd = -1;
	snprintf(name, sizeof(name), "dedupd-store-%u", domain);
	st->memfd = memfd_create(name, MFD_CLOEXEC);
	if (st->memfd < 0 || fstat(st->memfd, &sb) < 0 || open_read_only(st) < 0)
		goto fail;
	st->dev = sb.st_dev;
	st->ino = sb.st_ino;
	st->base = mmap(NULL, (size_t)STORE_MAX_SLOTS * DD_PAGE_SIZE, PROT_READ | PROT_WRITE,
			MAP_SHARED | MAP_NORESERVE, st->memfd, 0);
	if (st->base == MAP_FAILED)
		goto fail;
	return st;
fail:
	dd_store_free(st);
	return NULL;
}

struct dd_store *dd_store_adopt(uint32_t domain, struct dd_table *stable, int fd)
{
	struct dd_store *st = calloc(1, sizeof(*st));
	struct stat sb;
	off_t data, hole = 0;

	if (!st)
		return NULL;
	pthread_mutex_init(&st->lock, NULL);
	st->domain = domain;
	st->stable = stable;
	st->memfd = fd;
	st->base = MAP_FAILED;
	st->rofd = -1;
	if (open_read_only(st) < 0)
		goto fail;
	if (fstat(fd, &sb) < 0 || sb.st_size % DD_PAGE_SIZE ||
	    (uint64_t)sb.st_size / DD_PAGE_SIZE > STORE_MAX_SLOTS) {
		errno = errno ? errno : EINVAL;
		goto fail;
	}
	st->dev = sb.st_dev;
	st->ino = sb.st_ino;
	st->base = mmap(NULL, (size_t)STORE_MAX_SLOTS * DD_PAGE_SIZE, PROT_READ | PROT_WRITE,
			MAP_SHARED | MAP_NORESERVE, fd, 0);
	if (st->base == MAP_FAILED)
		goto fail;
	while ((uint64_t)st->nslots * DD_PAGE_SIZE < (uint64_t)sb.st_size)
		if (grow(st) < 0)
			goto fail;
	/* Every slot with data (holes are slots the old daemon freed) goes back
	 * in the stable table, without sharers until the regions that map it
	 * register again (dd_store_adopt_sharer()). */
	while ((data = lseek(fd, hole, SEEK_DATA)) >= 0) {
		hole = lseek(fd, data, SEEK_HOLE);
		if (hole < 0)
			break;
		for (uint64_t i = (uint64_t)data / DD_PAGE_SIZE; i < (uint64_t)hole / DD_PAGE_SIZE;
		     i++) {
			struct dd_stable *node = calloc(1, sizeof(*node));
			const void *page = st->base + i * DD_PAGE_SIZE;

			if (!node)
				goto fail;
			node->store = st;
			node->slot = (uint32_t)i;
			node->listed = true;
			st->used[i / 64] |= 1ULL << (i % 64);
			st->slots[i] = (struct slot){ .node = node };
			st->nr_used++;
			st->nr_candidates++;
			dd_table_add(st->stable, &node->tn, st->domain, dd_page_hash(page));
		}
	}
	st->cursor = (uint32_t)((uint64_t)sb.st_size / DD_PAGE_SIZE);
	return st;
fail:
	dd_store_free(st);
	return NULL;
}

int dd_store_adopt_sharer(struct dd_store *st, uint32_t slot)
{
	int r = -ENOENT;

	pthread_mutex_lock(&st->lock);
	if (slot < st->nslots && is_used(st, slot)) {
		if (st->slots[slot].sharers++ == 0)
			st->nr_shared++;
		st->nr_sharers++;
		r = 0;
	}
	pthread_mutex_unlock(&st->lock);
	return r;
}

bool dd_store_is_file(const struct dd_store *st, unsigned long ino)
{
	return (unsigned long)st->ino == ino;
}

uint32_t dd_stable_domain(const struct dd_table_node *tn)
{
	return caa_container_of(tn, struct dd_stable, tn)->store->domain;
}

_Static_assert(sizeof(struct dd_stable) == 32, "stable node must stay 32 bytes");

/* Stable nodes out of the table, freed together after one grace period. */
struct node_batch {
	struct rcu_head rcu;
	size_t n, cap;
	struct dd_stable *nodes[];
};

/* Room for one more node in *b (allocated or grown as needed); false on ENOMEM. */
static bool batch_room(struct node_batch **b)
{
	struct node_batch *nb;
	size_t cap;

	if (*b && (*b)->n < (*b)->cap)
		return true;
	cap = *b ? (*b)->cap * 2 : 256;
	nb = realloc(*b, sizeof(*nb) + cap * sizeof(nb->nodes[0]));
	if (!nb)
		return false;
	if (!*b)
		nb->n = 0;
	nb->cap = cap;
	*b = nb;
	return true;
}

static void free_batch_rcu(struct rcu_head *h)
{
	struct node_batch *b = caa_container_of(h, struct node_batch, rcu);

	for (size_t i = 0; i < b->n; i++)
		free(b->nodes[i]);
	free(b);
}

static void batch_retire(struct node_batch *b)
{
	if (b && b->n)
		call_rcu(&b->rcu, free_batch_rcu);
	else
		free(b);
}

void dd_store_free(struct dd_store *st)
{
	struct node_batch *b = NULL;
	int e = errno;

	if (!st)
		return;

	for (uint32_t i = 0; i < st->nslots; i++) {
		struct dd_stable *n = st->slots[i].node;

		/* Without memory for the batch the node is left to leak: this
		 * is teardown, and readers may still see it. */
		if (n && !n->listed)
			free(n); /* reserved, never filled: nobody saw it */
		else if (n && dd_table_del(st->stable, &n->tn) == 0 && batch_room(&b))
			b->nodes[b->n++] = n;
	}
	batch_retire(b);
	if (st->base != MAP_FAILED)
		munmap(st->base, (size_t)STORE_MAX_SLOTS * DD_PAGE_SIZE);
	if (st->memfd >= 0)
		close(st->memfd);
	if (st->rofd >= 0)
		close(st->rofd);
	free(st->slots);
	free(st->used);
	free(st->warm);
	pthread_mutex_destroy(&st->lock);
	free(st);
	errno = e;
}

int dd_store_memfd(const struct dd_store *st)
{
	return st->memfd;
}

int dd_store_client_fd(const struct dd_store *st)
{
	return st->rofd;
}

const void *dd_store_page(const struct dd_store *st, uint32_t slot)
{
	return st->base + (size_t)slot * DD_PAGE_SIZE;
}

static int grow(struct dd_store *st)
{
	uint32_t n = st->nslots + STORE_GROW_SLOTS;
	struct slot *s;
	uint64_t *u;

	if (n > STORE_MAX_SLOTS)
		return -ENOSPC;
	if (ftruncate(st->memfd, (off_t)n * DD_PAGE_SIZE) < 0)
		return -errno;
	s = realloc(st->slots, n * sizeof(*s));
	if (!s)
		return -ENOMEM;
	st->slots = s;
	u = realloc(st->used, n / 8);
	if (!u)
		return -ENOMEM;
	st->used = u;
	u = realloc(st->warm, n / 8);
	if (!u)
		return -ENOMEM;
	st->warm = u;
	memset(s + st->nslots, 0, STORE_GROW_SLOTS * sizeof(*s));
	memset((char *)st->used + st->nslots / 8, 0, STORE_GROW_SLOTS / 8);
	memset((char *)st->warm + st->nslots / 8, 0, STORE_GROW_SLOTS / 8);
	st->nslots = n;
	return 0;
}

static bool is_used(const struct dd_store *st, uint32_t i)
{
	return st->used[i / 64] & (1ULL << (i % 64));
}

static bool is_warm(const struct dd_store *st, uint32_t i)
{
	return st->warm[i / 64] & (1ULL << (i % 64));
}

static void set_warm(struct dd_store *st, uint32_t i, bool on)
{
	if (on) {
		st->warm[i / 64] |= 1ULL << (i % 64);
		st->nr_warm++;
	} else {
		st->warm[i / 64] &= ~(1ULL << (i % 64));
		st->nr_warm--;
	}
}

static int64_t find_free(struct dd_store *st, uint32_t from)
{
	for (uint32_t i = from; i < st->nslots; i++) {
		if (st->used[i / 64] == ~0ULL) {
			i |= 63;
			continue;
		}
		if (!is_used(st, i))
			return i;
	}
	return -1;
}

int64_t dd_store_reserve(struct dd_store *st, int64_t hint, uint32_t pending)
{
	struct dd_stable *node = calloc(1, sizeof(*node));
	int64_t slot = -1;
	int r;

	if (!node)
		return -ENOMEM;
	pthread_mutex_lock(&st->lock);
	if (hint >= 0 && hint + 1 < st->nslots && !is_used(st, (uint32_t)hint + 1))
		slot = hint + 1;
	if (slot < 0)
		slot = find_free(st, st->cursor);
	if (slot < 0)
		slot = find_free(st, 0);
	if (slot < 0) {
		slot = st->nslots;
		r = grow(st);
		if (r < 0) {
			pthread_mutex_unlock(&st->lock);
			free(node);
			return r;
		}
	}
	st->used[slot / 64] |= 1ULL << (slot % 64);
	if (is_warm(st, (uint32_t)slot))
		set_warm(st, (uint32_t)slot, false); /* its page is there: the fill only copies */
	st->cursor = (uint32_t)slot + 1;
	st->nr_used++;
	st->reserved++;
	node->store = st;
	node->slot = (uint32_t)slot;
	st->slots[slot] = (struct slot){ .pending = pending, .node = node };
	pthread_mutex_unlock(&st->lock);
	return slot;
}

void *dd_store_slot_mem(struct dd_store *st, uint32_t slot)
{
	return st->base + (size_t)slot * DD_PAGE_SIZE;
}

int dd_store_fill(struct dd_store *st, uint32_t slot, const void *pages, uint32_t n)
{
	size_t len = (size_t)n * DD_PAGE_SIZE;
	ssize_t w = pwrite(st->memfd, pages, len, (off_t)slot * DD_PAGE_SIZE);

	if (w != (ssize_t)len)
		return w < 0 ? -errno : -EIO;
	dd_store_publish(st, slot, n);
	return 0;
}

void dd_store_publish(struct dd_store *st, uint32_t slot, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		uint64_t h = dd_page_hash(dd_store_page(st, slot + i));
		struct dd_stable *node;

		/* Only the slot array needs the lock (grow() may move it); the
		 * node is ours until it is listed, and the table is lock-free. */
		pthread_mutex_lock(&st->lock);
		node = st->slots[slot + i].node;
		pthread_mutex_unlock(&st->lock);
		node->listed = true;
		dd_table_add(st->stable, &node->tn, st->domain, h);
	}
}

void dd_store_unreserve(struct dd_store *st, uint32_t slot, bool hole)
{
	pthread_mutex_lock(&st->lock);
	free(st->slots[slot].node); /* never listed: no reader can hold it */
	st->slots[slot] = (struct slot){ 0 };
	/* A pwrite that failed part-way may have left data: punch it. */
	fallocate(st->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
		  (off_t)slot * DD_PAGE_SIZE, DD_PAGE_SIZE);
	st->nr_used--;
	if (hole) { /* a span maps over it: it stays taken, empty */
		st->slots[slot].sharers = st->gc_epoch;
		st->nr_holes++;
		st->nr_candidates++;
	} else {
		st->used[slot / 64] &= ~(1ULL << (slot % 64));
	}
	pthread_mutex_unlock(&st->lock);
}

/*
 * A hole: a slot taken with no content and no node (found by nobody). A
 * span's mapping covers the slots between its runs, where the process has
 * pages of its own (anonymous, in the span's VMA). If it discards one of
 * those, its next read reads the store there: that must stay zeros, so no
 * content may go into such a slot while any mapping covers it. The GC frees
 * a hole once none does.
 */
static bool is_hole(const struct dd_store *st, uint32_t i)
{
	return is_used(st, i) && !st->slots[i].node;
}

void dd_store_hold_holes(struct dd_store *st, uint32_t slot, uint32_t n)
{
	uint32_t punch = 0, np = 0; /* a stretch of warm pages to give back */

	pthread_mutex_lock(&st->lock);
	for (uint32_t i = slot; i < slot + n && i < st->nslots; i++) {
		if (is_used(st, i)) {
			st->slots[i].pending++;
			continue;
		}
		if (is_warm(st, i)) { /* its page is there: a hole holds none */
			set_warm(st, i, false);
			if (np && punch + np != i) {
				fallocate(st->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
					  (off_t)punch * DD_PAGE_SIZE, (off_t)np * DD_PAGE_SIZE);
				np = 0;
			}
			punch = np ? punch : i;
			np++;
		}
		st->used[i / 64] |= 1ULL << (i % 64);
		st->slots[i] = (struct slot){ .pending = 1 };
		st->nr_holes++;
	}
	if (np)
		fallocate(st->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			  (off_t)punch * DD_PAGE_SIZE, (off_t)np * DD_PAGE_SIZE);
	pthread_mutex_unlock(&st->lock);
}

void dd_store_release_holes(struct dd_store *st, uint32_t slot, uint32_t n)
{
	pthread_mutex_lock(&st->lock);
	for (uint32_t i = slot; i < slot + n && i < st->nslots; i++) {
		struct slot *s = &st->slots[i];

		if (!is_used(st, i) || !s->pending || --s->pending)
			continue;
		if (is_hole(st, i))
			s->sharers = st->gc_epoch; /* when it was let go (dd_store_gc()) */
		if (is_hole(st, i) || !s->sharers)
			st->nr_candidates++;
	}
	pthread_mutex_unlock(&st->lock);
}

/*
 * The first write to a newly allocated page costs 2-6 us on this kind of
 * guest (the kernel's allocation, and the hypervisor backing the page), a
 * rewrite ~1 us: allocating slots ahead of the fills moves that cost off the
 * scan thread. The slots are only marked, not reserved: the populate
 * allocates a zeroed page for a hole and leaves a page that is there as it
 * is, so a slot reserved and filled meanwhile keeps its content.
 */
int dd_store_warm(struct dd_store *st, uint32_t want)
{
	uint32_t first = 0, n = 0;
	int r;

	pthread_mutex_lock(&st->lock);
	/* Only in the file as it is: the reservations grow it (a growth ahead
	 * would add 16,384 slots of bookkeeping the store may never use). */
	if (st->nr_warm < want) {
		uint32_t i = st->cursor, lim = st->nslots;

		/* The first free slot from the cursor on that is not warm yet. */
		while (i < lim && i - st->cursor < want + STORE_WARM_CHUNK &&
		       (is_used(st, i) || is_warm(st, i)))
			i++;
		first = i;
		while (i < lim && n < STORE_WARM_CHUNK && n < want - st->nr_warm &&
		       !is_used(st, i) && !is_warm(st, i))
			i++, n++;
		for (uint32_t k = first; k < first + n; k++)
			set_warm(st, k, true);
	}
	pthread_mutex_unlock(&st->lock);
	if (!n)
		return 0;
	if (madvise(st->base + (size_t)first * DD_PAGE_SIZE, (size_t)n * DD_PAGE_SIZE,
		    MADV_POPULATE_WRITE) == 0)
		return (int)n;
	r = -errno;
	/* Give back what is still only warm (not reserved since). */
	pthread_mutex_lock(&st->lock);
	for (uint32_t k = first; k < first + n; k++)
		if (is_warm(st, k)) {
			set_warm(st, k, false);
			fallocate(st->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				  (off_t)k * DD_PAGE_SIZE, DD_PAGE_SIZE);
		}
	pthread_mutex_unlock(&st->lock);
	return r;
}

uint32_t dd_store_cool(struct dd_store *st)
{
	uint32_t n = 0;

	pthread_mutex_lock(&st->lock);
	for (uint32_t i = 0; st->nr_warm && i < st->nslots;) {
		uint32_t k = 0;

		if (!st->warm[i / 64]) {
			i = (i | 63) + 1;
			continue;
		}
		while (i + k < st->nslots && is_warm(st, i + k))
			set_warm(st, i + k++, false);
		if (k) {
			fallocate(st->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				  (off_t)i * DD_PAGE_SIZE, (off_t)k * DD_PAGE_SIZE);
			n += k;
		}
		i += k + 1;
	}
	pthread_mutex_unlock(&st->lock);
	return n;
}

uint64_t dd_store_reserved(struct dd_store *st)
{
	uint64_t n;

	pthread_mutex_lock(&st->lock);
	n = st->reserved;
	pthread_mutex_unlock(&st->lock);
	return n;
}

bool dd_store_try_pend(struct dd_stable *node)
{
	struct dd_store *st = node->store;
	bool ok;

	pthread_mutex_lock(&st->lock);
	ok = !node->dead;
	if (ok)
		st->slots[node->slot].pending++;
	pthread_mutex_unlock(&st->lock);
	return ok;
}

void dd_store_pend_done(struct dd_store *st, uint32_t slot, bool merged)
{
	struct slot *s;

	pthread_mutex_lock(&st->lock);
	s = &st->slots[slot];
	if (s->pending)
		s->pending--;
	if (merged) {
		if (s->sharers++ == 0)
			st->nr_shared++;
		st->nr_sharers++;
	}
	if (!s->sharers && !s->pending)
		st->nr_candidates++;
	pthread_mutex_unlock(&st->lock);
}

void dd_store_unshare(struct dd_store *st, uint32_t slot)
{
	struct slot *s;

	pthread_mutex_lock(&st->lock);
	s = &st->slots[slot];
	if (s->sharers) {
		s->sharers--;
		st->nr_sharers--;
		if (s->sharers == 0) {
			st->nr_shared--;
			if (!s->pending)
				st->nr_candidates++;
		}
	}
	pthread_mutex_unlock(&st->lock);
}

/* Mark in `covered` every slot of our memfd that a mapping in maps_path covers. */
static void cover_from_maps(struct dd_store *st, const char *maps_path, uint64_t *covered)
{
	char line[512];
	FILE *f = fopen(maps_path, "re");

	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		unsigned long long lo, hi, pgoff, ino;
		unsigned int maj, min;
		char perms[8];

		/* A shared mapping is an agent's read-only view of the whole store
		 * (its compares): it holds no merge, a merge maps its slots private. */
		if (sscanf(line, "%llx-%llx %7s %llx %x:%x %llu", &lo, &hi, perms, &pgoff, &maj,
			   &min, &ino) != 7 || ino != st->ino || perms[3] == 's')
			continue;
		for (uint64_t s = pgoff / DD_PAGE_SIZE, n = (hi - lo) / DD_PAGE_SIZE; n; s++, n--)
			if (s < st->nslots)
				covered[s / 64] |= 1ULL << (s % 64);
	}
	fclose(f);
}

int dd_store_gc(struct dd_store *st)
{
	struct node_batch *b = NULL;
	uint64_t *covered;
	struct dirent *de;
	char path[300];
	uint32_t nslots, epoch;
	DIR *d;
	int freed = 0;

	pthread_mutex_lock(&st->lock);
	nslots = st->nslots;
	if (!st->nr_candidates) {
		pthread_mutex_unlock(&st->lock);
		return 0;
	}
	st->nr_candidates = 0;
	epoch = ++st->gc_epoch;
	pthread_mutex_unlock(&st->lock);

	covered = calloc(nslots / 64 + 1, sizeof(uint64_t));
	d = opendir("/proc");
	if (!covered || !d) {
		free(covered);
		if (d)
			closedir(d);
		return -ENOMEM;
	}
	while ((de = readdir(d))) {
		if (!isdigit((unsigned char)de->d_name[0]) || atoi(de->d_name) == getpid())
			continue;
		snprintf(path, sizeof(path), "/proc/%s/maps", de->d_name);
		cover_from_maps(st, path, covered);
	}
	closedir(d);

	pthread_mutex_lock(&st->lock);
	for (uint32_t i = 0; i < nslots; i++) {
		struct slot *s = &st->slots[i];

		if (!is_used(st, i) || s->pending)
			continue;
		/* A hole let go after this run read the maps may be under a
		 * span those maps did not show yet: next time. */
		if (is_hole(st, i) ? s->sharers >= epoch : s->sharers != 0) {
			if (is_hole(st, i))
				st->nr_candidates++;
			continue;
		}
		if ((covered[i / 64] & (1ULL << (i % 64))) || !batch_room(&b)) {
			st->nr_candidates++; /* look again next time */
			continue;
		}
		if (is_hole(st, i)) {
			/* A read of the hole may have put a page of zeros there. */
			fallocate(st->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				  (off_t)i * DD_PAGE_SIZE, DD_PAGE_SIZE);
			st->used[i / 64] &= ~(1ULL << (i % 64));
			*s = (struct slot){ 0 };
			st->nr_holes--;
			continue;
		}
		s->node->dead = true;
		if (dd_table_del(st->stable, &s->node->tn) == 0)
			b->nodes[b->n++] = s->node;
		s->node = NULL;
		fallocate(st->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			  (off_t)i * DD_PAGE_SIZE, DD_PAGE_SIZE);
		st->used[i / 64] &= ~(1ULL << (i % 64));
		st->nr_used--;
		st->nr_freed++;
		freed++;
	}
	pthread_mutex_unlock(&st->lock);
	batch_retire(b);
	free(covered);
	return freed;
}

void dd_store_stats(struct dd_store *st, struct dd_store_stats *out)
{
	pthread_mutex_lock(&st->lock);
	out->slots_used = st->nr_used;
	out->slots_shared = st->nr_shared;
	out->sharers = st->nr_sharers;
	out->freed = st->nr_freed;
	out->warm = st->nr_warm;
	out->holes = st->nr_holes;
	out->meta_bytes = sizeof(*st) + (uint64_t)st->nslots * (sizeof(struct slot) + 2.0 / 8) +
			  st->nr_used * sizeof(struct dd_stable);
	pthread_mutex_unlock(&st->lock);
}
