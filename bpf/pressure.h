/* SPDX-License-Identifier: MIT */
/*
 * Memory pressure: ESX's high / soft / hard / low states computed from free
 * memory (host MemAvailable, or a memory cgroup's limit minus its usage),
 * escalated by PSI (/proc/pressure/memory) and by the vmscan/oom tracepoint
 * probes of pressure.bpf.c.
 *
 * Wiring (the daemon's epoll loop):
 *
 *	p = dd_pressure_new(&opts);                 NULL + errno on a bad config
 *	n = dd_pressure_fds(p, fds, DD_PRESSURE_MAX_FDS);
 *	    add each fd to epoll with the events dd_pressure_fd_events(p, fd)
 *	on readiness of one of them:   dd_pressure_dispatch(p, fd);
 *	every tick (250 ms):           dd_pressure_tick(p, dd_pressure_now_ms());
 *	both return 1 when the state changed: read dd_pressure_get(p)->state.
 *
 * Nothing here logs. Sources that cannot be used are reported in the
 * snapshot's *_error strings (empty when fine) and the module carries on with
 * what is left: without BPF on PSI and free memory ("psi"), without PSI on
 * free memory and BPF ("bpf" or "free"). errors_seq changes whenever one of
 * the strings does, so a caller logs each problem once. libbpf prints its own
 * diagnostics through libbpf_set_print(); route them to the daemon's log.
 *
 * Units: "_pm" is permyriad (1/10000; PSI's "12.34" percent is 1234 pm),
 * times are CLOCK_MONOTONIC milliseconds unless the name says otherwise.
 */
#ifndef DD_PRESSURE_H
#define DD_PRESSURE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Ordered from best to worst: a larger value is more pressure. */
enum dd_pstate {
	DD_PSTATE_HIGH = 0, /* plenty free: scanner trickles */
	DD_PSTATE_SOFT = 1, /* scan at full rate, inflate balloons */
	DD_PSTATE_HARD = 2, /* also page out idle memory */
	DD_PSTATE_LOW = 3,  /* also throttle clients above target */
};
#define DD_PSTATE_COUNT 4

/* Policy knobs of dd_pressure_decide(). Free thresholds in permyriad of total. */
struct dd_pressure_thresholds {
	uint32_t high_pm;     /* free >= this: high (600 = 6 %) */
	uint32_t soft_pm;     /* free >= this: soft (400) */
	uint32_t hard_pm;     /* free >= this: hard (200) */
	uint32_t low_pm;      /* free below this: low (100); [low, hard) keeps hard or low */
	uint32_t margin_pm;   /* moving to a better state needs its threshold + this (50) */
	uint32_t psi_some_pm; /* some avg10 >= this escalates one step (1000 = 10 %); 0: off */
	uint32_t psi_full_pm; /* full avg10 >= this escalates one step (500 = 5 %); 0: off */
	uint32_t stall_rate_per_sec; /* reclaim stalls/s >= this escalates one step (10); 0: off */
};

#define DD_PRESSURE_THRESHOLDS_DEFAULT                                                             \
	{                                                                                          \
		.high_pm = 600, .soft_pm = 400, .hard_pm = 200, .low_pm = 100, .margin_pm = 50,    \
		.psi_some_pm = 1000, .psi_full_pm = 500, .stall_rate_per_sec = 10,                 \
	}

/*
 * What dd_pressure_decide() looks at: one sample of every source. A source
 * whose *_valid is false is ignored.
 */
struct dd_pressure_input {
	bool free_valid;
	uint32_t free_pm; /* free / total, permyriad */
	bool psi_valid;
	uint32_t psi_some_avg10_pm;
	uint32_t psi_full_avg10_pm;
	bool psi_triggered; /* the PSI trigger fired within the hold time */
	bool bpf_valid;
	uint32_t stalls_per_sec; /* direct/memcg reclaim entries in the watched scope */
	bool oom_recent;	 /* the OOM killer acted in scope within the hold time */
};

/*
 * Options of dd_pressure_new(). Zero / NULL fields take the default; BPF is
 * loaded only if use_bpf is set. Without CAP_SYS_RESOURCE the kernel accepts
 * only PSI windows that are multiples of 2 s: the trigger's window is then
 * rounded up and its stall scaled alike ("some 300000 2000000"), and
 * trigger_error says so.
 */
