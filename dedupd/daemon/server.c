// SPDX-License-Identifier: MIT
/*
 * dedupd's main loop. One epoll set holds the listening socket, a signalfd and
 * every connection that is not an agent channel. A connection's first message
 * says what it is (proto.h): a client (HELLO, with its userfaultfd), a
 * client's agent (AGENT_HELLO: taken out of the loop and given to the scanner,
 * which alone talks on it, under the client's lock), or dedupctl (ADMIN,
 * answered with JSON). Anything malformed gets an error RESULT and the
 * connection is closed; nothing a peer sends can stop the loop.
 */
#include "dedupd/daemon/server.h"
#include "dedupd/daemon/admin.h"
#include "dedupd/daemon/log.h"
#include "dedupd/daemon/metrics.h"
#include "dedupd/daemon/pstate.h"
#include "dedupd/daemon/reclaim.h"
#include "dedupd/common/proto.h"
#include "dedupd/common/uffd.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 4096
/* One user may hold this many connections (each costs a few KiB and fds);
 * root is not limited. 2 per client process: a client uses two. */
#define MAX_CONNS_PER_UID 512
#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif

enum conn_kind { CONN_NEW, CONN_CLIENT, CONN_ADMIN };

struct agent_chan {
	int fd;
	int timeout_ms;
	atomic_bool hash; /* the agent answers HASH (HELLO flag), until it says it cannot */
	bool unmap;	  /* the agent takes DD_REMAP_ANON (HELLO flag) */
	atomic_bool verify; /* ... and DD_REMAP_VERIFY (HELLO flag; off once it cannot) */
	atomic_bool span;   /* ... and DD_REMAP_SPAN (HELLO flag; off once it cannot) */
	uint32_t seq;
	pthread_mutex_t lock;
	/* The scan thread that holds the client's lock may keep requests out:
	 * the lock above stays held while held > 0 (only that thread touches
	 * these fields). Answers come in order. */
	uint32_t held;
	uint32_t hash_seq, batch_seq; /* the HASH and REMAP still unanswered */
	int batch_rc;		      /* an old agent's batch, done at once: */
	uint32_t batch_n;	      /* its outcome, for agent_batch_recv() */
	int32_t batch_res[DD_BATCH_MAX];
};

struct conn {
	int fd;
	enum conn_kind kind;
	pid_t pid;
	uid_t uid;
	gid_t gid;
	int pidfd;	 /* the peer process at connect time (SO_PEERPIDFD); -1 unknown */
	bool privileged; /* root or a member of admin_group */
	uint64_t token;
	uint32_t hello_flags; /* DD_HELLO_* */
	struct dd_sclient *sc;
	struct agent_chan *agent;
	struct conn *next;
};

struct dd_server {
	struct dd_server_opts o;
	char *socket_path;
	int lfd, sfd, ep;
	int wdfd;               /* timerfd feeding the systemd watchdog */
	int spare_fd;           /* reserved for refusing connections when out of fds */
	unsigned int emfile_logged;
	struct dd_scanner *scanner;
	struct dd_pstate_ctl pc;
	struct dd_reclaim *reclaim;
	struct dd_metrics *metrics; /* NULL: neither /metrics nor a textfile */
	int mtfd;                   /* the metrics textfile timer (owned by metrics) */
	char mt_error[512];         /* the last textfile error logged, to log it once */
	struct conn *conns;
	unsigned int nconns;
	struct admin_ctx admin;
};

/* ---- configuration -------------------------------------------------------- */

int dd_server_load_config(struct dd_conf *c, const char *path, const char *const *overrides,
			  char *err, size_t errlen)
{
	int r = dd_conf_load(c, path, err, errlen);

	for (; r == 0 && overrides && *overrides; overrides++) {
		char key[128];
		const char *eq = strchr(*overrides, '=');

		snprintf(key, sizeof(key), "%.*s", (int)(eq - *overrides), *overrides);
		r = dd_conf_set(c, key, eq + 1, err, errlen);
	}
	return r;
}

void dd_server_knobs(const struct dd_conf *c, struct dd_scan_knobs *k)
{
	dd_scan_knobs_default(k);
	k->pages_to_scan = c->scan.pages_to_scan;
	k->sleep_millisecs = c->scan.sleep_millisecs;
	k->merge_batch_pages = c->scan.merge_batch_pages;
	k->max_vmas_per_client = c->scan.max_vmas_per_client;
	k->share_domain = (uint32_t)c->scan.share_domain;
	k->zero_pages = c->scan.zero_pages;
	k->thp_split = c->scan.thp == DD_CONF_THP_SPLIT;
	k->agent_hash = c->scan.agent_hash;
}

static void apply_conf(void *arg)
{
	struct dd_server *srv = arg;
	struct dd_scan_knobs k;

	dd_pstate_knobs(&srv->pc, srv->o.conf, &k);
	dd_scanner_set_knobs(srv->scanner, &k);
	dd_log_set_level(srv->o.conf->daemon.log_level);
	if (srv->reclaim)
		dd_reclaim_configure(srv->reclaim, srv->o.conf);
}

/* Every pressure tick: the reclaim thread acts on the state and free memory. */
static void reclaim_pressure(struct dd_server *srv)
{
	const struct dd_pressure_snapshot *ps = srv->pc.p ? dd_pressure_get(srv->pc.p) : NULL;

	if (ps && ps->free_valid && srv->reclaim)
		dd_reclaim_pressure(srv->reclaim, ps->state, ps->total_bytes, ps->free_bytes);
}

