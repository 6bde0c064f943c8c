// SPDX-License-Identifier: MIT
/*
 * dd-bench: `make bench`, dedupd against kernel KSM on the same workloads in
 * the same run (issue 3). tests/bench/bench.sh runs it.
 *
 * For each workload and each engine (kernel KSM first, then dedupd) it starts
 * build/tools/dd-workload --hold, waits until every child says FILLED, takes a
 * baseline (/proc/meminfo, the children's smaps_rollup), starts the engine,
 * sends SIGUSR1 to the children (they offer their memory: madvise(MADV_MERGEABLE)
 * or dedup_register()) and samples every 50 ms (100 ms above 1 GiB) the
 * memory the workload and the engine hold, and the engine's CPU time (ksmd's;
 * or dedupd's whole process plus the dedup-agent thread of every client).
 *
 * The saving is that memory at the baseline minus now, from the kernel's
 * per-process accounting (struct footprint): for KSM the children's Pss
 * (smaps_rollup; a KSM page stays anonymous in every sharer, Pss divides it)
 * plus the rmap_items (/proc/PID/ksm_stat) and stable nodes (pages_shared) at
 * their slab object sizes; for dedupd the children's RssAnon (a merged page
 * becomes a mapping of the store memfd) plus everything dedupd holds: the
 * store memfd's allocated blocks, the daemon's RssAnon and page tables (it
 * starts after the baseline, so all of it is charged). Both include the
 * children's page tables, and at the end the slab of the VMAs added
 * (vm_area_struct + anon_vma_chain per VMA, counted in /proc/PID/maps).
 * The host-wide MemAvailable and MemFree deltas (plus the pages on the
 * per-CPU free lists, see pcp_kib()) are recorded next to it as a cross-check:
 * on a quiet host they agree with it, but any other process's allocations
 * move them (compilers here swing them by +-100 MiB), which is why they are
 * not the primary figure. The engine's own counter
 * (bytes_saved_net, KSM's general_profit) must agree within COUNTER_TOL.
 * The time (and CPU) to 95 % of the final saving is interpolated between the
 * two samples around the crossing (series_cross()); the first sample at or
 * above it is printed beside it and kept in results.json (t95_sample_s).
 *
 *   W1  4 x 256 MiB, 50 % duplicate in runs of 1-64 pages, 10 % zero
 *   W2  W1 at 4 x 1 GiB
 *   W3  W1 with single scattered duplicates (every merge splits a VMA)
 *   W3m W3 again for dedupd only, with vm.max_map_count raised for the run so
 *       that dedupd's VMA budget (half of it) cannot be what limits the saving
 *   W4  W1 plus 5 % of pages rewritten every second: CPU per second and saving
 *       over a WINDOW_S window once the saving is steady (see warmed_up())
 *   S   4 x 256 MiB of unique pages: scan throughput per CPU
 *
 * Every run ends with SIGTERM to the workload, whose children verify every byte;
 * a mismatch fails the bench. Between runs KSM is off (run=0) and the workload
 * has exited. The KSM knobs and vm.max_map_count it changes are written back on
 * every exit path and listed in OUT/restore.txt meanwhile, and the processes it
 * started in OUT/pids, so that bench.sh can clean up if this program is killed.
 * Raw numbers go to OUT/results.json, the table to stdout and OUT/table.txt.
 *
 * Environment: DEDUPD_ARGS (replaces the default dedupd scan arguments),
 * BENCH_ONLY=W1,W3,... (subset), BENCH_MAX_MAP_COUNT=N (the value for W3m;
 * 0 skips W3m), BENCH_W4_WARMUP_S (a fixed W4 warm-up instead),
 * BENCH_REPEAT=N (run each workload N times, up to 5; the table shows medians).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE_SIZE_B 4096.0
#define MIB (1024.0 * 1024.0)
#define SAMPLE_MS 50
#define SAMPLE_MS_LARGE 100	 /* above 1 GiB: each Pss walk costs ~4 ms/GiB */
#define FLAT_S 2.0		 /* "converged": saving flat for this long */
#define FLAT_PERMYRIAD 50	 /* ... within 0.5 % */
#define MIN_SAVING_PERMYRIAD 100 /* and at least 1 % of the workload */
#define WINDOW_S 10.0		 /* W4 steady-state window */
#define W4_FLAT_PERMYRIAD 100	 /* W4 warm-up: flat within 1 % */
#define W4_WARMUP_MAX_S 60.0
#define THROUGHPUT_S 3.0	      /* S measuring window */
#define COUNTER_TOL_PCT 5.0	      /* own counter vs kernel: 5 % ... */
#define COUNTER_TOL_FLOOR_B (8 * MIB) /* ... or 8 MiB */
#define MEM_BACK_SLACK_B (128 * MIB)
#define OTHER_CPU_NOISY 0.15 /* other tenants' CPUs that make a run noisy */
#define MAX_KIDS 64
#define MAX_SAMPLES 4096 /* 200 s at 50 ms */
#define DEDUPD_DEFAULT_ARGS "--pages-to-scan 100000 --sleep-millisecs 0"
#define KSM_DIR "/sys/kernel/mm/ksm/"

enum engine { E_KSM, E_DEDUPD, E_N };
static const char *const engine_name[E_N] = { "ksm", "dedupd" };

enum wkind { CONVERGE, STEADY, THROUGHPUT };

struct wspec {
	const char *name;
	const char *what;
	int procs;
	unsigned mib;
	const char *args[8]; /* extra dd-workload arguments, NULL-terminated */
	double timeout_s;    /* convergence timeout */
	enum wkind kind;
	bool raise_maps; /* dedupd only, vm.max_map_count raised (see map_count()) */
};

/* clang-format off */
static const struct wspec wspecs[] = {
	{ "W1", "4 x 256 MiB, 50 % dup in runs of 1-64 pages, 10 % zero", 4, 256,
	  { "--dup", "50", "--zero", "10" }, 60, CONVERGE, false },
	{ "W2", "W1 at 4 x 1 GiB", 4, 1024,
	  { "--dup", "50", "--zero", "10" }, 120, CONVERGE, false },
	{ "W3", "W1 with single scattered duplicates", 4, 256,
	  { "--dup", "50", "--zero", "10", "--scatter" }, 60, CONVERGE, false },
	{ "W3m", "W3, dedupd with vm.max_map_count raised", 4, 256,
	  { "--dup", "50", "--zero", "10", "--scatter" }, 60, CONVERGE, true },
	{ "W4", "W1, then 5 % of pages rewritten every second", 4, 256,
	  { "--dup", "50", "--zero", "10", "--rewrite-pct", "5" }, 0, STEADY, false },
	{ "S", "4 x 256 MiB, all unique (scan throughput)", 4, 256,
	  { "--dup", "0", "--zero", "0" }, 0, THROUGHPUT, false },
};
/* clang-format on */
#define NW (sizeof(wspecs) / sizeof(wspecs[0]))

/* The knobs the bench may change; each is written back if it was. */
enum { K_RUN, K_PAGES_TO_SCAN, K_SLEEP, K_ZERO, K_ADVISOR, K_MAX_MAP, K_N };
static struct knob {
	const char *path;
	char orig[64];
	bool saved;
} knobs[K_N] = {
	/* clang-format off */
	{ KSM_DIR "run" }, { KSM_DIR "pages_to_scan" }, { KSM_DIR "sleep_millisecs" },
	{ KSM_DIR "use_zero_pages" }, { KSM_DIR "advisor_mode" }, { "/proc/sys/vm/max_map_count" },
	/* clang-format on */
};

/* A workload: the dd-workload parent and the children it reported. */
struct wl {
	pid_t pid;
	int out; /* read end of its stdout */
	pid_t kids[MAX_KIDS];
	int nkids, ready, status; /* status: once exited */
	bool exited;
	char buf[4096];
	size_t len;
	char log[PATH_MAX];
};

struct sample {
	double t;	 /* seconds since SIGUSR1 */
	double saving_b; /* footprint at the baseline - now */
	double avail_b;	 /* MemAvailable - baseline */
	double free_b;	 /* MemFree - baseline */
	long long ticks; /* engine CPU since the start, clock ticks */
	long long own;	 /* KSM: pages_sharing + ksm_zero_pages; dedupd: -1 */
};

/* What the workload and the engine hold (see the top of the file). */
struct footprint {
	long long kids_kib;	/* KSM: sum of Pss; dedupd: sum of RssAnon */
	long long kids_pte_kib; /* the children's page tables */
	long long ksm_slab_b;	/* rmap_items and stable nodes */
	long long memfd_b;	/* dedupd's store */
	long long daemon_kib;	/* dedupd's RssAnon + page tables */
};

struct run {
	const struct wspec *w;
	enum engine e;
	int rep; /* which repeat, from 0 */
	struct wl wl;
	pid_t daemon;
	char sock[PATH_MAX], dlog[PATH_MAX];
	long long pre_avail_kib, avail0_kib, free0_kib, vmas0;
	struct footprint fp0;
	double t0;
	long long ticks0;
	struct sample *s;
	size_t ns;
	struct json_object *j;
	/* figures, NAN when not measured */
	bool done, verified, converged;
	double t_conv_s, t95_s, cpu95_s, saving_b, avail_b, free_b, own_b, vma_cost_b;
	double t95_sample_s, cpu95_sample_s; /* the first sample at or above 95 % */
	double steady_cpu, steady_saving_b;
	double gbps, gbps_alt;
	double meta_b, meta_anon_b;
	long long others0, max_map_count;
	double other_cpu; /* CPUs kept busy by other processes, on average */
};

static struct {
	const char *build, *out;
	volatile sig_atomic_t interrupted;
	long hz;
	pid_t ksmd;
	double rmap_item_b, stable_node_b, vma_b;
	const char *rmap_item_src;
	struct wl *cur_wl;
	pid_t cur_daemon;
	bool failed;
	char notes[40][256];
	int nnotes;
} g;

#define MAX_REPEAT 5
static struct run runs[MAX_REPEAT][NW][E_N];
static int nrepeat = 1; /* BENCH_REPEAT: the table shows the median */

/* --- small helpers ------------------------------------------------------- */

#define JADD(o, k, v) json_object_object_add(o, k, v)
#define JD(v) json_object_new_double(v)
#define JI(v) json_object_new_int64(v)

static double workload_bytes(const struct wspec *w)
{
	return (double)w->procs * w->mib * MIB;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Sleep ms; false if a signal asked us to stop. */
static bool nap_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

	if (g.interrupted)
		return false;
	nanosleep(&ts, NULL);
	return !g.interrupted;
}

static void note(const char *fmt, ...)
{
	va_list ap;

	if (g.nnotes >= (int)(sizeof(g.notes) / sizeof(g.notes[0])))
		return;
	va_start(ap, fmt);
	vsnprintf(g.notes[g.nnotes], sizeof(g.notes[0]), fmt, ap);
	va_end(ap);
	for (int i = 0; i < g.nnotes; i++)
		if (!strcmp(g.notes[i], g.notes[g.nnotes]))
			return; /* the same for another repeat */
	g.nnotes++;
}

