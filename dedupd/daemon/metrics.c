// SPDX-License-Identifier: MIT
/*
 * Prometheus metrics (see metrics.h): the exposition of every counter the
 * daemon keeps, under names that follow Prometheus' conventions (a dedupd_
 * prefix, base units, _total on counters) and KSM's words for the page
 * counters (pages_shared, pages_sharing, full_scans).
 *
 * dd_metrics_format() is pure: it turns a snapshot into text, so tests can
 * drive it with made-up figures. dd_metrics_render() takes the snapshot; it
 * runs on libmicrohttpd's thread for /metrics and on the main thread for the
 * node_exporter textfile.
 *
 * The listening socket is created here, not by libmicrohttpd, so that a bind
 * failure comes back with its own errno ("Address already in use") and the
 * bound address can be reported (dedupctl status).
 *
 * Not exported yet: reclaim actions (balloon inflations, MADV_PAGEOUT of idle
 * pages, cgroup throttles). They do not exist in the daemon yet; their
 * counters (dedupd_reclaim_actions_total{action=...}, pages and bytes
 * reclaimed) come with the reclaim issue.
 */
#include "dedupd/daemon/metrics.h"
#include "hash/pagehash.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define DEDUPD_VERSION "0.1.0"
#define CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* A scrape is a few kilobytes; 16 concurrent connections and a 10 s idle
 * timeout are plenty for Prometheus and keep a misbehaving peer from eating
 * the daemon's file descriptors. */
#define HTTP_CONNECTION_LIMIT 16
#define HTTP_TIMEOUT_SEC 10

struct dd_metrics {
	struct dd_scanner *scanner;
	struct MHD_Daemon *httpd;
	char address[80];
	double start_time_sec;

	pthread_mutex_t lock; /* guards the pressure copy */
	bool pressure_valid;
	struct dd_pressure_snapshot ps;
	uint64_t transitions;
	struct dd_reclaim *reclaim;

	int timer_fd;
	char textfile[4096];
	uint32_t interval_sec;
	bool textfile_written;
};

/* ---- formatting (pure) ----------------------------------------------------- */

