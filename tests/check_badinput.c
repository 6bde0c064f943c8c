// SPDX-License-Identifier: MIT
/*
 * Bad input against the real daemon (issue 2, "Bad input"): raw connections
 * that send garbage, truncated, oversized, wrong-length and out-of-order
 * messages, fds that are not userfaultfds, forged agent tokens, unknown admin
 * commands and settings, floods of connections; libdedup registrations of
 * memory that may not be shared; and the dedupctl CLI's exit codes and
 * messages. After each case the daemon must still answer `stats`, every
 * RESULT must carry the right -errno and a sentence naming the problem, and
 * the daemon must not keep fds it was handed on refused messages.
 *
 * One dedupd per test case runs for the whole case (an unchecked fixture, so
 * it outlives each forked test); its clean exit on SIGTERM and a log free of
 * sanitizer reports are checked at the end, in main().
 */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dedupd/common/proto.h"
#include "dedupd/common/uffd.h"
#include "dedupd/lib/dedup.h"
#include "tests/harness.h"

Suite *badinput_suite(void);

#define PG 4096UL
#define RECV_MS 3000

static char sock[256];
static pid_t dpid = -1;
static int daemon_bad_exits;
static char rbuf[DD_MSG_MAX];

/* ---- the daemon (unchecked fixture: runs in the runner process) ---------- */

static void daemon_up(void)
{
	/* Open to every user, so the non-root tests can connect at all. */
	static const char *const args[] = { "--socket-mode", "0666", NULL };

	h_sock_path(sock, sizeof(sock), "badinput");
	dpid = h_daemon_start(sock, args);
}

static void daemon_down(void)
{
	int st;

	if (dpid <= 0)
		return;
	st = h_daemon_stop(dpid, SIGTERM);
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		fprintf(stderr, "dedupd did not exit cleanly on SIGTERM (status %#x, log %s.log)\n",
			st, sock);
		daemon_bad_exits++;
	}
	dpid = -1;
}

/* The daemon is running (not a zombie) and answers stats. */
static void assert_alive(void)
{
	char path[64], line[256], state = '?';
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)dpid);
	f = fopen(path, "re");
	ck_assert_msg(f, "dedupd (pid %d) is gone", (int)dpid);
	if (fgets(line, sizeof(line), f)) {
		char *rp = strrchr(line, ')');
		if (rp && rp[1])
			state = rp[2];
	}
	fclose(f);
	ck_assert_msg(state != 'Z' && state != 'X', "dedupd died (state %c)", state);
	ck_assert_msg(h_stat(sock, "pages_scanned") >= 0, "dedupd does not answer stats");
}

static int daemon_fds(void)
{
	char path[64];
	struct dirent *de;
	DIR *d;
	int n = 0;

	snprintf(path, sizeof(path), "/proc/%d/fd", (int)dpid);
	d = opendir(path);
	ck_assert_ptr_nonnull(d);
	while ((de = readdir(d)))
		n += de->d_name[0] != '.';
	closedir(d);
	return n;
}

/* The daemon's fd count once it has stopped changing (it closes asynchronously). */
static int daemon_fds_steady(void)
{
	int last = daemon_fds(), same = 0;

	for (int i = 0; i < 200 && same < 10; i++) {
		int n;

		h_sleep_ms(10);
		n = daemon_fds();
		same = n == last ? same + 1 : 0;
		last = n;
	}
	return last;
}

/* Wait until the daemon holds at most `want` fds (it closes asynchronously). */
static bool daemon_fds_settle(int want, unsigned timeout_ms)
{
	uint64_t end = h_now_ms() + timeout_ms;

	do {
		if (daemon_fds() <= want)
			return true;
		h_sleep_ms(10);
	} while (h_now_ms() < end);
	return false;
}

/* ---- raw protocol helpers -------------------------------------------------- */

static int raw_connect(void)
{
	int fd = dd_sock_connect(sock);

	ck_assert_msg(fd >= 0, "connect %s: %s", sock, strerror(-fd));
	return fd;
}

static void raw_send(int fd, const void *buf, size_t len, int pass_fd)
{
	ck_assert_int_eq(dd_msg_send(fd, buf, len, pass_fd), 0);
}

/* Receive a RESULT: status want, text containing `words`; returns its seq. */
static uint32_t expect_result(int fd, int want, const char *words)
{
	const struct dd_msg_result *res = (const void *)rbuf;
	ssize_t n = dd_msg_recv(fd, rbuf, sizeof(rbuf), NULL, RECV_MS);
	char text[1024];

	ck_assert_msg(n > 0, "no RESULT from dedupd (%zd: %s)", n,
		      n < 0 ? strerror((int)-n) : "EOF");
	ck_assert_uint_eq(res->h.type, DD_MSG_RESULT);
	snprintf(text, sizeof(text), "%.*s", (int)res->text_len, res->text);
	ck_assert_msg(res->status == want, "status %d (%s), want %d (%s); text '%s'", res->status,
		      strerror(-res->status), want, strerror(-want), text);
	if (words)
		ck_assert_msg(strstr(text, words), "RESULT text '%s' does not say '%s'", text,
			      words);
	return res->h.seq;
}

/* The daemon closed the connection. */
static void expect_closed(int fd)
{
	ssize_t n = dd_msg_recv(fd, rbuf, sizeof(rbuf), NULL, RECV_MS);

	ck_assert_msg(n == 0, "connection not closed (recv %zd)", n);
	close(fd);
}

/* A connection the daemon keeps open: nothing arrives, no EOF. */
static void expect_open(int fd)
{
	ck_assert_int_eq(dd_msg_recv(fd, rbuf, sizeof(rbuf), NULL, 100), -ETIMEDOUT);
}

static int make_uffd(void)
{
	struct uffdio_api api = { .api = UFFD_API, .features = DD_UFFD_FEATURES };
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

	ck_assert_msg(fd >= 0, "userfaultfd: %s", strerror(errno));
	ck_assert_int_eq(ioctl(fd, UFFDIO_API, &api), 0);
	return fd;
}

/* HELLO with a fresh userfaultfd; returns the client id and token. */
static void raw_hello(int fd, uint64_t *id, uint64_t *token)
{
	struct dd_msg_hello m = { .uffd_features = DD_UFFD_FEATURES };
	const struct dd_msg_hello_ok *ok = (const void *)rbuf;
	int uffd = make_uffd();

	dd_msg_init(&m.h, DD_MSG_HELLO, sizeof(m), 1);
	raw_send(fd, &m, sizeof(m), uffd);
	close(uffd);
	ck_assert_int_eq(dd_msg_recv(fd, rbuf, sizeof(rbuf), NULL, RECV_MS), (ssize_t)sizeof(*ok));
	ck_assert_uint_eq(ok->h.type, DD_MSG_HELLO_OK);
	ck_assert_uint_eq(ok->h.seq, 1);
	*id = ok->client_id;
	*token = ok->token;
}