static int read_file(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -errno;
	buf[n] = 0;
	return (int)n;
}

static int write_file(const char *path, const char *val)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	ssize_t n, len = (ssize_t)strlen(val);

	if (fd < 0)
		return -errno;
	n = write(fd, val, (size_t)len);
	close(fd);
	return n == len ? 0 : n < 0 ? -errno : -EIO;
}

static long long read_ll(const char *path)
{
	char buf[64];

	return read_file(path, buf, sizeof(buf)) > 0 ? atoll(buf) : -1;
}

static long long ksm_counter(const char *name)
{
	char path[128];

	snprintf(path, sizeof(path), KSM_DIR "%s", name);
	return read_ll(path);
}

/* "Field:   N kB" from a /proc file with such lines; -1 if absent. */
static long long kib_field(const char *path, const char *field)
{
	char buf[8192], *p;
	size_t fl = strlen(field);

	if (read_file(path, buf, sizeof(buf)) <= 0)
		return -1;
	for (p = buf; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
		if (!strncmp(p, field, fl) && p[fl] == ':')
			return atoll(p + fl + 1);
	return -1;
}

/* Pages on the per-CPU free lists (/proc/zoneinfo "count:"), in KiB. They
 * are free but not in MemFree, and since the pcp auto-tuning of 6.7 the lists
 * grow to hold much of a burst of frees: after KSM frees 465 MiB here they
 * held ~160 MiB more than before, draining at ~8 MiB/s. */
static long long pcp_kib(void)
{
	char line[256];
	long long sum = 0, v;
	FILE *f = fopen("/proc/zoneinfo", "re");

	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, " count: %lld", &v) == 1)
			sum += v;
	if (f)
		fclose(f);
	return sum * (long long)(PAGE_SIZE_B / 1024);
}

/* A /proc/meminfo figure; MemFree and MemAvailable with the per-CPU lists. */
static long long meminfo_kib(const char *field)
{
	long long v = kib_field("/proc/meminfo", field);

	if (!strcmp(field, "MemFree") || !strcmp(field, "MemAvailable"))
		v += pcp_kib();
	return v;
}

/* utime + stime (clock ticks) of a process or thread; -1 if gone. */
static long long stat_ticks(const char *path)
{
	char buf[1024], *p;
	unsigned long long ut, st;

	if (read_file(path, buf, sizeof(buf)) <= 0 || !(p = strrchr(buf, ')')))
		return -1;
	/* fields 3.. after the comm; utime and stime are fields 14 and 15 */
	if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
		return -1;
	return (long long)(ut + st);
}

static long long pid_ticks(pid_t pid)
{
	char path[64];

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	return stat_ticks(path);
}

