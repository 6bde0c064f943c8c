/* SPDX-License-Identifier: MIT */
/*
 * libdedup — offer memory to the dedupd page-sharing daemon.
 *
 * dedup_register() is dedupd's analogue of madvise(MADV_MERGEABLE): identical
 * pages of the range (within this process and across processes of the same
 * share domain) may be merged copy-on-write. Reads and writes behave exactly
 * as before; a write to a merged page gets a private copy from the kernel.
 *
 * The first call connects to dedupd ($DEDUPD_SOCKET, default
 * /run/dedupd/dedupd.sock), hands it a userfaultfd of this process and starts
 * one small agent thread that maps shared pages on the daemon's request and
 * checksums pages for it. For reading pages in place the agent installs a
 * SIGSEGV/SIGBUS handler (at the daemon's first request) that takes back only
 * its own faults and passes every other signal on to the handler installed
 * before it; a handler the program installs afterwards turns this off, and so
 * does DEDUP_NO_AGENT_HASH=1 in the environment (dedupd then copies pages).
 * With the same handler the agent byte-compares the pages dedupd is about to
 * merge, against a read-only view of dedupd's store that it maps (one
 * mapping); DEDUP_NO_AGENT_VERIFY=1 leaves that compare to dedupd.
 * Creating the userfaultfd needs root or CAP_SYS_PTRACE, or read-write access to
 * /dev/userfaultfd; see README "Unprivileged clients". The agent keeps a copy of
 * it (closed if dedupd goes away), and fork() waits for the agent while pages
 * it remaps are briefly unmapped (a pthread_atfork handler).
 *
 * A write to a page that dedupd is merging, or any access in the moment its
 * shared page is mapped in, waits briefly in the kernel; the program notices
 * nothing else.
 *
 * The range must be private anonymous, readable and writable memory of this
 * process (mmap(MAP_PRIVATE|MAP_ANONYMOUS) or malloc'ed pages), page aligned.
 * All functions are thread-safe and return 0 or -errno; on failure
 * dedup_strerror() gives the daemon's explanation. If dedupd is unreachable
 * they fail with -ECONNREFUSED or -ENOENT and the memory is left as it was.
 */
#ifndef DEDUP_H
#define DEDUP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Share domains: pages only merge within one domain. */
enum dedup_domain {
	DEDUP_DOMAIN_DEFAULT = 0, /* the daemon's policy (default: per user) */
	DEDUP_DOMAIN_ALL = 1,     /* every client of every user */
	DEDUP_DOMAIN_UID = 2,     /* processes of the same user */
	DEDUP_DOMAIN_CLIENT = 3,  /* this process only */
	DEDUP_DOMAIN_SALT = 4,    /* same user and the same salt */
};

struct dedup_opts {
	uint32_t domain;    /* enum dedup_domain */
	uint32_t shares;    /* allocation shares under pressure; 0 = default */
	uint64_t salt;      /* with DEDUP_DOMAIN_SALT */
	uint64_t min_bytes; /* admission reservation; 0 = none */
};

/* Offer [addr, addr+len) for merging. opts may be NULL (defaults). */
int dedup_register(void *addr, size_t len, const struct dedup_opts *opts);

/* Withdraw [addr, addr+len); merged pages stay shared until written. */
int dedup_unregister(void *addr, size_t len);

/*
 * madvise(MADV_DONTNEED) for registered memory. A merged page is a private
 * mapping of dedupd's store: after a plain MADV_DONTNEED it reads the shared
 * content again, not zeros. dedup_discard() discards the range and gives the
 * merged pages in it fresh zero-filled memory, so the range reads zeros as
 * MADV_DONTNEED promises for anonymous memory. The preload does this by itself
 * after the program's MADV_DONTNEED or MADV_FREE. Merged pages in the range
 * lose their madvise() flags (as remapped pages already have). 0 or -errno.
 */
int dedup_discard(void *addr, size_t len);

/* The daemon's last error message for this thread, or "" . */
const char *dedup_strerror(void);

/* 1 if this process is connected to dedupd, else 0. */
int dedup_connected(void);

/*
 * Ballooning. Under memory pressure dedupd may ask this process to give memory
 * back, the way a guest's balloon driver does. The handler gets the balloon
 * size wanted: how many bytes of its memory the application should release
 * now (free caches, munmap or MADV_DONTNEED buffers it can rebuild); a smaller
 * size than before lets it take memory back, 0 all of it. It returns the
 * balloon size it reached (bytes released, which may be less than asked) or a
 * negative errno. It runs on a libdedup thread, never on the agent, one call
 * at a time; it may take its time and call anything but the dedup_set_*
 * functions. NULL removes the handler. 0 or -errno.
 */
typedef int64_t (*dedup_balloon_fn)(uint64_t bytes, void *arg);
int dedup_set_balloon_handler(dedup_balloon_fn fn, void *arg);

/* Balloon backends for processes that are virtual machine monitors. */
enum dedup_balloon_backend {
	DEDUP_BALLOON_NONE = 0,
	DEDUP_BALLOON_QMP = 2,		    /* QEMU: QMP socket, virtio-balloon */
	DEDUP_BALLOON_FIRECRACKER = 3,	    /* Firecracker: API socket */
	DEDUP_BALLOON_CLOUD_HYPERVISOR = 4, /* Cloud Hypervisor: API socket */
};

/*
 * Tell dedupd that this process is a VMM whose guest it may balloon through
 * the API socket at path (which must belong to this process's user). The
 * configuration file's [client.NAME] balloon binding, if any, wins.
 * 0, -EINVAL (unknown backend, path empty or too long), or -errno.
 */
int dedup_set_balloon_backend(int backend, const char *path);

/* Disconnect from dedupd and stop the agent thread (also done at exit). */
void dedup_shutdown(void);

#ifdef __cplusplus
}
#endif
#endif