static void family(FILE *f, const char *name, const char *type, const char *help)
{
	fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void gauge(FILE *f, const char *name, const char *help, uint64_t v)
{
	family(f, name, "gauge", help);
	fprintf(f, "%s %" PRIu64 "\n", name, v);
}

static void counter(FILE *f, const char *name, const char *help, uint64_t v)
{
	family(f, name, "counter", help);
	fprintf(f, "%s %" PRIu64 "\n", name, v);
}

/* v / 10^digits written exactly: ns -> seconds with 9 digits, pm -> ratio with 4. */
static void fixed(FILE *f, uint64_t v, unsigned digits)
{
	uint64_t div = 1;

	for (unsigned i = 0; i < digits; i++)
		div *= 10;
	fprintf(f, "%" PRIu64 ".%0*" PRIu64 "\n", v / div, (int)digits, v % div);
}

/* A PSI family with its "some" and "full" samples, v/10^digits each. */
static void psi_family(FILE *f, const char *name, const char *type, const char *help,
		       uint64_t some, uint64_t full, unsigned digits)
{
	family(f, name, type, help);
	fprintf(f, "%s{kind=\"some\"} ", name);
	fixed(f, some, digits);
	fprintf(f, "%s{kind=\"full\"} ", name);
	fixed(f, full, digits);
}

static void gauge_fixed(FILE *f, const char *name, const char *help, uint64_t v, unsigned digits)
{
	family(f, name, "gauge", help);
	fprintf(f, "%s ", name);
	fixed(f, v, digits);
}

static void counter_fixed(FILE *f, const char *name, const char *help, uint64_t v, unsigned digits)
{
	family(f, name, "counter", help);
	fprintf(f, "%s ", name);
	fixed(f, v, digits);
}

/* A label value with \, " and newline escaped, as the format requires. */
static void label_value(FILE *f, const char *s)
{
	for (; *s; s++) {
		if (*s == '\\' || *s == '"')
			fprintf(f, "\\%c", *s);
		else if (*s == '\n')
			fputs("\\n", f);
		else
			fputc(*s, f);
	}
}

#define STAT(field) offsetof(struct dd_scan_stats, field)

/* The counters of dd_scan_stats that go out as they are. */
static const struct {
	const char *name, *type, *help;
	size_t off;
} scan_series[] = {
	{ "dedupd_pages_registered", "gauge", "Pages of client memory registered for sharing.",
	  STAT(pages_registered) },
	{ "dedupd_pages_shared", "gauge",
	  "Store pages with at least one sharer (KSM's pages_shared).", STAT(pages_shared) },
	{ "dedupd_pages_sharing", "gauge",
	  "Client pages mapped onto store pages, minus pages_shared: the pages saved (KSM's "
	  "pages_sharing).",
	  STAT(pages_sharing) },
	{ "dedupd_pages_unshared", "gauge",
	  "Unique candidate pages, in the unstable table or cold (KSM's pages_unshared).",
	  STAT(pages_unshared) },
	{ "dedupd_unstable_nodes", "gauge",
	  "Of pages_unshared, those in the unstable table (the others are cold: no node).",
	  STAT(unstable_nodes) },
	{ "dedupd_pages_volatile", "gauge",
	  "Pages that changed since the previous pass, last pass (KSM's pages_volatile).",
	  STAT(pages_volatile) },
	{ "dedupd_zero_pages", "gauge", "All-zero client pages zapped to the kernel's zero page.",
	  STAT(zero_pages) },
	{ "dedupd_full_scans_total", "counter",
	  "Completed passes over all registered memory (KSM's full_scans).", STAT(full_scans) },
	{ "dedupd_pages_scanned_total", "counter", "Pages read and checksummed, all passes.",
	  STAT(pages_scanned) },
	{ "dedupd_merges_total", "counter", "Pages merged onto a store page or zapped.",
	  STAT(merges) },
	{ "dedupd_merge_failures_total", "counter",
	  "Pages frozen for a merge but not merged (changed, unmapped, agent error).",
	  STAT(merge_failed) },
	{ "dedupd_cow_breaks_total", "counter",
	  "Merged pages found written (copy-on-write breaks).", STAT(cow_breaks) },
	{ "dedupd_pages_unmapped_total", "counter",
	  "Registered pages found unmapped or mapped over by their application.",
	  STAT(pages_unmapped) },
	{ "dedupd_agent_hash_pages_total", "counter",
	  "Pages checksummed by the clients' agents in place (not copied out).",
	  STAT(agent_hash_pages) },
	{ "dedupd_thp_split_total", "counter",
	  "Transparent huge pages split so that their pages could be merged.", STAT(thp_split) },
	{ "dedupd_thp_pages_skipped", "gauge",
	  "Pages left alone in the last pass because a transparent huge page holds them.",
	  STAT(thp_skipped) },
	{ "dedupd_pages_adopted_total", "counter",
	  "Pages found still merged by an earlier daemon and counted again after a restart.",
	  STAT(pages_adopted) },
	{ "dedupd_wp_faults_total", "counter", "Write-protect faults answered for client pages.",
	  STAT(faults) },
	{ "dedupd_store_pages", "gauge", "Store pages held, with or without sharers.",
	  STAT(store_pages) },
	{ "dedupd_store_pages_freed_total", "counter", "Store pages freed after their last sharer.",
	  STAT(store_freed) },
	{ "dedupd_store_pages_warm", "gauge",
	  "Free store pages allocated ahead of the merges that will fill them.",
	  STAT(store_warm) },
	{ "dedupd_store_holes", "gauge",
	  "Store slots under spans: taken so that nothing else goes there, and empty.",
	  STAT(store_holes) },
	{ "dedupd_vmas", "gauge", "Memory mappings (VMAs) of all client processes.", STAT(vmas) },
	{ "dedupd_vmas_added", "gauge", "Client VMAs that dedupd's remaps added (estimate).",
	  STAT(vmas_added) },
	{ "dedupd_metadata_bytes", "gauge",
	  "Memory of dedupd's bookkeeping: page records, tables, store slots.", STAT(meta_bytes) },
	{ "dedupd_daemon_anon_bytes", "gauge", "Resident anonymous memory of the daemon (RssAnon).",
	  STAT(daemon_anon_bytes) },
	{ "dedupd_clients", "gauge", "Connected client processes.", STAT(clients) },
	{ "dedupd_regions", "gauge", "Registered regions of all clients.", STAT(regions) },
};

static void format_scan(FILE *f, const struct dd_scan_stats *st, const struct dd_scan_knobs *k)
{
	gauge(f, "dedupd_page_size_bytes", "Size of the pages the dedupd_*pages* series count.",
	      DD_PAGE_SIZE);
	for (size_t i = 0; i < sizeof(scan_series) / sizeof(scan_series[0]); i++) {
		family(f, scan_series[i].name, scan_series[i].type, scan_series[i].help);
		fprintf(f, "%s %" PRIu64 "\n", scan_series[i].name,
			*(const uint64_t *)((const char *)st + scan_series[i].off));
	}
	family(f, "dedupd_bytes_saved_net", "gauge",
	       "(pages_sharing + zero_pages) x page size, minus everything dedupd holds to "
	       "achieve it: its own memory, store pages without sharers, VMA slab.");
	fprintf(f, "dedupd_bytes_saved_net %" PRId64 "\n", st->bytes_saved_net);
	counter_fixed(f, "dedupd_scan_cpu_seconds_total", "CPU time of the scan thread.",
		      st->scan_cpu_ns, 9);
	counter_fixed(f, "dedupd_agent_hash_cpu_seconds_total",
		      "CPU time the clients' agents spent checksumming pages, as they report it.",
		      st->agent_cpu_ns, 9);
	counter_fixed(f, "dedupd_agent_hash_wait_seconds_total",
		      "Wall time the scan waited for the agents' checksums.",
		      st->agent_hash_wait_ns, 9);
	counter(f, "dedupd_agent_timeouts_total",
		"Requests to the clients' agents (checksums, remaps) left unanswered within "
		"agent_timeout_millisecs.",
		st->agent_timeouts);
	counter(f, "dedupd_merge_batches_total",
		"Merge batches carried out (freeze, verify, remap, wake).", st->merge_batches);
	family(f, "dedupd_agent_runs_total", "counter",
	       "Runs of pages sent to the agents: remap (one mmap of the store each), "
	       "zap (zero pages), or span (one mmap over several remap runs and the "
	       "pages between them).");
	fprintf(f, "dedupd_agent_runs_total{op=\"remap\"} %" PRIu64 "\n", st->remap_runs);
	fprintf(f, "dedupd_agent_runs_total{op=\"zap\"} %" PRIu64 "\n", st->zap_runs);
	fprintf(f, "dedupd_agent_runs_total{op=\"span\"} %" PRIu64 "\n", st->remap_spans);
	family(f, "dedupd_merge_step_seconds_total", "counter",
	       "Wall time of the merge batches by step: freeze (write-protect), verify (read, "
	       "compare, fill new store pages), agent (waiting for the remaps and zaps), "
	       "settle (record, wake).");
	{
		static const char *const step[] = { "freeze", "verify", "agent", "settle" };
		const uint64_t v[] = { st->merge_freeze_ns, st->merge_verify_ns,
				       st->merge_agent_ns, st->merge_settle_ns };

		for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
			fprintf(f, "dedupd_merge_step_seconds_total{step=\"%s\"} ", step[i]);
			fixed(f, v[i], 9);
		}
	}
	gauge_fixed(f, "dedupd_last_pass_seconds", "Wall time of the last full pass.",
		    st->last_pass_ms, 3);
	gauge(f, "dedupd_scan_pages_to_scan",
	      "Pages scanned per wake-up now (follows the pressure state).", k->pages_to_scan);
	gauge_fixed(f, "dedupd_scan_sleep_seconds", "Pause between scan wake-ups now.",
		    k->sleep_millisecs, 3);
	gauge(f, "dedupd_scan_max_bytes_per_second",
	      "Upper bound of the scan rate: pages_to_scan x page size / sleep.",
	      (uint64_t)k->pages_to_scan * DD_PAGE_SIZE * 1000 /
		  (k->sleep_millisecs ? k->sleep_millisecs : 1));
	gauge(f, "dedupd_scan_merge_batch_pages", "Merges per agent round trip.",
	      k->merge_batch_pages);
}

