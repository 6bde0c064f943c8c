// SPDX-License-Identifier: MIT
/*
 * Fuzz the Firecracker and Cloud Hypervisor backends
 * (dedupd/reclaim/balloon_http.c): what they make of a VMM's HTTP replies
 * (status, Firecracker's fault_message, Cloud Hypervisor's error arrays,
 * vm.info's memory zones, balloon statistics). libcurl reads the HTTP; the
 * harness fuzzes what the backend does with what curl hands it, and curl's
 * handling of malformed replies on the way. A client names the VMM socket in
 * BALLOON_INFO, so the peer is untrusted.
 *
 * The scripted peer of fuzz.h answers: connection i gets chunk i of the
 * script, then end-of-file, so every request is answered on a connection of
 * its own (curl finds the previous one closed and opens another).
 *
 * Input: a first line "fc" or "ch" (Firecracker or Cloud Hypervisor) and the
 * operations ("set BYTES", "query"; at most 4), e.g. "fc set 1048576 query",
 * then the raw HTTP replies, one per request, separated by a line "@@".
 *
 * Invariants: as fuzz_qmp.c (balloon_fuzz.h).
 */
#include <stdint.h>
#include <string.h>

#include "tests/fuzz/balloon_fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	enum dd_balloon_kind kind;
	const uint8_t *script;
	char ops[128];
	size_t n;

	if (!fz_balloon_ops(data, size, ops, sizeof(ops), &script, &n))
		return 0;
	if (!strncmp(ops, "fc ", 3))
		kind = DD_BALLOON_KIND_FIRECRACKER;
	else if (!strncmp(ops, "ch ", 3))
		kind = DD_BALLOON_KIND_CLOUD_HYPERVISOR;
	else
		return 0;
	fz_balloon_run(kind, ops + 3, script, n);
	return 0;
}
