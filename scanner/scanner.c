// SPDX-License-Identifier: MIT
/*
 * The scanner (see scanner.h). Data structures, KSM-style:
 *
 *   struct dd_sclient   one client process: its uffd (held only by us), pagemap
 *                       fd, agent handle, regions, the pages frozen right now
 *                       (inflight, read by the fault thread), unmap events
 *                       from the fault thread, and merges queued on it by
 *                       other clients' scans (pend).
 *   struct dd_region    one registered range: start, pages, share domain, and
 *                       an 8-byte struct dd_page record per page.
 *   struct dd_domain    a share domain (policy key) and its stable store.
 *   stable table        (domain, csum) -> store slot, all live slots.
 *   unstable table      (domain, csum) -> a candidate page not merged yet
 *                       (32-byte pooled node); kept while its checksum holds,
 *                       for COLD_TURN passes (then the page is cold).
 *
 * Page life cycle: NEW -hash-> CHECKED -same csum next pass-> candidate:
 * stable hit (byte-equal) -> merge onto that slot; unstable hit (byte-equal)
 * -> new slot, both pages merge onto it; else -> UNSTABLE (in the table).
 * All-zero candidates are zapped. A MERGED page whose pagemap entry turns
 * anonymous was written (COW break): uncounted, back to CHECKED.
 *
 * Locking: c->lock covers a client's regions and records and is held by the
 * scan thread for one chunk, agent round trip included. c->fault_lock covers
 * inflight and events and is only ever held briefly, so the fault thread never
 * waits behind a merge. s->lock covers the client list and the domains.
 */
#include "scanner/scanner.h"
#include "scanner/procmaps.h"
#include "scanner/store.h"
#include "hash/pagehash.h"
#include "hash/table.h"
#include "dedupd/common/uffd.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <urcu.h>

#define MAX_DOMAINS 1024
#define READ_BATCH 1024   /* pages per pagemap read and agent HASH round trip */
#define HASH_CHUNK 64     /* pages per process_vm_readv + hash: 256 KiB, fits L2 */
_Static_assert(READ_BATCH <= DD_HASH_MAX, "one HASH request per batch");
#define MAX_MERGE 1024    /* merges per flush */
#define TLB_FLUSH_CEILING 33 /* the kernel's tlb_single_page_flush_ceiling (x86 default) */
#define SPAN_GAP_MAX 64      /* pages between two runs that one freeze may bridge */
#define SPAN_MAX_PAGES 4096u /* pages one span may cover (agent.c has the same) */
 /* Store slots allocated ahead of the fills (warm_main()): */
#define WARM_MAX 4096u       /* at most this many per store (16 MiB)... */
#define WARM_MIN 256u        /* ...at least this many while slots are being taken... */
#define WARM_HORIZON_MS 40u  /* ...else what this long at the last rate would take */
#define WARM_TICK_MS 5u      /* the warmer's look at the demand while there is some */
#define WARM_COOL_MS 1000u   /* no slot taken for this long: warm pages given back */
#define MAX_EVENTS 256    /* queued unmap events per client before a full reset */
#define VMA_RECOUNT_MS 50 /* a client's VMA count is at most this old when merging */
#define RECONCILE_MIN_MS 1000  /* a client's maps read at most this often on a hint... */
#define RECONCILE_MAX_MS 10000 /* ...and at least this often */

enum pg_state { PG_NEW, PG_CHECKED, PG_UNSTABLE, PG_MERGED, PG_ZERO, PG_GONE, PG_COLD };
#define PGF_REMAPPED 1 /* the page lies in a VMA we remapped: never zap it */
#define PGF_VOLATILE 2 /* written after a merge: wait for a stable checksum */

/*
 * 8 bytes per registered page. The checksum kept is only its low 24 bits: it
 * tells whether the page changed since the last pass. The tables get the
 * full 64-bit checksum fresh from the scan. A change that the low bits miss
 * (2^-24 of changes) costs at most a merge refused under freeze, or an
 * unstable entry left under the page's old checksum until it changes again.
 *
 * Unique pages do not stay indexed. A candidate waits in the unstable table
 * for COLD_TURN passes (age counts them); still unmatched and unchanged, it
 * leaves the table (PG_COLD, no node) and from then on looks itself up in
 * both tables once every COLD_TURN passes, without entering them. Any page
 * that could match it is new or changed, so it sits in the unstable table
 * for COLD_TURN whole passes, and the cold page's turn comes in one of them:
 * no merge is missed, some are found up to COLD_TURN passes later, and a
 * unique page costs its record alone.
 */
#define PG_CSUM_BITS 24
#define PG_CSUM(c) ((uint32_t)(c) & ((1u << PG_CSUM_BITS) - 1))
#define COLD_TURN 3
struct dd_page {
	uint32_t slot;			/* store slot (MERGED) or unstable node (UNSTABLE) */
	uint32_t csum : PG_CSUM_BITS;	/* PG_CSUM() of the last checksum */
	uint32_t state : 3;		/* enum pg_state */
	uint32_t flags : 2;		/* PGF_* */
	uint32_t age : 3;		/* UNSTABLE: passes waited unchanged; MERGED:
					 * 1 once seen mapped (see reconcile()) */
};
_Static_assert(sizeof(struct dd_page) == 8, "page record must stay 8 bytes");
_Static_assert(PG_COLD < 8, "page states must fit the record's 3 bits");
_Static_assert(COLD_TURN < 7, "age must count past COLD_TURN in 3 bits");

struct dd_domain {
	uint32_t id;
	uint32_t policy;
	uint64_t key;
	uint64_t salt;
	struct dd_store *store;
};

struct dd_region {
	uint64_t id;
	uint64_t start;
	uint32_t npages;
	bool dead;
	atomic_int refs;
	struct dd_domain *dom;
	struct dd_sclient *c;
	struct dd_page *pages;
	uint64_t merged, zero;
	bool rearm; /* a remapped page broke COW: register the range again */
	struct dd_region *next;
};

struct range {
	uint64_t start, end;
};

struct uevent {
	uint8_t type;
	uint64_t start, end;
};

struct pend {
	struct dd_region *r;
	uint32_t idx;
	uint32_t slot;
};

struct dd_sclient {
	uint64_t id;
	pid_t pid;
	uid_t uid;
	int uffd;
	int pagemap;
	int mem;   /* /proc/PID/mem */
	int pidfd; /* for process_madvise(); -1 if the kernel gave none */
	char maps_path[32];
	void *agent;
	atomic_int refs;
	bool dead;
	bool copy_only; /* its agent does not hash: copy its pages */
	/* A REMAP or ZAP went unanswered: the agent may still carry it out
	 * (stalled, stopped, frozen), so pagemap may not yet show what it did.
	 * Until the agent answers a later request (it works in order), no share
	 * of the client's is given back on pagemap's or maps' word: a slot freed
	 * now could be mapped by that late remap. */
	bool agent_doubt;
	pthread_mutex_t lock;
	struct dd_region *regions;
	uint64_t next_region_id;
	uint32_t stores_sent[MAX_DOMAINS / 32];
	long vmas, vmas_base, vma_budget, vma_limit;
	uint64_t runs_queued; /* runs of anonymous pages queued to merge, ever */
	uint32_t runs_batch;  /* ... of them in the batch being queued */
	uint64_t vmas_counted_ms; /* when vmas was read from maps */
	uint64_t reconciled_ms;	  /* when its records were last held against its maps */
	bool reconcile_due;	  /* a merged page was seen unmapped */
	/* fault_lock */
	pthread_mutex_t fault_lock;
	struct range *inflight;
	size_t ninflight;
	struct range *expect; /* unmap/remove events our own remaps cause */
	size_t nexpect;
	bool uffd_events; /* its uffd raises unmap or remove events (or may: unknown) */
	struct uevent events[MAX_EVENTS];
	size_t nevents;
	bool events_lost;
	/* pend_lock */
	pthread_mutex_t pend_lock;
	bool closed; /* removed: pend_add() queues nothing more */
	struct pend *pend;
	size_t npend, cappend;
	/* active-memory sample (lock): pages write-protected to see writes */
	uint64_t *sample;
	uint32_t nsample;
	struct dd_sclient *next;
};

/*
 * An unstable-table entry. Entries persist across passes while their page's
 * checksum holds (KSM rebuilds its unstable tree every pass because the tree
 * is sorted by content and goes stale; a checksum-keyed table whose every hit
 * is byte-compared under freeze does not), so an unchanged page costs only a
 * read and a hash per pass. Nodes live in a pool and are named by index in the
 * page record's slot field; a record's node is valid only while it is live
 * and still names that page.
 *
 * 32 bytes, one per unique page, so no key and no rcu_head: the table node
 * holds the key's hash (see hash/table.h), the domain is the region's, and
 * deleted nodes wait for their grace period in a list chained through their
 * self fields (no reader looks at self), one call_rcu() per UNODE_BATCH.
 */
#define UNODE_LIVE 0x80000000u /* in idx_live: the node is in the table */
#define UNODE_NONE UINT32_MAX  /* end of the retired list */
#define UNODE_BATCH 1024u
#define REGION_MAX_PAGES 0x7fffffffu /* page indexes leave room for UNODE_LIVE */

struct dd_unstable {
	struct dd_table_node tn;
	struct dd_region *r;
	_Atomic uint32_t idx_live; /* page index, | UNODE_LIVE while in the table */
	uint32_t self;		   /* index in the pool; next retired node once retired */
};
_Static_assert(sizeof(struct dd_unstable) == 32, "unstable node must stay 32 bytes");

#define KNOB(s, f) __atomic_load_n(&(s)->knobs.f, __ATOMIC_RELAXED)
#define KNOB_SET(s, f, v) __atomic_store_n(&(s)->knobs.f, (v), __ATOMIC_RELAXED)
#define UPOOL_CHUNK 65536u
#define UPOOL_CHUNK_BYTES ((size_t)UPOOL_CHUNK * sizeof(struct dd_unstable)) /* 2 MiB */
#define UPOOL_MAX_CHUNKS 65536u /* 2^32 nodes; the array of chunk pointers is 512 KiB
				 * of address space, touched as chunks come */

struct merge {
	struct dd_region *r;
	uint32_t idx;
	int64_t slot; /* -1: zap */
	int res;
	bool ref;    /* holds a region reference (queued from another scan) */
	bool fresh;  /* slot reserved by this merge: the frozen page fills it */
	bool filled; /* ... and it was filled */
	bool agent_cmp; /* the agent compares it in place (DD_REMAP_VERIFY), not verify() */
	uint32_t pidx;		/* fresh: the unstable partner's page, */
	struct dd_region *pr; /* queued on its client once the slot is filled */
	/* Spans (plan_spans()): on a span's first entry, its length in pages
	 * (0: none starts here); inspan on each of its entries. */
	uint32_t span;
	bool inspan;
	bool held;	/* span: its store slots held (dd_store_hold_holes()) */
	bool span_ok;	/* in a span the agent mapped */
	int span_res;	/* span: the agent's answer */
};

/*
 * One batch of the scan: up to READ_BATCH pages of one region, read from
 * pagemap, and with agent hashing asked of the agent while the batch before
 * it is worked on (scan_client()).
 */
struct sbatch {
	struct dd_region *r;
	uint32_t idx0, n;
	bool hashed;   /* checksums come (or came) from the agent; else copy */
	int err;       /* < 0: the batch failed (region gone, agent silent) */
	uint32_t nr, np; /* ranges and pages asked of the agent */
	uint64_t pm[READ_BATCH];
	bool need[READ_BATCH], huge[READ_BATCH];
	struct dd_hash_range hr[READ_BATCH];
	struct dd_hash_result hres[READ_BATCH];
};

/* One scan thread's own buffers and cursor. */
struct dd_worker {
	struct dd_scanner *s;
	pthread_t thread;
	uint8_t *buf;  /* HASH_CHUNK pages */
	uint8_t *vbuf; /* MAX_MERGE pages: verify copies */
	struct merge *mq;
	size_t nmq;
	/* The merge batch whose REMAP is out (its client's lock held): the
	 * scan goes on while the agent remaps, and remap_collect() settles it
	 * before anything else is frozen, and before the client is let go. */
	struct merge *mq_out;
	size_t nout;
	struct dd_sclient *out_rc; /* NULL: no REMAP out */
	uint32_t out_ne, out_nzap;
	int64_t hint; /* last store slot allocated: the next goes after it */
	struct dd_region *hint_r; /* ... for this page (spans: the next fresh */
	uint32_t hint_idx;        /* slot as far after it as its page is) */
	struct dd_remap_entry e[DD_BATCH_MAX];
	size_t first[DD_BATCH_MAX], len[DD_BATCH_MAX];
	int32_t res[DD_BATCH_MAX];
	struct sbatch *b;	  /* two: the batch worked on, and the one ahead */
	struct sbatch *out;	  /* its HASH request not answered yet (the */
	struct dd_sclient *out_c; /* agent channel of out_c is locked till then) */
};

struct dd_scanner {
	pthread_mutex_t lock;
	struct dd_scan_knobs knobs;
	struct dd_scan_ops ops;
	struct dd_table *stable, *unstable;
	struct dd_sclient *clients;
	uint64_t next_client_id;
	struct dd_domain domains[MAX_DOMAINS];
	uint32_t ndomains;
	pthread_t scan_thread, fault_thread, warm_thread;
	/* The store warmer (warm_main()): asleep while no slot is reserved. */
	pthread_mutex_t warm_mx;
	pthread_cond_t warm_cv;
	atomic_bool warm_idle;
	bool warm_kicked;
	struct warm_dom { /* per domain's store: slots reserved, last taken, wanted warm */
		uint64_t seen, used_ms;
		uint32_t want;
	} *warm_dom; /* [MAX_DOMAINS], the warmer's own */
	bool running;
	atomic_bool stop;
	atomic_bool fault_stop; /* the fault thread's own: set after the scan threads end */
	int fault_wake; /* eventfd in fault_ep: stop, or a sync request */
	int fault_ep;   /* epoll over the clients' uffds + fault_wake */
	uint64_t last_gc_ms;
	/* unstable node pool */
	pthread_mutex_t upool_lock;
	struct dd_unstable **upool;	/* chunks of UPOOL_CHUNK */
	uint32_t *upool_live;		/* nodes handed out, per chunk */
	uint32_t upool_chunks, upool_next;
	uint32_t *upool_free;
	size_t upool_nfree, upool_capfree;
	uint32_t retired, nretired; /* deleted nodes waiting for a grace period */
	atomic_uint idle_passes;
	uint64_t pass_merges0; /* merges when the pass started */
	/* scan threads: each claims whole clients, in id order, once per pass */
	struct dd_worker *workers;
	unsigned int nworkers;
	pthread_mutex_t pass_lock;
	pthread_cond_t pass_cv;  /* a pass ended, or stop */
	pthread_mutex_t sleep_mx;
	pthread_cond_t sleep_cv; /* knobs changed, or stop */
	uint64_t claim_next;     /* next client id to claim this pass */
	unsigned int active;     /* workers scanning a client now */
	uint64_t pass_gen;
	atomic_uint_fast64_t pass_volatile;
	struct timespec pass_start;
	/* statistics */
	atomic_uint_fast64_t pages_scanned, full_scans, merges, merge_failed, cow_breaks,
		pages_volatile, zero_pages, faults, unstable_count, cold_count, last_pass_ms,
		pages_adopted, scan_cpu_ns, registered, nregions, thp_split, thp_skipped, pass_thp_skipped,
		agent_hash_pages, agent_cpu_ns, agent_unreadable, agent_hash_wait_ns, agent_timeouts,
		merge_batches, remap_runs, zap_runs, merge_freeze_ns, merge_verify_ns,
		merge_agent_ns, merge_settle_ns, pages_unmapped, span_maps;
	atomic_bool no_pagemap_scan; /* the kernel refused PAGEMAP_SCAN */
	int kpageflags;              /* /proc/kpageflags, or -1 */
};

static uint64_t now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000ULL + (uint64_t)t.tv_nsec;
}

/* CLOCK_MONOTONIC ms from now, for the condition variables (all on that clock). */
static struct timespec deadline_in(uint32_t ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	return ts;
}

static uint64_t now_ms(void)
{
	return now_ns() / 1000000;
}

#define THP_BYTES (2ULL << 20)

/*
 * Large daemon-side arrays (page records, unstable node chunks) are written
 * page after page by the scan: ask for transparent huge pages where the
 * range allows, one fault per 2 MiB instead of one per 4 KiB (a fault costs
 * ~12 us on this kind of guest, and a 256 MiB region has 512 pages of
 * records). Advice only: nothing changes if THPs are off.
 */
static void huge_hint(void *p, size_t len)
{
	uintptr_t a = ((uintptr_t)p + THP_BYTES - 1) & ~(uintptr_t)(THP_BYTES - 1);
	uintptr_t e = ((uintptr_t)p + len) & ~(uintptr_t)(THP_BYTES - 1);

	if (e > a)
		madvise((void *)a, e - a, MADV_HUGEPAGE);
}

void dd_scan_knobs_default(struct dd_scan_knobs *k)
{
	/* 4096 pages / 20 ms caps the scan at ~800 MB/s: a trickle for a
	 * 1.3 GB/s-per-core hash loop, yet 10x KSM's fastest common setting. */
	*k = (struct dd_scan_knobs){
		.pages_to_scan = 4096,
		.sleep_millisecs = 20,
		.merge_batch_pages = 512,
		.max_vmas_per_client = 0,
		.share_domain = DD_DOMAIN_UID,
		.zero_pages = true,
		.idle_backoff_ms_max = 1000,
		.agent_hash = true,
	};
}

static void fault_sync(struct dd_scanner *s);
static void warm_kick(struct dd_scanner *s);
static void add_cpu(struct dd_scanner *s, const struct timespec *t0);
struct dd_unstable;
static struct dd_unstable *unstable_of(struct dd_scanner *s, struct dd_region *r, uint32_t idx);
static bool unstable_del(struct dd_scanner *s, struct dd_unstable *u);
static void unode_flush_retired(struct dd_scanner *s);

/* ---- clients and regions ---------------------------------------------- */

/* May a remap add two more VMAs to c? (c->lock held) */
static bool vma_room(const struct dd_sclient *c)
{
	return c->vmas - c->vmas_base + 2 <= c->vma_budget && c->vmas + 2 <= c->vma_limit;
}

/*
 * Does c merge by spans now (see plan_spans())? If its agent maps spans,
 * once its remaps have used half its VMA budget, once the runs queued for
 * it would take three quarters of it if each were mapped on its own, or
 * once the runs of the batch being queued would take half of what is left
 * of it (the first pass reserves the store slots of scattered duplicates
 * before any is mapped, and spans need them placed for spans:
 * stride_hint()). Until then each run is mapped on its own: no page is
 * copied.
 */
