// SPDX-License-Identifier: MIT
/*
 * The reclaim engine (reclaim.h), ESX's memory manager in one thread.
 *
 *   struct rc_client  one connected client: its allocation parameters (from
 *                     its registration and its [client.NAME] section), its
 *                     active-memory estimate, what it holds (Pss), its balloon
 *                     backend and balloon, whether it is throttled, and its
 *                     last actions.
 *
 * Every tick (500 ms, or at once when the state changes) the thread:
 *  1. ends and restarts the sampling period when it is due: write-protected
 *     samples through the scanner (dd_scanner_sample_*), fed to dd_active;
 *  2. reads each client's Pss and, for VMM backends, the balloon and the
 *     guest's own statistics;
 *  3. in the high state undoes everything: balloons deflate, limits lift;
 *  4. otherwise plans the bytes that bring free memory back to the high
 *     threshold (dd_rc_need, less what inflating balloons will still free)
 *     over the clients that have an action in this state, by min-funding
 *     revocation with the idle tax (dd_rc_plan), and acts: soft inflates the
 *     victims' balloons, hard also pages out their cold pages, low also holds
 *     them at their target with a cgroup limit (released when the state is
 *     no longer low).
 * A backend that fails or stalls is marked unavailable for BACKOFF_MS and is
 * no longer eligible, so the next plan picks another victim.
 *
 * Locking: r->lock covers the client list and every field; the thread copies
 * what it needs, drops the lock for I/O (smaps, sockets, process_madvise,
 * cgroup files) and holds c->busy meanwhile, so dd_reclaim_remove() waits for
 * it before the server frees the agent channel.
 */
#include "dedupd/daemon/reclaim.h"
#include "dedupd/daemon/log.h"
#include "dedupd/common/proto.h"
#include "dedupd/reclaim/active.h"
#include "dedupd/reclaim/balloon.h"
#include "dedupd/reclaim/pageout.h"
#include "dedupd/reclaim/policy.h"
#include "dedupd/reclaim/throttle.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define TICK_MS 500
#define BACKOFF_MS 30000 /* a failed backend sits out this long */
#define STUCK_MS 10000	 /* a balloon short of its target this long is as big as it gets */
#define NACTIONS 8	 /* remembered per client */
#define PAGEOUT_IOV 1024
#define MIB ((uint64_t)1 << 20)
/* Reclaim aims this far above the high threshold: the pressure module needs
 * its threshold plus a 0.5 % margin to call the state high again. */
#define AIM_ABOVE_HIGH_PERCENT 1.0

struct rc_action {
	uint64_t at_ms; /* CLOCK_REALTIME */
	char text[160];
};

struct rc_client {
	uint64_t id;
	pid_t pid;
	uid_t uid;
	int pidfd;
	char comm[16];
	void *agent;
	bool busy, leaving, removed;
	/* parameters */
	char name[DD_CONF_NAME_MAX]; /* matching [client.NAME], "" none */
	uint32_t shares, req_shares;
	uint64_t min_bytes, max_bytes, req_min, admitted_min;
	/* balloon */
	int backend;		     /* enum dd_backend_kind in use */
	char path[DD_BALLOON_PATH_MAX];
	int want_backend;	     /* what match() chose; bound by the thread */
	char want_path[DD_BALLOON_PATH_MAX];
	int cb_backend;		     /* what the client said in BALLOON_INFO */
	char cb_path[DD_BALLOON_PATH_MAX];
	struct dd_balloon *vmm;
	int64_t balloon_bytes;	     /* reached; -1 unknown */
	uint64_t balloon_target;
	uint64_t unavailable_until;  /* CLOCK_MONOTONIC ms */
	uint64_t full_until;	     /* gave all it could: not inflated further until then */
	uint64_t progress_ms;	     /* when balloon_bytes last moved towards the target */
	char backend_error[256];
	struct dd_balloon_stats vstats;
	/* estimates */
	struct dd_active act;
	bool sampling;
	uint64_t pss, rss;
	double rho;
	uint64_t target; /* allocation the last plan aimed at; 0 none */
	bool throttled;
	uint64_t pageout_bytes;
	uint64_t last_pageout_ms;
	struct rc_action log[NACTIONS];
	unsigned int nlog;
	struct rc_client *next;
};

struct dd_reclaim {
	pthread_mutex_t lock;
	pthread_cond_t cv;	/* wakes the thread: state change, stop */
	pthread_cond_t idle_cv; /* a client is no longer busy */
	pthread_t thread;
	bool running, stop;
	struct dd_scanner *scanner;
	struct dd_reclaim_ops ops;
	struct dd_conf conf; /* our own copy (client sections included) */
	enum dd_pstate state;
	uint64_t high_since_ms; /* when the state last became high */
	uint64_t total_bytes, free_bytes;
	bool state_changed;
	struct rc_client *clients;
	struct dd_throttle *throttle;
	char throttle_error[256];
	bool said_no_swap;
	uint64_t next_sample_ms;
	uint64_t seed;
	struct dd_reclaim_totals tot;
};

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t real_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static const char *const state_names[] = { "high", "soft", "hard", "low" };

static const char *state_name(enum dd_pstate s)
{
	return (unsigned)s < 4 ? state_names[s] : "?";
}

