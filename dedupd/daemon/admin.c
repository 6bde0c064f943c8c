// SPDX-License-Identifier: MIT
/*
 * dedupctl's requests. Commands:
 *   stats              KSM-named counters and the net saving
 *   status             version, uptime, socket, the scan knobs, where the metrics go
 *   regions            one object per registered region
 *   set KEY=VALUE      change a scan knob at run time (root only)
 * Every answer is JSON; errors are a RESULT with -errno and a sentence.
 */
#include "dedupd/daemon/admin.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEDUPD_VERSION "0.1.0"

static int reply_json(int fd, uint32_t seq, struct json_object *o)
{
	const char *s;

	json_c_set_serialization_double_format("%.6g", JSON_C_OPTION_THREAD);
	s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
	int r = dd_msg_send_result(fd, seq, 0, 0, s);

	json_object_put(o);
	return r;
}

#define ADD_U64(o, name, v) json_object_object_add(o, name, json_object_new_uint64(v))

static struct json_object *stats_json(struct dd_scanner *s)
{
	struct json_object *o = json_object_new_object();
	struct dd_scan_stats st;

	dd_scanner_stats(s, &st);
	ADD_U64(o, "pages_registered", st.pages_registered);
	ADD_U64(o, "pages_scanned", st.pages_scanned);
	ADD_U64(o, "pages_shared", st.pages_shared);
	ADD_U64(o, "pages_sharing", st.pages_sharing);
	ADD_U64(o, "pages_unshared", st.pages_unshared);
	ADD_U64(o, "pages_volatile", st.pages_volatile);
	ADD_U64(o, "zero_pages", st.zero_pages);
	ADD_U64(o, "full_scans", st.full_scans);
	ADD_U64(o, "clients", st.clients);
	ADD_U64(o, "regions", st.regions);
	ADD_U64(o, "merges", st.merges);
	ADD_U64(o, "merge_failed", st.merge_failed);
	ADD_U64(o, "cow_breaks", st.cow_breaks);
	ADD_U64(o, "pages_unmapped", st.pages_unmapped);
	ADD_U64(o, "pages_adopted", st.pages_adopted);
	ADD_U64(o, "thp_split", st.thp_split);
	ADD_U64(o, "thp_pages_skipped", st.thp_skipped);
	ADD_U64(o, "store_pages", st.store_pages);
	ADD_U64(o, "store_pages_freed", st.store_freed);
	ADD_U64(o, "store_pages_warm", st.store_warm);
	ADD_U64(o, "store_holes", st.store_holes);
	ADD_U64(o, "vmas", st.vmas);
	ADD_U64(o, "vmas_added", st.vmas_added);
	ADD_U64(o, "wp_faults", st.faults);
	ADD_U64(o, "unstable_nodes", st.unstable_nodes);
	ADD_U64(o, "metadata_bytes", st.meta_bytes);
	ADD_U64(o, "daemon_anon_bytes", st.daemon_anon_bytes);
	json_object_object_add(o, "bytes_saved_net", json_object_new_int64(st.bytes_saved_net));
	ADD_U64(o, "scan_cpu_ns", st.scan_cpu_ns);
	ADD_U64(o, "agent_hash_pages", st.agent_hash_pages);
	ADD_U64(o, "agent_cpu_ns", st.agent_cpu_ns);
	ADD_U64(o, "agent_hash_unreadable", st.agent_unreadable);
	ADD_U64(o, "agent_hash_wait_ns", st.agent_hash_wait_ns);
	ADD_U64(o, "agent_timeouts", st.agent_timeouts);
	ADD_U64(o, "merge_batches", st.merge_batches);
	ADD_U64(o, "remap_runs", st.remap_runs);
	ADD_U64(o, "remap_spans", st.remap_spans);
	ADD_U64(o, "zap_runs", st.zap_runs);
	ADD_U64(o, "merge_freeze_ns", st.merge_freeze_ns);
	ADD_U64(o, "merge_verify_ns", st.merge_verify_ns);
	ADD_U64(o, "merge_agent_ns", st.merge_agent_ns);
	ADD_U64(o, "merge_settle_ns", st.merge_settle_ns);
	ADD_U64(o, "last_pass_ms", st.last_pass_ms);
	return o;
}

static struct json_object *knobs_json(const struct dd_scan_knobs *k)
{
	struct json_object *o = json_object_new_object();

	ADD_U64(o, "pages_to_scan", k->pages_to_scan);
	ADD_U64(o, "sleep_millisecs", k->sleep_millisecs);
	ADD_U64(o, "merge_batch_pages", k->merge_batch_pages);
	ADD_U64(o, "max_vmas_per_client", k->max_vmas_per_client);
	json_object_object_add(o, "zero_pages", json_object_new_boolean(k->zero_pages));
	json_object_object_add(o, "thp_split", json_object_new_boolean(k->thp_split));
	return o;
}

static struct json_object *metrics_json(const struct admin_ctx *a)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, "listen",
			       json_object_new_string(a->metrics_address ? a->metrics_address : ""));
	json_object_object_add(o, "textfile", json_object_new_string(a->conf->metrics.textfile));
	return o;
}

