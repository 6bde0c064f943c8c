// SPDX-License-Identifier: MIT
/*
 * Unit tests for dedupd/common/proto.c over socketpair(AF_UNIX, SOCK_SEQPACKET):
 * every message type round-trips through dd_msg_send/dd_msg_recv; every kind
 * of malformed packet (bad magic, version, type, length, body length, batch
 * count) is refused with -EBADMSG; a packet larger than the buffer gives
 * -EMSGSIZE, a closed peer 0 and silence -ETIMEDOUT. File descriptors passed
 * with SCM_RIGHTS arrive (close-on-exec) and are never leaked: an fd riding on a
 * refused message, or one the caller did not ask for, is closed. Leaks are
 * detected with pipes: once every copy of a write end is closed, the read end
 * sees EOF.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dedupd/common/proto.h"
#include "dedupd/common/uffd.h"

#include <sys/ioctl.h>
#include <sys/syscall.h>

Suite *proto_suite(void);

static int sp[2]; /* sp[0] sends, sp[1] receives */
static char rbuf[DD_MSG_MAX];

static void pair_setup(void)
{
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp), 0);
}

static void pair_teardown(void)
{
	close(sp[0]);
	close(sp[1]);
}

/* Send raw bytes as one packet, bypassing dd_msg_send (fd -1: none). */
static void send_raw(const void *buf, size_t len, int fd)
{
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	union {
		char b[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };

	if (fd >= 0) {
		struct cmsghdr *c;

		memset(&u, 0, sizeof(u));
		mh.msg_control = u.b;
		mh.msg_controllen = sizeof(u.b);
		c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof(int));
	}
	ck_assert_int_eq(sendmsg(sp[0], &mh, MSG_NOSIGNAL), (ssize_t)len);
}

/* A pipe whose read end is non-blocking; the caller passes p[1] along. */
static void make_pipe(int p[2])
{
	ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0);
	ck_assert_int_eq(fcntl(p[0], F_SETFL, O_NONBLOCK), 0);
}

/* True if every copy of the pipe's write end is closed (reader sees EOF). */
static bool pipe_writers_gone(int rfd)
{
	char c;

	return read(rfd, &c, 1) == 0;
}

static int count_fds(void)
{
	char path[64];
	int n = 0;

	for (int i = 0; i < 1024; i++) {
		snprintf(path, sizeof(path), "/proc/self/fd/%d", i);
		n += access(path, F_OK) == 0;
	}
	return n;
}

static void hdr(void *buf, uint16_t type, size_t len)
{
	memset(buf, 0, len);
	dd_msg_init(buf, type, len, 42);
}

/* ---- round trips --------------------------------------------------------- */

/* Send a message built by dd_msg_init and check it arrives byte for byte. */
static void roundtrip(const void *msg, size_t len)
{
	int fd = 12345;
	ssize_t n;

	ck_assert_int_eq(dd_msg_send(sp[0], msg, len, -1), 0);
	n = dd_msg_recv(sp[1], rbuf, sizeof(rbuf), &fd, 1000);
	ck_assert_int_eq(n, (ssize_t)len);
	ck_assert_int_eq(fd, -1);
	ck_assert_mem_eq(rbuf, msg, len);
}

START_TEST(test_roundtrip_fixed_types)
{
	static const struct {
		uint16_t type;
		size_t len;
	} t[] = {
		{ DD_MSG_HELLO, sizeof(struct dd_msg_hello) },
		{ DD_MSG_HELLO_OK, sizeof(struct dd_msg_hello_ok) },
		{ DD_MSG_AGENT_HELLO, sizeof(struct dd_msg_agent_hello) },
		{ DD_MSG_REGISTER, sizeof(struct dd_msg_register) },
		{ DD_MSG_UNREGISTER, sizeof(struct dd_msg_unregister) },
		{ DD_MSG_STORE, sizeof(struct dd_msg_store) },
	};
	char buf[256];

	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		ck_assert_uint_eq(dd_msg_min_len(t[i].type), t[i].len);
		hdr(buf, t[i].type, t[i].len);
		for (size_t j = sizeof(struct dd_msg_hdr); j < t[i].len; j++)
			buf[j] = (char)(j * 7 + i);
		roundtrip(buf, t[i].len);
	}
	/* The header as the peer sees it. */
	hdr(buf, DD_MSG_UNREGISTER, sizeof(struct dd_msg_unregister));
	roundtrip(buf, sizeof(struct dd_msg_unregister));
	const struct dd_msg_hdr *h = (const void *)rbuf;
	ck_assert_uint_eq(h->magic, DD_PROTO_MAGIC);
	ck_assert_uint_eq(h->version, DD_PROTO_VERSION);
	ck_assert_uint_eq(h->type, DD_MSG_UNREGISTER);
	ck_assert_uint_eq(h->len, sizeof(struct dd_msg_unregister));
	ck_assert_uint_eq(h->seq, 42);
}
END_TEST