static bool span_mode(const struct dd_scanner *s, const struct dd_sclient *c)
{
	long used = c->vmas - c->vmas_base;

	return c->agent && s->ops.agent_spans && s->ops.agent_spans(c->agent) &&
	       (2 * used >= c->vma_budget || 8 * (long)c->runs_queued >= 3 * c->vma_budget ||
		4 * (long)c->runs_batch >= c->vma_budget - used);
}

static void client_put(struct dd_sclient *c);

/* A region holds a reference on its client: another client's scan may find
 * one of its pages in the unstable table and queue a merge on r->c. */
static void region_put(struct dd_region *r)
{
	if (atomic_fetch_sub(&r->refs, 1) == 1) {
		struct dd_sclient *c = r->c;

		free(r->pages);
		free(r);
		if (c)
			client_put(c);
	}
}

static void client_put(struct dd_sclient *c)
{
	if (atomic_fetch_sub(&c->refs, 1) != 1)
		return;
	if (c->uffd >= 0)
		close(c->uffd);
	if (c->pagemap >= 0)
		close(c->pagemap);
	if (c->mem >= 0)
		close(c->mem);
	if (c->pidfd >= 0)
		close(c->pidfd);
	free(c->inflight);
	free(c->expect);
	free(c->pend);
	free(c->sample);
	pthread_mutex_destroy(&c->lock);
	pthread_mutex_destroy(&c->fault_lock);
	pthread_mutex_destroy(&c->pend_lock);
	free(c);
}

uint64_t dd_sclient_id(const struct dd_sclient *c)
{
	return c->id;
}

/* Take page idx of r out of the unstable table, if it is there. */
static void unstable_forget(struct dd_scanner *s, struct dd_region *r, uint32_t idx)
{
	struct dd_unstable *u;

	rcu_read_lock();
	u = unstable_of(s, r, idx);
	if (u)
		unstable_del(s, u);
	rcu_read_unlock();
}

/* Release what page idx of r holds (a store share, a zero-page count, an
 * unstable entry) and mark it gone (c->lock held). */
static void page_release(struct dd_scanner *s, struct dd_region *r, uint32_t idx)
{
	struct dd_page *p = &r->pages[idx];

	if (p->state == PG_MERGED)
		dd_store_unshare(r->dom->store, p->slot);
	else if (p->state == PG_ZERO)
		atomic_fetch_sub(&s->zero_pages, 1);
	else if (p->state == PG_UNSTABLE)
		unstable_forget(s, r, idx);
	else if (p->state == PG_COLD)
		atomic_fetch_sub(&s->cold_count, 1);
	p->state = PG_GONE;
}

/*
 * Page idx of r no longer maps what its record says: the application
 * unmapped it (gone), or mapped fresh memory over it (renewed: it starts
 * afresh, and its range is registered with the uffd again). c->lock held.
 */
static void page_unmapped(struct dd_scanner *s, struct dd_region *r, uint32_t idx, bool renewed)
{
	struct dd_page *p = &r->pages[idx];

	r->merged -= p->state == PG_MERGED;
	r->zero -= p->state == PG_ZERO;
	page_release(s, r, idx);
	if (renewed) {
		p->state = PG_NEW;
		p->flags &= (uint8_t)~PGF_REMAPPED;
		r->rearm = true;
	}
}

/* Drop a region's hold on store slots and mark it dead (c->lock held). */
static void region_kill(struct dd_scanner *s, struct dd_region *r)
{
	for (uint32_t i = 0; i < r->npages; i++)
		page_release(s, r, i);
	/* Its retired nodes hold the region, and through it the client's uffd,
	 * whose unmap events nobody reads once the client is gone: release them
	 * after a grace period now rather than at the end of the pass. */
	unode_flush_retired(s);
	atomic_fetch_sub(&s->registered, r->npages);
	atomic_fetch_sub(&s->nregions, 1);
	r->dead = true;
}

struct dd_sclient *dd_scanner_add_client(struct dd_scanner *s, pid_t pid, uid_t uid, int uffd,
					 void *agent)
{
	struct dd_sclient *c = calloc(1, sizeof(*c));
	struct epoll_event ev = { .events = EPOLLIN };
	char path[48];
	long long feat;
	long max;

	if (!c)
		return NULL;
	pthread_mutex_init(&c->lock, NULL);
	pthread_mutex_init(&c->fault_lock, NULL);
	pthread_mutex_init(&c->pend_lock, NULL);
	atomic_init(&c->refs, 1);
	c->pid = pid;
	c->uid = uid;
	c->uffd = uffd;
	c->agent = agent;
	feat = dd_uffd_features(uffd);
	c->uffd_events = feat < 0 || (feat & (UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_EVENT_REMOVE));
	snprintf(c->maps_path, sizeof(c->maps_path), "/proc/%d/maps", (int)pid);
	snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)pid);
	c->pagemap = open(path, O_RDONLY | O_CLOEXEC);
	snprintf(path, sizeof(path), "/proc/%d/mem", (int)pid);
	c->mem = open(path, O_RDONLY | O_CLOEXEC);
	c->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	if (c->pagemap < 0 || c->mem < 0 || fcntl(uffd, F_SETFL, O_NONBLOCK) < 0) {
		int e = errno;
		c->uffd = -1; /* on failure the caller keeps it */
		client_put(c);
		errno = e;
		return NULL;
	}
	max = dd_max_map_count();
	c->vmas = dd_maps_count(c->maps_path);
	if (c->vmas < 0)
		c->vmas = 0;
	c->vmas_base = c->vmas;
	c->reconciled_ms = now_ms();
	pthread_mutex_lock(&s->lock);
	/* VMAs our remaps may add: the knob, or half of what the process has
	 * left; and never closer than 1024 to vm.max_map_count, so that the
	 * application's own mmap() never fails because of us. */
	c->vma_budget = KNOB(s, max_vmas_per_client) ? (long)KNOB(s, max_vmas_per_client)
						     : (max - c->vmas) / 2;
	c->vma_limit = max - 1024;
	c->id = ++s->next_client_id;
	c->next = NULL;
	/* Keep the list in id order: the scan cursor walks it by id. */
	struct dd_sclient **pp = &s->clients;
	while (*pp)
		pp = &(*pp)->next;
	*pp = c;
	pthread_mutex_unlock(&s->lock);
	atomic_fetch_add(&c->refs, 1); /* the fault thread's epoll reference */
	ev.data.ptr = c;
	if (epoll_ctl(s->fault_ep, EPOLL_CTL_ADD, uffd, &ev) < 0)
		atomic_fetch_sub(&c->refs, 1);
	return c;
}

void dd_scanner_set_agent(struct dd_scanner *s, struct dd_sclient *c, void *agent)
{
	pthread_mutex_lock(&c->lock);
	c->agent = agent;
	c->copy_only = false;
	memset(c->stores_sent, 0, sizeof(c->stores_sent));
	pthread_mutex_unlock(&c->lock);
}

void dd_scanner_remove_client(struct dd_scanner *s, struct dd_sclient *c)
{
	struct dd_sclient **pp;
	struct dd_region *r, *n;

	pthread_mutex_lock(&c->lock); /* waits for a merge in progress to end */
	c->dead = true;
	c->agent = NULL;
	for (r = c->regions; r; r = n) {
		n = r->next;
		region_kill(s, r);
		region_put(r);
	}
	c->regions = NULL;
	pthread_mutex_unlock(&c->lock);
	pthread_mutex_lock(&c->pend_lock);
	c->closed = true;
	for (size_t i = 0; i < c->npend; i++) {
		dd_store_pend_done(c->pend[i].r->dom->store, c->pend[i].slot, false);
		region_put(c->pend[i].r);
	}
	__atomic_store_n(&c->npend, 0, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&c->pend_lock);
	pthread_mutex_lock(&s->lock);
	for (pp = &s->clients; *pp; pp = &(*pp)->next)
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	pthread_mutex_unlock(&s->lock);
	if (epoll_ctl(s->fault_ep, EPOLL_CTL_DEL, c->uffd, NULL) == 0) {
		fault_sync(s); /* the fault thread may hold c from its last wait */
		client_put(c);
	}
	client_put(c);
}

static struct dd_domain *domain_get(struct dd_scanner *s, uint32_t policy, uint64_t key,
				    uint64_t salt, int adopt_fd)
{
	struct dd_domain *d = NULL;

	pthread_mutex_lock(&s->lock);
	for (uint32_t i = 0; i < s->ndomains; i++)
		if (s->domains[i].policy == policy && s->domains[i].key == key &&
		    s->domains[i].salt == salt)
			d = &s->domains[i];
	if (!d && s->ndomains < MAX_DOMAINS) {
		d = &s->domains[s->ndomains];
		d->store = NULL;
		if (adopt_fd >= 0) { /* a restart: carry on with the old store */
			d->store = dd_store_adopt(s->ndomains, s->stable, adopt_fd);
			adopt_fd = -1; /* owned (or closed) by dd_store_adopt() */
		}
		if (!d->store)
			d->store = dd_store_new(s->ndomains, s->stable);
		if (d->store) {
			d->id = s->ndomains++;
			d->policy = policy;
			d->key = key;
			d->salt = salt;
		} else {
			d = NULL;
		}
	}
	pthread_mutex_unlock(&s->lock);
	if (adopt_fd >= 0)
		close(adopt_fd);
	return d;
}

/* ---- re-adopting an earlier daemon's merges ------------------------------ */

struct store_vma {
	uint64_t start, end, pgoff;
	unsigned long ino;
};

/*
 * The VMAs inside [addr, addr+len) that map a dedupd store memfd: ours, or
 * one an earlier daemon left (its clients keep it alive by mapping it).
 * Returns how many (*out malloc'ed), 0 if none or on error.
 */
static size_t store_vmas(const char *maps_path, uint64_t addr, uint64_t len,
			 struct store_vma **out)
{
	char line[512];
	size_t n = 0, cap = 0;
	struct store_vma *v = NULL;
	FILE *f = fopen(maps_path, "re");

	*out = NULL;
	while (f && fgets(line, sizeof(line), f)) {
		unsigned long long a, b, off;
		unsigned long ino;
		char perms[8];
		int pos = 0;

		/* Shared: an agent's view of the store, not a merge (private). */
		if (sscanf(line, "%llx-%llx %7s %llx %*x:%*x %lu %n", &a, &b, perms, &off, &ino,
			   &pos) < 5 ||
		    perms[3] == 's' || !strstr(line + pos, "/memfd:dedupd-store-") || b <= addr ||
		    a >= addr + len)
			continue;
		if (n == cap) {
			struct store_vma *nv = realloc(v, (cap = cap ? cap * 2 : 64) * sizeof(*v));

			if (!nv)
				break;
			v = nv;
		}
		v[n++] = (struct store_vma){ a, b, off, ino };
	}
	if (f)
		fclose(f);
	*out = v;
	return n;
}

/* An fd of the file a VMA of pid maps (root: /proc/PID/map_files). */
static int open_vma_file(pid_t pid, const struct store_vma *v)
{
	char path[96];

	snprintf(path, sizeof(path), "/proc/%d/map_files/%llx-%llx", (int)pid,
		 (unsigned long long)v->start, (unsigned long long)v->end);
	return open(path, O_RDWR | O_CLOEXEC);
}

/*
 * Pages of the new region r that still map a slot of its domain's store:
 * merged by an earlier daemon whose store we adopted. They are MERGED again
 * and counted, without a copy or a remap. A page that was written since
 * (anonymous now) stays NEW. c->lock held.
 */
static uint64_t adopt_pages(struct dd_sclient *c, struct dd_region *r, const struct store_vma *v,
			    size_t n)
{
	uint64_t adopted = 0, end = r->start + (uint64_t)r->npages * DD_PAGE_SIZE;

	for (size_t k = 0; k < n; k++) {
		uint64_t a = v[k].start > r->start ? v[k].start : r->start;
		uint64_t b = v[k].end < end ? v[k].end : end;

		if (!dd_store_is_file(r->dom->store, v[k].ino))
			continue;
		/* A span of the earlier daemon's: its free slots are holes
		 * (see dd_store_hold_holes()), kept while it covers them. */
		if (a < b && (v[k].pgoff + (a - v[k].start)) / DD_PAGE_SIZE < UINT32_MAX) {
			uint32_t s0 = (uint32_t)((v[k].pgoff + (a - v[k].start)) / DD_PAGE_SIZE);

			dd_store_hold_holes(r->dom->store, s0, (uint32_t)((b - a) / DD_PAGE_SIZE));
			dd_store_release_holes(r->dom->store, s0, (uint32_t)((b - a) / DD_PAGE_SIZE));
		}
		for (; a < b; a += DD_PAGE_SIZE) {
			uint64_t pm = 0, slot = (v[k].pgoff + (a - v[k].start)) / DD_PAGE_SIZE;
			struct dd_page *p = &r->pages[(a - r->start) / DD_PAGE_SIZE];

			if (pread(c->pagemap, &pm, sizeof(pm), (off_t)(a / DD_PAGE_SIZE * 8)) !=
			    (ssize_t)sizeof(pm))
				continue;
			p->flags |= PGF_REMAPPED; /* in a store VMA, whatever it holds */
			if ((pm & DD_PM_SWAP) || ((pm & DD_PM_PRESENT) && !(pm & DD_PM_FILE)))
				continue; /* written since: a private copy */
			if (slot > UINT32_MAX ||
			    dd_store_adopt_sharer(r->dom->store, (uint32_t)slot) < 0)
				continue;
			p->state = PG_MERGED;
			p->slot = (uint32_t)slot;
			p->age = 0;
			p->flags |= PGF_REMAPPED;
			r->merged++;
			adopted++;
		}
	}
	return adopted;
}

static int ensure_store_sent(struct dd_scanner *s, struct dd_sclient *c, struct dd_domain *d)
{
	int r;

	if (c->stores_sent[d->id / 32] & (1u << (d->id % 32)))
		return 0;
	if (!c->agent)
		return -ENOTCONN;
	r = s->ops.send_store(c->agent, d->id, dd_store_client_fd(d->store));
	if (r == 0)
		c->stores_sent[d->id / 32] |= 1u << (d->id % 32);
	return r;
}

static void apply_events(struct dd_scanner *s, struct dd_sclient *c);
static void reconcile(struct dd_scanner *s, struct dd_sclient *c);
static void hash_drain(struct dd_worker *w, struct dd_sclient *c);
static void rearm(struct dd_sclient *c, struct dd_region *r);

/*
 * Regions overlapping [addr, addr+len) whose every page is gone (the
 * application unmapped them without unregistering: mmap() may hand the same
 * addresses out again, and a new registration there must not be refused).
 * c->lock held.
 */
static void drop_gone_regions(struct dd_scanner *s, struct dd_sclient *c, uint64_t addr,
			      uint64_t len)
{
	struct dd_region **pp = &c->regions, *r;

	while ((r = *pp)) {
		bool gone = addr < r->start + (uint64_t)r->npages * DD_PAGE_SIZE &&
			    r->start < addr + len;

		for (uint32_t i = 0; gone && i < r->npages; i++)
			gone = r->pages[i].state == PG_GONE;
		if (!gone) {
			pp = &r->next;
			continue;
		}
		*pp = r->next;
		region_kill(s, r);
		region_put(r);
	}
}

/*
 * What one client may make us allocate: a page record (8 B) per registered
 * page and a region header per region. A process registering more than the
 * host's memory gains nothing (it cannot have more resident), so that is its
 * limit; a user other than root gets four times that over all its
 * processes, and a process at most MAX_REGIONS regions. Records then stay
 * under 0.2 % of host memory per process and 0.8 % per user.
 */
#define MAX_REGIONS 65536

static uint64_t host_bytes(void)
{
	static uint64_t total;
	char line[128];
	unsigned long long kib;
	FILE *f;

	if (total)
		return total;
	f = fopen("/proc/meminfo", "re");
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "MemTotal: %llu kB", &kib) == 1)
			total = (uint64_t)kib * 1024;
	if (f)
		fclose(f);
	return total ? total : UINT64_MAX / 8;
}

static uint64_t client_pages(struct dd_sclient *c, uint64_t *nregions)
{
	uint64_t n = 0;

	*nregions = 0;
	for (struct dd_region *r = c->regions; r; r = r->next)
		if (!r->dead) {
			n += r->npages;
			(*nregions)++;
		}
	return n;
}

static int check_limits(struct dd_scanner *s, struct dd_sclient *c, uint64_t len, char *err,
			size_t errlen)
{
	uint64_t host = host_bytes(), mine, user = 0, nreg, dummy;

	pthread_mutex_lock(&c->lock);
	mine = client_pages(c, &nreg) * DD_PAGE_SIZE;
	pthread_mutex_unlock(&c->lock);
	if (nreg >= MAX_REGIONS) {
		snprintf(err, errlen, "too many regions: this process has %llu registered (at most %d)",
			 (unsigned long long)nreg, MAX_REGIONS);
		return -E2BIG;
	}
	if (mine + len > host) {
		snprintf(err, errlen, "registration refused: this process would have %llu MiB "
			 "registered, more than the host's memory (%llu MiB)",
			 (unsigned long long)((mine + len) >> 20), (unsigned long long)(host >> 20));
		return -E2BIG;
	}
	if (c->uid == 0)
		return 0;
	/* Client locks are taken before s->lock elsewhere (register ->
	 * domain_get): take references under s->lock, count after. */
	for (uint64_t from = 0;;) {
		struct dd_sclient *o;

		pthread_mutex_lock(&s->lock);
		for (o = s->clients; o && (o->id < from || o->uid != c->uid || o == c); o = o->next)
			;
		if (o)
			atomic_fetch_add(&o->refs, 1);
		pthread_mutex_unlock(&s->lock);
		if (!o)
			break;
		from = o->id + 1;
		pthread_mutex_lock(&o->lock);
		if (!o->dead)
			user += client_pages(o, &dummy) * DD_PAGE_SIZE;
		pthread_mutex_unlock(&o->lock);
		client_put(o);
	}
	if (user + mine + len > 4 * host) {
		snprintf(err, errlen, "registration refused: uid %u would have %llu MiB registered, "
			 "more than four times the host's memory (%llu MiB)", (unsigned)c->uid,
			 (unsigned long long)((user + mine + len) >> 20),
			 (unsigned long long)(host >> 20));
		return -E2BIG;
	}
	return 0;
}