static const char *backend_name(int b)
{
	switch (b) {
	case DD_BACKEND_CALLBACK:
		return "callback";
	case DD_BACKEND_QMP:
		return "qmp";
	case DD_BACKEND_FIRECRACKER:
		return "firecracker";
	case DD_BACKEND_CLOUD_HYPERVISOR:
		return "cloud-hypervisor";
	default:
		return "none";
	}
}

/* Remember an action and log it (r->lock held). */
__attribute__((format(printf, 2, 3))) static void note(struct rc_client *c, const char *fmt, ...)
{
	struct rc_action *a = &c->log[c->nlog++ % NACTIONS];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(a->text, sizeof(a->text), fmt, ap);
	va_end(ap);
	a->at_ms = real_ms();
	log_info("reclaim: client %d (%s): %s", (int)c->pid, c->comm, a->text);
}

/* ---- parameters ---------------------------------------------------------- */

static void read_comm(pid_t pid, char *buf, size_t len)
{
	char path[64];
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/comm", (int)pid);
	buf[0] = 0;
	f = fopen(path, "re");
	if (!f)
		return;
	if (fgets(buf, (int)len, f))
		buf[strcspn(buf, "\n")] = 0;
	fclose(f);
}

/* The backend to use: the configuration's binding wins over the client's. */
static void choose_backend(struct rc_client *c, const struct dd_conf_client *cl)
{
	bool conf = cl && cl->balloon != DD_CONF_BALLOON_NONE;

	c->want_backend = conf ? cl->balloon : c->cb_backend;
	snprintf(c->want_path, sizeof(c->want_path), "%s", conf ? cl->balloon_socket : c->cb_path);
}

/* Bind the chosen backend (thread, r->lock held, c busy or not yet seen). */
static void rebind(struct dd_reclaim *r, struct rc_client *c)
{
	if (c->want_backend == c->backend && !strcmp(c->want_path, c->path))
		return;
	if (c->vmm && c->balloon_target)
		log_info("reclaim: client %d: balloon backend changed; the old balloon stays "
			 "at %" PRIu64 " MiB", (int)c->pid, c->balloon_target / MIB);
	dd_balloon_free(c->vmm);
	c->vmm = NULL;
	c->backend = c->want_backend;
	memcpy(c->path, c->want_path, sizeof(c->path));
	c->unavailable_until = 0;
	c->backend_error[0] = 0;
	c->balloon_target = 0;
	if (c->backend >= DD_BACKEND_QMP) {
		c->vmm = dd_balloon_new((enum dd_balloon_kind)c->backend, c->path,
					(int)r->conf.reclaim.balloon_timeout_millisecs);
		if (!c->vmm)
			snprintf(c->backend_error, sizeof(c->backend_error), "%s",
				 strerror(errno));
	}
}

static void match(struct dd_reclaim *r, struct rc_client *c)
{
	const struct dd_conf_client *cl = dd_conf_match_client(&r->conf, c->comm, c->uid);
	uint64_t min = dd_conf_client_min_bytes(&r->conf, cl);

	snprintf(c->name, sizeof(c->name), "%s", cl ? cl->name : "");
	c->shares = cl && cl->shares ? cl->shares
				     : c->req_shares ? c->req_shares
						     : dd_conf_client_shares(&r->conf, cl);
	c->min_bytes = c->req_min > min ? c->req_min : min;
	c->max_bytes = dd_conf_client_max_bytes(&r->conf, cl);
	choose_backend(c, cl);
}

/* ---- the client list --------------------------------------------------------- */

static struct rc_client *find(struct dd_reclaim *r, uint64_t id)
{
	struct rc_client *c;

	for (c = r->clients; c && c->id != id; c = c->next)
		;
	return c && !c->removed ? c : NULL;
}

static void client_free(struct rc_client *c)
{
	dd_balloon_free(c->vmm);
	if (c->pidfd >= 0)
		close(c->pidfd);
	free(c);
}

int dd_reclaim_add(struct dd_reclaim *r, uint64_t id, pid_t pid, uid_t uid, void *agent)
{
	struct rc_client *c = calloc(1, sizeof(*c));

	if (!c)
		return -ENOMEM;
	c->id = id;
	c->pid = pid;
	c->uid = uid;
	c->agent = agent;
	c->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	c->balloon_bytes = -1;
	read_comm(pid, c->comm, sizeof(c->comm));
	dd_active_init(&c->act);
	pthread_mutex_lock(&r->lock);
	match(r, c);
	c->next = r->clients;
	r->clients = c;
	r->tot.clients++;
	pthread_mutex_unlock(&r->lock);
	return 0;
}

static uint64_t capacity(struct dd_reclaim *r)
{
	FILE *f;
	char line[256];
	unsigned long long kib = 0;

	if (r->total_bytes)
		return r->total_bytes;
	f = fopen("/proc/meminfo", "re");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "MemTotal: %llu kB", &kib) == 1)
			break;
	fclose(f);
	return (uint64_t)kib * 1024;
}

static void reserved(struct dd_reclaim *r, const struct rc_client *except, uint64_t *bytes,
		     size_t *n)
{
	*bytes = 0;
	*n = 0;
	for (struct rc_client *c = r->clients; c; c = c->next)
		if (!c->removed && c != except && c->admitted_min) {
			*bytes += c->admitted_min;
			(*n)++;
		}
}