START_TEST(test_roundtrip_batches)
{
	static char buf[DD_MSG_MAX];
	struct dd_msg_batch *b = (void *)buf;
	struct dd_msg_agent_reply *r = (void *)buf;
	static const uint32_t counts[] = { 0, 1, 3, DD_BATCH_MAX };

	for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++) {
		uint32_t n = counts[i];
		size_t len = sizeof(*b) + n * sizeof(b->e[0]);

		ck_assert_uint_le(len, DD_MSG_MAX);
		for (int zap = 0; zap < 2; zap++) {
			hdr(b, zap ? DD_MSG_ZAP : DD_MSG_REMAP, len);
			b->n = n;
			for (uint32_t j = 0; j < n; j++)
				b->e[j] = (struct dd_remap_entry){ .addr = 0x10000 + j * 4096ULL,
								   .store_off = j * 8192ULL,
								   .npages = j + 1,
								   .domain = 3 };
			roundtrip(b, len);
		}
		len = sizeof(*r) + n * sizeof(r->res[0]);
		hdr(r, DD_MSG_AGENT_REPLY, len);
		r->n = n;
		for (uint32_t j = 0; j < n; j++)
			r->res[j] = -(int32_t)(j % 40);
		roundtrip(r, len);
	}
}
END_TEST

START_TEST(test_roundtrip_text)
{
	static char buf[DD_MSG_MAX];
	struct dd_msg_admin *a = (void *)buf;
	const struct dd_msg_result *res = (const void *)rbuf;
	static char big[DD_TEXT_MAX + 1];

	/* ADMIN with and without text. */
	hdr(a, DD_MSG_ADMIN, sizeof(*a));
	roundtrip(a, sizeof(*a));
	hdr(a, DD_MSG_ADMIN, sizeof(*a) + 5);
	a->text_len = 5;
	memcpy(a->text, "stats", 5);
	roundtrip(a, sizeof(*a) + 5);

	/* RESULT through dd_msg_send_result: status, value and text survive. */
	ck_assert_int_eq(dd_msg_send_result(sp[0], 9, -ENOENT, 77, "no such region"), 0);
	ck_assert_int_eq(dd_msg_recv(sp[1], rbuf, sizeof(rbuf), NULL, 1000),
			 (ssize_t)(sizeof(*res) + 14));
	ck_assert_uint_eq(res->h.type, DD_MSG_RESULT);
	ck_assert_uint_eq(res->h.seq, 9);
	ck_assert_int_eq(res->status, -ENOENT);
	ck_assert_uint_eq(res->value, 77);
	ck_assert_uint_eq(res->text_len, 14);
	ck_assert_mem_eq(res->text, "no such region", 14);

	/* No text. */
	ck_assert_int_eq(dd_msg_send_result(sp[0], 10, 0, 0, NULL), 0);
	ck_assert_int_eq(dd_msg_recv(sp[1], rbuf, sizeof(rbuf), NULL, 1000), (ssize_t)sizeof(*res));
	ck_assert_uint_eq(res->text_len, 0);

	/* Text longer than DD_TEXT_MAX is cut to DD_TEXT_MAX and still valid. */
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = 0;
	ck_assert_int_eq(dd_msg_send_result(sp[0], 11, -EINVAL, 0, big), 0);
	ck_assert_int_eq(dd_msg_recv(sp[1], rbuf, sizeof(rbuf), NULL, 1000),
			 (ssize_t)(sizeof(*res) + DD_TEXT_MAX));
	ck_assert_uint_eq(res->text_len, DD_TEXT_MAX);
}
END_TEST

