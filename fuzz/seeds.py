#!/usr/bin/env python3
"""Writes the seed inputs of every fuzz target into fuzz/corpus/<target>/seed-*.

Most targets take structure-aware input (`#[derive(Arbitrary)]` types in fuzz_targets/*.rs), so a seed is the byte
string `arbitrary` 1.x decodes into a chosen value. `Enc` writes that format: integers little-endian, bool as one
byte (low bit), enum variant as a u32 scaled by the variant count, Option as a bool then the value, Vec as a
"continue" bool before each element, a String's length taken from the end of the input, and the last field of the
top-level value taking the rest of the bytes. The builders below mirror the Rust types field by field: keep them in
step with fuzz_targets/*.rs (a seed that no longer matches still runs, it just means something else;
`cargo +nightly fuzz fmt TARGET FILE` shows what a seed decodes to).

Usage: python3 fuzz/seeds.py   (from anywhere; overwrites the seed-* files, leaves fuzzer-found inputs alone)
"""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------------------------------------------------------
# The `arbitrary` byte format.

class Enc:
    def __init__(self):
        self.ops = []  # ("b", bytes) consumed from the front, or ("len", n) taken from the end

    def raw(self, data):
        self.ops.append(("b", bytes(data)))
        return self

    def u8(self, v):
        return self.raw(struct.pack("<B", v & 0xFF))

    def i8(self, v):
        return self.raw(struct.pack("<b", v))

    def u16(self, v):
        return self.raw(struct.pack("<H", v & 0xFFFF))

    def u32(self, v):
        return self.raw(struct.pack("<I", v & 0xFFFFFFFF))

    def u64(self, v):
        return self.raw(struct.pack("<Q", v & 0xFFFFFFFFFFFFFFFF))

    def i64(self, v):
        return self.raw(struct.pack("<q", v))

    def bool(self, v):
        return self.u8(1 if v else 0)

    def tag(self, index, count):
        """The u32 that derive(Arbitrary) maps to variant `index` of `count`: (u64(x) * count) >> 32."""
        x = (index * (1 << 32) + count - 1) // count
        assert (x * count) >> 32 == index and x < (1 << 32)
        return self.u32(x)

    def option(self, value, write):
        if value is None:
            return self.bool(False)
        self.bool(True)
        write(value)
        return self

    def vec(self, items, write):
        for item in items:
            self.bool(True)
            write(item)
        return self.bool(False)

    def bytes_vec(self, data):
        return self.vec(list(data), self.u8)

    def string(self, text):
        data = text.encode() if isinstance(text, str) else bytes(text)
        self.ops.append(("len", len(data)))
        return self.raw(data)

    def rest(self, data):
        """The remaining bytes (a last-field String)."""
        return self.raw(data.encode() if isinstance(data, str) else data)

    def finish(self):
        lens = [op for op in self.ops if op[0] == "len"]
        front = b"".join(op[1] for op in self.ops if op[0] == "b")
        widths = [1] * len(lens)
        for _ in range(16):
            total = len(front) + sum(widths)
            remaining = total
            new, fields, k = [], [], 0
            for op in self.ops:
                if op[0] == "b":
                    remaining -= len(op[1])
                    continue
                n = op[1]
                if remaining <= 1:
                    raise ValueError("a String length with no bytes left to hold it")
                w = 1 if remaining <= 256 else 2 if remaining <= 65537 else 4
                max_size = remaining - w
                assert n <= max_size, (n, max_size)
                used = max(1, (max_size.bit_length() + 7) // 8)
                fields.append(n.to_bytes(used, "big") + bytes(w - used))
                new.append(w)
                remaining -= w
                k += 1
            if new == widths:
                return front + b"".join(reversed(fields))
            widths = new
        raise ValueError("String length widths do not settle")


def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4


def write_seeds(target, seeds):
    directory = os.path.join(HERE, "corpus", target)
    os.makedirs(directory, exist_ok=True)
    for name, data in seeds.items():
        if isinstance(data, Enc):
            data = data.finish()
        with open(os.path.join(directory, "seed-" + name), "wb") as f:
            f.write(data)


# ---------------------------------------------------------------------------------------------------------------
# pdu_decode: [flags][3-byte limit][PDU bytes...]

def pdu(opcode, flags=0, immediate=False, ahs=b"", data=b"", fields=None, header_digest=False, data_digest=False):
    bhs = bytearray(48)
    bhs[0] = (0x40 if immediate else 0) | opcode
    bhs[1] = flags
    bhs[4] = len(ahs) // 4
    bhs[5:8] = len(data).to_bytes(3, "big")
    for offset, value in (fields or {}).items():
        bhs[offset:offset + len(value)] = value
    out = bytes(bhs) + ahs
    if header_digest:
        out += struct.pack("<I", crc32c(out))
    if data:
        padded = data + bytes(-len(data) % 4)
        out += padded
        if data_digest:
            out += struct.pack("<I", crc32c(padded))
    return out


def be32(v):
    return struct.pack(">I", v)


def be16(v):
    return struct.pack(">H", v)


def text_data(pairs):
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in pairs)


LOGIN_TEXT = text_data([("InitiatorName", "iqn.1998-01.com.vmware:esx1"), ("TargetName", "iqn.2026-11.io.lunlock:a"),
                        ("SessionType", "Normal"), ("AuthMethod", "None")])
READ10 = bytes([0x28, 0, 0, 0, 0, 8, 0, 0, 8, 0]) + bytes(6)
WRITE10 = bytes([0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0]) + bytes(6)


