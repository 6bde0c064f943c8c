// SPDX-License-Identifier: MIT
/*
 * Memory pressure at the daemon level (issue 4): the real dedupd, started
 * with `--cgroup DIR`, watched through `dedupctl state` (the ADMIN "state"
 * command) while a child inside a 64 MiB cgroup v1 memory controller drives
 * the cgroup's free memory down through 6 / 4 / 1 % (anonymous memory, then
 * page cache read from ext4 past the limit, so that memcg reclaim stalls) and
 * back up. The daemon must go high -> soft -> hard -> low -> hard -> soft ->
 * high, each state seen within 2 s of the crossing that causes it, scan
 * faster in soft and worse, and list the moves with reasons:
 *
 *   - with BPF: source "bpf+psi", BPF reclaim stalls counted in the cgroup;
 *   - with --no-bpf: source "psi", bpf_error says why, logged once;
 *   - as uid 65534, where BPF cannot load: source "psi", logged once;
 *   - bad input: --cgroup on a missing path, on a directory that is no memory
 *     cgroup, a config file whose thresholds do not decrease; and the watched
 *     cgroup vanishing under the running daemon.
 *
 * "The crossing" is measured by the child itself: after every 64 KiB step it
 * reads the cgroup's usage and notes the last moment free memory was still on
 * the old side of the threshold (the threshold plus the 0.5 % margin on the
 * way up). Latency is from that moment to the first `state` answer showing the
 * new state, so it is an upper bound that includes this test's polling.
 *
 * Cgroups are dd-check-pstate.<runner pid>.<tag> under /sys/fs/cgroup/memory;
 * the daemons die with their test process (PR_SET_PDEATHSIG) and an unchecked
 * teardown removes cgroups and files even when a test fails. The real tests
 * skip, saying why, when not root or without the cgroup v1 memory controller.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <json-c/json.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/harness.h"

Suite *pstate_suite(void);

#define MIB (1024ULL * 1024)
#define CG_LIMIT (64 * MIB)
#define MEMCG_ROOT "/sys/fs/cgroup/memory"
#define NOBODY 65534
#define LATENCY_MAX_US 2000000ULL /* issue 4: each state within 2 s of its crossing */

static pid_t runner_pid;   /* names cgroups and files so the teardown finds them */
static pid_t daemon_pid = -1; /* CK_NOFORK only: the runner's own daemon */
static char workdir[128];  /* /tmp/dd-check-pstate.<runner pid>: configs, nobody's socket */

/* ---- small helpers ------------------------------------------------------ */

static uint64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static long long ms_of(int64_t us)
{
	return (long long)(us >= 0 ? (us + 500) / 1000 : -((-us + 500) / 1000));
}

static char *read_small(const char *path, char *buf, size_t len)
{
	FILE *f = fopen(path, "re");
	size_t n;

	if (!f)
		return NULL;
	n = fread(buf, 1, len - 1, f);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

static uint64_t read_u64(const char *path)
{
	char buf[64];

	return read_small(path, buf, sizeof(buf)) ? strtoull(buf, NULL, 10) : 0;
}

/* The whole of a (log) file, malloc'ed; "" if it cannot be read. */
static char *slurp(const char *path)
{
	FILE *f = fopen(path, "re");
	char *buf = NULL;
	size_t len = 0;

	if (f) {
		FILE *m = open_memstream(&buf, &len);
		char chunk[4096];
		size_t n;

		while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
			fwrite(chunk, 1, n, m);
		fclose(m);
		fclose(f);
	}
	return buf ? buf : strdup("");
}

static int count_lines_with(const char *text, const char *needle)
{
	int n = 0;

	for (const char *l = text; *l;) {
		const char *e = strchr(l, '\n');
		size_t len = e ? (size_t)(e - l) : strlen(l);

		if (memmem(l, len, needle, strlen(needle)))
			n++;
		l += len + (e != NULL);
	}
	return n;
}

static void write_text(const char *path, const char *text)
{
	FILE *f = fopen(path, "we");

	ck_assert_msg(f, "%s: %s", path, strerror(errno));
	fputs(text, f);
	ck_assert_int_eq(fclose(f), 0);
}

static bool have_memcg_v1(void)
{
	return access(MEMCG_ROOT "/memory.limit_in_bytes", F_OK) == 0;
}

/* Root and a cgroup v1 memory controller, or a printed reason to skip. */
static bool can_run_real(const char *test)
{
	if (!h_is_root()) {
		printf("SKIP %s: needs root (memory cgroups, BPF)\n", test);
		return false;
	}
	if (!have_memcg_v1()) {
		printf("SKIP %s: no cgroup v1 memory controller at " MEMCG_ROOT "\n", test);
		return false;
	}
	return true;
}

/* Per-tag names: socket (its log is <socket>.log), cgroup, data file. */
static void sock_for(char *buf, size_t len, const char *tag)
{
	char dir[160];

	snprintf(dir, sizeof(dir), "%s/test-sockets", h_build());
	mkdir(dir, 0755);
	snprintf(buf, len, "%s/pstate-%d-%s.sock", dir, (int)runner_pid, tag);
}

static void cg_dir(char *buf, size_t len, const char *tag)
{
	snprintf(buf, len, MEMCG_ROOT "/dd-check-pstate.%d.%s", (int)runner_pid, tag);
}

static void data_path(char *buf, size_t len, const char *tag)
{
	snprintf(buf, len, "/var/tmp/dd-check-pstate.%d.%s", (int)runner_pid, tag);
}

/* Kill whatever is left in a test cgroup and remove it; quiet if there is none. */
static void cg_remove(const char *tag)
{
	char dir[256], path[300], pids[4096];

	cg_dir(dir, sizeof(dir), tag);
	snprintf(path, sizeof(path), "%s/cgroup.procs", dir);
	for (int tries = 0; tries < 100 && read_small(path, pids, sizeof(pids)); tries++) {
		if (!pids[0] && rmdir(dir) == 0)
			return;
		for (char *l = pids; *l;) {
			kill((pid_t)atoi(l), SIGKILL);
			l = strchr(l, '\n') ? strchr(l, '\n') + 1 : l + strlen(l);
		}
		h_sleep_ms(20);
	}
}

static void cg_make(char *dir, size_t len, const char *tag, uint64_t limit)
{
	char path[300], val[32];

	cg_remove(tag);
	cg_dir(dir, len, tag);
	ck_assert_msg(mkdir(dir, 0755) == 0, "mkdir %s: %s", dir, strerror(errno));
	snprintf(path, sizeof(path), "%s/memory.limit_in_bytes", dir);
	snprintf(val, sizeof(val), "%llu\n", (unsigned long long)limit);
	write_text(path, val);
}

/* A file on a disk filesystem (tmpfs pages are not reclaimable without swap), not cached. */
static void make_data_file(const char *path, uint64_t size)
{
	static char chunk[1 << 20];
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	ck_assert_msg(fd >= 0, "%s: %s", path, strerror(errno));
	memset(chunk, 0x5a, sizeof(chunk));
	for (uint64_t off = 0; off < size; off += sizeof(chunk))
		ck_assert_int_eq(write(fd, chunk, sizeof(chunk)), (ssize_t)sizeof(chunk));
	ck_assert_int_eq(fsync(fd), 0);
	posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED); /* the child's reads charge its cgroup */
	close(fd);
}