START_TEST(test_min_len)
{
	ck_assert_uint_eq(dd_msg_min_len(0), 0);
	ck_assert_uint_eq(dd_msg_min_len(DD_MSG_TYPE_MAX), 0);
	ck_assert_uint_eq(dd_msg_min_len(0xffff), 0);
	for (uint16_t t = DD_MSG_HELLO; t < DD_MSG_TYPE_MAX; t++)
		ck_assert_uint_ge(dd_msg_min_len(t), sizeof(struct dd_msg_hdr));
	ck_assert_uint_eq(dd_msg_min_len(DD_MSG_RESULT), sizeof(struct dd_msg_result));
	ck_assert_uint_eq(dd_msg_min_len(DD_MSG_REMAP), sizeof(struct dd_msg_batch));
	ck_assert_uint_eq(dd_msg_min_len(DD_MSG_ZAP), sizeof(struct dd_msg_batch));
	ck_assert_uint_eq(dd_msg_min_len(DD_MSG_AGENT_REPLY), sizeof(struct dd_msg_agent_reply));
	ck_assert_uint_eq(dd_msg_min_len(DD_MSG_ADMIN), sizeof(struct dd_msg_admin));
}
END_TEST

/* ---- refusals ------------------------------------------------------------ */

/* The packet must be refused with want, and a following valid one still read. */
static void expect_refused(const void *buf, size_t len, ssize_t want)
{
	struct dd_msg_unregister ok;
	int fd = 12345;

	send_raw(buf, len, -1);
	ck_assert_int_eq(dd_msg_recv(sp[1], rbuf, sizeof(rbuf), &fd, 1000), want);
	ck_assert_int_eq(fd, -1);
	/* One packet was consumed, not more and not less. */
	hdr(&ok, DD_MSG_UNREGISTER, sizeof(ok));
	roundtrip(&ok, sizeof(ok));
}

START_TEST(test_bad_header)
{
	struct dd_msg_register m;
	char tiny[sizeof(struct dd_msg_hdr) - 1];

	hdr(&m, DD_MSG_REGISTER, sizeof(m));
	m.h.magic ^= 1;
	expect_refused(&m, sizeof(m), -EBADMSG);

	hdr(&m, DD_MSG_REGISTER, sizeof(m));
	m.h.version = DD_PROTO_VERSION + 1;
	expect_refused(&m, sizeof(m), -EBADMSG);

	hdr(&m, DD_MSG_REGISTER, sizeof(m));
	m.h.version = 0;
	expect_refused(&m, sizeof(m), -EBADMSG);

	/* Unknown types: 0, one past the last, and far out. */
	hdr(&m, 0, sizeof(m));
	expect_refused(&m, sizeof(m), -EBADMSG);
	hdr(&m, DD_MSG_TYPE_MAX, sizeof(m));
	expect_refused(&m, sizeof(m), -EBADMSG);
	hdr(&m, 0xffff, sizeof(m));
	expect_refused(&m, sizeof(m), -EBADMSG);

	/* Shorter than a header. */
	memset(tiny, 0, sizeof(tiny));
	dd_msg_init((void *)&m, DD_MSG_HELLO, sizeof(tiny), 1);
	memcpy(tiny, &m, sizeof(tiny));
	expect_refused(tiny, sizeof(tiny), -EBADMSG);
	expect_refused("\x44\x44", 1, -EBADMSG);

	/* Garbage. */
	memset(&m, 0xa5, sizeof(m));
	expect_refused(&m, sizeof(m), -EBADMSG);
}
END_TEST