def pdu_seeds():
    seeds = {}
    limit = (8192).to_bytes(3, "big")
    login = pdu(0x03, flags=0x81, immediate=True, data=LOGIN_TEXT,
                fields={8: bytes([0x40, 0, 0, 0, 0, 1]), 16: be32(1), 24: be32(0), 28: be32(0)})
    seeds["login-request"] = bytes([0]) + limit + login
    read = pdu(0x01, flags=0xC0, fields={16: be32(2), 20: be32(4096), 24: be32(1), 28: be32(1), 32: READ10})
    seeds["scsi-read"] = bytes([0]) + limit + read
    write = pdu(0x01, flags=0xA0, data=bytes(range(256)) * 2,
                fields={16: be32(3), 20: be32(512), 24: be32(2), 28: be32(1), 32: WRITE10})
    seeds["scsi-write-immediate"] = bytes([0]) + limit + write
    data_out = pdu(0x05, flags=0x80, data=b"\xa5" * 1000,
                   fields={16: be32(3), 20: be32(0xFFFFFFFF), 36: be32(0), 40: be32(512)})
    seeds["data-out"] = bytes([0]) + limit + data_out
    nop = pdu(0x00, flags=0x80, immediate=True, data=b"ping",
              fields={16: be32(4), 20: be32(0xFFFFFFFF), 24: be32(3), 28: be32(2)})
    seeds["nop-out-digests"] = bytes([3]) + limit + pdu(
        0x00, flags=0x80, immediate=True, data=b"ping", header_digest=True, data_digest=True,
        fields={16: be32(4), 20: be32(0xFFFFFFFF), 24: be32(3), 28: be32(2)})
    text = pdu(0x04, flags=0x80, data=text_data([("SendTargets", "All")]),
               fields={16: be32(5), 20: be32(0xFFFFFFFF), 24: be32(3), 28: be32(2)})
    seeds["text-sendtargets"] = bytes([0]) + limit + text
    # An extended CDB (AHS type 1) and a bidirectional read length (type 2).
    ahs = be16(17) + bytes([1, 0]) + bytes(range(16)) + bytes(-(4 + 16) % 4) + be16(5) + bytes([2, 0]) + be32(512)
    ahs = ahs + bytes(-len(ahs) % 4)
    seeds["scsi-ahs"] = bytes([0]) + limit + pdu(0x01, flags=0xE0, ahs=ahs,
                                                 fields={16: be32(6), 20: be32(512), 32: bytes([0x7F]) + bytes(15)})
    logout = pdu(0x06, flags=0x80, immediate=True, fields={16: be32(7), 24: be32(4), 28: be32(2)})
    tmf = pdu(0x02, flags=0x81, immediate=True, fields={16: be32(8), 20: be32(2), 24: be32(5), 28: be32(2)})
    seeds["stream"] = bytes([0]) + limit + nop + tmf + data_out + logout
    seeds["truncated"] = bytes([1]) + limit + pdu(0x01, flags=0x80, header_digest=True)[:50]
    seeds["raw-limit"] = bytes([4]) + bytes([0, 0, 2]) + write
    return seeds


# ---------------------------------------------------------------------------------------------------------------
# target_session

def ts_lun(e, kind, value=0):
    {"zero": lambda: e.tag(0, 3), "small": lambda: (e.tag(1, 3), e.u8(value)),
     "raw": lambda: (e.tag(2, 3), e.raw(value))}[kind]()


def ts_tag(e, kind, value=0):
    if kind == "pool":
        e.tag(0, 3).u8(value)
    elif kind == "reserved":
        e.tag(1, 3)
    else:
        e.tag(2, 3).u32(value)


def ts_sn(e, kind="next", value=0):
    index = ["next", "ahead", "behind", "raw"].index(kind)
    e.tag(index, 4)
    if kind in ("ahead", "behind"):
        e.u8(value)
    elif kind == "raw":
        e.u32(value)


def ts_length(e, kind, value):
    index = ["small", "blocks", "raw"].index(kind)
    e.tag(index, 3)
    [e.u16, e.u8, e.u32][index](value)


def ts_command(e, read=False, write=False, itt=0, edtl=("blocks", 1), cdb=READ10, immediate_len=0, final=True,
               immediate=False, cmd_sn=("next", 0), lun=("zero", 0), attribute=1):
    e.tag(0, 8).bool(immediate).bool(final).bool(read).bool(write).u8(attribute)
    ts_lun(e, *lun)
    ts_tag(e, "pool", itt)
    ts_length(e, *edtl)
    ts_sn(e, *cmd_sn)
    e.raw(cdb[:16].ljust(16, b"\0"))
    e.bytes_vec(b"")
    e.u16(immediate_len)


def ts_data_out(e, pick=0, unsolicited=False, length=512, final=None, ttt=None, data_sn=None, offset=None):
    e.tag(1, 8).u8(pick).bool(unsolicited).u16(length)
    e.option(final, e.bool).option(ttt, e.u32).option(data_sn, e.u32).option(offset, e.u32)


def ts_step_pdu(e, write_pdu):
    e.tag(0, 10)
    write_pdu(e)


def ts_complete(e, pick=0, status=0, sense_len=0, data_in_len=0, data_out_wanted=None):
    e.tag(1, 10).u8(pick).u8(status).u8(sense_len).u16(data_in_len).option(data_out_wanted, e.u32)


def ts_transmit(e):
    e.tag(9, 10)


def ts_input(params, steps, exp_cmd_sn=1, stat_sn=100, queue_depth=31):
    e = Enc()
    max_recv, max_xmit, max_burst, first_burst, r2t, immediate_data, initial_r2t = params
    e.u16(max_recv).u32(max_xmit).u32(max_burst).u32(first_burst).u8(r2t).bool(immediate_data).bool(initial_r2t)
    e.u32(exp_cmd_sn).u32(stat_sn).u8(queue_depth)
    for step in steps:
        e.bool(True)
        step(e)
    e.bool(False)
    return e