int dd_reclaim_register(struct dd_reclaim *r, uint64_t id, uint32_t shares, uint64_t min_bytes,
			char *err, size_t errlen)
{
	struct rc_client *c;
	uint64_t held, cap, want;
	size_t n;
	int ret = 0;

	pthread_mutex_lock(&r->lock);
	c = find(r, id);
	if (!c) {
		pthread_mutex_unlock(&r->lock);
		return -ESRCH;
	}
	if (shares)
		c->req_shares = shares;
	if (min_bytes > c->req_min)
		c->req_min = min_bytes;
	match(r, c);
	want = c->min_bytes;
	if (want > c->admitted_min) {
		reserved(r, c, &held, &n);
		cap = capacity(r);
		if (dd_rc_admit(cap, held, n, want, r->conf.reclaim.client_overhead_bytes)) {
			c->admitted_min = want;
			r->tot.reserved_bytes = held + want;
		} else {
			snprintf(err, errlen,
				 "admission refused: minimum %" PRIu64 " MiB + overhead %" PRIu64
				 " MiB does not fit: %zu admitted client(s) reserve %" PRIu64
				 " MiB + %" PRIu64 " MiB overhead of %" PRIu64 " MiB (%s)",
				 want / MIB, r->conf.reclaim.client_overhead_bytes / MIB, n,
				 held / MIB, n * r->conf.reclaim.client_overhead_bytes / MIB,
				 cap / MIB, r->conf.pressure.cgroup[0] ? r->conf.pressure.cgroup
								       : "host memory");
			c->req_min = c->admitted_min; /* what was refused is not kept */
			match(r, c);
			r->tot.admission_refused++;
			ret = -ENOSPC;
		}
	}
	pthread_mutex_unlock(&r->lock);
	return ret;
}

/*
 * The balloon reached bytes (r->lock held). A balloon that stays short of its
 * target (the application gave what it could: final; a guest that stopped
 * inflating: STUCK_MS) is as big as it gets for now: its target comes down to
 * it, so nothing counts as still to come, and it is not inflated further for
 * BACKOFF_MS; the next plan picks another victim.
 */
static void balloon_reached(struct rc_client *c, int64_t bytes, bool final)
{
	uint64_t now = mono_ms();

	if (bytes != c->balloon_bytes)
		c->progress_ms = now;
	c->balloon_bytes = bytes;
	if (bytes < 0 || (uint64_t)bytes >= c->balloon_target)
		return;
	if (final || now - c->progress_ms >= STUCK_MS) {
		c->balloon_target = (uint64_t)bytes;
		c->full_until = now + BACKOFF_MS;
	}
}

/* dedupd connects to a VMM socket as root: it must be the client user's. */
static int check_socket(const char *path, uid_t uid, char *err, size_t errlen)
{
	struct stat st;

	if (path[0] != '/') {
		snprintf(err, errlen, "balloon socket '%s' must be an absolute path", path);
		return -EINVAL;
	}
	if (stat(path, &st) < 0) {
		snprintf(err, errlen, "balloon socket %s: %s", path, strerror(errno));
		return -errno;
	}
	if (!S_ISSOCK(st.st_mode)) {
		snprintf(err, errlen, "balloon socket %s is not a socket", path);
		return -EINVAL;
	}
	if (uid != 0 && st.st_uid != uid) {
		snprintf(err, errlen, "balloon socket %s belongs to uid %u, not to the client's %u",
			 path, (unsigned)st.st_uid, (unsigned)uid);
		return -EPERM;
	}
	return 0;
}

int dd_reclaim_balloon_info(struct dd_reclaim *r, uint64_t id, uint32_t backend,
			    const char *path, int64_t bytes, int32_t status, char *err,
			    size_t errlen)
{
	struct rc_client *c;
	int ret = 0;

	if (backend > DD_BACKEND_CLOUD_HYPERVISOR) {
		snprintf(err, errlen, "unknown balloon backend %u", backend);
		return -EINVAL;
	}
	pthread_mutex_lock(&r->lock);
	c = find(r, id);
	if (!c) {
		ret = -ESRCH;
		goto out;
	}
	if (backend >= DD_BACKEND_QMP) {
		ret = check_socket(path, c->uid, err, errlen);
		if (ret < 0)
			goto out;
	}
	c->cb_backend = (int)backend;
	snprintf(c->cb_path, sizeof(c->cb_path), "%s", backend >= DD_BACKEND_QMP ? path : "");
	match(r, c);
	if (c->want_backend == DD_BACKEND_CALLBACK) {
		if (status < 0)
			snprintf(c->backend_error, sizeof(c->backend_error),
				 "the handler failed: %s", strerror(-status));
		else if (bytes >= 0)
			balloon_reached(c, bytes, true);
	}
out:
	pthread_mutex_unlock(&r->lock);
	return ret;
}

void dd_reclaim_remove(struct dd_reclaim *r, uint64_t id)
{
	struct rc_client *c;

	pthread_mutex_lock(&r->lock);
	c = find(r, id);
	if (c) {
		/* leaving: no new action takes it; removed (which lets the
		 * thread free it) only once the action in progress is over. */
		c->leaving = true;
		while (c->busy)
			pthread_cond_wait(&r->idle_cv, &r->lock);
		c->removed = true;
		c->agent = NULL;
		if (c->admitted_min)
			r->tot.reserved_bytes -= c->admitted_min;
		c->admitted_min = 0;
		r->tot.clients--;
	}
	pthread_mutex_unlock(&r->lock);
	/* The thread unlinks it (it may lift a limit first). */
	pthread_cond_signal(&r->cv);
}