START_TEST(test_bad_length)
{
	char buf[512];
	struct dd_msg_register *m = (void *)buf;

	/* Header says more than the packet holds, and less. */
	hdr(m, DD_MSG_REGISTER, sizeof(*m));
	m->h.len = sizeof(*m) + 8;
	expect_refused(m, sizeof(*m), -EBADMSG);
	hdr(m, DD_MSG_REGISTER, sizeof(*m));
	m->h.len = sizeof(*m) - 8;
	expect_refused(m, sizeof(*m), -EBADMSG);
	hdr(m, DD_MSG_REGISTER, sizeof(*m));
	m->h.len = 0;
	expect_refused(m, sizeof(*m), -EBADMSG);

	/* Header and packet agree, but shorter than the type needs. */
	for (uint16_t t = DD_MSG_HELLO; t < DD_MSG_TYPE_MAX; t++) {
		size_t min = dd_msg_min_len(t);

		hdr(buf, t, min - 4);
		expect_refused(buf, min - 4, -EBADMSG);
		hdr(buf, t, sizeof(struct dd_msg_hdr));
		if (min > sizeof(struct dd_msg_hdr))
			expect_refused(buf, sizeof(struct dd_msg_hdr), -EBADMSG);
	}

	/* Fixed-size types with trailing bytes. */
	for (uint16_t t = DD_MSG_HELLO; t <= DD_MSG_UNREGISTER; t++) {
		size_t len = dd_msg_min_len(t) + 8;

		hdr(buf, t, len);
		expect_refused(buf, len, -EBADMSG);
	}
	hdr(buf, DD_MSG_STORE, sizeof(struct dd_msg_store) + 4);
	expect_refused(buf, sizeof(struct dd_msg_store) + 4, -EBADMSG);
}
END_TEST

START_TEST(test_bad_variable_length)
{
	static char buf[DD_MSG_MAX];
	struct dd_msg_result *res = (void *)buf;
	struct dd_msg_admin *a = (void *)buf;
	struct dd_msg_batch *b = (void *)buf;
	struct dd_msg_agent_reply *r = (void *)buf;
	size_t len;

	/* RESULT: text_len one more, one less than the bytes present; huge. */
	len = sizeof(*res) + 10;
	hdr(res, DD_MSG_RESULT, len);
	res->text_len = 11;
	expect_refused(res, len, -EBADMSG);
	hdr(res, DD_MSG_RESULT, len);
	res->text_len = 9;
	expect_refused(res, len, -EBADMSG);
	hdr(res, DD_MSG_RESULT, len);
	res->text_len = UINT32_MAX;
	expect_refused(res, len, -EBADMSG);

	/* ADMIN likewise. */
	len = sizeof(*a) + 5;
	hdr(a, DD_MSG_ADMIN, len);
	a->text_len = 6;
	expect_refused(a, len, -EBADMSG);
	hdr(a, DD_MSG_ADMIN, len);
	a->text_len = 0;
	expect_refused(a, len, -EBADMSG);
	hdr(a, DD_MSG_ADMIN, len);
	a->text_len = UINT32_MAX - 2;
	expect_refused(a, len, -EBADMSG);

	/* REMAP/ZAP: n disagrees with the entries present. */
	for (int zap = 0; zap < 2; zap++) {
		uint16_t t = zap ? DD_MSG_ZAP : DD_MSG_REMAP;

		len = sizeof(*b) + 2 * sizeof(b->e[0]);
		hdr(b, t, len);
		b->n = 3;
		expect_refused(b, len, -EBADMSG);
		hdr(b, t, len);
		b->n = 1;
		expect_refused(b, len, -EBADMSG);
		/* A partial entry. */
		hdr(b, t, len - 8);
		b->n = 2;
		expect_refused(b, len - 8, -EBADMSG);
		/* n wraps n * sizeof(entry) in 32 bits: still refused. */
		hdr(b, t, sizeof(*b));
		b->n = (uint32_t)(((uint64_t)1 << 32) / sizeof(b->e[0]) + 1);
		expect_refused(b, sizeof(*b), -EBADMSG);
	}

	/* AGENT_REPLY likewise. */
	len = sizeof(*r) + 4 * sizeof(r->res[0]);
	hdr(r, DD_MSG_AGENT_REPLY, len);
	r->n = 5;
	expect_refused(r, len, -EBADMSG);
	hdr(r, DD_MSG_AGENT_REPLY, len);
	r->n = 3;
	expect_refused(r, len, -EBADMSG);
	hdr(r, DD_MSG_AGENT_REPLY, sizeof(*r));
	r->n = 1u << 30; /* n * 4 wraps to 0 in 32 bits */
	expect_refused(r, sizeof(*r), -EBADMSG);
}
END_TEST