static void log_change(const char *key, const char *old_value, const char *new_value,
		       bool applied, void *arg)
{
	if (applied)
		log_info("reload: %s = %s (was %s)", key, new_value, old_value);
	else
		log_warning("reload: %s = %s needs a restart; keeping %s", key, new_value,
			    old_value);
}

static void reload(struct dd_server *srv)
{
	struct dd_conf next;
	struct timespec ts;
	char err[1024];
	int r;


	clock_gettime(CLOCK_MONOTONIC, &ts);
	sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu",
		   (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000);
	dd_conf_init(&next);
	r = dd_server_load_config(&next, srv->o.config_path, srv->o.overrides, err, sizeof(err));
	if (r < 0) {
		log_error("reload: %s; keeping the running configuration", err);
	} else {
		r = dd_conf_apply_reload(srv->o.conf, &next, log_change, NULL);
		if (r < 0)
			log_error("reload: out of memory; keeping the running configuration");
		else
			apply_conf(srv);
		dd_pstate_reconfigure(&srv->pc, srv->o.conf);
		if (srv->metrics)
			dd_metrics_set_textfile(srv->metrics, srv->o.conf->metrics.textfile,
						srv->o.conf->metrics.textfile_interval_sec);
		log_info("configuration reloaded");
	}
	dd_conf_free(&next);
	sd_notify(0, "READY=1");
}

static void watchdog_tick(struct dd_server *srv)
{
	struct dd_scan_stats st;
	uint64_t n;

	if (read(srv->wdfd, &n, sizeof(n)) < 0)
		return;
	dd_scanner_stats(srv->scanner, &st);
	sd_notifyf(0, "WATCHDOG=1\nSTATUS=%llu clients, %llu pages sharing, %llu zero pages, "
		   "%lld MiB saved net",
		   (unsigned long long)st.clients, (unsigned long long)st.pages_sharing,
		   (unsigned long long)st.zero_pages, (long long)(st.bytes_saved_net >> 20));
}

/* A timerfd at half the watchdog interval systemd asked for, or -1. */
static int watchdog_timer(const struct dd_conf *c)
{
	struct itimerspec its = { 0 };
	uint64_t usec = 0;
	int fd;

	if (!c->daemon.watchdog || sd_watchdog_enabled(0, &usec) <= 0 || !usec)
		return -1;
	fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	if (fd < 0)
		return -1;
	usec /= 2;
	its.it_interval.tv_sec = (time_t)(usec / 1000000);
	its.it_interval.tv_nsec = (long)(usec % 1000000) * 1000;
	its.it_value = its.it_interval;
	timerfd_settime(fd, 0, &its, NULL);
	return fd;
}

/* ---- metrics ----------------------------------------------------------------- */

/* The HTTP thread cannot read the pressure module: give it a copy. */
static void metrics_pressure(struct dd_server *srv)
{
	if (srv->metrics)
		dd_metrics_set_pressure(srv->metrics, srv->pc.p ? dd_pressure_get(srv->pc.p) : NULL,
					srv->pc.transitions);
}

static void metrics_textfile(struct dd_server *srv)
{
	char err[512];
	int r = dd_metrics_textfile_tick(srv->metrics, err, sizeof(err));

	if (r < 0 && strcmp(err, srv->mt_error)) {
		log_warning("%s, ignoring", err);
		snprintf(srv->mt_error, sizeof(srv->mt_error), "%s", err);
	} else if (r == 0 && srv->mt_error[0]) {
		log_info("metrics textfile %s written again", srv->o.conf->metrics.textfile);
		srv->mt_error[0] = 0;
	}
}

/*
 * Start the /metrics listener and the textfile timer. An address set on the
 * command line or in the file must work; the built-in default is taken only
 * if free, so that a second dedupd (tests, a demo next to the service) runs.
 */
static int metrics_start(struct dd_server *srv)
{
	const struct dd_conf_metrics *mc = &srv->o.conf->metrics;
	struct dd_metrics_opts mo = { .scanner = srv->scanner, .listen = mc->listen,
				      .textfile = mc->textfile,
				      .textfile_interval_sec = mc->textfile_interval_sec };
	char err[512];

	srv->metrics = dd_metrics_new(&mo, err, sizeof(err));
	if (!srv->metrics && mc->listen[0] && !srv->o.metrics_listen_required && errno != ENOMEM) {
		log_warning("%s; running without /metrics (this is the built-in default: set "
			    "[metrics] listen to another address, or \"\" to turn it off), ignoring",
			    err);
		mo.listen = NULL;
		srv->metrics = dd_metrics_new(&mo, err, sizeof(err));
	}
	if (!srv->metrics) {
		log_error("%s", err);
		return -EINVAL;
	}
	srv->mtfd = dd_metrics_textfile_fd(srv->metrics);
	metrics_pressure(srv);
	if (dd_metrics_address(srv->metrics)[0])
		log_info("metrics at http://%s/metrics", dd_metrics_address(srv->metrics));
	return 0;
}

/* ---- agent channel (runs on the scan thread) ---------------------------- */

/* Take and give back the channel on the scan thread, which may keep it
 * across calls while requests are out (a->held). */
static void chan_hold(struct agent_chan *a)
{
	if (!a->held++)
		pthread_mutex_lock(&a->lock);
}

static void chan_release(struct agent_chan *a)
{
	if (!--a->held)
		pthread_mutex_unlock(&a->lock);
}

/*
 * Wait for the agent's answer of type want to request seq (channel held)
 * into buf (DD_MSG_MAX bytes), skipping late answers to earlier requests
 * that timed out. 0, or -errno.
 */