/* ---- configuration and pressure ------------------------------------------ */

void dd_reclaim_configure(struct dd_reclaim *r, const struct dd_conf *conf)
{
	pthread_mutex_lock(&r->lock);
	dd_conf_free(&r->conf);
	dd_conf_init(&r->conf);
	if (dd_conf_copy(&r->conf, conf) < 0)
		log_warning("reclaim: out of memory copying the configuration, ignoring");
	for (struct rc_client *c = r->clients; c; c = c->next)
		if (!c->removed)
			match(r, c);
	pthread_mutex_unlock(&r->lock);
}

void dd_reclaim_pressure(struct dd_reclaim *r, enum dd_pstate state, uint64_t total_bytes,
			 uint64_t free_bytes)
{
	bool changed;

	pthread_mutex_lock(&r->lock);
	if (state != r->state) {
		r->state_changed = true;
		if (state == DD_PSTATE_HIGH)
			r->high_since_ms = mono_ms();
	}
	r->state = state;
	r->total_bytes = total_bytes;
	r->free_bytes = free_bytes;
	changed = r->state_changed;
	pthread_mutex_unlock(&r->lock);
	if (changed)
		pthread_cond_signal(&r->cv);
}

/* ---- measuring ------------------------------------------------------------ */

static void read_pss(pid_t pid, uint64_t *pss, uint64_t *rss)
{
	char path[64], line[256];
	unsigned long long v;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/smaps_rollup", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "Pss: %llu kB", &v) == 1)
			*pss = (uint64_t)v * 1024;
		else if (sscanf(line, "Rss: %llu kB", &v) == 1)
			*rss = (uint64_t)v * 1024;
	}
	fclose(f);
}

static void sample(struct dd_reclaim *r, struct rc_client *c, uint32_t n)
{
	uint32_t touched = 0;
	int valid;

	if (c->sampling) {
		valid = dd_scanner_sample_end(r->scanner, c->id, &touched);
		if (valid > 0) {
			pthread_mutex_lock(&r->lock);
			dd_active_update(&c->act, touched, (uint32_t)valid);
			pthread_mutex_unlock(&r->lock);
		}
	}
	r->seed = r->seed * 6364136223846793005ull + 1442695040888963407ull;
	c->sampling = dd_scanner_sample_begin(r->scanner, c->id, n, r->seed ^ c->id) > 0;
}

/* Query a VMM backend (unlocked; c busy). */
static void query_vmm(struct dd_reclaim *r, struct rc_client *c)
{
	struct dd_balloon_stats st;
	char err[256] = "";
	int e;

	if (!c->vmm || mono_ms() < c->unavailable_until)
		return;
	e = dd_balloon_query(c->vmm, &st, err, sizeof(err));
	pthread_mutex_lock(&r->lock);
	if (e == 0) {
		c->vstats = st;
		balloon_reached(c, st.balloon_bytes, false);
		c->backend_error[0] = 0;
	} else {
		if (strcmp(err, c->backend_error))
			log_warning("reclaim: client %d: balloon backend unavailable: %s",
				    (int)c->pid, err);
		snprintf(c->backend_error, sizeof(c->backend_error), "%s", err);
		c->unavailable_until = mono_ms() + BACKOFF_MS;
	}
	pthread_mutex_unlock(&r->lock);
}

/* ---- acting ----------------------------------------------------------------- */

static bool balloon_usable(const struct rc_client *c, uint64_t now)
{
	if (now < c->unavailable_until)
		return false;
	return (c->backend == DD_BACKEND_CALLBACK && c->agent) ||
	       (c->backend >= DD_BACKEND_QMP && c->vmm);
}

/* Set the balloon (unlocked; c busy). 0 or -errno, logged. */
static int set_balloon(struct dd_reclaim *r, struct rc_client *c, uint64_t bytes,
		       const char *why)
{
	char err[256] = "";
	int e;

	if (c->backend == DD_BACKEND_CALLBACK) {
		e = r->ops.balloon ? r->ops.balloon(c->agent, bytes) : -ENOTSUP;
		if (e < 0)
			snprintf(err, sizeof(err), "BALLOON to the agent: %s", strerror(-e));
	} else {
		e = dd_balloon_set(c->vmm, bytes, err, sizeof(err));
	}
	pthread_mutex_lock(&r->lock);
	if (e == 0) {
		c->balloon_target = bytes;
		c->progress_ms = mono_ms();
		note(c, "balloon %s to %" PRIu64 " MiB: %s", bytes ? "set" : "deflated",
		     bytes / MIB, why);
		r->tot.actions++;
	} else {
		note(c, "balloon (%s) unavailable: %s", backend_name(c->backend), err);
		snprintf(c->backend_error, sizeof(c->backend_error), "%s", err);
		c->unavailable_until = mono_ms() + BACKOFF_MS;
	}
	pthread_mutex_unlock(&r->lock);
	return e;
}

