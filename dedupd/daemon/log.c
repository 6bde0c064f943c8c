// SPDX-License-Identifier: MIT
/*
 * Logging for the daemon (library code never logs). Lines carry the syslog
 * priority prefix "<N>" when stderr is the journal, so journald keeps levels.
 */
#include "dedupd/daemon/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int max_level = DD_LOG_INFO; /* read by every thread: atomic loads and stores */

void dd_log_set_level(int level)
{
	__atomic_store_n(&max_level, level, __ATOMIC_RELAXED);
}

int dd_log_level_parse(const char *s)
{
	static const struct {
		const char *name;
		int level;
	} t[] = { { "err", DD_LOG_ERR }, { "error", DD_LOG_ERR }, { "warning", DD_LOG_WARNING },
		  { "info", DD_LOG_INFO }, { "debug", DD_LOG_DEBUG } };

	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		if (!strcasecmp(s, t[i].name))
			return t[i].level;
	return -EINVAL;
}

static void vlog(int level, int r, const char *fmt, va_list ap)
{
	static const char *names[8] = { "emerg", "alert", "crit", "error",
					"warning", "notice", "info", "debug" };
	char msg[1024];

	if (level > __atomic_load_n(&max_level, __ATOMIC_RELAXED))
		return;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	if (getenv("JOURNAL_STREAM"))
		fprintf(stderr, "<%d>%s%s%s\n", level, msg, r ? ": " : "", r ? strerror(-r) : "");
	else
		fprintf(stderr, "dedupd: %s: %s%s%s\n", names[level & 7], msg, r ? ": " : "",
			r ? strerror(-r) : "");
}

void dd_log(int level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vlog(level, 0, fmt, ap);
	va_end(ap);
}

int dd_log_errno(int level, int r, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vlog(level, r, fmt, ap);
	va_end(ap);
	return r;
}