/* CPU of the threads named dedup-agent in pid. */
static long long agent_ticks(pid_t pid)
{
	char path[300], comm[64];
	long long sum = 0, t;
	struct dirent *d;
	DIR *dir;

	snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
	if (!(dir = opendir(path)))
		return 0;
	while ((d = readdir(dir))) {
		if (d->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/%d/task/%s/comm", (int)pid, d->d_name);
		if (read_file(path, comm, sizeof(comm)) <= 0 || strcmp(comm, "dedup-agent\n"))
			continue;
		snprintf(path, sizeof(path), "/proc/%d/task/%s/stat", (int)pid, d->d_name);
		t = stat_ticks(path);
		sum += t > 0 ? t : 0;
	}
	closedir(dir);
	return sum;
}

static bool comm_is(pid_t pid, const char *name)
{
	char path[64], comm[64];

	snprintf(path, sizeof(path), "/proc/%d/comm", (int)pid);
	if (read_file(path, comm, sizeof(comm)) <= 0)
		return false;
	comm[strcspn(comm, "\n")] = 0;
	return !strcmp(comm, name);
}

static pid_t find_ksmd(void)
{
	DIR *dir = opendir("/proc");
	struct dirent *d;
	pid_t pid = -1;

	while (dir && (d = readdir(dir)))
		if (atoi(d->d_name) > 0 && comm_is(atoi(d->d_name), "ksmd")) {
			pid = atoi(d->d_name);
			break;
		}
	if (dir)
		closedir(dir);
	return pid;
}

/* Other dedupd / dd-workload processes make every figure noisy: say so. */
static void warn_other_processes(void)
{
	DIR *dir = opendir("/proc");
	struct dirent *d;
	char list[200] = "";
	size_t len = 0;

	while (dir && (d = readdir(dir))) {
		pid_t p = atoi(d->d_name);

		if (p > 0 && p != getpid() && (comm_is(p, "dedupd") || comm_is(p, "dd-workload")))
			len += (size_t)snprintf(
			    list + len, len < sizeof(list) ? sizeof(list) - len : 0, " %d", (int)p);
	}
	if (dir)
		closedir(dir);
	if (len) {
		fprintf(stderr,
			"dd-bench: warning: other dedupd/dd-workload processes are running "
			"(pids%s): CPU and MemAvailable figures will be noisy\n",
			list);
		note("other dedupd/dd-workload processes were running at the start (pids%.150s)",
		     list);
	}
}

/* --- knobs: change, remember, restore ------------------------------------ */

static void restore_file_write(void)
{
	char path[PATH_MAX], tmp[PATH_MAX + 8];
	FILE *f;

	snprintf(path, sizeof(path), "%s/restore.txt", g.out);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	if (!(f = fopen(tmp, "we")))
		return;
	for (int k = K_N - 1; k >= 0; k--)
		if (knobs[k].saved)
			fprintf(f, "%s %s\n", knobs[k].path, knobs[k].orig);
	fclose(f);
	rename(tmp, path);
}

/* The current value; for "[none] scan-time" style files, the bracketed one. */
static int knob_read(const struct knob *k, char *val, size_t len)
{
	char buf[64], *b, *e;
	int r = read_file(k->path, buf, sizeof(buf));

	if (r < 0)
		return r;
	buf[strcspn(buf, "\n")] = 0;
	b = strchr(buf, '[');
	e = b ? strchr(b, ']') : NULL;
	if (b && e) {
		*e = 0;
		memmove(buf, b + 1, strlen(b + 1) + 1);
	}
	snprintf(val, len, "%s", buf);
	return 0;
}

static int knob_set(int k, const char *val)
{
	struct knob *kn = &knobs[k];
	char cur[64];
	int r;

	if (!kn->saved) {
		if ((r = knob_read(kn, kn->orig, sizeof(kn->orig))) < 0)
			return r;
		kn->saved = true;
		restore_file_write();
	}
	if (knob_read(kn, cur, sizeof(cur)) == 0 && !strcmp(cur, val))
		return 0;
	r = write_file(kn->path, val);
	if (r < 0)
		fprintf(stderr, "dd-bench: cannot write %s to %s: %s\n", val, kn->path,
			strerror(-r));
	return r;
}

static void knob_restore(int k)
{
	struct knob *kn = &knobs[k];
	char cur[64];
	int r;

	if (!kn->saved)
		return;
	if (knob_read(kn, cur, sizeof(cur)) == 0 && strcmp(cur, kn->orig)) {
		r = write_file(kn->path, kn->orig);
		if (r < 0)
			fprintf(stderr, "dd-bench: cannot restore %s to %s: %s\n", kn->path,
				kn->orig, strerror(-r));
	}
	kn->saved = false;
	restore_file_write();
}

/* Stop ksmd first, then put every knob back (run last). */
static void knobs_restore(void)
{
	if (knobs[K_RUN].saved)
		write_file(knobs[K_RUN].path, "0");
	for (int k = K_N - 1; k >= 0; k--)
		knob_restore(k);
}

/* --- processes ----------------------------------------------------------- */

static void pids_write(void)
{
	char path[PATH_MAX];
	FILE *f;

	snprintf(path, sizeof(path), "%s/pids", g.out);
	if (!(f = fopen(path, "we")))
		return;
	if (g.cur_wl && g.cur_wl->pid > 0) {
		fprintf(f, "%d dd-workload\n", (int)g.cur_wl->pid);
		for (int i = 0; i < g.cur_wl->nkids; i++)
			fprintf(f, "%d dd-workload\n", (int)g.cur_wl->kids[i]);
	}
	if (g.cur_daemon > 0)
		fprintf(f, "%d dedupd\n", (int)g.cur_daemon);
	fclose(f);
}

/* Fork and exec argv, stdout to out_fd (or the log), stderr to the log. The
 * child gets SIGTERM if we die. */
static pid_t spawn(char *const argv[], int out_fd, const char *log, const char *sock)
{
	pid_t parent = getpid(), pid = fork();
	int fd;

	if (pid != 0)
		return pid < 0 ? -errno : pid;
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	if (getppid() != parent)
		_exit(127);
	fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (fd < 0 || dup2(out_fd >= 0 ? out_fd : fd, 1) < 0 || dup2(fd, 2) < 0)
		_exit(127);
	if (sock)
		setenv("DEDUPD_SOCKET", sock, 1);
	execv(argv[0], argv);
	dprintf(2, "dd-bench: cannot run %s: %m\n", argv[0]);
	_exit(127);
}

/* waitpid with a timeout; returns 0 and the status, or -ETIMEDOUT. */
static int wait_pid(pid_t pid, double timeout_s, int *status)
{
	double end = now_s() + timeout_s;
	pid_t r;

	do {
		r = waitpid(pid, status, WNOHANG);
		if (r == pid)
			return 0;
		if (r < 0 && errno != EINTR)
			return -errno;
		struct timespec ts = { 0, 20000000 };
		nanosleep(&ts, NULL);
	} while (now_s() < end);
	return -ETIMEDOUT;
}

/* Run argv to completion, its stdout into buf; the exit status or -errno. */
static int run_capture(char *const argv[], char *buf, size_t len, double timeout_s)
{
	int p[2], st, r;
	size_t got = 0;
	pid_t pid;
	char log[PATH_MAX];

	snprintf(log, sizeof(log), "%s/dedupctl.log", g.out);
	if (pipe2(p, O_CLOEXEC) < 0)
		return -errno;
	pid = spawn(argv, p[1], log, NULL);
	close(p[1]);
	if (pid < 0) {
		close(p[0]);
		return pid;
	}
	for (;;) {
		struct pollfd pf = { p[0], POLLIN, 0 };
		ssize_t n;

		if (poll(&pf, 1, (int)(timeout_s * 1000)) <= 0)
			break;
		n = read(p[0], buf + got, len - 1 - got);
		if (n <= 0)
			break;
		got += (size_t)n;
		if (got == len - 1)
			break;
	}
	buf[got] = 0;
	close(p[0]);
	if ((r = wait_pid(pid, timeout_s, &st)) < 0) {
		kill(pid, SIGKILL);
		waitpid(pid, &st, 0);
		return r;
	}
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* --- the workload -------------------------------------------------------- */

static int wl_start(struct wl *w, const struct run *r)
{
	char path[PATH_MAX], procs[16], mib[16];
	const char *argv[32];
	int n = 0, p[2];

	snprintf(path, sizeof(path), "%s/tools/dd-workload", g.build);
	snprintf(procs, sizeof(procs), "%d", r->w->procs);
	snprintf(mib, sizeof(mib), "%u", r->w->mib);
	argv[n++] = path;
	argv[n++] = "--procs", argv[n++] = procs, argv[n++] = "--mib", argv[n++] = mib;
	for (int i = 0; r->w->args[i]; i++)
		argv[n++] = r->w->args[i];
	argv[n++] = "--hold";
	if (r->e == E_KSM)
		argv[n++] = "--ksm";
	argv[n] = NULL;
	memset(w, 0, sizeof(*w));
	snprintf(w->log, sizeof(w->log), "%s/%s-%s-workload.log", g.out, r->w->name,
		 engine_name[r->e]);
	unlink(w->log);
	if (pipe2(p, O_CLOEXEC) < 0)
		return -errno;
	w->pid = spawn((char *const *)argv, p[1], w->log, r->e == E_DEDUPD ? r->sock : NULL);
	close(p[1]);
	w->out = p[0];
	g.cur_wl = w;
	pids_write();
	return w->pid < 0 ? (int)w->pid : 0;
}

/* Read what the workload printed for up to timeout_ms: FILLED and READY lines. */
static void wl_poll(struct wl *w, int timeout_ms)
{
	struct pollfd pf = { w->out, POLLIN, 0 };
	int nkids = w->nkids;
	char *nl, *line;
	ssize_t n;

	if (w->out < 0 || poll(&pf, 1, timeout_ms) <= 0)
		return;
	n = read(w->out, w->buf + w->len, sizeof(w->buf) - 1 - w->len);
	if (n <= 0)
		return;
	w->len += (size_t)n;
	w->buf[w->len] = 0;
	for (line = w->buf; (nl = strchr(line, '\n')); line = nl + 1) {
		*nl = 0;
		if (!strncmp(line, "FILLED ", 7) && w->nkids < MAX_KIDS)
			w->kids[w->nkids++] = atoi(line + 7);
		else if (!strncmp(line, "READY ", 6))
			w->ready++;
	}
	w->len = strlen(line);
	memmove(w->buf, line, w->len + 1);
	if (w->nkids != nkids)
		pids_write();
}

static bool wl_alive(struct wl *w)
{
	if (w->pid > 0 && !w->exited && waitpid(w->pid, &w->status, WNOHANG) == w->pid)
		w->exited = true;
	return w->pid > 0 && !w->exited;
}

static int wl_wait_filled(struct wl *w, int procs, double timeout_s)
{
	double end = now_s() + timeout_s;

	while (w->nkids < procs) {
		if (g.interrupted)
			return -EINTR;
		if (!wl_alive(w) || now_s() > end) {
			fprintf(stderr, "dd-workload did not fill its memory (see %s)\n", w->log);
			return -EIO;
		}
		wl_poll(w, 100);
	}
	return 0;
}

static int count_lines_with(const char *path, const char *needle)
{
	char line[512];
	int n = 0;
	FILE *f = fopen(path, "re");

	while (f && fgets(line, sizeof(line), f))
		n += strstr(line, needle) != NULL;
	if (f)
		fclose(f);
	return n;
}

/* SIGTERM: every child verifies every byte, the parent exits with the worst
 * status. 0 if all verified, -EBADMSG if a page differed from what was written,
 * -EIO if the workload failed otherwise, -ETIMEDOUT if it hung. */
static int wl_stop(struct wl *w, int procs, double timeout_s)
{
	int st = 0, r;

	if (w->pid <= 0)
		return 0;
	if (w->exited) {
		st = w->status, r = 0;
	} else {
		kill(w->pid, SIGTERM);
		r = wait_pid(w->pid, timeout_s, &st);
	}
	if (r < 0) {
		kill(w->pid, SIGKILL);
		waitpid(w->pid, &st, 0);
	}
	for (int i = 0; i < w->nkids; i++) /* orphans, if the parent was killed */
		if (comm_is(w->kids[i], "dd-workload"))
			kill(w->kids[i], SIGKILL);
	w->pid = 0;
	if (w->out >= 0)
		close(w->out);
	w->out = -1;
	g.cur_wl = NULL;
	pids_write();
	if (r < 0)
		return r;
	if (count_lines_with(w->log, "differ from what was written"))
		return -EBADMSG;
	if (!WIFEXITED(st) || WEXITSTATUS(st) || count_lines_with(w->log, "verified") < procs)
		return -EIO;
	return 0;
}

static long long kids_field(const struct wl *w, const char *file, const char *field)
{
	char path[64];
	long long sum = 0, v;

	for (int i = 0; i < w->nkids; i++) {
		snprintf(path, sizeof(path), "/proc/%d/%s", (int)w->kids[i], file);
		v = kib_field(path, field);
		sum += v > 0 ? v : 0; /* -1: gone */
	}
	return sum;
}

/* VMAs of the children: lines of /proc/PID/maps. */
static long long kids_vmas(const struct wl *w)
{
	char path[64], line[512];
	long long n = 0;
	FILE *f;

	for (int i = 0; i < w->nkids; i++) {
		snprintf(path, sizeof(path), "/proc/%d/maps", (int)w->kids[i]);
		if (!(f = fopen(path, "re")))
			continue;
		while (fgets(line, sizeof(line), f))
			n += strchr(line, '\n') != NULL;
		fclose(f);
	}
	return n;
}

/* --- dedupd -------------------------------------------------------------- */

/* The one place that says how dedupd is run. */
static int dedupd_argv(char *path, size_t plen, const char *sock, char *args, const char **argv,
		       int max)
{
	const char *env = getenv("DEDUPD_ARGS");
	int n = 0;

	snprintf(path, plen, "%s/dedupd", g.build);
	snprintf(args, 512, "%s", env ? env : DEDUPD_DEFAULT_ARGS);
	argv[n++] = path;
	argv[n++] = "--foreground", argv[n++] = "--socket", argv[n++] = sock;
	for (char *save, *t = strtok_r(args, " \t", &save); t && n < max - 1;
	     t = strtok_r(NULL, " \t", &save))
		argv[n++] = t;
	argv[n] = NULL;
	return n;
}

static int dedupctl(const char *sock, const char *cmd, const char *arg, char *buf, size_t len)
{
	char path[PATH_MAX];
	const char *argv[] = { path, "-s", sock, cmd, arg, NULL };

	snprintf(path, sizeof(path), "%s/dedupctl", g.build);
	return run_capture((char *const *)argv, buf, len, 5);
}

static struct json_object *dedupd_stats(const char *sock)
{
	char buf[8192];

	if (dedupctl(sock, "stats", "--json", buf, sizeof(buf)) != 0)
		return NULL;
	return json_tokener_parse(buf);
}

static long long jget(struct json_object *o, const char *key)
{
	struct json_object *v;

	return o && json_object_object_get_ex(o, key, &v) ? (long long)json_object_get_int64(v)
							  : -1;
}

static int dedupd_start(struct run *r)
{
	char path[PATH_MAX], args[512], buf[4096];
	const char *argv[64];
	int st;

	unlink(r->sock);
	unlink(r->dlog);
	dedupd_argv(path, sizeof(path), r->sock, args, argv, 64);
	r->daemon = spawn((char *const *)argv, -1, r->dlog, NULL);
	if (r->daemon < 0)
		return (int)r->daemon;
	g.cur_daemon = r->daemon;
	pids_write();
	for (int i = 0; i < 200; i++) {
		if (waitpid(r->daemon, &st, WNOHANG) == r->daemon) {
			fprintf(stderr, "dedupd exited at start (see %s)\n", r->dlog);
			r->daemon = g.cur_daemon = 0;
			return -EIO;
		}
		if (dedupctl(r->sock, "status", NULL, buf, sizeof(buf)) == 0)
			return 0;
		if (!nap_ms(25))
			return -EINTR;
	}
	fprintf(stderr, "dedupd did not answer on %s (see %s)\n", r->sock, r->dlog);
	return -ETIMEDOUT;
}

static int dedupd_stop(struct run *r)
{
	int st, ret = 0;

	if (r->daemon <= 0)
		return 0;
	kill(r->daemon, SIGTERM);
	if (wait_pid(r->daemon, 10, &st) < 0) {
		fprintf(stderr,
			"dd-bench: dedupd did not stop within 10 s of SIGTERM, killing it\n");
		note("%s: dedupd did not stop within 10 s of SIGTERM", r->w->name);
		kill(r->daemon, SIGKILL);
		waitpid(r->daemon, &st, 0);
		ret = -ETIMEDOUT;
	} else if (!WIFEXITED(st) || WEXITSTATUS(st)) {
		fprintf(stderr, "dd-bench: dedupd exited with status 0x%x (see %s)\n", st, r->dlog);
		ret = -EIO;
	}
	r->daemon = g.cur_daemon = 0;
	pids_write();
	unlink(r->sock);
	return ret;
}

/* Bytes allocated in the daemon's memfds (its page store), each counted once. */
static long long daemon_memfd_bytes(pid_t pid)
{
	char dpath[64], path[PATH_MAX], link[256];
	ino_t seen[64];
	int nseen = 0;
	long long sum = 0;
	struct dirent *d;
	struct stat sb;
	DIR *dir;

	snprintf(dpath, sizeof(dpath), "/proc/%d/fd", (int)pid);
	if (!(dir = opendir(dpath)))
		return -1;
	while ((d = readdir(dir))) {
		ssize_t n;
		bool dup = false;

		snprintf(path, sizeof(path), "%s/%s", dpath, d->d_name);
		n = readlink(path, link, sizeof(link) - 1);
		if (n <= 0 || (link[n] = 0, strncmp(link, "/memfd:", 7)) || stat(path, &sb) < 0)
			continue;
		for (int i = 0; i < nseen; i++)
			dup |= seen[i] == sb.st_ino;
		if (dup || nseen == 64)
			continue;
		seen[nseen++] = sb.st_ino;
		sum += (long long)sb.st_blocks * 512;
	}
	closedir(dir);
	return sum;
}

/* --- engines ------------------------------------------------------------- */

static int ksm_configure(void)
{
	char mode[64];
	int r = 0;

	/* The scan-time advisor would override pages_to_scan. */
	if (knob_read(&knobs[K_ADVISOR], mode, sizeof(mode)) == 0 && strcmp(mode, "none"))
		r |= knob_set(K_ADVISOR, "none");
	r |= knob_set(K_PAGES_TO_SCAN, "100000");
	r |= knob_set(K_SLEEP, "0");
	r |= knob_set(K_ZERO, "1");
	return r ? -EIO : 0;
}

static long long engine_ticks(const struct run *r)
{
	long long t;

	if (r->e == E_KSM)
		return pid_ticks(g.ksmd);
	t = r->daemon > 0 ? pid_ticks(r->daemon) : 0;
	for (int i = 0; i < r->wl.nkids; i++)
		t += agent_ticks(r->wl.kids[i]);
	return t;
}

static int engine_start(struct run *r)
{
	int ret;

	if (r->e == E_DEDUPD)
		return dedupd_start(r);
	if ((ret = ksm_configure()) < 0)
		return ret;
	return knob_set(K_RUN, "1");
}

/* After an exited workload, ksmd frees its rmap_items and stable nodes only
 * while it runs: let it, then stop it. Otherwise the next KSM run would
 * count that slab coming back as its own saving. */
static void ksm_drain(void)
{
	knob_set(K_RUN, "1");
	for (int i = 0; i < 200; i++) {
		if (ksm_counter("pages_shared") == 0 && ksm_counter("pages_unshared") == 0 &&
		    ksm_counter("general_profit") == 0 && ksm_counter("ksm_zero_pages") == 0)
			break;
		struct timespec ts = { 0, 50000000 };
		nanosleep(&ts, NULL);
	}
	knob_set(K_RUN, "0");
}

static struct json_object *ksm_counters_json(void)
{
	static const char *const names[] = {
		"pages_shared",	  "pages_sharing",	"pages_unshared",   "pages_volatile",
		"ksm_zero_pages", "full_scans",		"pages_scanned",    "pages_skipped",
		"general_profit", "stable_node_chains", "stable_node_dups",
	};
	struct json_object *o = json_object_new_object();

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		json_object_object_add(o, names[i], json_object_new_int64(ksm_counter(names[i])));
	return o;
}

/* Sum of one "name value" line of /proc/PID/ksm_stat over the children. */
static long long kids_ksm_stat(const struct wl *w, const char *name)
{
	char path[64], buf[1024], *p;
	long long sum = 0;

	for (int i = 0; i < w->nkids; i++) {
		snprintf(path, sizeof(path), "/proc/%d/ksm_stat", (int)w->kids[i]);
		if (read_file(path, buf, sizeof(buf)) > 0 && (p = strstr(buf, name)))
			sum += atoll(p + strlen(name));
	}
	return sum;
}

/* A slab cache's object size: /proc/slabinfo, else sysfs (KSM's caches are
 * usually merged with another and absent from slabinfo), else dflt. */
static double slab_object_b(const char *name, double dflt, const char **src)
{
	char line[512], path[128];
	size_t nl = strlen(name);
	long long sz = -1;
	FILE *f = fopen("/proc/slabinfo", "re");

	*src = "/proc/slabinfo";
	while (f && fgets(line, sizeof(line), f))
		if (!strncmp(line, name, nl) && line[nl] == ' ' &&
		    sscanf(line, "%*s %*d %*d %lld", &sz) == 1)
			break;
	if (f)
		fclose(f);
	if (sz > 0)
		return (double)sz;
	snprintf(path, sizeof(path), "/sys/kernel/slab/%s/object_size", name);
	*src = "/sys/kernel/slab";
	if ((sz = read_ll(path)) > 0)
		return (double)sz;
	*src = "default";
	return dflt;
}

static void find_slab_sizes(void)
{
	const char *src;

	g.rmap_item_b = slab_object_b("ksm_rmap_item", 64, &g.rmap_item_src);
	g.stable_node_b = slab_object_b("ksm_stable_node", 64, &src);
	/* each VMA a split adds: the vm_area_struct and its anon_vma_chain */
	g.vma_b =
	    slab_object_b("vm_area_struct", 192, &src) + slab_object_b("anon_vma_chain", 64, &src);
}

/* --- footprint: what the workload and the engine hold -------------------- */

static long long nonneg(long long v)
{
	return v > 0 ? v : 0;
}

static void footprint_read(const struct run *r, struct footprint *f)
{
	char path[64];

	memset(f, 0, sizeof(*f));
	f->kids_pte_kib = kids_field(&r->wl, "status", "VmPTE");
	if (r->e == E_KSM) {
		f->kids_kib = kids_field(&r->wl, "smaps_rollup", "Pss");
		f->ksm_slab_b =
		    (long long)((double)kids_ksm_stat(&r->wl, "ksm_rmap_items") * g.rmap_item_b +
				(double)ksm_counter("pages_shared") * g.stable_node_b);
		return;
	}
	f->kids_kib = kids_field(&r->wl, "status", "RssAnon");
	if (r->daemon <= 0)
		return;
	snprintf(path, sizeof(path), "/proc/%d/status", (int)r->daemon);
	f->daemon_kib = nonneg(kib_field(path, "RssAnon")) + nonneg(kib_field(path, "VmPTE"));
	f->memfd_b = nonneg(daemon_memfd_bytes(r->daemon));
}

static double footprint_b(const struct footprint *f)
{
	return (double)(f->kids_kib + f->kids_pte_kib + f->daemon_kib) * 1024 +
	       (double)f->ksm_slab_b + (double)f->memfd_b;
}

static struct json_object *footprint_json(const struct footprint *f)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, "kids_kib", json_object_new_int64(f->kids_kib));
	json_object_object_add(o, "kids_pte_kib", json_object_new_int64(f->kids_pte_kib));
	json_object_object_add(o, "ksm_slab_b", json_object_new_int64(f->ksm_slab_b));
	json_object_object_add(o, "store_memfd_b", json_object_new_int64(f->memfd_b));
	json_object_object_add(o, "daemon_anon_pte_kib", json_object_new_int64(f->daemon_kib));
	json_object_object_add(o, "total_b", json_object_new_double(footprint_b(f)));
	return o;
}

