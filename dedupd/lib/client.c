// SPDX-License-Identifier: MIT
/*
 * libdedup client: the connection to dedupd and the public API (dedup.h).
 *
 * A process has one control connection (REGISTER/UNREGISTER, serialised by
 * g.lock) and one agent connection served by the agent thread (agent.c). The
 * userfaultfd is created here, handed to dedupd in HELLO and closed: only the
 * daemon holds it, so if dedupd dies the kernel releases it and wakes every
 * writer that was frozen (DESIGN.md §4).
 *
 * Registered ranges are remembered. When the agent sees the daemon go away, a
 * detached thread reconnects (0.2 s, doubling to 5 s, for as long as it takes)
 * and offers them again, so a restarted dedupd (systemctl restart, or
 * Restart=on-failure after a crash) takes its clients back. Pages merged by the
 * old daemon stay shared meanwhile; the new one merges them into its own store.
 * DEDUP_RECONNECT=0 turns this off; dedup_shutdown() stops it.
 */
#include "dedupd/lib/dedup.h"
#include "dedupd/lib/agent.h"
#include "dedupd/common/proto.h"
#include "dedupd/common/uffd.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define REQUEST_TIMEOUT_MS 30000

struct range {
	uint64_t addr, len;
	struct dedup_opts opts;
};

static struct {
	pthread_mutex_t lock;
	int ctl;
	uint32_t seq;
	struct dd_agent *agent;
	bool atfork_done;
	bool shut;		/* dedup_shutdown(): no reconnect */
	atomic_bool reconnecting; /* a reconnect thread runs */
	struct range *ranges;	/* what this process registered */
	size_t nranges, capranges;
} g = { .lock = PTHREAD_MUTEX_INITIALIZER, .ctl = -1 };

static void agent_lost(void);
static int send_balloon_info_locked(void);
static int balloon_hook(uint64_t bytes);

/* Ballooning (dedup_set_balloon_handler/_backend). The agent thread only
 * stores a request here and signals; the balloon thread runs the handler and
 * reports on the control connection. bl.lock is never held while g.lock is
 * taken by the same thread, except in the order g.lock -> bl.lock. */
static struct {
	pthread_mutex_t lock;
	pthread_cond_t cv;
	dedup_balloon_fn fn;
	void *arg;
	bool thread_up;
	bool pending;
	uint64_t want;	    /* last size asked for */
	int64_t bytes;	    /* size reached; -1 unknown */
	int32_t status;	    /* the handler's last result */
	int backend;	    /* enum dd_backend_kind */
	char path[DD_BALLOON_PATH_MAX];
} bl = { .lock = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .bytes = -1 };

static __thread char errbuf[512];

__attribute__((format(printf, 1, 2))) static void set_err(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(errbuf, sizeof(errbuf), fmt, ap);
	va_end(ap);
}

const char *dedup_strerror(void)
{
	return errbuf;
}

static const char *socket_path(void)
{
	const char *p = getenv("DEDUPD_SOCKET");

	return p && *p ? p : DD_DEFAULT_SOCKET;
}

/* Create the userfaultfd that dedupd will hold (README: Unprivileged clients);
 * *umo set if it only sees faults from user mode. */