static int agent_wait(struct agent_chan *a, uint16_t want, uint32_t seq, void *buf)
{
	const struct dd_msg_hdr *h = buf;
	ssize_t got;

	for (;;) {
		got = dd_msg_recv(a->fd, buf, DD_MSG_MAX, NULL, a->timeout_ms);
		if (got <= 0)
			return got == 0 ? -ECONNRESET : (int)got;
		if (h->type == want && h->seq == seq)
			return 0;
	}
}

/* Send msg to the agent as its next request (channel held). 0 or -errno. */
static int agent_send(struct agent_chan *a, struct dd_msg_hdr *msg, size_t len)
{
	int r;

	msg->seq = ++a->seq;
	r = dd_msg_send(a->fd, msg, len, -1);
	return r < 0 ? r : 0;
}

/* The agent's answer to REMAP or ZAP request seq of n entries (channel held):
 * one result per entry in res. 0, or -errno. */
static int agent_batch_reply(struct agent_chan *a, uint32_t seq, uint32_t n, int32_t *res)
{
	union {
		char raw[DD_MSG_MAX];
		struct dd_msg_agent_reply r;
	} u;
	int r = agent_wait(a, DD_MSG_AGENT_REPLY, seq, u.raw);

	if (r < 0)
		return r;
	if (u.r.n != n)
		return -EBADMSG;
	memcpy(res, u.r.res, n * sizeof(*res));
	return 0;
}

/* Send one REMAP or ZAP message of n entries (channel held). 0 or -errno. */
static int agent_batch_send_msg(struct agent_chan *a, uint16_t type,
				const struct dd_remap_entry *e, uint32_t n)
{
	size_t len = sizeof(struct dd_msg_batch) + n * sizeof(*e);
	union {
		char raw[DD_MSG_MAX];
		struct dd_msg_batch b;
	} u;

	dd_msg_init(&u.b.h, type, len, 0);
	u.b.n = n;
	u.b.pad = 0;
	if (n)
		memcpy(u.b.e, e, n * sizeof(*e));
	return agent_send(a, &u.b.h, len);
}

/* Send msg (channel held) and wait for its AGENT_REPLY of n results. */
static int agent_call(struct agent_chan *a, struct dd_msg_hdr *msg, size_t len, uint32_t n,
		      int32_t *res)
{
	int r = agent_send(a, msg, len);

	return r < 0 ? r : agent_batch_reply(a, a->seq, n, res);
}

/* The answer to REMAP or ZAP request seq (agent_batch_reply()). An entry
 * the agent could not compare because it can no longer read its pages in
 * place (the application took over SIGSEGV) turns its compares off: the
 * daemon compares them from now on. A span it cannot map (-ENODEV: no uffd
 * of its own, or a kernel that will not) turns spans off. */
static int agent_remap_reply(struct agent_chan *a, uint32_t seq, uint32_t n, int32_t *res)
{
	int r = agent_batch_reply(a, seq, n, res);

	for (uint32_t i = 0; r == 0 && i < n; i++) {
		if (res[i] == -EOPNOTSUPP)
			atomic_store(&a->verify, false);
		if (res[i] == -ENODEV)
			atomic_store(&a->span, false);
	}
	return r;
}

static int agent_batch_msg(struct agent_chan *a, uint16_t type, const struct dd_remap_entry *e,
			   uint32_t n, int32_t *res)
{
	int r = agent_batch_send_msg(a, type, e, n);

	return r < 0 ? r : agent_remap_reply(a, a->seq, n, res);
}

/*
 * A batch of remaps and zaps, answered (channel held): one REMAP to an agent
 * that takes DD_REMAP_* flags; to an older one, a REMAP of the remaps (flags
 * cleared) and a ZAP of the zaps, the results put back in entry order.
 */
static int agent_batch_held(struct agent_chan *a, const struct dd_remap_entry *e, uint32_t n,
			    int32_t *res)
{
	struct dd_remap_entry part[2][DD_BATCH_MAX];
	int32_t pres[2][DD_BATCH_MAX];
	uint32_t np[2] = { 0, 0 }, at[2] = { 0, 0 };
	int r = 0;

	if (a->unmap || !n) /* n = 0: a ping, answered once earlier requests are done */
		return agent_batch_msg(a, DD_MSG_REMAP, e, n, res);
	for (uint32_t i = 0; i < n; i++) {
		int z = (e[i].flags & DD_REMAP_ZAP) != 0;

		part[z][np[z]] = e[i];
		part[z][np[z]++].flags = 0;
	}
	for (int z = 0; z < 2 && r == 0; z++)
		if (np[z])
			r = agent_batch_msg(a, z ? DD_MSG_ZAP : DD_MSG_REMAP, part[z], np[z], pres[z]);
	if (r < 0)
		return r;
	for (uint32_t i = 0; i < n; i++) {
		int z = (e[i].flags & DD_REMAP_ZAP) != 0;

		res[i] = pres[z][at[z]++];
	}
	return 0;
}

static int agent_batch(void *p, const struct dd_remap_entry *e, uint32_t n, int32_t *res)
{
	struct agent_chan *a = p;
	int r;

	if (n > DD_BATCH_MAX)
		return -E2BIG;
	chan_hold(a);
	r = agent_batch_held(a, e, n, res);
	chan_release(a);
	return r;
}

/*
 * A batch of remaps and zaps, without waiting for the answer: the scan
 * thread goes on with its next pages while the agent remaps. An older agent
 * (two messages) is answered here already. On 0 the channel stays held until
 * agent_batch_recv(); answers come in order, so a HASH sent meanwhile is
 * answered after it. -errno: nothing sent, nothing held.
 */