/* A pipe: we keep the read end and hand over the write end. */
static void make_pipe(int p[2])
{
	ck_assert_int_eq(pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
}

/* Every other copy of the write end is closed within timeout_ms. */
static bool pipe_released(int rfd, int timeout_ms)
{
	struct pollfd p = { .fd = rfd, .events = POLLIN };

	return poll(&p, 1, timeout_ms) == 1 && (p.revents & POLLHUP);
}

/* ---- raw: malformed packets ------------------------------------------------ */

START_TEST(test_garbage)
{
	char junk[300];
	int fd = raw_connect();

	for (size_t i = 0; i < sizeof(junk); i++)
		junk[i] = (char)(i * 131 + 7);
	ck_assert_int_eq(send(fd, junk, sizeof(junk), MSG_NOSIGNAL), (ssize_t)sizeof(junk));
	expect_result(fd, -EBADMSG, "malformed");
	expect_closed(fd);
	assert_alive();

	/* One byte. */
	fd = raw_connect();
	ck_assert_int_eq(send(fd, "x", 1, MSG_NOSIGNAL), 1);
	expect_result(fd, -EBADMSG, "malformed");
	expect_closed(fd);
	assert_alive();
}
END_TEST

START_TEST(test_truncated_header)
{
	struct dd_msg_hello m = { 0 };
	int fd = raw_connect();

	dd_msg_init(&m.h, DD_MSG_HELLO, sizeof(m), 3);
	ck_assert_int_eq(send(fd, &m, sizeof(m.h) - 4, MSG_NOSIGNAL), (ssize_t)sizeof(m.h) - 4);
	expect_result(fd, -EBADMSG, "malformed");
	expect_closed(fd);

	/* A whole header of a type that needs more. */
	fd = raw_connect();
	dd_msg_init(&m.h, DD_MSG_REGISTER, sizeof(m.h), 3);
	ck_assert_int_eq(send(fd, &m, sizeof(m.h), MSG_NOSIGNAL), (ssize_t)sizeof(m.h));
	expect_result(fd, -EBADMSG, "malformed");
	expect_closed(fd);
	assert_alive();
}
END_TEST

START_TEST(test_oversized)
{
	static char big[DD_MSG_MAX + 8192];
	struct dd_msg_admin *a = (void *)big;
	size_t sizes[] = { DD_MSG_MAX + 1, sizeof(big) };

	for (size_t i = 0; i < 2; i++) {
		int fd = raw_connect(), p[2];

		/* Well formed but for its size, and carrying an fd. */
		memset(big, 's', sizes[i]);
		dd_msg_init(&a->h, DD_MSG_ADMIN, sizes[i], 5);
		a->text_len = (uint32_t)(sizes[i] - sizeof(*a));
		make_pipe(p);
		raw_send(fd, big, sizes[i], p[1]);
		close(p[1]);
		expect_result(fd, -EMSGSIZE, "malformed");
		expect_closed(fd);
		ck_assert_msg(pipe_released(p[0], 1000),
			      "dedupd kept the fd of an oversized packet");
		close(p[0]);
	}
	assert_alive();
}
END_TEST

START_TEST(test_wrong_length)
{
	char buf[256];
	struct dd_msg_register *r = (void *)buf;
	struct dd_msg_admin *a = (void *)buf;
	int fd;

	/* REGISTER with 8 bytes too many, header agreeing. */
	memset(buf, 0, sizeof(buf));
	dd_msg_init(&r->h, DD_MSG_REGISTER, sizeof(*r) + 8, 4);
	fd = raw_connect();
	raw_send(fd, r, sizeof(*r) + 8, -1);
	expect_result(fd, -EBADMSG, "malformed");
	expect_closed(fd);

	/* Header length disagreeing with the packet. */
	dd_msg_init(&r->h, DD_MSG_REGISTER, sizeof(*r) + 8, 4);
	fd = raw_connect();
	raw_send(fd, r, sizeof(*r), -1);
	expect_result(fd, -EBADMSG, "malformed");
	expect_closed(fd);

	/* ADMIN whose text_len disagrees. */
	memset(buf, 0, sizeof(buf));
	dd_msg_init(&a->h, DD_MSG_ADMIN, sizeof(*a) + 5, 4);
	a->text_len = 50;
	memcpy(a->text, "stats", 5);
	fd = raw_connect();
	raw_send(fd, a, sizeof(*a) + 5, -1);
	expect_result(fd, -EBADMSG, "malformed");
	expect_closed(fd);

	/* Bad magic and bad version. */
	dd_msg_init(&r->h, DD_MSG_REGISTER, sizeof(*r), 4);
	r->h.magic = 0xdeadbeef;
	fd = raw_connect();
	raw_send(fd, r, sizeof(*r), -1);
	expect_result(fd, -EBADMSG, "malformed");
	expect_closed(fd);
	dd_msg_init(&r->h, DD_MSG_REGISTER, sizeof(*r), 4);
	r->h.version = 99;
	fd = raw_connect();
	raw_send(fd, r, sizeof(*r), -1);
	expect_result(fd, -EBADMSG, "malformed");
	expect_closed(fd);
	assert_alive();
}
END_TEST

START_TEST(test_unexpected_type)
{
	static const uint16_t types[] = { DD_MSG_HELLO_OK, DD_MSG_RESULT, DD_MSG_STORE,
					  DD_MSG_REMAP,	   DD_MSG_ZAP,	  DD_MSG_AGENT_REPLY };
	char buf[256];

	/* Well-formed messages that only the daemon sends. */
	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
		size_t len = dd_msg_min_len(types[i]);
		int fd = raw_connect();

		memset(buf, 0, sizeof(buf));
		dd_msg_init((void *)buf, types[i], len, 70 + (uint32_t)i);
		raw_send(fd, buf, len, -1);
		ck_assert_uint_eq(expect_result(fd, -EPROTO, "unexpected message type"), 70 + i);
		expect_closed(fd);
	}
	assert_alive();
}
END_TEST

/* ---- raw: the client handshake ---------------------------------------------- */