static void do_pageout(struct dd_reclaim *r, struct rc_client *c, uint64_t bytes,
		       const char *why)
{
	struct iovec *iov = calloc(PAGEOUT_IOV, sizeof(*iov));
	char err[256] = "";
	size_t n;
	int64_t done;

	if (!iov)
		return;
	n = dd_scanner_cold_ranges(r->scanner, c->id, bytes, iov, PAGEOUT_IOV);
	done = n ? dd_pageout(c->pidfd, iov, n, err, sizeof(err)) : 0;
	free(iov);
	pthread_mutex_lock(&r->lock);
	c->last_pageout_ms = mono_ms();
	if (done > 0) {
		c->pageout_bytes += (uint64_t)done;
		r->tot.pageout_bytes += (uint64_t)done;
		r->tot.actions++;
		note(c, "paged out %" PRIu64 " MiB of cold pages: %s", (uint64_t)done / MIB, why);
		if (err[0])
			log_debug("reclaim: client %d: pageout: %s", (int)c->pid, err);
	} else if (done < 0) {
		note(c, "pageout failed: %s", err);
	}
	pthread_mutex_unlock(&r->lock);
}

static void do_throttle(struct dd_reclaim *r, struct rc_client *c, uint64_t limit,
			const char *why)
{
	char err[256] = "";
	int e;

	if (!r->throttle) {
		r->throttle = dd_throttle_new(NULL, err, sizeof(err));
		if (!r->throttle) {
			if (strcmp(err, r->throttle_error))
				log_warning("reclaim: cannot throttle: %s", err);
			snprintf(r->throttle_error, sizeof(r->throttle_error), "%s", err);
			return;
		}
		if (err[0]) /* what a crashed predecessor left, cleaned up */
			log_info("reclaim: %s", err);
		if (!dd_throttle_charges_move(r->throttle))
			log_info("reclaim: this kernel does not move memory charges between "
				 "cgroups: a throttle limits only what a client allocates after "
				 "it is held");
		err[0] = 0;
	}
	e = dd_throttle_hold(r->throttle, c->pid, limit, err, sizeof(err));
	pthread_mutex_lock(&r->lock);
	if (e >= 0) {
		if (!c->throttled) {
			r->tot.actions++;
			note(c, "held at %" PRIu64 " MiB by a cgroup limit: %s", limit / MIB, why);
		}
		if (e == DD_THROTTLE_RAISED)
			log_debug("reclaim: client %d: %s", (int)c->pid, err);
		c->throttled = true;
	} else {
		note(c, "throttle failed: %s", err);
	}
	pthread_mutex_unlock(&r->lock);
}

static void release_throttle(struct dd_reclaim *r, struct rc_client *c, const char *why)
{
	char err[256] = "";

	if (r->throttle && dd_throttle_release(r->throttle, c->pid, err, sizeof(err)) < 0)
		log_warning("reclaim: client %d: lifting its limit: %s", (int)c->pid, err);
	pthread_mutex_lock(&r->lock);
	c->throttled = false;
	note(c, "limit lifted: %s", why);
	pthread_mutex_unlock(&r->lock);
}

/* ---- the thread ------------------------------------------------------------- */

struct snap {
	struct rc_client *c;
	struct dd_rc_client in;
	uint64_t take;
};

/* Mark every live client busy and copy the list (r->lock held). */
static struct snap *grab(struct dd_reclaim *r, size_t *n)
{
	struct snap *v;
	size_t k = 0;

	for (struct rc_client *c = r->clients; c; c = c->next)
		k += !c->removed && !c->leaving;
	v = calloc(k ? k : 1, sizeof(*v));
	if (!v) {
		*n = 0;
		return NULL;
	}
	k = 0;
	for (struct rc_client *c = r->clients; c; c = c->next)
		if (!c->removed && !c->leaving) {
			c->busy = true;
			rebind(r, c);
			v[k++].c = c;
		}
	*n = k;
	return v;
}

static void release(struct dd_reclaim *r, struct snap *v, size_t n)
{
	pthread_mutex_lock(&r->lock);
	for (size_t i = 0; i < n; i++)
		v[i].c->busy = false;
	pthread_cond_broadcast(&r->idle_cv);
	pthread_mutex_unlock(&r->lock);
	free(v);
}

/* Unlink removed clients, lifting what we did to them (thread only). */
static void reap(struct dd_reclaim *r)
{
	struct rc_client **pp, *c;

	pthread_mutex_lock(&r->lock);
	for (pp = &r->clients; (c = *pp);) {
		if (!c->removed) {
			pp = &c->next;
			continue;
		}
		*pp = c->next;
		pthread_mutex_unlock(&r->lock);
		if (c->throttled && r->throttle)
			dd_throttle_release(r->throttle, c->pid, NULL, 0);
		if (c->vmm && c->balloon_target) {
			char err[256];

			dd_balloon_set(c->vmm, 0, err, sizeof(err)); /* the VMM may outlive us */
		}
		client_free(c);
		pthread_mutex_lock(&r->lock);
	}
	pthread_mutex_unlock(&r->lock);
}

/*
 * The state is high again: give balloons back, but only out of the surplus
 * above the high threshold plus a margin, so that deflating does not bring the
 * pressure straight back; when the pressure is really gone the surplus covers
 * every balloon. The surplus goes back in small steps, each to the client
 * with the highest rho (least idle-taxed per byte) after it. Limits are
 * lifted at once.
 */
#define DEFLATE_MARGIN_PERCENT 2.0
/* Balloons wait this long in the high state before they deflate: memory a
 * client gets back it touches again, and deflating at once would bring the
 * pressure straight back (measured: inflate/deflate every second with 96 MiB
 * clients in a 256 MiB cgroup, without it). */