/* ---- dedupd ------------------------------------------------------------- */

/*
 * Start dedupd in the foreground on @sock, as h_daemon_start() does, but: a
 * fresh log (so "logged once" can be counted), optionally as @uid, and with
 * PR_SET_PDEATHSIG so a failing (forked) test takes its daemon with it.
 */
static pid_t daemon_start(const char *sock, const char *const *extra, uid_t uid)
{
	char exe[256], log[300];
	const char *argv[40];
	pid_t parent = getpid(), pid;
	int n = 0, st;

	snprintf(exe, sizeof(exe), "%s/dedupd", h_build());
	snprintf(log, sizeof(log), "%s.log", sock);
	unlink(log);
	unlink(sock);
	argv[n++] = exe;
	argv[n++] = "--foreground";
	argv[n++] = "--socket";
	argv[n++] = sock;
	for (; extra && *extra && n < 38; extra++)
		argv[n++] = *extra;
	argv[n] = NULL;
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		if (!freopen(log, "a", stderr))
			_exit(126);
		if (uid && (setgroups(0, NULL) || setresgid(uid, uid, uid) ||
			    setresuid(uid, uid, uid)))
			_exit(125);
		/* after the credentials change, which clears it */
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		if (getppid() != parent)
			_exit(124);
		execv(exe, (char *const *)argv);
		_exit(127);
	}
	for (int i = 0; i < 500; i++) {
		int fd = dd_sock_connect(sock);

		if (fd >= 0) {
			close(fd);
			daemon_pid = pid;
			return pid;
		}
		if (waitpid(pid, &st, WNOHANG) == pid)
			ck_abort_msg("dedupd exited at start (status %#x): %s", st, slurp(log));
		h_sleep_ms(10);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
	ck_abort_msg("dedupd did not come up on %s (see %s)", sock, log);
	return -1;
}

static void daemon_stop_clean(pid_t pid, const char *sock)
{
	int st = h_daemon_stop(pid, SIGTERM);

	daemon_pid = -1;
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
		      "dedupd did not stop cleanly on SIGTERM (status %#x, log %s.log)", st, sock);
}

/*
 * Run $BUILD/@tool to its end with @args (after the executable), stdout and
 * stderr into *out. Returns its exit status, or -1 if it was still running
 * after @timeout_ms (it is killed then).
 */
static int tool_run(const char *tool, const char *const *args, char **out, unsigned timeout_ms)
{
	char exe[256], file[160];
	const char *argv[40];
	int n = 0, st = 0, fd;
	uint64_t end;
	pid_t pid;

	snprintf(exe, sizeof(exe), "%s/%s", h_build(), tool);
	snprintf(file, sizeof(file), "%s/out.XXXXXX", workdir);
	fd = mkstemp(file);
	ck_assert_msg(fd >= 0, "mkstemp %s: %s", file, strerror(errno));
	argv[n++] = exe;
	for (; *args && n < 39; args++)
		argv[n++] = *args;
	argv[n] = NULL;
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		dup2(fd, 1);
		dup2(fd, 2);
		execv(exe, (char *const *)argv);
		_exit(127);
	}
	close(fd);
	for (end = h_now_ms() + timeout_ms; waitpid(pid, &st, WNOHANG) == 0;) {
		if (h_now_ms() > end) {
			kill(pid, SIGKILL);
			waitpid(pid, &st, 0);
			*out = slurp(file);
			unlink(file);
			return -1;
		}
		h_sleep_ms(5);
	}
	*out = slurp(file);
	unlink(file);
	ck_assert_msg(WIFEXITED(st), "%s died of signal %d: %s", tool, WTERMSIG(st), *out);
	return WEXITSTATUS(st);
}

/* ---- `dedupctl state` ---------------------------------------------------- */

struct tr {
	char from[8], to[8], reason[128];
	double ago_sec;
};

struct pst {
	uint64_t t_us; /* when the answer arrived */
	char state[8], source[16], bpf_error[256];
	double held_sec, free_percent, psi_some_avg10, psi_full_avg10;
	uint64_t free_bytes, total_bytes;
	uint64_t stalls, stalls_per_sec, stall_us, memcg_reclaims, direct_reclaims;
	uint64_t pages_to_scan, sleep_ms, max_bps;
	int ntr;
	struct tr tr[16];
};

static struct json_object *jget(struct json_object *o, const char *path)
{
	char key[64];

	while (o && *path) {
		const char *dot = strchr(path, '.');
		size_t len = dot ? (size_t)(dot - path) : strlen(path);

		snprintf(key, sizeof(key), "%.*s", (int)len, path);
		if (!json_object_object_get_ex(o, key, &o))
			return NULL;
		path += len + (dot != NULL);
	}
	return o;
}