START_TEST(test_register_before_hello)
{
	struct dd_msg_register r = { .addr = 0x10000, .len = PG };
	struct dd_msg_unregister u = { .addr = 0x10000, .len = PG };
	int fd = raw_connect();

	dd_msg_init(&r.h, DD_MSG_REGISTER, sizeof(r), 11);
	raw_send(fd, &r, sizeof(r), -1);
	ck_assert_uint_eq(expect_result(fd, -EPROTO, "REGISTER before HELLO"), 11);
	/* The connection stays usable: the next message is answered too. */
	dd_msg_init(&u.h, DD_MSG_UNREGISTER, sizeof(u), 12);
	raw_send(fd, &u, sizeof(u), -1);
	ck_assert_uint_eq(expect_result(fd, -EPROTO, "UNREGISTER before HELLO"), 12);
	close(fd);
	assert_alive();
}
END_TEST

START_TEST(test_hello_without_fd)
{
	struct dd_msg_hello m = { .uffd_features = DD_UFFD_FEATURES };
	int fd = raw_connect();

	dd_msg_init(&m.h, DD_MSG_HELLO, sizeof(m), 21);
	raw_send(fd, &m, sizeof(m), -1);
	ck_assert_uint_eq(expect_result(fd, -EBADF, "userfaultfd"), 21);
	close(fd);
	assert_alive();
	ck_assert(h_wait_stat(sock, "clients", 0, false, 2000));
}
END_TEST

START_TEST(test_hello_with_pipe)
{
	struct dd_msg_hello m = { .uffd_features = DD_UFFD_FEATURES };
	int fd = raw_connect(), p[2];

	make_pipe(p);
	dd_msg_init(&m.h, DD_MSG_HELLO, sizeof(m), 22);
	raw_send(fd, &m, sizeof(m), p[1]);
	close(p[1]);
	ck_assert_uint_eq(expect_result(fd, -EBADF, "userfaultfd"), 22);
	ck_assert_msg(pipe_released(p[0], 1000), "dedupd kept the pipe it was handed in HELLO");
	close(p[0]);
	close(fd);
	assert_alive();
	ck_assert(h_wait_stat(sock, "clients", 0, false, 2000));
}
END_TEST

START_TEST(test_hello_twice)
{
	struct dd_msg_hello m = { .uffd_features = DD_UFFD_FEATURES };
	uint64_t id, token;
	int fd = raw_connect(), p[2];

	raw_hello(fd, &id, &token);
	ck_assert(h_wait_stat(sock, "clients", 1, false, 2000));
	/* A second HELLO, carrying an fd: refused, and the fd not kept. */
	make_pipe(p);
	dd_msg_init(&m.h, DD_MSG_HELLO, sizeof(m), 23);
	raw_send(fd, &m, sizeof(m), p[1]);
	close(p[1]);
	ck_assert_uint_eq(expect_result(fd, -EPROTO, "HELLO sent twice"), 23);
	ck_assert_msg(pipe_released(p[0], 1000), "dedupd leaked the fd of a refused second HELLO");
	close(p[0]);
	close(fd);
	assert_alive();
	ck_assert(h_wait_stat(sock, "clients", 0, false, 2000));
}
END_TEST

START_TEST(test_fd_on_other_messages_closed)
{
	struct dd_msg_admin *a = (void *)rbuf;
	int fd = raw_connect(), p[2];
	char cmd[] = "stats";

	/* An fd riding on an ADMIN request is dropped; the request is answered. */
	make_pipe(p);
	memset(a, 0, sizeof(*a));
	dd_msg_init(&a->h, DD_MSG_ADMIN, sizeof(*a) + 5, 31);
	a->text_len = 5;
	memcpy(a->text, cmd, 5);
	raw_send(fd, a, sizeof(*a) + 5, p[1]);
	close(p[1]);
	ck_assert_uint_eq(expect_result(fd, 0, "pages_shared"), 31);
	ck_assert_msg(pipe_released(p[0], 1000), "dedupd kept an fd sent with ADMIN");
	close(p[0]);
	close(fd);
	assert_alive();
}
END_TEST

START_TEST(test_agent_hello_wrong_token)
{
	struct dd_msg_agent_hello ah;
	uint64_t id, token;
	int ctl = raw_connect(), fd;

	raw_hello(ctl, &id, &token);

	/* Right client, wrong token. */
	fd = raw_connect();
	dd_msg_init(&ah.h, DD_MSG_AGENT_HELLO, sizeof(ah), 41);
	ah.client_id = id;
	ah.token = token ^ 0x1000;
	raw_send(fd, &ah, sizeof(ah), -1);
	ck_assert_uint_eq(expect_result(fd, -EPERM, "does not match"), 41);
	expect_closed(fd);

	/* A client id nobody has. */
	fd = raw_connect();
	ah.client_id = id + 1000;
	ah.token = token;
	raw_send(fd, &ah, sizeof(ah), -1);
	expect_result(fd, -EPERM, "does not match");
	expect_closed(fd);

	/* Control: the right pair is accepted, and only once. */
	fd = raw_connect();
	ah.client_id = id;
	ah.token = token;
	raw_send(fd, &ah, sizeof(ah), -1);
	expect_result(fd, 0, NULL);
	{
		int fd2 = raw_connect();

		raw_send(fd2, &ah, sizeof(ah), -1);
		expect_result(fd2, -EPERM, "does not match");
		expect_closed(fd2);
	}
	close(fd);
	close(ctl);
	assert_alive();
	ck_assert(h_wait_stat(sock, "clients", 0, false, 2000));
}
END_TEST

START_TEST(test_unregister_unknown)
{
	struct dd_msg_unregister u;
	uint64_t id, token;
	int fd = raw_connect();
	char *p = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	ck_assert_ptr_ne(p, MAP_FAILED);
	raw_hello(fd, &id, &token);
	dd_msg_init(&u.h, DD_MSG_UNREGISTER, sizeof(u), 51);
	u.addr = (uintptr_t)p;
	u.len = 4 * PG;
	raw_send(fd, &u, sizeof(u), -1);
	ck_assert_uint_eq(expect_result(fd, -ENOENT, "no registered region"), 51);
	/* The client connection survives its mistake. */
	expect_open(fd);
	close(fd);
	munmap(p, 4 * PG);
	assert_alive();
}
END_TEST

