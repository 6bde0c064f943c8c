/* SPDX-License-Identifier: MIT */
/*
 * dedupd wire protocol: AF_UNIX SOCK_SEQPACKET, one message per packet.
 *
 * Every message starts with struct dd_msg_hdr. A connection's first message says
 * what it is:
 *   HELLO        a client's control connection (libdedup); carries the client's
 *                userfaultfd as SCM_RIGHTS. Followed by REGISTER/UNREGISTER,
 *                each answered by RESULT.
 *   AGENT_HELLO  the same client's agent connection (client id + token from
 *                HELLO_OK). The daemon then sends STORE, REMAP and ZAP on it
 *                and the agent answers each REMAP/ZAP with AGENT_REPLY (if
 *                HELLO's flags had DD_HELLO_AGENT_UNMAP, one REMAP carries the
 *                zaps too, DD_REMAP_ZAP, and no ZAP comes); and, if they had
 *                DD_HELLO_AGENT_HASH, HASH (ranges of its pages), answered by
 *                HASH_REPLY (a checksum per page).
 *   ADMIN        dedupctl: a text command; answered by RESULT whose text is JSON.
 * Reclaim: the daemon sends BALLOON (a balloon size) on the agent channel, and
 * the agent answers with a one-entry AGENT_REPLY at once; the application's
 * handler runs later on its own thread, and the client reports the size it
 * reached with BALLOON_INFO on its control connection (answered by RESULT).
 * BALLOON_INFO also names a VMM API socket (QMP, Firecracker, Cloud
 * Hypervisor) that the daemon may use to balloon the client.
 * Integers are host-endian (the peers share one host). Sizes are checked on
 * receipt: a packet whose length disagrees with its header or its type is
 * refused with -EBADMSG and the connection closed.
 */
#ifndef DD_PROTO_H
#define DD_PROTO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define DD_PROTO_MAGIC 0x50554444u /* "DDUP" */
#define DD_PROTO_VERSION 1
#define DD_MSG_MAX (64 * 1024)
#define DD_DEFAULT_SOCKET "/run/dedupd/dedupd.sock"
/* Entries per REMAP/ZAP: bounded so that a message fits DD_MSG_MAX. */
#define DD_BATCH_MAX 1024

enum dd_msg_type {
	DD_MSG_HELLO = 1,
	DD_MSG_HELLO_OK,
	DD_MSG_AGENT_HELLO,
	DD_MSG_REGISTER,
	DD_MSG_UNREGISTER,
	DD_MSG_RESULT,
	DD_MSG_STORE,
	DD_MSG_REMAP,
	DD_MSG_ZAP,
	DD_MSG_AGENT_REPLY,
	DD_MSG_ADMIN,
	DD_MSG_BALLOON,	     /* daemon -> agent: set the libdedup balloon */
	DD_MSG_BALLOON_INFO, /* client -> daemon: its balloon backend and size */
	DD_MSG_HASH,	     /* daemon -> agent: checksum these pages */
	DD_MSG_HASH_REPLY,   /* agent -> daemon: the checksums */
	DD_MSG_TYPE_MAX,
};

struct dd_msg_hdr {
	uint32_t magic;
	uint16_t version;
	uint16_t type;
	uint32_t len; /* whole message, header included */
	uint32_t seq;
};

/* Share-domain policies (DESIGN.md §5). */
enum dd_domain_policy {
	DD_DOMAIN_DEFAULT = 0, /* the daemon's configured policy */
	DD_DOMAIN_ALL,
	DD_DOMAIN_UID,
	DD_DOMAIN_CLIENT,
	DD_DOMAIN_SALT,
};

/* HELLO flags */
#define DD_HELLO_AGENT_HASH 1u /* the agent answers HASH */
/* The agent holds a copy of the uffd and takes DD_REMAP_ANON (agent.c,
 * do_remaps(): one TLB flush for a batch of remaps). */