static int uffd_create(bool *umo_only)
{
	struct uffdio_api api = { .api = UFFD_API, .features = DD_UFFD_FEATURES };
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	const char *umo;

	if (fd < 0 && (errno == EPERM || errno == EACCES)) {
		int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);

		if (dev >= 0) {
			fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
			close(dev);
		}
		umo = getenv("DEDUP_UFFD_USER_MODE_ONLY");
		if (fd < 0 && umo && !strcmp(umo, "1")) {
			fd = (int)syscall(SYS_userfaultfd,
					  O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
			*umo_only = fd >= 0;
		}
		if (fd < 0)
			errno = EPERM;
	}
	if (fd < 0)
		return -errno;
	if (ioctl(fd, UFFDIO_API, &api) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	return fd;
}

/* Send a request on the control connection and wait for its RESULT. */
static int request(const void *msg, size_t len, int fd, uint64_t *value)
{
	char buf[DD_MSG_MAX];
	const struct dd_msg_result *res = (const void *)buf;
	const struct dd_msg_hdr *h = msg;
	ssize_t n;
	int r;

	r = dd_msg_send(g.ctl, msg, len, fd);
	if (r < 0)
		return r;
	for (;;) {
		n = dd_msg_recv(g.ctl, buf, sizeof(buf), NULL, REQUEST_TIMEOUT_MS);
		if (n == 0)
			return -ECONNRESET;
		if (n < 0)
			return (int)n;
		if (res->h.seq == h->seq)
			break;
	}
	if (res->h.type == DD_MSG_HELLO_OK) {
		const struct dd_msg_hello_ok *ok = (const void *)buf;
		value[0] = ok->client_id;
		value[1] = ok->token;
		return 0;
	}
	if (res->h.type != DD_MSG_RESULT)
		return -EBADMSG;
	if (res->text_len)
		snprintf(errbuf, sizeof(errbuf), "%.*s", (int)res->text_len, res->text);
	if (value)
		*value = res->value;
	return res->status;
}

static void disconnect_locked(void)
{
	if (g.ctl >= 0)
		close(g.ctl);
	g.ctl = -1;
	dd_agent_stop(g.agent);
	g.agent = NULL;
}

static void atfork_parent(void)
{
	dd_agent_fork_done();
}

static void atfork_child(void)
{
	dd_agent_fork_done();
	/* The child has no agent thread and must not talk on the parent's
	 * connection: forget it (the parent's stays open). */
	if (g.ctl >= 0)
		close(g.ctl);
	g.ctl = -1;
	dd_agent_forget(g.agent);
	g.agent = NULL;
	g.nranges = 0; /* the parent's registrations are not the child's */
	atomic_store(&g.reconnecting, false);
	pthread_mutex_init(&g.lock, NULL);
}

static int connect_locked(void)
{
	struct dd_msg_hello hello = { .uffd_features = DD_UFFD_FEATURES };
	const char *noh = getenv("DEDUP_NO_AGENT_HASH");
	uint64_t idtok[2] = { 0, 0 };
	bool old, umo_only = false;
	int uffd, r;

	/* The agent checksums pages in place unless told not to (it installs
	 * a SIGSEGV/SIGBUS handler for that, see agent.c). */
	if (!noh || !*noh || !strcmp(noh, "0"))
		hello.flags |= DD_HELLO_AGENT_HASH;
	/* Tests: act as a libdedup from before DD_HELLO_AGENT_UNMAP. */
	old = getenv("DEDUP_TEST_OLD_AGENT") && strcmp(getenv("DEDUP_TEST_OLD_AGENT"), "0");
	if (!old)
		hello.flags |= DD_HELLO_AGENT_UNMAP | DD_HELLO_AGENT_SPAN;
	/* The agent compares the pages of a remap in place (it reads them
	 * there for HASH already); DEDUP_NO_AGENT_VERIFY=1: the daemon copies
	 * them out to compare, as before. */
	noh = getenv("DEDUP_NO_AGENT_VERIFY");
	if (!old && (hello.flags & DD_HELLO_AGENT_HASH) && (!noh || !*noh || !strcmp(noh, "0")))
		hello.flags |= DD_HELLO_AGENT_VERIFY;

	if (g.ctl >= 0 && dd_agent_alive(g.agent))
		return 0;
	disconnect_locked();
	if (!g.atfork_done) {
		pthread_atfork(dd_agent_fork_prepare, atfork_parent, atfork_child);
		g.atfork_done = true;
	}
	r = dd_sock_connect(socket_path());
	if (r < 0) {
		set_err("cannot connect to dedupd at %s: %s", socket_path(), strerror(-r));
		return r;
	}
	g.ctl = r;
	uffd = uffd_create(&umo_only);
	if (uffd < 0) {
		set_err("cannot create a userfaultfd: %s (need root, CAP_SYS_PTRACE or "
			"access to /dev/userfaultfd)", strerror(-uffd));
		disconnect_locked();
		return uffd;
	}
	dd_msg_init(&hello.h, DD_MSG_HELLO, sizeof(hello), ++g.seq);
	r = request(&hello, sizeof(hello), uffd, idtok);
	if (r < 0) {
		close(uffd);
		goto fail;
	}
	/* dedupd holds the uffd now, and so does our agent (agent.c, do_remaps()),
	 * which closes it when dedupd goes away. */
	/* Without it the agent maps runs the plain way (one TLB flush each).
	 * A user-mode-only uffd cannot hold the kernel's own reads of a run
	 * it empties (a write() from it would fail with EFAULT). */
	if (old || umo_only) {
		close(uffd);
		uffd = -1;
	}
	r = dd_agent_start(socket_path(), idtok[0], idtok[1], uffd, agent_lost, &g.agent);
	if (r < 0) {
		set_err("cannot start the dedup agent: %s", strerror(-r));
		goto fail;
	}
	r = send_balloon_info_locked();
	if (r == -ECONNRESET || r == -EPIPE || r == -ETIMEDOUT)
		goto fail;
	return 0;
fail:
	disconnect_locked();
	return r;
}

static int send_register(uint64_t addr, uint64_t len, const struct dedup_opts *opts)
{
	struct dd_msg_register m = { .addr = addr, .len = len };

	if (opts) {
		m.policy = opts->domain;
		m.salt = opts->salt;
		m.min_bytes = opts->min_bytes;
		m.shares = opts->shares;
	}
	dd_msg_init(&m.h, DD_MSG_REGISTER, sizeof(m), ++g.seq);
	return request(&m, sizeof(m), -1, NULL);
}

static void remember(uint64_t addr, uint64_t len, const struct dedup_opts *opts)
{
	if (g.nranges == g.capranges) {
		size_t cap = g.capranges ? g.capranges * 2 : 16;
		struct range *v = realloc(g.ranges, cap * sizeof(*v));

		if (!v)
			return; /* only a reconnect would miss it */
		g.ranges = v;
		g.capranges = cap;
	}
	g.ranges[g.nranges++] = (struct range){ addr, len, opts ? *opts : (struct dedup_opts){ 0 } };
}

static void forget(uint64_t addr, uint64_t len)
{
	for (size_t i = 0; i < g.nranges; i++)
		if (g.ranges[i].addr == addr && g.ranges[i].len == len) {
			g.ranges[i] = g.ranges[--g.nranges];
			return;
		}
}

int dedup_register(void *addr, size_t len, const struct dedup_opts *opts)
{
	int r;

	errbuf[0] = 0;
	pthread_mutex_lock(&g.lock);
	g.shut = false;
	r = connect_locked();
	if (r == 0) {
		r = send_register((uintptr_t)addr, len, opts);
		if (r == 0)
			remember((uintptr_t)addr, len, opts);
		if (r == -ECONNRESET || r == -EPIPE || r == -ETIMEDOUT)
			disconnect_locked();
	}
	pthread_mutex_unlock(&g.lock);
	return r;
}

/* ---- reconnecting after a daemon restart --------------------------------- */

/* Offer the remembered ranges again; drop those the new daemon refuses
 * (unmapped meanwhile, say). g.lock held, connected. */
static void reregister_locked(void)
{
	for (size_t i = 0; i < g.nranges;) {
		int r = send_register(g.ranges[i].addr, g.ranges[i].len, &g.ranges[i].opts);

		if (r == -ECONNRESET || r == -EPIPE || r == -ETIMEDOUT)
			return;
		if (r < 0 && r != -EEXIST)
			g.ranges[i] = g.ranges[--g.nranges];
		else
			i++;
	}
}

static void *reconnect_main(void *arg)
{
	unsigned wait_ms = 200;

	(void)arg;
	for (;;) {
		struct timespec ts = { wait_ms / 1000, (long)(wait_ms % 1000) * 1000000L };
		bool done;

		nanosleep(&ts, NULL);
		pthread_mutex_lock(&g.lock);
		if (g.shut || !g.nranges) { /* shut down, or nothing to offer */
			done = true;
		} else {
			disconnect_locked(); /* joins the old agent, which has ended */
			done = connect_locked() == 0;
			if (done)
				reregister_locked();
		}
		if (done)
			atomic_store(&g.reconnecting, false);
		pthread_mutex_unlock(&g.lock);
		if (done)
			return NULL;
		wait_ms = wait_ms * 2 > 5000 ? 5000 : wait_ms * 2;
	}
}

/*
 * On the agent thread: the daemon went away. It takes no lock: an application
 * thread holding g.lock may be joining this very thread (disconnect_locked);
 * the reconnect thread checks g.shut and the ranges under the lock itself.
 */
static void agent_lost(void)
{
	const char *env = getenv("DEDUP_RECONNECT");
	pthread_attr_t attr;
	pthread_t t;
	bool inflated;

	/* Nobody manages the balloon any more: let the application take its
	 * memory back. */
	pthread_mutex_lock(&bl.lock);
	inflated = bl.fn && bl.bytes > 0;
	pthread_mutex_unlock(&bl.lock);
	if (inflated)
		balloon_hook(0);
	if ((env && !strcmp(env, "0")) || atomic_exchange(&g.reconnecting, true))
		return;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	if (pthread_create(&t, &attr, reconnect_main, NULL) != 0)
		atomic_store(&g.reconnecting, false);
	pthread_attr_destroy(&attr);
}

int dedup_unregister(void *addr, size_t len)
{
	struct dd_msg_unregister m = { .addr = (uintptr_t)addr, .len = len };
	int r = -ENOTCONN;

	errbuf[0] = 0;
	pthread_mutex_lock(&g.lock);
	forget((uintptr_t)addr, len);
	if (g.ctl >= 0) {
		dd_msg_init(&m.h, DD_MSG_UNREGISTER, sizeof(m), ++g.seq);
		r = request(&m, sizeof(m), -1, NULL);
		if (r == -ECONNRESET || r == -EPIPE || r == -ETIMEDOUT)
			disconnect_locked();
	}
	pthread_mutex_unlock(&g.lock);
	return r;
}

int dedup_connected(void)
{
	int c;

	pthread_mutex_lock(&g.lock);
	c = g.ctl >= 0 && dd_agent_alive(g.agent);
	pthread_mutex_unlock(&g.lock);
	return c;
}

void dedup_shutdown(void)
{
	pthread_mutex_lock(&g.lock);
	g.shut = true;
	g.nranges = 0;
	disconnect_locked();
	pthread_mutex_unlock(&g.lock);
}

/* ---- ballooning ------------------------------------------------------------ */

/* Tell the daemon how this process can be ballooned and how far it got.
 * g.lock held, connected. 0 (also when there is nothing to say) or -errno. */
static int send_balloon_info_locked(void)
{
	struct dd_msg_balloon_info m = { 0 };

	pthread_mutex_lock(&bl.lock);
	m.backend = bl.fn ? DD_BACKEND_CALLBACK : (uint32_t)bl.backend;
	if (bl.backend != DEDUP_BALLOON_NONE) /* a VMM binding wins over a handler */
		m.backend = (uint32_t)bl.backend;
	m.status = bl.status;
	m.bytes = bl.bytes;
	memcpy(m.path, bl.path, sizeof(m.path));
	pthread_mutex_unlock(&bl.lock);
	if (m.backend == DD_BACKEND_NONE)
		return 0;
	dd_msg_init(&m.h, DD_MSG_BALLOON_INFO, sizeof(m), ++g.seq);
	return request(&m, sizeof(m), -1, NULL);
}

/* 0 when not connected (the info goes out when it connects), else the
 * daemon's answer. */
static int report_balloon(void)
{
	int r = 0;

	pthread_mutex_lock(&g.lock);
	if (g.ctl >= 0)
		r = send_balloon_info_locked();
	if (r == -ECONNRESET || r == -EPIPE)
		disconnect_locked();
	pthread_mutex_unlock(&g.lock);
	return r;
}

static void *balloon_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&bl.lock);
	for (;;) {
		dedup_balloon_fn fn;
		void *fa;
		uint64_t want;
		int64_t got;

		while (!bl.pending)
			pthread_cond_wait(&bl.cv, &bl.lock);
		bl.pending = false;
		fn = bl.fn;
		fa = bl.arg;
		want = bl.want;
		if (!fn)
			continue;
		pthread_mutex_unlock(&bl.lock);
		got = fn(want, fa);
		pthread_mutex_lock(&bl.lock);
		if (got < 0) {
			bl.status = (int32_t)got;
		} else {
			bl.status = 0;
			bl.bytes = got;
		}
		pthread_mutex_unlock(&bl.lock);
		(void)report_balloon();
		pthread_mutex_lock(&bl.lock);
	}
	return NULL;
}