int dd_scanner_register(struct dd_scanner *s, struct dd_sclient *c, uint64_t addr, uint64_t len,
			uint32_t policy, uint64_t salt, char *err, size_t errlen)
{
	struct uffdio_register reg = { .range = { .start = addr, .len = len },
				       .mode = UFFDIO_REGISTER_MODE_WP };
	struct dd_region *r, **pp;
	struct dd_domain *d;
	struct store_vma *sv = NULL;
	size_t nsv = 0;
	uint64_t key;
	int rc;

	if (!len || addr % DD_PAGE_SIZE || len % DD_PAGE_SIZE || addr + len < addr ||
	    len / DD_PAGE_SIZE > REGION_MAX_PAGES) {
		snprintf(err, errlen, "bad range %#llx+%#llx: address and length must be "
			 "non-zero multiples of 4096, and the length at most 8 TiB",
			 (unsigned long long)addr,
			 (unsigned long long)len);
		return -EINVAL;
	}
	if (policy == DD_DOMAIN_DEFAULT)
		policy = KNOB(s, share_domain);
	if (policy < DD_DOMAIN_ALL || policy > DD_DOMAIN_SALT) {
		snprintf(err, errlen, "unknown share domain policy %u", policy);
		return -EINVAL;
	}
	key = policy == DD_DOMAIN_ALL ? 0 : policy == DD_DOMAIN_CLIENT ? c->id : c->uid;
	if (policy != DD_DOMAIN_SALT)
		salt = 0;
	rc = check_limits(s, c, len, err, errlen);
	if (rc < 0)
		return rc;
	fault_sync(s); /* unmap events read from the uffd, so that... */
	pthread_mutex_lock(&c->lock);
	apply_events(s, c); /* ...a region unmapped without UNREGISTER is seen */
	for (r = c->regions; r; r = r->next)
		if (addr < r->start + (uint64_t)r->npages * DD_PAGE_SIZE && r->start < addr + len) {
			reconcile(s, c); /* the same, for clients that raise no events */
			break;
		}
	drop_gone_regions(s, c, addr, len);
	for (r = c->regions; r; r = r->next)
		if (addr < r->start + (uint64_t)r->npages * DD_PAGE_SIZE && r->start < addr + len) {
			/* The same range in the same domain again (mapped anew in
			 * place, or offered twice, as QEMU does): already registered;
			 * make sure its VMAs are registered with the uffd. */
			if (r->start == addr && (uint64_t)r->npages * DD_PAGE_SIZE == len &&
			    r->dom->policy == policy && r->dom->key == key && r->dom->salt == salt &&
			    dd_maps_check_range(c->maps_path, addr, len, err, errlen) == 0) {
				rearm(c, r);
				rc = 0;
				goto out;
			}
			snprintf(err, errlen, "range %#llx+%#llx overlaps the registered region at "
				 "%#llx", (unsigned long long)addr, (unsigned long long)len,
				 (unsigned long long)r->start);
			rc = -EEXIST;
			goto out;
		}
	rc = dd_maps_check_range(c->maps_path, addr, len, err, errlen);
	if (rc < 0)
		goto out;
	if (ioctl(c->uffd, UFFDIO_REGISTER, &reg) < 0) {
		rc = -errno;
		snprintf(err, errlen, "cannot write-protect-register %#llx+%#llx: %s",
			 (unsigned long long)addr, (unsigned long long)len, strerror(errno));
		goto out;
	}
	nsv = store_vmas(c->maps_path, addr, len, &sv);
	d = domain_get(s, policy, key, salt, nsv ? open_vma_file(c->pid, &sv[0]) : -1);
	if (!d) {
		rc = -ENOMEM;
		snprintf(err, errlen, "cannot create a share domain store: %s", strerror(errno));
		goto out;
	}
	rc = ensure_store_sent(s, c, d);
	if (rc < 0) {
		snprintf(err, errlen, "cannot hand the store to the agent: %s", strerror(-rc));
		goto out;
	}
	r = calloc(1, sizeof(*r));
	if (r)
		r->pages = calloc(len / DD_PAGE_SIZE, sizeof(*r->pages));
	if (r && r->pages)
		huge_hint(r->pages, len / DD_PAGE_SIZE * sizeof(*r->pages));
	if (!r || !r->pages) {
		free(r);
		rc = -ENOMEM;
		snprintf(err, errlen, "out of memory for %llu page records",
			 (unsigned long long)(len / DD_PAGE_SIZE));
		goto out;
	}
	r->id = ++c->next_region_id;
	r->start = addr;
	r->npages = (uint32_t)(len / DD_PAGE_SIZE);
	r->dom = d;
	r->c = c;
	atomic_fetch_add(&c->refs, 1); /* dropped when the region is freed */
	atomic_init(&r->refs, 1);
	if (nsv)
		atomic_fetch_add(&s->pages_adopted, adopt_pages(c, r, sv, nsv));
	for (pp = &c->regions; *pp; pp = &(*pp)->next)
		;
	*pp = r;
	atomic_fetch_add(&s->registered, r->npages);
	atomic_fetch_add(&s->nregions, 1);
	atomic_store(&s->idle_passes, 0); /* new memory: scan at full rate again */
	rc = 0;
out:
	pthread_mutex_unlock(&c->lock);
	free(sv);
	if (rc == 0) { /* and now: not after the pause (up to idle_backoff_ms_max) */
		pthread_mutex_lock(&s->sleep_mx);
		pthread_cond_broadcast(&s->sleep_cv);
		pthread_mutex_unlock(&s->sleep_mx);
	}
	return rc;
}

int dd_scanner_unregister(struct dd_scanner *s, struct dd_sclient *c, uint64_t addr,
			  uint64_t len, char *err, size_t errlen)
{
	struct uffdio_range rg = { .start = addr, .len = len };
	struct dd_region **pp, *r;
	int rc = -ENOENT;

	pthread_mutex_lock(&c->lock);
	if (c->agent_doubt && c->agent) {
		/* A REMAP left unanswered may still be carried out: wait for
		 * the agent to answer an empty one (it works in order) before
		 * the region's shares are given back and its registration
		 * (which guards the runs the agent empties) goes. */
		int32_t none[1];

		if (s->ops.batch(c->agent, NULL, 0, none) == 0)
			c->agent_doubt = false;
	}
	for (pp = &c->regions; (r = *pp); pp = &r->next)
		if (r->start == addr && (uint64_t)r->npages * DD_PAGE_SIZE == len) {
			*pp = r->next;
			region_kill(s, r);
			/* Merged pages stay shared until written; stop tracking faults. */
			ioctl(c->uffd, UFFDIO_UNREGISTER, &rg);
			region_put(r);
			rc = 0;
			break;
		}
	pthread_mutex_unlock(&c->lock);
	if (rc)
		snprintf(err, errlen, "no registered region is exactly %#llx+%#llx",
			 (unsigned long long)addr, (unsigned long long)len);
	return rc;
}

/* ---- the fault thread ------------------------------------------------- */

static bool ranges_hit(const struct range *v, size_t n, uint64_t a)
{
	for (size_t i = 0; i < n; i++)
		if (a >= v[i].start && a < v[i].end)
			return true;
	return false;
}

static void wp_off(int uffd, uint64_t start, uint64_t len)
{
	struct uffdio_writeprotect wp = { .range = { .start = start, .len = len }, .mode = 0 };
	struct uffdio_range rg = { .start = start, .len = len };

	/* Unprotecting wakes the waiters; where the page is no longer in a
	 * registered VMA (it was remapped or unmapped) just wake them. */
	if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) < 0)
		ioctl(uffd, UFFDIO_WAKE, &rg);
}

static void on_event(struct dd_sclient *c, uint8_t type, uint64_t start, uint64_t end)
{
	pthread_mutex_lock(&c->fault_lock);
	for (size_t i = 0; i < c->nexpect; i++)
		if (c->expect[i].start == start && c->expect[i].end == end) {
			c->expect[i] = c->expect[--c->nexpect]; /* our own remap or zap */
			pthread_mutex_unlock(&c->fault_lock);
			return;
		}
	if (c->nevents < MAX_EVENTS)
		c->events[c->nevents++] = (struct uevent){ type, start, end };
	else
		c->events_lost = true;
	pthread_mutex_unlock(&c->fault_lock);
}

static void handle_uffd(struct dd_scanner *s, struct dd_sclient *c)
{
	struct uffd_msg msg[32];
	ssize_t n;

	while ((n = read(c->uffd, msg, sizeof(msg))) > 0) {
		for (size_t i = 0; i < (size_t)n / sizeof(msg[0]); i++) {
			struct uffd_msg *m = &msg[i];

			switch (m->event) {
			case UFFD_EVENT_PAGEFAULT: {
				uint64_t a = m->arg.pagefault.address & ~(uint64_t)(DD_PAGE_SIZE - 1);

				/* A missing-page fault: on a run the agent emptied
				 * for its remap; the agent wakes the thread once the
				 * run is mapped (agent.c, do_remaps()). */
				if (!(m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP))
					break; /* not a write-protect fault (wp_faults) */
				/* Under fault_lock, so a merge cannot freeze the page
				 * between our check and our unprotect. */
				pthread_mutex_lock(&c->fault_lock);
				if (!ranges_hit(c->inflight, c->ninflight, a))
					wp_off(c->uffd, a, DD_PAGE_SIZE);
				pthread_mutex_unlock(&c->fault_lock);
				atomic_fetch_add(&s->faults, 1);
				break;
			}
			case UFFD_EVENT_UNMAP:
			case UFFD_EVENT_REMOVE:
				on_event(c, m->event, m->arg.remove.start, m->arg.remove.end);
				break;
			case UFFD_EVENT_REMAP:
				on_event(c, m->event, m->arg.remap.from,
					 m->arg.remap.from + m->arg.remap.len);
				break;
			default:
				break;
			}
		}
	}
}

static pthread_mutex_t fault_mx = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t fault_cv = PTHREAD_COND_INITIALIZER;
static uint64_t fault_gen;

static void *fault_main(void *arg)
{
	struct dd_scanner *s = arg;
	struct epoll_event ev[32];

	while (!atomic_load(&s->fault_stop)) {
		int n = epoll_wait(s->fault_ep, ev, 32, 1000);

		for (int i = 0; i < n; i++) {
			uint64_t v;

			if (ev[i].data.ptr)
				handle_uffd(s, ev[i].data.ptr);
			else if (read(s->fault_wake, &v, sizeof(v)) < 0)
				continue; /* drained already */
		}
		pthread_mutex_lock(&fault_mx);
		fault_gen++;
		pthread_cond_broadcast(&fault_cv);
		pthread_mutex_unlock(&fault_mx);
	}
	return NULL;
}

/* Wait until the fault thread has finished any events it had in hand. */
static void fault_sync(struct dd_scanner *s)
{
	uint64_t one = 1, g;

	if (!s->running)
		return;
	pthread_mutex_lock(&fault_mx);
	g = fault_gen;
	if (write(s->fault_wake, &one, sizeof(one)) < 0) {
		/* eventfd full: the thread is awake anyway */
	}
	/* The batch in hand when we read g ends with g + 1; a thread that was
	 * waiting wakes on our write and also ends its batch with g + 1. */
	while (fault_gen < g + 1 && !atomic_load(&s->fault_stop))
		pthread_cond_wait(&fault_cv, &fault_mx);
	pthread_mutex_unlock(&fault_mx);
}

/* ---- scanning --------------------------------------------------------- */

static void add_range(struct range **v, size_t *n, uint64_t start, uint64_t end)
{
	struct range *nv = realloc(*v, (*n + 1) * sizeof(**v));

	if (!nv)
		abort(); /* a few dozen bytes: nothing sensible to do without them */
	*v = nv;
	(*v)[(*n)++] = (struct range){ start, end };
}

/* Apply unmap/remove/remap events of the application (c->lock held). */
static void apply_events(struct dd_scanner *s, struct dd_sclient *c)
{
	struct uevent ev[MAX_EVENTS];
	size_t n;
	bool lost;

	pthread_mutex_lock(&c->fault_lock);
	n = c->nevents;
	memcpy(ev, c->events, n * sizeof(ev[0]));
	lost = c->events_lost;
	c->nevents = 0;
	c->events_lost = false;
	pthread_mutex_unlock(&c->fault_lock);
	if (lost) { /* too many to follow: start every record afresh */
		n = 1;
		ev[0] = (struct uevent){ UFFD_EVENT_REMOVE, 0, UINT64_MAX };
	}
	for (size_t e = 0; e < n; e++)
		for (struct dd_region *r = c->regions; r; r = r->next) {
			uint64_t rend = r->start + (uint64_t)r->npages * DD_PAGE_SIZE;
			uint64_t lo = ev[e].start > r->start ? ev[e].start : r->start;
			uint64_t hi = ev[e].end < rend ? ev[e].end : rend;
			char why[8];
			/* Mapped over in place with fresh private anonymous memory
			 * (mmap MAP_FIXED: how dedup_discard() and many allocators
			 * zero memory): the range stays registered, its pages start
			 * afresh, and the new VMA is registered with the uffd again
			 * before anything in it is frozen. */
			bool renewed = ev[e].type == UFFD_EVENT_UNMAP && lo < hi &&
				       dd_maps_check_range(c->maps_path, lo, hi - lo, why,
							   sizeof(why)) == 0;

			if (renewed)
				r->rearm = true;
			for (uint64_t a = lo; a < hi; a += DD_PAGE_SIZE) {
				uint32_t idx = (uint32_t)((a - r->start) / DD_PAGE_SIZE);
				struct dd_page *p = &r->pages[idx];

				if (p->state == PG_GONE)
					continue;
				if (ev[e].type != UFFD_EVENT_REMOVE) {
					page_unmapped(s, r, idx, renewed); /* or moved away */
					continue;
				}
				/* MADV_DONTNEED: merged pages still read the store (their
				 * VMA maps it); the rest starts afresh. */
				if (p->state == PG_ZERO || p->state == PG_MERGED)
					continue;
				if (p->state == PG_UNSTABLE)
					unstable_forget(s, r, idx);
				else if (p->state == PG_COLD)
					atomic_fetch_sub(&s->cold_count, 1);
				p->state = PG_NEW;
			}
		}
}

/*
 * Hold the client's page records against its mappings (c->lock held, so no
 * merge of ours is under way). libdedup does not ask for unmap and remove
 * events: each of our own remaps would raise one, and the agent's mmap()
 * would wait until the fault thread had read it (see README, "Where the code
 * departs from DESIGN.md"). What an application does to its registered
 * memory is found here instead, from /proc/PID/maps:
 *
 * - a page no longer mapped, or mapped by something other than anonymous
 *   memory or its domain's store, is gone (as after an unmap event);
 * - a merged page whose address no longer maps its store slot (mapped over
 *   with fresh memory, as dedup_discard() and many allocators do) gives its
 *   share back and starts afresh; its range is registered with the uffd
 *   again before anything there is frozen.
 *
 * A share is given back only when the address provably maps something else,
 * so a slot still mapped is never freed. Run when a merged page that was seen
 * mapped is not any more (at most every RECONCILE_MIN_MS), at least every
 * RECONCILE_MAX_MS (a merged page is only mapped once touched, so one never
 * touched is found then), and before a registration that overlaps a region.
 * Reading maps costs ~0.4 us per VMA (24 ms for 60,000).
 */
static void reconcile(struct dd_scanner *s, struct dd_sclient *c)
{
	struct dd_vma *v = NULL;
	size_t cap = 0, k = 0;
	long nv;
	uint64_t gone = 0;

	if (c->agent_doubt)
		return; /* a late remap may come: see agent_doubt */
	nv = dd_maps_read(c->maps_path, &v, &cap);
	c->reconciled_ms = now_ms();
	c->reconcile_due = false;
	if (nv < 0)
		return; /* the client is exiting: its records go with it */
	for (struct dd_region *r = c->regions; r; r = r->next) {
		if (r->dead)
			continue;
		for (k = 0; k < (size_t)nv && v[k].end <= r->start; k++)
			;
		for (uint32_t i = 0; i < r->npages; i++) {
			uint64_t a = r->start + (uint64_t)i * DD_PAGE_SIZE;
			struct dd_page *p = &r->pages[i];
			bool mapped, store;

			while (k < (size_t)nv && v[k].end <= a)
				k++;
			if (p->state == PG_GONE)
				continue;
			mapped = k < (size_t)nv && v[k].start <= a;
			store = mapped && v[k].ino && dd_store_is_file(r->dom->store, v[k].ino);
			if (mapped && (store || !v[k].ino)) {
				bool keep = p->state != PG_MERGED ||
					    (store && v[k].off + (a - v[k].start) ==
							      (uint64_t)p->slot * DD_PAGE_SIZE);

				if (!keep) {
					page_unmapped(s, r, i, true);
					p->flags |= PGF_VOLATILE;
					gone++;
				}
				/* Where it lies now decides whether it may be
				 * zapped or emptied (DD_REMAP_ANON). */
				if (store)
					p->flags |= PGF_REMAPPED;
				else
					p->flags &= (uint8_t)~PGF_REMAPPED;
				continue;
			}
			page_unmapped(s, r, i, false);
			gone++;
		}
	}
	free(v);
	if (gone)
		atomic_fetch_add(&s->pages_unmapped, gone);
}

static void reconcile_if_due(struct dd_scanner *s, struct dd_sclient *c)
{
	uint64_t since = now_ms() - c->reconciled_ms;

	if ((c->reconcile_due && since >= RECONCILE_MIN_MS) || since >= RECONCILE_MAX_MS)
		reconcile(s, c);
}

static void mq_add(struct dd_worker *w, struct dd_region *r, uint32_t idx, int64_t slot)
{
	const struct merge *p = w->nmq ? &w->mq[w->nmq - 1] : NULL;

	/* Runs in anonymous memory: each would split a VMA (span_mode()). */
	if (slot >= 0 && !(p && p->r == r && p->idx + 1 == idx) &&
	    !(r->pages[idx].flags & PGF_REMAPPED))
		r->c->runs_queued++, r->c->runs_batch++;
	w->mq[w->nmq++] = (struct merge){ .r = r, .idx = idx, .slot = slot };
}

static void pend_add(struct dd_sclient *c, struct dd_region *r, uint32_t idx, uint32_t slot)
{
	pthread_mutex_lock(&c->pend_lock);
	if (c->closed) { /* the client is leaving: nobody will run it */
		pthread_mutex_unlock(&c->pend_lock);
		dd_store_pend_done(r->dom->store, slot, false);
		return;
	}
	if (c->npend == c->cappend) {
		size_t cap = c->cappend ? c->cappend * 2 : 64;
		struct pend *p = realloc(c->pend, cap * sizeof(*p));
		if (!p) {
			pthread_mutex_unlock(&c->pend_lock);
			dd_store_pend_done(r->dom->store, slot, false);
			return;
		}
		c->pend = p;
		c->cappend = cap;
	}
	atomic_fetch_add(&r->refs, 1);
	c->pend[c->npend] = (struct pend){ r, idx, slot };
	__atomic_store_n(&c->npend, c->npend + 1, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&c->pend_lock);
}

