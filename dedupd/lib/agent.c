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
 * The thread must never block on memory that dedupd may freeze: its stack is a
 * MAP_SHARED mapping (shared memory is never merged), it allocates nothing on
 * the heap after start, and all its buffers live on that stack.
 */
#include "dedupd/lib/agent.h"
#include "dedupd/common/proto.h"
#include "dedupd/common/uffd.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#define AGENT_STACK_BYTES (512 * 1024)
#define AGENT_MAX_DOMAINS 64
#define PAGE_SIZE_ 4096u

struct dd_agent {
	int sock;
	int pagemap;
	pthread_t thread;
	void *stack;
	atomic_bool alive;
	atomic_bool stopping; /* dd_agent_stop(): no reconnect */
	dd_agent_lost_fn lost;
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
};

static int store_lookup(const struct store_fd *t, int n, uint32_t domain)
{
	for (int i = 0; i < n; i++)
		if (t[i].domain == domain)
			return t[i].fd;
	return -1;
}

/* Every page of [addr, addr+npages) is present and write-protected by dedupd. */
static bool still_frozen(int pagemap, uint64_t addr, uint32_t npages)
{
	uint64_t pm[64];

	while (npages) {
		uint32_t n = npages < 64 ? npages : 64;
		off_t off = (off_t)(addr / PAGE_SIZE_ * sizeof(uint64_t));

		if (pread(pagemap, pm, n * sizeof(uint64_t), off) != (ssize_t)(n * sizeof(uint64_t)))
			return false;
		for (uint32_t i = 0; i < n; i++)
			if ((pm[i] & (DD_PM_PRESENT | DD_PM_UFFD_WP)) != (DD_PM_PRESENT | DD_PM_UFFD_WP))
				return false;
		addr += (uint64_t)n * PAGE_SIZE_;
		npages -= n;
	}
	return true;
}

static int do_entry(struct dd_agent *a, const struct dd_remap_entry *e, bool zap,
		    const struct store_fd *stores, int nstores)
{
	size_t len = (size_t)e->npages * PAGE_SIZE_;
	void *p = (void *)(uintptr_t)e->addr;
	int fd;

	if (e->npages == 0 || e->addr % PAGE_SIZE_ || e->npages > DD_BATCH_MAX * 64u)
		return -EINVAL;
	if (!still_frozen(a->pagemap, e->addr, e->npages))
		return -ESTALE;
	if (zap)
		return madvise(p, len, MADV_DONTNEED) ? -errno : 0;
	fd = store_lookup(stores, nstores, e->domain);
	if (fd < 0)
		return -EBADF;
	if (mmap(p, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, fd,
		 (off_t)e->store_off) == MAP_FAILED)
		return -errno;
	return 0;
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
	} in;
	union {
		char raw[sizeof(struct dd_msg_agent_reply) + DD_BATCH_MAX * sizeof(int32_t)];
		struct dd_msg_agent_reply r;
	} out;
	int nstores = 0, fd;
	ssize_t n;

	for (;;) {
		n = dd_msg_recv(a->sock, in.raw, sizeof(in.raw), &fd, -1);
		if (n <= 0)
			break; /* daemon gone or spoke nonsense: stop serving */
		if (in.h.type == DD_MSG_STORE) {
			if (fd >= 0 && nstores < AGENT_MAX_DOMAINS)
				stores[nstores++] = (struct store_fd){ in.store.domain, fd };
			else if (fd >= 0)
				close(fd);
			continue;
		}
		if (fd >= 0)
			close(fd);
		if (in.h.type == DD_MSG_BALLOON) {
			out.r.res[0] = do_balloon(&in.balloon);
			out.r.n = 1;
		} else if (in.h.type == DD_MSG_REMAP || in.h.type == DD_MSG_ZAP) {
			for (uint32_t i = 0; i < in.batch.n; i++)
				out.r.res[i] = do_entry(a, &in.batch.e[i], in.h.type == DD_MSG_ZAP,
							stores, nstores);
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
		close(stores[i].fd);
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

int dd_agent_start(const char *sock_path, uint64_t client_id, uint64_t token,
		   dd_agent_lost_fn lost, struct dd_agent **out)
{
	struct dd_agent *a = calloc(1, sizeof(*a));
	sigset_t all, old;
	pthread_attr_t attr;
	int r;

	if (!a)
		return -ENOMEM;
	a->sock = a->pagemap = -1;
	a->stack = MAP_FAILED;
	a->lost = lost;
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
	/* MAP_SHARED: never registered, never merged, never frozen. */
	a->stack = mmap(NULL, AGENT_STACK_BYTES, PROT_READ | PROT_WRITE,
			MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (a->stack == MAP_FAILED) {
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
	/* The stack of a thread that was not joined (after fork) must stay. */
	if (a->stack != MAP_FAILED && !atomic_load(&a->alive))
		munmap(a->stack, AGENT_STACK_BYTES);
	free(a);
}

bool dd_agent_alive(const struct dd_agent *a)
{
	return a && atomic_load(&a->alive);
}
