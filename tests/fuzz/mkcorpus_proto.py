#!/usr/bin/env python3
# Writes the seed corpus of fuzz_proto: one well-formed packet of each message
# type (layouts of dedupd/common/proto.h, x86-64) and a few near misses. Run
# from anywhere; rerun when proto.h changes.
import os
import struct

MAGIC, VERSION = 0x50554444, 1
(HELLO, HELLO_OK, AGENT_HELLO, REGISTER, UNREGISTER, RESULT, STORE, REMAP, ZAP,
 AGENT_REPLY, ADMIN, BALLOON, BALLOON_INFO) = range(1, 14)


def msg(typ, body, seq=1, length=None):
    n = 16 + len(body)
    return struct.pack("<IHHII", MAGIC, VERSION, typ, n if length is None else length, seq) + body


def text_msg(typ, text, status=0, value=0):
    t = text.encode()
    if typ == RESULT:
        return msg(typ, struct.pack("<iIQ", status, len(t), value) + t)
    return msg(typ, struct.pack("<II", len(t), 0) + t)


entries = [(0x7F0000000000, 0, 1, 1), (0x7F0000002000, 0x1000, 2, 1)]
seeds = {
    "hello": msg(HELLO, struct.pack("<II", 0, 0x1FF)),
    "hello_ok": msg(HELLO_OK, struct.pack("<QQ", 1, 0x1234567890ABCDEF)),
    "agent_hello": msg(AGENT_HELLO, struct.pack("<QQ", 1, 0x1234567890ABCDEF)),
    "register": msg(REGISTER, struct.pack("<QQIIQQII", 0x7F0000000000, 1 << 20, 2, 0, 0,
                                           64 << 20, 1000, 0)),
    "unregister": msg(UNREGISTER, struct.pack("<QQ", 0x7F0000000000, 1 << 20)),
    "result": text_msg(RESULT, "range 0x7f0000000000-0x7f0000100000 is not mapped", -14),
    "result_empty": text_msg(RESULT, "", 0, 42),
    "store": msg(STORE, struct.pack("<II", 3, 0)),
    "remap": msg(REMAP, struct.pack("<II", 2, 0) +
                 b"".join(struct.pack("<QQII", *e) for e in entries)),
    "zap": msg(ZAP, struct.pack("<II", 1, 0) + struct.pack("<QQII", 0x7F0000004000, 0, 4, 0)),
    "agent_reply": msg(AGENT_REPLY, struct.pack("<II", 2, 0) + struct.pack("<ii", 0, -14)),
    "admin": text_msg(ADMIN, "set pages_to_scan=1000"),
    "balloon": msg(BALLOON, struct.pack("<Q", 256 << 20)),
    "balloon_info": msg(BALLOON_INFO, struct.pack("<IiQ", 2, 0, 128 << 20) +
                        b"/run/vm1.qmp".ljust(108, b"\0") + b"\0" * 4),
    # near misses: a length that disagrees, an entry count past the packet
    "bad_len": msg(UNREGISTER, struct.pack("<QQ", 0, 0), length=31),
    "bad_count": msg(REMAP, struct.pack("<II", 3, 0) + struct.pack("<QQII", 0, 0, 1, 0)),
}
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "proto")
os.makedirs(out, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