#define DEFLATE_HOLD_MS 3000

static void undo(struct dd_reclaim *r, struct snap *v, size_t n, uint64_t total, uint64_t free_b,
		 uint64_t high_since_ms, double high_pct)
{
	double keep = (double)total * (high_pct + DEFLATE_MARGIN_PERCENT) / 100.0;
	uint64_t surplus = (double)free_b > keep ? (uint64_t)((double)free_b - keep) : 0;
	uint64_t now = mono_ms();

	if (now - high_since_ms < DEFLATE_HOLD_MS)
		surplus = 0;

	for (size_t i = 0; i < n; i++)
		if (v[i].c->throttled)
			release_throttle(r, v[i].c, "memory state back to high");
	if (!surplus || !n)
		return;
	uint64_t *give = calloc(n, sizeof(*give));
	uint64_t step = surplus / 1024 > MIB ? surplus / 1024 : MIB;
	double tax = r->conf.reclaim.tax_rate;

	if (!give)
		return; /* next tick */
	/* Min-funding revocation run backwards, in small steps: each step goes
	 * to the client whose rho would then be the highest, so that clients
	 * with equal shares and activity end up with equal memory (one client
	 * taking the whole surplus left them megabytes apart). */
	while (surplus) {
		double best_rho = 0;
		size_t best = n;
		uint64_t g;

		for (size_t i = 0; i < n; i++) {
			struct rc_client *c = v[i].c;
			double rho;

			if (!c->balloon_target || give[i] >= c->balloon_target || v[i].take ||
			    !balloon_usable(c, now))
				continue;
			rho = dd_rc_rho(c->shares, c->pss + give[i], c->act.estimate, tax);
			if (best == n || rho > best_rho) {
				best = i;
				best_rho = rho;
			}
		}
		if (best == n)
			break;
		g = v[best].c->balloon_target - give[best];
		g = g < step ? g : step;
		g = g < surplus ? g : surplus;
		give[best] += g;
		surplus -= g;
	}
	for (size_t i = 0; i < n; i++) {
		struct rc_client *c = v[i].c;

		if (!give[i])
			continue;
		v[i].take = 1; /* once per tick */
		set_balloon(r, c, c->balloon_target - give[i],
			    give[i] == c->balloon_target ? "memory state back to high"
							 : "memory state back to high, in part");
	}
	free(give);
}

/* Balloon memory asked for but not yet handed over: it will still be freed. */
static uint64_t inflating(const struct snap *v, size_t n)
{
	uint64_t sum = 0;

	for (size_t i = 0; i < n; i++) {
		const struct rc_client *c = v[i].c;
		uint64_t got = c->balloon_bytes > 0 ? (uint64_t)c->balloon_bytes : 0;

		if (c->balloon_target > got)
			sum += c->balloon_target - got;
	}
	return sum;
}

static void act(struct dd_reclaim *r, struct snap *v, size_t n, enum dd_pstate st, uint64_t need,
		const struct dd_conf_reclaim *rcp)
{
	struct dd_conf_reclaim rc = *rcp;
	uint64_t now = mono_ms(), swap_total = 0, swap_free = 0, pend;
	struct dd_rc_client *in = calloc(n ? n : 1, sizeof(*in));
	uint64_t *take = calloc(n ? n : 1, sizeof(*take));
	char why[128];

	if (!in || !take)
		goto out;
	dd_swap_status(&swap_total, &swap_free);
	if (st >= DD_PSTATE_HARD && rc.pageout && !swap_total && !r->said_no_swap) {
		log_warning("reclaim: %s state but no swap is configured: anonymous pages cannot "
			    "be paged out, only ballooned and throttled", state_name(st));
		r->said_no_swap = true;
	}
	for (size_t i = 0; i < n; i++) {
		struct rc_client *c = v[i].c;

		in[i] = (struct dd_rc_client){ .shares = c->shares, .bytes = c->pss,
					       .min_bytes = c->min_bytes,
					       .max_bytes = c->max_bytes,
					       .active = c->act.estimate };
		/* A guest that reports its free memory is not ballooned past
		 * it, less a reserve of 5 % of its RAM: the hint ESX takes from
		 * its balloon driver's statistics. */
		if (c->backend >= DD_BACKEND_QMP && c->vstats.guest_available_bytes >= 0 &&
		    c->vstats.guest_total_bytes > 0) {
			int64_t spare = c->vstats.guest_available_bytes -
					c->vstats.guest_total_bytes / 20;
			uint64_t floor_b = spare > 0 && (uint64_t)spare < c->pss
						   ? c->pss - (uint64_t)spare
						   : spare > 0 ? 0 : c->pss;

			if (floor_b > in[i].min_bytes)
				in[i].min_bytes = floor_b;
		}
		in[i].eligible = (rc.balloon && balloon_usable(c, now) && now >= c->full_until) ||
				 (st >= DD_PSTATE_HARD && rc.pageout && swap_free && c->pidfd >= 0) ||
				 (st == DD_PSTATE_LOW && rc.throttle);
	}
	pend = inflating(v, n);
	need = need > pend ? need - pend : 0;
	if (need)
		dd_rc_plan(in, n, rc.tax_rate, need, 0, take);
	for (size_t i = 0; i < n; i++) {
		struct rc_client *c = v[i].c;

		pthread_mutex_lock(&r->lock);
		c->rho = dd_rc_rho(c->shares, c->pss, c->act.estimate, rc.tax_rate);
		c->target = take[i] ? c->pss - take[i] : c->target;
		pthread_mutex_unlock(&r->lock);
		if (!take[i])
			continue;
		snprintf(why, sizeof(why), "%s state, %" PRIu64 " MiB to free, rho %.3g lowest",
			 state_name(st), need / MIB, c->rho * (double)MIB);
		if (rc.balloon && balloon_usable(c, now) && now >= c->full_until)
			set_balloon(r, c, c->balloon_target + take[i], why);
		if (st >= DD_PSTATE_HARD && rc.pageout && swap_free && now - c->last_pageout_ms >= 1000)
			do_pageout(r, c, take[i], why);
		if (st == DD_PSTATE_LOW && rc.throttle)
			do_throttle(r, c, c->pss - take[i], why);
	}
	for (size_t i = 0; i < n; i++)
		if (v[i].c->throttled && st != DD_PSTATE_LOW)
			release_throttle(r, v[i].c, "state no longer low");
out:
	free(in);
	free(take);
}