/*
 * Reading another process's memory. process_vm_readv() pins the pages, and a
 * read-only pin of an anonymous page that another process still shares
 * copy-on-write (a forked worker) makes the kernel unshare it: scanning would
 * copy the very pages we are here to share. /proc/PID/mem does not pin (one
 * more copy, through a bounce page), so pages that pagemap does not report as
 * exclusively mapped are read through it.
 */
static bool pm_shared_anon(uint64_t pm)
{
	return (pm & DD_PM_PRESENT) && !(pm & DD_PM_FILE) && !(pm & DD_PM_EXCLUSIVE);
}

static int read_mem(const struct dd_sclient *c, uint64_t addr, void *dst, size_t npages)
{
	size_t len = npages * DD_PAGE_SIZE;

	return pread(c->mem, dst, len, (off_t)addr) == (ssize_t)len ? 0 : -EFAULT;
}

/* Read npages from addr of client c, choosing the path page by page. */
static int read_pages(const struct dd_sclient *c, uint64_t addr, void *dst, size_t npages)
{
	struct iovec l = { .iov_base = dst, .iov_len = npages * DD_PAGE_SIZE };
	struct iovec rm = { .iov_base = (void *)(uintptr_t)addr, .iov_len = l.iov_len };
	uint64_t pm[READ_BATCH];
	bool shared = false;

	if (npages <= READ_BATCH &&
	    pread(c->pagemap, pm, npages * 8, (off_t)(addr / DD_PAGE_SIZE * 8)) ==
		    (ssize_t)(npages * 8))
		for (size_t i = 0; i < npages && !shared; i++)
			shared = pm_shared_anon(pm[i]);
	if (shared || npages > READ_BATCH)
		return read_mem(c, addr, dst, npages);
	return process_vm_readv(c->pid, &l, 1, &rm, 1, 0) == (ssize_t)l.iov_len ? 0 : -EFAULT;
}

struct stable_hit {
	const void *page;
	struct dd_stable *node;
};

static int stable_visit(struct dd_table_node *tn, void *arg)
{
	struct stable_hit *h = arg;
	struct dd_stable *st = caa_container_of(tn, struct dd_stable, tn);

	/* Without the page (the agent sent only its checksum), the byte compare
	 * under freeze in verify() is the only one, as for unstable hits. */
	if (st->dead ||
	    (h->page && memcmp(h->page, dd_store_page(st->store, st->slot), DD_PAGE_SIZE)))
		return 0;
	if (!dd_store_try_pend(st))
		return 0;
	h->node = st;
	return 1;
}

struct unstable_hit {
	struct dd_region *self;
	uint32_t self_idx;
	struct dd_unstable *node;
};

static int unstable_visit(struct dd_table_node *tn, void *arg)
{
	struct unstable_hit *h = arg;
	struct dd_unstable *u = caa_container_of(tn, struct dd_unstable, tn);

	/* No read of the other page here: it is byte-compared with the new
	 * store page under freeze like every merge, so a checksum collision or
	 * a page that changed only costs that one merge. */
	uint32_t v = atomic_load(&u->idx_live);

	if (!(v & UNODE_LIVE) || u->r->dead || (u->r == h->self && v == (h->self_idx | UNODE_LIVE)))
		return 0;
	h->node = u;
	return 1;
}

static struct dd_unstable *unode(struct dd_scanner *s, uint32_t i)
{
	return &s->upool[i / UPOOL_CHUNK][i % UPOOL_CHUNK];
}

/* A free node, or NULL (out of memory). */
static struct dd_unstable *unode_get(struct dd_scanner *s)
{
	struct dd_unstable *u = NULL;
	uint32_t i;

	pthread_mutex_lock(&s->upool_lock);
	if (s->upool_nfree) {
		i = s->upool_free[--s->upool_nfree];
		u = unode(s, i);
		u->self = i; /* its chunk may have been given back (zeros) */
		s->upool_live[i / UPOOL_CHUNK]++;
	} else {
		i = s->upool_next;
		if (i / UPOOL_CHUNK >= UPOOL_MAX_CHUNKS)
			goto out;
		if (i / UPOOL_CHUNK >= s->upool_chunks) {
			/* The chunk array never moves (sized for the most chunks at
			 * start): lock-free readers index it. */
			void *m = mmap(NULL, UPOOL_CHUNK_BYTES, PROT_READ | PROT_WRITE,
				       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

			if (m == MAP_FAILED)
				goto out;
			huge_hint(m, UPOOL_CHUNK_BYTES);
			s->upool[s->upool_chunks] = m;
			s->upool_chunks++;
		}
		u = unode(s, i);
		u->self = i;
		s->upool_live[i / UPOOL_CHUNK]++;
		__atomic_store_n(&s->upool_next, i + 1, __ATOMIC_RELEASE);
	}
out:
	pthread_mutex_unlock(&s->upool_lock);
	return u;
}

static uint32_t unstable_domain(const struct dd_table_node *tn)
{
	return caa_container_of(tn, struct dd_unstable, tn)->r->dom->id;
}

static void unstable_release(struct dd_table_node *tn)
{
	region_put(caa_container_of(tn, struct dd_unstable, tn)->r);
}

/* Put a node whose grace period is over back in the pool. */
static void unode_put(struct dd_scanner *s, struct dd_unstable *u, uint32_t i)
{
	region_put(u->r);
	pthread_mutex_lock(&s->upool_lock);
	if (s->upool_nfree == s->upool_capfree) {
		size_t cap = s->upool_capfree ? s->upool_capfree * 2 : 4096;
		uint32_t *f = realloc(s->upool_free, cap * sizeof(*f));

		if (!f) { /* leak the node: harmless, it is never reused */
			pthread_mutex_unlock(&s->upool_lock);
			return;
		}
		s->upool_free = f;
		s->upool_capfree = cap;
	}
	s->upool_free[s->upool_nfree++] = i;
	/* A chunk with no node handed out goes back to the kernel: once unique
	 * pages turn cold, the pool that indexed them is empty. Under the lock,
	 * so that no node of it is handed out meanwhile; a reader still looking
	 * at a stale record's node reads zeros, which are not live. */
	if (--s->upool_live[i / UPOOL_CHUNK] == 0)
		madvise(s->upool[i / UPOOL_CHUNK], UPOOL_CHUNK_BYTES, MADV_DONTNEED);
	pthread_mutex_unlock(&s->upool_lock);
}

/* Walk a retired list, putting every node back. */
static void unode_put_list(struct dd_scanner *s, uint32_t i)
{
	while (i != UNODE_NONE) {
		struct dd_unstable *u = unode(s, i);
		uint32_t next = u->self;

		u->self = i;
		unode_put(s, u, i);
		i = next;
	}
}

struct retired_batch {
	struct rcu_head rcu;
	struct dd_scanner *s;
	uint32_t first;
};

static void retired_free_rcu(struct rcu_head *h)
{
	struct retired_batch *b = caa_container_of(h, struct retired_batch, rcu);

	unode_put_list(b->s, b->first);
	free(b);
}

/* Hand the retired list to one call_rcu() (callable in a read-side section);
 * with no memory for that, the nodes stay retired until the next try. */
static void unode_flush_retired(struct dd_scanner *s)
{
	struct retired_batch *b = malloc(sizeof(*b));

	pthread_mutex_lock(&s->upool_lock);
	if (b && s->nretired) {
		b->s = s;
		b->first = s->retired;
		s->retired = UNODE_NONE;
		s->nretired = 0;
		call_rcu(&b->rcu, retired_free_rcu);
		b = NULL;
	}
	pthread_mutex_unlock(&s->upool_lock);
	free(b);
}

/* Take u out of the unstable table; the winner of a race disposes of it. */
static bool unstable_del(struct dd_scanner *s, struct dd_unstable *u)
{
	bool flush;
	uint32_t i;

	if (dd_table_del(s->unstable, &u->tn) != 0)
		return false;
	atomic_fetch_and(&u->idx_live, ~UNODE_LIVE);
	atomic_fetch_sub(&s->unstable_count, 1);
	pthread_mutex_lock(&s->upool_lock);
	/* Readers still in their grace period read r and idx_live, never self. */
	i = u->self;
	u->self = s->retired;
	s->retired = i;
	flush = ++s->nretired >= UNODE_BATCH;
	pthread_mutex_unlock(&s->upool_lock);
	if (flush)
		unode_flush_retired(s);
	return true;
}

/* The live node of page idx of r, or NULL (rcu read lock held). */
static struct dd_unstable *unstable_of(struct dd_scanner *s, struct dd_region *r, uint32_t idx)
{
	struct dd_page *p = &r->pages[idx];
	struct dd_unstable *u;

	if (p->state != PG_UNSTABLE || p->slot >= __atomic_load_n(&s->upool_next, __ATOMIC_ACQUIRE))
		return NULL;
	u = unode(s, p->slot);
	return atomic_load(&u->idx_live) == (idx | UNODE_LIVE) && u->r == r ? u : NULL;
}

/*
 * Look a candidate page up in both tables (rcu read lock held). page is its
 * content, or NULL if only its checksum is known (the agent hashed it): then
 * it is read here only if a new store page must be made of it.
 */
/*
 * Where the fresh slot for page idx of r should go (dd_store_reserve()'s
 * hint: the slot after it). Runs of duplicates get consecutive slots. For a
 * client that merges by spans, the slot goes as far after the last one as
 * its page is after the last page (up to SPAN_GAP_MAX): then every process
 * with these pages at the same offsets maps them with one span.
 */
static int64_t stride_hint(struct dd_worker *w, struct dd_region *r, uint32_t idx)
{
	if (w->hint >= 0 && w->hint_r == r && idx > w->hint_idx &&
	    idx - w->hint_idx <= SPAN_GAP_MAX + 1 && span_mode(w->s, r->c))
		return w->hint + (idx - w->hint_idx) - 1;
	return w->hint;
}

static void match_page(struct dd_worker *w, struct dd_region *r, uint32_t idx, uint64_t csum,
		       const void *page, bool insert)
{
	struct dd_scanner *s = w->s;
	struct dd_page *p = &r->pages[idx];
	struct stable_hit sh = { .page = page };
	struct unstable_hit uh = { .self = r, .self_idx = idx };
	struct dd_unstable *u;
	int64_t slot;

	dd_table_for_each_dup(s->stable, r->dom->id, csum, stable_visit, &sh);
	if (sh.node) {
		mq_add(w, r, idx, sh.node->slot);
		return;
	}
	dd_table_for_each_dup(s->unstable, r->dom->id, csum, unstable_visit, &uh);
	if (uh.node) {
		struct dd_region *qr = uh.node->r;
		uint32_t qidx = atomic_load(&uh.node->idx_live) & ~UNODE_LIVE;

		if (!unstable_del(s, uh.node))
			goto miss; /* someone else took it */
		/* Two merges will pend on a new slot: this page and the other.
		 * The slot is filled with this page as it is read under freeze
		 * (fill()), and only then is the other page queued on its client
		 * (settle()): no copy here, one pwrite per run. */
		slot = dd_store_reserve(r->dom->store, stride_hint(w, r, idx), 2);
		if (slot < 0)
			return; /* the other page waits in its record for the next pass */
		w->hint = slot;
		w->hint_r = r;
		w->hint_idx = idx;
		if (atomic_load_explicit(&s->warm_idle, memory_order_relaxed))
			warm_kick(s);
		atomic_fetch_add(&qr->refs, 1);
		mq_add(w, r, idx, slot);
		w->mq[w->nmq - 1].fresh = true;
		w->mq[w->nmq - 1].pr = qr;
		w->mq[w->nmq - 1].pidx = qidx;
		return;
	}
miss:
	if (!insert) { /* a cold page's turn: it stays out of the tables */
		p->state = PG_COLD;
		atomic_fetch_add(&s->cold_count, 1);
		return;
	}
	u = unode_get(s);
	if (!u)
		return;
	u->r = r;
	atomic_fetch_add(&r->refs, 1);
	dd_table_add(s->unstable, &u->tn, r->dom->id, csum);
	atomic_store(&u->idx_live, idx | UNODE_LIVE);
	atomic_fetch_add(&s->unstable_count, 1);
	p->state = PG_UNSTABLE;
	p->age = 0;
	p->slot = u->self;
}

/* ---- store slots allocated ahead of the fills ---------------------------- */

/*
 * Filling a fresh slot writes a newly allocated page: 2-6 us a page here,
 * most of a merge's cost in W1, against ~1 us to overwrite a page that is
 * there. This thread allocates the slots ahead of the scan threads, on the
 * other core, as fast as they take them: as many as the last WARM_HORIZON_MS
 * of reservations (WARM_MIN..WARM_MAX per store). It sleeps while nobody
 * reserves, and gives the warm pages back after WARM_COOL_MS without demand:
 * they are memory the daemon holds (store_pages_warm, charged in
 * bytes_saved_net).
 */
static void warm_kick(struct dd_scanner *s)
{
	pthread_mutex_lock(&s->warm_mx);
	s->warm_kicked = true;
	atomic_store(&s->warm_idle, false);
	pthread_cond_signal(&s->warm_cv);
	pthread_mutex_unlock(&s->warm_mx);
}

static void warm_cool_all(struct dd_scanner *s)
{
	uint32_t nd;

	pthread_mutex_lock(&s->lock);
	nd = s->ndomains;
	pthread_mutex_unlock(&s->lock);
	for (uint32_t i = 0; i < nd; i++)
		dd_store_cool(s->domains[i].store);
}

static void *warm_main(void *arg)
{
	struct dd_scanner *s = arg;
	struct warm_dom *wd = s->warm_dom;
	uint64_t prev = now_ms();
	bool active = false;

	while (!atomic_load(&s->stop)) {
		struct timespec t0;
		uint64_t now, dt;
		uint32_t nd;

		pthread_mutex_lock(&s->warm_mx);
		if (!active) {
			atomic_store(&s->warm_idle, true);
			while (!s->warm_kicked && !atomic_load(&s->stop))
				pthread_cond_wait(&s->warm_cv, &s->warm_mx);
		} else if (!s->warm_kicked) {
			struct timespec ts = deadline_in(WARM_TICK_MS);

			pthread_cond_timedwait(&s->warm_cv, &s->warm_mx, &ts);
		}
		s->warm_kicked = false;
		pthread_mutex_unlock(&s->warm_mx);
		if (atomic_load(&s->stop))
			break;

		clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
		pthread_mutex_lock(&s->lock);
		nd = s->ndomains;
		pthread_mutex_unlock(&s->lock);
		now = now_ms();
		dt = now > prev ? now - prev : 1;
		prev = now;
		active = false;
		for (uint32_t i = 0; i < nd && !atomic_load(&s->stop); i++) {
			struct dd_store *st = s->domains[i].store;
			struct warm_dom *x = &wd[i];
			uint64_t r = dd_store_reserved(st), d = r - x->seen;
			uint64_t w = d * WARM_HORIZON_MS / dt;

			x->seen = r;
			if (d)
				x->used_ms = now;
			if (!x->used_ms || now - x->used_ms >= WARM_COOL_MS) {
				if (x->want)
					dd_store_cool(st);
				x->want = 0;
				continue;
			}
			active = true;
			/* Follow a rise at once, a fall slowly (a quarter a tick). */
			w = w > WARM_MAX ? WARM_MAX : w < WARM_MIN ? WARM_MIN : w;
			x->want = w > x->want - x->want / 4 ? (uint32_t)w : x->want - x->want / 4;
			while (!atomic_load(&s->stop) && dd_store_warm(st, x->want) > 0)
				;
		}
		add_cpu(s, &t0);
	}
	warm_cool_all(s);
	return NULL;
}

static int cmp_merge(const void *a, const void *b)
{
	const struct merge *x = a, *y = b;
	uint64_t ax = x->r->start + (uint64_t)x->idx * DD_PAGE_SIZE;
	uint64_t ay = y->r->start + (uint64_t)y->idx * DD_PAGE_SIZE;

	return ax < ay ? -1 : ax > ay;
}

static uint64_t mq_addr(const struct merge *m)
{
	return m->r->start + (uint64_t)m->idx * DD_PAGE_SIZE;
}

/* Length of the run of queue entries from i on with consecutive addresses
 * in one region (and, if slots, consecutive store slots of one kind). */
static size_t run_len(const struct merge *q, size_t n, size_t i, bool slots)
{
	size_t j = i + 1;

	while (j < n && q[j].r == q[i].r && q[j].idx == q[j - 1].idx + 1 && !q[j].span &&
	       q[j].inspan == q[i].inspan &&
	       (!slots || ((q[j].slot < 0) == (q[i].slot < 0) && q[j].fresh == q[i].fresh &&
			   (q[i].slot < 0 || q[j].slot == q[j - 1].slot + 1))) &&
	       (!slots || (q[j].res == 0) == (q[i].res == 0)))
		j++;
	return j - i;
}

static int wp_range(int uffd, uint64_t start, uint64_t len)
{
	struct uffdio_writeprotect wp = { .range = { start, len },
					  .mode = UFFDIO_WRITEPROTECT_MODE_WP };

	return ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) < 0 ? -errno : 0;
}

/*
 * Can pages [a, b) of r, between two runs, be write-protected with them?
 * Only a short gap of pages seen present and anonymous in a registered VMA
 * (not absent, huge, zapped or remapped), whose writes then take a fault
 * that the fault thread answers at once (they are not in flight).
 */
static bool bridgeable(const struct dd_region *r, uint32_t a, uint32_t b)
{
	if (b - a > SPAN_GAP_MAX)
		return false;
	for (uint32_t k = a; k < b; k++) {
		uint8_t st = r->pages[k].state;

		if (st != PG_CHECKED && st != PG_UNSTABLE && st != PG_COLD)
			return false;
	}
	return true;
}

static bool run_anon(const struct merge *m, size_t k);

/* May pages [a, b) of r lie between two runs of a span (the agent copies
 * them into the span's mapping)? Bridgeable, and in anonymous memory. */
static bool keepable(const struct dd_region *r, uint32_t a, uint32_t b)
{
	if (!bridgeable(r, a, b))
		return false;
	for (uint32_t k = a; k < b; k++)
		if (r->pages[k].flags & PGF_REMAPPED)
			return false;
	return true;
}

/* The end of the span that starts at queue entry i (its entries). */
static size_t span_end(const struct merge *q, size_t n, size_t i)
{
	size_t j = i + 1;

	while (j < n && q[j].inspan && !q[j].span && q[j].r == q[i].r &&
	       q[j].idx < q[i].idx + q[i].span)
		j++;
	return j;
}