static void jstr(struct json_object *o, const char *path, char *buf, size_t len)
{
	struct json_object *v = jget(o, path);

	ck_assert_msg(v, "state has no '%s'", path);
	snprintf(buf, len, "%s", json_object_get_string(v));
}

static uint64_t ju64(struct json_object *o, const char *path)
{
	struct json_object *v = jget(o, path);

	ck_assert_msg(v, "state has no '%s'", path);
	return (uint64_t)json_object_get_int64(v);
}

static double jdbl(struct json_object *o, const char *path)
{
	struct json_object *v = jget(o, path);

	ck_assert_msg(v, "state has no '%s'", path);
	return json_object_get_double(v);
}

/* Ask the daemon for its state; every field issue 4 names must be there. */
static void get_state(const char *sock, struct pst *s)
{
	struct json_object *o, *arr;
	char *text = NULL;
	int r = h_admin(sock, "state", &text);

	s->t_us = now_us();
	ck_assert_msg(r == 0 && text, "state: %d (%s)", r, text ? text : strerror(-r));
	o = json_tokener_parse(text);
	ck_assert_msg(o, "state is not JSON: %s", text);
	jstr(o, "state", s->state, sizeof(s->state));
	jstr(o, "source", s->source, sizeof(s->source));
	jstr(o, "bpf_error", s->bpf_error, sizeof(s->bpf_error));
	s->held_sec = jdbl(o, "held_sec");
	s->free_bytes = ju64(o, "inputs.free_bytes");
	s->total_bytes = ju64(o, "inputs.total_bytes");
	s->free_percent = jdbl(o, "inputs.free_percent");
	s->psi_some_avg10 = jdbl(o, "inputs.psi_some_avg10");
	s->psi_full_avg10 = jdbl(o, "inputs.psi_full_avg10");
	s->stalls = ju64(o, "inputs.reclaim_stalls");
	s->stalls_per_sec = ju64(o, "inputs.reclaim_stalls_per_sec");
	s->stall_us = ju64(o, "inputs.reclaim_stall_us");
	s->memcg_reclaims = ju64(o, "inputs.memcg_reclaims");
	s->direct_reclaims = ju64(o, "inputs.direct_reclaims");
	(void)ju64(o, "inputs.kswapd_wakes");
	(void)ju64(o, "inputs.throttles");
	(void)ju64(o, "inputs.ooms");
	s->pages_to_scan = ju64(o, "scan_rate.pages_to_scan");
	s->sleep_ms = ju64(o, "scan_rate.sleep_millisecs");
	s->max_bps = ju64(o, "scan_rate.max_bytes_per_sec");
	arr = jget(o, "transitions");
	ck_assert_msg(arr && json_object_is_type(arr, json_type_array), "no transitions array");
	s->ntr = 0;
	for (size_t i = 0; i < json_object_array_length(arr) && s->ntr < 16; i++) {
		struct json_object *e = json_object_array_get_idx(arr, i);
		struct tr *t = &s->tr[s->ntr++];

		jstr(e, "from", t->from, sizeof(t->from));
		jstr(e, "to", t->to, sizeof(t->to));
		jstr(e, "reason", t->reason, sizeof(t->reason));
		t->ago_sec = jdbl(e, "ago_sec");
	}
	ck_assert_msg(!strcmp(s->state, "high") || !strcmp(s->state, "soft") ||
			      !strcmp(s->state, "hard") || !strcmp(s->state, "low"),
		      "state '%s'", s->state);
	ck_assert_msg(s->held_sec >= 0, "held_sec %f", s->held_sec);
	json_object_put(o);
	free(text);
}

/* ---- the child that fills the cgroup ------------------------------------- */

#define ALLOC_MAX (128 * MIB)
#define STEP_BYTES (64 * 1024)

struct cmd {
	char op;	   /* 'U' anonymous memory to usage arg, 'F' page cache past the limit,
			      'D' drop the page cache, 'Q' quit */
	int dir;	   /* the crossing to time: -1 free falls below cross_pm, +1 free rises
			      to cross_pm, 0 none */
	uint32_t cross_pm; /* permyriad of the limit, computed as the daemon does */
	uint64_t arg;
};

struct ack {
	uint64_t usage;
	uint32_t free_pm;
	int crossed;	     /* 1 during this command, -1 already before it, 0 not at all */
	uint64_t t_cross_us; /* the last moment free was seen on the old side */
	uint64_t t_done_us;
};

struct child {
	pid_t pid;
	int cmd_fd, ack_fd;
	char usage_path[300];
	uint64_t limit;
};

struct watch {
	const char *usage;
	uint64_t limit;
	int dir;
	uint32_t cross_pm;
	int crossed;
	uint64_t t_before; /* the start of the last sample on the old side */
};

static uint32_t free_pm_of(uint64_t limit, uint64_t usage)
{
	return usage >= limit ? 0 : (uint32_t)((limit - usage) * 10000 / limit);
}

/* Read usage; note the crossing. Returns the usage. */
static uint64_t sample(struct watch *w)
{
	uint64_t t = now_us(), u = read_u64(w->usage);
	uint32_t f = free_pm_of(w->limit, u);
	bool beyond = w->dir < 0 ? f < w->cross_pm : w->dir > 0 && f >= w->cross_pm;

	if (w->crossed)
		return u; /* time the first crossing, whatever follows */
	if (!beyond)
		w->t_before = t;
	else
		w->crossed = w->t_before ? 1 : -1; /* first sample already beyond: it was before */
	return u;
}

static void child_adjust(struct watch *w, char *region, size_t *touched, uint64_t target)
{
	uint64_t u = sample(w);

	while (u < target && *touched + STEP_BYTES <= ALLOC_MAX) {
		for (size_t off = 0; off < STEP_BYTES; off += 4096)
			region[*touched + off] = 1;
		*touched += STEP_BYTES;
		u = sample(w);
	}
	while (u > target && *touched >= STEP_BYTES) {
		*touched -= STEP_BYTES;
		madvise(region + *touched, STEP_BYTES, MADV_DONTNEED);
		u = sample(w);
	}
}

