// SPDX-License-Identifier: MIT
/*
 * libdedup-preload.so: run an unmodified program under dedupd.
 *
 *   LD_PRELOAD=libdedup-preload.so qemu-system-x86_64 ...
 *
 * It interposes madvise(): MADV_MERGEABLE (what QEMU calls on guest RAM, and
 * any program that asks for KSM) registers the range with dedupd instead;
 * MADV_UNMERGEABLE unregisters it. If dedupd cannot take the range (not
 * running, refused), the call goes to the real madvise(), so the program runs
 * exactly as it would without the preload (KSM included).
 *
 * With DEDUP_MMAP_MIN_BYTES=N it also registers every private anonymous
 * read-write mmap() of at least N bytes that the program makes directly.
 *
 * Environment: DEDUPD_SOCKET (daemon socket), DEDUP_DOMAIN (all, uid, client,
 * salt), DEDUP_SALT (with salt), DEDUP_SHARES, DEDUP_MIN (bytes),
 * DEDUP_MMAP_MIN_BYTES, DEDUP_PRELOAD_DEBUG=1 (say on stderr what happens).
 * A VMM names its balloon API socket with DEDUP_QMP, DEDUP_FIRECRACKER or
 * DEDUP_CLOUD_HYPERVISOR, so that dedupd can balloon its guest under pressure.
 *
 * A registration refused by admission control (DEDUP_MIN does not fit) is
 * said on stderr once, and the range runs on undeduplicated: it is not handed
 * to KSM either, since the host has no room for the reservation.
 */
#include "dedupd/lib/dedup.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MADV_FREE
#define MADV_FREE 8
#endif
#ifndef MADV_MERGEABLE
#define MADV_MERGEABLE 12
#define MADV_UNMERGEABLE 13
#endif

typedef int (*madvise_fn)(void *, size_t, int);
typedef void *(*mmap_fn)(void *, size_t, int, int, int, off_t);

static __thread int busy; /* our own calls into libc must not loop back */

__attribute__((format(printf, 1, 2))) static void debug(const char *fmt, ...)
{
	const char *d = getenv("DEDUP_PRELOAD_DEBUG");
	va_list ap;

	if (!d || strcmp(d, "1"))
		return;
	va_start(ap, fmt);
	fprintf(stderr, "libdedup-preload[%d]: ", (int)getpid());
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

static uint64_t env_u64(const char *name)
{
	const char *v = getenv(name);

	return v && *v ? strtoull(v, NULL, 0) : 0;
}

static void env_opts(struct dedup_opts *o)
{
	const char *d = getenv("DEDUP_DOMAIN");

	memset(o, 0, sizeof(*o));
	if (d && !strcmp(d, "all"))
		o->domain = DEDUP_DOMAIN_ALL;
	else if (d && !strcmp(d, "uid"))
		o->domain = DEDUP_DOMAIN_UID;
	else if (d && !strcmp(d, "client"))
		o->domain = DEDUP_DOMAIN_CLIENT;
	else if (d && !strcmp(d, "salt"))
		o->domain = DEDUP_DOMAIN_SALT;
	o->salt = env_u64("DEDUP_SALT");
	if (o->salt && !o->domain)
		o->domain = DEDUP_DOMAIN_SALT;
	o->shares = (uint32_t)env_u64("DEDUP_SHARES");
	o->min_bytes = env_u64("DEDUP_MIN");
}

/* Bind the balloon backend named in the environment, once. */
static void env_balloon(void)
{
	static const struct {
		const char *env;
		int backend;
	} b[] = { { "DEDUP_QMP", DEDUP_BALLOON_QMP },
		  { "DEDUP_FIRECRACKER", DEDUP_BALLOON_FIRECRACKER },
		  { "DEDUP_CLOUD_HYPERVISOR", DEDUP_BALLOON_CLOUD_HYPERVISOR } };
	static int done;

	if (done++)
		return;
	for (size_t i = 0; i < sizeof(b) / sizeof(b[0]); i++) {
		const char *v = getenv(b[i].env);

		if (v && *v) {
			int r = dedup_set_balloon_backend(b[i].backend, v);

			debug("balloon backend %s=%s: %s", b[i].env, v, r ? strerror(-r) : "ok");
			return;
		}
	}
}

/* Page-align the range the way madvise() would. */
static int offer(void *addr, size_t len)
{
	static int refused_said;
	struct dedup_opts o;
	uintptr_t a = (uintptr_t)addr;
	size_t l = (len + 4095) & ~(size_t)4095;
	int r;

	if (a % 4096 || !l)
		return -EINVAL;
	env_opts(&o);
	busy++;
	env_balloon();
	r = dedup_register(addr, l, &o);
	busy--;
	if (r == -EEXIST)
		r = 0; /* already registered */
	debug("register %p+%zu: %s%s%s", addr, l, r ? strerror(-r) : "ok", r ? ": " : "",
	      r ? dedup_strerror() : "");
	if (r == -ENOSPC) {
		if (!refused_said++)
			fprintf(stderr, "libdedup-preload[%d]: dedupd refused admission: %s; "
				"running without deduplication\n", (int)getpid(), dedup_strerror());
		return 0;
	}
	return r;
}

int madvise(void *addr, size_t len, int advice)
{
	static madvise_fn real;

	if (!real)
		real = (madvise_fn)dlsym(RTLD_NEXT, "madvise");
	if (!busy && (advice == MADV_DONTNEED || advice == MADV_FREE)) {
		int r = real(addr, len, advice);

		/* Merged pages would read the shared content again: make the
		 * registered part read zeros, as DONTNEED (and FREE) allow. */
		if (r == 0) {
			busy++;
			dedup_discard(addr, len);
			busy--;
		}
		return r;
	}
	if (busy || (advice != MADV_MERGEABLE && advice != MADV_UNMERGEABLE))
		return real(addr, len, advice);
	if (advice == MADV_MERGEABLE) {
		if (offer(addr, len) == 0)
			return 0;
		return real(addr, len, advice); /* dedupd said no: KSM as before */
	}
	busy++;
	if (dedup_unregister(addr, (len + 4095) & ~(size_t)4095) == 0) {
		busy--;
		return 0;
	}
	busy--;
	return real(addr, len, advice);
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	static mmap_fn real;
	static uint64_t min_bytes = UINT64_MAX;
	void *p;

	if (!real) {
		real = (mmap_fn)dlsym(RTLD_NEXT, "mmap");
		min_bytes = env_u64("DEDUP_MMAP_MIN_BYTES");
		if (!min_bytes)
			min_bytes = UINT64_MAX;
	}
	p = real(addr, len, prot, flags, fd, off);
	if (p != MAP_FAILED && !busy && len >= min_bytes &&
	    (flags & (MAP_PRIVATE | MAP_ANONYMOUS)) == (MAP_PRIVATE | MAP_ANONYMOUS) &&
	    (prot & (PROT_READ | PROT_WRITE)) == (PROT_READ | PROT_WRITE) &&
	    !(flags & (MAP_SHARED | MAP_STACK | MAP_GROWSDOWN)))
		offer(p, len);
	return p;
}