/*
 * Spans (DD_REMAP_SPAN), for a client that merges by them (span_mode()):
 * runs of q on one "diagonal" (each run's store slots are as far apart as
 * its pages) with short gaps of pages of the process's own between them
 * are mapped as one VMA: one mapping of the slots from the first run's to
 * the last run's, in which the agent puts copies of the gap pages. Two VMAs
 * for a whole span instead of two for each run: scattered duplicates (a
 * shared page between two of the process's own) no longer run a process
 * out of VMAs. The gap pages cost a copy each.
 */
static void plan_spans(struct dd_scanner *s, struct dd_sclient *c, struct merge *q, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		q[i].span = 0;
		q[i].inspan = q[i].held = q[i].span_ok = false;
		q[i].span_res = 0;
	}
	if (!span_mode(s, c))
		return;
	for (size_t i = 0, k; i < n; i += k) {
		size_t j, runs = 1;
		int64_t diag;

		k = run_len(q, n, i, true);
		if (q[i].res || q[i].slot < 0 || !run_anon(&q[i], k))
			continue;
		diag = q[i].slot - (int64_t)q[i].idx;
		for (j = i + k; j < n;) {
			size_t k2 = run_len(q, n, j, true);

			if (q[j].r != q[i].r || q[j].res || q[j].slot < 0 ||
			    q[j].slot - (int64_t)q[j].idx != diag || !run_anon(&q[j], k2) ||
			    q[j].idx + k2 - q[i].idx > SPAN_MAX_PAGES ||
			    !keepable(q[i].r, q[j - 1].idx + 1, q[j].idx))
				break;
			j += k2;
			runs++;
		}
		if (runs < 2)
			continue;
		q[i].span = q[j - 1].idx + 1 - q[i].idx;
		for (size_t x = i; x < j; x++)
			q[x].inspan = true;
		k = j - i;
	}
}

/*
 * Write-protect the queued pages. A range of at most TLB_FLUSH_CEILING pages
 * is flushed from the TLB page by page, each an exit to the hypervisor on
 * this kind of guest (~4 us); a longer one costs one full flush (~60 us).
 * So runs close together are protected as one span, gaps included, when the
 * span comes out longer than that; else run by run.
 */
static void freeze(struct dd_sclient *c, struct merge *q, size_t n)
{
	/* A span is frozen whole, its gaps too: the agent copies them. */
	pthread_mutex_lock(&c->fault_lock);
	for (size_t i = 0, k; i < n; i += k) {
		uint64_t len;

		k = q[i].span ? span_end(q, n, i) - i : run_len(q, n, i, false);
		len = q[i].span ? (uint64_t)q[i].span * DD_PAGE_SIZE : k * DD_PAGE_SIZE;
		add_range(&c->inflight, &c->ninflight, mq_addr(&q[i]), mq_addr(&q[i]) + len);
	}
	pthread_mutex_unlock(&c->fault_lock);
	for (size_t i = 0, j; i < n; i = j) {
		uint64_t start = mq_addr(&q[i]), len;

		if (q[i].span) {
			int e;

			j = span_end(q, n, i);
			e = wp_range(c->uffd, start, (uint64_t)q[i].span * DD_PAGE_SIZE);
			for (size_t y = i; y < j && e < 0; y++)
				q[y].res = e;
			if (e == -ENOENT)
				q[i].r->rearm = true;
			continue;
		}
		j = i + run_len(q, n, i, false);
		while (j < n && !q[j].span && q[j].r == q[i].r &&
		       bridgeable(q[i].r, q[j - 1].idx + 1, q[j].idx))
			j += run_len(q, n, j, false);
		len = mq_addr(&q[j - 1]) + DD_PAGE_SIZE - start;
		if (len / DD_PAGE_SIZE > TLB_FLUSH_CEILING &&
		    wp_range(c->uffd, start, len) == 0)
			continue;
		for (size_t x = i, k; x < j; x += k) {
			int e;

			k = run_len(q, n, x, false);
			if ((e = wp_range(c->uffd, mq_addr(&q[x]), k * DD_PAGE_SIZE)) < 0)
				for (size_t y = x; y < x + k; y++)
					q[y].res = e;
			/* Not registered: mapped over with fresh memory since (no
			 * event tells of that); register the region again. */
			if (e == -ENOENT)
				q[x].r->rearm = true;
		}
	}
}

/* Does the frozen page of queue entry m still qualify for its merge? */
static bool still_mergeable(const struct merge *m)
{
	uint8_t st = m->r->pages[m->idx].state;

	return !m->r->dead && st != PG_MERGED && st != PG_GONE && st != PG_ZERO;
}

/*
 * Re-read frozen pages and compare them with their target, byte for byte:
 * the zero page, or the store page, through the daemon's mapping of the
 * store (dd_store_page(): no syscall per run). A page for a fresh slot has
 * nothing to compare with: it becomes the slot's content (fill()).
 * With an agent that compares (av), only the pages for fresh slots are
 * read here: the agent compares the others in place, after it finds them
 * frozen and before it touches them (DD_REMAP_VERIFY), so that they are
 * not copied out of the client (~0.65 us a page here).
 */
static void verify(struct dd_worker *w, struct dd_sclient *c, struct merge *q, size_t n, bool av)
{
	for (size_t i = 0; i < n; i++)
		q[i].agent_cmp = av && !q[i].fresh;
	for (size_t i = 0, k; i < n; i += k) {
		bool fresh = q[i].fresh;
		void *dst;

		k = 1;
		if (q[i].agent_cmp)
			continue;
		while (i + k < n && !q[i + k].agent_cmp && q[i + k].r == q[i].r &&
		       q[i + k].idx == q[i + k - 1].idx + 1 && q[i + k].fresh == fresh &&
		       (!fresh || q[i + k].slot == q[i + k - 1].slot + 1))
			k++;
		/* A page for a fresh slot is read straight into the slot. */
		dst = fresh ? dd_store_slot_mem(q[i].r->dom->store, (uint32_t)q[i].slot)
			    : w->vbuf + i * DD_PAGE_SIZE;
		if (read_pages(c, mq_addr(&q[i]), dst, k) < 0)
			for (size_t j = i; j < i + k; j++)
				q[j].res = q[j].res ? q[j].res : -EFAULT;
	}
	for (size_t x = 0; x < n; x++) {
		const uint8_t *pg = w->vbuf + x * DD_PAGE_SIZE;
		bool same;

		if (q[x].res)
			continue;
		if (!still_mergeable(&q[x]))
			same = false;
		else if (q[x].agent_cmp || q[x].fresh)
			same = true; /* the agent's to compare, or the slot's content */
		else if (q[x].slot < 0)
			same = dd_page_is_zero(pg);
		else /* the slot is held: the merge's pending reference */
			same = !memcmp(pg, dd_store_page(q[x].r->dom->store, (uint32_t)q[x].slot),
				       DD_PAGE_SIZE);
		if (!same)
			q[x].res = -EAGAIN;
	}
}

/* Publish the fresh slots whose frozen page passed (verify() read each page
 * straight into its slot), a run at a time. */
static void fill(struct merge *q, size_t n)
{
	rcu_read_lock();
	for (size_t i = 0, k; i < n; i += k) {
		k = 1;
		if (!q[i].fresh || q[i].res)
			continue;
		while (i + k < n && q[i + k].fresh && !q[i + k].res &&
		       q[i + k].r->dom == q[i].r->dom && q[i + k].slot == q[i].slot + (int64_t)k)
			k++;
		dd_store_publish(q[i].r->dom->store, (uint32_t)q[i].slot, (uint32_t)k);
		for (size_t j = i; j < i + k; j++)
			q[j].filled = true;
	}
	rcu_read_unlock();
}

/* Do the k queued pages from m on lie in anonymous memory? Not if one of
 * them lies in a VMA of the store (emptying it would show the store page). */
static bool run_anon(const struct merge *m, size_t k)
{
	for (size_t j = 0; j < k; j++)
		if (m[j].r->pages[m[j].idx].flags & PGF_REMAPPED)
			return false;
	return true;
}

/*
 * The entries of the span q[i..end) from w->e[ne] on: the span, then its
 * runs that passed (the others' pages are kept, like the gaps). Returns the
 * new count. The span's slots are held meanwhile (its free ones as holes).
 */
static uint32_t span_entries(struct dd_worker *w, struct dd_sclient *c, struct merge *q, size_t i,
			     size_t end, uint32_t ne)
{
	struct dd_remap_entry *e = w->e;
	uint32_t runs = 0;

	q[i].span_res = -EAGAIN; /* not mapped unless the agent says so */
	for (size_t x = i, k; x < end; x += k) {
		k = run_len(q, end, x, true);
		runs += !q[x].res;
	}
	if (!runs)
		return ne;
	if (!vma_room(c) || ne + 1 + runs > DD_BATCH_MAX) {
		for (size_t x = i; x < end; x++)
			q[x].res = q[x].res ? q[x].res : vma_room(c) ? -EAGAIN : -ENOSPC;
		return ne;
	}
	__atomic_fetch_add(&c->vmas, 2, __ATOMIC_RELAXED); /* splits one VMA in three */
	dd_store_hold_holes(q[i].r->dom->store, (uint32_t)q[i].slot, q[i].span);
	q[i].held = true;
	e[ne] = (struct dd_remap_entry){
		.addr = mq_addr(&q[i]),
		.store_off = (uint64_t)q[i].slot * DD_PAGE_SIZE,
		.npages = q[i].span,
		.flags = DD_REMAP_SPAN,
		.domain = q[i].r->dom->id,
	};
	w->first[ne] = i;
	w->len[ne++] = 0; /* its result goes to its runs through theirs */
	for (size_t x = i, k; x < end; x += k) {
		k = run_len(q, end, x, true);
		if (q[x].res)
			continue;
		e[ne] = (struct dd_remap_entry){
			.addr = mq_addr(&q[x]),
			.store_off = (uint64_t)q[x].slot * DD_PAGE_SIZE,
			.npages = (uint32_t)k & 0xffffff,
			.flags = DD_REMAP_INSPAN | DD_REMAP_ANON |
				 (q[x].agent_cmp ? DD_REMAP_VERIFY : 0),
			.domain = q[x].r->dom->id,
		};
		w->first[ne] = x;
		w->len[ne++] = k;
	}
	return ne;
}

/*
 * The verified entries of q coalesced into runs, remaps and zaps, in w->e
 * (first/len: their queue entries), announced to the fault thread as
 * expected. Returns how many; *nzap of them zaps.
 */
static uint32_t remap_entries(struct dd_worker *w, struct dd_sclient *c, struct merge *q,
			      size_t n, uint32_t *nzap)
{
	struct dd_remap_entry *e = w->e;
	uint32_t ne = 0;

	*nzap = 0;
	for (size_t i = 0, k; i < n; i += k) {
		bool z;

		if (q[i].span) {
			k = span_end(q, n, i) - i;
			ne = span_entries(w, c, q, i, i + k, ne);
			continue;
		}
		k = run_len(q, n, i, true);
		if (q[i].res)
			continue;
		z = q[i].slot < 0;
		if (!z && !vma_room(c)) {
			for (size_t j = i; j < i + k; j++)
				q[j].res = -ENOSPC; /* keep the client under max_map_count */
			continue;
		}
		if (!z)
			__atomic_fetch_add(&c->vmas, 2, __ATOMIC_RELAXED); /* splits one VMA in three */
		e[ne] = (struct dd_remap_entry){
			.addr = mq_addr(&q[i]),
			.store_off = z ? 0 : (uint64_t)q[i].slot * DD_PAGE_SIZE,
			.npages = (uint32_t)k & 0xffffff, /* k <= MAX_MERGE */
			.flags = (z ? DD_REMAP_ZAP : run_anon(&q[i], k) ? DD_REMAP_ANON : 0) |
				 (q[i].agent_cmp ? DD_REMAP_VERIFY : 0),
			.domain = z ? 0 : q[i].r->dom->id,
		};
		*nzap += z;
		w->first[ne] = i;
		w->len[ne++] = k;
	}
	if (!ne || !c->uffd_events)
		return ne;
	pthread_mutex_lock(&c->fault_lock);
	for (uint32_t i = 0; i < ne; i++)
		add_range(&c->expect, &c->nexpect, e[i].addr,
			  e[i].addr + (uint64_t)e[i].npages * DD_PAGE_SIZE);
	pthread_mutex_unlock(&c->fault_lock);
	return ne;
}

/* The agent's answer rc (res[] per entry) to the ne entries built from the
 * n entries of q. */
static void remap_results(struct dd_worker *w, struct dd_sclient *c, struct merge *q, size_t n,
			  uint32_t ne, uint32_t nzap, int rc)
{
	struct dd_scanner *s = w->s;
	uint32_t nspan = 0;

	for (uint32_t i = 0; i < ne; i++) {
		size_t f = w->first[i];
		int v = rc == -ETIMEDOUT ? 0 : rc < 0 ? rc : w->res[i];

		if (!(w->e[i].flags & DD_REMAP_SPAN))
			continue;
		nspan++;
		q[f].span_res = v;
		for (size_t x = f, end = span_end(q, n, f); x < end && !v; x++)
			q[x].span_ok = true;
	}
	atomic_fetch_add(&s->zap_runs, nzap);
	atomic_fetch_add(&s->remap_runs, ne - nzap - nspan);
	atomic_fetch_add(&s->span_maps, nspan);
	if (rc == -ETIMEDOUT) {
		c->agent_doubt = true;
		atomic_fetch_add(&s->agent_timeouts, 1);
	} else if (rc == 0)
		c->agent_doubt = false;
	for (uint32_t i = 0; i < ne; i++) {
		/* No answer: the agent may or may not have acted, or act later.
		 * Count it as merged (and keep the share, see agent_doubt); once
		 * the agent has answered again, the scan sees the truth in
		 * pagemap and uncounts a page that was not. */
		int v = rc == -ETIMEDOUT ? 0 : rc < 0 ? rc : w->res[i];

		for (size_t j = w->first[i]; j < w->first[i] + w->len[i]; j++)
			q[j].res = v;
	}
}

/*
 * Send the verified entries of q to the agent in one request. If the agent
 * takes it without an answer yet, returns true: remap_collect() finishes the
 * batch. Else the batch is answered (or failed) on return.
 */
static bool replace(struct dd_worker *w, struct dd_sclient *c, struct merge *q, size_t n)
{
	struct dd_scanner *s = w->s;
	uint32_t nzap, ne = remap_entries(w, c, q, n, &nzap);
	uint64_t t0;
	int rc = -ENOTCONN;

	if (!ne)
		return false;
	if (c->agent && s->ops.batch_send && s->ops.batch_recv &&
	    s->ops.batch_send(c->agent, w->e, ne) == 0) {
		w->out_ne = ne;
		w->out_nzap = nzap;
		return true;
	}
	if (c->agent) {
		t0 = now_ns();
		rc = s->ops.batch(c->agent, w->e, ne, w->res);
		atomic_fetch_add(&s->merge_agent_ns, now_ns() - t0);
	}
	remap_results(w, c, q, n, ne, nzap, rc);
	return false;
}

/*
 * The unstable partner of a fresh slot: queued on its client to merge with
 * the slot if the slot was filled; else the slot goes back unwritten (with
 * both pending merges) and the partner waits in its record for the next pass.
 */
static void settle_partner(struct merge *m)
{
	if (m->filled)
		pend_add(m->pr->c, m->pr, m->pidx, (uint32_t)m->slot);
	else /* under a span the agent mapped, it becomes a hole */
		dd_store_unreserve(m->r->dom->store, (uint32_t)m->slot, m->span_ok);
	region_put(m->pr);
	m->pr = NULL;
}

/* Record the outcome, re-arm remapped ranges, unfreeze and wake (c->lock). */
static void settle(struct dd_scanner *s, struct dd_sclient *c, struct merge *q, size_t n)
{
	/* A span the agent mapped covers its holes from now on (the GC keeps
	 * them); one it did not leaves them to the GC. */
	for (size_t i = 0; i < n; i++)
		if (q[i].held)
			dd_store_release_holes(q[i].r->dom->store, (uint32_t)q[i].slot, q[i].span);
	for (size_t i = 0, k; i < n; i += k) {
		struct uffdio_range rg;

		k = run_len(q, n, i, true);
		rg.start = mq_addr(&q[i]);
		rg.len = k * DD_PAGE_SIZE;
		for (size_t j = i; j < i + k; j++) {
			struct dd_page *p = &q[j].r->pages[q[j].idx];

			if (q[j].fresh)
				settle_partner(&q[j]);
			if (q[j].res) {
				if (q[j].slot >= 0 && !(q[j].fresh && !q[j].filled))
					dd_store_pend_done(q[j].r->dom->store, (uint32_t)q[j].slot,
							   false);
				atomic_fetch_add(&s->merge_failed, 1);
				continue;
			}
			atomic_fetch_add(&s->merges, 1);
			if (q[j].slot < 0) {
				p->state = PG_ZERO;
				q[j].r->zero++;
				atomic_fetch_add(&s->zero_pages, 1);
				continue;
			}
			dd_store_pend_done(q[j].r->dom->store, (uint32_t)q[j].slot, true);
			p->state = PG_MERGED;
			p->slot = (uint32_t)q[j].slot;
			p->age = 0;
			p->flags |= PGF_REMAPPED;
			q[j].r->merged++;
		}
		if (q[i].res) {
			wp_off(c->uffd, rg.start, rg.len);
			continue;
		}
		/* The new VMA is left unregistered: unregistered neighbours with
		 * consecutive store offsets merge into one VMA, and a register ioctl
		 * per run costs as much as the remap. It is registered again when one
		 * of its pages breaks COW (rearm()), before it is frozen next time. */
		ioctl(c->uffd, UFFDIO_WAKE, &rg);
	}
	/* A span's gap pages were frozen with it: now in its VMA (copies),
	 * or still where they were and write-protected. */
	for (size_t i = 0; i < n; i++) {
		struct uffdio_range rg = { mq_addr(&q[i]), (uint64_t)q[i].span * DD_PAGE_SIZE };

		if (!q[i].span)
			continue;
		if (q[i].span_res) {
			wp_off(c->uffd, rg.start, rg.len);
			continue;
		}
		for (uint32_t x = q[i].idx; x < q[i].idx + q[i].span; x++)
			q[i].r->pages[x].flags |= PGF_REMAPPED;
		ioctl(c->uffd, UFFDIO_WAKE, &rg);
	}
	/* The unmap events of our own remaps were all raised by now (the agent's
	 * mmap waits until its event is read); once the fault thread is done
	 * with them, what is left expected never comes: a remap over a VMA we
	 * left unregistered raises none. Forget those, or an application's own
	 * mmap over the same range later would pass for ours. A uffd that
	 * raises no such events (libdedup's) needs no wait for the fault
	 * thread, a wake-up of another thread per batch. */
	if (c->uffd_events)
		fault_sync(s);
	pthread_mutex_lock(&c->fault_lock);
	c->ninflight = 0;
	c->nexpect = 0;
	pthread_mutex_unlock(&c->fault_lock);
	for (size_t i = 0; i < n; i++)
		if (q[i].ref)
			region_put(q[i].r);
}

