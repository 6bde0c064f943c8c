// SPDX-License-Identifier: MIT
/*
 * /proc/PID/maps parsing for the scanner. Registration accepts only memory a
 * merge may replace: private anonymous read-write pages (or pages that already
 * are dedupd store mappings). Shared mappings, files, and locked memory are
 * refused (DESIGN.md §4: MAP_SHARED and mlocked ranges are never merged).
 */
#include "scanner/procmaps.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

__attribute__((format(printf, 4, 5))) static int bad(char *err, size_t errlen, int e,
						      const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return e;
}

/*
 * fgets() for whole lines: the part of a line that does not fit in buf is
 * skipped, so it is never read as a line of its own. A maps or smaps line ends
 * with a file name the process chose, up to PATH_MAX long: its tail must not
 * pass for a mapping ("...7f00-7f01 rw-p 0 00:00 0").
 */
static char *read_line(char *buf, int size, FILE *f)
{
	size_t n;
	int c;

	if (!fgets(buf, size, f))
		return NULL;
	n = strlen(buf);
	if (n == (size_t)size - 1 && buf[n - 1] != '\n')
		while ((c = getc(f)) != EOF && c != '\n')
			;
	return buf;
}

/* VmLck of the process whose maps file is maps_path, in kB (0 if unknown). */
static long locked_kib(const char *maps_path)
{
	char path[64], line[128];
	long kib = 0;
	FILE *f;

	snprintf(path, sizeof(path), "%.*sstatus", (int)(strlen(maps_path) - 4), maps_path);
	f = fopen(path, "re");
	if (!f)
		return 0;
	while (read_line(line, sizeof(line), f))
		if (sscanf(line, "VmLck: %ld kB", &kib) == 1)
			break;
	fclose(f);
	return kib;
}

/* Is any VMA overlapping [addr, end) mlocked? Reads smaps, so only called when
 * the process has locked memory at all. */
