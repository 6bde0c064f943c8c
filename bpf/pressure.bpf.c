// SPDX-License-Identifier: (MIT OR GPL-2.0)
/*
 * Kernel side of the memory-pressure probes: raw tracepoint programs on the
 * vmscan and oom tracepoints that see reclaim stalls as they happen.
 *
 * Why raw tracepoints: on the target kernel (6.18, no CONFIG_KPROBES, no
 * tracing programs) only tracepoint and raw_tracepoint programs load, and
 * classic tracepoint programs need tracefs to find the event id, which is not
 * mounted by default. Raw tracepoints attach by name through bpf() alone and
 * see the tracepoint's C arguments (BPF_PROG unpacks them).
 *
 * What it keeps:
 *  - reclaim_start: per thread, when it entered direct or memcg reclaim; the
 *    matching end tracepoint turns it into a stall duration.
 *  - counters (.bss, one struct in an array map the loader mmaps): host-wide
 *    counts and summed durations, see struct dd_pressure_counters.
 *  - cgroup_counters: per memory cgroup (kernfs id), hierarchical.
 *  - kswapd_wake_ns: per NUMA node, when its kswapd woke, for kswapd_awake_ns.
 *  - events: a ring buffer that reports threshold crossings the moment they
 *    happen: a reclaim stall longer than stall_report_ns, every throttle,
 *    every OOM victim. Only those in the watched scope are reported, so a
 *    daemon watching one cgroup is not woken by others.
 *
 * Which tracepoint fires when (measured on this kernel): a task that charges
 * past a memory cgroup's limit enters try_to_free_mem_cgroup_pages(), which
 * fires mm_vmscan_memcg_reclaim_begin/end, not direct_reclaim_begin/end; the
 * latter fire only when the page allocator itself is short of free pages
 * (host-wide shortage, below the min watermark).
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "pressure_event.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* Config, set by the loader between open and load. */
const volatile __u64 stall_report_ns = 10000000; /* report stalls of 10 ms and more */
const volatile __u64 watch_cgroup_id = 0;	 /* 0: the whole host */

struct dd_pressure_counters counters = {};

/* When each node's kswapd woke; a map so the verifier checks the index. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DD_PRESSURE_MAX_NODES);
	__type(key, __u32);
	__type(value, __u64);
} kswapd_wake_ns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384); /* threads in reclaim at once */
	__type(key, __u32);
	__type(value, __u64);
} reclaim_start SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct dd_pressure_cgroup_counters);
} cgroup_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024); /* 4096 events of 64 bytes */
} events SEC(".maps");

/* The memory cgroup css of @task, or NULL (memcg disabled). */
static __always_inline struct cgroup_subsys_state *task_memcg_css(struct task_struct *task)
{
	int id = bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);
	struct cgroup_subsys_state *css = NULL;
	struct css_set *cset = BPF_CORE_READ(task, cgroups);
	void *slot;

	if (!cset || id < 0 || id >= 64)
		return NULL;
	slot = (void *)cset + bpf_core_field_offset(struct css_set, subsys) + id * sizeof(css);
	bpf_probe_read_kernel(&css, sizeof(css), slot);
	return css;
}

static __always_inline struct dd_pressure_cgroup_counters *cgroup_entry(__u64 id)
{
	struct dd_pressure_cgroup_counters zero = {}, *c;

	c = bpf_map_lookup_elem(&cgroup_counters, &id);
	if (c)
		return c;
	bpf_map_update_elem(&cgroup_counters, &id, &zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(&cgroup_counters, &id);
}

/*
 * Add one event of @type (and @delta_ns for stalls) to @task's memory cgroup
 * and its ancestors. Returns whether the task is in the watched subtree;
 * *@leaf gets the task's own cgroup id.
 */
static __always_inline __u32 account_cgroups(struct task_struct *task, __u32 type, __u64 delta_ns,
					     __u64 *leaf)
{
	struct cgroup_subsys_state *css = task_memcg_css(task);
	struct dd_pressure_cgroup_counters *c;
	__u32 in_scope = watch_cgroup_id == 0;
	__u64 id;

	*leaf = 0;
	for (int i = 0; i < DD_PRESSURE_CGROUP_DEPTH && css; i++) {
		id = BPF_CORE_READ(css, cgroup, kn, id);
		if (i == 0)
			*leaf = id;
		if (id == watch_cgroup_id)
			in_scope = 1;
		c = cgroup_entry(id);
		if (c) {
			if (type == DD_PEV_DIRECT_STALL) {
				__sync_fetch_and_add(&c->direct_reclaims, 1);
				__sync_fetch_and_add(&c->direct_stall_ns, delta_ns);
			} else if (type == DD_PEV_MEMCG_STALL) {
				__sync_fetch_and_add(&c->memcg_reclaims, 1);
				__sync_fetch_and_add(&c->memcg_stall_ns, delta_ns);
			} else if (type == DD_PEV_THROTTLE) {
				__sync_fetch_and_add(&c->throttles, 1);
			} else {
				__sync_fetch_and_add(&c->ooms, 1);
			}
		}
		css = BPF_CORE_READ(css, parent);
	}
	return in_scope;
}

static __always_inline void emit(__u32 type, struct task_struct *task, __u64 cgroup_id, __u64 value,
				 __u32 aux)
{
	struct dd_pressure_event *e;

	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		__sync_fetch_and_add(&counters.events_lost, 1);
		return;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->cgroup_id = cgroup_id;
	e->value = value;
	e->type = type;
	e->pid = BPF_CORE_READ(task, pid);
	e->aux = aux;
	e->tgid = BPF_CORE_READ(task, tgid);
	BPF_CORE_READ_STR_INTO(&e->comm, task, comm);
	bpf_ringbuf_submit(e, 0);
}

static __always_inline int reclaim_begin(void)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 now = bpf_ktime_get_ns();

	bpf_map_update_elem(&reclaim_start, &tid, &now, BPF_ANY);
	return 0;
}