START_TEST(test_register_without_agent)
{
	struct dd_msg_register r = { 0 };
	uint64_t id, token;
	int fd = raw_connect();
	char *p = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	ck_assert_ptr_ne(p, MAP_FAILED);
	raw_hello(fd, &id, &token);
	dd_msg_init(&r.h, DD_MSG_REGISTER, sizeof(r), 52);
	r.addr = (uintptr_t)p;
	r.len = 4 * PG;
	raw_send(fd, &r, sizeof(r), -1);
	ck_assert_uint_eq(expect_result(fd, -ENOTCONN, "agent"), 52);
	close(fd);
	munmap(p, 4 * PG);
	assert_alive();
}
END_TEST

/*
 * An agent that says it hashes (HELLO flag) but answers HASH with a reply
 * that disagrees with the request: the daemon stops asking it and copies the
 * pages instead; nothing else changes.
 */
START_TEST(test_agent_bad_hash_reply)
{
	struct dd_msg_hello m = { .uffd_features = DD_UFFD_FEATURES, .flags = DD_HELLO_AGENT_HASH };
	const struct dd_msg_hello_ok *ok = (const void *)rbuf;
	struct dd_msg_agent_hello ah;
	struct dd_msg_register r = { 0 };
	struct dd_msg_hash_reply bad = { 0 };
	int ctl, ag, uffd, fd, hashes = 0;
	char *p;

	H_SKIP_UNLESS_ROOT();
	ctl = raw_connect();
	uffd = make_uffd();
	p = mmap(NULL, 64 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(p, MAP_FAILED);
	for (size_t i = 0; i < 64 * PG; i++)
		p[i] = (char)(i * 7 + i / PG);
	dd_msg_init(&m.h, DD_MSG_HELLO, sizeof(m), 1);
	raw_send(ctl, &m, sizeof(m), uffd);
	close(uffd);
	ck_assert_int_eq(dd_msg_recv(ctl, rbuf, sizeof(rbuf), NULL, RECV_MS), (ssize_t)sizeof(*ok));
	ag = raw_connect();
	dd_msg_init(&ah.h, DD_MSG_AGENT_HELLO, sizeof(ah), 2);
	ah.client_id = ok->client_id;
	ah.token = ok->token;
	raw_send(ag, &ah, sizeof(ah), -1);
	expect_result(ag, 0, NULL);
	dd_msg_init(&r.h, DD_MSG_REGISTER, sizeof(r), 3);
	r.addr = (uintptr_t)p;
	r.len = 64 * PG;
	raw_send(ctl, &r, sizeof(r), -1);
	expect_result(ctl, 0, NULL);
	/* Answer every HASH with one result too few, for 3 s. */
	for (uint64_t t0 = h_now_ms(); h_now_ms() - t0 < 3000;) {
		ssize_t n = dd_msg_recv(ag, rbuf, sizeof(rbuf), &fd, 200);
		const struct dd_msg_hash *h = (const void *)rbuf;
		uint32_t np = 0;

		if (fd >= 0)
			close(fd);
		if (n <= 0 || h->h.type != DD_MSG_HASH)
			continue;
		for (uint32_t i = 0; i < h->n; i++)
			np += h->e[i].npages;
		ck_assert_uint_gt(np, 0);
		dd_msg_init(&bad.h, DD_MSG_HASH_REPLY, sizeof(bad), h->h.seq);
		bad.n = 0; /* np expected */
		raw_send(ag, &bad, sizeof(bad), -1);
		hashes++;
	}
	ck_assert_int_eq(hashes, 1); /* asked once, never again */
	ck_assert_msg(h_wait_stat(sock, "pages_scanned", 64, true, 5000), "pages_scanned %lld",
		      (long long)h_stat(sock, "pages_scanned"));
	ck_assert_int_eq(h_stat(sock, "agent_hash_pages"), 0);
	close(ag);
	close(ctl);
	munmap(p, 64 * PG);
	assert_alive();
}
END_TEST

/* ---- raw: admin ------------------------------------------------------------- */

static void expect_admin(const char *cmd, int want, const char *words)
{
	char *text = NULL;
	int r = h_admin(sock, cmd, &text);

	ck_assert_msg(text, "no answer to '%s' (%d)", cmd, r);
	ck_assert_msg(r == want, "'%s': status %d, want %d; text '%s'", cmd, r, want, text);
	if (words)
		ck_assert_msg(strstr(text, words), "'%s': text '%s' does not say '%s'", cmd, text,
			      words);
	free(text);
}

/* A knob's value from `status`. */
static int64_t knob(const char *name)
{
	struct json_object *o, *k, *v;
	char *text = NULL;
	int64_t x = -1;

	ck_assert_int_eq(h_admin(sock, "status", &text), 0);
	o = json_tokener_parse(text);
	ck_assert_ptr_nonnull(o);
	if (json_object_object_get_ex(o, "knobs", &k) && json_object_object_get_ex(k, name, &v))
		x = json_object_get_int64(v);
	json_object_put(o);
	free(text);
	return x;
}

START_TEST(test_admin_unknown_command)
{
	char *longcmd = malloc(3000);

	expect_admin("frobnicate", -EINVAL, "unknown command 'frobnicate'");
	expect_admin("STATS", -EINVAL, "unknown command");
	expect_admin("", -EINVAL, "empty");
	memset(longcmd, 'a', 2999);
	longcmd[2999] = 0;
	expect_admin(longcmd, -EINVAL, "overlong");
	free(longcmd);
	assert_alive();
}
END_TEST

START_TEST(test_admin_set_errors)
{
	int64_t pts = knob("pages_to_scan"), slp = knob("sleep_millisecs");

	ck_assert_int_gt(pts, 0);
	expect_admin("set", -EINVAL, "KEY=VALUE");
	expect_admin("set pages_to_scan", -EINVAL, "KEY=VALUE");
	expect_admin("set no_such_knob=1", -ENOENT, "unknown key 'no_such_knob'");
	expect_admin("set =5", -ENOENT, "unknown key");
	/* The same rules and words as the configuration file (conf/conf.c). */
	expect_admin("set pages_to_scan=abc", -EINVAL, "bad value 'abc' for pages_to_scan");
	expect_admin("set pages_to_scan=", -EINVAL, "bad value");
	expect_admin("set pages_to_scan=-1", -EINVAL, "bad value");
	expect_admin("set pages_to_scan=12x", -EINVAL, "bad value");
	expect_admin("set pages_to_scan=0", -EINVAL, "out of range 1..");
	expect_admin("set pages_to_scan=99999999999999999999999", -EINVAL, "out of range");
	expect_admin("set sleep_millisecs=60001", -EINVAL, "out of range 0..60000");
	expect_admin("set zero_pages=2", -EINVAL, "expected yes/no");
	/* Nothing changed. */
	ck_assert_int_eq(knob("pages_to_scan"), pts);
	ck_assert_int_eq(knob("sleep_millisecs"), slp);
	assert_alive();
}
END_TEST

/* ---- raw: connection floods ------------------------------------------------- */

START_TEST(test_many_connections)
{
	enum { HELD = 500 };
	static int held[HELD];
	int base;

	assert_alive();
	base = daemon_fds_steady();
	/* Open and close at once. */
	for (int i = 0; i < 1000; i++)
		close(raw_connect());
	/* Open many, some with half a message, then drop them all. */
	for (int i = 0; i < HELD; i++) {
		held[i] = raw_connect();
		if (i % 3 == 0)
			ck_assert_int_eq(send(held[i], "DDUP", 4, MSG_NOSIGNAL), 4);
	}
	assert_alive();
	for (int i = 0; i < HELD; i++)
		close(held[i]);
	/* Connect, ask, leave without reading the answer. */
	for (int i = 0; i < 200; i++) {
		struct dd_msg_admin *a = (void *)rbuf;
		int fd = raw_connect();

		memset(a, 0, sizeof(*a));
		dd_msg_init(&a->h, DD_MSG_ADMIN, sizeof(*a) + 5, 1);
		a->text_len = 5;
		memcpy(a->text, "stats", 5);
		raw_send(fd, a, sizeof(*a) + 5, -1);
		close(fd);
	}
	assert_alive();
	ck_assert_msg(daemon_fds_settle(base, 3000), "dedupd holds %d fds, %d before the flood",
		      daemon_fds(), base);
}
END_TEST

static unsigned long long proc_cpu_ticks(pid_t pid)
{
	unsigned long long ut = 0, st = 0;
	char path[64], line[1024], *rp;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return 0;
	if (fgets(line, sizeof(line), f) && (rp = strrchr(line, ')')))
		sscanf(rp + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st);
	fclose(f);
	return ut + st;
}

START_TEST(test_fd_exhaustion_no_spin)
{
	enum { NOFILE = 48, N = 80 };
	struct rlimit rl, low;
	char own[256];
	unsigned long long t0, t1;
	long hz = sysconf(_SC_CLK_TCK);
	int fds[N], n = 0, alive;
	pid_t pid;

	/* A daemon of our own whose fd limit is far below its connection limit
	 * (as under systemd's default soft limit of 1024): running out of fds
	 * must not make it spin on the listening socket. */
	h_sock_path(own, sizeof(own), "badinput-nofile");
	ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
	low = rl;
	low.rlim_cur = NOFILE;
	ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &low), 0);
	pid = h_daemon_start(own, NULL);
	ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
	for (int i = 0; i < N; i++) {
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

		strcpy(sa.sun_path, own);
		if (fd < 0)
			break;
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 && errno != EAGAIN) {
			close(fd);
			continue;
		}
		fds[n++] = fd;
	}
	h_sleep_ms(100);
	t0 = proc_cpu_ticks(pid);
	h_sleep_ms(500);
	t1 = proc_cpu_ticks(pid);
	for (int i = 0; i < n; i++)
		close(fds[i]);
	h_sleep_ms(100);
	alive = h_stat(own, "clients") >= 0;
	h_daemon_stop(pid, SIGTERM);
	unlink(own);
	ck_assert_int_ge(n, NOFILE);
	ck_assert_msg(alive, "dedupd stopped answering after running out of fds");
	ck_assert_msg((t1 - t0) * 200 < (unsigned long long)hz * 30,
		      "dedupd burnt %llu%% of a CPU for 0.5 s while out of fds with %d connections "
		      "pending",
		      (t1 - t0) * 200 / (unsigned long long)hz, n);
	strcat(own, ".log");
	unlink(own);
}
END_TEST

