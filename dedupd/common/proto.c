// SPDX-License-Identifier: MIT
/*
 * Framing and validation of dedupd protocol messages (see proto.h). This is the
 * one place that turns bytes from another process into typed messages, so every
 * size is checked here before anyone looks inside. Shared by the daemon,
 * libdedup (including its agent thread, which must not allocate) and dedupctl.
 */
#include "dedupd/common/proto.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

void dd_msg_init(struct dd_msg_hdr *h, enum dd_msg_type type, size_t len, uint32_t seq)
{
	h->magic = DD_PROTO_MAGIC;
	h->version = DD_PROTO_VERSION;
	h->type = (uint16_t)type;
	h->len = (uint32_t)len;
	h->seq = seq;
}

size_t dd_msg_min_len(uint16_t type)
{
	switch (type) {
	case DD_MSG_HELLO:
		return sizeof(struct dd_msg_hello);
	case DD_MSG_HELLO_OK:
		return sizeof(struct dd_msg_hello_ok);
	case DD_MSG_AGENT_HELLO:
		return sizeof(struct dd_msg_agent_hello);
	case DD_MSG_REGISTER:
		return sizeof(struct dd_msg_register);
	case DD_MSG_UNREGISTER:
		return sizeof(struct dd_msg_unregister);
	case DD_MSG_RESULT:
		return sizeof(struct dd_msg_result);
	case DD_MSG_STORE:
		return sizeof(struct dd_msg_store);
	case DD_MSG_REMAP:
	case DD_MSG_ZAP:
		return sizeof(struct dd_msg_batch);
	case DD_MSG_AGENT_REPLY:
		return sizeof(struct dd_msg_agent_reply);
	case DD_MSG_ADMIN:
		return sizeof(struct dd_msg_admin);
	case DD_MSG_BALLOON:
		return sizeof(struct dd_msg_balloon);
	case DD_MSG_BALLOON_INFO:
		return sizeof(struct dd_msg_balloon_info);
	case DD_MSG_HASH:
		return sizeof(struct dd_msg_hash);
	case DD_MSG_HASH_REPLY:
		return sizeof(struct dd_msg_hash_reply);
	default:
		return 0;
	}
}

/* A header of head bytes and then n elements of elem bytes, n at most max:
 * 0 if len is exactly that, else -EBADMSG (n is checked before it multiplies). */
static int array_len(size_t len, size_t head, uint32_t n, uint32_t max, size_t elem)
{
	if (n > max)
		return -EBADMSG;
	return len == head + (size_t)n * elem ? 0 : -EBADMSG;
}

/* Variable parts must agree with the length exactly. */
static int check_body(const void *buf, size_t len)
{
	const struct dd_msg_hdr *h = buf;

	switch (h->type) {
	case DD_MSG_RESULT: {
		const struct dd_msg_result *m = buf;
		return len == sizeof(*m) + m->text_len ? 0 : -EBADMSG;
	}
	case DD_MSG_REMAP:
	case DD_MSG_ZAP: {
		const struct dd_msg_batch *m = buf;
		return array_len(len, sizeof(*m), m->n, DD_BATCH_MAX, sizeof(m->e[0]));
	}
	case DD_MSG_AGENT_REPLY: {
		const struct dd_msg_agent_reply *m = buf;
		return array_len(len, sizeof(*m), m->n, DD_BATCH_MAX, sizeof(m->res[0]));
	}
	case DD_MSG_HASH: {
		const struct dd_msg_hash *m = buf;
		return array_len(len, sizeof(*m), m->n, DD_HASH_MAX, sizeof(m->e[0]));
	}
	case DD_MSG_HASH_REPLY: {
		const struct dd_msg_hash_reply *m = buf;
		return array_len(len, sizeof(*m), m->n, DD_HASH_MAX, sizeof(m->res[0]));
	}
	case DD_MSG_ADMIN: {
		const struct dd_msg_admin *m = buf;
		return len == sizeof(*m) + m->text_len ? 0 : -EBADMSG;
	}
	default:
		return len == dd_msg_min_len(h->type) ? 0 : -EBADMSG;
	}
}

