/* SPDX-License-Identifier: MIT */
/*
 * The scanner: registered regions of client processes, their per-page records,
 * the scan loop (KSM's pages_to_scan / sleep_millisecs), the stable and
 * unstable tables, the stable stores, and the freeze -> verify -> remap/zap ->
 * wake merge protocol of DESIGN.md §4, plus the fault thread that answers
 * write-protect faults. It talks to a client's agent only through
 * struct dd_scan_ops, so it knows nothing of sockets.
 *
 * Threads: one scan thread and one fault thread, started by dd_scanner_start().
 * dd_scanner_add_client/remove_client/register/unregister/stats/set_knobs are
 * called from the daemon's main thread; all are thread-safe.
 */
#ifndef DD_SCANNER_H
#define DD_SCANNER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "dedupd/common/proto.h"

struct dd_scanner;
struct dd_sclient;

struct dd_scan_ops {
	/* Send a batch of remaps and zaps (entries flagged DD_REMAP_ZAP) to the
	 * agent and wait for one result per entry in res[]. 0, or -errno if no
	 * answer came (then the outcome of the batch is unknown). */
	int (*batch)(void *agent, const struct dd_remap_entry *e, uint32_t n, int32_t *res);
	/* The same in two halves: send (n >= 1), and the scan thread goes on
	 * while the agent works. 0, or -errno (nothing sent). After 0 the same
	 * thread must call batch_recv before it lets go of the client; a HASH
	 * it sends meanwhile is answered after the batch. batch_recv: as batch.
	 * Both may be NULL (then batch is used). */
	int (*batch_send)(void *agent, const struct dd_remap_entry *e, uint32_t n);
	int (*batch_recv)(void *agent, uint32_t n, int32_t *res);
	/* Hand the store memfd of domain to the agent. 0 or -errno. */
	int (*send_store)(void *agent, uint32_t domain, int memfd);
	/* Have the agent checksum n ranges (npages pages in all, at most
	 * DD_HASH_MAX) of its memory in place, without waiting for the answer.
	 * 0, -EOPNOTSUPP (the agent does not hash: copy the pages), or another
	 * -errno (nothing sent). After 0 the same thread must call hash_recv
	 * before any other request to this agent. May be NULL. */
	int (*hash_send)(void *agent, const struct dd_hash_range *e, uint32_t n, uint32_t npages);
	/* The answer: res[] gets one result per page and *cpu_ns the agent's
	 * CPU time. 0, -EOPNOTSUPP (copy the pages), or another -errno (no
	 * answer). */
	int (*hash_recv)(void *agent, uint32_t npages, struct dd_hash_result *res,
			 uint64_t *cpu_ns);
	/* Does the agent compare the runs flagged DD_REMAP_VERIFY itself (then
	 * the scan does not copy those pages out to compare them)? May be NULL. */
	bool (*agent_verifies)(void *agent);
	/* Does the agent map spans (DD_REMAP_SPAN)? May be NULL. */
	bool (*agent_spans)(void *agent);
};

struct dd_scan_knobs {
	uint32_t pages_to_scan;       /* pages per wake-up */
	uint32_t sleep_millisecs;     /* pause between wake-ups */
	uint32_t merge_batch_pages;   /* merges per agent round trip, <= DD_BATCH_MAX */
	uint32_t max_vmas_per_client; /* 0: half of vm.max_map_count */
	uint32_t share_domain;        /* enum dd_domain_policy for DD_DOMAIN_DEFAULT */
	bool zero_pages;              /* zap all-zero pages */
	uint32_t idle_backoff_ms_max; /* longest extra pause after idle passes; 0: none */
	bool thp_split;               /* scan pages of transparent huge pages, splitting
				       * each THP first; false: leave them alone */
	uint32_t scan_threads;        /* 0: one per two cores; fixed at start */
	bool agent_hash;              /* have agents checksum their pages in place */
};

void dd_scan_knobs_default(struct dd_scan_knobs *k);