static int agent_batch_send(void *p, const struct dd_remap_entry *e, uint32_t n)
{
	struct agent_chan *a = p;
	int r;

	if (n > DD_BATCH_MAX || !n)
		return n ? -E2BIG : -EINVAL;
	chan_hold(a);
	a->batch_n = n;
	if (!a->unmap) {
		a->batch_seq = 0;
		a->batch_rc = agent_batch_held(a, e, n, a->batch_res);
		return 0;
	}
	r = agent_batch_send_msg(a, DD_MSG_REMAP, e, n);
	if (r < 0) {
		chan_release(a);
		return r;
	}
	a->batch_seq = a->seq;
	return 0;
}

/* The answer to agent_batch_send(): one result per entry in res[0..n), and
 * the channel given back. 0, or -errno (no answer: outcome unknown). */
static int agent_batch_recv(void *p, uint32_t n, int32_t *res)
{
	struct agent_chan *a = p;
	int r;

	if (n != a->batch_n) {
		r = -EINVAL;
	} else if (a->batch_seq) {
		r = agent_remap_reply(a, a->batch_seq, n, res);
	} else {
		r = a->batch_rc;
		if (r == 0)
			memcpy(res, a->batch_res, n * sizeof(*res));
	}
	chan_release(a);
	return r;
}

/*
 * Ask the agent for the checksums of n ranges (npages pages in all) of its
 * memory, without waiting: the scan thread works on the batch before while
 * the agent hashes. On success the channel stays locked until
 * agent_hash_recv(), which the same thread must call before any other
 * request to this agent. -EOPNOTSUPP if the agent does not hash (the caller
 * copies pages instead), else -errno (nothing sent, nothing locked).
 */
static int agent_hash_send(void *p, const struct dd_hash_range *e, uint32_t n, uint32_t npages)
{
	struct agent_chan *a = p;
	size_t len = sizeof(struct dd_msg_hash) + n * sizeof(*e);
	union {
		char raw[DD_MSG_MAX];
		struct dd_msg_hash m;
	} u;
	int r;

	if (!atomic_load(&a->hash))
		return -EOPNOTSUPP;
	if (n > DD_HASH_MAX || npages > DD_HASH_MAX)
		return -E2BIG;
	dd_msg_init(&u.m.h, DD_MSG_HASH, len, 0);
	u.m.n = n;
	u.m.pad = 0;
	memcpy(u.m.e, e, n * sizeof(*e));
	chan_hold(a);
	r = agent_send(a, &u.m.h, len);
	if (r < 0)
		chan_release(a);
	else
		a->hash_seq = a->seq;
	return r;
}

/*
 * The answer to agent_hash_send(): res[0..npages) and the agent's CPU time,
 * and the channel unlocked. 0, or -errno: -EOPNOTSUPP if the agent does not
 * hash after all, else no answer came.
 */
static int agent_hash_recv(void *p, uint32_t npages, struct dd_hash_result *res,
			   uint64_t *cpu_ns)
{
	struct agent_chan *a = p;
	union {
		char raw[DD_MSG_MAX];
		struct dd_msg_hash_reply r;
	} u;
	int r = agent_wait(a, DD_MSG_HASH_REPLY, a->hash_seq, u.raw);

	if (r < 0) {
		/* no answer */
	} else if (u.r.status < 0) {
		r = u.r.status == -EOPNOTSUPP ? -EOPNOTSUPP : -EPROTO;
	} else if (u.r.n != npages) {
		r = -EBADMSG;
	} else {
		memcpy(res, u.r.res, npages * sizeof(*res));
		*cpu_ns = u.r.cpu_ns;
	}
	chan_release(a);
	if (r == -EOPNOTSUPP || r == -EPROTO || r == -EBADMSG) {
		/* The application took over SIGSEGV, or the agent is broken:
		 * copy its pages from now on. */
		atomic_store(&a->hash, false);
		r = -EOPNOTSUPP;
	}
	return r;
}

static bool agent_verifies(void *p)
{
	struct agent_chan *a = p;

	return atomic_load(&a->verify) && atomic_load(&a->hash);
}

static bool agent_spans(void *p)
{
	struct agent_chan *a = p;

	return atomic_load(&a->span);
}

/* On the reclaim thread: ask the agent to set the libdedup balloon. */
static int agent_balloon(void *p, uint64_t bytes)
{
	struct agent_chan *a = p;
	struct dd_msg_balloon m = { .bytes = bytes };
	int32_t res = 0;
	int r;

	dd_msg_init(&m.h, DD_MSG_BALLOON, sizeof(m), 0);
	pthread_mutex_lock(&a->lock);
	r = agent_call(a, &m.h, sizeof(m), 1, &res);
	pthread_mutex_unlock(&a->lock);
	return r < 0 ? r : res;
}

static int agent_send_store(void *p, uint32_t domain, int memfd)
{
	struct agent_chan *a = p;
	struct dd_msg_store m = { .domain = domain };
	int r;

	chan_hold(a);
	dd_msg_init(&m.h, DD_MSG_STORE, sizeof(m), ++a->seq);
	r = dd_msg_send(a->fd, &m, sizeof(m), memfd);
	chan_release(a);
	return r;
}

static void agent_free(struct agent_chan *a)
{
	if (!a)
		return;
	close(a->fd);
	pthread_mutex_destroy(&a->lock);
	free(a);
}

/* ---- connections --------------------------------------------------------- */