#define DD_HELLO_AGENT_UNMAP 2u
/* The agent byte-compares the runs flagged DD_REMAP_VERIFY itself (with
 * DD_HELLO_AGENT_UNMAP only). */
#define DD_HELLO_AGENT_VERIFY 4u
/* The agent maps spans (DD_REMAP_SPAN; with DD_HELLO_AGENT_UNMAP only). */
#define DD_HELLO_AGENT_SPAN 8u

struct dd_msg_hello { /* + SCM_RIGHTS: uffd */
	struct dd_msg_hdr h;
	uint32_t flags; /* DD_HELLO_* */
	uint32_t uffd_features;
};

struct dd_msg_hello_ok {
	struct dd_msg_hdr h;
	uint64_t client_id;
	uint64_t token;
};

struct dd_msg_agent_hello {
	struct dd_msg_hdr h;
	uint64_t client_id;
	uint64_t token;
};

struct dd_msg_register {
	struct dd_msg_hdr h;
	uint64_t addr;
	uint64_t len;
	uint32_t policy; /* enum dd_domain_policy */
	uint32_t flags;
	uint64_t salt;
	uint64_t min_bytes;
	uint32_t shares;
	uint32_t pad;
};

struct dd_msg_unregister {
	struct dd_msg_hdr h;
	uint64_t addr;
	uint64_t len;
};

#define DD_TEXT_MAX (DD_MSG_MAX - 64)
struct dd_msg_result {
	struct dd_msg_hdr h;
	int32_t status; /* 0 or -errno */
	uint32_t text_len;
	uint64_t value;
	char text[]; /* text_len bytes, not NUL-terminated on the wire */
};

struct dd_msg_store { /* + SCM_RIGHTS: the domain's store memfd */
	struct dd_msg_hdr h;
	uint32_t domain;
	uint32_t pad;
};

struct dd_remap_entry {
	uint64_t addr;
	uint64_t store_off; /* ignored for ZAP */
	uint32_t npages : 24; /* at most DD_BATCH_MAX * 64 */
	uint32_t flags : 8;   /* DD_REMAP_*; only to agents that sent DD_HELLO_AGENT_UNMAP */
	uint32_t domain;      /* ignored for ZAP */
};

/* REMAP entry flags. ANON: every page of the run lies in an anonymous VMA
 * (never in one of a store), so the agent may empty it before the mmap().
 * ZAP: a run of zero pages to zap, not to map (store_off and domain
 * ignored): one REMAP then carries a batch's remaps and zaps. */
#define DD_REMAP_ANON 1u
#define DD_REMAP_ZAP 2u
/* VERIFY: before it acts on the run, and after it found the run frozen, the
 * agent compares the run's pages in place with its store pages (a remap) or
 * checks that they are all zero (a zap), and answers -EAGAIN if one differs
 * (-EFAULT if one cannot be read, -EOPNOTSUPP if it cannot read in place
 * any more). Only to agents that sent DD_HELLO_AGENT_VERIFY. */
#define DD_REMAP_VERIFY 4u
/*
 * SPAN: one mapping of consecutive store pages (store_off on) over the
 * whole entry, while the process keeps its own pages between the runs to
 * share. The runs follow it, as entries flagged INSPAN (each ANON, maybe
 * VERIFY), in address order, each where the span's mapping puts its store
 * pages (store_off - span's store_off = addr - span's addr). Every page of
 * the span must be frozen; the agent copies the pages it keeps into the new
 * mapping (anonymous pages there, not store pages), then moves the mapping
 * over the span in one step. A run that differs from its store pages (VERIFY)
 * is kept like the pages between the runs and answers -EAGAIN; anything else
 * that fails leaves the whole span as it was, and the span and its runs all
 * answer the error. A span costs two VMAs however many runs it holds. Only
 * to agents that sent DD_HELLO_AGENT_SPAN.
 */
#define DD_REMAP_SPAN 8u
#define DD_REMAP_INSPAN 16u