/* HASH and HASH_REPLY: lengths that agree pass, others and n over
 * DD_HASH_MAX are refused. */
START_TEST(test_hash_messages)
{
	static char buf[DD_MSG_MAX];
	struct dd_msg_hash *h = (void *)buf;
	struct dd_msg_hash_reply *r = (void *)buf;
	size_t len;

	ck_assert_uint_eq(dd_msg_min_len(DD_MSG_HASH), sizeof(struct dd_msg_hash));
	ck_assert_uint_eq(dd_msg_min_len(DD_MSG_HASH_REPLY), sizeof(struct dd_msg_hash_reply));
	len = sizeof(*h) + 3 * sizeof(h->e[0]);
	hdr(h, DD_MSG_HASH, len);
	h->n = 3;
	h->e[0] = (struct dd_hash_range){ 0x10000, 5, 0 };
	roundtrip(h, len);
	hdr(h, DD_MSG_HASH, len);
	h->n = 4;
	expect_refused(h, len, -EBADMSG);
	hdr(h, DD_MSG_HASH, len - 4);
	h->n = 3;
	expect_refused(h, len - 4, -EBADMSG); /* a partial range */
	len = sizeof(*h) + (DD_HASH_MAX + 1) * sizeof(h->e[0]);
	ck_assert_uint_le(len, DD_MSG_MAX);
	hdr(h, DD_MSG_HASH, len);
	h->n = DD_HASH_MAX + 1;
	expect_refused(h, len, -EBADMSG);

	len = sizeof(*r) + 2 * sizeof(r->res[0]);
	hdr(r, DD_MSG_HASH_REPLY, len);
	r->n = 2;
	r->res[1] = (struct dd_hash_result){ 0x1234, DD_HASH_OK | DD_HASH_ZERO, 0 };
	roundtrip(r, len);
	hdr(r, DD_MSG_HASH_REPLY, len);
	r->n = 1;
	expect_refused(r, len, -EBADMSG);
	hdr(r, DD_MSG_HASH_REPLY, sizeof(*r));
	r->n = 1u << 28; /* n * 16 wraps to 0 in 32 bits */
	expect_refused(r, sizeof(*r), -EBADMSG);
}
END_TEST

START_TEST(test_batch_over_max)
{
	static char buf[DD_MSG_MAX];
	struct dd_msg_batch *b = (void *)buf;
	struct dd_msg_agent_reply *r = (void *)buf;
	uint32_t n = DD_BATCH_MAX + 1;
	size_t len;

	/* Length and n agree, but n is over the limit. */
	len = sizeof(*b) + n * sizeof(b->e[0]);
	ck_assert_uint_le(len, DD_MSG_MAX);
	hdr(b, DD_MSG_REMAP, len);
	b->n = n;
	expect_refused(b, len, -EBADMSG);
	hdr(b, DD_MSG_ZAP, len);
	b->n = n;
	expect_refused(b, len, -EBADMSG);

	len = sizeof(*r) + n * sizeof(r->res[0]);
	hdr(r, DD_MSG_AGENT_REPLY, len);
	r->n = n;
	expect_refused(r, len, -EBADMSG);
}
END_TEST