def target_session_seeds():
    # max_recv = 512 + x % 8192; max_burst = 512 + x % ...; first_burst = 512 + x % ...
    params = (8192 - 512, 8192 - 512, 262144 - 512, 65536 - 512, 0, True, False)
    r2t_params = (4096 - 512, 65536, 16384 - 512, 4096 - 512, 1, False, True)
    seeds = {}
    seeds["read-complete"] = ts_input(params, [
        lambda e: ts_step_pdu(e, lambda e: ts_command(e, read=True, itt=1, edtl=("blocks", 8), cdb=READ10)),
        lambda e: ts_complete(e, data_in_len=4096),
        ts_transmit,
    ])
    seeds["write-immediate-unsolicited"] = ts_input(params, [
        lambda e: ts_step_pdu(e, lambda e: ts_command(e, write=True, itt=2, edtl=("blocks", 2), cdb=WRITE10,
                                                      immediate_len=512, final=False)),
        lambda e: ts_step_pdu(e, lambda e: ts_data_out(e, unsolicited=True, length=512, final=True)),
        lambda e: ts_complete(e, data_out_wanted=1024),
        ts_transmit,
    ])
    seeds["write-r2t"] = ts_input(r2t_params, [
        lambda e: ts_step_pdu(e, lambda e: ts_command(e, write=True, itt=3, edtl=("blocks", 16), cdb=WRITE10)),
        ts_transmit,
        lambda e: ts_step_pdu(e, lambda e: ts_data_out(e, length=4096)),
        lambda e: ts_step_pdu(e, lambda e: ts_data_out(e, length=4096)),
        lambda e: ts_step_pdu(e, lambda e: ts_data_out(e, length=4096)),
        lambda e: ts_step_pdu(e, lambda e: ts_data_out(e, length=4096)),
        ts_transmit,
        lambda e: ts_step_pdu(e, lambda e: ts_data_out(e, length=4096)),
        lambda e: ts_step_pdu(e, lambda e: ts_data_out(e, length=4096)),
        lambda e: ts_complete(e, data_out_wanted=8192),
        ts_transmit,
    ])

    def tmf_abort(e):
        e.tag(2, 8).bool(True).u8(1)  # ABORT TASK
        ts_lun(e, "zero")
        ts_tag(e, "pool", 9)
        ts_tag(e, "pool", 4)
        ts_sn(e, "next")
        ts_sn(e, "behind", 0)

    seeds["abort-task"] = ts_input(params, [
        lambda e: ts_step_pdu(e, lambda e: ts_command(e, read=True, itt=4, edtl=("blocks", 1))),
        lambda e: ts_step_pdu(e, tmf_abort),
        lambda e: (e.tag(4, 10), e.u8(0), e.u8(0), e.bool(False)),  # AnswerTmf
        ts_transmit,
    ])

    def text(e):
        e.tag(3, 8).bool(False).bool(True).bool(False)
        ts_tag(e, "pool", 5)
        e.u32(0xFFFFFFFF)
        ts_sn(e, "next")
        e.bytes_vec(b"SendTargets=All\0")

    def nop(e):
        e.tag(4, 8).bool(False)
        ts_tag(e, "pool", 6)
        e.option(None, e.u32)
        ts_sn(e, "next")
        e.u16(8)

    def logout(e):
        e.tag(6, 8).bool(True).u8(0)
        ts_tag(e, "pool", 7)
        e.u16(0)
        ts_sn(e, "next")

    seeds["text-nop-logout"] = ts_input(params, [
        lambda e: ts_step_pdu(e, text),
        lambda e: (e.tag(5, 10), e.u8(0), e.u8(120)),  # AnswerText
        lambda e: ts_step_pdu(e, nop),
        lambda e: e.tag(6, 10),  # Ping
        ts_transmit,
        lambda e: ts_step_pdu(e, logout),
        ts_transmit,
    ])
    seeds["reorder-and-abort-lun"] = ts_input(params, [
        lambda e: ts_step_pdu(e, lambda e: ts_command(e, read=True, itt=1, cmd_sn=("ahead", 1))),
        lambda e: ts_step_pdu(e, lambda e: ts_command(e, read=True, itt=2, cmd_sn=("ahead", 0))),
        lambda e: ts_step_pdu(e, lambda e: ts_command(e, read=True, itt=3, cmd_sn=("next", 0))),
        lambda e: (e.tag(7, 10), e.u8(0)),  # AbortLun 0
        lambda e: (e.tag(3, 10), e.u8(0)),  # EndAborted
        lambda e: ts_complete(e, pick=0, status=2, sense_len=10),
        ts_transmit,
    ])
    return seeds


# ---------------------------------------------------------------------------------------------------------------
# login

KEY_COUNT, NAME_COUNT = 10, 11
NAMES = ["initiator", "initiator2", "open", "chap", "listed", "chap-user", "discovery-user", "acl-user",
         "acl2-user", "empty"]


def lg_name(e, name):
    if name in NAMES:
        e.tag(NAMES.index(name), NAME_COUNT)
    else:
        e.tag(10, NAME_COUNT).string(name)


def lg_choice(e, value):
    if isinstance(value, int):
        e.tag(0, 2).u8(value)
    else:
        e.tag(1, 2).string(value)