static void tick(struct dd_reclaim *r)
{
	enum dd_pstate st;
	struct dd_conf_reclaim rc;
	double high_pct;
	uint64_t need, total, free_b, high_since, now = mono_ms();
	bool period;
	uint32_t npages;
	struct snap *v;
	size_t n;

	reap(r);
	pthread_mutex_lock(&r->lock);
	st = r->state;
	need = dd_rc_need(r->total_bytes, r->free_bytes,
			  r->conf.pressure.high_free_percent + AIM_ABOVE_HIGH_PERCENT);
	total = r->total_bytes;
	free_b = r->free_bytes;
	high_since = r->high_since_ms;
	high_pct = r->conf.pressure.high_free_percent;
	rc = r->conf.reclaim;
	r->state_changed = false;
	period = now >= r->next_sample_ms;
	if (period)
		r->next_sample_ms = now + (uint64_t)r->conf.reclaim.sample_period_sec * 1000;
	npages = r->conf.reclaim.sample_pages;
	v = grab(r, &n);
	pthread_mutex_unlock(&r->lock);
	if (!v)
		return;
	for (size_t i = 0; i < n; i++) {
		struct rc_client *c = v[i].c;
		uint64_t pss = 0, rss = 0;

		if (period)
			sample(r, c, npages);
		if (period || st != DD_PSTATE_HIGH || c->balloon_target) {
			read_pss(c->pid, &pss, &rss);
			query_vmm(r, c);
			pthread_mutex_lock(&r->lock);
			c->pss = pss;
			c->rss = rss;
			pthread_mutex_unlock(&r->lock);
		}
	}
	if (st == DD_PSTATE_HIGH)
		undo(r, v, n, total, free_b, high_since, high_pct);
	else
		act(r, v, n, st, need, &rc);
	release(r, v, n);
}

static void *reclaim_main(void *arg)
{
	struct dd_reclaim *r = arg;

	pthread_setname_np(pthread_self(), "dedupd-reclaim");
	pthread_mutex_lock(&r->lock);
	while (!r->stop) {
		struct timespec ts;

		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_nsec += TICK_MS * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		if (!r->state_changed)
			pthread_cond_timedwait(&r->cv, &r->lock, &ts);
		if (r->stop)
			break;
		pthread_mutex_unlock(&r->lock);
		tick(r);
		pthread_mutex_lock(&r->lock);
	}
	pthread_mutex_unlock(&r->lock);
	return NULL;
}

/* ---- life cycle ---------------------------------------------------------- */

struct dd_reclaim *dd_reclaim_new(const struct dd_conf *conf, struct dd_scanner *s,
				  const struct dd_reclaim_ops *ops)
{
	struct dd_reclaim *r = calloc(1, sizeof(*r));
	pthread_condattr_t ca;

	if (!r)
		return NULL;
	pthread_mutex_init(&r->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&r->cv, &ca);
	pthread_condattr_destroy(&ca);
	pthread_cond_init(&r->idle_cv, NULL);
	r->scanner = s;
	r->ops = *ops;
	r->seed = (uint64_t)getpid() ^ real_ms();
	dd_conf_init(&r->conf);
	if (dd_conf_copy(&r->conf, conf) < 0) {
		dd_reclaim_free(r);
		errno = ENOMEM;
		return NULL;
	}
	return r;
}

int dd_reclaim_start(struct dd_reclaim *r)
{
	int e = pthread_create(&r->thread, NULL, reclaim_main, r);

	r->running = e == 0;
	return -e;
}

void dd_reclaim_free(struct dd_reclaim *r)
{
	struct rc_client *c;

	if (!r)
		return;
	if (r->running) {
		pthread_mutex_lock(&r->lock);
		r->stop = true;
		pthread_cond_signal(&r->cv);
		pthread_mutex_unlock(&r->lock);
		pthread_join(r->thread, NULL);
	}
	/* Nothing we did outlives us: deflate, lift. */
	while ((c = r->clients)) {
		r->clients = c->next;
		if (c->throttled && r->throttle)
			dd_throttle_release(r->throttle, c->pid, NULL, 0);
		if (c->vmm && c->balloon_target) {
			char err[256];

			dd_balloon_set(c->vmm, 0, err, sizeof(err));
		}
		client_free(c);
	}
	dd_throttle_free(r->throttle);
	dd_conf_free(&r->conf);
	pthread_cond_destroy(&r->cv);
	pthread_cond_destroy(&r->idle_cv);
	pthread_mutex_destroy(&r->lock);
	free(r);
}