static void conn_close(struct dd_server *srv, struct conn *c)
{
	struct conn **pp;

	for (pp = &srv->conns; *pp; pp = &(*pp)->next)
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	srv->nconns--;
	if (c->sc) {
		log_info("client %d (id %llu) disconnected", (int)c->pid,
			 (unsigned long long)dd_sclient_id(c->sc));
		if (srv->reclaim) /* waits out an action */
			dd_reclaim_remove(srv->reclaim, dd_sclient_id(c->sc));
		dd_scanner_remove_client(srv->scanner, c->sc); /* waits out a merge */
	}
	agent_free(c->agent);
	epoll_ctl(srv->ep, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	if (c->pidfd >= 0)
		close(c->pidfd);
	free(c);
}

static int on_hello(struct dd_server *srv, struct conn *c, const struct dd_msg_hello *m, int fd)
{
	struct dd_msg_hello_ok ok = { 0 };

	if (c->kind != CONN_NEW) {
		if (fd >= 0)
			close(fd);
		return dd_msg_send_result(c->fd, m->h.seq, -EPROTO, 0, "HELLO sent twice");
	}
	if (fd < 0 || !dd_is_userfaultfd(fd)) {
		if (fd >= 0)
			close(fd);
		return dd_msg_send_result(c->fd, m->h.seq, -EBADF, 0,
					  "HELLO must carry the client's userfaultfd");
	}
	c->sc = dd_scanner_add_client(srv->scanner, c->pid, c->uid, fd, NULL);
	if (!c->sc) {
		int e = errno;
		close(fd);
		return dd_msg_send_result(c->fd, m->h.seq, -e, 0, "cannot track this process");
	}
	/* The scanner opened /proc/PID/{pagemap,mem,maps} by number: make sure
	 * that number is still the process that connected, not a new one that
	 * reused it after the peer died. */
	if (c->pidfd < 0 || syscall(SYS_pidfd_send_signal, c->pidfd, 0, NULL, 0) < 0) {
		dd_scanner_remove_client(srv->scanner, c->sc);
		c->sc = NULL;
		return dd_msg_send_result(c->fd, m->h.seq, -ESRCH, 0,
					  "the connecting process is gone");
	}
	c->kind = CONN_CLIENT;
	c->hello_flags = m->flags;
	if (getrandom(&c->token, sizeof(c->token), 0) != sizeof(c->token))
		c->token = ((uint64_t)rand() << 32) ^ (uint64_t)rand();
	ok.client_id = dd_sclient_id(c->sc);
	ok.token = c->token;
	dd_msg_init(&ok.h, DD_MSG_HELLO_OK, sizeof(ok), m->h.seq);
	log_info("client %d (uid %u) connected as id %llu", (int)c->pid, (unsigned)c->uid,
		 (unsigned long long)ok.client_id);
	return dd_msg_send(c->fd, &ok, sizeof(ok), -1);
}

/* The agent connection of a client: hand it to the scanner. 1 if taken. */
static int on_agent_hello(struct dd_server *srv, struct conn *c,
			  const struct dd_msg_agent_hello *m)
{
	struct conn *owner;
	struct agent_chan *a;

	for (owner = srv->conns; owner; owner = owner->next)
		if (owner->kind == CONN_CLIENT && owner->sc &&
		    dd_sclient_id(owner->sc) == m->client_id)
			break;
	if (c->kind != CONN_NEW || !owner || owner->token != m->token || owner->pid != c->pid ||
	    owner->agent) {
		dd_msg_send_result(c->fd, m->h.seq, -EPERM, 0,
				   "AGENT_HELLO does not match a client of this process");
		return -EPERM;
	}
	a = calloc(1, sizeof(*a));
	if (!a)
		return -ENOMEM;
	pthread_mutex_init(&a->lock, NULL);
	a->fd = c->fd;
	a->timeout_ms = (int)srv->o.conf->daemon.agent_timeout_millisecs;
	atomic_store(&a->hash, (owner->hello_flags & DD_HELLO_AGENT_HASH) != 0);
	a->unmap = (owner->hello_flags & DD_HELLO_AGENT_UNMAP) != 0;
	atomic_store(&a->verify, a->unmap && (owner->hello_flags & DD_HELLO_AGENT_VERIFY));
	atomic_store(&a->span, a->unmap && (owner->hello_flags & DD_HELLO_AGENT_SPAN));
	if (dd_msg_send_result(c->fd, m->h.seq, 0, 0, NULL) < 0) {
		pthread_mutex_destroy(&a->lock);
		free(a);
		return -EPIPE;
	}
	epoll_ctl(srv->ep, EPOLL_CTL_DEL, c->fd, NULL);
	c->fd = -1; /* now owned by the channel */
	owner->agent = a;
	dd_scanner_set_agent(srv->scanner, owner->sc, a);
	if (dd_reclaim_add(srv->reclaim, m->client_id, owner->pid, owner->uid, a) < 0)
		log_warning("client %d: out of memory: it will not be reclaimed from",
			    (int)owner->pid);
	return 1;
}

static int on_register(struct dd_server *srv, struct conn *c, const struct dd_msg_register *m)
{
	char err[512] = "";
	int r;

	if (c->kind != CONN_CLIENT)
		return dd_msg_send_result(c->fd, m->h.seq, -EPROTO, 0, "REGISTER before HELLO");
	if (!c->agent)
		return dd_msg_send_result(c->fd, m->h.seq, -ENOTCONN, 0,
					  "the client's agent is not connected");
	r = dd_reclaim_register(srv->reclaim, dd_sclient_id(c->sc), m->shares, m->min_bytes, err,
				sizeof(err));
	if (r == -ESRCH)
		r = 0; /* not tracked for reclaim (out of memory at AGENT_HELLO) */
	if (r == 0)
		r = dd_scanner_register(srv->scanner, c->sc, m->addr, m->len, m->policy, m->salt,
					err, sizeof(err));
	if (r < 0)
		log_info("client %d: register refused: %s", (int)c->pid, err);
	else
		log_debug("client %d registered %#llx+%#llx", (int)c->pid,
			  (unsigned long long)m->addr, (unsigned long long)m->len);
	return dd_msg_send_result(c->fd, m->h.seq, r, 0, r < 0 ? err : NULL);
}

static int on_unregister(struct dd_server *srv, struct conn *c,
			 const struct dd_msg_unregister *m)
{
	char err[256] = "";
	int r;

	if (c->kind != CONN_CLIENT)
		return dd_msg_send_result(c->fd, m->h.seq, -EPROTO, 0, "UNREGISTER before HELLO");
	r = dd_scanner_unregister(srv->scanner, c->sc, m->addr, m->len, err, sizeof(err));
	return dd_msg_send_result(c->fd, m->h.seq, r, 0, r < 0 ? err : NULL);
}

static int on_balloon_info(struct dd_server *srv, struct conn *c,
			   const struct dd_msg_balloon_info *m)
{
	char err[512] = "", path[DD_BALLOON_PATH_MAX];
	int r;

	if (c->kind != CONN_CLIENT || !c->agent)
		return dd_msg_send_result(c->fd, m->h.seq, -EPROTO, 0,
					  "BALLOON_INFO before the agent connected");
	if (!memchr(m->path, 0, sizeof(m->path)))
		return dd_msg_send_result(c->fd, m->h.seq, -EINVAL, 0,
					  "balloon socket path not NUL-terminated");
	memcpy(path, m->path, sizeof(path));
	r = dd_reclaim_balloon_info(srv->reclaim, dd_sclient_id(c->sc), m->backend, path,
				    m->bytes, m->status, err, sizeof(err));
	if (r < 0)
		log_info("client %d: balloon info refused: %s", (int)c->pid, err);
	return dd_msg_send_result(c->fd, m->h.seq, r, 0, r < 0 ? err : NULL);
}

/* One message on a connection. <0: close it. */
static int on_message(struct dd_server *srv, struct conn *c)
{
	static char buf[DD_MSG_MAX];
	const struct dd_msg_hdr *h = (const void *)buf;
	int fd = -1, r;
	ssize_t n;

	n = dd_msg_recv(c->fd, buf, sizeof(buf), &fd, 0);
	if (n == 0)
		return -ECONNRESET;
	if (n < 0) {
		if (n == -EAGAIN || n == -ETIMEDOUT)
			return 0;
		log_info("peer %d sent a malformed message (%s), closing", (int)c->pid,
			 strerror((int)-n));
		dd_msg_send_result(c->fd, 0, (int)n, 0, "malformed message");
		return (int)n;
	}
	if (fd >= 0 && h->type != DD_MSG_HELLO) {
		close(fd);
		fd = -1;
	}
	switch (h->type) {
	case DD_MSG_HELLO:
		r = on_hello(srv, c, (const void *)buf, fd);
		break;
	case DD_MSG_AGENT_HELLO:
		r = on_agent_hello(srv, c, (const void *)buf);
		break;
	case DD_MSG_REGISTER:
		r = on_register(srv, c, (const void *)buf);
		break;
	case DD_MSG_UNREGISTER:
		r = on_unregister(srv, c, (const void *)buf);
		break;
	case DD_MSG_BALLOON_INFO:
		r = on_balloon_info(srv, c, (const void *)buf);
		break;
	case DD_MSG_ADMIN:
		if (c->kind == CONN_NEW)
			c->kind = CONN_ADMIN;
		r = dd_admin_handle(&srv->admin, c->fd, c->privileged, (const void *)buf);
		break;
	default:
		dd_msg_send_result(c->fd, h->seq, -EPROTO, 0, "unexpected message type");
		r = -EPROTO;
	}
	return r;
}

/* Root, or in admin_group by primary or supplementary group (SO_PEERGROUPS). */
static bool is_privileged(const struct dd_server *srv, int fd, const struct ucred *cred)
{
	const char *name = srv->o.conf->daemon.admin_group;
	gid_t groups[256];
	socklen_t len = sizeof(groups);
	struct group *g;
	char *end;
	gid_t gid;

	if (cred->uid == 0)
		return true;
	if (!name[0])
		return false;
	gid = (gid_t)strtoul(name, &end, 10);
	if (*end || end == name) {
		g = getgrnam(name);
		if (!g)
			return false;
		gid = g->gr_gid;
	}
	if (cred->gid == gid)
		return true;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) < 0)
		return false;
	for (size_t i = 0; i < len / sizeof(gid_t); i++)
		if (groups[i] == gid)
			return true;
	return false;
}