def lg_key(e, key):
    kind, value = key
    if kind == "InitiatorName":
        e.tag(0, KEY_COUNT)
        lg_name(e, value)
    elif kind == "TargetName":
        e.tag(1, KEY_COUNT)
        lg_name(e, value)
    elif kind == "SessionType":  # 0 Normal, 1 Discovery
        e.tag(2, KEY_COUNT)
        lg_choice(e, value)
    elif kind == "AuthMethod":  # 0 CHAP, 1 None, 2 CHAP,None
        e.tag(3, KEY_COUNT)
        lg_choice(e, value)
    elif kind == "CHAP_A":  # 0 "5" ... 3 "8", 4 "8,7,6,5"
        e.tag(4, KEY_COUNT)
        lg_choice(e, value)
    elif kind == "CHAP_N":
        e.tag(5, KEY_COUNT)
        lg_name(e, value)
    elif kind == "CHAP_R":  # "right" or ("secret", n)
        e.tag(6, KEY_COUNT)
        if value == "right":
            e.tag(0, 4)
        else:
            e.tag(1, 4).u8(value[1])
    elif kind == "CHAP_IC":  # (identifier or None, challenge bytes)
        e.tag(7, KEY_COUNT)
        identifier, challenge = value
        e.option(identifier, e.string)
        e.tag(0, 3).bytes_vec(challenge)
    elif kind == "Operational":  # (index into OPERATIONAL, choice)
        e.tag(8, KEY_COUNT).u8(value[0])
        lg_choice(e, value[1])
    else:
        e.tag(9, KEY_COUNT).string(kind).string(value)


def lg_request(e, keys, transit, csg, nsg, continue_bit=False):
    e.bool(transit).bool(continue_bit).u8(csg).u8(nsg).u8(0)
    e.option(None, None)  # header: that of the first request
    e.u32(7)  # CmdSN
    e.option(None, None)  # ExpStatSN
    e.vec(keys, lambda k: lg_key(e, k))
    e.bytes_vec(b"")


def lg_input(requests, mutual=False, discovery_chap=0, acl=0, text=b""):
    e = Enc()
    e.bool(mutual).u8(discovery_chap).u8(acl).u8(0x11)
    e.bytes_vec(bytes(range(0x20, 0x40)))  # challenge
    e.vec(requests, lambda r: lg_request(e, *r))
    e.bytes_vec(text)
    return e


OPERATIONAL = [("Operational", (0, 0)), ("Operational", (1, 0)), ("Operational", (2, 1)), ("Operational", (3, 1)),
               ("Operational", (4, 1)), ("Operational", (5, 1)), ("Operational", (7, 0)), ("Operational", (8, 1)),
               ("Operational", (11, 0))]


def login_seeds():
    seeds = {}
    seeds["open-no-auth"] = lg_input([
        ([("InitiatorName", "initiator"), ("TargetName", "open"), ("SessionType", 0), ("AuthMethod", 1)], True, 0, 1),
        (OPERATIONAL, True, 1, 3),
    ], text=b"A=1\0B=0x0102\0")
    seeds["chap-one-way"] = lg_input([
        ([("InitiatorName", "initiator"), ("TargetName", "chap"), ("AuthMethod", 0)], False, 0, 0),
        ([("CHAP_A", 0)], False, 0, 0),
        ([("CHAP_N", "chap-user"), ("CHAP_R", "right")], True, 0, 1),
        (OPERATIONAL, True, 1, 3),
    ])
    seeds["chap-mutual"] = lg_input([
        ([("InitiatorName", "initiator"), ("TargetName", "chap"), ("AuthMethod", 2)], False, 0, 0),
        ([("CHAP_A", 4)], False, 0, 0),
        ([("CHAP_N", "chap-user"), ("CHAP_R", "right"), ("CHAP_IC", ("9", bytes(range(16))))], True, 0, 3),
    ], mutual=True)
    seeds["chap-acl-entry"] = lg_input([
        ([("InitiatorName", "initiator"), ("TargetName", "chap"), ("AuthMethod", 0)], False, 0, 0),
        ([("CHAP_A", 2)], False, 0, 0),
        ([("CHAP_N", "acl-user"), ("CHAP_R", "right"), ("CHAP_IC", ("3", b"\x99" * 20))], True, 0, 1),
        (OPERATIONAL, True, 1, 3),
    ], acl=3)
    seeds["open-target-acl-chap"] = lg_input([
        ([("InitiatorName", "initiator2"), ("TargetName", "open"), ("AuthMethod", 0)], False, 0, 0),
        ([("CHAP_A", 1)], False, 0, 0),
        ([("CHAP_N", "acl2-user"), ("CHAP_R", "right")], True, 0, 1),
        (OPERATIONAL, True, 1, 3),
    ], acl=4)
    seeds["discovery-chap"] = lg_input([
        ([("InitiatorName", "initiator"), ("SessionType", 1), ("AuthMethod", 0)], False, 0, 0),
        ([("CHAP_A", 3)], False, 0, 0),
        ([("CHAP_N", "discovery-user"), ("CHAP_R", "right")], True, 0, 3),
    ], discovery_chap=1)
    seeds["continuation"] = lg_input([
        ([("InitiatorName", "initiator"), ("TargetName", "listed")], False, 0, 0, True),
        ([("AuthMethod", 1)], True, 0, 1),
        (OPERATIONAL[:3], False, 1, 1, True),
        (OPERATIONAL[3:], True, 1, 3),
    ])
    seeds["wrong-response"] = lg_input([
        ([("InitiatorName", "initiator"), ("TargetName", "chap"), ("AuthMethod", 0)], False, 0, 0),
        ([("CHAP_A", 0)], False, 0, 0),
        ([("CHAP_N", "chap-user"), ("CHAP_R", ("secret", 4))], True, 0, 1),
    ])
    return seeds


# ---------------------------------------------------------------------------------------------------------------
# cdb_execute

def cdb10(opcode, lba=0, blocks=1, byte1=0):
    return bytes([opcode, byte1]) + be32(lba) + bytes([0]) + be16(blocks) + bytes([0])


