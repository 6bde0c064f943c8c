/* SPDX-License-Identifier: MIT */
/*
 * dedupd's configuration: every knob the daemon has, its default, its range,
 * and the parser for /etc/dedupd/dedupd.conf (an ini file read with inih).
 *
 * struct dd_conf is plain data that mirrors the file: c->scan.pages_to_scan is
 * "pages_to_scan" in "[scan]". Every tunable carries its unit in its name. The
 * defaults (dd_conf_init()) work on a host with no configuration at all, and
 * the shipped conf/dedupd.conf lists them, commented out.
 *
 * The same validation serves the file, `dedupctl set KEY=VALUE` and command
 * line overrides (dd_conf_set()), so an operator gets the same message
 * whichever way a bad value arrives. Library code: nothing here logs or
 * exits; failures come back as -errno with a sentence in err.
 *
 * Not thread-safe: the daemon owns one struct dd_conf in its main thread and
 * hands copies of the values to the modules that need them.
 */
#ifndef DD_CONF_H
#define DD_CONF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#define DD_CONF_DEFAULT_PATH "/etc/dedupd/dedupd.conf"
#define DD_CONF_DEFAULT_SOCKET "/run/dedupd/dedupd.sock"

/* Buffer sizes of the string knobs, NUL included. */
#define DD_CONF_SOCKET_MAX 108 /* sizeof(((struct sockaddr_un *)0)->sun_path) */
#define DD_CONF_PATH_MAX 4096
#define DD_CONF_NAME_MAX 64   /* group and client names */
#define DD_CONF_COMM_MAX 16   /* TASK_COMM_LEN */
#define DD_CONF_SHORT_MAX 128 /* psi_trigger, listen */

/* Client sizes not set in [client.NAME]: take [reclaim] default_*_bytes. */
#define DD_CONF_UNSET UINT64_MAX

/* log_level: syslog priorities, the values of dedupd's enum dd_log_level. */
enum dd_conf_log_level {
	DD_CONF_LOG_ERR = 3,
	DD_CONF_LOG_WARNING = 4,
	DD_CONF_LOG_INFO = 6,
	DD_CONF_LOG_DEBUG = 7,
};

/* share_domain: the values of enum dd_domain_policy (dedupd/common/proto.h),
 * so the daemon can pass them on unchanged. */
enum dd_conf_share_domain {
	DD_CONF_DOMAIN_ALL = 1,
	DD_CONF_DOMAIN_UID = 2,
	DD_CONF_DOMAIN_CLIENT = 3,
	DD_CONF_DOMAIN_SALT = 4,
};

enum dd_conf_thp {
	DD_CONF_THP_KEEP = 0,  /* leave huge pages alone: not scanned, not split */
	DD_CONF_THP_SPLIT = 1, /* scan them; merging a 4 KiB page splits the THP */
};

enum dd_conf_balloon {
	DD_CONF_BALLOON_NONE = 0,	      /* never balloon this client */
	DD_CONF_BALLOON_CALLBACK = 1,	      /* libdedup's dedup_set_balloon_handler() */
	DD_CONF_BALLOON_QMP = 2,	      /* QEMU virtio-balloon over QMP */
	DD_CONF_BALLOON_FIRECRACKER = 3,      /* PATCH /balloon */
	DD_CONF_BALLOON_CLOUD_HYPERVISOR = 4, /* PUT /api/v1/vm.resize */
};

/* [daemon] */
struct dd_conf_daemon {
	char socket[DD_CONF_SOCKET_MAX];     /* control socket, absolute path */
	uint32_t socket_mode;		     /* permission bits of the socket, <= 0777 */
	char socket_group[DD_CONF_NAME_MAX]; /* group of the socket; "": root's */
	char admin_group[DD_CONF_NAME_MAX];  /* may run `dedupctl set`; "": root only */
	bool readonly_open;		     /* anyone on the socket may read status */
	int log_level;			     /* enum dd_conf_log_level */
	bool watchdog;			     /* feed systemd's watchdog (WATCHDOG_USEC) */
	uint32_t agent_timeout_millisecs;    /* wait for a client's agent, per batch */
};

/* [scan] */
struct dd_conf_scan {
	uint32_t pages_to_scan;	      /* pages per wake-up */
	uint32_t sleep_millisecs;     /* pause between wake-ups */
	uint32_t scan_threads;	      /* 0: one per two online CPUs */
	uint32_t merge_batch_pages;   /* merges per agent round trip */
	uint32_t max_vmas_per_client; /* 0: half of vm.max_map_count minus those in use */
	bool zero_pages;	      /* zap all-zero pages instead of merging them */
	int share_domain;	      /* enum dd_conf_share_domain */
	int thp;		      /* enum dd_conf_thp */
	bool agent_hash;	      /* clients' agents checksum their pages in place */
};