int dd_msg_send(int sock, const void *msg, size_t len, int fd)
{
	struct iovec iov = { .iov_base = (void *)msg, .iov_len = len };
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	ssize_t n;

	if (fd >= 0) {
		struct cmsghdr *c;

		memset(&u, 0, sizeof(u));
		mh.msg_control = u.buf;
		mh.msg_controllen = sizeof(u.buf);
		c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof(int));
	}
	do
		n = sendmsg(sock, &mh, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	return (size_t)n == len ? 0 : -EMSGSIZE;
}

static int wait_readable(int sock, int timeout_ms)
{
	struct pollfd p = { .fd = sock, .events = POLLIN };
	int r;

	if (timeout_ms < 0)
		return 0;
	do
		r = poll(&p, 1, timeout_ms);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return -errno;
	return r == 0 ? -ETIMEDOUT : 0;
}

static void take_fds(struct msghdr *mh, int *fd)
{
	struct cmsghdr *c;

	for (c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR(mh, c)) {
		int nfd, i, tmp;

		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		nfd = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
		for (i = 0; i < nfd; i++) {
			memcpy(&tmp, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
			if (fd && *fd < 0)
				*fd = tmp;
			else
				close(tmp); /* more fds than expected: never leak them */
		}
	}
}

ssize_t dd_msg_recv(int sock, void *buf, size_t cap, int *fd, int timeout_ms)
{
	struct iovec iov = { .iov_base = buf, .iov_len = cap };
	union {
		char buf[CMSG_SPACE(sizeof(int) * 4)];
		struct cmsghdr align;
	} u;
	struct msghdr mh = {
		.msg_iov = &iov,
		.msg_iovlen = 1,
		.msg_control = u.buf,
		.msg_controllen = sizeof(u.buf),
	};
	const struct dd_msg_hdr *h = buf;
	ssize_t n;
	int r;

	if (fd)
		*fd = -1;
	r = wait_readable(sock, timeout_ms);
	if (r < 0)
		return r;
	do
		n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	/* An empty packet reads as the end of the connection: its fds are closed. */
	take_fds(&mh, n > 0 ? fd : NULL);
	if (n == 0)
		return 0;
	if (mh.msg_flags & MSG_TRUNC)
		r = -EMSGSIZE;
	else if ((size_t)n < sizeof(*h) || h->magic != DD_PROTO_MAGIC ||
		 h->version != DD_PROTO_VERSION || h->len != (size_t)n ||
		 dd_msg_min_len(h->type) == 0 || (size_t)n < dd_msg_min_len(h->type))
		r = -EBADMSG;
	else
		r = check_body(buf, (size_t)n);
	if (r < 0) {
		if (fd && *fd >= 0) {
			close(*fd);
			*fd = -1;
		}
		return r;
	}
	return n;
}

int dd_msg_send_result(int sock, uint32_t seq, int status, uint64_t value, const char *text)
{
	char buf[DD_MSG_MAX];
	struct dd_msg_result *m = (struct dd_msg_result *)buf;
	size_t tl = text ? strnlen(text, DD_TEXT_MAX) : 0;

	memset(m, 0, sizeof(*m));
	dd_msg_init(&m->h, DD_MSG_RESULT, sizeof(*m) + tl, seq);
	m->status = status;
	m->value = value;
	m->text_len = (uint32_t)tl;
	if (tl)
		memcpy(m->text, text, tl);
	return dd_msg_send(sock, m, sizeof(*m) + tl, -1);
}

int dd_sock_connect(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int s;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (s < 0)
		return -errno;
	if (connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = -errno;
		close(s);
		return e;
	}
	return s;
}