START_TEST(test_client_churn_responsive)
{
	uint64_t id, token, t0, ms;
	char *text = NULL;

	/* Clients that come and go must not stall the daemon for the others:
	 * after two clients disconnect, a stats request is answered at once. */
	for (int i = 0; i < 2; i++) {
		int fd = raw_connect();

		raw_hello(fd, &id, &token);
		close(fd);
	}
	t0 = h_now_ms();
	ck_assert_int_eq(h_admin(sock, "stats", &text), 0);
	ms = h_now_ms() - t0;
	free(text);
	ck_assert_msg(ms < 500, "stats took %llu ms after two clients disconnected",
		      (unsigned long long)ms);
	assert_alive();
}
END_TEST

START_TEST(test_connection_limit)
{
	enum { N = 4300, LIMIT = 4096 /* MAX_CONNS in server.c */ };
	static int fds[N];
	const struct dd_msg_result *res = (const void *)rbuf;
	struct rlimit rl;
	int refused = 0, base;

	ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
	if (rl.rlim_cur < N + 200) {
		rl.rlim_cur = rl.rlim_max = N + 200;
		ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
	}
	base = daemon_fds_steady();
	for (int i = 0; i < N; i++)
		fds[i] = raw_connect();
	/* The last one is over the limit: once its refusal arrives, the daemon
	 * has accepted (or refused) every earlier one. */
	expect_result(fds[N - 1], -EMFILE, "too many connections");
	refused = 1;
	for (int i = 0; i < N - 1; i++) {
		ssize_t n = dd_msg_recv(fds[i], rbuf, sizeof(rbuf), NULL, 0);

		if (n == -ETIMEDOUT)
			continue; /* accepted and waiting for a request */
		ck_assert_msg(n > 0, "connection %d: %zd", i, n);
		ck_assert_uint_eq(res->h.type, DD_MSG_RESULT);
		ck_assert_int_eq(res->status, -EMFILE);
		ck_assert_msg(i >= LIMIT - 100, "connection %d refused, below the limit", i);
		refused++;
	}
	ck_assert_int_ge(refused, N - LIMIT);
	ck_assert_int_le(refused, N - LIMIT + 100);
	for (int i = 0; i < N; i++)
		close(fds[i]);
	assert_alive();
	ck_assert_msg(daemon_fds_settle(base, 5000), "dedupd holds %d fds, %d before", daemon_fds(),
		      base);
}
END_TEST

/* ---- libdedup ------------------------------------------------------------- */

static void lib_setup(void)
{
	setenv("DEDUPD_SOCKET", sock, 1);
}