/* On the agent thread: no blocking beyond bl.lock, which nobody holds long. */
static int balloon_hook(uint64_t bytes)
{
	int r = 0;

	pthread_mutex_lock(&bl.lock);
	if (!bl.fn || !bl.thread_up) {
		r = -ENOTSUP;
	} else {
		bl.want = bytes;
		bl.pending = true;
		pthread_cond_signal(&bl.cv);
	}
	pthread_mutex_unlock(&bl.lock);
	return r;
}

int dedup_set_balloon_handler(dedup_balloon_fn fn, void *arg)
{
	int r = 0;

	pthread_mutex_lock(&bl.lock);
	bl.fn = fn;
	bl.arg = arg;
	if (fn && !bl.thread_up) {
		pthread_attr_t attr;
		pthread_t t;

		pthread_attr_init(&attr);
		pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
		r = -pthread_create(&t, &attr, balloon_main, NULL);
		pthread_attr_destroy(&attr);
		bl.thread_up = r == 0;
		if (r == 0)
			pthread_setname_np(t, "dedup-balloon");
	}
	if (fn && bl.bytes < 0)
		bl.bytes = 0;
	pthread_mutex_unlock(&bl.lock);
	dd_agent_set_balloon_hook(balloon_hook);
	if (r == 0)
		r = report_balloon();
	return r;
}