static void format_pressure(FILE *f, const struct dd_metrics_snapshot *s)
{
	static const char *const states[DD_PSTATE_COUNT] = { "high", "soft", "hard", "low" };
	const struct dd_pressure_snapshot *p = &s->ps;

	if (!s->pressure_valid)
		return;
	family(f, "dedupd_pressure_state", "gauge",
	       "Memory pressure state: 1 for the current one of high, soft, hard, low.");
	for (int i = 0; i < DD_PSTATE_COUNT; i++)
		fprintf(f, "dedupd_pressure_state{state=\"%s\"} %d\n", states[i],
			(int)p->state == i);
	gauge_fixed(f, "dedupd_pressure_state_seconds", "How long the current state has held.",
		    s->now_ms > p->since_ms ? s->now_ms - p->since_ms : 0, 3);
	counter(f, "dedupd_pressure_transitions_total", "Changes of the pressure state.",
		s->pressure_transitions);
	family(f, "dedupd_pressure_source_info", "gauge",
	       "What the pressure state is computed from: bpf+psi, psi, bpf or free.");
	fprintf(f, "dedupd_pressure_source_info{source=\"%s\"} 1\n", p->source ? p->source : "");
	if (p->free_valid) {
		gauge(f, "dedupd_memory_free_bytes",
		      "Free memory of the watched scope (host MemAvailable, or cgroup limit minus "
		      "usage).",
		      p->free_bytes);
		gauge(f, "dedupd_memory_total_bytes", "Total memory of the watched scope.",
		      p->total_bytes);
	}
	if (p->psi_valid) {
		psi_family(f, "dedupd_psi_memory_avg10_ratio", "gauge",
			   "PSI memory pressure, share of the last 10 s with stalled tasks.",
			   p->psi_some_avg10_pm, p->psi_full_avg10_pm, 4);
		psi_family(f, "dedupd_psi_memory_avg60_ratio", "gauge",
			   "PSI memory pressure, share of the last 60 s with stalled tasks.",
			   p->psi_some_avg60_pm, p->psi_full_avg60_pm, 4);
		psi_family(f, "dedupd_psi_memory_stalled_seconds_total", "counter",
			   "PSI memory: total time some or all tasks were stalled.",
			   p->psi_some_total_us, p->psi_full_total_us, 6);
	}
	if (p->bpf_active) {
		counter(f, "dedupd_reclaim_stalls_total",
			"Direct and memcg reclaim entries in the watched scope (eBPF).",
			p->scope_stalls);
		counter_fixed(f, "dedupd_reclaim_stall_seconds_total",
			      "Time spent in those reclaim stalls (eBPF).", p->scope_stall_us, 6);
		gauge(f, "dedupd_reclaim_stalls_per_second",
		      "Reclaim stall rate over the last one to two seconds.", p->stalls_per_sec);
		family(f, "dedupd_vmscan_events_total", "counter",
		       "Host-wide vmscan and OOM events seen by the eBPF probes.");
		fprintf(f, "dedupd_vmscan_events_total{event=\"direct_reclaim\"} %" PRIu64 "\n",
			p->direct_reclaims);
		fprintf(f, "dedupd_vmscan_events_total{event=\"memcg_reclaim\"} %" PRIu64 "\n",
			p->memcg_reclaims);
		fprintf(f, "dedupd_vmscan_events_total{event=\"kswapd_wake\"} %" PRIu64 "\n",
			p->kswapd_wakes);
		fprintf(f, "dedupd_vmscan_events_total{event=\"throttle\"} %" PRIu64 "\n",
			p->throttles);
		fprintf(f, "dedupd_vmscan_events_total{event=\"oom\"} %" PRIu64 "\n", p->ooms);
		counter(f, "dedupd_pressure_events_lost_total",
			"eBPF events dropped because the ring buffer was full.", p->events_lost);
	}
}

