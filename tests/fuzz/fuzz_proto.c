// SPDX-License-Identifier: MIT
/*
 * Fuzz the one place that turns another process's bytes into typed messages:
 * dd_msg_recv() and its validation (dd_msg_min_len(), check_body()), reached
 * the way the daemon and libdedup reach it, through an AF_UNIX SOCK_SEQPACKET
 * socketpair. The input is one packet, sent with an fd attached (SCM_RIGHTS),
 * and received twice: into a buffer of DD_MSG_MAX bytes, and into one smaller
 * than the packet (the truncation path).
 *
 * Invariants checked on top of the sanitizers:
 *  - an accepted message really is what its type says: the fixed part is
 *    there, and the variable part (RESULT/ADMIN text, REMAP/ZAP entries,
 *    AGENT_REPLY results) lies inside the packet. The consumers are imitated
 *    on a copy of exactly the accepted length, so ASan sees any overread;
 *  - a refused message gives no fd back, and no fd is ever leaked.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dedupd/common/proto.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int sv[2] = { -1, -1 };
static volatile uint64_t sink;

/* Read what a consumer of an accepted message of length n would read. */
static void consume(const uint8_t *msg, size_t n)
{
	const struct dd_msg_hdr *h = (const void *)msg;
	uint64_t acc = 0;

	FZ_ASSERT(n >= sizeof(*h) && h->len == n && dd_msg_min_len(h->type) != 0 &&
		      n >= dd_msg_min_len(h->type),
		  "accepted a message of %zu bytes, type %u", n, h->type);
	switch (h->type) {
	case DD_MSG_RESULT: {
		const struct dd_msg_result *m = (const void *)msg;

		FZ_ASSERT(m->text_len <= n - sizeof(*m), "text_len %u in %zu bytes", m->text_len,
			  n);
		for (uint32_t i = 0; i < m->text_len; i++)
			acc += (uint8_t)m->text[i];
		break;
	}
	case DD_MSG_ADMIN: {
		const struct dd_msg_admin *m = (const void *)msg;

		for (uint32_t i = 0; i < m->text_len; i++)
			acc += (uint8_t)m->text[i];
		break;
	}
	case DD_MSG_REMAP:
	case DD_MSG_ZAP: {
		const struct dd_msg_batch *m = (const void *)msg;

		FZ_ASSERT(m->n <= DD_BATCH_MAX, "batch of %u entries", m->n);
		for (uint32_t i = 0; i < m->n; i++)
			acc += m->e[i].addr + m->e[i].store_off + m->e[i].npages + m->e[i].domain;
		break;
	}
	case DD_MSG_AGENT_REPLY: {
		const struct dd_msg_agent_reply *m = (const void *)msg;

		FZ_ASSERT(m->n <= DD_BATCH_MAX, "reply of %u entries", m->n);
		for (uint32_t i = 0; i < m->n; i++)
			acc += (uint32_t)m->res[i];
		break;
	}
	default:
		/* fixed-size types: the whole struct is read */
		for (size_t i = 0; i < n; i++)
			acc += msg[i];
	}
	sink += acc;
}

static void recv_one(const uint8_t *data, size_t size, size_t cap)
{
	uint8_t *buf = malloc(cap ? cap : 1); /* exactly cap: ASan guards the end */
	int fd = -1, attach = open("/dev/null", O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (!buf || attach < 0)
		abort();
	if (dd_msg_send(sv[0], data, size, attach) < 0)
		abort(); /* the socket takes any packet up to DD_MSG_MAX */
	close(attach);
	n = dd_msg_recv(sv[1], buf, cap, &fd, 1000);
	FZ_ASSERT(n != -ETIMEDOUT, "no packet after sending %zu bytes", size);
	if (n > 0) {
		uint8_t *copy = malloc((size_t)n);

		FZ_ASSERT((size_t)n == size && (size_t)n <= cap, "%zd bytes from a %zu-byte packet",
			  n, size);
		memcpy(copy, buf, (size_t)n);
		consume(copy, (size_t)n);
		free(copy);
	} else {
		FZ_ASSERT(fd == -1, "refused message (%zd) returned fd %d", n, fd);
	}
	if (fd >= 0)
		close(fd);
	free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	int mark;

	if (size > DD_MSG_MAX)
		return -1; /* dd_msg_send() of anything larger is not a message */
	if (sv[0] < 0) {
		int buf = 4 * DD_MSG_MAX;

		if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
			abort();
		setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
		setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &buf, sizeof(buf));
	}
	mark = fz_fd_mark();
	recv_one(data, size, DD_MSG_MAX);
	if (size > 1)
		recv_one(data, size, size / 2);
	fz_fd_check(mark, "dd_msg_recv");
	return 0;
}