/* ---- reporting ------------------------------------------------------------- */

static struct json_object *client_json(const struct dd_reclaim *r, const struct rc_client *c)
{
	struct json_object *o = json_object_new_object(), *acts = json_object_new_array();
	unsigned int first = c->nlog > NACTIONS ? c->nlog - NACTIONS : 0;
	int gp = dd_balloon_guest_pressure(&c->vstats);

	json_object_object_add(o, "id", json_object_new_uint64(c->id));
	json_object_object_add(o, "pid", json_object_new_int(c->pid));
	json_object_object_add(o, "comm", json_object_new_string(c->comm));
	json_object_object_add(o, "config", json_object_new_string(c->name));
	json_object_object_add(o, "shares", json_object_new_uint64(c->shares));
	json_object_object_add(o, "active_fraction", json_object_new_double(c->act.estimate));
	json_object_object_add(o, "active_samples", json_object_new_uint64(c->act.periods));
	json_object_object_add(o, "pss_bytes", json_object_new_uint64(c->pss));
	json_object_object_add(o, "rss_bytes", json_object_new_uint64(c->rss));
	json_object_object_add(o, "rho", json_object_new_double(dd_rc_rho(
		c->shares, c->pss, c->act.estimate, r->conf.reclaim.tax_rate) * (double)MIB));
	json_object_object_add(o, "target_bytes", json_object_new_uint64(c->target));
	json_object_object_add(o, "min_bytes", json_object_new_uint64(c->min_bytes));
	json_object_object_add(o, "max_bytes", json_object_new_uint64(c->max_bytes));
	json_object_object_add(o, "admitted_min_bytes", json_object_new_uint64(c->admitted_min));
	json_object_object_add(o, "balloon_backend", json_object_new_string(backend_name(c->backend)));
	json_object_object_add(o, "balloon_socket", json_object_new_string(c->path));
	json_object_object_add(o, "balloon_bytes", json_object_new_int64(c->balloon_bytes));
	json_object_object_add(o, "balloon_target_bytes", json_object_new_uint64(c->balloon_target));
	json_object_object_add(o, "balloon_available",
			       json_object_new_boolean(c->backend != DD_BACKEND_NONE &&
						       mono_ms() >= c->unavailable_until &&
						       !c->backend_error[0]));
	json_object_object_add(o, "balloon_error", json_object_new_string(c->backend_error));
	json_object_object_add(o, "guest_pressure", json_object_new_int(gp));
	json_object_object_add(o, "guest_free_bytes", json_object_new_int64(c->vstats.guest_free_bytes));
	json_object_object_add(o, "throttled", json_object_new_boolean(c->throttled));
	json_object_object_add(o, "pageout_bytes", json_object_new_uint64(c->pageout_bytes));
	for (unsigned int i = first; i < c->nlog; i++) {
		const struct rc_action *a = &c->log[i % NACTIONS];
		struct json_object *e = json_object_new_object();

		json_object_object_add(e, "at_ms", json_object_new_uint64(a->at_ms));
		json_object_object_add(e, "action", json_object_new_string(a->text));
		json_object_array_add(acts, e);
	}
	json_object_object_add(o, "actions", acts);
	return o;
}

struct json_object *dd_reclaim_json(struct dd_reclaim *r)
{
	struct json_object *o = json_object_new_object(), *arr = json_object_new_array();

	pthread_mutex_lock(&r->lock);
	json_object_object_add(o, "state", json_object_new_string(state_name(r->state)));
	json_object_object_add(o, "total_bytes", json_object_new_uint64(r->total_bytes));
	json_object_object_add(o, "free_bytes", json_object_new_uint64(r->free_bytes));
	json_object_object_add(o, "need_bytes",
			       json_object_new_uint64(dd_rc_need(r->total_bytes, r->free_bytes,
								 r->conf.pressure.high_free_percent +
									 AIM_ABOVE_HIGH_PERCENT)));
	json_object_object_add(o, "tax_rate", json_object_new_double(r->conf.reclaim.tax_rate));
	json_object_object_add(o, "reserved_bytes", json_object_new_uint64(r->tot.reserved_bytes));
	json_object_object_add(o, "admission_refused",
			       json_object_new_uint64(r->tot.admission_refused));
	for (struct rc_client *c = r->clients; c; c = c->next)
		if (!c->removed)
			json_object_array_add(arr, client_json(r, c));
	json_object_object_add(o, "clients", arr);
	pthread_mutex_unlock(&r->lock);
	return o;
}

void dd_reclaim_totals(struct dd_reclaim *r, struct dd_reclaim_totals *t)
{
	pthread_mutex_lock(&r->lock);
	*t = r->tot;
	t->balloon_bytes = t->balloon_target_bytes = t->throttled = 0;
	for (struct rc_client *c = r->clients; c; c = c->next) {
		if (c->removed)
			continue;
		t->balloon_bytes += c->balloon_bytes > 0 ? (uint64_t)c->balloon_bytes : 0;
		t->balloon_target_bytes += c->balloon_target;
		t->throttled += c->throttled;
	}
	pthread_mutex_unlock(&r->lock);
}