int dedup_set_balloon_backend(int backend, const char *path)
{
	size_t len = path ? strlen(path) : 0;

	if (backend == DEDUP_BALLOON_NONE) {
		len = 0;
	} else if ((backend != DEDUP_BALLOON_QMP && backend != DEDUP_BALLOON_FIRECRACKER &&
		    backend != DEDUP_BALLOON_CLOUD_HYPERVISOR) ||
		   !len || len >= DD_BALLOON_PATH_MAX) {
		set_err("bad balloon backend %d or socket path", backend);
		return -EINVAL;
	}
	pthread_mutex_lock(&bl.lock);
	bl.backend = backend;
	memset(bl.path, 0, sizeof(bl.path));
	memcpy(bl.path, path ? path : "", len);
	pthread_mutex_unlock(&bl.lock);
	return report_balloon();
}

/* ---- discarding ------------------------------------------------------------ */

/*
 * After MADV_DONTNEED, mincore() tells the two kinds of page apart: an
 * anonymous page is gone (0), a page of a private mapping of the store is
 * still in the store's page cache (1) and would be read again. Map fresh
 * anonymous memory over the runs of those. A run another thread wrote into
 * meanwhile loses that write, as if it had come before the discard.
 */
static int renew_store_pages(uint64_t lo, uint64_t hi)
{
	unsigned char vec[512];

	for (uint64_t a = lo; a < hi;) {
		uint64_t n = (hi - a) / 4096 < sizeof(vec) ? (hi - a) / 4096 : sizeof(vec);

		if (mincore((void *)(uintptr_t)a, n * 4096, vec) < 0)
			return -errno;
		for (uint64_t i = 0; i < n;) {
			uint64_t j = i;

			if (!(vec[i] & 1)) {
				i++;
				continue;
			}
			while (j < n && (vec[j] & 1))
				j++;
			if (mmap((void *)(uintptr_t)(a + i * 4096), (j - i) * 4096,
				 PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
				 0) == MAP_FAILED)
				return -errno;
			i = j;
		}
		a += n * 4096;
	}
	return 0;
}

int dedup_discard(void *addr, size_t len)
{
	uint64_t a = (uintptr_t)addr, end;
	int r = 0;

	len = (len + 4095) & ~(size_t)4095;
	if (a % 4096 || a + len < a) {
		set_err("dedup_discard: %p+%zu is not page aligned", addr, len);
		return -EINVAL;
	}
	if (madvise(addr, len, MADV_DONTNEED) < 0) {
		set_err("dedup_discard: madvise: %s", strerror(errno));
		return -errno;
	}
	end = a + len;
	pthread_mutex_lock(&g.lock);
	for (size_t i = 0; i < g.nranges && r == 0; i++) {
		uint64_t lo = g.ranges[i].addr > a ? g.ranges[i].addr : a;
		uint64_t hi = g.ranges[i].addr + g.ranges[i].len < end
				      ? g.ranges[i].addr + g.ranges[i].len
				      : end;

		if (lo < hi)
			r = renew_store_pages(lo, hi);
	}
	pthread_mutex_unlock(&g.lock);
	if (r < 0)
		set_err("dedup_discard: %s", strerror(-r));
	return r;
}
