/* SPDX-License-Identifier: MIT */
/* The one-sentence error of the reclaim modules' library calls: err may be
 * NULL when errlen is 0. */
#ifndef DD_ERRMSG_H
#define DD_ERRMSG_H

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

__attribute__((format(printf, 3, 4))) static inline void dd_set_err(char *err, size_t errlen,
								    const char *fmt, ...)
{
	va_list ap;

	if (!err || !errlen)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

#endif
