/* SPDX-License-Identifier: MIT */
/*
 * Shared between bpf/pressure.bpf.c (kernel side) and bpf/pressure.c (the
 * loader): the ring-buffer event, the global counters the BPF program keeps
 * in its .bss array map, and the per-cgroup counters. Plain fixed-width types
 * only, so the layout is the same on both sides of the ring buffer.
 */
#ifndef DD_PRESSURE_EVENT_H
#define DD_PRESSURE_EVENT_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#define DD_PRESSURE_COMM_LEN 16
#define DD_PRESSURE_MAX_NODES 64 /* kswapd wake times kept per NUMA node */

/* What a ring-buffer event reports. */
enum dd_pressure_event_type {
	DD_PEV_DIRECT_STALL = 1, /* global direct reclaim longer than the report threshold */
	DD_PEV_MEMCG_STALL = 2,	 /* memcg limit reclaim longer than the report threshold */
	DD_PEV_THROTTLE = 3,	 /* mm_vmscan_throttled: a reclaimer was put to sleep */
	DD_PEV_OOM = 4,		 /* oom/mark_victim: the OOM killer chose a victim */
};

/* One threshold crossing, as the BPF program reports it through the ring buffer. */
struct dd_pressure_event {
	__u64 ts_ns;	 /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) when it happened */
	__u64 cgroup_id; /* kernfs id (= inode number) of the task's memory cgroup */
	__u64 value;	 /* stall: duration in ns; throttle: usec_delayed; oom: 0 */
	__u32 type;	 /* enum dd_pressure_event_type */
	__u32 pid;	 /* stalled or throttled thread; oom: the victim */
	__u32 tgid;	 /* its process */
	__u32 aux;	 /* stall: pages reclaimed; throttle: reason; oom: victim uid */
	char comm[DD_PRESSURE_COMM_LEN];
};

/*
 * Global counters, host-wide, kept by the BPF program in .bss (an array map
 * the loader reads through the skeleton's mmap: no syscall per sample).
 */
struct dd_pressure_counters {
	__u64 direct_reclaims; /* mm_vmscan_direct_reclaim_end: global shortage */
	__u64 direct_stall_ns; /* time spent in those */
	__u64 memcg_reclaims;  /* mm_vmscan_memcg_reclaim_end: a cgroup hit its limit */
	__u64 memcg_stall_ns;
	__u64 long_stalls;     /* stalls of either kind over stall_report_ns */
	__u64 kswapd_wakes;    /* mm_vmscan_kswapd_wake */
	__u64 kswapd_awake_ns; /* wake -> sleep, summed over nodes */
	__u64 throttles;       /* mm_vmscan_throttled */
	__u64 throttle_delay_us;
	__u64 ooms;	   /* oom/mark_victim */
	__u64 events_lost; /* ring buffer full: event dropped (the counters still count) */
};

/*
 * Per memory cgroup counters, keyed by the cgroup's kernfs id (the inode number
 * of its directory). Hierarchical: an event is added to the task's cgroup and
 * to each of its ancestors (up to DD_PRESSURE_CGROUP_DEPTH levels), so a
 * cgroup's entry covers its whole subtree, like memory.stat's total_ lines.
 */
#define DD_PRESSURE_CGROUP_DEPTH 8
struct dd_pressure_cgroup_counters {
	__u64 direct_reclaims;
	__u64 direct_stall_ns;
	__u64 memcg_reclaims;
	__u64 memcg_stall_ns;
	__u64 throttles;
	__u64 ooms;
};

#endif /* DD_PRESSURE_EVENT_H */