/* Read the file round and round until the cgroup has gone 1 MiB past its limit. */
static void child_fill_cache(struct watch *w, int fd, uint64_t target)
{
	static char buf[STEP_BYTES];
	uint64_t start = sample(w), done = 0, off = 0;
	struct stat st;

	if (fd < 0 || fstat(fd, &st) < 0 || st.st_size < (off_t)STEP_BYTES)
		_exit(12);
	while (done < 8 * w->limit) {
		if (pread(fd, buf, sizeof(buf), (off_t)off) <= 0)
			_exit(13);
		off = (off + sizeof(buf)) % (uint64_t)st.st_size;
		done += sizeof(buf);
		if (sample(w) >= target && done > w->limit - start + MIB)
			return;
	}
}

static void child_main(const char *cgdir, const char *usage, uint64_t limit, const char *datafile,
		       int cmd_fd, int ack_fd)
{
	char path[300], pid[32];
	size_t touched = 0;
	struct cmd cmd;
	char *region;
	int fd;

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	snprintf(path, sizeof(path), "%s/cgroup.procs", cgdir);
	snprintf(pid, sizeof(pid), "%d\n", (int)getpid());
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, pid, strlen(pid)) < 0)
		_exit(10);
	close(fd);
	region = mmap(NULL, ALLOC_MAX, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (region == MAP_FAILED)
		_exit(11);
	madvise(region, ALLOC_MAX, MADV_NOHUGEPAGE); /* 4 KiB steps, not 2 MiB */
	fd = datafile ? open(datafile, O_RDONLY | O_CLOEXEC) : -1;
	while (read(cmd_fd, &cmd, sizeof(cmd)) == sizeof(cmd)) {
		struct watch w = { usage, limit, cmd.dir, cmd.cross_pm, 0, 0 };
		struct ack a = { 0 };

		if (cmd.op == 'U') {
			child_adjust(&w, region, &touched, cmd.arg);
		} else if (cmd.op == 'F') {
			child_fill_cache(&w, fd, cmd.arg);
		} else if (cmd.op == 'D') {
			sample(&w);
			posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
			sample(&w);
			/* Back to the anon level set before the fill: a sanitizer
			 * build may have grown its own heap meanwhile. */
			if (cmd.arg && read_u64(usage) > cmd.arg)
				child_adjust(&w, region, &touched, cmd.arg);
		} else {
			_exit(0);
		}
		a.usage = read_u64(usage);
		a.free_pm = free_pm_of(limit, a.usage);
		a.crossed = w.crossed;
		a.t_cross_us = w.t_before;
		a.t_done_us = now_us();
		if (write(ack_fd, &a, sizeof(a)) != sizeof(a))
			_exit(14);
	}
	_exit(0);
}

static void child_start(struct child *ch, const char *cgdir, uint64_t limit, const char *datafile)
{
	int cmd[2], ack[2];

	ck_assert_int_eq(pipe2(cmd, O_CLOEXEC), 0);
	ck_assert_int_eq(pipe2(ack, O_CLOEXEC), 0);
	snprintf(ch->usage_path, sizeof(ch->usage_path), "%s/memory.usage_in_bytes", cgdir);
	ch->limit = limit;
	ch->pid = fork();
	ck_assert_int_ge(ch->pid, 0);
	if (ch->pid == 0) {
		close(cmd[1]);
		close(ack[0]);
		child_main(cgdir, ch->usage_path, limit, datafile, cmd[0], ack[1]);
	}
	close(cmd[0]);
	close(ack[1]);
	ch->cmd_fd = cmd[1];
	ch->ack_fd = ack[0];
}

static int child_stop(struct child *ch)
{
	struct cmd q = { .op = 'Q' };
	int status = 0;

	if (write(ch->cmd_fd, &q, sizeof(q)) < 0)
		kill(ch->pid, SIGKILL);
	close(ch->cmd_fd);
	close(ch->ack_fd);
	waitpid(ch->pid, &status, 0);
	return status;
}

/* ---- one run: drive the cgroup, watch the daemon ------------------------- */

enum { HIGH, SOFT, HARD, LOW, NSTATES };
static const char *const state_names[NSTATES] = { "high", "soft", "hard", "low" };

struct run {
	const char *tag, *sock, *want_source;
	struct child ch;
	uint64_t pts[NSTATES], sleep_ms[NSTATES], bps[NSTATES]; /* scan rate seen per state */
	bool seen[NSTATES];
	uint64_t max_stalls, max_stalls_per_sec, max_memcg;
	int64_t worst_us;
	struct pst last;
};

static int state_idx(const char *name)
{
	for (int i = 0; i < NSTATES; i++)
		if (!strcmp(name, state_names[i]))
			return i;
	return -1;
}

/* Poll once; check what must hold on every answer; keep the figures. */
static void observe(struct run *r, struct pst *s)
{
	int i;

	get_state(r->sock, s);
	ck_assert_msg(!strcmp(s->source, r->want_source), "source '%s', want '%s' (bpf_error '%s')",
		      s->source, r->want_source, s->bpf_error);
	i = state_idx(s->state);
	r->seen[i] = true;
	r->pts[i] = s->pages_to_scan;
	r->sleep_ms[i] = s->sleep_ms;
	r->bps[i] = s->max_bps;
	if (s->stalls > r->max_stalls)
		r->max_stalls = s->stalls;
	if (s->stalls_per_sec > r->max_stalls_per_sec)
		r->max_stalls_per_sec = s->stalls_per_sec;
	if (s->memcg_reclaims > r->max_memcg)
		r->max_memcg = s->memcg_reclaims;
	r->last = *s;
}

static uint64_t usage_for(uint32_t free_pm)
{
	return CG_LIMIT - CG_LIMIT * free_pm / 10000;
}

/*
 * Send a command to the child and poll `state` every 10 ms until the child is
 * done and the state is @want. With a crossing (@dir != 0): the state must be
 * seen within 2 s of it; print how long it took.
 */
