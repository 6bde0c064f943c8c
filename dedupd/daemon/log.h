/* SPDX-License-Identifier: MIT */
/* Daemon logging: stderr (journald picks it up under systemd) with a level. */
#ifndef DD_LOG_H
#define DD_LOG_H

#include <errno.h>

enum dd_log_level { DD_LOG_ERR = 3, DD_LOG_WARNING = 4, DD_LOG_INFO = 6, DD_LOG_DEBUG = 7 };

void dd_log_set_level(int level);
int dd_log_level_parse(const char *s); /* -EINVAL if unknown */
void dd_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Log with ": <strerror(-r)>" appended and return r (r is -errno). */
int dd_log_errno(int level, int r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#define log_error(...) dd_log(DD_LOG_ERR, __VA_ARGS__)
#define log_warning(...) dd_log(DD_LOG_WARNING, __VA_ARGS__)
#define log_info(...) dd_log(DD_LOG_INFO, __VA_ARGS__)
#define log_debug(...) dd_log(DD_LOG_DEBUG, __VA_ARGS__)

#endif