static void assert_lib_err(int r, int want, const char *words)
{
	const char *e = dedup_strerror();

	ck_assert_msg(r == want, "dedup_register: %d (%s), want %d (%s); dedup_strerror '%s'", r,
		      strerror(-r), want, strerror(-want), e);
	ck_assert_msg(e && strstr(e, words), "dedup_strerror() '%s' does not say '%s'", e ? e : "",
		      words);
}

static char *map_anon(size_t pages, int flags)
{
	char *p = mmap(NULL, pages * PG, PROT_READ | PROT_WRITE, flags | MAP_ANONYMOUS, -1, 0);

	ck_assert_ptr_ne(p, MAP_FAILED);
	memset(p, 0x33, pages * PG);
	return p;
}

START_TEST(test_lib_unmapped)
{
	char *q = map_anon(2, MAP_PRIVATE), *p, hex[32];

	lib_setup();
	/* Connect first: the library's own mappings (agent stack, thread) must
	 * not land in the holes used below. */
	ck_assert_int_eq(dedup_register(q, 2 * PG, NULL), 0);
	/* A hole made by munmap() can be refilled at once by someone else's
	 * mmap (a sanitizer's fake stacks, say), so use a low range that nothing
	 * maps: just above vm.mmap_min_addr. */
	p = (char *)(uintptr_t)0x200000;
	ck_assert_msg(msync(p, 4 * PG, MS_ASYNC) < 0 && errno == ENOMEM, "%p is mapped", p);
	assert_lib_err(dedup_register(p, 4 * PG, NULL), -EFAULT, "not mapped");
	snprintf(hex, sizeof(hex), "%#llx", (unsigned long long)(uintptr_t)p);
	ck_assert_msg(strstr(dedup_strerror(), hex), "'%s' does not name %s", dedup_strerror(),
		      hex);
	/* Partly mapped: the message names where the hole starts. */
	ck_assert_ptr_eq(mmap(p, 2 * PG, PROT_READ | PROT_WRITE,
			      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0),
			 p);
	assert_lib_err(dedup_register(p, 4 * PG, NULL), -EFAULT, "not mapped");
	snprintf(hex, sizeof(hex), "%#llx", (unsigned long long)(uintptr_t)(p + 2 * PG));
	ck_assert_msg(strstr(dedup_strerror(), hex), "'%s' does not name %s", dedup_strerror(),
		      hex);
	/* The client stays connected and can register what is its own. */
	ck_assert_int_eq(dedup_connected(), 1);
	ck_assert_int_eq(dedup_register(p, 2 * PG, NULL), 0);
	ck_assert_str_eq(dedup_strerror(), "");
	assert_alive();
}
END_TEST

START_TEST(test_lib_shared)
{
	char *p = map_anon(4, MAP_SHARED);

	lib_setup();
	assert_lib_err(dedup_register(p, 4 * PG, NULL), -EINVAL, "shared");
	assert_alive();
}
END_TEST

START_TEST(test_lib_file_mapping)
{
	char path[] = "/tmp/check_badinput-XXXXXX";
	int fd = mkstemp(path);
	char *p;

	lib_setup();
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, 4 * PG), 0);
	p = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	ck_assert_ptr_ne(p, MAP_FAILED);
	memset(p, 1, 4 * PG);
	assert_lib_err(dedup_register(p, 4 * PG, NULL), -EINVAL, path);
	ck_assert(strstr(dedup_strerror(), "file"));
	munmap(p, 4 * PG);
	close(fd);
	unlink(path);
	assert_alive();
}
END_TEST

START_TEST(test_lib_read_only)
{
	char *p = mmap(NULL, 4 * PG, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	lib_setup();
	ck_assert_ptr_ne(p, MAP_FAILED);
	assert_lib_err(dedup_register(p, 4 * PG, NULL), -EINVAL, "read-write");
	assert_alive();
}
END_TEST

START_TEST(test_lib_bad_range)
{
	char *p = map_anon(4, MAP_PRIVATE);

	lib_setup();
	assert_lib_err(dedup_register(p + 8, 2 * PG, NULL), -EINVAL, "multiples of 4096");
	assert_lib_err(dedup_register(p, 0, NULL), -EINVAL, "multiples of 4096");
	assert_lib_err(dedup_register(p, PG + 1, NULL), -EINVAL, "multiples of 4096");
	assert_lib_err(dedup_register((void *)(uintptr_t)-PG, 2 * PG, NULL), -EINVAL,
		       "multiples of 4096");
	{
		struct dedup_opts o = { .domain = 99 };

		assert_lib_err(dedup_register(p, PG, &o), -EINVAL, "domain");
	}
	assert_alive();
}
END_TEST

START_TEST(test_lib_overlap)
{
	char *p = map_anon(8, MAP_PRIVATE);

	lib_setup();
	ck_assert(h_wait_stat(sock, "regions", 0, false, 3000));
	ck_assert_int_eq(dedup_register(p + 2 * PG, 4 * PG, NULL), 0);
	ck_assert_str_eq(dedup_strerror(), "");
	ck_assert(h_wait_stat(sock, "regions", 1, false, 3000));
	/* The same range again is already registered (QEMU offers RAM twice). */
	ck_assert_int_eq(dedup_register(p + 2 * PG, 4 * PG, NULL), 0);
	ck_assert_int_eq(h_stat(sock, "regions"), 1);
	assert_lib_err(dedup_register(p, 3 * PG, NULL), -EEXIST, "overlaps");
	assert_lib_err(dedup_register(p + 5 * PG, 3 * PG, NULL), -EEXIST, "overlaps");
	assert_lib_err(dedup_register(p + 3 * PG, PG, NULL), -EEXIST, "overlaps");
	assert_lib_err(dedup_register(p, 8 * PG, NULL), -EEXIST, "overlaps");
	/* Adjacent ranges do not overlap. */
	ck_assert_int_eq(dedup_register(p, 2 * PG, NULL), 0);
	ck_assert_int_eq(dedup_register(p + 6 * PG, 2 * PG, NULL), 0);
	ck_assert_int_eq(h_stat(sock, "regions"), 3);

	/* Unregister: only an exact registered range. */
	ck_assert_int_eq(dedup_unregister(p + 2 * PG, 2 * PG), -ENOENT);
	ck_assert(strstr(dedup_strerror(), "no registered region"));
	ck_assert_int_eq(dedup_unregister(p + 2 * PG, 4 * PG), 0);
	ck_assert_int_eq(dedup_unregister(p + 2 * PG, 4 * PG), -ENOENT);
	ck_assert_int_eq(h_stat(sock, "regions"), 2);
	/* The bytes are untouched by all this. */
	for (size_t i = 0; i < 8 * PG; i++)
		if (p[i] != 0x33)
			ck_abort_msg("byte %zu changed to %#x", i, (unsigned char)p[i]);
	assert_alive();
}
END_TEST

START_TEST(test_lib_no_daemon)
{
	char path[300], *p = map_anon(2, MAP_PRIVATE);
	int r;

	snprintf(path, sizeof(path), "%s/test-sockets/nobody-here-%d.sock", h_build(),
		 (int)getpid());
	setenv("DEDUPD_SOCKET", path, 1);
	r = dedup_register(p, 2 * PG, NULL);
	ck_assert_msg(r == -ENOENT || r == -ECONNREFUSED, "dedup_register: %d", r);
	ck_assert(strstr(dedup_strerror(), "cannot connect"));
	ck_assert(strstr(dedup_strerror(), path));
	ck_assert_int_eq(dedup_connected(), 0);
	ck_assert_int_eq(dedup_unregister(p, 2 * PG), -ENOTCONN);
}
END_TEST

/* ---- dedupctl ------------------------------------------------------------ */

/* Run build/dedupctl with args (NULL-terminated); capture output; exit code. */
static int ctl(char **out, char **err, ...)
{
	char exe[256], ofile[] = "/tmp/check_badinput-out-XXXXXX",
		       efile[] = "/tmp/check_badinput-err-XXXXXX";
	const char *argv[16];
	int ofd = mkstemp(ofile), efd = mkstemp(efile), n = 0, st;
	va_list ap;
	pid_t pid;

	ck_assert(ofd >= 0 && efd >= 0);
	snprintf(exe, sizeof(exe), "%s/dedupctl", h_build());
	argv[n++] = exe;
	va_start(ap, err);
	while (n < 15 && (argv[n] = va_arg(ap, const char *)))
		n++;
	va_end(ap);
	argv[n] = NULL;
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		dup2(ofd, 1);
		dup2(efd, 2);
		execv(exe, (char *const *)argv);
		_exit(127);
	}
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	for (int i = 0; i < 2; i++) {
		int fd = i ? efd : ofd;
		char **dst = i ? err : out;
		off_t len = lseek(fd, 0, SEEK_END);

		*dst = calloc(1, (size_t)len + 1);
		ck_assert_int_eq(pread(fd, *dst, (size_t)len, 0), len);
		close(fd);
	}
	unlink(ofile);
	unlink(efile);
	ck_assert_msg(WIFEXITED(st), "dedupctl died (status %#x)", st);
	return WEXITSTATUS(st);
}