static void step(struct run *r, char op, uint64_t arg, int dir, uint32_t cross_pm,
		 const char *want, const char *what)
{
	struct cmd c = { .op = op, .dir = dir, .cross_pm = cross_pm, .arg = arg };
	uint64_t t_cmd = now_us(), t_seen = 0, t_ref = 0, t_daemon = 0;
	struct ack a = { 0 };
	bool acked = false;
	struct pst s;
	int64_t lat;

	ck_assert_int_eq(write(r->ch.cmd_fd, &c, sizeof(c)), (ssize_t)sizeof(c));
	for (;;) {
		struct pollfd pfd = { .fd = r->ch.ack_fd, .events = POLLIN };

		if (!acked && poll(&pfd, 1, 0) == 1) {
			ck_assert_msg(read(r->ch.ack_fd, &a, sizeof(a)) == (ssize_t)sizeof(a),
				      "%s: the filling child died", what);
			acked = true;
			ck_assert_msg(!dir || a.crossed == 1,
				      "%s: the cgroup did not cross %.2f%% free %s (crossed %d, "
				      "now %.2f%% free)",
				      what, cross_pm / 100.0, dir < 0 ? "downwards" : "upwards",
				      a.crossed, a.free_pm / 100.0);
			t_ref = dir ? a.t_cross_us : a.t_done_us;
		}
		observe(r, &s);
		if (!strcmp(s.state, want) && !t_seen)
			t_seen = s.t_us;
		if (acked && !strcmp(s.state, want))
			break;
		ck_assert_msg(acked ? now_us() < t_ref + LATENCY_MAX_US
				    : now_us() < t_cmd + 20000000ULL,
			      "%s: state %s %s, want %s (free %.2f%%, child saw %.2f%%; stalls/s "
			      "%llu, psi some %.2f full %.2f; last transition: %s)",
			      what, s.state,
			      acked ? "2 s after the crossing" : "and the child still busy after 20 s",
			      want, s.free_percent, a.free_pm / 100.0,
			      (unsigned long long)s.stalls_per_sec, s.psi_some_avg10, s.psi_full_avg10,
			      s.ntr ? s.tr[s.ntr - 1].reason : "-");
		h_sleep_ms(10);
	}
	if (!dir) {
		printf("  %-27s %-4s free %6.2f%% (no crossing)\n", what, want, s.free_percent);
		return;
	}
	/* when the daemon itself moved: its newest transition into @want */
	for (int i = s.ntr - 1; i >= 0; i--)
		if (!strcmp(s.tr[i].to, want)) {
			t_daemon = s.t_us - (uint64_t)(s.tr[i].ago_sec * 1e6);
			break;
		}
	lat = (int64_t)t_seen - (int64_t)t_ref;
	if (lat > r->worst_us)
		r->worst_us = lat;
	printf("  %-27s %-4s free %6.2f%%: seen %5lld ms after the crossing (daemon's transition "
	       "%+5lld ms; crossing %4lld ms after the command), stalls %llu, %llu/s, "
	       "pages_to_scan %llu\n",
	       what, want, s.free_percent, ms_of(lat),
	       t_daemon ? ms_of((int64_t)t_daemon - (int64_t)t_ref) : 0LL,
	       ms_of((int64_t)t_ref - (int64_t)t_cmd), (unsigned long long)s.stalls,
	       (unsigned long long)s.stalls_per_sec, (unsigned long long)s.pages_to_scan);
	ck_assert_msg(lat <= (int64_t)LATENCY_MAX_US, "%s: %s seen %lld ms after the crossing",
		      what, want, ms_of(lat));
}

/* Hold at the limit for @ms: the state must stay @want. */
static void hold(struct run *r, unsigned ms, const char *want)
{
	struct pst s;

	for (uint64_t end = h_now_ms() + ms; h_now_ms() < end;) {
		observe(r, &s);
		ck_assert_msg(!strcmp(s.state, want), "left %s for %s at free %.2f%% (last: %s)",
			      want, s.state, s.free_percent, s.ntr ? s.tr[s.ntr - 1].reason : "-");
		h_sleep_ms(50);
	}
}

/* The transitions list ends with exactly @n moves, in order, each with a reason. */
static void check_transitions(const struct pst *s, const char *const (*want)[2], int n,
			      const char *log)
{
	for (int i = 0; i < s->ntr; i++)
		printf("  transition %-4s -> %-4s %6.2f s ago: %s\n", s->tr[i].from, s->tr[i].to,
		       s->tr[i].ago_sec, s->tr[i].reason);
	ck_assert_msg(s->ntr == n, "%d transitions, want %d (a state flapped or was skipped)",
		      s->ntr, n);
	for (int i = 0; i < n; i++) {
		const struct tr *t = &s->tr[i];
		char line[200];

		ck_assert_msg(!strcmp(t->from, want[i][0]) && !strcmp(t->to, want[i][1]),
			      "transition %d: %s -> %s, want %s -> %s", i, t->from, t->to,
			      want[i][0], want[i][1]);
		ck_assert_msg(strlen(t->reason) > 3, "transition %d has no reason: '%s'", i,
			      t->reason);
		ck_assert_msg(i == 0 || t->ago_sec <= s->tr[i - 1].ago_sec, "transitions out of order");
		/* the daemon logs the move with the same reason */
		snprintf(line, sizeof(line), "pressure: %s -> %s: %s", t->from, t->to, t->reason);
		ck_assert_msg(strstr(log, line), "the log lacks '%s'", line);
	}
}