/* --- samples: pure functions over a series -------------------------------- */

/* True when the last flat_s seconds of samples vary by at most tol_permyriad
 * of the latest saving, which is at least min_b. */
static bool series_flat(const struct sample *s, size_t n, double flat_s, double tol_permyriad,
			double min_b)
{
	double lo, hi, last;
	size_t i;

	if (!n || s[n - 1].t < flat_s || (last = s[n - 1].saving_b) < min_b)
		return false;
	lo = hi = last;
	for (i = n; i-- > 0 && s[i].t >= s[n - 1].t - flat_s;) {
		lo = fmin(lo, s[i].saving_b);
		hi = fmax(hi, s[i].saving_b);
	}
	return hi - lo <= last * tol_permyriad / 10000.0;
}

enum what { SAVING, AVAIL, FREE };

/* Mean of one figure of the samples with t in [from, to]. */
static double series_mean(const struct sample *s, size_t n, double from, double to, enum what w)
{
	double sum = 0;
	size_t k = 0;

	for (size_t i = 0; i < n; i++)
		if (s[i].t >= from && s[i].t <= to)
			sum += w == AVAIL  ? s[i].avail_b
			       : w == FREE ? s[i].free_b
					   : s[i].saving_b,
			    k++;
	return k ? sum / (double)k : NAN;
}

/* The first sample at or above frac of final; -1 if none. */
static long series_first_at(const struct sample *s, size_t n, double final, double frac)
{
	for (size_t i = 0; i < n; i++)
		if (s[i].saving_b >= frac * final)
			return (long)i;
	return -1;
}

/*
 * Where the saving crossed frac of final, between sample i (the first at or
 * above it) and the one before, by linear interpolation: time *t, engine CPU
 * *cpu_ticks. The first sample alone overstates the time by up to a sampling
 * period, 50 ms: 3 % of a 1.6 s crossing, 14 % of a 0.36 s one, so it would
 * favour the slower engine.
 */
static void series_cross(const struct sample *s, long i, double final, double frac, double *t,
			 double *cpu_ticks)
{
	double f = 1.0;

	*t = s[i].t;
	*cpu_ticks = (double)s[i].ticks;
	if (i == 0 || s[i].saving_b <= s[i - 1].saving_b)
		return;
	f = (frac * final - s[i - 1].saving_b) / (s[i].saving_b - s[i - 1].saving_b);
	f = f < 0 ? 0 : f > 1 ? 1 : f;
	*t = s[i - 1].t + f * (s[i].t - s[i - 1].t);
	*cpu_ticks = (double)s[i - 1].ticks + f * (double)(s[i].ticks - s[i - 1].ticks);
}

static int sample_take(struct run *r)
{
	struct footprint fp;
	struct sample *x;

	if (r->ns >= MAX_SAMPLES)
		return -ENOSPC;
	x = &r->s[r->ns++];
	x->t = now_s() - r->t0;
	footprint_read(r, &fp);
	x->saving_b = footprint_b(&r->fp0) - footprint_b(&fp);
	x->avail_b = (double)(meminfo_kib("MemAvailable") - r->avail0_kib) * 1024.0;
	x->free_b = (double)(meminfo_kib("MemFree") - r->free0_kib) * 1024.0;
	x->ticks = engine_ticks(r) - r->ticks0;
	x->own = r->e == E_KSM ? ksm_counter("pages_sharing") + ksm_counter("ksm_zero_pages") : -1;
	return 0;
}

/* Sleep to the next sample time and take it; -EINTR, or -EIO if a process died. */
static int sample_next(struct run *r)
{
	double ms = workload_bytes(r->w) > 1024 * MIB ? SAMPLE_MS_LARGE : SAMPLE_MS;
	double next = r->ns ? r->s[r->ns - 1].t + ms / 1000.0 : 0;
	double wait = next - (now_s() - r->t0);

	if (wait > 0 && !nap_ms((int)(wait * 1000) + 1))
		return -EINTR;
	if (g.interrupted)
		return -EINTR;
	if (!wl_alive(&r->wl)) {
		fprintf(stderr, "dd-bench: %s %s: the workload exited early (see %s)\n", r->w->name,
			engine_name[r->e], r->wl.log);
		return -EIO;
	}
	if (r->e == E_DEDUPD && waitpid(r->daemon, &(int){ 0 }, WNOHANG) == r->daemon) {
		r->daemon = g.cur_daemon = 0;
		fprintf(stderr, "dd-bench: %s: dedupd died (see %s)\n", r->w->name, r->dlog);
		return -EIO;
	}
	wl_poll(&r->wl, 0);
	return sample_take(r);
}

/* --- one run ------------------------------------------------------------- */

/* Sample until converged or the timeout; the figures of CONVERGE runs. */
static int measure_converge(struct run *r)
{
	double min_b = workload_bytes(r->w) * MIN_SAVING_PERMYRIAD / 10000.0;
	long i95;
	int ret;

	do {
		if ((ret = sample_next(r)) < 0)
			return ret;
		r->converged = series_flat(r->s, r->ns, FLAT_S, FLAT_PERMYRIAD, min_b);
	} while (!r->converged && r->s[r->ns - 1].t < r->w->timeout_s);
	r->t_conv_s = r->s[r->ns - 1].t;
	r->saving_b = series_mean(r->s, r->ns, r->t_conv_s - FLAT_S, r->t_conv_s, SAVING);
	r->avail_b = series_mean(r->s, r->ns, r->t_conv_s - FLAT_S, r->t_conv_s, AVAIL);
	r->free_b = series_mean(r->s, r->ns, r->t_conv_s - FLAT_S, r->t_conv_s, FREE);
	i95 = r->saving_b >= min_b ? series_first_at(r->s, r->ns, r->saving_b, 0.95) : -1;
	r->t95_sample_s = i95 >= 0 ? r->s[i95].t : NAN;
	r->cpu95_sample_s = i95 >= 0 ? (double)r->s[i95].ticks / (double)g.hz : NAN;
	r->t95_s = r->cpu95_s = NAN;
	if (i95 >= 0) {
		double ticks;

		series_cross(r->s, i95, r->saving_b, 0.95, &r->t95_s, &ticks);
		r->cpu95_s = ticks / (double)g.hz;
	}
	return 0;
}