static unsigned int conns_of(const struct dd_server *srv, uid_t uid)
{
	unsigned int n = 0;

	for (const struct conn *c = srv->conns; c; c = c->next)
		n += c->uid == uid;
	return n;
}

/* A pidfd of the peer: the kernel's (SO_PEERPIDFD, Linux 6.5), else opened now. */
static int peer_pidfd(int fd, pid_t pid)
{
	int pfd = -1;
	socklen_t len = sizeof(pfd);

	if (getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pfd, &len) == 0 && pfd >= 0)
		return pfd;
	return (int)syscall(SYS_pidfd_open, pid, 0);
}

static void on_accept(struct dd_server *srv)
{
	struct epoll_event ev = { .events = EPOLLIN };
	struct ucred cred;
	socklen_t cl = sizeof(cred);
	struct conn *c;
	int fd;

	fd = accept4(srv->lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
	if (fd < 0 && (errno == EMFILE || errno == ENFILE) && srv->spare_fd >= 0) {
		/* Out of fds: use the reserved one to take the connection off
		 * the queue and refuse it, rather than spin on a listening
		 * socket that stays readable. */
		if (!srv->emfile_logged++)
			log_warning("out of file descriptors: refusing new connections");
		close(srv->spare_fd);
		fd = accept4(srv->lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd >= 0) {
			dd_msg_send_result(fd, 0, -EMFILE, 0, "dedupd is out of file descriptors");
			close(fd);
		}
		srv->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
		return;
	}
	if (fd < 0)
		return;
	srv->emfile_logged = 0;
	if (srv->nconns >= MAX_CONNS || getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0 ||
	    !(c = calloc(1, sizeof(*c)))) {
		dd_msg_send_result(fd, 0, -EMFILE, 0, "too many connections");
		close(fd);
		return;
	}
	if (cred.uid != 0 && conns_of(srv, cred.uid) >= MAX_CONNS_PER_UID) {
		char msg[128];

		snprintf(msg, sizeof(msg), "too many connections from uid %u (at most %d)",
			 (unsigned)cred.uid, MAX_CONNS_PER_UID);
		dd_msg_send_result(fd, 0, -EMFILE, 0, msg);
		close(fd);
		free(c);
		return;
	}
	c->fd = fd;
	c->pid = cred.pid;
	c->uid = cred.uid;
	c->gid = cred.gid;
	c->pidfd = peer_pidfd(fd, cred.pid);
	c->privileged = is_privileged(srv, fd, &cred);
	c->next = srv->conns;
	srv->conns = c;
	srv->nconns++;
	ev.data.ptr = c;
	epoll_ctl(srv->ep, EPOLL_CTL_ADD, fd, &ev);
}

/* ---- socket ---------------------------------------------------------------- */

static int make_parent_dir(const char *path)
{
	char dir[PATH_MAX];
	char *slash;

	snprintf(dir, sizeof(dir), "%s", path);
	slash = strrchr(dir, '/');
	if (!slash || slash == dir)
		return 0;
	*slash = 0;
	if (mkdir(dir, 0755) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

static int listen_on(const char *path, mode_t mode, const char *group)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd, r;

	if (strlen(path) >= sizeof(sa.sun_path))
		return dd_log_errno(DD_LOG_ERR, -ENAMETOOLONG, "socket path %s", path);
	r = dd_sock_connect(path);
	if (r >= 0) {
		close(r);
		log_error("another dedupd is already listening on %s", path);
		return -EADDRINUSE;
	}
	r = make_parent_dir(path);
	if (r < 0)
		return dd_log_errno(DD_LOG_ERR, r, "cannot create the directory of %s", path);
	unlink(path); /* a stale socket: nobody answered on it */
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return dd_log_errno(DD_LOG_ERR, -errno, "socket");
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || chmod(path, mode) < 0 ||
	    listen(fd, 128) < 0) {
		r = -errno;
		close(fd);
		return dd_log_errno(DD_LOG_ERR, r, "cannot listen on %s", path);
	}
	if (group && *group) {
		struct group *g = getgrnam(group);
		char *end;
		long gid = g ? (long)g->gr_gid : strtol(group, &end, 10);

		if ((!g && (*end || gid < 0)) || chown(path, (uid_t)-1, (gid_t)gid) < 0) {
			close(fd);
			unlink(path);
			log_error("socket_group '%s': %s", group,
				  g || !*end ? strerror(errno) : "no such group");
			return -EINVAL;
		}
	}
	return fd;
}

struct dd_server *dd_server_new(const struct dd_server_opts *o)
{
	struct dd_scan_ops ops = { .batch = agent_batch,
				   .batch_send = agent_batch_send,
				   .batch_recv = agent_batch_recv,
				   .send_store = agent_send_store,
				   .hash_send = agent_hash_send,
				   .hash_recv = agent_hash_recv,
				   .agent_verifies = agent_verifies,
				   .agent_spans = agent_spans };
	struct dd_reclaim_ops rops = { .balloon = agent_balloon };
	struct epoll_event ev = { .events = EPOLLIN };
	struct dd_server *srv = calloc(1, sizeof(*srv));
	struct dd_scan_knobs knobs;
	sigset_t mask;
	int r;

	if (!srv)
		return NULL;
	srv->o = *o;
	srv->lfd = srv->sfd = srv->ep = srv->wdfd = srv->mtfd = -1;
	srv->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	srv->socket_path = strdup(o->conf->daemon.socket);
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGHUP);
	sigaddset(&mask, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &mask, NULL); /* before any thread starts */
	srv->sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
	srv->ep = epoll_create1(EPOLL_CLOEXEC);
	if (!srv->socket_path || srv->sfd < 0 || srv->ep < 0) {
		log_error("cannot set up the event loop: %s", strerror(errno));
		goto fail;
	}
	dd_server_knobs(o->conf, &knobs);
	srv->scanner = dd_scanner_new(&knobs, &ops);
	if (!srv->scanner) {
		log_error("cannot create the scanner: %s", strerror(errno));
		goto fail;
	}
	if (dd_pstate_start(&srv->pc, o->conf, srv->ep) < 0)
		goto fail;
	dd_pstate_knobs(&srv->pc, o->conf, &knobs);
	dd_scanner_set_knobs(srv->scanner, &knobs);
	/* /metrics before the control socket: once dedupctl can connect, a
	 * scrape works too. */
	if (metrics_start(srv) < 0)
		goto fail;
	srv->lfd = listen_on(srv->socket_path, o->conf->daemon.socket_mode,
			     o->conf->daemon.socket_group);
	if (srv->lfd < 0)
		goto fail;
	ev.data.ptr = &srv->mtfd;
	epoll_ctl(srv->ep, EPOLL_CTL_ADD, srv->mtfd, &ev);
	ev.data.ptr = &srv->lfd;
	epoll_ctl(srv->ep, EPOLL_CTL_ADD, srv->lfd, &ev);
	ev.data.ptr = &srv->sfd;
	epoll_ctl(srv->ep, EPOLL_CTL_ADD, srv->sfd, &ev);
	srv->admin.scanner = srv->scanner;
	srv->admin.socket_path = srv->socket_path;
	srv->admin.conf = o->conf;
	srv->admin.apply = apply_conf;
	srv->admin.apply_arg = srv;
	srv->admin.pc = &srv->pc;
	srv->admin.started = time(NULL);
	srv->admin.metrics_address = dd_metrics_address(srv->metrics);
	srv->wdfd = watchdog_timer(o->conf);
	if (srv->wdfd >= 0) {
		ev.data.ptr = &srv->wdfd;
		epoll_ctl(srv->ep, EPOLL_CTL_ADD, srv->wdfd, &ev);
	}
	r = dd_scanner_start(srv->scanner);
	if (r < 0) {
		dd_log_errno(DD_LOG_ERR, r, "cannot start the scanner threads");
		goto fail;
	}
	srv->reclaim = dd_reclaim_new(o->conf, srv->scanner, &rops);
	r = srv->reclaim ? dd_reclaim_start(srv->reclaim) : -errno;
	if (r < 0) {
		dd_log_errno(DD_LOG_ERR, r, "cannot start the reclaim thread");
		goto fail;
	}
	srv->admin.reclaim = srv->reclaim;
	dd_metrics_set_reclaim(srv->metrics, srv->reclaim);
	log_info("listening on %s (pages_to_scan %u, sleep_millisecs %u)", srv->socket_path,
		 knobs.pages_to_scan, knobs.sleep_millisecs);
	sd_notifyf(0, "READY=1\nSTATUS=listening on %s%s%s\nMAINPID=%d", srv->socket_path,
		   dd_metrics_address(srv->metrics)[0] ? ", metrics on " : "",
		   dd_metrics_address(srv->metrics), (int)getpid());
	return srv;
fail:
	dd_server_free(srv);
	return NULL;
}