/* The scanner runs faster in soft and worse than in high. */
static void check_scan_rate(const struct run *r)
{
	ck_assert(r->seen[HIGH]);
	ck_assert_msg(r->pts[HIGH] == 4096 && r->sleep_ms[HIGH] == 20,
		      "high: pages_to_scan %llu, sleep %llu ms; want the configured 4096 / 20",
		      (unsigned long long)r->pts[HIGH], (unsigned long long)r->sleep_ms[HIGH]);
	for (int i = SOFT; i < NSTATES; i++) {
		if (!r->seen[i])
			continue;
		printf("  scan rate %-4s: pages_to_scan %llu, sleep %llu ms, %llu MB/s (high: %llu, "
		       "%llu ms, %llu MB/s)\n",
		       state_names[i], (unsigned long long)r->pts[i],
		       (unsigned long long)r->sleep_ms[i], (unsigned long long)r->bps[i] / 1000000,
		       (unsigned long long)r->pts[HIGH], (unsigned long long)r->sleep_ms[HIGH],
		       (unsigned long long)r->bps[HIGH] / 1000000);
		ck_assert_msg(r->pts[i] > r->pts[HIGH],
			      "%s: pages_to_scan %llu, not above high's %llu", state_names[i],
			      (unsigned long long)r->pts[i], (unsigned long long)r->pts[HIGH]);
		ck_assert_msg(r->sleep_ms[i] <= r->sleep_ms[HIGH] && r->bps[i] > r->bps[HIGH],
			      "%s: sleeps %llu ms, %llu B/s; high %llu ms, %llu B/s", state_names[i],
			      (unsigned long long)r->sleep_ms[i], (unsigned long long)r->bps[i],
			      (unsigned long long)r->sleep_ms[HIGH], (unsigned long long)r->bps[HIGH]);
	}
}

/* The CLI shows the same: `dedupctl --json state`. */
static void check_dedupctl(const struct run *r)
{
	const char *args[] = { "--socket", r->sock, "--json", "state", NULL };
	struct json_object *o;
	char *out, st[8], src[16];
	int rc = tool_run("dedupctl", args, &out, 5000);

	ck_assert_msg(rc == 0, "dedupctl --json state: exit %d: %s", rc, out);
	o = json_tokener_parse(out);
	ck_assert_msg(o, "dedupctl --json state is not JSON: %s", out);
	jstr(o, "state", st, sizeof(st));
	jstr(o, "source", src, sizeof(src));
	ck_assert_str_eq(st, r->last.state);
	ck_assert_str_eq(src, r->want_source);
	ck_assert_msg(jget(o, "inputs.reclaim_stalls") && jget(o, "scan_rate.pages_to_scan") &&
			      jget(o, "transitions") && jget(o, "bpf_error"),
		      "dedupctl --json state lacks fields: %s", out);
	json_object_put(o);
	free(out);
}

enum mode { M_BPF, M_NOBPF, M_NOBODY };

static void real_pressure(enum mode mode)
{
	static const char *const full[][2] = {
		{ "high", "soft" }, { "soft", "hard" }, { "hard", "low" },
		{ "low", "hard" },  { "hard", "soft" }, { "soft", "high" },
	};
	static const char *const brief[][2] = {
		{ "high", "soft" }, { "soft", "hard" }, { "hard", "soft" }, { "soft", "high" },
	};
	const char *tag = mode == M_BPF ? "bpf" : mode == M_NOBPF ? "psi" : "nobody";
	char sock[300], logp[320], cg[256], data[128], *log;
	const char *args[12];
	struct run r = { .tag = tag };
	uint64_t t0 = h_now_ms();
	struct pst s;
	pid_t pid;
	int n = 0;

	if (!can_run_real(tag))
		return;
	cg_make(cg, sizeof(cg), tag, CG_LIMIT);
	sock_for(sock, sizeof(sock), tag);
	if (mode == M_NOBODY) {
		/* nobody must be able to create its socket */
		snprintf(sock, sizeof(sock), "%s/nobody.sock", workdir);
	}
	snprintf(logp, sizeof(logp), "%s.log", sock);
	data_path(data, sizeof(data), tag);
	if (mode != M_NOBODY)
		make_data_file(data, 32 * MIB);
	args[n++] = "--cgroup";
	args[n++] = cg;
	args[n++] = "--pages-to-scan";
	args[n++] = "4096";
	args[n++] = "--sleep-millisecs";
	args[n++] = "20";
	if (mode == M_NOBPF)
		args[n++] = "--no-bpf";
	/* No host PSI trigger: the cgroup's own reclaim stalls count in the host's
	 * PSI, and a trigger firing escalates the state a step for 2 s, racing the
	 * exact states expected here. PSI averages still count. */
	args[n++] = "--set";
	args[n++] = "pressure.psi_trigger=";
	args[n] = NULL;
	r.sock = sock;
	r.want_source = mode == M_BPF ? "bpf+psi" : "psi";
	pid = daemon_start(sock, args, mode == M_NOBODY ? NOBODY : 0);
	printf("%s: dedupd %d%s --cgroup %s (limit 64 MiB)%s\n", tag, (int)pid,
	       mode == M_NOBODY ? " as uid 65534" : "", cg, mode == M_NOBPF ? " --no-bpf" : "");

	observe(&r, &s);
	ck_assert_str_eq(s.state, "high");
	ck_assert_uint_eq(s.total_bytes, CG_LIMIT);
	if (mode == M_BPF)
		ck_assert_msg(!s.bpf_error[0], "bpf_error '%s'", s.bpf_error);
	else if (mode == M_NOBPF)
		ck_assert_msg(strstr(s.bpf_error, "disabled by configuration") &&
				      strstr(s.bpf_error, "PSI alone"),
			      "bpf_error '%s' does not say BPF is off by configuration", s.bpf_error);
	else
		ck_assert_msg(strstr(s.bpf_error, "load failed") &&
				      strstr(s.bpf_error, "Operation not permitted") &&
				      strstr(s.bpf_error, "PSI alone"),
			      "bpf_error '%s' does not say why BPF did not load", s.bpf_error);
	printf("  bpf_error: '%s'\n", s.bpf_error);

	child_start(&r.ch, cg, CG_LIMIT, mode == M_NOBODY ? NULL : data);
	step(&r, 'U', usage_for(5000), 0, 0, "high", "anon to 50% free");
	step(&r, 'U', usage_for(500), -1, 600, "soft", "anon to 5% free");
	step(&r, 'U', usage_for(300), -1, 400, "hard", "anon to 3% free");
	if (mode != M_NOBODY) {
		step(&r, 'F', CG_LIMIT - 320 * 1024, -1, 100, "low", "page cache past the limit");
		/* low holds while the cgroup sits at its limit, and BPF stall rates decay */
		hold(&r, 2500, "low");
		if (mode == M_BPF) {
			ck_assert_msg(r.max_stalls > 0 && r.max_memcg > 0,
				      "BPF saw no reclaim stall in %s (reclaim_stalls %llu, "
				      "memcg_reclaims %llu)",
				      cg, (unsigned long long)r.max_stalls,
				      (unsigned long long)r.max_memcg);
			printf("  bpf: %llu reclaim stalls in the cgroup (%llu us), peak %llu/s, "
			       "memcg_reclaims %llu, direct %llu\n",
			       (unsigned long long)r.max_stalls,
			       (unsigned long long)r.last.stall_us,
			       (unsigned long long)r.max_stalls_per_sec,
			       (unsigned long long)r.max_memcg,
			       (unsigned long long)r.last.direct_reclaims);
		} else {
			ck_assert_msg(r.max_stalls == 0 && r.max_memcg == 0,
				      "BPF figures without BPF: %llu stalls, %llu memcg reclaims",
				      (unsigned long long)r.max_stalls,
				      (unsigned long long)r.max_memcg);
		}
		step(&r, 'D', usage_for(300), +1, 250, "hard", "page cache dropped");
	}
	step(&r, 'U', usage_for(525), +1, 450, "soft", "anon to 5.25% free");
	step(&r, 'U', usage_for(5000), +1, 650, "high", "anon to 50% free");
	ck_assert_int_eq(child_stop(&r.ch), 0);

	observe(&r, &s);
	log = slurp(logp);
	if (mode == M_NOBODY)
		check_transitions(&s, brief, 4, log);
	else
		check_transitions(&s, full, 6, log);
	check_scan_rate(&r);
	check_dedupctl(&r);
	/* without BPF the daemon says so once, in the log */
	ck_assert_msg(count_lines_with(log, "using PSI alone") == (mode == M_BPF ? 0 : 1),
		      "'using PSI alone' logged %d times, want %d:\n%s",
		      count_lines_with(log, "using PSI alone"), mode == M_BPF ? 0 : 1, log);
	if (mode != M_BPF)
		ck_assert_msg(strstr(log, s.bpf_error), "the log does not give the reason '%s'",
			      s.bpf_error);
	free(log);
	daemon_stop_clean(pid, sock);
	printf("  %s: worst crossing -> state %lld ms; %.1f s in all\n", tag, ms_of(r.worst_us),
	       (h_now_ms() - t0) / 1000.0);
	unlink(logp);
	unlink(data);
	cg_remove(tag);
}

