// SPDX-License-Identifier: MIT
/*
 * Fuzz the QMP backend (dedupd/reclaim/balloon_qmp.c): its line reader, JSON
 * handling, event skipping, id matching, error classes and the figures it
 * derives. A client names the VMM socket in BALLOON_INFO, so whoever runs a
 * client can put any peer there: what QEMU "says" is untrusted input.
 *
 * The backend connects to a path itself, so the harness runs the scripted
 * peer of fuzz.h on a UNIX socket in a private directory: connection i gets
 * chunk i of the script at once, then end-of-file (no call waits for its
 * timeout on a well-behaved script).
 *
 * Input: a first line of operations, run in order on one backend object
 * ("set BYTES", "query"; at most 4), then the script: the lines QEMU sends,
 * connections separated by a line "@@". Command ids start at 1 for each
 * input (qmp_capabilities is 1).
 *
 * Invariants checked on top of the sanitizers, from balloon.h: return values
 * are the documented ones, err is one printable line ("" on success), query
 * figures are consistent (balloon within guest RAM, committed within total,
 * guest pressure -1 or 0..100), and no fd is leaked.
 */
#include <stdint.h>

#include "tests/fuzz/balloon_fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *script;
	size_t n;
	char ops[128];

	if (fz_balloon_ops(data, size, ops, sizeof(ops), &script, &n))
		fz_balloon_run(DD_BALLOON_KIND_QMP, ops, script, n);
	return 0;
}