START_TEST(test_too_big_for_buffer)
{
	static char big[DD_MSG_MAX + 4096];
	struct dd_msg_admin *a = (void *)big;
	char small[64];
	int p[2], fd = 12345;
	size_t len;

	/* A valid ADMIN of 200 bytes into a 64-byte buffer: -EMSGSIZE, and the
	 * rest of the packet is discarded, not read as the next message. */
	len = 200;
	hdr(a, DD_MSG_ADMIN, len);
	a->text_len = (uint32_t)(len - sizeof(*a));
	ck_assert_int_eq(dd_msg_send(sp[0], a, len, -1), 0);
	ck_assert_int_eq(dd_msg_recv(sp[1], small, sizeof(small), &fd, 1000), -EMSGSIZE);
	ck_assert_int_eq(fd, -1);

	/* A packet larger than DD_MSG_MAX into a DD_MSG_MAX buffer, with an fd:
	 * refused and the fd closed. */
	make_pipe(p);
	len = sizeof(big);
	hdr(a, DD_MSG_ADMIN, len);
	a->text_len = (uint32_t)(len - sizeof(*a));
	send_raw(a, len, p[1]);
	close(p[1]);
	ck_assert_int_eq(dd_msg_recv(sp[1], rbuf, sizeof(rbuf), &fd, 1000), -EMSGSIZE);
	ck_assert_int_eq(fd, -1);
	ck_assert_msg(pipe_writers_gone(p[0]), "fd of a truncated message leaked");
	close(p[0]);

	/* The stream goes on. */
	hdr(a, DD_MSG_ADMIN, sizeof(*a));
	roundtrip(a, sizeof(*a));
}
END_TEST