START_TEST(test_real_pressure_bpf)
{
	real_pressure(M_BPF);
}
END_TEST

START_TEST(test_real_pressure_no_bpf)
{
	real_pressure(M_NOBPF);
}
END_TEST

/* uid 65534: BPF cannot load; the daemon says why once and works on PSI and free memory. */
START_TEST(test_unprivileged_psi_alone)
{
	real_pressure(M_NOBODY);
}
END_TEST

/*
 * "Logged once" must hold when another source's error comes and goes: the
 * watched cgroup disappears under the running daemon (it keeps running and
 * says so) and comes back.
 */
START_TEST(test_psi_alone_logged_once)
{
	char sock[300], logp[320], cg[256], path[300], *log = NULL;
	const char *args[] = { "--cgroup", NULL, "--no-bpf", NULL };
	struct pst s;
	pid_t pid;
	int n;

	if (!can_run_real("psi alone logged once"))
		return;
	cg_make(cg, sizeof(cg), "vanish", CG_LIMIT);
	args[1] = cg;
	sock_for(sock, sizeof(sock), "vanish");
	snprintf(logp, sizeof(logp), "%s.log", sock);
	pid = daemon_start(sock, args, 0);
	get_state(sock, &s);
	ck_assert_str_eq(s.source, "psi");
	ck_assert_int_eq(rmdir(cg), 0);
	snprintf(path, sizeof(path), "%s/memory.limit_in_bytes", cg);
	for (uint64_t end = h_now_ms() + 2000; h_now_ms() < end; h_sleep_ms(20)) {
		free(log);
		log = slurp(logp);
		if (strstr(log, path))
			break;
	}
	ck_assert_msg(strstr(log, path), "no message about the vanished %s:\n%s", path, log);
	get_state(sock, &s); /* still answers */
	cg_make(cg, sizeof(cg), "vanish", CG_LIMIT);
	h_sleep_ms(1000); /* several ticks: the error clears */
	get_state(sock, &s);
	ck_assert_uint_eq(s.total_bytes, CG_LIMIT);
	free(log);
	log = slurp(logp);
	n = count_lines_with(log, "using PSI alone");
	printf("vanish: 'using PSI alone' logged %d time(s) while the cgroup went and came back\n",
	       n);
	ck_assert_msg(n == 1, "'using PSI alone' logged %d times, want once:\n%s", n, log);
	free(log);
	daemon_stop_clean(pid, sock);
	unlink(logp);
	cg_remove("vanish");
}
END_TEST

/* ---- bad input ---------------------------------------------------------- */

static void expect_refusal(const char *const *args, const char *sock, const char *what,
			   char **out)
{
	uint64_t t = h_now_ms();
	int rc = tool_run("dedupd", args, out, 5000);

	printf("%s: exit %d after %llu ms: %s", what, rc, (unsigned long long)(h_now_ms() - t),
	       *out);
	ck_assert_msg(rc == 1, "%s: dedupd exit %d, want 1; said: %s", what, rc, *out);
	ck_assert_msg(access(sock, F_OK) != 0, "%s: the socket %s was left behind", what, sock);
}