static void client_labels(FILE *f, const char *name, const struct dd_metrics_client *c)
{
	fprintf(f, "%s{client=\"%" PRIu64 "\",pid=\"%d\",command=\"", name, c->client_id,
		(int)c->pid);
	label_value(f, c->comm);
	fputs("\"}", f);
}

static void format_clients(FILE *f, const struct dd_metrics_snapshot *s)
{
	static const struct {
		const char *name, *help;
		size_t off;
	} series[] = {
		{ "dedupd_client_regions", "Registered regions of the client.",
		  offsetof(struct dd_metrics_client, regions) },
		{ "dedupd_client_pages_registered", "Pages the client registered.",
		  offsetof(struct dd_metrics_client, pages_registered) },
		{ "dedupd_client_pages_sharing", "Pages of the client mapped onto store pages.",
		  offsetof(struct dd_metrics_client, pages_sharing) },
		{ "dedupd_client_zero_pages", "Pages of the client zapped to the zero page.",
		  offsetof(struct dd_metrics_client, zero_pages) },
		{ "dedupd_client_vmas", "Memory mappings (VMAs) of the client process.",
		  offsetof(struct dd_metrics_client, vmas) },
	};

	if (!s->nclients && !s->nother)
		return;
	for (size_t i = 0; i < sizeof(series) / sizeof(series[0]); i++) {
		char help[200];

		snprintf(help, sizeof(help),
			 "%s Per client: the %d with the most registered pages, the rest summed "
			 "under client=\"other\".",
			 series[i].help, DD_METRICS_MAX_CLIENTS);
		family(f, series[i].name, "gauge", help);
		for (size_t j = 0; j < s->nclients; j++) {
			client_labels(f, series[i].name, &s->clients[j]);
			fprintf(f, " %" PRIu64 "\n",
				*(const uint64_t *)((const char *)&s->clients[j] + series[i].off));
		}
		if (s->nother)
			fprintf(f, "%s{client=\"other\"} %" PRIu64 "\n", series[i].name,
				*(const uint64_t *)((const char *)&s->other + series[i].off));
	}
	gauge(f, "dedupd_clients_other", "Clients summed under client=\"other\".", s->nother);
}