int dd_server_run(struct dd_server *srv)
{
	struct epoll_event ev[64];

	for (;;) {
		int n = epoll_wait(srv->ep, ev, 64, -1);

		if (n < 0 && errno != EINTR)
			return dd_log_errno(DD_LOG_ERR, -errno, "epoll_wait");
		for (int i = 0; i < n; i++) {
			void *p = ev[i].data.ptr;

			if (p == &srv->lfd) {
				on_accept(srv);
			} else if (p == &srv->wdfd) {
				watchdog_tick(srv);
			} else if (p == &srv->mtfd) {
				metrics_textfile(srv);
			} else if ((char *)p >= (char *)srv->pc.src &&
				   (char *)p < (char *)(srv->pc.src + DD_PSTATE_MAX_SRC)) {
				if (dd_pstate_ready(&srv->pc, p))
					apply_conf(srv);
				metrics_pressure(srv);
				reclaim_pressure(srv);
			} else if (p == &srv->sfd) {
				struct signalfd_siginfo si;

				while (read(srv->sfd, &si, sizeof(si)) == sizeof(si)) {
					if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
						log_info("signal %d: shutting down", si.ssi_signo);
						sd_notify(0, "STOPPING=1");
						return 0;
					}
					if (si.ssi_signo == SIGHUP)
						reload(srv);
				}
			} else {
				struct conn *c = p;

				if (on_message(srv, c) < 0)
					conn_close(srv, c);
				else if (c->fd < 0) /* became an agent channel */
					conn_close(srv, c);
			}
		}
	}
}