/* Register the region's remapped VMAs again, so that pages which broke COW
 * there can be frozen. One ioctl over the whole region: the kernel skips
 * VMAs that are registered already and merges what it can. */
static void rearm(struct dd_sclient *c, struct dd_region *r)
{
	struct uffdio_register reg = {
		.range = { .start = r->start, .len = (uint64_t)r->npages * DD_PAGE_SIZE },
		.mode = UFFDIO_REGISTER_MODE_WP,
	};

	r->rearm = false;
	if (ioctl(c->uffd, UFFDIO_REGISTER, &reg) < 0)
		r->rearm = errno == EAGAIN; /* else: partly unmapped; freeze will fail */
}

static void settle_timed(struct dd_worker *w, struct dd_sclient *c, struct merge *q, size_t n)
{
	uint64_t t0 = now_ns();

	settle(w->s, c, q, n);
	atomic_fetch_add(&w->s->merge_settle_ns, now_ns() - t0);
	atomic_fetch_add(&w->s->merge_batches, 1);
}

/* Finish the merge batch whose REMAP is out, if any: the agent's answer
 * (the wait counted in merge_agent_ns), then settle(). */
static void remap_collect(struct dd_worker *w)
{
	struct dd_scanner *s = w->s;
	struct dd_sclient *c = w->out_rc;
	uint64_t t0;
	int rc;

	if (!c)
		return;
	w->out_rc = NULL;
	t0 = now_ns();
	rc = s->ops.batch_recv(c->agent, w->out_ne, w->res);
	atomic_fetch_add(&s->merge_agent_ns, now_ns() - t0);
	remap_results(w, c, w->mq_out, w->nout, w->out_ne, w->out_nzap, rc);
	settle_timed(w, c, w->mq_out, w->nout);
	w->nout = 0;
}

/*
 * Merge everything queued for client c (c->lock held). The agent's REMAP is
 * left out while the scan goes on (the agent remaps on the other CPU while
 * this thread looks the next pages up); the batch before is settled first.
 */
static void flush(struct dd_worker *w, struct dd_sclient *c)
{
	size_t n = w->nmq;
	uint64_t t[3];

	if (!n)
		return;
	remap_collect(w);
	/* Count the client's VMAs afresh (at most every VMA_RECOUNT_MS) rather
	 * than trust the count of the last pass: the application may have made
	 * thousands since, and its own mmap() must never fail because of us.
	 * Reading maps costs ~0.5 ms per 10,000 VMAs. */
	if (now_ms() - c->vmas_counted_ms >= VMA_RECOUNT_MS) {
		long v = dd_maps_count(c->maps_path);

		if (v >= 0)
			__atomic_store_n(&c->vmas, v, __ATOMIC_RELAXED);
		c->vmas_counted_ms = now_ms();
	}
	for (size_t i = 0; i < n; i++)
		if (w->mq[i].r->rearm && !w->mq[i].r->dead)
			rearm(c, w->mq[i].r);
	qsort(w->mq, n, sizeof(w->mq[0]), cmp_merge);
	plan_spans(w->s, c, w->mq, n);
	c->runs_batch = 0;
	/* The agent hashed the next batch meanwhile: take its answer before the
	 * freeze (a freeze while the client's agent runs on the other CPU costs
	 * twice as much: the TLB flush interrupts it). */
	hash_drain(w, c);
	t[0] = now_ns();
	freeze(c, w->mq, n);
	t[1] = now_ns();
	verify(w, c, w->mq, n,
	       c->agent && w->s->ops.agent_verifies && w->s->ops.agent_verifies(c->agent));
	fill(w->mq, n);
	t[2] = now_ns();
	atomic_fetch_add(&w->s->merge_freeze_ns, t[1] - t[0]);
	atomic_fetch_add(&w->s->merge_verify_ns, t[2] - t[1]);
	if (replace(w, c, w->mq, n)) {
		struct merge *q = w->mq_out;

		w->mq_out = w->mq;
		w->nout = n;
		w->out_rc = c;
		w->mq = q;
	} else {
		settle_timed(w, c, w->mq, n);
	}
	w->nmq = 0;
}

static size_t merge_cap(struct dd_scanner *s)
{
	uint32_t b = KNOB(s, merge_batch_pages);

	return b && b < MAX_MERGE ? b : MAX_MERGE;
}

/* Scan pages [idx0, idx0+n) of r (c->lock and rcu read lock held). */
#ifndef MADV_COLD
#define MADV_COLD 20
#endif

/*
 * Pages of [base, base + n pages) that a transparent huge page holds: marked
 * in skip[] when THPs are left alone (knob thp_split off: ESX keeps large
 * pages until memory is short). With thp_split each THP met is split first,
 * by process_madvise(MADV_COLD) of one of its 4 KiB pages: advice over part
 * of a huge page makes the kernel split it for real (split_folio), so that
 * the pages merged later are freed at once. Unmapping 4 KiB of an unsplit THP
 * would only queue it for a deferred split under memory pressure, and the
 * host would get nothing back. Returns pages skipped.
 */
static uint32_t thp_pages(struct dd_scanner *s, struct dd_sclient *c, uint64_t base, uint32_t n,
			  bool *skip)
{
	struct dd_page_region v[32];
	struct dd_pm_scan_arg arg = {
		.size = sizeof(arg), .start = base, .end = base + (uint64_t)n * DD_PAGE_SIZE,
		.vec = (uintptr_t)v, .vec_len = 32, .category_mask = DD_PAGE_IS_HUGE,
		.return_mask = DD_PAGE_IS_HUGE,
	};
	uint32_t skipped = 0;
	long got;

	if (atomic_load(&s->no_pagemap_scan))
		return 0;
	got = ioctl(c->pagemap, DD_PAGEMAP_SCAN, &arg);
	if (got < 0) {
		if (errno == ENOTTY || errno == EINVAL)
			atomic_store(&s->no_pagemap_scan, true);
		return 0;
	}
	for (long k = 0; k < got; k++) {
		uint64_t a = v[k].start, b = v[k].end;

		if (KNOB(s, thp_split) && c->pidfd >= 0) {
			for (uint64_t t = a & ~(THP_BYTES - 1); t < b; t += THP_BYTES) {
				struct iovec iov = { (void *)(uintptr_t)(t > a ? t : a), DD_PAGE_SIZE };

				if (syscall(SYS_process_madvise, c->pidfd, &iov, 1, MADV_COLD, 0) > 0)
					atomic_fetch_add(&s->thp_split, 1);
			}
			continue;
		}
		for (uint64_t p = a; p < b; p += DD_PAGE_SIZE) {
			skip[(p - base) / DD_PAGE_SIZE] = true;
			skipped++;
		}
	}
	return skipped;
}

/* /proc/kpageflags bits of a page in a large folio (THP, mTHP) */
#define KPF_LARGE ((1ULL << 15) | (1ULL << 16) | (1ULL << 22)) /* head, tail, thp */

/*
 * With thp_split: large folios that are mapped by page table entries, not by
 * a PMD, so that PAGEMAP_SCAN does not call them huge: a THP whose PMD was
 * split by a write-protect or mprotect of part of it (our activity sampling,
 * the application), or a multi-size THP. Merging pages out of such a folio
 * would leave it partly mapped: its memory comes back only when the kernel's
 * deferred-split shrinker runs, under memory pressure. The pages of a large
 * folio have consecutive frame numbers, so only the first page of each run
 * of consecutive frames is looked up in /proc/kpageflags, and only runs
 * with a page seen for the first time (registered, faulted in again); one
 * MADV_COLD of a 4 KiB page of each large folio splits it (as in
 * thp_pages()).
 */
static void split_pte_folios(struct dd_scanner *s, struct dd_sclient *c, uint64_t base,
			     uint32_t n, const uint64_t *pm, const struct dd_page *pages)
{
	struct iovec iov[16];
	unsigned int niov = 0;

	if (s->kpageflags < 0 || c->pidfd < 0)
		return;
	for (uint32_t i = 0; i + 1 < n; i++) {
		uint64_t pfn = pm[i] & DD_PM_PFN_MASK, fl = 0;
		uint32_t j = i;

		if ((pm[i] & (DD_PM_PRESENT | DD_PM_FILE)) != DD_PM_PRESENT || !pfn)
			continue;
		while (j + 1 < n && (pm[j + 1] & (DD_PM_PRESENT | DD_PM_FILE)) == DD_PM_PRESENT &&
		       (pm[j + 1] & DD_PM_PFN_MASK) == (pm[j] & DD_PM_PFN_MASK) + 1)
			j++;
		if (j == i)
			continue;
		/* Pages seen before were looked at then (or are merged, zero,
		 * candidates): only runs with a page seen for the first time. */
		bool fresh = false;

		for (uint32_t k = i; k <= j && !fresh; k++)
			fresh = pages[k].state == PG_NEW;
		if (!fresh) {
			i = j;
			continue;
		}
		if (pread(s->kpageflags, &fl, sizeof(fl), (off_t)(pfn * sizeof(fl))) ==
			    (ssize_t)sizeof(fl) && (fl & KPF_LARGE)) {
			iov[niov++] = (struct iovec){ (void *)(uintptr_t)(base + (uint64_t)i * DD_PAGE_SIZE),
						      DD_PAGE_SIZE };
			if (niov == sizeof(iov) / sizeof(iov[0])) {
				if (syscall(SYS_process_madvise, c->pidfd, iov, niov, MADV_COLD, 0) > 0)
					atomic_fetch_add(&s->thp_split, niov);
				niov = 0;
			}
		}
		i = j;
	}
	if (niov && syscall(SYS_process_madvise, c->pidfd, iov, niov, MADV_COLD, 0) > 0)
		atomic_fetch_add(&s->thp_split, niov);
}

/*
 * Copy pages [k0, k1) of the batch whose need[] is set into w->buf (page i at
 * (i - k0)), one process_vm_readv for all of them; shared anonymous pages one
 * by one through /proc/PID/mem (see read_pages()). Pages that could not be
 * read (unmapped under us) get need[] cleared. Returns 0 or -errno.
 */
static int copy_chunk(struct dd_worker *w, struct dd_sclient *c, uint64_t base,
		      const uint64_t *pm, bool *need, uint32_t k0, uint32_t k1)
{
	struct iovec lv[HASH_CHUNK], rv[HASH_CHUNK];
	size_t niov = 0;
	ssize_t got;

	for (uint32_t i = k0; i < k1; i++) {
		uint8_t *dst = w->buf + (size_t)(i - k0) * DD_PAGE_SIZE;

		if (!need[i])
			continue;
		if (pm_shared_anon(pm[i])) { /* never pin it */
			if (read_mem(c, base + (uint64_t)i * DD_PAGE_SIZE, dst, 1) < 0)
				need[i] = false;
			continue;
		}
		if (niov && (uint8_t *)lv[niov - 1].iov_base + lv[niov - 1].iov_len == dst) {
			lv[niov - 1].iov_len += DD_PAGE_SIZE;
			rv[niov - 1].iov_len += DD_PAGE_SIZE;
		} else {
			lv[niov] = (struct iovec){ dst, DD_PAGE_SIZE };
			rv[niov++] = (struct iovec){ (void *)(uintptr_t)(base + i * DD_PAGE_SIZE),
						     DD_PAGE_SIZE };
		}
	}
	got = niov ? process_vm_readv(c->pid, lv, niov, rv, niov, 0) : 0;
	if (got < 0)
		return -errno;
	/* Pages the readv did not reach (unmapped under us) are skipped. */
	for (size_t v = 0, done = (size_t)got; v < niov; v++) {
		size_t take = done < lv[v].iov_len ? done : lv[v].iov_len;
		size_t first = k0 + (size_t)((uint8_t *)lv[v].iov_base - w->buf) / DD_PAGE_SIZE;

		for (size_t j = take / DD_PAGE_SIZE; j < lv[v].iov_len / DD_PAGE_SIZE; j++)
			need[first + j] = false;
		done -= take;
	}
	return 0;
}

/*
 * What one scanned page's checksum means for it (c->lock, rcu read lock):
 * pg is its content, or NULL when the agent hashed it in place.
 */
static void scan_page(struct dd_worker *w, struct dd_sclient *c, struct dd_region *r,
		      uint32_t idx, uint64_t csum, bool zero, const void *pg, uint32_t pass,
		      uint64_t *vol)
{
	struct dd_scanner *s = w->s;
	struct dd_page *p = &r->pages[idx];

	if (p->state == PG_COLD) {
		if (p->csum == PG_CSUM(csum)) {
			if ((pass + idx) % COLD_TURN || !vma_room(c))
				return;
			/* Its turn: look it up, out of the tables unless it matches. */
			atomic_fetch_sub(&s->cold_count, 1);
			p->state = PG_CHECKED;
			match_page(w, r, idx, csum, pg, false);
			goto out;
		}
		atomic_fetch_sub(&s->cold_count, 1); /* changed: wait for it to settle */
		(*vol)++;
		p->csum = PG_CSUM(csum);
		p->state = PG_CHECKED;
		return;
	}
	if (p->state == PG_UNSTABLE) {
		struct dd_unstable *u = unstable_of(s, r, idx);

		if (u && p->csum == PG_CSUM(csum)) {
			/* Waiting in the table for a partner; after COLD_TURN
			 * passes unmatched it leaves (see struct dd_page). */
			if (++p->age > COLD_TURN && unstable_del(s, u)) {
				p->state = PG_COLD;
				atomic_fetch_add(&s->cold_count, 1);
			}
			return;
		}
		if (u) { /* changed: out of the table, wait for it to settle */
			unstable_del(s, u);
			(*vol)++;
			p->csum = PG_CSUM(csum);
			p->state = PG_CHECKED;
			return;
		}
		p->state = PG_CHECKED; /* a partner took it; its merge failed */
	}
	if (p->state == PG_ZERO) {
		if (zero)
			return;
		atomic_fetch_sub(&s->zero_pages, 1);
		r->zero--;
		p->state = PG_NEW;
		p->flags |= PGF_VOLATILE;
	}
	/* A page is a candidate the first time it is seen, unless it was
	 * written after a merge before (PGF_VOLATILE): then, as in KSM, only
	 * once its checksum held still for a pass. Candidates are only a
	 * filter: every merge is byte-compared under freeze. */
	if ((p->state == PG_CHECKED && p->csum == PG_CSUM(csum)) ||
	    (p->state == PG_NEW && !(p->flags & PGF_VOLATILE))) {
		p->csum = PG_CSUM(csum);
		if (zero)
			mq_add(w, r, idx, -1); /* a zap splits no VMA */
		else if (vma_room(c))
			match_page(w, r, idx, csum, pg, true);
		else
			p->state = PG_CHECKED; /* over the VMA budget: not now */
	} else {
		if (p->state == PG_CHECKED)
			(*vol)++;
		p->csum = PG_CSUM(csum);
		p->state = PG_CHECKED;
	}
out:
	if (w->nmq + 2 >= merge_cap(s))
		flush(w, c);
}

/*
 * Ask the client's agent to checksum the needed pages of batch b in place,
 * without waiting (batch_recv() takes the answer). b->hashed stays false if
 * the pages must be copied instead. 0, or -errno if the request failed.
 */
static int hash_send(struct dd_worker *w, struct dd_sclient *c, struct sbatch *b)
{
	struct dd_scanner *s = w->s;
	uint64_t base = b->r->start + (uint64_t)b->idx0 * DD_PAGE_SIZE;
	int r;

	b->nr = b->np = 0;
	if (!s->ops.hash_send || !c->agent || c->copy_only || !KNOB(s, agent_hash))
		return 0;
	for (uint32_t i = 0; i < b->n; i++) {
		struct dd_hash_range *h = &b->hr[b->nr - (b->nr > 0)];

		if (!b->need[i])
			continue;
		if (b->nr && h->addr + (uint64_t)h->npages * DD_PAGE_SIZE ==
				     base + (uint64_t)i * DD_PAGE_SIZE)
			h->npages++;
		else
			b->hr[b->nr++] = (struct dd_hash_range){ base + (uint64_t)i * DD_PAGE_SIZE,
								 1, 0 };
		b->np++;
	}
	b->hashed = true;
	if (!b->np)
		return 0; /* nothing to ask */
	r = s->ops.hash_send(c->agent, b->hr, b->nr, b->np);
	if (r == -EOPNOTSUPP) {
		c->copy_only = true;
		b->hashed = false;
		return 0;
	}
	if (r < 0)
		return r;
	w->out = b;
	w->out_c = c;
	return 0;
}

/*
 * Take the agent's answer for b if it is still out: checksums spread back
 * over the batch (need[] cleared for pages the agent could not read). Else
 * b->err, or b->hashed cleared if the pages must be copied after all.
 */
static void batch_recv(struct dd_worker *w, struct dd_sclient *c, struct sbatch *b)
{
	struct dd_scanner *s = w->s;
	uint64_t cpu = 0, t0;
	uint32_t bad = 0;
	int r;

	if (w->out != b)
		return;
	if (w->out_rc == c)
		remap_collect(w); /* sent before this HASH: answered first */
	w->out = NULL;
	w->out_c = NULL;
	t0 = now_ns();
	r = s->ops.hash_recv(c->agent, b->np, b->hres, &cpu);
	atomic_fetch_add(&s->agent_hash_wait_ns, now_ns() - t0);
	if (r == -EOPNOTSUPP) {
		c->copy_only = true;
		b->hashed = false;
		return;
	}
	if (r < 0) {
		if (r == -ETIMEDOUT)
			atomic_fetch_add(&s->agent_timeouts, 1);
		b->err = r;
		return;
	}
	c->agent_doubt = false; /* it answered: any earlier request is done */
	atomic_fetch_add(&s->agent_hash_pages, b->np);
	atomic_fetch_add(&s->agent_cpu_ns, cpu);
	/* Results in page order: spread them back over the batch, from the end
	 * (result k goes to page i >= k, which holds no result still unread). */
	for (uint32_t i = b->n, k = b->np; i-- > 0;)
		if (b->need[i]) {
			b->hres[i] = b->hres[--k];
			b->need[i] = b->hres[i].flags & DD_HASH_OK;
			bad += !b->need[i];
		}
	if (bad)
		atomic_fetch_add(&s->agent_unreadable, bad);
}