START_TEST(test_eof_and_timeout)
{
	uint64_t t0;
	struct timespec ts;
	int fd = 12345;

	/* Nothing to read: -ETIMEDOUT after about the timeout, and 0 polls. */
	clock_gettime(CLOCK_MONOTONIC, &ts);
	t0 = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
	ck_assert_int_eq(dd_msg_recv(sp[1], rbuf, sizeof(rbuf), &fd, 150), -ETIMEDOUT);
	clock_gettime(CLOCK_MONOTONIC, &ts);
	ck_assert_uint_ge((uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000 - t0, 140);
	ck_assert_int_eq(fd, -1);
	ck_assert_int_eq(dd_msg_recv(sp[1], rbuf, sizeof(rbuf), &fd, 0), -ETIMEDOUT);

	/* Orderly close: 0, with a timeout and waiting forever. */
	close(sp[0]);
	sp[0] = -1;
	ck_assert_int_eq(dd_msg_recv(sp[1], rbuf, sizeof(rbuf), &fd, 1000), 0);
	ck_assert_int_eq(fd, -1);
	ck_assert_int_eq(dd_msg_recv(sp[1], rbuf, sizeof(rbuf), NULL, -1), 0);
}
END_TEST

START_TEST(test_send_errors)
{
	struct dd_msg_unregister m;

	hdr(&m, DD_MSG_UNREGISTER, sizeof(m));
	close(sp[1]);
	sp[1] = -1;
	/* No SIGPIPE (the test would die), an error instead. */
	ck_assert_int_eq(dd_msg_send(sp[0], &m, sizeof(m), -1), -EPIPE);
	ck_assert_int_eq(dd_msg_send(-1, &m, sizeof(m), -1), -EBADF);
}
END_TEST

START_TEST(test_connect_errors)
{
	char path[200];

	memset(path, 'a', sizeof(path) - 1);
	path[sizeof(path) - 1] = 0;
	ck_assert_int_eq(dd_sock_connect(path), -ENAMETOOLONG);
	ck_assert_int_eq(dd_sock_connect("/nonexistent-dir-dedupd/x.sock"), -ENOENT);
}
END_TEST

/* ---- file descriptors ---------------------------------------------------- */

START_TEST(test_fd_passed)
{
	struct dd_msg_hello m;
	struct stat a, b;
	int p[2], fd = -1;
	char c = 'x';

	make_pipe(p);
	hdr(&m, DD_MSG_HELLO, sizeof(m));
	ck_assert_int_eq(dd_msg_send(sp[0], &m, sizeof(m), p[1]), 0);
	close(p[1]);
	ck_assert_int_eq(dd_msg_recv(sp[1], rbuf, sizeof(rbuf), &fd, 1000), (ssize_t)sizeof(m));
	ck_assert_int_ge(fd, 0);
	/* The same file, close-on-exec, and it works. */
	ck_assert_int_eq(fstat(fd, &a), 0);
	ck_assert_int_eq(fstat(p[0], &b), 0);
	ck_assert_uint_eq(a.st_ino, b.st_ino);
	ck_assert_int_eq(fcntl(fd, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
	ck_assert_int_eq(write(fd, &c, 1), 1);
	c = 0;
	ck_assert_int_eq(read(p[0], &c, 1), 1);
	ck_assert_int_eq(c, 'x');
	close(fd);
	ck_assert(pipe_writers_gone(p[0]));
	close(p[0]);
}
END_TEST

START_TEST(test_fd_closed_on_refusal)
{
	struct dd_msg_register m;
	int p[2], fd = 12345, before, after;

	before = count_fds();
	/* Bad magic, bad length, bad body: each carrying an fd. */
	for (int k = 0; k < 3; k++) {
		make_pipe(p);
		hdr(&m, DD_MSG_REGISTER, sizeof(m));
		if (k == 0)
			m.h.magic = 0;
		else if (k == 1)
			m.h.len++;
		else
			m.h.type = DD_MSG_RESULT; /* text_len 0 but body longer */
		send_raw(&m, sizeof(m), p[1]);
		close(p[1]);
		ck_assert_int_eq(dd_msg_recv(sp[1], rbuf, sizeof(rbuf), &fd, 1000), -EBADMSG);
		ck_assert_int_eq(fd, -1);
		ck_assert_msg(pipe_writers_gone(p[0]), "fd of a refused message (case %d) leaked",
			      k);
		close(p[0]);
	}
	after = count_fds();
	ck_assert_int_eq(after, before);
}
END_TEST

/* An empty packet reads as the end of the connection; an fd it carries must
 * not leak (found by fuzzing: tests/fuzz/regress/proto/empty_packet_with_fd). */
START_TEST(test_fd_closed_on_empty_packet)
{
	int p[2], fd = 12345, before = count_fds();

	make_pipe(p);
	send_raw("", 0, p[1]);
	close(p[1]);
	ck_assert_int_eq(dd_msg_recv(sp[1], rbuf, sizeof(rbuf), &fd, 1000), 0);
	ck_assert_int_eq(fd, -1);
	ck_assert_msg(pipe_writers_gone(p[0]), "fd of an empty packet leaked");
	close(p[0]);
	ck_assert_int_eq(count_fds(), before);
}
END_TEST

START_TEST(test_fd_closed_when_not_wanted)
{
	struct dd_msg_hello m;
	int p[2];

	/* A caller that passes fd == NULL gets the message and no leaked fd. */
	make_pipe(p);
	hdr(&m, DD_MSG_HELLO, sizeof(m));
	ck_assert_int_eq(dd_msg_send(sp[0], &m, sizeof(m), p[1]), 0);
	close(p[1]);
	ck_assert_int_eq(dd_msg_recv(sp[1], rbuf, sizeof(rbuf), NULL, 1000), (ssize_t)sizeof(m));
	ck_assert_msg(pipe_writers_gone(p[0]), "unwanted fd leaked");
	close(p[0]);
}
END_TEST

START_TEST(test_fd_extra_closed)
{
	enum { NFD = 6 }; /* more than dd_msg_recv's control buffer holds (4) */
	struct dd_msg_hello m;
	struct iovec iov = { .iov_base = &m, .iov_len = sizeof(m) };
	union {
		char b[CMSG_SPACE(sizeof(int) * NFD)];
		struct cmsghdr align;
	} u;
	struct msghdr mh = {
		.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b, .msg_controllen = sizeof(u.b)
	};
	struct cmsghdr *c;
	int p[NFD][2], w[NFD], fd = -1, before, open_writers = 0;
	struct stat a, b;

	before = count_fds();
	for (int i = 0; i < NFD; i++) {
		make_pipe(p[i]);
		w[i] = p[i][1];
	}
	hdr(&m, DD_MSG_HELLO, sizeof(m));
	memset(&u, 0, sizeof(u));
	c = CMSG_FIRSTHDR(&mh);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(w));
	memcpy(CMSG_DATA(c), w, sizeof(w));
	ck_assert_int_eq(sendmsg(sp[0], &mh, MSG_NOSIGNAL), (ssize_t)sizeof(m));
	for (int i = 0; i < NFD; i++)
		close(p[i][1]);

	/* The message is valid: it arrives with exactly one fd (the first). */
	ck_assert_int_eq(dd_msg_recv(sp[1], rbuf, sizeof(rbuf), &fd, 1000), (ssize_t)sizeof(m));
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(fstat(fd, &a), 0);
	ck_assert_int_eq(fstat(p[0][0], &b), 0);
	ck_assert_uint_eq(a.st_ino, b.st_ino);
	for (int i = 1; i < NFD; i++)
		open_writers += !pipe_writers_gone(p[i][0]);
	ck_assert_msg(open_writers == 0, "%d extra fds leaked", open_writers);
	close(fd);
	for (int i = 0; i < NFD; i++)
		close(p[i][0]);
	ck_assert_int_eq(count_fds(), before);
}
END_TEST

/*
 * The features a userfaultfd was opened with, read back from its fdinfo: the
 * daemon skips its wait for the fault thread after each merge batch for a
 * uffd that raises no unmap or remove events (libdedup's), and keeps it for
 * one that does. Not a uffd, or no such descriptor: unknown (-1).
 */
START_TEST(test_uffd_features_read_back)
{
	const unsigned long long asks[] = {
		DD_UFFD_FEATURES,
		DD_UFFD_FEATURES | UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_EVENT_REMOVE,
	};
	int p[2];

	for (unsigned i = 0; i < 2; i++) {
		int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
		struct uffdio_api api = { .api = UFFD_API, .features = asks[i] };
		long long got;

		if (fd < 0 && (errno == EPERM || errno == ENOSYS))
			return; /* userfaultfd not allowed here: nothing to read back */
		ck_assert_int_ge(fd, 0);
		ck_assert_int_eq(ioctl(fd, UFFDIO_API, &api), 0);
		ck_assert(dd_is_userfaultfd(fd));
		got = dd_uffd_features(fd);
		ck_assert_msg(got >= 0 && ((unsigned long long)got & asks[i]) == asks[i],
			      "features %llx, asked for %llx", got, asks[i]);
		ck_assert_int_eq(!!(got & UFFD_FEATURE_EVENT_UNMAP), i == 1);
		close(fd);
	}
	make_pipe(p);
	ck_assert(!dd_is_userfaultfd(p[0]));
	ck_assert_int_eq(dd_uffd_features(p[0]), -1);
	close(p[0]);
	close(p[1]);
	ck_assert_int_eq(dd_uffd_features(p[0]), -1);
}
END_TEST

Suite *proto_suite(void)
{
	Suite *s = suite_create("proto");
	TCase *tc;

	tc = tcase_create("roundtrip");
	tcase_add_checked_fixture(tc, pair_setup, pair_teardown);
	tcase_add_test(tc, test_roundtrip_fixed_types);
	tcase_add_test(tc, test_roundtrip_batches);
	tcase_add_test(tc, test_roundtrip_text);
	tcase_add_test(tc, test_min_len);
	suite_add_tcase(s, tc);

	tc = tcase_create("refusals");
	tcase_add_checked_fixture(tc, pair_setup, pair_teardown);
	tcase_add_test(tc, test_bad_header);
	tcase_add_test(tc, test_bad_length);
	tcase_add_test(tc, test_bad_variable_length);
	tcase_add_test(tc, test_batch_over_max);
	tcase_add_test(tc, test_hash_messages);
	tcase_add_test(tc, test_too_big_for_buffer);
	tcase_add_test(tc, test_eof_and_timeout);
	tcase_add_test(tc, test_send_errors);
	tcase_add_test(tc, test_connect_errors);
	suite_add_tcase(s, tc);

	tc = tcase_create("fds");
	tcase_add_checked_fixture(tc, pair_setup, pair_teardown);
	tcase_add_test(tc, test_fd_passed);
	tcase_add_test(tc, test_fd_closed_on_refusal);
	tcase_add_test(tc, test_fd_closed_on_empty_packet);
	tcase_add_test(tc, test_fd_closed_when_not_wanted);
	tcase_add_test(tc, test_fd_extra_closed);
	tcase_add_test(tc, test_uffd_features_read_back);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(proto_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