def cdb16(opcode, lba=0, blocks=1, byte1=0):
    return bytes([opcode, byte1]) + struct.pack(">Q", lba) + be32(blocks) + bytes([0, 0])


def cx_command(e, cdb, data=("wanted", b""), nexus=0, lun=0, etl=None):
    e.tag(0, 2).u8(nexus).u8(lun)
    e.tag(1, 2).bytes_vec(cdb)  # Cdb::Raw
    kind, value = data
    if kind == "wanted":
        e.tag(0, 3).bytes_vec(value)
    elif kind == "exact":
        e.tag(1, 3).bytes_vec(value)
    else:
        e.tag(2, 3).u16(value[0]).u8(value[1])
    e.option(etl, e.u32)


def cx_row(e, row, byte_values, nexus=0, lun=0):
    e.tag(0, 2).u8(nexus).u8(lun)
    e.tag(0, 2).u8(row).raw(bytes(byte_values).ljust(16, b"\0")).bool(False)
    e.tag(0, 3).bytes_vec(b"\x5a")
    e.option(None, e.u32)


def cx_input(steps, cdb=b"", read_only=False, prefill=0):
    e = Enc()
    e.bytes_vec(cdb).bool(read_only).u8(prefill)
    for step in steps:
        e.bool(True)
        step(e)
    e.bool(False)
    return e