struct dd_scan_stats {
	uint64_t pages_registered;
	uint64_t pages_scanned;   /* total, all passes */
	uint64_t pages_shared;    /* store pages with sharers */
	uint64_t pages_sharing;   /* owner pages on store pages, minus pages_shared */
	uint64_t pages_unshared;  /* unique candidates: in the unstable table, or cold */
	uint64_t unstable_nodes;  /* of those, in the unstable table (the rest: cold) */
	uint64_t pages_volatile;  /* changed since the previous pass (last pass) */
	uint64_t zero_pages;      /* pages zapped to the zero page */
	uint64_t full_scans;
	uint64_t clients;
	uint64_t regions;
	uint64_t merges;          /* pages merged or zapped, total */
	uint64_t merge_failed;    /* frozen but not merged (changed, stale, agent error) */
	uint64_t cow_breaks;      /* merged pages found written */
	uint64_t pages_unmapped;  /* registered pages the application unmapped or mapped over */
	uint64_t pages_adopted;   /* pages found still merged by an earlier daemon */
	uint64_t thp_split;       /* transparent huge pages split to merge their pages */
	uint64_t thp_skipped;     /* pages left alone because a THP holds them (last pass) */
	uint64_t store_pages;     /* store slots held, with or without sharers */
	uint64_t store_freed;
	uint64_t store_warm;      /* free store slots allocated ahead of merges */
	uint64_t store_holes;     /* store slots under spans, taken and empty */
	uint64_t vmas;            /* VMAs of all clients now */
	uint64_t vmas_added;      /* VMAs that our remaps add, estimate */
	uint64_t faults;          /* write-protect faults answered */
	uint64_t meta_bytes;      /* records, tables, store bookkeeping */
	uint64_t daemon_anon_bytes; /* the daemon's resident anonymous memory */
	int64_t bytes_saved_net;
	uint64_t scan_cpu_ns;     /* CPU time of the scan thread */
	uint64_t agent_hash_pages; /* pages checksummed by agents, total */
	uint64_t agent_cpu_ns;    /* agents' CPU time for those, as they report it */
	uint64_t agent_unreadable; /* pages an agent could not read (a fault), total */
	uint64_t agent_hash_wait_ns; /* wall time the scan waited for HASH answers */
	uint64_t agent_timeouts;  /* agent requests (HASH, REMAP) left unanswered in time */
	/* Where merging spends its wall time (scan threads, all batches): */
	uint64_t merge_batches;   /* merge queues carried out (freeze to wake) */
	uint64_t remap_runs;      /* runs sent to agents to be remapped (one mmap each) */
	uint64_t zap_runs;        /* runs of zero pages sent to agents to be zapped */
	uint64_t remap_spans;     /* spans agents mapped (one mmap each, over several runs) */
	uint64_t merge_freeze_ns; /* write-protecting the batches' runs */
	uint64_t merge_verify_ns; /* reading and comparing frozen pages, filling new slots */
	uint64_t merge_agent_ns;  /* waiting for the agents' REMAP and ZAP answers */
	uint64_t merge_settle_ns; /* recording outcomes, waking writers, events settled */
	uint64_t last_pass_ms;    /* wall time of the last full pass */
};

struct dd_scanner *dd_scanner_new(const struct dd_scan_knobs *k, const struct dd_scan_ops *ops);
/* Stops the threads and frees everything; NULL-safe. The calling thread must
 * be registered with RCU (rcu_register_thread()). */
void dd_scanner_free(struct dd_scanner *s);
int dd_scanner_start(struct dd_scanner *s);
void dd_scanner_stop(struct dd_scanner *s);
void dd_scanner_set_knobs(struct dd_scanner *s, const struct dd_scan_knobs *k);
void dd_scanner_get_knobs(struct dd_scanner *s, struct dd_scan_knobs *k);

/* A new client; takes ownership of uffd on success. NULL on failure with
 * errno set (the caller still owns uffd then). */
struct dd_sclient *dd_scanner_add_client(struct dd_scanner *s, pid_t pid, uid_t uid, int uffd,
					 void *agent);
/* The client's agent connection is up (or gone: agent NULL). */
void dd_scanner_set_agent(struct dd_scanner *s, struct dd_sclient *c, void *agent);
/* The client disconnected: forget its regions and release its uffd. */
void dd_scanner_remove_client(struct dd_scanner *s, struct dd_sclient *c);
uint64_t dd_sclient_id(const struct dd_sclient *c);

/*
 * Register [addr, addr+len) of the client. 0, or -errno with a sentence for
 * the client in err (not the client's memory, not private anonymous, overlaps
 * a registered region, ...).
 */
int dd_scanner_register(struct dd_scanner *s, struct dd_sclient *c, uint64_t addr, uint64_t len,
			uint32_t policy, uint64_t salt, char *err, size_t errlen);
int dd_scanner_unregister(struct dd_scanner *s, struct dd_sclient *c, uint64_t addr,
			  uint64_t len, char *err, size_t errlen);

void dd_scanner_stats(struct dd_scanner *s, struct dd_scan_stats *out);

/*
 * Active-memory sampling (ESX): write-protect up to n random resident,
 * unmerged pages of the client's regions (seed picks them). A write to one
 * faults, and the fault thread lifts the protection, so
 * dd_scanner_sample_end() counts as touched every sampled page that is no
 * longer protected; it then lifts the protection of the others. Only writes
 * are seen: a page that is only read stays protected. Pages merged, zapped or
 * unmapped meanwhile are not counted.
 * begin: the number of pages sampled (may be < n, 0 for a client with nothing
 * resident), -ESRCH (no such client), -ENOMEM. A new begin drops the last
 * sample. end: the number of valid pages, *touched of them written; -ESRCH.
 */
int dd_scanner_sample_begin(struct dd_scanner *s, uint64_t client_id, uint32_t n, uint64_t seed);
int dd_scanner_sample_end(struct dd_scanner *s, uint64_t client_id, uint32_t *touched);

/*
 * Cold pages of a client, for paging out: runs of its registered pages that
 * are unique (in the unstable table, not merged) and whose checksum held from
 * one pass to the next (not written lately; reads are not seen), up to max_bytes, as at most cap iovecs
 * in address order. Returns the number of iovecs (0 for an unknown client).
 */
struct iovec;
size_t dd_scanner_cold_ranges(struct dd_scanner *s, uint64_t client_id, uint64_t max_bytes,
			      struct iovec *iov, size_t cap);

/* Per-region figures for `dedupctl regions`. fn is called once per region. */
struct dd_region_info {
	pid_t pid;
	uint64_t client_id;
	uint64_t start;
	uint64_t pages;
	uint32_t domain;
	uint64_t merged;
	uint64_t zero;
	uint64_t vmas;
};
void dd_scanner_regions(struct dd_scanner *s, void (*fn)(const struct dd_region_info *, void *),
			void *arg);

#endif