void dd_server_free(struct dd_server *srv)
{
	if (!srv)
		return;
	/* The HTTP thread reads the scanner: stop it first. No textfile of a
	 * stopped daemon is left for node_exporter to serve. */
	dd_metrics_remove_textfile(srv->metrics);
	dd_metrics_free(srv->metrics);
	srv->metrics = NULL;
	/* Reclaim uses the scanner and the agents: it goes before them, and
	 * deflates every balloon and lifts every limit on its way out. */
	dd_reclaim_free(srv->reclaim);
	srv->reclaim = srv->admin.reclaim = NULL;
	if (srv->scanner)
		dd_scanner_stop(srv->scanner); /* no merge in flight after this */
	while (srv->conns)
		conn_close(srv, srv->conns);
	dd_scanner_free(srv->scanner);
	dd_pstate_stop(&srv->pc);
	if (srv->lfd >= 0) {
		close(srv->lfd);
		unlink(srv->socket_path);
	}
	if (srv->sfd >= 0)
		close(srv->sfd);
	if (srv->spare_fd >= 0)
		close(srv->spare_fd);
	if (srv->wdfd >= 0)
		close(srv->wdfd);
	if (srv->ep >= 0)
		close(srv->ep);
	free(srv->socket_path);
	free(srv);
}