/* [pressure] */
struct dd_conf_pressure {
	bool bpf;			     /* vmscan tracepoint probes */
	char psi_trigger[DD_CONF_SHORT_MAX]; /* "some|full STALL_US WINDOW_US"; "": none */
	char cgroup[DD_CONF_PATH_MAX];	     /* memory cgroup to watch; "": whole host */
	double high_free_percent;	     /* >= this: high */
	double soft_free_percent;	     /* >= this: soft */
	double hard_free_percent;	     /* >= this: hard */
	double low_free_percent;	     /* below this: low */
	uint32_t tick_millisecs;	     /* how often free memory is read */
};

/* [reclaim] */
struct dd_conf_reclaim {
	double tax_rate;	    /* idle-memory tax tau, 0..0.99 */
	uint32_t sample_period_sec; /* active-memory sampling period */
	uint32_t sample_pages;	    /* pages sampled per client per period */
	uint32_t default_shares;    /* shares of a client without its own */
	uint64_t default_min_bytes; /* guaranteed memory of a client without its own */
	uint64_t default_max_bytes; /* 0: no maximum */
	bool balloon;		    /* soft state and worse: inflate balloons */
	bool pageout;		    /* hard and worse: MADV_PAGEOUT idle pages */
	bool throttle;		    /* low: hold clients to target with cgroup limits */
	uint64_t client_overhead_bytes;	   /* admission: charged per client besides its min */
	uint32_t balloon_timeout_millisecs; /* a balloon backend's answer, per call */
};

/* [metrics] */
struct dd_conf_metrics {
	char listen[DD_CONF_SHORT_MAX];	 /* "ADDR:PORT" for /metrics; "": off */
	char textfile[DD_CONF_PATH_MAX]; /* node_exporter *.prom file; "": off */
	uint32_t textfile_interval_sec;	 /* how often the textfile is rewritten */
};

/* [client.NAME]: binds the processes it matches to reclaim parameters. A
 * process takes the first client, in file order, whose every match_* key
 * matches it (dd_conf_match_client()). */
struct dd_conf_client {
	char name[DD_CONF_NAME_MAX];
	char match_comm[DD_CONF_COMM_MAX];	 /* /proc/PID/comm; "": any */
	int64_t match_uid;			 /* real uid; -1: any */
	uint32_t shares;			 /* 0: [reclaim] default_shares */
	uint64_t min_bytes;			 /* DD_CONF_UNSET: [reclaim] default_min_bytes */
	uint64_t max_bytes;			 /* DD_CONF_UNSET: [reclaim] default_max_bytes */
	int balloon;				 /* enum dd_conf_balloon */
	char balloon_socket[DD_CONF_SOCKET_MAX]; /* API socket of qmp/firecracker/ch */
	int line; /* line of its section header; 0: not from a file */
};

struct dd_conf {
	struct dd_conf_daemon daemon;
	struct dd_conf_scan scan;
	struct dd_conf_pressure pressure;
	struct dd_conf_reclaim reclaim;
	struct dd_conf_metrics metrics;
	struct dd_conf_client *clients; /* malloc'd, in file order */
	size_t nclients;
};

/* Fill c with the defaults. c needs no dd_conf_free() before, but one after. */
void dd_conf_init(struct dd_conf *c);

/* Free what c owns (the client list) and leave it with no clients; the other
 * fields keep their values. NULL-safe. */
void dd_conf_free(struct dd_conf *c);

/*
 * Read an ini file over c: keys the file sets replace the values in c, keys it
 * does not set keep them (so dd_conf_init() then dd_conf_load() gives the
 * file over the defaults; command-line overrides go after, with
 * dd_conf_set()). [client.NAME] sections add clients or update those of the
 * same name.
 *
 * path NULL means DD_CONF_DEFAULT_PATH, and then a missing file is not an
 * error (a host with no configuration runs on the defaults): 0 and c
 * untouched. A file named explicitly must exist.
 *
 * All or nothing: on any error c is left exactly as it was.
 * Returns 0; -ENOENT, -EACCES, -EISDIR, ... if the file cannot be read;
 * -EINVAL for a problem in the file; -ENOMEM. On error err (if errlen > 0)
 * holds one line that names the file, the line and the problem:
 *   /etc/dedupd/dedupd.conf:12: unknown key 'pages_to_scn' in [scan]
 *   /etc/dedupd/dedupd.conf:7: bad value '12q' for pages_to_scan: expected an integer
 *   /etc/dedupd/dedupd.conf:8: sleep_millisecs 90000 out of range 0..60000
 *   /etc/dedupd/dedupd.conf: cannot open: No such file or directory
 */
