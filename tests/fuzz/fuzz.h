/* SPDX-License-Identifier: MIT */
/*
 * Helpers shared by the libFuzzer harnesses in tests/fuzz/ (header-only: each
 * harness is one translation unit).
 *
 *  - fz_dir():   a private temporary directory for the process, removed at exit;
 *                parsers that take a path are pointed at files written in it.
 *  - fz_write(): write bytes to a file there (truncating it).
 *  - fz_split(): cut an input at a separator line, for harnesses that need
 *                several files or several replies from one input.
 *  - fz_fd_mark()/fz_fd_check(): the lowest free fd before and after one
 *                input; a difference is an fd leak, reported as a crash.
 *  - the scripted peer: a thread listening on a UNIX stream socket that
 *    sends the i-th chunk of the input to the i-th connection, then shuts down
 *    its writing side (so the client sees the end of the reply at once and no
 *    call waits for its timeout) and reads until the client closes. This is
 *    how the QMP and HTTP backends, which connect to a path themselves, get
 *    fuzzed replies.
 */
#ifndef DD_FUZZ_H
#define DD_FUZZ_H

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* Abort (a libFuzzer crash, with the input saved) when cond is false. */
#define FZ_ASSERT(cond, ...)                                                                       \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz invariant failed: %s (%s:%d): ", #cond, __FILE__,    \
				__LINE__);                                                         \
			fprintf(stderr, __VA_ARGS__);                                              \
			fputc('\n', stderr);                                                       \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

static char fz_dir_path[64];

static inline int fz_rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st, (void)flag, (void)ftw;
	return remove(path);
}

static inline void fz_dir_cleanup(void)
{
	if (fz_dir_path[0])
		nftw(fz_dir_path, fz_rm_one, 8, FTW_DEPTH | FTW_PHYS);
}

/* Short on purpose: scanner/procmaps.c builds "<dir>/status" in 64 bytes. */
static inline const char *fz_dir(void)
{
	if (!fz_dir_path[0]) {
		const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";

		snprintf(fz_dir_path, sizeof(fz_dir_path), "%s/ddfz.XXXXXX", base);
		if (!mkdtemp(fz_dir_path)) {
			perror("mkdtemp");
			abort();
		}
		atexit(fz_dir_cleanup);
	}
	return fz_dir_path;
}

/* "<dir>/name", in a static buffer per call site's array. */
static inline void fz_path(char *out, size_t len, const char *name)
{
	snprintf(out, len, "%s/%s", fz_dir(), name);
}

static inline void fz_write(const char *path, const void *data, size_t size)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	const char *p = data;

	if (fd < 0) {
		perror(path);
		abort();
	}
	while (size) {
		ssize_t n = write(fd, p, size);

		if (n <= 0) {
			perror(path);
			abort();
		}
		p += n;
		size -= (size_t)n;
	}
	close(fd);
}

struct fz_chunk {
	const uint8_t *p;
	size_t n;
};

/*
 * Cut data at every occurrence of sep (which is dropped) into at most max
 * chunks; the last chunk takes the rest. Returns the number of chunks (>= 1).
 */
static inline size_t fz_split(const uint8_t *data, size_t size, const char *sep,
			      struct fz_chunk *out, size_t max)
{
	size_t k = 0, sl = strlen(sep);
	const uint8_t *p = data, *end = data + size;

	while (k + 1 < max) {
		const uint8_t *s =
		    sl <= (size_t)(end - p) ? memmem(p, (size_t)(end - p), sep, sl) : NULL;

		if (!s)
			break;
		out[k++] = (struct fz_chunk){ p, (size_t)(s - p) };
		p = s + sl;
	}
	out[k++] = (struct fz_chunk){ p, (size_t)(end - p) };
	return k;
}

/* The lowest free descriptor number. */
static inline int fz_fd_mark(void)
{
	int fd = dup(0);

	if (fd < 0)
		abort();
	close(fd);
	return fd;
}

static inline void fz_fd_check(int mark, const char *what)
{
	int now = fz_fd_mark();

	FZ_ASSERT(now == mark, "%s leaked a file descriptor (lowest free fd %d, was %d)", what, now,
		  mark);
}