static void format_process(FILE *f, const struct dd_metrics_snapshot *s)
{
	family(f, "dedupd_build_info", "gauge", "The version of dedupd; always 1.");
	fprintf(f, "dedupd_build_info{version=\"%s\"} 1\n", DEDUPD_VERSION);
	counter_fixed(f, "dedupd_process_cpu_seconds_total",
		      "User and system CPU time of the daemon, all threads.",
		      (uint64_t)(s->process_cpu_sec * 100 + 0.5), 2);
	gauge(f, "dedupd_process_resident_memory_bytes", "Resident memory of the daemon.",
	      s->process_rss_bytes);
	gauge(f, "dedupd_process_open_fds", "Open file descriptors of the daemon.",
	      s->process_open_fds);
	gauge_fixed(f, "dedupd_process_start_time_seconds",
		    "Start time of the daemon since the Unix epoch.",
		    (uint64_t)(s->start_time_sec * 1000), 3);
}

static void format_reclaim(FILE *f, const struct dd_reclaim_totals *t)
{
	gauge(f, "dedupd_reclaim_clients", "Clients the reclaim engine tracks.", t->clients);
	gauge(f, "dedupd_reclaim_balloon_bytes",
	      "Memory all balloons hold now, as the backends report it.", t->balloon_bytes);
	gauge(f, "dedupd_reclaim_balloon_target_bytes",
	      "Memory all balloons were last asked to hold.", t->balloon_target_bytes);
	counter(f, "dedupd_reclaim_pageout_bytes_total",
		"Bytes of cold client pages advised with MADV_PAGEOUT.", t->pageout_bytes);
	gauge(f, "dedupd_reclaim_throttled_clients",
	      "Clients held to a target by a cgroup memory limit now.", t->throttled);
	counter(f, "dedupd_reclaim_actions_total",
		"Balloon changes, pageouts and limits set by the reclaim engine.", t->actions);
	counter(f, "dedupd_admission_refused_total",
		"Registrations refused because their minimum did not fit.", t->admission_refused);
	gauge(f, "dedupd_admission_reserved_bytes", "Sum of the admitted clients' minimums.",
	      t->reserved_bytes);
}

int dd_metrics_format(FILE *f, const struct dd_metrics_snapshot *s)
{
	format_scan(f, &s->st, &s->knobs);
	format_pressure(f, s);
	if (s->reclaim_valid)
		format_reclaim(f, &s->rt);
	format_clients(f, s);
	format_process(f, s);
	return ferror(f) ? -EIO : 0;
}

/* ---- the snapshot -------------------------------------------------------- */

static int by_pages_desc(const void *a, const void *b)
{
	const struct dd_metrics_client *x = a, *y = b;

	if (x->pages_registered != y->pages_registered)
		return x->pages_registered > y->pages_registered ? -1 : 1;
	return x->client_id < y->client_id ? -1 : x->client_id > y->client_id;
}

static int by_id(const void *a, const void *b)
{
	const struct dd_metrics_client *x = a, *y = b;

	return x->client_id < y->client_id ? -1 : x->client_id > y->client_id;
}

size_t dd_metrics_cap_clients(struct dd_metrics_client *c, size_t n,
			      struct dd_metrics_client *other)
{
	size_t keep = n < DD_METRICS_MAX_CLIENTS ? n : DD_METRICS_MAX_CLIENTS;

	memset(other, 0, sizeof(*other));
	if (n > keep)
		qsort(c, n, sizeof(*c), by_pages_desc);
	for (size_t i = keep; i < n; i++) {
		other->regions += c[i].regions;
		other->pages_registered += c[i].pages_registered;
		other->pages_sharing += c[i].pages_sharing;
		other->zero_pages += c[i].zero_pages;
		other->vmas += c[i].vmas;
	}
	if (keep > 1)
		qsort(c, keep, sizeof(*c), by_id);
	return keep;
}

struct client_list {
	struct dd_metrics_client *v;
	size_t n, cap;
	bool nomem;
};

/* Regions arrive client by client, under the client's lock: only add up. */
static void region_cb(const struct dd_region_info *ri, void *arg)
{
	struct client_list *l = arg;
	struct dd_metrics_client *c;

	if (!l->n || l->v[l->n - 1].client_id != ri->client_id) {
		if (l->n == l->cap) {
			size_t cap = l->cap ? l->cap * 2 : 16;
			void *v = realloc(l->v, cap * sizeof(*l->v));

			if (!v) {
				l->nomem = true;
				return;
			}
			l->v = v;
			l->cap = cap;
		}
		l->v[l->n++] =
		    (struct dd_metrics_client){ .client_id = ri->client_id, .pid = ri->pid };
	}
	c = &l->v[l->n - 1];
	c->regions++;
	c->pages_registered += ri->pages;
	c->pages_sharing += ri->merged;
	c->zero_pages += ri->zero;
	c->vmas = ri->vmas;
}