/* W4's warm-up is over when the saving is steady: flat within 1 % for FLAT_S
 * (the rewrites make it drift by ~0.25 %/s, too much for the 0.5 % of W1),
 * or after BENCH_W4_WARMUP_S if that is set, or at W4_WARMUP_MAX_S. */
static bool warmed_up(struct run *r, double fixed)
{
	double t = r->s[r->ns - 1].t;
	double min_b = workload_bytes(r->w) * MIN_SAVING_PERMYRIAD / 10000.0;

	if (fixed > 0)
		return t >= fixed;
	r->converged = series_flat(r->s, r->ns, FLAT_S, W4_FLAT_PERMYRIAD, min_b);
	return r->converged || t >= W4_WARMUP_MAX_S;
}

/* W4: the warm-up, then CPU per second and mean saving over WINDOW_S. */
static int measure_steady(struct run *r)
{
	const char *env = getenv("BENCH_W4_WARMUP_S");
	double fixed = env ? atof(env) : 0;
	size_t i0 = 0;
	int ret;

	do {
		if ((ret = sample_next(r)) < 0)
			return ret;
		if (!i0 && warmed_up(r, fixed))
			i0 = r->ns - 1;
	} while (!i0 || r->s[r->ns - 1].t < r->s[i0].t + WINDOW_S);
	const struct sample *a = &r->s[i0], *b = &r->s[r->ns - 1];
	r->t_conv_s = a->t;
	r->steady_cpu = (double)(b->ticks - a->ticks) / (double)g.hz / (b->t - a->t);
	r->steady_saving_b = series_mean(r->s, r->ns, a->t, b->t, SAVING);
	r->avail_b = series_mean(r->s, r->ns, a->t, b->t, AVAIL);
	r->free_b = series_mean(r->s, r->ns, a->t, b->t, FREE);
	JADD(r->j, "warmup_s", JD(a->t));
	JADD(r->j, "window_s", JD(b->t - a->t));
	JADD(r->j, "window_cpu_s", JD((double)(b->ticks - a->ticks) / (double)g.hz));
	return 0;
}

static int wait_full_scans(struct run *r, long long *fs)
{
	double end = now_s() + 30;
	struct json_object *st;

	for (;;) {
		if (r->e == E_KSM) {
			*fs = ksm_counter("full_scans");
		} else {
			st = dedupd_stats(r->sock);
			*fs = jget(st, "full_scans");
			json_object_put(st);
		}
		if (*fs >= 1 + (r->e == E_KSM ? jget(r->j, "full_scans_at_start") : 0))
			return 0;
		if (now_s() > end)
			return -ETIMEDOUT;
		if (!nap_ms(100))
			return -EINTR;
	}
}

/* S under KSM: pages_scanned per ksmd CPU second (smart_scan's skipped pages
 * are not in pages_scanned); full_scans x pages per CPU second as well, which
 * counts the skipped pages but moves in whole scans. */
static int measure_throughput_ksm(struct run *r)
{
	double pages = workload_bytes(r->w) / PAGE_SIZE_B, cpu;
	long long p0, p1, f0, f1, t0, t1;

	p0 = ksm_counter("pages_scanned"), f0 = ksm_counter("full_scans");
	t0 = engine_ticks(r);
	if (!nap_ms((int)(THROUGHPUT_S * 1000)))
		return -EINTR;
	p1 = ksm_counter("pages_scanned"), f1 = ksm_counter("full_scans");
	t1 = engine_ticks(r);
	cpu = (double)(t1 - t0) / (double)g.hz;
	r->gbps = (double)(p1 - p0) * PAGE_SIZE_B / cpu / 1e9;
	r->gbps_alt = (double)(f1 - f0) * pages * PAGE_SIZE_B / cpu / 1e9;
	JADD(r->j, "pages_scanned_delta", JI(p1 - p0));
	JADD(r->j, "full_scans_delta", JI(f1 - f0));
	JADD(r->j, "ksmd_cpu_s", JD(cpu));
	return 0;
}

/* S under dedupd: pages_scanned per CPU second of the scan threads plus the
 * agents' hashing (scan_cpu_ns + agent_cpu_ns: with scan.agent_hash the
 * clients' agents checksum the pages, and that CPU is the scan's too), and per
 * CPU second of the whole daemon process and the agent threads as well. */
static int measure_throughput_dedupd(struct run *r)
{
	struct json_object *a, *b;
	long long p, c, t0, t1;
	double cpu;
	int ret;

	a = dedupd_stats(r->sock), t0 = engine_ticks(r);
	if (!nap_ms((int)(THROUGHPUT_S * 1000))) {
		json_object_put(a);
		return -EINTR;
	}
	b = dedupd_stats(r->sock), t1 = engine_ticks(r);
	p = jget(b, "pages_scanned") - jget(a, "pages_scanned");
	c = jget(b, "scan_cpu_ns") - jget(a, "scan_cpu_ns") +
	    (jget(b, "agent_cpu_ns") - jget(a, "agent_cpu_ns"));
	cpu = (double)(t1 - t0) / (double)g.hz;
	r->gbps = c > 0 ? (double)p * PAGE_SIZE_B / (double)c : NAN;
	r->gbps_alt = (double)p * PAGE_SIZE_B / cpu / 1e9;
	JADD(r->j, "pages_scanned_delta", JI(p));
	JADD(r->j, "scan_plus_agent_cpu_ns_delta", JI(c));
	JADD(r->j, "agent_cpu_ns_delta", JI(jget(b, "agent_cpu_ns") - jget(a, "agent_cpu_ns")));
	JADD(r->j, "agent_hash_pages_delta",
	     JI(jget(b, "agent_hash_pages") - jget(a, "agent_hash_pages")));
	JADD(r->j, "full_scans_delta", JI(jget(b, "full_scans") - jget(a, "full_scans")));
	JADD(r->j, "process_cpu_s", JD(cpu));
	ret = a && b ? 0 : -EIO; /* dedupctl failed */
	json_object_put(a);
	json_object_put(b);
	return ret;
}

/* S: scan throughput once the first full pass is done. */
static int measure_throughput(struct run *r)
{
	long long fs;
	int ret;

	if ((ret = wait_full_scans(r, &fs)) < 0)
		return ret;
	return r->e == E_KSM ? measure_throughput_ksm(r) : measure_throughput_dedupd(r);
}

/* Before the workload goes: smaps, the engine's own counters, metadata. */
static void collect_final(struct run *r)
{
	double pages = workload_bytes(r->w) / PAGE_SIZE_B;
	long long vmas = kids_vmas(&r->wl), reg;
	struct json_object *st;
	struct footprint fp;

	footprint_read(r, &fp);
	r->max_map_count = read_ll(knobs[K_MAX_MAP].path);
	JADD(r->j, "max_map_count", JI(r->max_map_count));
	JADD(r->j, "footprint_end", footprint_json(&fp));
	JADD(r->j, "vmas_end", JI(vmas));
	JADD(r->j, "engine_cpu_s_total", JD((double)(engine_ticks(r) - r->ticks0) / (double)g.hz));
	r->vma_cost_b = (double)(vmas - r->vmas0) * g.vma_b;
	r->saving_b -= r->vma_cost_b; /* NAN stays NAN where not measured */
	r->steady_saving_b -= r->vma_cost_b;
	if (r->e == E_KSM) {
		long long items = kids_ksm_stat(&r->wl, "ksm_rmap_items");

		JADD(r->j, "ksm", st = ksm_counters_json());
		JADD(r->j, "ksm_rmap_items", JI(items));
		JADD(r->j, "ksm_process_profit", JI(kids_ksm_stat(&r->wl, "ksm_process_profit")));
		r->own_b = (double)jget(st, "general_profit");
		r->meta_b = (double)items / pages * g.rmap_item_b;
		JADD(r->j, "rmap_items_per_page", JD((double)items / pages));
		return;
	}
	st = dedupd_stats(r->sock);
	r->own_b = st ? (double)jget(st, "bytes_saved_net") : NAN;
	reg = jget(st, "pages_registered");
	r->meta_b = reg > 0 ? (double)jget(st, "metadata_bytes") / (double)reg : NAN;
	r->meta_anon_b = reg > 0 ? (double)jget(st, "daemon_anon_bytes") / (double)reg : NAN;
	JADD(r->j, "dedupd", st ? st : json_object_new_null());
}

/* Wait until MemAvailable is back near its level before the run. */
static void wait_memory_back(struct run *r)
{
	long long avail = 0;

	for (int i = 0; i < 100; i++) {
		avail = meminfo_kib("MemAvailable");
		if ((double)avail * 1024 >= (double)r->pre_avail_kib * 1024 - MEM_BACK_SLACK_B)
			break;
		struct timespec ts = { 0, 100000000 };
		nanosleep(&ts, NULL);
	}
	JADD(r->j, "avail_kib_after", JI(avail));
	if ((double)avail * 1024 < (double)r->pre_avail_kib * 1024 - MEM_BACK_SLACK_B) {
		fprintf(stderr,
			"dd-bench: warning: after %s %s MemAvailable is %.0f MiB below its "
			"level before the run\n",
			r->w->name, engine_name[r->e], (double)(r->pre_avail_kib - avail) / 1024);
		note("after %s %s MemAvailable stayed %.0f MiB below its level before the run",
		     r->w->name, engine_name[r->e], (double)(r->pre_avail_kib - avail) / 1024);
	}
}

static struct json_object *series_json(const struct run *r)
{
	static const char *const names[] = {
		"saving_b",	"saving_memavailable_b",       "saving_memfree_b",
		"engine_cpu_s", "ksm_pages_sharing_plus_zero", "t_s"
	};
	struct json_object *o = json_object_new_object(), *a[6];

	for (int k = 0; k < 6; k++)
		a[k] = json_object_new_array();
	for (size_t i = 0; i < r->ns; i++) {
		const struct sample *x = &r->s[i];

		json_object_array_add(a[0], JI((long long)x->saving_b));
		json_object_array_add(a[1], JI((long long)x->avail_b));
		json_object_array_add(a[2], JI((long long)x->free_b));
		json_object_array_add(a[3], JD((double)x->ticks / (double)g.hz));
		json_object_array_add(a[4], JI(x->own));
		json_object_array_add(a[5], JD(round(x->t * 1000) / 1000));
	}
	for (int k = 0; k < 6; k++)
		JADD(o, names[k], a[k]);
	return o;
}