static void region_cb(const struct dd_region_info *ri, void *arg)
{
	struct json_object *o = json_object_new_object();
	char comm[64] = "", path[64];
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/comm", (int)ri->pid);
	f = fopen(path, "re");
	if (f) {
		if (fgets(comm, sizeof(comm), f))
			comm[strcspn(comm, "\n")] = 0;
		fclose(f);
	}
	json_object_object_add(o, "pid", json_object_new_int(ri->pid));
	json_object_object_add(o, "command", json_object_new_string(comm));
	ADD_U64(o, "client_id", ri->client_id);
	ADD_U64(o, "start", ri->start);
	ADD_U64(o, "pages", ri->pages);
	ADD_U64(o, "domain", ri->domain);
	ADD_U64(o, "pages_sharing", ri->merged);
	ADD_U64(o, "zero_pages", ri->zero);
	ADD_U64(o, "vmas", ri->vmas);
	json_object_array_add(arg, o);
}

static int do_set(struct admin_ctx *a, int fd, uint32_t seq, bool privileged, char *arg)
{
	char msg[1200], err[1024], *eq = arg ? strchr(arg, '=') : NULL;
	struct dd_scan_knobs k;
	struct dd_conf tmp;
	int r;

	if (!privileged) {
		snprintf(msg, sizeof(msg), "set: only root%s%s may change dedupd",
			 a->conf->daemon.admin_group[0] ? " and members of group " : "",
			 a->conf->daemon.admin_group);
		return dd_msg_send_result(fd, seq, -EPERM, 0, msg);
	}
	if (!eq)
		return dd_msg_send_result(fd, seq, -EINVAL, 0, "set: expected KEY=VALUE");
	*eq = 0;
	/* Validate on a copy, with the configuration file's own rules. */
	dd_conf_init(&tmp);
	r = dd_conf_copy(&tmp, a->conf);
	if (r == 0)
		r = dd_conf_set(&tmp, arg, eq + 1, err, sizeof(err));
	dd_conf_free(&tmp);
	if (r < 0) {
		snprintf(msg, sizeof(msg), "set: %s", err);
		return dd_msg_send_result(fd, seq, r, 0, msg);
	}
	if (!dd_conf_key_reloadable(arg)) {
		snprintf(msg, sizeof(msg), "set: %s can only change with a restart", arg);
		return dd_msg_send_result(fd, seq, -EPERM, 0, msg);
	}
	dd_conf_set(a->conf, arg, eq + 1, err, sizeof(err));
	a->apply(a->apply_arg);
	dd_scanner_get_knobs(a->scanner, &k);
	return reply_json(fd, seq, knobs_json(&k));
}

int dd_admin_handle(struct admin_ctx *a, int fd, bool privileged, const struct dd_msg_admin *m)
{
	char cmd[1024], msg[1200], *arg;
	struct dd_scan_knobs k;
	struct json_object *o;

	if (m->text_len == 0 || m->text_len >= sizeof(cmd))
		return dd_msg_send_result(fd, m->h.seq, -EINVAL, 0, "empty or overlong command");
	memcpy(cmd, m->text, m->text_len);
	cmd[m->text_len] = 0;
	arg = strchr(cmd, ' ');
	if (arg)
		*arg++ = 0;
	if (strcmp(cmd, "set") && !privileged && !a->conf->daemon.readonly_open) {
		snprintf(msg, sizeof(msg), "%.64s: readonly_open is off: only root%s%s may read "
			 "dedupd's state", cmd, a->conf->daemon.admin_group[0] ?
			 " and members of group " : "", a->conf->daemon.admin_group);
		return dd_msg_send_result(fd, m->h.seq, -EPERM, 0, msg);
	}
	if (!strcmp(cmd, "stats"))
		return reply_json(fd, m->h.seq, stats_json(a->scanner));
	if (!strcmp(cmd, "status")) {
		o = json_object_new_object();
		dd_scanner_get_knobs(a->scanner, &k);
		json_object_object_add(o, "version", json_object_new_string(DEDUPD_VERSION));
		json_object_object_add(o, "pid", json_object_new_int(getpid()));
		json_object_object_add(o, "socket", json_object_new_string(a->socket_path));
		ADD_U64(o, "uptime_sec", (uint64_t)(time(NULL) - a->started));
		json_object_object_add(o, "knobs", knobs_json(&k));
		json_object_object_add(o, "metrics", metrics_json(a));
		json_object_object_add(o, "stats", stats_json(a->scanner));
		return reply_json(fd, m->h.seq, o);
	}
	if (!strcmp(cmd, "regions")) {
		o = json_object_new_array();
		dd_scanner_regions(a->scanner, region_cb, o);
		return reply_json(fd, m->h.seq, o);
	}
	if (!strcmp(cmd, "set"))
		return do_set(a, fd, m->h.seq, privileged, arg);
	if (!strcmp(cmd, "clients") && a->reclaim)
		return reply_json(fd, m->h.seq, dd_reclaim_json(a->reclaim));
	if (!strcmp(cmd, "state")) {
		dd_scanner_get_knobs(a->scanner, &k);
		return reply_json(fd, m->h.seq, dd_pstate_json(a->pc, &k));
	}
	snprintf(msg, sizeof(msg), "unknown command '%.1000s' (known: stats, status, regions, "
		 "state, clients, set KEY=VALUE)", cmd);
	return dd_msg_send_result(fd, m->h.seq, -EINVAL, 0, msg);
}