static void read_comm(pid_t pid, char *comm, size_t len)
{
	char path[64];
	ssize_t n;
	int fd;

	comm[0] = 0;
	snprintf(path, sizeof(path), "/proc/%d/comm", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	n = read(fd, comm, len - 1);
	close(fd);
	if (n <= 0)
		n = 0;
	comm[n] = 0;
	comm[strcspn(comm, "\n")] = 0;
}

/* CPU seconds and resident bytes of this process, from /proc/self/stat. */
static void read_self(struct dd_metrics_snapshot *s)
{
	char buf[1024], *p, *save = NULL;
	unsigned long long v[24] = { 0 };
	long tck = sysconf(_SC_CLK_TCK), pg = sysconf(_SC_PAGESIZE);
	ssize_t n;
	int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
	DIR *d;

	if (fd >= 0) {
		n = read(fd, buf, sizeof(buf) - 1);
		close(fd);
		buf[n > 0 ? n : 0] = 0;
		p = strrchr(buf, ')'); /* the command may hold spaces */
		/* fields from 3 (state) on: v[i] is field i + 3 */
		for (int i = 0; p && i < 24 && (p = strtok_r(i ? NULL : p + 1, " ", &save)); i++)
			v[i] = strtoull(p, NULL, 10);
		if (tck > 0)
			s->process_cpu_sec = (double)(v[11] + v[12]) / (double)tck; /* 14, 15 */
		s->process_rss_bytes = v[21] * (unsigned long long)(pg > 0 ? pg : 4096); /* 24 */
	}
	d = opendir("/proc/self/fd");
	if (d) {
		struct dirent *de;

		while ((de = readdir(d)))
			s->process_open_fds += de->d_name[0] != '.';
		s->process_open_fds--; /* the directory's own fd */
		closedir(d);
	}
}

int dd_metrics_render(struct dd_metrics *m, char **buf, size_t *len)
{
	struct dd_metrics_snapshot *s = calloc(1, sizeof(*s));
	struct client_list l = { 0 };
	FILE *f;
	int r;

	*buf = NULL;
	*len = 0;
	if (!s)
		return -ENOMEM;
	dd_scanner_stats(m->scanner, &s->st);
	dd_scanner_get_knobs(m->scanner, &s->knobs);
	dd_scanner_regions(m->scanner, region_cb, &l);
	s->nclients = dd_metrics_cap_clients(l.v, l.n, &s->other);
	s->nother = l.n - s->nclients;
	for (size_t i = 0; i < s->nclients; i++)
		read_comm(l.v[i].pid, l.v[i].comm, sizeof(l.v[i].comm));
	s->clients = l.v;
	pthread_mutex_lock(&m->lock);
	s->pressure_valid = m->pressure_valid;
	s->ps = m->ps;
	s->pressure_transitions = m->transitions;
	if (m->reclaim) {
		s->reclaim_valid = true;
		dd_reclaim_totals(m->reclaim, &s->rt);
	}
	pthread_mutex_unlock(&m->lock);
	s->now_ms = dd_pressure_now_ms();
	s->start_time_sec = m->start_time_sec;
	read_self(s);
	f = open_memstream(buf, len);
	if (!f) {
		r = -ENOMEM;
	} else {
		r = dd_metrics_format(f, s);
		if (fclose(f) != 0 && r == 0)
			r = -ENOMEM;
	}
	if (r < 0) {
		free(*buf);
		*buf = NULL;
		*len = 0;
	}
	free(l.v);
	free(s);
	return r;
}

void dd_metrics_set_reclaim(struct dd_metrics *m, struct dd_reclaim *r)
{
	if (!m)
		return;
	pthread_mutex_lock(&m->lock);
	m->reclaim = r;
	pthread_mutex_unlock(&m->lock);
}

void dd_metrics_set_pressure(struct dd_metrics *m, const struct dd_pressure_snapshot *ps,
			     uint64_t transitions)
{
	if (!m)
		return;
	pthread_mutex_lock(&m->lock);
	m->pressure_valid = ps != NULL;
	if (ps)
		m->ps = *ps;
	m->transitions = transitions;
	pthread_mutex_unlock(&m->lock);
}

/* ---- HTTP ------------------------------------------------------------------ */

static enum MHD_Result respond(struct MHD_Connection *conn, unsigned code, const char *text)
{
	struct MHD_Response *res =
	    MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_PERSISTENT);
	enum MHD_Result r;

	if (!res)
		return MHD_NO;
	MHD_add_response_header(res, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
	if (code == MHD_HTTP_METHOD_NOT_ALLOWED)
		MHD_add_response_header(res, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
	r = MHD_queue_response(conn, code, res);
	MHD_destroy_response(res);
	return r;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
				  const char *method, const char *version, const char *upload,
				  size_t *upload_size, void **req_cls)
{
	struct dd_metrics *m = cls;
	struct MHD_Response *res;
	enum MHD_Result r;
	size_t len;
	char *buf;

	if (strcmp(method, MHD_HTTP_METHOD_GET) && strcmp(method, MHD_HTTP_METHOD_HEAD))
		return respond(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET and HEAD\n");
	if (!strcmp(url, "/"))
		return respond(conn, MHD_HTTP_OK, "dedupd: Prometheus metrics are at /metrics\n");
	if (strcmp(url, "/metrics"))
		return respond(conn, MHD_HTTP_NOT_FOUND, "not found; metrics are at /metrics\n");
	if (dd_metrics_render(m, &buf, &len) < 0)
		return respond(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
	res = MHD_create_response_from_buffer(len, buf, MHD_RESPMEM_MUST_FREE);
	if (!res) {
		free(buf);
		return MHD_NO;
	}
	MHD_add_response_header(res, MHD_HTTP_HEADER_CONTENT_TYPE, CONTENT_TYPE);
	r = MHD_queue_response(conn, MHD_HTTP_OK, res);
	MHD_destroy_response(res);
	return r;
}

int dd_metrics_parse_listen(const char *where, struct sockaddr_storage *ss, unsigned *sslen,
			    char *err, size_t errlen)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_NUMERICSERV | AI_ADDRCONFIG };
	char host[128], *port;
	struct addrinfo *ai;
	unsigned long p;
	int r;

	if (!where || strlen(where) >= sizeof(host))
		goto bad;
	strcpy(host, where);
	if (host[0] == '[') {
		char *close = strstr(host, "]:");

		if (!close)
			goto bad;
		*close = 0;
		port = close + 2;
		memmove(host, host + 1, strlen(host));
		hints.ai_family = AF_INET6;
		hints.ai_flags |= AI_NUMERICHOST;
	} else {
		port = strrchr(host, ':');
		if (!port || strchr(host, ':') != port)
			goto bad;
		*port++ = 0;
	}
	if (!host[0] || !port[0] || strspn(port, "0123456789") != strlen(port) || strlen(port) > 5)
		goto bad;
	p = strtoul(port, NULL, 10);
	if (p == 0 || p > 65535)
		goto bad;
	{
		char service[8];

		snprintf(service, sizeof(service), "%lu", p);
		r = getaddrinfo(host, service, &hints, &ai);
		if (r == EAI_ADDRFAMILY || r == EAI_NONAME) {
			hints.ai_flags &=
			    ~AI_ADDRCONFIG; /* 127.0.0.1 on a host without IPv4 routes */
			r = getaddrinfo(host, service, &hints, &ai);
		}
	}
	if (r != 0) {
		snprintf(err, errlen, "metrics listen address '%s': cannot resolve '%s': %s", where,
			 host, gai_strerror(r));
		return -ENOENT;
	}
	memcpy(ss, ai->ai_addr, ai->ai_addrlen);
	*sslen = (unsigned)ai->ai_addrlen;
	freeaddrinfo(ai);
	return 0;
bad:
	snprintf(err, errlen,
		 "metrics listen address '%s': expected ADDRESS:PORT with a port 1..65535, "
		 "e.g. 127.0.0.1:9848 or [::1]:9848",
		 where ? where : "");
	return -EINVAL;
}

static void format_address(const struct sockaddr_storage *ss, char *buf, size_t len)
{
	char host[INET6_ADDRSTRLEN] = "?";

	if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const void *)ss;

		inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
		snprintf(buf, len, "[%s]:%u", host, ntohs(a->sin6_port));
	} else {
		const struct sockaddr_in *a = (const void *)ss;

		inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
		snprintf(buf, len, "%s:%u", host, ntohs(a->sin_port));
	}
}