static __always_inline int reclaim_end(__u32 type, unsigned long nr_reclaimed)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct task_struct *task = (void *)bpf_get_current_task();
	__u64 *start, delta, cg;
	__u32 in_scope;

	start = bpf_map_lookup_elem(&reclaim_start, &tid);
	if (!start)
		return 0; /* began before we attached */
	delta = bpf_ktime_get_ns() - *start;
	bpf_map_delete_elem(&reclaim_start, &tid);

	if (type == DD_PEV_DIRECT_STALL) {
		__sync_fetch_and_add(&counters.direct_reclaims, 1);
		__sync_fetch_and_add(&counters.direct_stall_ns, delta);
	} else {
		__sync_fetch_and_add(&counters.memcg_reclaims, 1);
		__sync_fetch_and_add(&counters.memcg_stall_ns, delta);
	}
	in_scope = account_cgroups(task, type, delta, &cg);
	if (delta < stall_report_ns)
		return 0;
	__sync_fetch_and_add(&counters.long_stalls, 1);
	/* A cgroup reaching its own limit is not host pressure: report it only when watched. */
	if (in_scope && (type == DD_PEV_DIRECT_STALL || watch_cgroup_id))
		emit(type, task, cg, delta, (__u32)nr_reclaimed);
	return 0;
}

SEC("raw_tp/mm_vmscan_direct_reclaim_begin")
int BPF_PROG(direct_reclaim_begin, int order, gfp_t gfp_flags)
{
	return reclaim_begin();
}

SEC("raw_tp/mm_vmscan_direct_reclaim_end")
int BPF_PROG(direct_reclaim_end, unsigned long nr_reclaimed)
{
	return reclaim_end(DD_PEV_DIRECT_STALL, nr_reclaimed);
}

SEC("raw_tp/mm_vmscan_memcg_reclaim_begin")
int BPF_PROG(memcg_reclaim_begin, int order, gfp_t gfp_flags)
{
	return reclaim_begin();
}

SEC("raw_tp/mm_vmscan_memcg_reclaim_end")
int BPF_PROG(memcg_reclaim_end, unsigned long nr_reclaimed)
{
	return reclaim_end(DD_PEV_MEMCG_STALL, nr_reclaimed);
}

SEC("raw_tp/mm_vmscan_kswapd_wake")
int BPF_PROG(kswapd_wake, int nid, int zid, int order)
{
	__u32 key = nid;
	__u64 *woke = bpf_map_lookup_elem(&kswapd_wake_ns, &key);

	__sync_fetch_and_add(&counters.kswapd_wakes, 1);
	if (woke)
		*woke = bpf_ktime_get_ns();
	return 0;
}

SEC("raw_tp/mm_vmscan_kswapd_sleep")
int BPF_PROG(kswapd_sleep, int nid)
{
	__u32 key = nid;
	__u64 *woke = bpf_map_lookup_elem(&kswapd_wake_ns, &key);

	if (woke && *woke) {
		__sync_fetch_and_add(&counters.kswapd_awake_ns, bpf_ktime_get_ns() - *woke);
		*woke = 0;
	}
	return 0;
}

SEC("raw_tp/mm_vmscan_throttled")
int BPF_PROG(vmscan_throttled, int nid, int usec_timeout, int usec_delayed, int reason)
{
	struct task_struct *task = (void *)bpf_get_current_task();
	__u64 cg;

	__sync_fetch_and_add(&counters.throttles, 1);
	if (usec_delayed > 0)
		__sync_fetch_and_add(&counters.throttle_delay_us, usec_delayed);
	if (account_cgroups(task, DD_PEV_THROTTLE, 0, &cg))
		emit(DD_PEV_THROTTLE, task, cg, usec_delayed > 0 ? usec_delayed : 0, reason);
	return 0;
}

SEC("raw_tp/mark_victim")
int BPF_PROG(oom_mark_victim, struct task_struct *task, uid_t uid)
{
	__u64 cg;

	__sync_fetch_and_add(&counters.ooms, 1);
	if (account_cgroups(task, DD_PEV_OOM, 0, &cg))
		emit(DD_PEV_OOM, task, cg, 0, uid);
	return 0;
}