static bool range_locked(const char *maps_path, uint64_t addr, uint64_t end)
{
	char path[64], line[512];
	unsigned long long lo = 0, hi = 0;
	bool in = false, locked = false;
	FILE *f;

	snprintf(path, sizeof(path), "%.*ssmaps", (int)(strlen(maps_path) - 4), maps_path);
	f = fopen(path, "re");
	if (!f)
		return false;
	while (!locked && read_line(line, sizeof(line), f)) {
		if (sscanf(line, "%llx-%llx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' '))
			in = lo < end && addr < hi;
		else if (in && !strncmp(line, "VmFlags:", 8))
			locked = strstr(line, " lo") != NULL;
	}
	fclose(f);
	return locked;
}

int dd_maps_check_range(const char *maps_path, uint64_t addr, uint64_t len, char *err,
			size_t errlen)
{
	uint64_t end = addr + len, at = addr;
	char line[4096];
	FILE *f;
	int r = 0;

	if (!len || end < addr)
		return bad(err, errlen, -EINVAL, "range %#llx+%#llx is empty or wraps around",
			   (unsigned long long)addr, (unsigned long long)len);
	f = fopen(maps_path, "re");
	if (!f) {
		snprintf(err, errlen, "cannot read %s: %s", maps_path, strerror(errno));
		return -errno;
	}
	while (at < end && read_line(line, sizeof(line), f)) {
		unsigned long long lo, hi, ino;
		char perms[8] = "", path[4096] = "";
		int n;

		n = sscanf(line, "%llx-%llx %7s %*x %*x:%*x %llu %4095[^\n]", &lo, &hi, perms, &ino,
			   path);
		if (n < 4 || hi <= at)
			continue;
		if (lo > at) {
			r = bad(err, errlen, -EFAULT,
				"range %#llx-%#llx is not mapped by this process",
				(unsigned long long)at, lo);
			break;
		}
		if (perms[0] != 'r' || perms[1] != 'w' || perms[3] != 'p') {
			r = bad(err, errlen, -EINVAL,
				"memory at %#llx-%#llx is %s: only private read-write memory can be "
				"shared", lo, hi, perms[3] == 's' ? "a shared mapping" : "not read-write");
			break;
		}
		if (ino != 0 && !strstr(path, "dedupd-store")) {
			r = bad(err, errlen, -EINVAL,
				"memory at %#llx-%#llx maps a file (%s): only anonymous memory can be "
				"shared", lo, hi, path);
			break;
		}
		at = hi;
	}
	if (!r && at < end)
		r = bad(err, errlen, -EFAULT, "range %#llx-%#llx is not mapped by this process",
			(unsigned long long)at, (unsigned long long)end);
	fclose(f);
	/* mlocked memory is never merged (DESIGN.md §4): a remap would drop the lock. */
	if (!r && locked_kib(maps_path) > 0 && range_locked(maps_path, addr, end))
		r = bad(err, errlen, -EINVAL,
			"memory in %#llx-%#llx is locked (mlock): locked memory is not shared",
			(unsigned long long)addr, (unsigned long long)end);
	return r;
}

/* A hexadecimal field ending in one of stop's characters; *pp past the stop. */
static bool hex_field(const char **pp, char stop, uint64_t *out)
{
	const char *p = *pp;
	uint64_t x = 0;
	int n = 0;

	for (;; p++, n++) {
		char ch = *p;

		if (ch >= '0' && ch <= '9')
			x = x << 4 | (uint64_t)(ch - '0');
		else if ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'f')
			x = x << 4 | (uint64_t)((ch | 0x20) - 'a' + 10);
		else
			break;
		if (n == 16)
			return false;
	}
	if (!n || *p != stop)
		return false;
	*out = x;
	*pp = p + 1;
	return true;
}

/* "lo-hi perms off dev ino [path]": the fields dd_vma keeps. */
static bool parse_vma(const char *line, struct dd_vma *v)
{
	const char *p = line;
	uint64_t ino = 0;

	if (!hex_field(&p, '-', &v->start) || !hex_field(&p, ' ', &v->end) || v->end <= v->start)
		return false;
	p = strchr(p, ' '); /* perms */
	if (!p || !(p++, hex_field(&p, ' ', &v->off)))
		return false;
	p = strchr(p, ' '); /* dev */
	if (!p)
		return false;
	for (p++; *p >= '0' && *p <= '9'; p++)
		ino = ino * 10 + (uint64_t)(*p - '0');
	v->ino = (unsigned long)ino;
	return true;
}

long dd_maps_read(const char *maps_path, struct dd_vma **v, size_t *cap)
{
	char line[512];
	size_t n = 0;
	FILE *f = fopen(maps_path, "re");

	if (!f)
		return -errno;
	while (read_line(line, sizeof(line), f)) {
		struct dd_vma x;

		if (!parse_vma(line, &x))
			continue;
		if (n == *cap) {
			size_t nc = *cap ? *cap * 2 : 256;
			struct dd_vma *nv = realloc(*v, nc * sizeof(*nv));

			if (!nv) {
				fclose(f);
				return -ENOMEM;
			}
			*v = nv;
			*cap = nc;
		}
		(*v)[n++] = x;
	}
	fclose(f);
	return (long)n;
}

long dd_maps_count(const char *maps_path)
{
	char buf[65536];
	long lines = 0;
	size_t n;
	FILE *f = fopen(maps_path, "re");

	if (!f)
		return -errno;
	while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
		for (size_t i = 0; i < n; i++)
			lines += buf[i] == '\n';
	fclose(f);
	return lines;
}

long dd_max_map_count(void)
{
	long v = 65530;
	FILE *f = fopen("/proc/sys/vm/max_map_count", "re");

	if (f) {
		if (fscanf(f, "%ld", &v) != 1)
			v = 65530;
		fclose(f);
	}
	return v;
}

uint64_t dd_self_rss_anon_bytes(void)
{
	char line[128];
	unsigned long long kib = 0;
	FILE *f = fopen("/proc/self/status", "re");

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "RssAnon: %llu kB", &kib) == 1)
			break;
	fclose(f);
	return kib * 1024;
}