struct dd_msg_batch { /* REMAP and ZAP */
	struct dd_msg_hdr h;
	uint32_t n;
	uint32_t pad;
	struct dd_remap_entry e[];
};

struct dd_msg_agent_reply {
	struct dd_msg_hdr h;
	uint32_t n;
	uint32_t pad;
	int32_t res[]; /* per entry: 0 or -errno */
};

/*
 * HASH: the agent checksums (XXH3-64, as dd_page_hash()) the pages of each
 * range in its own memory, without a copy, and answers with one result per
 * page, in order. A page it cannot read (unmapped or made inaccessible by the
 * application meanwhile) has no DD_HASH_OK. At most DD_HASH_MAX pages.
 */
#define DD_HASH_MAX 1024
#define DD_HASH_OK 1u	/* csum is valid */
#define DD_HASH_ZERO 2u /* every byte of the page is zero */

struct dd_hash_range {
	uint64_t addr;
	uint32_t npages;
	uint32_t pad;
};

struct dd_msg_hash {
	struct dd_msg_hdr h;
	uint32_t n; /* ranges */
	uint32_t pad;
	struct dd_hash_range e[];
};

struct dd_hash_result {
	uint64_t csum;
	uint32_t flags; /* DD_HASH_* */
	uint32_t pad;
};

struct dd_msg_hash_reply {
	struct dd_msg_hdr h;
	uint32_t n; /* pages */
	int32_t status; /* 0, or -errno: nothing was hashed (n is 0) */
	uint64_t cpu_ns; /* the agent thread's CPU time for this request */
	struct dd_hash_result res[];
};

struct dd_msg_balloon {
	struct dd_msg_hdr h;
	uint64_t bytes; /* balloon size: memory the application should give back */
};

/* Balloon backends, as the values of enum dd_conf_balloon. */
enum dd_backend_kind {
	DD_BACKEND_NONE = 0,
	DD_BACKEND_CALLBACK = 1, /* dedup_set_balloon_handler() */
	DD_BACKEND_QMP = 2,
	DD_BACKEND_FIRECRACKER = 3,
	DD_BACKEND_CLOUD_HYPERVISOR = 4,
};

#define DD_BALLOON_PATH_MAX 108
struct dd_msg_balloon_info {
	struct dd_msg_hdr h;
	uint32_t backend; /* enum dd_backend_kind */
	int32_t status;	  /* the handler's last result: 0 or -errno */
	int64_t bytes;	  /* balloon size reached; -1: unknown */
	char path[DD_BALLOON_PATH_MAX]; /* API socket of a VMM backend, NUL-terminated */
};

struct dd_msg_admin {
	struct dd_msg_hdr h;
	uint32_t text_len;
	uint32_t pad;
	char text[];
};

/*
 * All functions return 0 (or a byte count) on success and -errno on failure;
 * none of them logs.
 */
void dd_msg_init(struct dd_msg_hdr *h, enum dd_msg_type type, size_t len, uint32_t seq);

/* Send one message, with fd (or -1) attached as SCM_RIGHTS. */
int dd_msg_send(int sock, const void *msg, size_t len, int fd);

/*
 * Receive one message into buf (cap bytes). Returns its length, 0 on orderly
 * close, -EBADMSG if it is malformed (bad magic/version/type, length that
 * disagrees with the header or is shorter than the type needs, truncated),
 * -EMSGSIZE if it is larger than cap. A received fd is stored in *fd (else -1);
 * the caller owns it. timeout_ms < 0 waits forever.
 */
ssize_t dd_msg_recv(int sock, void *buf, size_t cap, int *fd, int timeout_ms);

/* The smallest valid length of a message of this type; 0 for an unknown type. */
size_t dd_msg_min_len(uint16_t type);

/* Send a RESULT with status, value and text (may be NULL). */
int dd_msg_send_result(int sock, uint32_t seq, int status, uint64_t value, const char *text);

/* Connect a SEQPACKET socket to path. */
int dd_sock_connect(const char *path);

#endif