struct dd_pressure_opts {
	bool use_bpf;		  /* load pressure.bpf.c; false: PSI and free memory only */
	const char *psi_path;	  /* NULL: <cgroup>/memory.pressure (v2) or /proc/pressure/memory */
	const char *meminfo_path; /* NULL: /proc/meminfo */
	const char *cgroup_path;  /* NULL: the host; else a memory cgroup directory, v1 or v2 */
	const char *psi_trigger;  /* NULL: "some 150000 1000000"; "": no trigger, poll only */
	const struct dd_pressure_thresholds *thresholds; /* NULL: DD_PRESSURE_THRESHOLDS_DEFAULT */
	uint32_t stall_report_us; /* BPF reports stalls this long at once; 0: 10000 */
	uint32_t signal_hold_ms;  /* a PSI trigger or an OOM escalates this long; 0: 2000 */
};

#define DD_PRESSURE_MAX_FDS 2
#define DD_PRESSURE_TRANSITIONS 16 /* recent transitions kept */
#define DD_PRESSURE_EVENTS 16	   /* recent BPF events kept */
#define DD_PRESSURE_ERROR_MAX 192
#define DD_PRESSURE_REASON_MAX 96

struct dd_pressure_transition {
	uint64_t at_ms;
	enum dd_pstate from, to;
	char reason[DD_PRESSURE_REASON_MAX]; /* e.g. "free 3.12% < 4.00%" */
};

/* A copy of one ring-buffer event (see pressure_event.h for the kinds). */
struct dd_pressure_recent_event {
	uint64_t at_ms;
	uint32_t type; /* enum dd_pressure_event_type: 1 direct stall, 2 memcg stall, 3 throttle, 4
			  oom */
	uint32_t pid;
	uint64_t value; /* stall: ns; throttle: us delayed */
	uint64_t cgroup_id;
	char comm[16];
};

/* Everything dedupctl state shows. Valid until the next tick/dispatch/free. */
struct dd_pressure_snapshot {
	enum dd_pstate state;
	uint64_t since_ms;   /* when the state was entered (or the module started) */
	uint64_t sampled_ms; /* last sample */
	const char *source;  /* "bpf+psi", "psi", "bpf" (PSI unusable) or "free" (neither) */
	struct dd_pressure_thresholds th;

	/* free memory of the host or the cgroup */
	bool free_valid;
	uint64_t free_bytes;
	uint64_t total_bytes;
	uint32_t free_pm;

	/* PSI, some and full */
	bool psi_valid;
	uint32_t psi_some_avg10_pm, psi_some_avg60_pm;
	uint32_t psi_full_avg10_pm, psi_full_avg60_pm;
	uint64_t psi_some_total_us, psi_full_total_us;
	char psi_trigger[48];  /* the trigger registered, "" if none */
	uint64_t psi_triggers; /* times the PSI trigger woke us */

	/* BPF, host-wide */
	bool bpf_active;
	uint64_t direct_reclaims; /* global direct reclaim (allocator short of pages) */
	uint64_t direct_stall_us;
	uint64_t memcg_reclaims; /* reclaim of a cgroup at its limit */
	uint64_t memcg_stall_us;
	uint64_t long_stalls; /* stalls over stall_report_us */
	uint64_t kswapd_wakes;
	uint64_t kswapd_awake_us;
	uint64_t throttles;
	uint64_t throttle_delay_us;
	uint64_t ooms;
	uint64_t events;      /* ring-buffer events received */
	uint64_t events_lost; /* dropped because the ring buffer was full */
	/* BPF, the watched scope: the host (direct reclaim only) or the cgroup's subtree */
	uint64_t scope_stalls; /* direct + memcg reclaims */
	uint64_t scope_stall_us;
	uint64_t scope_throttles;
	uint64_t scope_ooms;
	uint32_t stalls_per_sec; /* over the last one to two seconds */

	/* What is wrong with each source; "" when nothing is. */
	char bpf_error[DD_PRESSURE_ERROR_MAX];	   /* set once: why BPF is not used */
	char trigger_error[DD_PRESSURE_ERROR_MAX]; /* set once: why there is no PSI trigger */
	char psi_error[DD_PRESSURE_ERROR_MAX];	   /* last PSI read */
	char free_error[DD_PRESSURE_ERROR_MAX];	   /* last meminfo / cgroup read */
	uint32_t errors_seq;			   /* bumped when any of the four changes */

	/* recent history, oldest first */
	unsigned int nr_transitions;
	struct dd_pressure_transition transitions[DD_PRESSURE_TRANSITIONS];
	unsigned int nr_events;
	struct dd_pressure_recent_event recent_events[DD_PRESSURE_EVENTS];
};