/* ---- the scripted peer ---- */

#define FZ_PEER_CHUNKS 16
#define FZ_PEER_CONNS 32

struct fz_peer {
	int lfd;	/* listening UNIX stream socket */
	int stop[2];	/* pipe: the main thread writes when the client is done */
	char path[108]; /* where lfd listens */
	struct fz_chunk chunks[FZ_PEER_CHUNKS];
	size_t nchunks;
	pthread_t thread;
	unsigned accepted; /* connections served by the last run */
};

static inline void fz_peer_init(struct fz_peer *pe, const char *name)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };

	fz_path(pe->path, sizeof(pe->path), name);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", pe->path);
	unlink(pe->path);
	pe->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (pe->lfd < 0 || bind(pe->lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    listen(pe->lfd, 64) < 0 || pipe2(pe->stop, O_CLOEXEC) < 0) {
		perror("fuzz peer");
		abort();
	}
}

/* Send the whole chunk (blocking, bounded by SO_SNDTIMEO); the client may be gone. */
static inline void fz_peer_send(int fd, const struct fz_chunk *c)
{
	const uint8_t *p = c->p;
	size_t n = c->n;

	while (n) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return;
		p += w;
		n -= (size_t)w;
	}
}

static inline void *fz_peer_main(void *arg)
{
	struct fz_peer *pe = arg;
	struct pollfd pfd[2 + FZ_PEER_CONNS];
	int conns[FZ_PEER_CONNS];
	size_t nconns = 0, next = 0;
	char sink[4096];
	bool stopping = false;

	pe->accepted = 0;
	for (;;) {
		/* a connection accepted below is polled from the next round on */
		size_t np = 0, polled = nconns;

		/* once stopping, the pipe stays readable: poll an invalid fd in its place */
		pfd[np++] = (struct pollfd){ .fd = stopping ? -1 : pe->stop[0], .events = POLLIN };
		pfd[np++] = (struct pollfd){ .fd = pe->lfd, .events = POLLIN };
		for (size_t i = 0; i < nconns; i++)
			pfd[np++] = (struct pollfd){ .fd = conns[i], .events = POLLIN };
		if (poll(pfd, np, stopping ? 0 : 5000) <= 0)
			break; /* stopping and nothing pending; or 5 s without the client */
		if (pfd[0].revents) {
			stopping = true;
			continue;
		}
		if (pfd[1].revents & POLLIN) {
			int fd = accept4(pe->lfd, NULL, NULL, SOCK_CLOEXEC);

			if (fd >= 0) {
				struct timeval tv = { .tv_sec = 1 };

				pe->accepted++;
				setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
				if (next < pe->nchunks)
					fz_peer_send(fd, &pe->chunks[next++]);
				shutdown(fd, SHUT_WR);
				if (nconns < FZ_PEER_CONNS)
					conns[nconns++] = fd;
				else
					close(fd);
			}
		}
		for (size_t i = 0; i < polled; i++) {
			if (!pfd[2 + i].revents)
				continue;
			if (read(conns[i], sink, sizeof(sink)) <= 0) {
				close(conns[i]);
				conns[i] = -1;
			}
		}
		for (size_t i = 0; i < nconns;)
			if (conns[i] < 0)
				conns[i] = conns[--nconns];
			else
				i++;
		if (stopping && !nconns)
			break;
	}
	for (size_t i = 0; i < nconns; i++)
		close(conns[i]);
	return NULL;
}

static inline void fz_peer_start(struct fz_peer *pe)
{
	if (pthread_create(&pe->thread, NULL, fz_peer_main, pe) != 0)
		abort();
}

/* After the client has closed its connections: stop the thread, drop leftovers. */
static inline void fz_peer_stop(struct fz_peer *pe)
{
	char b;
	int fd;

	if (write(pe->stop[1], "x", 1) != 1)
		abort();
	pthread_join(pe->thread, NULL);
	while (read(pe->stop[0], &b, 1) != 1)
		;
	while ((fd = accept4(pe->lfd, NULL, NULL, SOCK_CLOEXEC)) >= 0)
		close(fd);
}

#endif