START_TEST(test_cgroup_missing)
{
	char sock[300], *out;
	const char *args[] = { "--foreground", "--socket", sock, "--cgroup",
			       "/nonexistent/dd-check-pstate", NULL };

	snprintf(sock, sizeof(sock), "%s/missing.sock", workdir);
	expect_refusal(args, sock, "--cgroup /nonexistent/dd-check-pstate", &out);
	ck_assert_msg(strstr(out, "/nonexistent/dd-check-pstate") &&
			      strstr(out, "No such file or directory"),
		      "the message does not name the missing path: %s", out);
	free(out);
}
END_TEST

/* A directory that exists but is no memory cgroup: say that, not "no such file". */
START_TEST(test_cgroup_not_memory)
{
	static const char *const dirs[] = { "/tmp", "/sys/fs/cgroup/cpu" };
	const char *dir = dirs[_i];
	char sock[300], *out;
	const char *args[] = { "--foreground", "--socket", sock, "--cgroup", dir, NULL };
	struct stat st;

	if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
		printf("SKIP cgroup not memory: %s is not a directory here\n", dir);
		return;
	}
	snprintf(sock, sizeof(sock), "%s/notmem.sock", workdir);
	expect_refusal(args, sock, dir, &out);
	ck_assert_msg(strstr(out, dir), "the message does not name %s: %s", dir, out);
	ck_assert_msg(strstr(out, "cgroup") && !strstr(out, "No such file or directory"),
		      "unclear: %s exists but is no memory cgroup (it has neither "
		      "memory.limit_in_bytes nor memory.max); dedupd said: %s",
		      dir, out);
	free(out);
}
END_TEST

static const struct {
	const char *text;
	int lines[2]; /* the line to blame: either of the pair */
	const char *keys[2];
} bad_conf[] = {
	{ "# dd-check-pstate: thresholds out of order\n[pressure]\nhigh_free_percent = 2\n"
	  "soft_free_percent = 4\n",
	  { 3, 4 }, { "high_free_percent", "soft_free_percent" } },
	{ "[pressure]\n# equal to the default high (6): not decreasing\nsoft_free_percent = 6\n",
	  { 3, 3 }, { "high_free_percent", "soft_free_percent" } },
	{ "[scan]\npages_to_scan = 4096\n\n[pressure]\nhard_free_percent = 2\n"
	  "low_free_percent = 3\n",
	  { 5, 6 }, { "hard_free_percent", "low_free_percent" } },
};

START_TEST(test_config_thresholds)
{
	char sock[300], conf[200], want[2][230], *out;
	const char *args[] = { "--foreground", "--socket", sock, "-c", conf, NULL };

	snprintf(sock, sizeof(sock), "%s/conf.sock", workdir);
	snprintf(conf, sizeof(conf), "%s/bad-%d.conf", workdir, _i);
	write_text(conf, bad_conf[_i].text);
	expect_refusal(args, sock, conf, &out);
	for (int i = 0; i < 2; i++)
		snprintf(want[i], sizeof(want[i]), "%s:%d:", conf, bad_conf[_i].lines[i]);
	ck_assert_msg(strstr(out, want[0]) || strstr(out, want[1]),
		      "the message does not name %s and line %d or %d: %s", conf,
		      bad_conf[_i].lines[0], bad_conf[_i].lines[1], out);
	ck_assert_msg(strstr(out, bad_conf[_i].keys[0]) && strstr(out, bad_conf[_i].keys[1]),
		      "the message does not name %s and %s: %s", bad_conf[_i].keys[0],
		      bad_conf[_i].keys[1], out);
	free(out);
	unlink(conf);
}
END_TEST

/* ---- fixtures ----------------------------------------------------------- */

static void real_teardown(void)
{
	static const char *const tags[] = { "bpf", "psi", "nobody", "vanish" };
	char path[300];

	if (daemon_pid > 0) { /* CK_NOFORK: the daemon is the runner's child */
		kill(daemon_pid, SIGTERM);
		waitpid(daemon_pid, NULL, 0);
		daemon_pid = -1;
	}
	for (size_t i = 0; i < sizeof(tags) / sizeof(tags[0]); i++) {
		if (have_memcg_v1())
			cg_remove(tags[i]);
		data_path(path, sizeof(path), tags[i]);
		unlink(path);
		sock_for(path, sizeof(path), tags[i]);
		unlink(path); /* the log stays when a test failed, for the post-mortem */
	}
}

Suite *pstate_suite(void)
{
	Suite *s = suite_create("pstate");
	TCase *tc;

	tc = tcase_create("badinput");
	tcase_set_timeout(tc, 20);
	tcase_add_test(tc, test_cgroup_missing);
	tcase_add_loop_test(tc, test_cgroup_not_memory, 0, 2);
	tcase_add_loop_test(tc, test_config_thresholds, 0,
			    (int)(sizeof(bad_conf) / sizeof(bad_conf[0])));
	suite_add_tcase(s, tc);

	tc = tcase_create("real");
	tcase_set_timeout(tc, 40);
	tcase_add_unchecked_fixture(tc, NULL, real_teardown);
	tcase_add_test(tc, test_real_pressure_bpf);
	tcase_add_test(tc, test_real_pressure_no_bpf);
	tcase_add_test(tc, test_unprivileged_psi_alone);
	tcase_add_test(tc, test_psi_alone_logged_once);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr;
	int failed;

	setvbuf(stdout, NULL, _IOLBF, 0); /* a failing forked test must not lose its lines */
	runner_pid = getpid();
	signal(SIGPIPE, SIG_IGN);
	snprintf(workdir, sizeof(workdir), "/tmp/dd-check-pstate.%d", (int)runner_pid);
	if (mkdir(workdir, 0755) < 0 && errno != EEXIST) {
		perror(workdir);
		return 1;
	}
	if (h_is_root() && chown(workdir, NOBODY, NOBODY) < 0) /* uid 65534's socket */
		perror(workdir);
	sr = srunner_create(pstate_suite());
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	if (rmdir(workdir) < 0) /* what a failed test left there */
		printf("kept %s for the post-mortem: %s\n", workdir, strerror(errno));
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