int dd_conf_load(struct dd_conf *c, const char *path, char *err, size_t errlen);

/*
 * Set one knob from text, with the validation of dd_conf_load() (and the
 * checks across keys: thresholds decreasing, min <= max, a balloon backend
 * that needs a socket has one). key is "section.key" ("scan.pages_to_scan"),
 * a bare key when only one section has it ("pages_to_scan"), or
 * "client.NAME.key" for an existing [client.NAME].
 *
 * It does not ask whether the daemon can apply the change at run time: the
 * caller checks dd_conf_key_reloadable() first when that matters.
 * Returns 0; -ENOENT for an unknown key or client; -EINVAL for a bad value
 * (c unchanged) with a sentence in err, without file or line.
 */
int dd_conf_set(struct dd_conf *c, const char *key, const char *value, char *err, size_t errlen);

/*
 * Write the value of key (forms as dd_conf_set()) as dd_conf_dump() would.
 * Returns the length, or -ENOENT for an unknown key, -ENOSPC if it did not fit.
 */
int dd_conf_get(const struct dd_conf *c, const char *key, char *buf, size_t len);

/*
 * Whether the daemon applies a new value of key while it runs (SIGHUP or
 * `dedupctl set`). Yes for the scan rate, merge batch, thresholds, tick, tax
 * and reclaim figures, log level, admin access, metrics textfile and every
 * [client.NAME] key; no for what is bound at start-up (socket, its mode and
 * group, scan_threads, share_domain, bpf, psi_trigger, cgroup, metrics
 * listen, watchdog). false for an unknown key.
 */
bool dd_conf_key_reloadable(const char *key);

/*
 * Apply a freshly loaded configuration to the running one, for SIGHUP: every
 * reloadable key that differs is copied from next into cur, the client list
 * is replaced by a copy of next's; keys that differ but cannot change at run
 * time keep cur's value. cb (may be NULL) is called once per differing key
 * with "section.key" (or "client.NAME"), both values as text, and whether it
 * was applied. next is not modified; the caller still frees it.
 * Returns the number of differing keys not applied, or -ENOMEM (cur then
 * unchanged).
 */
typedef void (*dd_conf_change_fn)(const char *key, const char *old_value, const char *new_value,
				  bool applied, void *arg);
int dd_conf_apply_reload(struct dd_conf *cur, const struct dd_conf *next, dd_conf_change_fn cb,
			 void *arg);

/* Deep copy: dst is overwritten (not freed first). 0 or -ENOMEM. */
int dd_conf_copy(struct dd_conf *dst, const struct dd_conf *src);

/* Whether a and b hold the same values (clients compared in order). */
bool dd_conf_equal(const struct dd_conf *a, const struct dd_conf *b);

/* Print the effective configuration as an ini file dd_conf_load() reads back
 * into an equal struct. 0, or -EIO if writing failed. */
int dd_conf_dump(const struct dd_conf *c, FILE *f);

/* The i-th key as "section.key", then the client keys as "client.*.key";
 * NULL past the end. For completion, documentation checks and listings. */
const char *dd_conf_key_at(size_t i);

/* The first client whose match_* keys all match (comm, uid), or NULL. */
const struct dd_conf_client *dd_conf_match_client(const struct dd_conf *c, const char *comm,
						  uid_t uid);

/* A client's effective shares, min and max: its own, or [reclaim]'s default.
 * max 0 means no maximum. */
uint32_t dd_conf_client_shares(const struct dd_conf *c, const struct dd_conf_client *cl);
uint64_t dd_conf_client_min_bytes(const struct dd_conf *c, const struct dd_conf_client *cl);
uint64_t dd_conf_client_max_bytes(const struct dd_conf *c, const struct dd_conf_client *cl);

/* Names of enum values, as the file writes them ("uid", "qmp", "debug"). */
const char *dd_conf_share_domain_name(int v);
const char *dd_conf_balloon_name(int v);
const char *dd_conf_log_level_name(int v);

#endif