/* A bound, listening, non-blocking TCP socket, or -errno with err set. */
static int listen_socket(const char *where, char *address, size_t addrlen, char *err, size_t errlen)
{
	struct sockaddr_storage ss = { 0 };
	unsigned sslen = 0;
	socklen_t bl = sizeof(ss);
	int fd, r, one = 1;

	r = dd_metrics_parse_listen(where, &ss, &sslen, err, errlen);
	if (r < 0)
		return r;
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		r = -errno;
		snprintf(err, errlen, "metrics listen address %s: socket: %s", where, strerror(-r));
		return r;
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&ss, sslen) < 0 || listen(fd, 64) < 0) {
		r = -errno;
		close(fd);
		snprintf(err, errlen, "cannot listen on %s for /metrics: %s", where, strerror(-r));
		return r;
	}
	if (getsockname(fd, (struct sockaddr *)&ss, &bl) == 0)
		format_address(&ss, address, addrlen);
	return fd;
}

/* ---- life cycle and the textfile -------------------------------------------- */

struct dd_metrics *dd_metrics_new(const struct dd_metrics_opts *o, char *err, size_t errlen)
{
	struct dd_metrics *m = calloc(1, sizeof(*m));
	struct timespec ts;
	int fd, e;

	if (!m) {
		snprintf(err, errlen, "metrics: out of memory");
		return NULL;
	}
	m->scanner = o->scanner;
	pthread_mutex_init(&m->lock, NULL);
	clock_gettime(CLOCK_REALTIME, &ts);
	m->start_time_sec = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
	m->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	if (m->timer_fd < 0) {
		e = errno;
		snprintf(err, errlen, "metrics: timerfd: %s", strerror(e));
		goto fail;
	}
	dd_metrics_set_textfile(m, o->textfile, o->textfile_interval_sec);
	if (!o->listen || !o->listen[0])
		return m;
	fd = listen_socket(o->listen, m->address, sizeof(m->address), err, errlen);
	if (fd < 0) {
		e = -fd;
		goto fail;
	}
	m->httpd = MHD_start_daemon(MHD_USE_EPOLL_INTERNAL_THREAD, 0, NULL, NULL, on_request, m,
				    MHD_OPTION_LISTEN_SOCKET, fd, MHD_OPTION_CONNECTION_LIMIT,
				    (unsigned)HTTP_CONNECTION_LIMIT, MHD_OPTION_CONNECTION_TIMEOUT,
				    (unsigned)HTTP_TIMEOUT_SEC, MHD_OPTION_END);
	if (!m->httpd) {
		e = errno ? errno : EIO;
		close(fd);
		snprintf(err, errlen, "cannot start the HTTP server for /metrics on %s: %s",
			 o->listen, strerror(e));
		goto fail;
	}
	return m;
fail:
	dd_metrics_free(m);
	errno = e;
	return NULL;
}