static void assert_says(const char *text, const char *words)
{
	ck_assert_msg(strstr(text, words), "'%s' does not say '%s'", text, words);
}

START_TEST(test_ctl_usage_errors)
{
	char *o, *e;

	ck_assert_int_eq(ctl(&o, &e, "--socket", sock, "frobnicate", NULL), 2);
	assert_says(e, "unknown command 'frobnicate'");
	ck_assert_str_eq(o, "");
	free(o), free(e);
	ck_assert_int_eq(ctl(&o, &e, "--socket", sock, "set", "pages_to_scan", NULL), 2);
	assert_says(e, "KEY=VALUE");
	free(o), free(e);
	ck_assert_int_eq(ctl(&o, &e, "--socket", sock, "set", NULL), 2);
	assert_says(e, "KEY=VALUE");
	free(o), free(e);
	ck_assert_int_eq(ctl(&o, &e, "--socket", sock, NULL), 2);
	assert_says(e, "missing command");
	free(o), free(e);
	ck_assert_int_eq(ctl(&o, &e, "--no-such-option", "stats", NULL), 2);
	free(o), free(e);
	ck_assert_int_eq(ctl(&o, &e, "--help", NULL), 0);
	assert_says(o, "Exit status");
	free(o), free(e);
	assert_alive();
}
END_TEST

START_TEST(test_ctl_unreachable)
{
	char path[300], *o, *e;

	snprintf(path, sizeof(path), "%s/test-sockets/nobody-here-%d.sock", h_build(),
		 (int)getpid());
	ck_assert_int_eq(ctl(&o, &e, "--socket", path, "stats", NULL), 3);
	assert_says(e, "cannot reach");
	assert_says(e, path);
	free(o), free(e);
	/* Through the environment too. */
	setenv("DEDUPD_SOCKET", path, 1);
	ck_assert_int_eq(ctl(&o, &e, "status", NULL), 3);
	assert_says(e, "cannot reach");
	free(o), free(e);
}
END_TEST

START_TEST(test_ctl_stats_json)
{
	static const char *const keys[] = { "pages_scanned",  "pages_shared",	"pages_sharing",
					    "pages_unshared", "pages_volatile", "zero_pages",
					    "full_scans",     "clients",	"regions",
					    "bytes_saved_net" };
	struct json_object *o, *v;
	char *out, *err;

	ck_assert_int_eq(ctl(&out, &err, "--socket", sock, "stats", "--json", NULL), 0);
	o = json_tokener_parse(out);
	ck_assert_msg(o && json_object_is_type(o, json_type_object), "not a JSON object: '%s'",
		      out);
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		ck_assert_msg(json_object_object_get_ex(o, keys[i], &v), "no key %s in %s", keys[i],
			      out);
		ck_assert_msg(json_object_is_type(v, json_type_int), "%s is not an integer",
			      keys[i]);
		if (strcmp(keys[i], "bytes_saved_net"))
			ck_assert_int_ge(json_object_get_int64(v), 0);
	}
	json_object_put(o);
	free(out), free(err);

	/* --json before the command, and the table form. */
	ck_assert_int_eq(ctl(&out, &err, "--json", "--socket", sock, "stats", NULL), 0);
	o = json_tokener_parse(out);
	ck_assert_ptr_nonnull(o);
	json_object_put(o);
	free(out), free(err);
	ck_assert_int_eq(ctl(&out, &err, "--socket", sock, "stats", NULL), 0);
	assert_says(out, "pages_sharing");
	ck_assert_ptr_null(json_tokener_parse(out));
	free(out), free(err);
	assert_alive();
}
END_TEST