/* Before another request to c's agent: take the answer still out, if any. */
static void hash_drain(struct dd_worker *w, struct dd_sclient *c)
{
	if (w->out && w->out_c == c)
		batch_recv(w, c, w->out);
}

/*
 * First half of a batch: one pagemap read for its pages, the pages to read
 * chosen (present, not in a THP, not merged and unchanged), and the agent
 * asked for their checksums. 0, or -errno (the region is gone).
 */
static int batch_prep(struct dd_worker *w, struct dd_sclient *c, struct sbatch *b)
{
	struct dd_scanner *s = w->s;
	struct dd_region *r = b->r;
	uint32_t n = b->n, idx0 = b->idx0, nhuge;
	uint64_t base = r->start + (uint64_t)idx0 * DD_PAGE_SIZE, *pm = b->pm;
	bool *need = b->need, *huge = b->huge;

	b->hashed = false;
	b->err = 0;
	memset(huge, 0, n * sizeof(huge[0]));
	nhuge = thp_pages(s, c, base, n, huge);
	if (nhuge)
		atomic_fetch_add(&s->pass_thp_skipped, nhuge);
	if (pread(c->pagemap, pm, n * sizeof(pm[0]), (off_t)(base / DD_PAGE_SIZE * 8)) !=
	    (ssize_t)(n * sizeof(pm[0])))
		return -errno ? -errno : -EIO;
	if (KNOB(s, thp_split))
		split_pte_folios(s, c, base, n, pm, &r->pages[idx0]);
	for (uint32_t i = 0; i < n; i++) {
		struct dd_page *p = &r->pages[idx0 + i];

		need[i] = false;
		if (p->state == PG_MERGED && !(pm[i] & DD_PM_PRESENT) && p->age) {
			/* Mapped before, not now: unmapped, or only dropped
			 * (reconcile() tells). A merged page is not mapped
			 * until first touched: that alone means nothing. */
			c->reconcile_due = true;
			p->age = 0;
		}
		if (p->state == PG_GONE || !(pm[i] & DD_PM_PRESENT) || huge[i])
			continue; /* never fault a page in by scanning it */
		if (p->state == PG_MERGED) {
			if (pm[i] & DD_PM_FILE) {
				p->age = 1;
				continue; /* still maps the store page */
			}
			if (c->agent_doubt)
				continue; /* maybe not remapped yet: keep the share */
			dd_store_unshare(r->dom->store, p->slot); /* written: COW break */
			atomic_fetch_add(&s->cow_breaks, 1);
			r->rearm = true;
			r->merged--;
			p->state = PG_NEW;
			p->flags |= PGF_VOLATILE;
		}
		need[i] = true;
	}
	return hash_send(w, c, b);
}

/*
 * Second half: each page read is checksummed (by the agent, or here from a
 * copy in chunks of HASH_CHUNK pages, so that the copy lands in, and the
 * hash reads from, the CPU's L2 cache) and goes through scan_page().
 */
static int batch_work(struct dd_worker *w, struct dd_sclient *c, struct sbatch *b)
{
	struct dd_scanner *s = w->s;
	struct dd_region *r = b->r;
	uint32_t n = b->n, idx0 = b->idx0;
	uint64_t base = r->start + (uint64_t)idx0 * DD_PAGE_SIZE, vol = 0, scanned = 0;
	uint32_t pass = (uint32_t)atomic_load(&s->full_scans);
	bool zp = KNOB(s, zero_pages), *need = b->need;
	int err;

	for (uint32_t i = 0; i < n; i++)
		if (need[i] && r->pages[idx0 + i].state == PG_UNSTABLE &&
		    r->pages[idx0 + i].slot < __atomic_load_n(&s->upool_next, __ATOMIC_RELAXED))
			__builtin_prefetch(unode(s, r->pages[idx0 + i].slot)); /* unstable_of() */
	if (b->hashed) {
		for (uint32_t i = 0; i < n; i++) {
			if (!need[i])
				continue;
			scanned++;
			scan_page(w, c, r, idx0 + i, b->hres[i].csum,
				  zp && !(r->pages[idx0 + i].flags & PGF_REMAPPED) &&
					  (b->hres[i].flags & DD_HASH_ZERO),
				  NULL, pass, &vol);
		}
		goto out;
	}
	for (uint32_t k0 = 0; k0 < n; k0 += HASH_CHUNK) {
		uint32_t k1 = n - k0 < HASH_CHUNK ? n : k0 + HASH_CHUNK;

		if ((err = copy_chunk(w, c, base, b->pm, need, k0, k1)) < 0)
			return err;
		for (uint32_t i = k0; i < k1; i++) {
			const uint8_t *pg = w->buf + (size_t)(i - k0) * DD_PAGE_SIZE;

			if (!need[i])
				continue;
			scanned++;
			scan_page(w, c, r, idx0 + i, dd_page_hash(pg),
				  zp && !(r->pages[idx0 + i].flags & PGF_REMAPPED) &&
					  dd_page_is_zero(pg),
				  pg, pass, &vol);
		}
	}
out:
	atomic_fetch_add(&s->pages_scanned, scanned);
	atomic_fetch_add(&s->pass_volatile, vol);
	return 0;
}

static struct dd_sclient *next_client(struct dd_scanner *s, uint64_t from_id)
{
	struct dd_sclient *c;

	pthread_mutex_lock(&s->lock);
	for (c = s->clients; c && c->id < from_id; c = c->next)
		;
	if (c)
		atomic_fetch_add(&c->refs, 1);
	pthread_mutex_unlock(&s->lock);
	return c;
}

/* Merge what other scans queued on clients (pages of unstable matches). */
static void run_pending(struct dd_worker *w)
{
	struct dd_scanner *s = w->s;
	uint64_t id = 0;
	struct dd_sclient *c;

	while ((c = next_client(s, id))) {
		id = c->id + 1;
		if (!__atomic_load_n(&c->npend, __ATOMIC_RELAXED)) {
			client_put(c);
			continue;
		}
		pthread_mutex_lock(&c->lock);
		for (;;) {
			pthread_mutex_lock(&c->pend_lock);
			while (c->npend && w->nmq < merge_cap(s)) {
				struct pend *p = &c->pend[c->npend - 1];

				__atomic_store_n(&c->npend, c->npend - 1, __ATOMIC_RELAXED);

				w->mq[w->nmq++] = (struct merge){ .r = p->r, .idx = p->idx,
								  .slot = p->slot, .ref = true };
			}
			pthread_mutex_unlock(&c->pend_lock);
			if (!w->nmq)
				break;
			if (c->dead) {
				for (size_t i = 0; i < w->nmq; i++) {
					dd_store_pend_done(w->mq[i].r->dom->store,
							   (uint32_t)w->mq[i].slot, false);
					region_put(w->mq[i].r);
				}
				w->nmq = 0;
			} else {
				flush(w, c);
			}
		}
		remap_collect(w);
		pthread_mutex_unlock(&c->lock);
		client_put(c);
	}
}

/* End of a full pass (pass_lock held, no worker active). */
static void pass_end(struct dd_scanner *s)
{
	struct timespec ts;
	uint64_t t = now_ms();
	struct dd_sclient *c;
	uint64_t id = 0;

	/* Idle passes (nothing merged) stretch the pause, up to
	 * idle_backoff_ms_max: no need to rescan unchanged memory at full rate. */
	if (atomic_load(&s->merges) == s->pass_merges0)
		atomic_fetch_add(&s->idle_passes, 1);
	else
		atomic_store(&s->idle_passes, 0);
	s->pass_merges0 = atomic_load(&s->merges);
	atomic_store(&s->pages_volatile, atomic_exchange(&s->pass_volatile, 0));
	atomic_store(&s->thp_skipped, atomic_exchange(&s->pass_thp_skipped, 0));
	clock_gettime(CLOCK_MONOTONIC, &ts);
	atomic_store(&s->last_pass_ms, (uint64_t)(ts.tv_sec - s->pass_start.tv_sec) * 1000 +
					     (uint64_t)(ts.tv_nsec / 1000000) -
					     (uint64_t)(s->pass_start.tv_nsec / 1000000));
	s->pass_start = ts;
	atomic_fetch_add(&s->full_scans, 1);
	unode_flush_retired(s);
	if (t - s->last_gc_ms >= 2000) { /* GC reads every /proc/PID/maps: not too often */
		uint32_t nd;

		s->last_gc_ms = t;
		pthread_mutex_lock(&s->lock);
		nd = s->ndomains;
		pthread_mutex_unlock(&s->lock);
		rcu_read_lock();
		for (uint32_t i = 0; i < nd; i++)
			dd_store_gc(s->domains[i].store);
		rcu_read_unlock();
	}
	while ((c = next_client(s, id))) {
		long v = dd_maps_count(c->maps_path);

		id = c->id + 1;
		pthread_mutex_lock(&c->lock);
		if (v >= 0)
			__atomic_store_n(&c->vmas, v, __ATOMIC_RELAXED);
		pthread_mutex_unlock(&c->lock);
		client_put(c);
	}
}

/* Sleep ms, or until the knobs change or the scanner stops. */
static void nap(struct dd_scanner *s, uint32_t ms)
{
	struct timespec ts;

	if (!ms)
		return;
	ts = deadline_in(ms);
	pthread_mutex_lock(&s->sleep_mx);
	if (!atomic_load(&s->stop))
		pthread_cond_timedwait(&s->sleep_cv, &s->sleep_mx, &ts);
	pthread_mutex_unlock(&s->sleep_mx);
}

/* The pause between two chunks: sleep_millisecs, longer after idle passes. */
static uint32_t pause_ms(struct dd_scanner *s)
{
	uint32_t ms;

	pthread_mutex_lock(&s->lock);
	unsigned idle = atomic_load(&s->idle_passes);

	ms = s->knobs.sleep_millisecs;
	if (idle >= 2 && s->knobs.idle_backoff_ms_max) {
		uint32_t extra = 10u << (idle - 2 < 7 ? idle - 2 : 7);

		ms += extra < s->knobs.idle_backoff_ms_max ? extra : s->knobs.idle_backoff_ms_max;
	}
	pthread_mutex_unlock(&s->lock);
	return ms;
}

static void add_cpu(struct dd_scanner *s, const struct timespec *t0)
{
	struct timespec t1;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
	atomic_fetch_add(&s->scan_cpu_ns, (uint64_t)(t1.tv_sec - t0->tv_sec) * 1000000000ULL +
						  (uint64_t)t1.tv_nsec - (uint64_t)t0->tv_nsec);
}

/*
 * The next batch of the scan cursor (*r, *idx) into b, within *budget pages,
 * the cursor moved past it. NULL when the budget or the regions are done.
 */
static struct sbatch *take_batch(struct dd_worker *w, struct sbatch *b, struct dd_region **r,
				 uint32_t *idx, uint32_t *budget, uint64_t *region)
{
	uint32_t n;

	if (!*r || !*budget || atomic_load(&w->s->stop))
		return NULL;
	n = (*r)->npages - *idx;
	n = n < READ_BATCH ? n : READ_BATCH;
	n = n < *budget ? n : *budget;
	b->r = *r;
	b->idx0 = *idx;
	b->n = n;
	*idx += n;
	*budget -= n;
	if (*idx >= (*r)->npages) {
		*r = (*r)->next;
		*region = *r ? (*r)->id : UINT64_MAX;
		*idx = 0;
	}
	return b;
}

/*
 * Scan every region of client c, pages_to_scan / nworkers pages per wake-up,
 * pausing in between with the client unlocked.
 */
static void scan_client(struct dd_worker *w, struct dd_sclient *c)
{
	struct dd_scanner *s = w->s;
	uint64_t region = 0;
	uint32_t idx = 0;
	struct timespec t0;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
	for (;;) {
		struct dd_region *r;
		struct sbatch *cur;
		uint32_t budget;

		pthread_mutex_lock(&s->lock);
		budget = KNOB(s, pages_to_scan) / s->nworkers;
		pthread_mutex_unlock(&s->lock);
		budget = budget ? budget : 1;
		pthread_mutex_lock(&c->lock);
		if (c->dead) {
			pthread_mutex_unlock(&c->lock);
			break;
		}
		apply_events(s, c);
		reconcile_if_due(s, c);
		for (r = c->regions; r && r->id < region; r = r->next)
			;
		if (r && r->id != region) {
			region = r->id;
			idx = 0;
		}
		/* Batch by batch; the agent hashes the next batch while this
		 * one is worked on (its answer is taken before a merge asks
		 * anything else of the agent: hash_drain()). */
		cur = take_batch(w, &w->b[0], &r, &idx, &budget, &region);
		if (cur) {
			rcu_read_lock();
			cur->err = batch_prep(w, c, cur);
			rcu_read_unlock();
		}
		while (cur) {
			struct sbatch *next;

			dd_table_fit(s->stable); /* outside the read lock */
			dd_table_fit(s->unstable);
			rcu_read_lock();
			batch_recv(w, c, cur);
			next = take_batch(w, cur == w->b ? &w->b[1] : &w->b[0], &r, &idx, &budget,
					  &region);
			if (next && next->r == cur->r && cur->err)
				next = NULL; /* the region is gone */
			if (next)
				next->err = batch_prep(w, c, next);
			if (!cur->err)
				cur->err = batch_work(w, c, cur);
			rcu_read_unlock();
			if (cur->err && r == cur->r) { /* gone: skip the rest */
				r = r->next;
				region = r ? r->id : UINT64_MAX;
				idx = 0;
			}
			cur = next;
		}
		flush(w, c);
		remap_collect(w);
		pthread_mutex_unlock(&c->lock);
		run_pending(w);
		if (!r || atomic_load(&s->stop))
			break;
		add_cpu(s, &t0);
		nap(s, pause_ms(s));
		clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
	}
	add_cpu(s, &t0);
}

static void *scan_main(void *arg)
{
	struct dd_worker *w = arg;
	struct dd_scanner *s = w->s;

	rcu_register_thread();
	while (!atomic_load(&s->stop)) {
		struct dd_sclient *c;
		bool ended = false;
		uint64_t gen;

		pthread_mutex_lock(&s->pass_lock);
		c = next_client(s, s->claim_next);
		if (c) {
			s->claim_next = c->id + 1;
			s->active++;
			pthread_mutex_unlock(&s->pass_lock);
			w->hint = -1;
			scan_client(w, c);
			client_put(c);
			pthread_mutex_lock(&s->pass_lock);
			s->active--;
			pthread_mutex_unlock(&s->pass_lock);
			continue;
		}
		if (!s->active) { /* the last one out ends the pass */
			if (s->claim_next) {
				struct timespec t0;

				clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
				pass_end(s);
				add_cpu(s, &t0);
				ended = true;
			}
			s->claim_next = 0;
			s->pass_gen++;
			pthread_cond_broadcast(&s->pass_cv);
			pthread_mutex_unlock(&s->pass_lock);
			/* Nothing registered: nothing to scan. Else the usual pause. */
			nap(s, ended ? pause_ms(s) : 50);
			continue;
		}
		gen = s->pass_gen; /* others still scanning: wait for the next pass */
		while (gen == s->pass_gen && !atomic_load(&s->stop))
			pthread_cond_wait(&s->pass_cv, &s->pass_lock);
		pthread_mutex_unlock(&s->pass_lock);
	}
	rcu_unregister_thread();
	return NULL;
}

/* ---- life cycle and figures -------------------------------------------- */

static bool workers_ok(const struct dd_scanner *s)
{
	for (unsigned i = 0; i < s->nworkers; i++)
		if (!s->workers[i].buf || !s->workers[i].vbuf ||
		    !s->workers[i].mq || !s->workers[i].mq_out || !s->workers[i].b)
			return false;
	return true;
}

struct dd_scanner *dd_scanner_new(const struct dd_scan_knobs *k, const struct dd_scan_ops *ops)
{
	struct dd_scanner *s = calloc(1, sizeof(*s));
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };

	if (!s)
		return NULL;
	pthread_mutex_init(&s->lock, NULL);
	pthread_mutex_init(&s->upool_lock, NULL);
	s->retired = UNODE_NONE;
	s->upool = calloc(UPOOL_MAX_CHUNKS, sizeof(*s->upool));
	s->upool_live = calloc(UPOOL_MAX_CHUNKS, sizeof(*s->upool_live));
	if (!s->upool || !s->upool_live) {
		free(s->upool);
		free(s->upool_live);
		free(s);
		return NULL;
	}
	pthread_mutex_init(&s->pass_lock, NULL);
	pthread_cond_init(&s->pass_cv, NULL);
	pthread_mutex_init(&s->warm_mx, NULL);
	pthread_mutex_init(&s->sleep_mx, NULL);
	{
		pthread_condattr_t ca;

		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&s->sleep_cv, &ca);
		pthread_cond_init(&s->warm_cv, &ca);
		pthread_condattr_destroy(&ca);
	}
	s->knobs = *k;
	s->ops = *ops;
	s->kpageflags = open("/proc/kpageflags", O_RDONLY | O_CLOEXEC);
	s->fault_wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	s->fault_ep = epoll_create1(EPOLL_CLOEXEC);
	s->stable = dd_table_new(1 << 12, dd_stable_domain);
	s->unstable = dd_table_new(1 << 12, unstable_domain);
	s->nworkers = k->scan_threads;
	if (!s->nworkers) { /* default: one per two cores */
		long ncpu = sysconf(_SC_NPROCESSORS_ONLN);

		s->nworkers = ncpu > 2 ? (unsigned)(ncpu / 2) : 1;
	}
	s->workers = calloc(s->nworkers, sizeof(*s->workers));
	s->warm_dom = calloc(MAX_DOMAINS, sizeof(*s->warm_dom));
	for (unsigned i = 0; s->workers && i < s->nworkers; i++) {
		struct dd_worker *w = &s->workers[i];

		w->s = s;
		w->buf = malloc((size_t)HASH_CHUNK * DD_PAGE_SIZE);
		w->vbuf = malloc((size_t)MAX_MERGE * DD_PAGE_SIZE);
		w->mq = calloc(MAX_MERGE, sizeof(*w->mq));
		w->mq_out = calloc(MAX_MERGE, sizeof(*w->mq_out));
		w->b = calloc(2, sizeof(*w->b));
	}
	if (s->fault_wake < 0 || s->fault_ep < 0 || !s->stable ||
	    !s->unstable || !s->workers || !workers_ok(s) || !s->warm_dom ||
	    epoll_ctl(s->fault_ep, EPOLL_CTL_ADD, s->fault_wake, &ev) < 0) {
		dd_scanner_free(s);
		return NULL;
	}
	return s;
}