def cdb_execute_seeds():
    pattern = bytes((i // 7) & 0xFF for i in range(512))
    unmap_list = be16(22) + be16(16) + bytes(4) + struct.pack(">Q", 4) + be32(4) + bytes(4)
    seeds = {}
    seeds["write-read"] = cx_input([
        lambda e: cx_command(e, cdb10(0x2A, 0, 8), ("wanted", b"\x01\x02\x03")),
        lambda e: cx_command(e, cdb10(0x28, 0, 8)),
        lambda e: cx_command(e, cdb16(0x88, 4, 4)),
    ], cdb=cdb10(0x28, 2, 2))
    seeds["compare-and-write"] = cx_input([
        lambda e: cx_command(e, bytes([0x89, 0]) + struct.pack(">Q", 0) + bytes([0, 0, 0, 1, 0, 0]),
                             ("exact", pattern + b"\xee" * 512)),
        lambda e: cx_command(e, cdb10(0x28, 0, 1)),
    ], prefill=4)
    seeds["unmap-write-same"] = cx_input([
        lambda e: cx_command(e, bytes([0x42, 0, 0, 0, 0, 0, 0]) + be16(len(unmap_list)) + bytes([0]),
                             ("exact", unmap_list)),
        lambda e: cx_command(e, cdb16(0x93, 16, 8, byte1=0x08), ("fill", (512, 0))),
        lambda e: cx_command(e, cdb16(0x9E, 0, 0, byte1=0x12)[:10] + be32(4096) + bytes([0, 0])),  # GET LBA STATUS
    ], prefill=64)
    seeds["inquiry-mode-capacity"] = cx_input([
        lambda e: cx_command(e, bytes([0x12, 0, 0, 0, 0xFF, 0])),
        lambda e: cx_command(e, bytes([0x12, 1, 0x83, 0, 0xFF, 0])),
        lambda e: cx_command(e, bytes([0x12, 1, 0xB0, 0, 0xFF, 0]), lun=1),
        lambda e: cx_command(e, bytes([0x9E, 0x10]) + bytes(8) + be32(32) + bytes(2)),
        lambda e: cx_command(e, bytes([0x5A, 0, 0x3F, 0, 0, 0, 0]) + be16(512) + bytes([0])),
        lambda e: cx_command(e, bytes([0xA0, 0, 0, 0, 0, 0]) + be32(256) + bytes(2)),
        lambda e: cx_command(e, bytes([0x03, 0, 0, 0, 252, 0]), lun=2),
        lambda e: cx_command(e, bytes([0x35]) + bytes(9)),
    ])
    seeds["read-only-and-resets"] = cx_input([
        lambda e: cx_command(e, cdb10(0x2A, 0, 1), ("fill", (512, 7)), lun=1),
        lambda e: (e.tag(1, 2), e.u8(1), e.u8(1), e.u8(0)),
        lambda e: cx_command(e, bytes(6), lun=1, nexus=1),
        lambda e: cx_command(e, bytes([0x2F, 0]) + be32(0) + bytes([0]) + be16(4) + bytes([0]), lun=1),
    ], read_only=True, prefill=8)
    seeds["registry-rows"] = cx_input([
        (lambda r: lambda e: cx_row(e, r, [0, 0, 0, 0, 0, 1, 0, 0, 2, 0, 0, 0, 0, 8, 0, 0]))(r) for r in range(0, 48, 3)
    ])
    return seeds


# ---------------------------------------------------------------------------------------------------------------
# pr_out

def pr_key(e, key):
    if isinstance(key, tuple):
        e.tag(1, 2).u64(key[1])
    else:
        e.tag(0, 2).u8(key)


def pr_out(e, nexus, action, kind=0, key=0, sa_key=1, spec_i_pt=False, all_tg_pt=False, aptpl=False,
           unreg=False, port=1, tids=(), raw=None, delta=0):
    e.tag(0, 7).u8(nexus).u8(action).u8(kind)
    pr_key(e, key)
    pr_key(e, sa_key)
    e.bool(spec_i_pt).bool(all_tg_pt).bool(aptpl).bool(unreg).u16(port)

    def tid(t):
        e.tag(0, 2).u8(t[0]).bool(t[1])

    e.vec(list(tids), tid)
    e.option(raw, e.bytes_vec)
    e.i8(delta)


def pr_in(e, nexus, action, allocation_length=1024):
    e.tag(1, 7).u8(nexus).u8(action).u16(allocation_length)


def pr_input(steps, tid=b"", list_=(0, b""), state=b""):
    e = Enc()
    e.bytes_vec(tid).u8(0)
    e.u8(list_[0]).bytes_vec(list_[1])
    e.bytes_vec(state)
    for step in steps:
        e.bool(True)
        step(e)
    e.bool(False)
    return e


def iscsi_tid(name, isid=None):
    body = name.encode() + (b",i,0x" + isid.hex().encode() if isid else b"") + b"\0"
    body += bytes(-len(body) % 4)
    if len(body) < 20:
        body += bytes(20 - len(body))
    return bytes([0x45 if isid else 0x05, 0]) + be16(len(body)) + body


def pr_out_seeds():
    register_list = struct.pack(">QQ", 0, 0x1111111111111111) + bytes(8)
    seeds = {}
    seeds["register-reserve-read"] = pr_input([
        lambda e: pr_out(e, 0, 0, key=0, sa_key=1),
        lambda e: pr_out(e, 2, 0, key=0, sa_key=2),
        lambda e: pr_out(e, 0, 1, kind=1, key=1),
        lambda e: pr_in(e, 0, 0),
        lambda e: pr_in(e, 2, 1),
        lambda e: pr_in(e, 3, 2),
        lambda e: pr_in(e, 0, 3),
        lambda e: (e.tag(3, 7), e.u8(2), e.bool(True), e.u8(3)),  # Io: a write from a non-holder
        lambda e: pr_out(e, 0, 2, kind=1, key=1),  # RELEASE
    ], tid=iscsi_tid("iqn.2026-11.io.lunlock:host-a", bytes([0x40, 0, 0, 0, 0, 1])),
        list_=(0, register_list), state=b"")
    seeds["aptpl-restart"] = pr_input([
        lambda e: pr_out(e, 0, 0, key=0, sa_key=1, aptpl=True),
        lambda e: pr_out(e, 0, 1, kind=8, key=1),
        lambda e: (e.tag(6, 7), e.bool(True)),  # Restart
        lambda e: pr_in(e, 1, 3),
        lambda e: pr_out(e, 0, 0, key=1, sa_key=0, aptpl=True),  # unregister
        lambda e: (e.tag(6, 7), e.bool(False)),
    ])
    seeds["preempt-and-abort"] = pr_input([
        lambda e: pr_out(e, 0, 0, key=0, sa_key=1),
        lambda e: pr_out(e, 2, 0, key=0, sa_key=2),
        lambda e: pr_out(e, 0, 1, kind=3, key=1),
        lambda e: pr_out(e, 2, 5, kind=3, key=2, sa_key=1),  # PREEMPT AND ABORT
        lambda e: pr_out(e, 3, 6, key=0, sa_key=3),  # REGISTER AND IGNORE EXISTING KEY
        lambda e: pr_out(e, 3, 4, kind=3, key=3, sa_key=2),  # PREEMPT
        lambda e: pr_out(e, 3, 3, key=3),  # CLEAR
        lambda e: pr_in(e, 0, 0),
    ])
    seeds["spec-i-pt-and-move"] = pr_input([
        lambda e: pr_out(e, 0, 0, key=0, sa_key=1, spec_i_pt=True, all_tg_pt=True, tids=[(2, True), (3, False)]),
        lambda e: pr_out(e, 0, 1, kind=1, key=1),
        lambda e: pr_out(e, 0, 7, kind=1, key=1, sa_key=2, port=2, tids=[(2, True)]),  # REGISTER AND MOVE
        lambda e: pr_in(e, 2, 3, 4096),
        lambda e: (e.tag(5, 7), e.u8(2), e.u8(0)),  # Reset
        lambda e: (e.tag(2, 7), e.u8(1), e.bool(False)),  # RESERVE(6)
        lambda e: (e.tag(4, 7), e.u8(1)),  # TEST UNIT READY
    ])
    return seeds


# ---------------------------------------------------------------------------------------------------------------
# xcopy_parameters

def xc_cscd_lu(e, lun, block_length=None):
    e.tag(0, 3).bool(lun).bool(False).u8(0).option(block_length, e.u32)


def xc_segment(e, source, destination, blocks, source_lba, destination_lba):
    e.option(None, e.u8).option(None, e.u16).u8(source).u8(destination).u16(blocks).u16(source_lba)
    e.u16(destination_lba).option(None, None)


def xc_input(cscds, segments, list_id=1, usage_bits=2, manager=False, results=None, raw=b"", run_raw=False,
             prefill=16, lengths=None):
    e = Enc()
    e.bytes_vec(raw)
    e.u8(list_id).u8(usage_bits)
    e.vec(cscds, lambda c: c(e))
    e.vec(segments, lambda s: xc_segment(e, *s))

    def write_lengths(v):
        e.u16(v[0]).u32(v[1]).u32(v[2])

    e.option(lengths, write_lengths)
    e.bytes_vec(b"")
    e.bool(run_raw).bool(manager).u8(0).u8(prefill)

    def write_results(v):
        e.u8(v[0]).u8(v[1]).u16(v[2])

    e.option(results, write_results)
    return e


def xcopy_seeds():
    lu0 = lambda e: xc_cscd_lu(e, False)
    lu1 = lambda e: xc_cscd_lu(e, True)
    seeds = {}
    seeds["copy-0-to-1"] = xc_input([lu0, lu1], [(0, 1, 8, 0, 32)], results=(3, 0, 1024))
    seeds["copy-within-and-back"] = xc_input([lu0, lu1], [(0, 0, 4, 0, 100), (1, 0, 2, 200, 10)], usage_bits=0,
                                             list_id=7, results=(0, 7, 64), manager=True)
    seeds["naa-unknown"] = xc_input([lu0, lambda e: (e.tag(1, 3), e.raw(b"\x60" * 15 + b"\x09"))], [(0, 1, 1, 0, 0)])
    seeds["null-and-raw"] = xc_input([lambda e: (e.tag(0, 3), e.bool(False), e.bool(True), e.u8(0), e.option(None, None)),
                                      lambda e: (e.tag(2, 3), e.u8(0xE9), e.raw(bytes(31)))], [(0, 1, 1, 0, 0)])
    list_bytes = bytes([0, 0x18]) + be16(32) + bytes(4) + be32(28) + be32(0)
    cscd = bytes([0xE4, 0, 0, 0, 0, 0]) + be16(0) + bytes([1, 3, 0, 0x10]) + b"\x60" * 15 + b"\x00" + bytes(4) + be32(512)[1:] + bytes(1)
    segment = bytes([0x02, 0]) + be16(24) + bytes(2) + be16(0) + be16(0) + be16(0) + be16(1) + struct.pack(">QQ", 0, 1)
    seeds["raw-list"] = xc_input([], [], raw=list_bytes + cscd[:32] + segment[:28], run_raw=True)
    return seeds


# ---------------------------------------------------------------------------------------------------------------
# config_parse

def toml_seed(text):
    return Enc().tag(0, 2).rest(text)


FULL_CONFIG = """# Relative paths are relative to this file's directory.
data_dir = "lunlock-data"
listen = ["127.0.0.1:3260", "127.0.0.2:3260"]
max_connections = 4096

[[target]]
name = "iqn.2026-11.io.lunlock:cluster-a"
alias = "cluster A datastore"
allowed_initiators = ["iqn.1998-01.com.vmware:esx1", "iqn.1998-01.com.vmware:esx2"]

[[target.lun]]
id = 0
size = "100G"

[[target.lun]]
id = 1
path = "golden.img"
read_only = true
block_size = 4096

[[target.lun]]
id = 2
size = "10G"
block_size = 512
physical_block_size = 4096
"""

CHAP_CONFIG = """listen = ["127.0.0.1:3260"]

[limits]
sessions_per_target = 16
commands_per_session = 64
max_burst_length = 262144
first_burst_length = 65536
write_buffer_bytes = "1G"
write_buffer_bytes_per_session = "64M"
login_timeout_seconds = 30

[discovery]
chap_user = "discovery"
chap_secret_file = "secret-c"

[[target]]
name = "iqn.2026-11.io.lunlock:chap"
chap_user = "esx-cluster"
chap_secret_file = "secret-a"
mutual_chap_user = "lunlock-array"
mutual_chap_secret_file = "secret-b"
fault_injection = true

[[target.lun]]
id = 0
size = "64M"

[[target.lun]]
id = 3
path = "/dev/null"
direct_io = true
simulate_power_loss = true

[[target.acl]]
initiator = "iqn.1998-01.com.vmware:esx1"
luns = [0]
read_only = true
chap_user = "esx1"
chap_secret_file = "secret-crlf"

[[target.acl]]
initiator = "iqn.1998-01.com.vmware:esx2"

[[target.fault]]
spec = "port=1:lun=0:caw:miscompare:12.5%"

[[target.fault]]
spec = "write:delay=10..200ms"
lun = 0
"""

BAD_CONFIGS = {
    "unknown-key": 'listen = ["127.0.0.1:3260"]\n[[target]]\nname = "iqn.x:y"\n[[target.lun]]\nid = 0\nsizee = "1M"\n',
    "short-secret": 'listen = ["127.0.0.1:3260"]\n[[target]]\nname = "iqn.x:y"\nchap_user = "u"\n'
                    'chap_secret_file = "short"\n[[target.lun]]\nid = 0\nsize = "1M"\n',
    "open-mode-secret": 'listen = ["127.0.0.1:3260"]\n[discovery]\nchap_user = "u"\nchap_secret_file = "open"\n'
                        '[[target]]\nname = "iqn.x:y"\n[[target.lun]]\nid = 0\nsize = "1M"\n',
    "acl-not-allowed": 'listen = ["[::1]:3260"]\n[[target]]\nname = "eui.0123456789abcdef"\n'
                       'allowed_initiators = ["iqn.a:b"]\n[[target.lun]]\nid = 0\nsize = "4096"\n'
                       '[[target.acl]]\ninitiator = "iqn.c:d"\nluns = [7]\n',
    "type-error": 'listen = ["127.0.0.1:3260"]\nmax_connections = "many"\n',
}


def config_seeds():
    seeds = {"full": toml_seed(FULL_CONFIG), "chap-acl-limits-faults": toml_seed(CHAP_CONFIG)}
    for name, text in BAD_CONFIGS.items():
        seeds[name] = toml_seed(text)
    # A structured document (Input::Doc): one target, one LUN, CHAP from the pools.
    e = Enc().tag(1, 2)
    e.option(0, lambda v: e.tag(0, 2).u8(v))  # data_dir from the pool
    e.option([0], lambda items: e.vec(items, lambda _: (e.tag(0, 4), e.u8(1), e.u16(3260))))
    e.option(None, None)  # max_connections
    e.option(None, None)  # limits
    e.option(None, None)  # discovery

    def target(_):
        e.tag(0, 2).u8(0)  # name
        e.option(None, None)  # alias
        e.option(None, None)  # allowed_initiators
        e.option(1, lambda _: (e.option(0, lambda v: (e.tag(0, 2), e.u8(v))),
                               e.option(0, lambda v: (e.tag(0, 2), e.u8(v))),
                               e.option(None, None), e.option(None, None)))

        def lun(_):
            e.tag(0, 4).u8(0)  # id 0
            e.option(None, None)
            e.option(0, lambda v: (e.tag(0, 2), e.u8(v)))  # size 1G
            e.option(None, None).option(None, None).option(None, None).option(None, None).option(None, None)

        e.vec([0], lun)
        e.vec([], None)  # acl
        e.option(None, None)  # fault_injection
        e.vec([], None)  # faults
        e.bool(False)

    e.vec([0], target)
    e.option(None, None)  # junk
    seeds["doc"] = e
    return seeds


# ---------------------------------------------------------------------------------------------------------------
# lockspace_decode

def seal(record):
    record = bytearray(record.ljust(512, b"\0"))
    record[508:512] = struct.pack(">I", crc32c(bytes(record[:508])))
    return bytes(record)


def header(kind, index):
    return b"LUNLOCK\0" + be16(1) + be16(kind) + be32(index)


def superblock_block(block_size=512, slots=4, locks=4, interval=1000, dead=8000):
    body = header(1, 0) + be32(block_size) + be32(slots) + be32(locks) + be32(interval) + be32(dead)
    body += bytes(range(16)) + bytes(4) + struct.pack(">Q", 42)
    return seal(body)


def slot_block(index, live=True, name=b"esx1"):
    body = header(2, index) + bytes([1 if live else 0]) + bytes(7) + bytes([0xAB] * 16)
    body += struct.pack(">QQQQ", 3, 77, 0x1111, 99) + name.ljust(64, b"\0")
    return seal(body)


def lock_block(index, mode=2, name=b"datastore-1", holders=((0, 3), (1, 5))):
    body = header(3, index) + bytes([mode]) + bytes(7) + bytes(16) + be32(0) + bytes(4)
    body += struct.pack(">QQQQ", 0, 12, 30, 5) + name.ljust(64, b"\0") + be16(len(holders)) + bytes(6)
    for slot, generation in holders:
        body += be32(slot) + struct.pack(">Q", generation)
    return seal(body)


def ls_superblock_fields(e, shift=0, slots=3, locks=2, interval=999, dead=7000, raw=False):
    e.u8(shift).u32(slots).u32(locks).u32(interval).u32(dead).raw(bytes(range(16, 32))).u64(0x5EED).bool(raw)


def ls_slot_fields(e, index=0, live=True, name="esx1"):
    e.u32(index).bool(live).raw(b"\x11" * 16).string(name).u64(2).u64(10).u64(0xABCD).u64(7)


def ls_lock_fields(e, index=0, name="datastore-1", mode=1, shared=()):
    e.u32(index).string(name).u8(mode).raw(b"\x22" * 16).u32(1).u64(2).u64(9).u64(4).u64(8)
    e.vec(list(shared), lambda h: (e.u32(h[0]), e.u64(h[1])))


def ls_damage(e, kind="none", *values):
    index = ["none", "flip", "resealed", "misplaced", "raw"].index(kind)
    e.tag(index, 5)
    if kind == "flip":
        e.u16(values[0])
    elif kind == "resealed":
        e.u16(values[0]).u8(values[1])
    elif kind == "misplaced":
        e.u32(values[0])
    elif kind == "raw":
        e.bytes_vec(values[0])


def ls_input(raw, records=(), image=None, raw_index=1):
    e = Enc()
    e.bytes_vec(raw).u32(raw_index)
    e.vec(list(records), lambda r: r(e))
    e.option(image, lambda im: im(e))
    return e


def lockspace_seeds():
    seeds = {}
    seeds["superblock"] = ls_input(superblock_block(), [lambda e: (e.tag(0, 3), ls_superblock_fields(e))])
    seeds["superblock-4k"] = ls_input(superblock_block(4096, 2048, 65536, 500, 501), raw_index=0)
    seeds["slot"] = ls_input(slot_block(1), [lambda e: (e.tag(1, 3), ls_slot_fields(e, 5, True, "host-ä-utf8"))])
    seeds["lock-shared"] = ls_input(lock_block(1), [
        lambda e: (e.tag(2, 3), ls_lock_fields(e, 3, "x" * 70, 2, [(1, 1), (2, 2)]))])
    seeds["bad-checksum"] = ls_input(slot_block(1)[:508] + b"\0\0\0\0")

    def image(e):
        e.u8(8).bool(False)
        ls_superblock_fields(e)
        e.vec([0, 1], lambda i: (ls_slot_fields(e, 0, i == 0, f"host-{i}"), ls_damage(e, "none")))
        e.vec([0, 1], lambda i: (ls_lock_fields(e, 0, f"lock-{i}", i, [(0, 2)] if i == 2 else []),
                                 ls_damage(e, "resealed", 16, 7) if i else ls_damage(e, "none")))
        ls_damage(e, "none")

    seeds["image"] = ls_input(b"", image=image)

    def damaged_image(e):
        e.u8(0).bool(True)
        ls_superblock_fields(e, shift=3)
        e.vec([0, 1, 2], lambda i: (ls_slot_fields(e, 0, True, "h"),
                                    ls_damage(e, "misplaced", 9) if i == 2 else ls_damage(e, "flip", 700)))
        e.vec([0], lambda i: (ls_lock_fields(e), ls_damage(e, "none")))
        ls_damage(e, "none")

    seeds["image-damaged"] = ls_input(b"", image=damaged_image)
    return seeds


def main():
    write_seeds("pdu_decode", pdu_seeds())
    write_seeds("target_session", target_session_seeds())
    write_seeds("login", login_seeds())
    write_seeds("cdb_execute", cdb_execute_seeds())
    write_seeds("pr_out", pr_out_seeds())
    write_seeds("xcopy_parameters", xcopy_seeds())
    write_seeds("config_parse", config_seeds())
    write_seeds("lockspace_decode", lockspace_seeds())


if __name__ == "__main__":
    main()