void dd_metrics_free(struct dd_metrics *m)
{
	if (!m)
		return;
	if (m->httpd)
		MHD_stop_daemon(m->httpd); /* joins its thread, closes the listener */
	if (m->timer_fd >= 0)
		close(m->timer_fd);
	pthread_mutex_destroy(&m->lock);
	free(m);
}

const char *dd_metrics_address(const struct dd_metrics *m)
{
	return m ? m->address : "";
}

int dd_metrics_textfile_fd(const struct dd_metrics *m)
{
	return m->timer_fd;
}

void dd_metrics_set_textfile(struct dd_metrics *m, const char *path, uint32_t interval_sec)
{
	struct itimerspec its = { 0 };

	if (m->textfile_written && (!path || strcmp(path, m->textfile)))
		dd_metrics_remove_textfile(m); /* moved or turned off: no stale file */
	snprintf(m->textfile, sizeof(m->textfile), "%s", path ? path : "");
	m->interval_sec = interval_sec ? interval_sec : 15;
	if (m->textfile[0]) {
		its.it_interval.tv_sec = m->interval_sec;
		its.it_value.tv_nsec = 1000000; /* the first file at once */
	}
	timerfd_settime(m->timer_fd, 0, &its, NULL);
}

int dd_metrics_textfile_tick(struct dd_metrics *m, char *err, size_t errlen)
{
	char tmp[4200], *buf;
	uint64_t n;
	size_t len;
	ssize_t w;
	int fd, r;

	if (read(m->timer_fd, &n, sizeof(n)) < 0 && errno != EAGAIN)
		return 1;
	if (!m->textfile[0])
		return 1;
	r = dd_metrics_render(m, &buf, &len);
	if (r < 0) {
		snprintf(err, errlen, "metrics textfile %s: out of memory", m->textfile);
		return r;
	}
	snprintf(tmp, sizeof(tmp), "%s.%d.tmp", m->textfile, (int)getpid());
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		r = -errno;
		snprintf(err, errlen, "metrics textfile: cannot create %s: %s", tmp, strerror(-r));
		free(buf);
		return r;
	}
	w = write(fd, buf, len);
	r = w == (ssize_t)len ? 0 : w < 0 ? -errno : -EIO;
	free(buf);
	if (close(fd) < 0 && r == 0)
		r = -errno;
	if (r == 0 && rename(tmp, m->textfile) < 0)
		r = -errno;
	if (r < 0) {
		unlink(tmp);
		snprintf(err, errlen, "metrics textfile: cannot write %s: %s", m->textfile,
			 strerror(-r));
		return r;
	}
	m->textfile_written = true;
	return 0;
}

void dd_metrics_remove_textfile(struct dd_metrics *m)
{
	if (m && m->textfile_written && m->textfile[0])
		unlink(m->textfile);
	if (m)
		m->textfile_written = false;
}