int dd_scanner_start(struct dd_scanner *s)
{
	unsigned i;
	int r;

	atomic_store(&s->stop, false);
	clock_gettime(CLOCK_MONOTONIC, &s->pass_start);
	r = pthread_create(&s->warm_thread, NULL, warm_main, s);
	if (r)
		return -r;
	pthread_setname_np(s->warm_thread, "dedupd-warm");
	r = pthread_create(&s->fault_thread, NULL, fault_main, s);
	if (r) {
		atomic_store(&s->stop, true);
		warm_kick(s);
		pthread_join(s->warm_thread, NULL);
		return -r;
	}
	pthread_setname_np(s->fault_thread, "dedupd-fault");
	for (i = 0; i < s->nworkers; i++) {
		char name[16];

		r = pthread_create(&s->workers[i].thread, NULL, scan_main, &s->workers[i]);
		if (r)
			break;
		snprintf(name, sizeof(name), "dedupd-scan%u", i % 100);
		pthread_setname_np(s->workers[i].thread, name);
	}
	s->running = true;
	if (r) {
		s->nworkers = i; /* stop joins the ones that started */
		dd_scanner_stop(s);
		return -r;
	}
	return 0;
}

void dd_scanner_stop(struct dd_scanner *s)
{
	uint64_t one = 1;

	if (!s->running)
		return;
	atomic_store(&s->stop, true);
	if (write(s->fault_wake, &one, sizeof(one)) < 0) {
		/* eventfd full: the thread is awake anyway */
	}
	pthread_mutex_lock(&fault_mx);
	pthread_cond_broadcast(&fault_cv);
	pthread_mutex_unlock(&fault_mx);
	pthread_mutex_lock(&s->sleep_mx);
	pthread_cond_broadcast(&s->sleep_cv);
	pthread_mutex_unlock(&s->sleep_mx);
	pthread_mutex_lock(&s->pass_lock);
	pthread_cond_broadcast(&s->pass_cv);
	pthread_mutex_unlock(&s->pass_lock);
	for (unsigned i = 0; i < s->nworkers; i++)
		pthread_join(s->workers[i].thread, NULL);
	warm_kick(s);
	pthread_join(s->warm_thread, NULL); /* it gives the warm pages back */
	/* The fault thread stops last: a scan thread may still be waiting for
	 * an agent whose remap waits for its unmap event to be read, and the
	 * writers it froze wait for the fault thread too. */
	atomic_store(&s->fault_stop, true);
	if (write(s->fault_wake, &one, sizeof(one)) < 0) {
		/* eventfd full: the thread is awake anyway */
	}
	pthread_join(s->fault_thread, NULL);
	pthread_mutex_lock(&fault_mx);
	pthread_cond_broadcast(&fault_cv);
	pthread_mutex_unlock(&fault_mx);
	s->running = false;
}

void dd_scanner_free(struct dd_scanner *s)
{
	if (!s)
		return;
	dd_scanner_stop(s);
	while (s->clients)
		dd_scanner_remove_client(s, s->clients);
	rcu_read_lock();
	if (s->unstable)
		dd_table_clear(s->unstable, unstable_release);
	for (uint32_t i = 0; i < s->ndomains; i++)
		dd_store_free(s->domains[i].store);
	rcu_read_unlock();
	synchronize_rcu(); /* the scan threads are gone: no reader sees a retired node */
	unode_put_list(s, s->retired);
	s->retired = UNODE_NONE;
	rcu_barrier();
	dd_table_free(s->stable);
	dd_table_free(s->unstable);
	if (s->fault_wake >= 0)
		close(s->fault_wake);
	if (s->fault_ep >= 0)
		close(s->fault_ep);
	if (s->kpageflags >= 0)
		close(s->kpageflags);
	for (unsigned i = 0; s->workers && i < s->nworkers; i++) {
		free(s->workers[i].buf);
		free(s->workers[i].vbuf);
		free(s->workers[i].mq);
		free(s->workers[i].mq_out);
		free(s->workers[i].b);
	}
	free(s->warm_dom);
	free(s->workers);
	for (uint32_t i = 0; i < s->upool_chunks; i++)
		munmap(s->upool[i], UPOOL_CHUNK_BYTES);
	free(s->upool);
	free(s->upool_live);
	free(s->upool_free);
	pthread_mutex_destroy(&s->upool_lock);
	pthread_mutex_destroy(&s->pass_lock);
	pthread_cond_destroy(&s->pass_cv);
	pthread_mutex_destroy(&s->sleep_mx);
	pthread_cond_destroy(&s->sleep_cv);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

void dd_scanner_set_knobs(struct dd_scanner *s, const struct dd_scan_knobs *k)
{
	pthread_mutex_lock(&s->lock);
	/* Scan threads read single knobs without the lock (KNOB()): each field
	 * is stored atomically; a reader may see old and new fields mixed for
	 * one batch, never a torn one. */
	KNOB_SET(s, pages_to_scan, k->pages_to_scan);
	KNOB_SET(s, sleep_millisecs, k->sleep_millisecs);
	KNOB_SET(s, merge_batch_pages, k->merge_batch_pages);
	KNOB_SET(s, max_vmas_per_client, k->max_vmas_per_client);
	KNOB_SET(s, share_domain, k->share_domain);
	KNOB_SET(s, zero_pages, k->zero_pages);
	KNOB_SET(s, idle_backoff_ms_max, k->idle_backoff_ms_max);
	KNOB_SET(s, thp_split, k->thp_split);
	atomic_store(&s->idle_passes, 0);
	pthread_mutex_unlock(&s->lock);
	pthread_mutex_lock(&s->sleep_mx);
	pthread_cond_broadcast(&s->sleep_cv);
	pthread_mutex_unlock(&s->sleep_mx);
}

void dd_scanner_get_knobs(struct dd_scanner *s, struct dd_scan_knobs *k)
{
	pthread_mutex_lock(&s->lock);
	*k = s->knobs;
	pthread_mutex_unlock(&s->lock);
}

/* What one VMA costs the kernel (vm_area_struct, anon_vma_chain, maple tree
 * node share). DESIGN.md §4 estimated ~0.5 KiB; `make bench` W3 (130,808 VMAs
 * added) showed bytes_saved_net 31.6 MiB under the kernel's own accounting at
 * 512 B, i.e. the real cost is ~256 B per VMA on this kernel. */
#define VMA_SLAB_BYTES 256

void dd_scanner_stats(struct dd_scanner *s, struct dd_scan_stats *o)
{
	struct dd_store_stats ss;

	memset(o, 0, sizeof(*o));
	pthread_mutex_lock(&s->lock);
	for (uint32_t i = 0; i < s->ndomains; i++) {
		dd_store_stats(s->domains[i].store, &ss);
		o->pages_shared += ss.slots_shared;
		o->pages_sharing += ss.sharers - ss.slots_shared;
		o->store_pages += ss.slots_used;
		o->store_freed += ss.freed;
		o->store_warm += ss.warm;
		o->store_holes += ss.holes;
		o->meta_bytes += ss.meta_bytes;
	}
	for (struct dd_sclient *c = s->clients; c; c = c->next) {
		o->clients++;
		long v = __atomic_load_n(&c->vmas, __ATOMIC_RELAXED);

		o->vmas += (uint64_t)v;
		if (v > c->vmas_base)
			o->vmas_added += (uint64_t)(v - c->vmas_base);
		o->meta_bytes += sizeof(*c);
	}
	pthread_mutex_unlock(&s->lock);
	o->pages_registered = atomic_load(&s->registered);
	o->regions = atomic_load(&s->nregions);
	o->meta_bytes += o->regions * sizeof(struct dd_region);
	o->pages_scanned = atomic_load(&s->pages_scanned);
	o->pages_unshared = atomic_load(&s->unstable_count) + atomic_load(&s->cold_count);
	o->unstable_nodes = atomic_load(&s->unstable_count);
	o->pages_volatile = atomic_load(&s->pages_volatile);
	o->zero_pages = atomic_load(&s->zero_pages);
	o->full_scans = atomic_load(&s->full_scans);
	o->merges = atomic_load(&s->merges);
	o->merge_failed = atomic_load(&s->merge_failed);
	o->cow_breaks = atomic_load(&s->cow_breaks);
	o->pages_unmapped = atomic_load(&s->pages_unmapped);
	o->pages_adopted = atomic_load(&s->pages_adopted);
	o->thp_split = atomic_load(&s->thp_split);
	o->thp_skipped = atomic_load(&s->thp_skipped);
	o->faults = atomic_load(&s->faults);
	o->scan_cpu_ns = atomic_load(&s->scan_cpu_ns);
	o->agent_hash_pages = atomic_load(&s->agent_hash_pages);
	o->agent_cpu_ns = atomic_load(&s->agent_cpu_ns);
	o->agent_unreadable = atomic_load(&s->agent_unreadable);
	o->agent_timeouts = atomic_load(&s->agent_timeouts);
	o->agent_hash_wait_ns = atomic_load(&s->agent_hash_wait_ns);
	o->merge_batches = atomic_load(&s->merge_batches);
	o->remap_runs = atomic_load(&s->remap_runs);
	o->zap_runs = atomic_load(&s->zap_runs);
	o->remap_spans = atomic_load(&s->span_maps);
	o->merge_freeze_ns = atomic_load(&s->merge_freeze_ns);
	o->merge_verify_ns = atomic_load(&s->merge_verify_ns);
	o->merge_agent_ns = atomic_load(&s->merge_agent_ns);
	o->merge_settle_ns = atomic_load(&s->merge_settle_ns);
	o->last_pass_ms = atomic_load(&s->last_pass_ms);
	o->meta_bytes += o->pages_registered * sizeof(struct dd_page) +
			 o->unstable_nodes * sizeof(struct dd_unstable) +
			 dd_table_bucket_bytes(s->stable) + dd_table_bucket_bytes(s->unstable);
	/* Charge what the daemon really holds: its resident anonymous memory
	 * (records, tables, buffers, allocator slack) when that exceeds the
	 * bookkeeping estimate; store pages without sharers, and warm ones; VMA
	 * slab. */
	o->daemon_anon_bytes = dd_self_rss_anon_bytes();
	o->bytes_saved_net = (int64_t)((o->pages_sharing + o->zero_pages) * DD_PAGE_SIZE) -
			     (int64_t)(o->daemon_anon_bytes > o->meta_bytes ? o->daemon_anon_bytes
									: o->meta_bytes) -
			     (int64_t)(o->vmas_added * VMA_SLAB_BYTES) -
			     (int64_t)((o->store_pages - o->pages_shared + o->store_warm) *
				       DD_PAGE_SIZE);
}

void dd_scanner_regions(struct dd_scanner *s, void (*fn)(const struct dd_region_info *, void *),
			void *arg)
{
	uint64_t id = 0;
	struct dd_sclient *c;

	while ((c = next_client(s, id))) {
		id = c->id + 1;
		pthread_mutex_lock(&c->lock);
		for (struct dd_region *r = c->regions; r; r = r->next) {
			struct dd_region_info ri = {
				.pid = c->pid, .client_id = c->id, .start = r->start,
				.pages = r->npages, .domain = r->dom->id, .merged = r->merged,
				.zero = r->zero, .vmas = (uint64_t)__atomic_load_n(&c->vmas, __ATOMIC_RELAXED),
			};
			fn(&ri, arg);
		}
		pthread_mutex_unlock(&c->lock);
		client_put(c);
	}
}

/* ---- active-memory sampling ------------------------------------------- */

static struct dd_sclient *client_by_id(struct dd_scanner *s, uint64_t id)
{
	struct dd_sclient *c;

	pthread_mutex_lock(&s->lock);
	for (c = s->clients; c && c->id != id; c = c->next)
		;
	if (c)
		atomic_fetch_add(&c->refs, 1);
	pthread_mutex_unlock(&s->lock);
	return c;
}

/* The region of c holding addr and its record (c->lock held). */
static struct dd_page *page_at(struct dd_sclient *c, uint64_t addr)
{
	for (struct dd_region *r = c->regions; r; r = r->next)
		if (!r->dead && addr >= r->start &&
		    addr < r->start + (uint64_t)r->npages * DD_PAGE_SIZE)
			return &r->pages[(addr - r->start) / DD_PAGE_SIZE];
	return NULL;
}

static bool sampleable(const struct dd_page *p)
{
	return p && p->state != PG_MERGED && p->state != PG_ZERO && p->state != PG_GONE;
}

static uint64_t xorshift(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

/* A random registered page of c, uniformly over all its pages (c->lock held). */
static uint64_t random_page(struct dd_sclient *c, uint64_t total, uint64_t *rng)
{
	uint64_t k = xorshift(rng) % total;

	for (struct dd_region *r = c->regions; r; r = r->next) {
		if (r->dead)
			continue;
		if (k < r->npages)
			return r->start + k * DD_PAGE_SIZE;
		k -= r->npages;
	}
	return 0;
}

static bool pm_entry(struct dd_sclient *c, uint64_t addr, uint64_t *pm)
{
	off_t off = (off_t)(addr / DD_PAGE_SIZE * sizeof(uint64_t));

	return pread(c->pagemap, pm, sizeof(*pm), off) == (ssize_t)sizeof(*pm);
}

/*
 * Whether the page at addr is part of a THP mapped by a PMD. The sampler
 * leaves those alone: write-protecting 4 KiB of one makes the kernel split
 * its PMD, and the large folio, now mapped page by page, would no longer be
 * seen as huge (thp_pages()).
 */
static bool pmd_mapped(struct dd_scanner *s, struct dd_sclient *c, uint64_t addr)
{
	struct dd_page_region v;
	struct dd_pm_scan_arg arg = {
		.size = sizeof(arg), .start = addr, .end = addr + DD_PAGE_SIZE,
		.vec = (uintptr_t)&v, .vec_len = 1, .category_mask = DD_PAGE_IS_HUGE,
		.return_mask = DD_PAGE_IS_HUGE,
	};

	if (atomic_load(&s->no_pagemap_scan))
		return false;
	return ioctl(c->pagemap, DD_PAGEMAP_SCAN, &arg) > 0;
}

static void sample_drop(struct dd_sclient *c)
{
	for (uint32_t i = 0; i < c->nsample; i++) {
		uint64_t pm;

		pthread_mutex_lock(&c->fault_lock);
		if (!ranges_hit(c->inflight, c->ninflight, c->sample[i]) &&
		    pm_entry(c, c->sample[i], &pm) && (pm & DD_PM_UFFD_WP))
			wp_off(c->uffd, c->sample[i], DD_PAGE_SIZE);
		pthread_mutex_unlock(&c->fault_lock);
	}
	c->nsample = 0;
}

int dd_scanner_sample_begin(struct dd_scanner *s, uint64_t client_id, uint32_t n, uint64_t seed)
{
	struct dd_sclient *c = client_by_id(s, client_id);
	uint64_t total = 0, rng = seed | 1;
	uint32_t tries;
	int r = 0;

	if (!c)
		return -ESRCH;
	pthread_mutex_lock(&c->lock);
	sample_drop(c);
	for (struct dd_region *g = c->regions; g; g = g->next)
		total += g->dead ? 0 : g->npages;
	free(c->sample);
	c->sample = n && total ? calloc(n, sizeof(*c->sample)) : NULL;
	if (n && total && !c->sample)
		r = -ENOMEM;
	/* Resident, unmerged pages only: up to 8 draws per wanted page, so a
	 * mostly empty client yields a smaller sample instead of a long loop. */
	for (tries = 0; c->sample && c->nsample < n && tries < 8 * n; tries++) {
		uint64_t a = random_page(c, total, &rng), pm;
		struct uffdio_writeprotect wp = { .range = { a, DD_PAGE_SIZE },
						  .mode = UFFDIO_WRITEPROTECT_MODE_WP };
		bool dup = false;

		for (uint32_t i = 0; i < c->nsample && !dup; i++)
			dup = c->sample[i] == a;
		if (dup || !sampleable(page_at(c, a)) || !pm_entry(c, a, &pm) ||
		    (pm & (DD_PM_PRESENT | DD_PM_FILE | DD_PM_UFFD_WP)) != DD_PM_PRESENT ||
		    pmd_mapped(s, c, a))
			continue;
		if (ioctl(c->uffd, UFFDIO_WRITEPROTECT, &wp) == 0)
			c->sample[c->nsample++] = a;
	}
	if (!r)
		r = (int)c->nsample;
	pthread_mutex_unlock(&c->lock);
	client_put(c);
	return r;
}

int dd_scanner_sample_end(struct dd_scanner *s, uint64_t client_id, uint32_t *touched)
{
	struct dd_sclient *c = client_by_id(s, client_id);
	uint32_t valid = 0;

	*touched = 0;
	if (!c)
		return -ESRCH;
	pthread_mutex_lock(&c->lock);
	for (uint32_t i = 0; i < c->nsample; i++) {
		uint64_t a = c->sample[i], pm;

		/* A page merged, zapped or unmapped meanwhile tells nothing. */
		if (!sampleable(page_at(c, a)) || !pm_entry(c, a, &pm) ||
		    (pm & (DD_PM_PRESENT | DD_PM_FILE)) != DD_PM_PRESENT)
			continue;
		valid++;
		if (!(pm & DD_PM_UFFD_WP))
			(*touched)++; /* the fault thread lifted it: written */
	}
	sample_drop(c);
	pthread_mutex_unlock(&c->lock);
	client_put(c);
	return (int)valid;
}

size_t dd_scanner_cold_ranges(struct dd_scanner *s, uint64_t client_id, uint64_t max_bytes,
			      struct iovec *iov, size_t cap)
{
	struct dd_sclient *c = client_by_id(s, client_id);
	uint64_t left = max_bytes / DD_PAGE_SIZE;
	size_t n = 0;

	if (!c)
		return 0;
	pthread_mutex_lock(&c->lock);
	for (struct dd_region *r = c->regions; r && left && n < cap; r = r->next) {
		if (r->dead)
			continue;
		for (uint32_t i = 0; i < r->npages && left && n < cap; i++) {
			const struct dd_page *p = &r->pages[i];
			uint64_t a = r->start + (uint64_t)i * DD_PAGE_SIZE;

			if ((p->state != PG_UNSTABLE && p->state != PG_COLD) ||
			    (p->flags & PGF_VOLATILE))
				continue; /* only pages whose checksum held: unique and unwritten */
			if (n && (uint64_t)(uintptr_t)iov[n - 1].iov_base + iov[n - 1].iov_len == a) {
				iov[n - 1].iov_len += DD_PAGE_SIZE;
			} else {
				iov[n].iov_base = (void *)(uintptr_t)a;
				iov[n].iov_len = DD_PAGE_SIZE;
				n++;
			}
			left--;
		}
	}
	pthread_mutex_unlock(&c->lock);
	client_put(c);
	return n;
}