START_TEST(test_ctl_set)
{
	struct json_object *o, *k, *v;
	char *out, *err;
	int64_t old = knob("sleep_millisecs"), pts = knob("pages_to_scan");

	ck_assert_int_eq(ctl(&out, &err, "--socket", sock, "set", "pages_to_scan=0", NULL), 1);
	assert_says(err, "pages_to_scan 0 out of range");
	assert_says(err, "out of range 1..");
	free(out), free(err);
	ck_assert_int_eq(knob("pages_to_scan"), pts);

	ck_assert_int_eq(ctl(&out, &err, "--socket", sock, "set", "no_such=1", NULL), 1);
	assert_says(err, "unknown key");
	free(out), free(err);

	ck_assert_int_eq(ctl(&out, &err, "--socket", sock, "set", "sleep_millisecs=5", NULL), 0);
	free(out), free(err);
	ck_assert_int_eq(ctl(&out, &err, "--socket", sock, "status", "--json", NULL), 0);
	o = json_tokener_parse(out);
	ck_assert_ptr_nonnull(o);
	ck_assert(json_object_object_get_ex(o, "knobs", &k));
	ck_assert(json_object_object_get_ex(k, "sleep_millisecs", &v));
	ck_assert_int_eq(json_object_get_int64(v), 5);
	json_object_put(o);
	free(out), free(err);

	/* Put it back for the other tests. */
	{
		char arg[64];

		snprintf(arg, sizeof(arg), "sleep_millisecs=%lld", (long long)old);
		ck_assert_int_eq(ctl(&out, &err, "--socket", sock, "set", arg, NULL), 0);
		free(out), free(err);
	}
	ck_assert_int_eq(knob("sleep_millisecs"), old);
	assert_alive();
}
END_TEST

START_TEST(test_set_refused_for_non_root)
{
	int64_t old = knob("sleep_millisecs");
	pid_t pid;
	int st;

	H_SKIP_UNLESS_ROOT();
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		char *text = NULL, *o, *e;
		int r;

		if (setgroups(0, NULL) < 0 || setresgid(65534, 65534, 65534) < 0 ||
		    setresuid(65534, 65534, 65534) < 0 || geteuid() != 65534)
			_exit(20);
		r = h_admin(sock, "set sleep_millisecs=7", &text);
		if (r != -EPERM || !text || !strstr(text, "only root"))
			_exit(21);
		free(text);
		/* Reading is open to everyone. */
		if (h_admin(sock, "stats", &text) != 0)
			_exit(22);
		free(text);
		/* The CLI says so too, with exit code 1. */
		if (ctl(&o, &e, "--socket", sock, "set", "sleep_millisecs=7", NULL) != 1 ||
		    !strstr(e, "only root"))
			_exit(23);
		_exit(0);
	}
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
		      "non-root child failed (exit %d: 20 setuid, 21 set not refused with -EPERM, "
		      "22 stats refused, 23 dedupctl set not refused)",
		      WIFEXITED(st) ? WEXITSTATUS(st) : -1);
	ck_assert_int_eq(knob("sleep_millisecs"), old);
	assert_alive();
}
END_TEST

/* ---- suite --------------------------------------------------------------- */

static TCase *daemon_tcase(const char *name)
{
	TCase *tc = tcase_create(name);

	tcase_add_unchecked_fixture(tc, daemon_up, daemon_down);
	tcase_set_timeout(tc, 30);
	return tc;
}

Suite *badinput_suite(void)
{
	Suite *s = suite_create("badinput");
	TCase *tc;

	tc = daemon_tcase("raw");
	tcase_add_test(tc, test_garbage);
	tcase_add_test(tc, test_truncated_header);
	tcase_add_test(tc, test_oversized);
	tcase_add_test(tc, test_wrong_length);
	tcase_add_test(tc, test_unexpected_type);
	tcase_add_test(tc, test_register_before_hello);
	tcase_add_test(tc, test_hello_without_fd);
	tcase_add_test(tc, test_hello_with_pipe);
	tcase_add_test(tc, test_hello_twice);
	tcase_add_test(tc, test_fd_on_other_messages_closed);
	tcase_add_test(tc, test_agent_hello_wrong_token);
	tcase_add_test(tc, test_unregister_unknown);
	tcase_add_test(tc, test_register_without_agent);
	tcase_add_test(tc, test_agent_bad_hash_reply);
	tcase_add_test(tc, test_admin_unknown_command);
	tcase_add_test(tc, test_admin_set_errors);
	tcase_add_test(tc, test_many_connections);
	tcase_add_test(tc, test_connection_limit);
	tcase_add_test(tc, test_client_churn_responsive);
	tcase_add_test(tc, test_fd_exhaustion_no_spin);
	suite_add_tcase(s, tc);

	tc = daemon_tcase("libdedup");
	tcase_add_test(tc, test_lib_unmapped);
	tcase_add_test(tc, test_lib_shared);
	tcase_add_test(tc, test_lib_file_mapping);
	tcase_add_test(tc, test_lib_read_only);
	tcase_add_test(tc, test_lib_bad_range);
	tcase_add_test(tc, test_lib_overlap);
	tcase_add_test(tc, test_lib_no_daemon);
	suite_add_tcase(s, tc);

	tc = daemon_tcase("dedupctl");
	tcase_add_test(tc, test_ctl_usage_errors);
	tcase_add_test(tc, test_ctl_unreachable);
	tcase_add_test(tc, test_ctl_stats_json);
	tcase_add_test(tc, test_ctl_set);
	tcase_add_test(tc, test_set_refused_for_non_root);
	suite_add_tcase(s, tc);
	return s;
}

/* The daemon's log must hold no sanitizer or crash report. */
static int scan_daemon_log(void)
{
	static const char *const bad[] = { "AddressSanitizer", "runtime error:", "LeakSanitizer",
					   "Segmentation fault" };
	char log[300], line[1024];
	FILE *f;
	int hits = 0;

	snprintf(log, sizeof(log), "%s.log", sock);
	f = fopen(log, "re");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
			if (strstr(line, bad[i])) {
				fprintf(stderr, "dedupd log %s: %s", log, line);
				hits++;
			}
	fclose(f);
	return hits;
}

int main(void)
{
	SRunner *sr = srunner_create(badinput_suite());
	int failed;
	char log[300];

	/* Start from an empty log: every daemon of this run appends to it. */
	h_sock_path(sock, sizeof(sock), "badinput");
	snprintf(log, sizeof(log), "%s.log", sock);
	unlink(log);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	if (daemon_bad_exits || scan_daemon_log()) {
		fprintf(stderr, "ERROR: dedupd exited uncleanly or its log has crash reports\n");
		failed++;
	}
	if (!failed)
		unlink(log);
	return failed ? 1 : 0;
}