struct dd_pressure;

/*
 * Start watching (@o NULL: all defaults, no BPF). Returns NULL with errno EINVAL (thresholds out of
 * order: need 10000 >= high > soft > hard >= low), ENOENT / ENOTDIR (cgroup_path is not a memory
 * cgroup directory: neither memory.max nor memory.limit_in_bytes in it) or ENOMEM. A BPF program
 * that fails to load, or an unreadable PSI file, is not an error: see the snapshot's strings. Takes
 * a first sample, so dd_pressure_get() is meaningful at once.
 */
struct dd_pressure *dd_pressure_new(const struct dd_pressure_opts *o);

/* Detach the probes, close every fd, free. NULL is fine. */
void dd_pressure_free(struct dd_pressure *p);

/*
 * Store into @fds (room for @max) the fds the caller's epoll loop must watch,
 * all O_CLOEXEC: the BPF ring buffer's epoll fd and the PSI trigger. Returns
 * how many (0 to DD_PRESSURE_MAX_FDS), or -ENOSPC if @max is too small. No fd
 * is added after new(); the PSI trigger's fd is closed (which takes it out of
 * the caller's epoll set) if the kernel drops the trigger.
 */
int dd_pressure_fds(struct dd_pressure *p, int *fds, int max);

/*
 * The epoll events to register @fd with: EPOLLIN for the ring buffer,
 * EPOLLPRI for the PSI trigger (a PSI file is always readable, so EPOLLIN
 * on it would spin), 0 if @fd is not ours.
 */
uint32_t dd_pressure_fd_events(const struct dd_pressure *p, int fd);

/*
 * @fd (one of dd_pressure_fds()) is ready: consume ring-buffer events or
 * note the PSI trigger, then re-sample and decide. Returns 1 if the state
 * changed, 0 if not, -EBADF if @fd is not ours, or the -errno of
 * ring_buffer__consume().
 */
int dd_pressure_dispatch(struct dd_pressure *p, int fd);

/*
 * Periodic re-sample of free memory, PSI and BPF counters (consuming any
 * ring-buffer events not dispatched yet) and a new decision. @now_ms is CLOCK_MONOTONIC
 * (dd_pressure_now_ms()). Returns 1 if the state changed, 0 if not; never fails (read errors go to
 * the strings).
 */
int dd_pressure_tick(struct dd_pressure *p, uint64_t now_ms);

/* The latest figures; owned by @p. */
const struct dd_pressure_snapshot *dd_pressure_get(const struct dd_pressure *p);

/* "bpf+psi", "psi", "bpf" or "free": the same as dd_pressure_get(p)->source. */
const char *dd_pressure_source(const struct dd_pressure *p);

/* Replace the thresholds (SIGHUP, dedupctl set). 0, or -EINVAL as for new(). */
int dd_pressure_set_thresholds(struct dd_pressure *p, const struct dd_pressure_thresholds *th);

/* 0 if @th is usable, -EINVAL if not (see dd_pressure_new()). */
int dd_pressure_thresholds_check(const struct dd_pressure_thresholds *th);

/*
 * The pure decision: the state after @prev given @in. Free memory alone
 * gives the base state with hysteresis: a worse state is entered as soon as
 * free drops below its threshold (high_pm, soft_pm, low_pm), a better one only
 * when free reaches its threshold (high_pm, soft_pm, hard_pm) plus margin_pm,
 * so between low_pm and hard_pm the state stays hard or low, whichever it was.
 * Any pressure signal (PSI some or full avg10 over its threshold, a recent
 * PSI trigger, reclaim stalls/s over the rate, a recent OOM) then makes it one
 * step worse than free memory alone says, never more. Without a valid free
 * sample the state is high, or soft with a signal.
 */
enum dd_pstate dd_pressure_decide(const struct dd_pressure_input *in, enum dd_pstate prev,
				  const struct dd_pressure_thresholds *th);

/* As dd_pressure_decide(), and says why in @why (a transition's reason). */
enum dd_pstate dd_pressure_decide_why(const struct dd_pressure_input *in, enum dd_pstate prev,
				      const struct dd_pressure_thresholds *th, char *why,
				      size_t why_len);

/* "high", "soft", "hard", "low", or "?" for anything else. */
const char *dd_pstate_name(enum dd_pstate s);

/* CLOCK_MONOTONIC in milliseconds, the clock of every *_ms here. */
uint64_t dd_pressure_now_ms(void);

#endif /* DD_PRESSURE_H */