static void run_results_json(struct run *r)
{
	JADD(r->j, "converged", json_object_new_boolean(r->converged));
	JADD(r->j, "t_end_s", JD(r->t_conv_s));
	JADD(r->j, "final_saving_b", JD(r->saving_b));
	JADD(r->j, "t95_s", JD(r->t95_s));
	JADD(r->j, "t95_sample_s", JD(r->t95_sample_s));
	JADD(r->j, "cpu95_sample_s", JD(r->cpu95_sample_s));
	JADD(r->j, "cpu95_s", JD(r->cpu95_s));
	JADD(r->j, "own_counter_saving_b", JD(r->own_b));
	JADD(r->j, "vma_slab_cost_b", JD(r->vma_cost_b));
	JADD(r->j, "final_saving_memavailable_b", JD(r->avail_b));
	JADD(r->j, "metadata_b_per_page", JD(r->meta_b));
	JADD(r->j, "daemon_anon_b_per_page", JD(r->meta_anon_b));
	JADD(r->j, "steady_cpu_per_s", JD(r->steady_cpu));
	JADD(r->j, "steady_saving_b", JD(r->steady_saving_b));
	JADD(r->j, "scan_gb_per_s", JD(r->gbps));
	JADD(r->j, "scan_gb_per_s_alt", JD(r->gbps_alt));
	JADD(r->j, "final_saving_memfree_b", JD(r->free_b));
	JADD(r->j, "other_processes_cpus", JD(r->other_cpu));
	JADD(r->j, "series", series_json(r));
}

/* CPU ticks the whole host spent outside this run: busy time from /proc/stat
 * minus the engine (ksmd or dedupd), the workload (agents included) and us
 * with our reaped children. Another tenant's compile or benchmark on these
 * 2 cores shows up here, and makes that run's times and CPU figures noisy. */
static long long others_ticks(const struct run *r)
{
	unsigned long long v[8] = { 0 };
	long long ours, t;
	char buf[512], *p;

	if (read_file("/proc/stat", buf, sizeof(buf)) <= 0 ||
	    sscanf(buf, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
		   &v[4], &v[5], &v[6], &v[7]) != 8)
		return 0;
	ours = nonneg(r->e == E_KSM ? pid_ticks(g.ksmd) : pid_ticks(r->daemon));
	for (int i = 0; i < r->wl.nkids; i++)
		ours += nonneg(pid_ticks(r->wl.kids[i]));
	if (read_file("/proc/self/stat", buf, sizeof(buf)) > 0 && (p = strrchr(buf, ')'))) {
		unsigned long long u, sy, cu, cs;

		if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %llu %llu",
			   &u, &sy, &cu, &cs) == 4)
			ours += (long long)(u + sy + cu + cs);
	}
	t = (long long)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]); /* all but idle, iowait */
	return t - ours;
}

/* Up to SIGUSR1: workload filled, baseline taken, engine started. */
static int run_setup(struct run *r)
{
	int ret;

	r->pre_avail_kib = meminfo_kib("MemAvailable");
	if ((ret = wl_start(&r->wl, r)) < 0)
		return ret;
	if ((ret = wl_wait_filled(&r->wl, r->w->procs, 120)) < 0)
		return ret;
	if (!nap_ms(200)) /* let the fill's last page-cache and LRU work settle */
		return -EINTR;
	footprint_read(r, &r->fp0);
	r->vmas0 = kids_vmas(&r->wl);
	r->avail0_kib = meminfo_kib("MemAvailable");
	r->free0_kib = meminfo_kib("MemFree");
	JADD(r->j, "pre_avail_kib", JI(r->pre_avail_kib));
	JADD(r->j, "avail_kib_baseline", JI(r->avail0_kib));
	JADD(r->j, "free_kib_baseline", JI(r->free0_kib));
	JADD(r->j, "footprint_baseline", footprint_json(&r->fp0));
	JADD(r->j, "vmas_baseline", JI(r->vmas0));
	JADD(r->j, "full_scans_at_start", JI(ksm_counter("full_scans")));
	if ((ret = engine_start(r)) < 0)
		return ret;
	r->ticks0 = engine_ticks(r);
	r->others0 = others_ticks(r);
	r->t0 = now_s();
	for (int i = 0; i < r->wl.nkids; i++)
		kill(r->wl.kids[i], SIGUSR1);
	return sample_take(r);
}

/* Stop the engine's scanning, verify the workload, stop the engine, wait for
 * the memory; returns the verification result. */
static int run_teardown(struct run *r)
{
	int v;

	if (r->e == E_KSM && knobs[K_RUN].saved)
		knob_set(K_RUN, "0"); /* keep the merges, free the CPU for verification */
	v = wl_stop(&r->wl, r->w->procs, 180);
	if (r->e == E_KSM)
		ksm_drain();
	else
		dedupd_stop(r);
	wait_memory_back(r);
	return v;
}

static int run_one(struct run *r)
{
	int ret, v;

	r->j = json_object_new_object();
	r->s = calloc(MAX_SAMPLES, sizeof(*r->s));
	if (!r->s)
		return -ENOMEM;
	if (r->e == E_DEDUPD) {
		snprintf(r->sock, sizeof(r->sock), "%s/dedupd.sock", g.out);
		snprintf(r->dlog, sizeof(r->dlog), "%s/%s-dedupd.log", g.out, r->w->name);
	}
	ret = run_setup(r);
	if (ret >= 0 && r->w->kind == CONVERGE)
		ret = measure_converge(r);
	else if (ret >= 0 && r->w->kind == STEADY)
		ret = measure_steady(r);
	else if (ret >= 0)
		ret = measure_throughput(r);
	if (ret >= 0) {
		r->other_cpu =
		    (double)(others_ticks(r) - r->others0) / (double)g.hz / (now_s() - r->t0);
		collect_final(r);
	}
	v = run_teardown(r);
	r->verified = v == 0;
	JADD(r->j, "verified", json_object_new_boolean(r->verified));
	JADD(r->j, "workload_log", json_object_new_string(r->wl.log));
	if (v < 0) {
		fprintf(stderr, "\n*** %s %s: %s (%s): see %s ***\n\n", r->w->name,
			engine_name[r->e],
			v == -EBADMSG
			    ? "WORKLOAD VERIFICATION FAILED: memory differs from what was written"
			    : "THE WORKLOAD FAILED",
			strerror(-v), r->wl.log);
		note("%s %s: %s", r->w->name, engine_name[r->e],
		     v == -EBADMSG ? "VERIFICATION FAILED" : "workload failed or did not verify");
		g.failed = true;
	}
	r->done = ret >= 0 && v == 0;
	run_results_json(r);
	return ret < 0 ? ret : v;
}

static void print_progress(const struct run *r)
{
	if (nrepeat > 1)
		printf("  %s#%d %-6s ", r->w->name, r->rep + 1, engine_name[r->e]);
	else
		printf("  %-3s %-6s ", r->w->name, engine_name[r->e]);
	if (r->w->kind == CONVERGE)
		printf("%s %.1f s, saving %.0f MiB, 95 %% at %.2f s / %.2f CPU-s (sample %.2f s)",
		       r->converged ? "converged in" : "TIMEOUT at", r->t_conv_s, r->saving_b / MIB,
		       r->t95_s, r->cpu95_s, r->t95_sample_s);
	else if (r->w->kind == STEADY)
		printf("%s %.1f s, then %.2f CPU-s/s, saving %.0f MiB",
		       r->converged ? "steady after" : "NOT steady at", r->t_conv_s, r->steady_cpu,
		       r->steady_saving_b / MIB);
	else
		printf("%.2f GB/s per CPU (%s: %.2f)", r->gbps,
		       r->e == E_KSM ? "from full_scans" : "per process CPU", r->gbps_alt);
	printf(", others %.2f CPUs, %s\n", r->other_cpu,
	       r->verified ? "verified" : "VERIFICATION FAILED");
	fflush(stdout);
}

/* --- the table ----------------------------------------------------------- */

enum tkind { T_NONE, T_RATIO_LE, T_RATIO_GE, T_ABS_LE, T_ABS_GE };

struct row {
	const char *figure, *w;
	const char *ksm_w; /* KSM's figure from another workload (W3m: W3) */
	size_t off;	   /* of the double in struct run */
	double scale;	   /* divisor for display */
	enum tkind kind;
	double target;
	const char *tlabel;
	int prec;
	double ksm, dd; /* filled in: medians over the repeats */
	bool noisy;	/* the median repeat had other tenants busy */
};

static bool row_met(const struct row *x, double ratio)
{
	switch (x->kind) {
	case T_RATIO_LE:
		return ratio <= x->target;
	case T_RATIO_GE:
		return ratio >= x->target;
	case T_ABS_LE:
		return x->dd <= x->target;
	case T_ABS_GE:
		return x->dd >= x->target;
	default:
		return true;
	}
}

static void fmt_num(char *buf, size_t len, double v, int prec)
{
	if (isfinite(v))
		snprintf(buf, len, "%.*f", prec, v);
	else
		snprintf(buf, len, "n/a");
}

static void print_row(FILE *f, const struct row *x, struct json_object *arr)
{
	double ratio = x->ksm > 0 ? x->dd / x->ksm : NAN;
	bool have = isfinite(x->dd) && (isfinite(ratio) || x->kind >= T_ABS_LE);
	const char *met = x->kind == T_NONE ? "" : !have ? "n/a" : row_met(x, ratio) ? "yes" : "NO";
	char k[32], d[32], rt[32];
	struct json_object *o = json_object_new_object();

	fmt_num(k, sizeof(k), x->ksm, x->prec);
	fmt_num(d, sizeof(d), x->dd, x->prec);
	fmt_num(rt, sizeof(rt), ratio, 3);
	fprintf(f, "%-42s %-3s %-10s %-10s %-7s %-9s %s%s\n", x->figure, x->w, k, d, rt,
		x->tlabel ? x->tlabel : "", met, x->noisy && x->kind != T_NONE ? " *" : "");
	JADD(o, "figure", json_object_new_string(x->figure));
	JADD(o, "workload", json_object_new_string(x->w));
	JADD(o, "ksm", JD(x->ksm));
	JADD(o, "dedupd", JD(x->dd));
	JADD(o, "ratio", JD(ratio));
	JADD(o, "other_tenants_busy", json_object_new_boolean(x->noisy));
	JADD(o, "target", json_object_new_string(x->tlabel ? x->tlabel : ""));
	JADD(o, "met",
	     x->kind == T_NONE || !have ? json_object_new_null()
					: json_object_new_boolean(row_met(x, ratio)));
	json_object_array_add(arr, o);
}

static int wi(const char *name)
{
	for (size_t i = 0; i < NW; i++)
		if (!strcmp(wspecs[i].name, name))
			return (int)i;
	return 0;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* Median over the completed repeats of the double at off; NAN if none. */
static double median(int w, int e, size_t off)
{
	double v[MAX_REPEAT];
	int n = 0;

	for (int k = 0; k < nrepeat; k++) {
		const struct run *r = &runs[k][w][e];
		double x = *(const double *)((const char *)r + off);

		if (r->done && isfinite(x))
			v[n++] = x;
	}
	if (!n)
		return NAN;
	qsort(v, (size_t)n, sizeof(v[0]), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

#define F(field) offsetof(struct run, field)

static void row_fill(struct row *x)
{
	int w = wi(x->w), wk = wi(x->ksm_w ? x->ksm_w : x->w);

	x->ksm = median(wk, E_KSM, x->off) / x->scale;
	x->dd = median(w, E_DEDUPD, x->off) / x->scale;
	/* other tenants slow the engines down: only times and CPU suffer */
	x->noisy = x->off != F(saving_b) && x->off != F(steady_saving_b) && x->off != F(meta_b) &&
		   x->off != F(meta_anon_b);
	x->noisy &= median(wk, E_KSM, offsetof(struct run, other_cpu)) > OTHER_CPU_NOISY ||
		    median(w, E_DEDUPD, offsetof(struct run, other_cpu)) > OTHER_CPU_NOISY;
}

/* The figures, in its order: workload, KSM's workload if another,
 * field, display divisor, target, decimals. */
/* clang-format off */
static const struct row row_specs[] = {
	{ "time to 95 % of final saving (s)", "W1", NULL,
	  F(t95_s), 1, T_RATIO_LE, 0.25, "<=0.25", 2 },
	{ "time to 95 % of final saving (s)", "W2", NULL,
	  F(t95_s), 1, T_RATIO_LE, 0.25, "<=0.25", 2 },
	{ "CPU seconds to 95 % (daemon+agents / ksmd)", "W1", NULL,
	  F(cpu95_s), 1, T_RATIO_LE, 0.5, "<=0.5", 2 },
	{ "CPU seconds to 95 % (daemon+agents / ksmd)", "W2", NULL,
	  F(cpu95_s), 1, T_RATIO_LE, 0.5, "<=0.5", 2 },
	{ "final net saving, kernel accounting (MiB)", "W1", NULL,
	  F(saving_b), MIB, T_RATIO_GE, 0.95, ">=0.95", 0 },
	{ "final net saving, kernel accounting (MiB)", "W2", NULL,
	  F(saving_b), MIB, T_RATIO_GE, 0.95, ">=0.95", 0 },
	{ "final net saving, kernel accounting (MiB)", "W3", NULL,
	  F(saving_b), MIB, T_RATIO_GE, 0.85, ">=0.85", 0 },
	{ "  dedupd, vm.max_map_count raised (MiB)", "W3m", "W3",
	  F(saving_b), MIB, T_RATIO_GE, 0.85, ">=0.85", 0 },
	{ "CPU per second, steady state (CPU-s/s)", "W4", NULL,
	  F(steady_cpu), 1, T_RATIO_LE, 0.5, "<=0.5", 2 },
	{ "  saving during that window (MiB)", "W4", NULL,
	  F(steady_saving_b), MIB, T_RATIO_GE, 0.95, ">=0.95", 0 },
	{ "metadata per registered page (B)", "W1", NULL,
	  F(meta_b), 1, T_ABS_LE, 16, "<=16 B", 1 },
	{ "  dedupd RssAnon per registered page (B)", "W1", NULL,
	  F(meta_anon_b), 1, T_NONE, 0, NULL, 1 },
	{ "scan throughput, 1 thread, unique (GB/s)", "S", NULL,
	  F(gbps), 1, T_ABS_GE, 8, ">=8 GB/s", 2 },
};
/* clang-format on */
#define NROWS (sizeof(row_specs) / sizeof(row_specs[0]))

static void build_rows(struct row *t)
{
	for (size_t i = 0; i < NROWS; i++) {
		t[i] = row_specs[i];
		row_fill(&t[i]);
	}
}

static double counter_tol_b(const struct run *r)
{
	return fmax(COUNTER_TOL_PCT / 100 * fabs(r->saving_b), COUNTER_TOL_FLOOR_B);
}

static struct json_object *cross_check_json(const struct run *r, double diff, double tol, bool ok)
{
	struct json_object *o = json_object_new_object();

	JADD(o, "workload", json_object_new_string(r->w->name));
	JADD(o, "engine", json_object_new_string(engine_name[r->e]));
	JADD(o, "repeat", JI(r->rep + 1));
	JADD(o, "kernel_per_process_b", JD(r->saving_b));
	JADD(o, "memavailable_b", JD(r->avail_b));
	JADD(o, "memfree_b", JD(r->free_b));
	JADD(o, "own_counter_b", JD(r->own_b));
	JADD(o, "own_minus_kernel_b", JD(diff));
	JADD(o, "tolerance_b", JD(tol));
	JADD(o, "agree", json_object_new_boolean(ok));
	return o;
}

static void print_cross_checks(FILE *f, struct json_object *arr)
{
	fprintf(f,
		"\nfinal net saving (MiB): kernel per-process accounting (the figure above), "
		"host MemAvailable and\nMemFree deltas, each plus the per-CPU free lists "
		"(moved by every other process on the host),\nand the engine's own counter "
		"(KSM general_profit, dedupd bytes_saved_net), which must agree\nwith the "
		"first within %.0f %% or %.0f MiB\n",
		COUNTER_TOL_PCT, COUNTER_TOL_FLOOR_B / MIB);
	fprintf(f, "%-5s %-6s %10s %10s %10s %10s %10s  %s\n", "W", "engine", "kernel", "MemAvail",
		"MemFree", "own", "own-kern", "agree");
	for (size_t w = 0; w < NW; w++)
		for (int k = 0; k < nrepeat; k++)
			for (int e = 0; e < E_N; e++) {
				const struct run *r = &runs[k][w][e];
				double diff = r->own_b - r->saving_b, tol = counter_tol_b(r);
				char name[16];

				if (!r->done || wspecs[w].kind != CONVERGE)
					continue;
				snprintf(name, sizeof(name), nrepeat > 1 ? "%s#%d" : "%s",
					 wspecs[w].name, k + 1);
				fprintf(f,
					"%-5s %-6s %10.0f %10.0f %10.0f %10.0f %+10.1f  %s (%+.1f "
					"%%)\n",
					name, engine_name[e], r->saving_b / MIB, r->avail_b / MIB,
					r->free_b / MIB, r->own_b / MIB, diff / MIB,
					fabs(diff) <= tol ? "yes" : "NO", 100 * diff / r->saving_b);
				json_object_array_add(
				    arr, cross_check_json(r, diff, tol, fabs(diff) <= tol));
			}
}

static void print_report(FILE *f, struct json_object *root, double secs)
{
	struct row t[NROWS];
	size_t n = NROWS;
	struct json_object *figs = json_object_new_array(), *cc = json_object_new_array();

	build_rows(t);
	fprintf(f, "\n%-42s %-3s %-10s %-10s %-7s %-9s %s\n", "figure", "W", "KSM", "dedupd",
		"ratio", "target", "met");
	for (size_t i = 0; i < n; i++)
		print_row(f, &t[i], figs);
	fprintf(f,
		"ratio = dedupd / KSM%s; * = other processes kept more than %.2f CPUs busy "
		"during that run:\nits times and CPU figures are unreliable\n",
		nrepeat > 1 ? ", each figure the median of the repeats" : "", OTHER_CPU_NOISY);
	print_cross_checks(f, cc);
	if (root) {
		JADD(root, "figures", figs);
		JADD(root, "cross_checks", cc);
	} else {
		json_object_put(figs);
		json_object_put(cc);
	}
	if (g.nnotes)
		fprintf(f, "\nnotes:\n");
	for (int i = 0; i < g.nnotes; i++)
		fprintf(f, "- %s\n", g.notes[i]);
	fprintf(f, "\nbench took %.0f s; raw numbers in %s/results.json\n", secs, g.out);
	if (g.failed)
		fprintf(f, "\n*** THE BENCH FAILED: a workload's verification failed or a run "
			   "did not complete (see above) ***\n");
}

/* --- main ---------------------------------------------------------------- */

static void on_signal(int sig)
{
	g.interrupted = sig;
}

static bool selected(const char *name)
{
	const char *only = getenv("BENCH_ONLY");
	char buf[128], *save;

	if (!only || !*only)
		return true;
	snprintf(buf, sizeof(buf), "%s", only);
	for (char *t = strtok_r(buf, ", ", &save); t; t = strtok_r(NULL, ", ", &save))
		if (!strcasecmp(t, name) || (!strcasecmp(t, "W3") && !strcasecmp(name, "W3m")))
			return true;
	return false;
}

/* W2 needs its 4 GiB twice over (fill + verification) with room to spare. */
static bool memory_enough(const struct wspec *w)
{
	double avail = (double)meminfo_kib("MemAvailable") * 1024;

	if (avail >= 1.5 * workload_bytes(w) + 2048 * MIB)
		return true;
	fprintf(stderr, "dd-bench: skipping %s: %.0f MiB available, it needs %.0f MiB\n", w->name,
		avail / MIB, (1.5 * workload_bytes(w) + 2048 * MIB) / MIB);
	note("%s skipped: not enough free memory", w->name);
	return false;
}

/* vm.max_map_count for W3m: a process cannot have more VMAs than pages plus
 * its few others, so twice that (dedupd's default budget is half the limit)
 * never limits it. BENCH_MAX_MAP_COUNT overrides; 0 skips W3m. */
static long long w3m_map_count(const struct wspec *w)
{
	const char *env = getenv("BENCH_MAX_MAP_COUNT");

	if (env)
		return atoll(env);
	return 2 * ((long long)w->mib * 256 + 1024);
}

static void map_count(const struct run *r, bool before)
{
	char val[32];

	if (!r->w->raise_maps)
		return;
	if (!before) {
		knob_restore(K_MAX_MAP);
		return;
	}
	snprintf(val, sizeof(val), "%lld", w3m_map_count(r->w));
	if (w3m_map_count(r->w) > read_ll(knobs[K_MAX_MAP].path) && knob_set(K_MAX_MAP, val) == 0)
		note("%s: vm.max_map_count was raised from %s to %s for the run, then restored",
		     r->w->name, knobs[K_MAX_MAP].orig, val);
}

/* What the reader of the table must know about one run. */
static void run_notes(const struct run *r)
{
	struct json_object *st = NULL;

	if (!r->done)
		return;
	if (r->other_cpu > OTHER_CPU_NOISY && nrepeat > 1)
		note("with BENCH_REPEAT, each run's share of other processes' CPU is in "
		     "results.json (other_processes_cpus); * marks medians from noisy runs");
	else if (r->other_cpu > OTHER_CPU_NOISY)
		note("%s %s: other processes kept %.2f CPUs busy during the run (of %ld): its "
		     "times and CPU figures are unreliable",
		     r->w->name, engine_name[r->e], r->other_cpu, sysconf(_SC_NPROCESSORS_ONLN));
	if (r->w->kind == CONVERGE && fabs(r->own_b - r->saving_b) > counter_tol_b(r))
		note("%s %s: the engine's own saving counter is off by %+.1f MiB (%+.1f %%) from "
		     "the kernel's accounting",
		     r->w->name, engine_name[r->e], (r->own_b - r->saving_b) / MIB,
		     100 * (r->own_b - r->saving_b) / r->saving_b);
	if (r->w->kind == CONVERGE && !r->converged)
		note("%s %s did not converge within %.0f s: its figures are those at the timeout",
		     r->w->name, engine_name[r->e], r->w->timeout_s);
	if (r->w->kind == STEADY && !r->converged)
		note("%s %s was not steady after %.0f s of warm-up: measured anyway", r->w->name,
		     engine_name[r->e], r->t_conv_s);
	if (r->w->kind == CONVERGE && r->e == E_DEDUPD && r->j &&
	    json_object_object_get_ex(r->j, "dedupd", &st) && jget(st, "vmas_added") > 0)
		note("%s dedupd: %lld VMAs added (%lld per client; vm.max_map_count %lld, dedupd's "
		     "default budget half of it), %.1f MiB of VMA slab at %.0f B each",
		     r->w->name, jget(st, "vmas_added"),
		     jget(st, "vmas_added") / (jget(st, "clients") > 0 ? jget(st, "clients") : 1),
		     r->max_map_count, r->vma_cost_b / MIB, g.vma_b);
	if (r->w->kind == CONVERGE && r->e == E_DEDUPD && st && jget(st, "merge_batches") > 0) {
		/* Where the merging went (totals of the run; after convergence
		 * only the checksum waits still grow). */
		double f = (double)jget(st, "merge_freeze_ns") / 1e9,
		       v = (double)jget(st, "merge_verify_ns") / 1e9,
		       a = (double)jget(st, "merge_agent_ns") / 1e9,
		       z = (double)jget(st, "merge_settle_ns") / 1e9;
		long long nruns = jget(st, "remap_runs") + jget(st, "zap_runs");

		note("%s dedupd: merging took %.2f s of scan-thread wall time in %lld batches: "
		     "freeze %.2f, verify and fill %.2f, agents' remaps and zaps %.2f (%lld remap "
		     "and %lld zap runs, %.0f us per run), settle %.2f; waits for the agents' "
		     "checksums %.2f s",
		     r->w->name, f + v + a + z, jget(st, "merge_batches"), f, v, a,
		     jget(st, "remap_runs"), jget(st, "zap_runs"), nruns ? a * 1e6 / (double)nruns : 0,
		     z, (double)jget(st, "agent_hash_wait_ns") / 1e9);
	}
	if (st && jget(st, "clients") > 0 &&
	    jget(st, "vmas") / jget(st, "clients") >= r->max_map_count / 2 - 64)
		note("%s dedupd used its whole VMA budget (half of vm.max_map_count %lld), so "
		     "some duplicates stayed unmerged",
		     r->w->name, r->max_map_count);
}

static void runs_init(void)
{
	const char *env = getenv("BENCH_REPEAT");

	nrepeat = env && atoi(env) > 1 ? atoi(env) : 1;
	nrepeat = nrepeat > MAX_REPEAT ? MAX_REPEAT : nrepeat;
	for (int k = 0; k < MAX_REPEAT; k++)
		for (size_t w = 0; w < NW; w++)
			for (int e = 0; e < E_N; e++) {
				struct run *r = &runs[k][w][e];

				r->w = &wspecs[w], r->e = e, r->rep = k;
				r->t95_s = r->cpu95_s = r->saving_b = r->avail_b = r->free_b = NAN;
				r->t95_sample_s = r->cpu95_sample_s = NAN;
				r->own_b = r->vma_cost_b = r->t_conv_s = NAN;
				r->steady_cpu = r->steady_saving_b = r->gbps = r->gbps_alt = NAN;
				r->meta_b = r->meta_anon_b = r->other_cpu = NAN;
			}
}

/* One engine on one workload, with its notes and JSON. */
static void run_and_record(struct run *r, struct json_object *jw)
{
	struct json_object *arr;

	map_count(r, true);
	if (run_one(r) < 0 && !g.interrupted) {
		fprintf(stderr, "dd-bench: %s %s did not complete\n", r->w->name,
			engine_name[r->e]);
		g.failed = true;
	}
	map_count(r, false);
	if (r->done)
		print_progress(r);
	run_notes(r);
	if (!json_object_object_get_ex(jw, engine_name[r->e], &arr)) {
		arr = json_object_new_array();
		JADD(jw, engine_name[r->e], arr);
	}
	json_object_array_add(arr, r->j);
	r->j = NULL;
}

/* Per workload: each repeat runs KSM then dedupd, so that both see the same
 * host at about the same time. */
static void run_all(struct json_object *jruns)
{
	for (size_t w = 0; w < NW && !g.interrupted; w++) {
		struct json_object *jw;

		if (!selected(wspecs[w].name) || !memory_enough(&wspecs[w]) ||
		    (wspecs[w].raise_maps && w3m_map_count(&wspecs[w]) <= 0))
			continue;
		printf("%s: %s\n", wspecs[w].name, wspecs[w].what);
		fflush(stdout);
		jw = json_object_new_object();
		for (int k = 0; k < nrepeat && !g.interrupted; k++)
			for (int e = wspecs[w].raise_maps ? E_DEDUPD : 0; e < E_N && !g.interrupted;
			     e++)
				run_and_record(&runs[k][w][e], jw);
		JADD(jruns, wspecs[w].name, jw);
	}
}

static struct json_object *host_json(void)
{
	struct json_object *o = json_object_new_object(), *k = json_object_new_object();
	struct utsname u;
	char val[64], args[512], path[PATH_MAX];
	const char *argv[64];

	uname(&u);
	JADD(o, "kernel", json_object_new_string(u.release));
	JADD(o, "cpus", JI(sysconf(_SC_NPROCESSORS_ONLN)));
	JADD(o, "mem_total_kib", JI(meminfo_kib("MemTotal")));
	JADD(o, "clock_ticks_per_s", JI(g.hz));
	JADD(o, "ksmd_pid", JI(g.ksmd));
	for (int i = 0; i < K_N; i++)
		if (knob_read(&knobs[i], val, sizeof(val)) == 0)
			JADD(k, knobs[i].path, json_object_new_string(val));
	if (knob_read(&(struct knob){ KSM_DIR "smart_scan" }, val, sizeof(val)) == 0)
		JADD(k, KSM_DIR "smart_scan", json_object_new_string(val));
	if (knob_read(&(struct knob){ KSM_DIR "merge_across_nodes" }, val, sizeof(val)) == 0)
		JADD(k, KSM_DIR "merge_across_nodes", json_object_new_string(val));
	JADD(o, "settings_at_start", k);
	JADD(o, "rmap_item_bytes", JD(g.rmap_item_b));
	JADD(o, "rmap_item_bytes_source", json_object_new_string(g.rmap_item_src));
	JADD(o, "stable_node_bytes", JD(g.stable_node_b));
	JADD(o, "vma_bytes", JD(g.vma_b));
	JADD(o, "repeats", JI(nrepeat));
	int n = dedupd_argv(path, sizeof(path), "SOCKET", args, argv, 64);
	struct json_object *a = json_object_new_array();
	for (int i = 0; i < n; i++)
		json_object_array_add(a, json_object_new_string(argv[i]));
	JADD(o, "dedupd_argv", a);
	return o;
}

static int setup(int argc, char **argv)
{
	struct sigaction sa = { .sa_handler = on_signal };

	static char out[PATH_MAX];

	g.build = argc > 1 ? argv[1] : "build";
	g.out = argc > 2 ? argv[2] : "build/bench";
	mkdir(g.out, 0755);
	if (!realpath(g.out, out)) { /* dedupd wants an absolute socket path */
		fprintf(stderr, "dd-bench: %s: %s\n", g.out, strerror(errno));
		return -errno;
	}
	g.out = out;
	g.hz = sysconf(_SC_CLK_TCK);
	if (geteuid() != 0) {
		fprintf(stderr, "dd-bench: needs root (KSM knobs, userfaultfd, /proc of other "
				"processes)\n");
		return -EPERM;
	}
	if (access(KSM_DIR "run", W_OK) < 0 || (g.ksmd = find_ksmd()) <= 0) {
		fprintf(stderr,
			"dd-bench: kernel KSM is not available (no writable %srun or no "
			"ksmd thread)\n",
			KSM_DIR);
		return -ENOENT;
	}
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	find_slab_sizes();
	warn_other_processes();
	if (ksm_counter("run") != 0 || ksm_counter("pages_shared") > 0)
		note("KSM was in use before the bench (run=%lld, pages_shared=%lld): ksmd's CPU "
		     "includes other processes",
		     ksm_counter("run"), ksm_counter("pages_shared"));
	return knob_set(K_RUN, "0");
}

/* If a signal stopped us mid-run: kill what we started. */
static void kill_leftovers(void)
{
	if (g.cur_wl)
		wl_stop(g.cur_wl, 0, 30);
	if (g.cur_daemon > 0) {
		kill(g.cur_daemon, SIGTERM);
		if (wait_pid(g.cur_daemon, 10, &(int){ 0 }) < 0) {
			kill(g.cur_daemon, SIGKILL);
			waitpid(g.cur_daemon, NULL, 0);
		}
		g.cur_daemon = 0;
	}
	pids_write();
}

int main(int argc, char **argv)
{
	struct json_object *root = json_object_new_object(), *jruns = json_object_new_object();
	double start = now_s();
	char path[PATH_MAX];
	FILE *f;
	int r;

	if ((r = setup(argc, argv)) < 0) {
		knobs_restore();
		return 1;
	}
	runs_init();
	JADD(root, "host", host_json());
	printf("dd-bench: dedupd (%s) against kernel KSM (pages_to_scan 100000, sleep_millisecs "
	       "0, use_zero_pages 1); logs in %s\n",
	       getenv("DEDUPD_ARGS") ? getenv("DEDUPD_ARGS") : DEDUPD_DEFAULT_ARGS, g.out);
	run_all(jruns);
	kill_leftovers();
	knobs_restore();
	snprintf(path, sizeof(path), "%s/restore.txt", g.out);
	unlink(path);
	if (g.interrupted) {
		fprintf(stderr, "dd-bench: interrupted by signal %d; settings restored\n",
			(int)g.interrupted);
		g.failed = true;
	}
	JADD(root, "runs", jruns);
	JADD(root, "duration_s", JD(now_s() - start));
	print_report(stdout, root, now_s() - start);
	snprintf(path, sizeof(path), "%s/table.txt", g.out);
	if ((f = fopen(path, "we"))) {
		print_report(f, NULL, now_s() - start);
		fclose(f);
	}
	JADD(root, "failed", json_object_new_boolean(g.failed));
	struct json_object *jn = json_object_new_array();
	for (int i = 0; i < g.nnotes; i++)
		json_object_array_add(jn, json_object_new_string(g.notes[i]));
	JADD(root, "notes", jn);
	snprintf(path, sizeof(path), "%s/results.json", g.out);
	if (json_object_to_file_ext(path, root, JSON_C_TO_STRING_PRETTY) < 0)
		fprintf(stderr, "dd-bench: cannot write %s\n", path);
	json_object_put(root);
	return g.failed ? 1 : 0;
}
