#!/usr/bin/env python3
"""The cluster's failover and Redis figures (issue #12), run by benches/cluster.sh against its Redis and edges.

  failover: starts two origins of its own (origin-fa, origin-fb), publishes a 720p30 FLV to one of them with its
    own RTMP publisher (paced like `ffmpeg -re`, so it knows when each frame left and when a publish was accepted),
    reads the stream from every edge with raw-socket HTTP-FLV readers, then --reps times: SIGKILLs the origin that
    has the stream, lets the publisher go to the other one at once (retrying every --retry-ms while that origin
    refuses: the directory still names the dead one until its TTL runs out), and times, per edge reader:
      kill -> the other origin accepts the publish (the TTL part, within --retry-ms),
      the publisher's first frame sent to the new origin -> that frame's session at the edge reader (the edge's
        part: its pull's retry, the lookup, the connection, the first keyframe; the publisher's delays excluded),
      kill -> first new frame at the edge reader (the freeze players see), and the edges' Redis GETs meanwhile.
    The killed origin is started again (same node id) before the next repetition, which kills the other one.
  redis: N publishers (livegate-load --readers 0 --attach ORIGIN) and a curl reader of every stream on every
    edge; Redis's INFO commandstats before/after a steady window, and every command seen with MONITOR, split by
    phase (claims, first readers on the edges, steady, requests for streams nobody has, releases) and by node.

Everything it starts is stopped when it ends (SIGTERM and Ctrl-C included). Python 3.8+, no packages.
"""

import argparse
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict


def now():
    return time.monotonic()


# ---------------------------------------------------------------------------------------------- FLV and AMF0


def read_flv(path):
    """(tags, loop_ms, media_bytes): tags as (type, ts, data, is_header) without script tags."""
    b = open(path, "rb").read()
    assert b[:3] == b"FLV", path
    pos = struct.unpack(">I", b[5:9])[0] + 4
    tags = []
    while pos + 11 <= len(b):
        typ = b[pos] & 0x1F
        size = int.from_bytes(b[pos + 1 : pos + 4], "big")
        ts = int.from_bytes(b[pos + 4 : pos + 7], "big") | (b[pos + 7] << 24)
        data = b[pos + 11 : pos + 11 + size]
        pos += 11 + size + 4
        if len(data) < size:
            break
        if typ == 9 and len(data) >= 2:
            tags.append((typ, ts, data, data[1] == 0))
        elif typ == 8 and len(data) >= 2:
            tags.append((typ, ts, data, data[0] >> 4 == 10 and data[1] == 0))
    first = tags[0][1]
    tags = [(t, ts - first, d, h) for t, ts, d, h in tags]
    video = [ts for t, ts, d, h in tags if t == 9 and not h]
    loop_ms = tags[-1][1] + (video[-1] - video[-2] if len(video) > 1 else 33)
    return tags, loop_ms, sum(len(d) for _, _, d, h in tags if not h)


def amf_enc(v):
    if v is None:
        return b"\x05"
    if isinstance(v, bool):
        return b"\x01" + bytes([v])
    if isinstance(v, (int, float)):
        return b"\x00" + struct.pack(">d", float(v))
    if isinstance(v, str):
        e = v.encode()
        return b"\x02" + struct.pack(">H", len(e)) + e
    if isinstance(v, dict):
        out = b"\x03"
        for k, x in v.items():
            e = k.encode()
            out += struct.pack(">H", len(e)) + e + amf_enc(x)
        return out + b"\x00\x00\x09"
    raise TypeError(v)


def amf_dec(b, i=0):
    t = b[i]
    i += 1
    if t == 0:
        return struct.unpack(">d", b[i : i + 8])[0], i + 8
    if t == 1:
        return b[i] != 0, i + 1
    if t == 2:
        n = struct.unpack(">H", b[i : i + 2])[0]
        return b[i + 2 : i + 2 + n].decode(errors="replace"), i + 2 + n
    if t in (3, 8):
        if t == 8:
            i += 4
        d = {}
        while True:
            n = struct.unpack(">H", b[i : i + 2])[0]
            if n == 0 and b[i + 2] == 9:
                return d, i + 3
            k = b[i + 2 : i + 2 + n].decode(errors="replace")
            d[k], i = amf_dec(b, i + 2 + n)
    if t in (5, 6):
        return None, i
    if t == 10:
        n = struct.unpack(">I", b[i : i + 4])[0]
        i += 4
        out = []
        for _ in range(n):
            x, i = amf_dec(b, i)
            out.append(x)
        return out, i
    raise ValueError(f"AMF0 type {t}")


def amf_all(b):
    out, i = [], 0
    while i < len(b):
        x, i = amf_dec(b, i)
        out.append(x)
    return out


# ---------------------------------------------------------------------------------------------- RTMP publisher


class Refused(Exception):
    pass


class Rtmp:
    """A minimal RTMP client connection: handshake, commands, and messages out in one chunk size."""

    OUT_CHUNK = 60000

    def __init__(self, addr):
        self.s = socket.create_connection(addr, timeout=5)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.in_chunk = 128
        self.prev = {}
        c1 = bytes(8) + os.urandom(1528)
        self.s.sendall(b"\x03" + c1)
        s0s1 = self.read(1 + 1536)
        self.read(1536)
        self.s.sendall(s0s1[1:])
        self.send_msg(2, 1, 0, 0, struct.pack(">I", self.OUT_CHUNK))

    def read(self, n):
        while len(self.buf) < n:
            d = self.s.recv(65536)
            if not d:
                raise ConnectionError("closed by the server")
            self.buf += d
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send_msg(self, csid, typ, sid, ts, payload):
        ext = ts >= 0xFFFFFF
        head = bytes([csid]) + (0xFFFFFF if ext else ts).to_bytes(3, "big") + len(payload).to_bytes(3, "big")
        head += bytes([typ]) + struct.pack("<I", sid) + (struct.pack(">I", ts) if ext else b"")
        parts = [head + payload[: self.OUT_CHUNK]]
        for off in range(self.OUT_CHUNK, len(payload), self.OUT_CHUNK):
            parts.append(bytes([0xC0 | csid]) + (struct.pack(">I", ts) if ext else b"") + payload[off : off + self.OUT_CHUNK])
        self.s.sendall(b"".join(parts))

    def recv_msg(self):
        while True:
            b0 = self.read(1)[0]
            fmt, csid = b0 >> 6, b0 & 0x3F
            if csid == 0:
                csid = 64 + self.read(1)[0]
            elif csid == 1:
                x = self.read(2)
                csid = 64 + x[0] + x[1] * 256
            p = self.prev.setdefault(csid, {"ts": 0, "len": 0, "type": 0, "sid": 0, "delta": 0, "ext": False, "data": b""})
            new = not p["data"]
            if fmt <= 2:
                t = int.from_bytes(self.read(3), "big")
                if fmt <= 1:
                    p["len"] = int.from_bytes(self.read(3), "big")
                    p["type"] = self.read(1)[0]
                if fmt == 0:
                    p["sid"] = struct.unpack("<I", self.read(4))[0]
                p["ext"] = t == 0xFFFFFF
                if p["ext"]:
                    t = struct.unpack(">I", self.read(4))[0]
                if fmt == 0:
                    p["ts"], p["delta"] = t, 0
                else:
                    p["delta"] = t
                    p["ts"] += t
            else:
                if p["ext"]:
                    self.read(4)
                if new:
                    p["ts"] += p["delta"]
            p["data"] += self.read(min(self.in_chunk, p["len"] - len(p["data"])))
            if len(p["data"]) >= p["len"]:
                data, p["data"] = p["data"], b""
                if p["type"] == 1:
                    self.in_chunk = struct.unpack(">I", data[:4])[0] & 0x7FFFFFFF
                return p["type"], p["sid"], data

    def command(self, sid, *values):
        self.send_msg(3 if sid == 0 else 8, 20, sid, 0, b"".join(amf_enc(v) for v in values))

    def wait_command(self, names):
        while True:
            typ, _, data = self.recv_msg()
            if typ == 20:
                vals = amf_all(data)
                if vals and vals[0] in names:
                    return vals

    def publish(self, host, stream):
        self.command(0, "connect", 1, {"app": "live", "type": "nonprivate", "flashVer": "FMLE/3.0", "tcUrl": f"rtmp://{host}/live"})
        r = self.wait_command(("_result", "_error"))
        if r[0] != "_result":
            raise Refused(f"connect: {r}")
        self.command(0, "createStream", 2, None)
        r = self.wait_command(("_result", "_error"))
        sid = int(r[3])
        self.command(sid, "publish", 3, None, stream, "live")
        st = self.wait_command(("onStatus",))
        info = st[3] if len(st) > 3 and isinstance(st[3], dict) else {}
        if info.get("code") != "NetStream.Publish.Start":
            raise Refused(f"{info.get('code')}: {info.get('description')}")
        return sid

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


class Publisher(threading.Thread):
    """Publishes the FLV to `target`, paced by timestamps; when the connection fails it goes to `next_target` at
    once (an encoder behind a load balancer that knows the origin is gone), and retries every `retry` s while
    refused. Each session starts with the sequence headers and the file's first keyframe, timestamps from 0."""

    def __init__(self, tags, loop_ms, stream, target, retry):
        super().__init__(daemon=True)
        self.tags, self.loop_ms, self.stream = tags, loop_ms, stream
        self.target, self.next_target, self.retry = target, target, retry
        self.stop = threading.Event()
        self.events = []  # (monotonic, kind, detail): connect, refused, accepted, first_frame, failed
        self.lock = threading.Lock()

    def log(self, kind, detail=""):
        with self.lock:
            self.events.append((now(), kind, detail))

    def run(self):
        heads = [t for t in self.tags if t[3]]
        media = [t for t in self.tags if not t[3]]
        while not self.stop.is_set():
            target = self.target
            try:
                c = Rtmp(target)
            except OSError as e:
                self.log("refused", f"connect {target}: {e}")
                self.stop.wait(self.retry)
                continue
            try:
                sid = c.publish(f"{target[0]}:{target[1]}", self.stream)
                self.log("accepted", f"{target}")
                for typ, _, data, _ in heads:
                    c.send_msg(4 if typ == 8 else 6, typ, sid, 0, data)
                base, i, off, first = now(), 0, 0, True
                while not self.stop.is_set():
                    typ, ts, data, _ = media[i]
                    due = base + (ts + off) / 1000
                    d = due - now()
                    if d > 0:
                        time.sleep(d)
                    if first and typ == 9:
                        self.log("first_frame", f"{target}")
                        first = False
                    c.send_msg(4 if typ == 8 else 6, typ, sid, ts + off, data)
                    i += 1
                    if i == len(media):
                        i, off = 0, off + self.loop_ms
            except Refused as e:
                self.log("refused", str(e))
                self.stop.wait(self.retry)
            except OSError as e:
                self.log("failed", f"{target}: {e}")
                self.target = self.next_target
            finally:
                c.close()


# ---------------------------------------------------------------------------------------------- HTTP-FLV reader


class FlvReader(threading.Thread):
    """GET http://ADDR/live/STREAM.flv on a raw socket; records (arrival, timestamp, keyframe) of video frames."""

    def __init__(self, name, addr, stream):
        super().__init__(daemon=True)
        self.name_, self.addr, self.stream = name, addr, stream
        self.frames = []
        self.ended = None
        self.sock = None

    def run(self):
        try:
            self.read()
            self.ended = (now(), "closed")
        except Exception as e:  # noqa: BLE001 - the reason is the result
            self.ended = (now(), repr(e))

    def read(self):
        s = self.sock = socket.create_connection(self.addr, timeout=60)
        host = f"{self.addr[0]}:{self.addr[1]}"
        s.sendall(f"GET /live/{self.stream}.flv HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\n\r\n".encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = s.recv(65536)
            if not d:
                raise ConnectionError("closed before the headers ended")
            buf += d
        head, body = buf.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n")[0].decode()
        if " 200 " not in status + " ":
            raise ConnectionError(status)
        chunked = b"chunked" in head.lower()
        raw = bytearray()  # de-chunked body not yet parsed
        cbuf = bytearray(body)  # chunked framing not yet decoded
        pos, header_done = 0, False
        while True:
            if chunked:
                while True:
                    j = cbuf.find(b"\r\n")
                    if j < 0:
                        break
                    size = int(cbuf[:j].split(b";")[0], 16)
                    if size == 0:
                        return
                    if len(cbuf) < j + 2 + size + 2:
                        break
                    raw += cbuf[j + 2 : j + 2 + size]
                    del cbuf[: j + 2 + size + 2]
            else:
                raw += cbuf
                cbuf.clear()
            t = now()
            if not header_done and len(raw) >= 13:
                pos, header_done = struct.unpack(">I", raw[5:9])[0] + 4, True
            while header_done and pos + 11 <= len(raw):
                typ = raw[pos] & 0x1F
                size = int.from_bytes(raw[pos + 1 : pos + 4], "big")
                if pos + 11 + size + 4 > len(raw):
                    break
                if typ == 9 and size >= 2 and raw[pos + 12] == 1:
                    ts = int.from_bytes(raw[pos + 4 : pos + 7], "big") | (raw[pos + 7] << 24)
                    self.frames.append((t, ts, raw[pos + 11] >> 4 == 1))
                pos += 11 + size + 4
            if pos > 1 << 20:
                del raw[:pos]
                pos = 0
            d = s.recv(65536)
            if not d:
                return
            cbuf += d

    def close(self):
        if self.sock:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Drain(threading.Thread):
    """An HTTP-FLV player that reads everything as it comes and looks at none of it (costs the tool little)."""

    def __init__(self, addr, path, headers=""):
        super().__init__(daemon=True)
        self.addr, self.path, self.headers = addr, path, headers
        self.bytes = 0
        self.error = None
        self.closed = False
        self.sock = socket.create_connection(addr, timeout=10)

    def run(self):
        buf = bytearray(65536)
        try:
            self.sock.sendall(f"GET {self.path} HTTP/1.1\r\nHost: {self.addr[0]}:{self.addr[1]}\r\n{self.headers}\r\n".encode())
            while True:
                n = self.sock.recv_into(buf)
                if n == 0:
                    return
                self.bytes += n
        except OSError as e:
            if not self.closed:
                self.error = e

    def close(self):
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


_LIBC = None


def cpu_secs(pid):
    """CPU seconds (user + system, every thread) of a process, from its CPU-time clock (nanoseconds)."""
    global _LIBC
    import ctypes

    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    cid = ctypes.c_int()
    if _LIBC.clock_getcpuclockid(int(pid), ctypes.byref(cid)) != 0:
        raise OSError(ctypes.get_errno(), f"clock_getcpuclockid({pid})")
    return time.clock_gettime(cid.value)


def busy_jiffies():
    v = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    return sum(v) - v[3] - v[4], sum(v)


# ---------------------------------------------------------------------------------------------- origin cost


def cost(a):
    """The origin's CPU per direct ?mode=rtc reader and per edge, in one window: phases alternate (publisher only;
    + 2 direct readers; publisher only; + 2 readers on the origin that look like edge pulls (an edge's query and
    its x-livegate-via header, without an edge); publisher only; + 1 reader on each edge, so 2 edge pulls;
    + --edge-readers more on each edge), each measured over --window s after --settle s, and a unit's cost is its
    phase's rate minus the mean of the publisher-only phases around it, so the machine's drift cancels out."""
    o_pid, o_rtmp, o_http = a.attach.split(",")
    o_pid, o_rtmp, o_http = int(o_pid), parse_addr(o_rtmp), parse_addr(o_http)
    edges = [(n, parse_addr(v)) for n, v in parse_named(a.edges)]
    pids = {n: int(p) for n, p in parse_named(a.node_pids)}
    tags, loop_ms, media = read_flv(a.input)
    pub = Publisher(tags, loop_ms, a.stream, o_rtmp, 0.5)
    pub.start()
    players = []
    rows = []
    errors = []

    def drop_players():
        for p in players:
            p.close()
        for p in players:
            p.join(5)
        errors.extend(p.error for p in players if p.error)
        players.clear()

    def wait_edges_idle():
        t = now()
        while now() - t < 30:
            if not any(http_json(addr, "/api/v1/pulls").get("pulls") for _, addr in edges):
                return
            time.sleep(0.5)

    def measure(phase, cycle):
        time.sleep(a.settle)
        procs = {"origin": o_pid, **pids}
        c0, j0, s0, t0 = {n: cpu_secs(p) for n, p in procs.items()}, busy_jiffies(), time.process_time(), now()
        b0 = sum(p.bytes for p in players)
        time.sleep(a.window)
        c1, j1, s1, t1 = {n: cpu_secs(p) for n, p in procs.items()}, busy_jiffies(), time.process_time(), now()
        b1 = sum(p.bytes for p in players)
        secs = t1 - t0
        busy = (j1[0] - j0[0]) / max(j1[1] - j0[1], 1) * os.cpu_count()
        ours = (sum(c1.values()) - sum(c0.values()) + s1 - s0) / secs
        row = {"cycle": cycle, "phase": phase, "secs": secs, "load": open("/proc/loadavg").read().split()[0],
               "machine_busy_cpus": busy, "others_cpus": max(busy - ours, 0.0),
               "players": len(players), "players_mbit_s": (b1 - b0) * 8 / secs / 1e6,
               "cpu_ms_per_s": {n: (c1[n] - c0[n]) * 1e3 / secs for n in procs}}
        rows.append(row)
        print(f"  cycle {cycle} {phase:<14} origin {row['cpu_ms_per_s']['origin']:6.2f} ms/s; "
              + ", ".join(f"{n} {v:.2f}" for n, v in row["cpu_ms_per_s"].items() if n != "origin")
              + f"; {len(players)} players; others {row['others_cpus']:.2f} CPUs busy, load {row['load']}", flush=True)

    try:
        t = now()
        while not any(k == "accepted" for _, k, _ in pub.events):
            if now() - t > 15:
                raise RuntimeError(f"publisher: {pub.events}")
            time.sleep(0.05)
        time.sleep(2)
        print(f"cost: origin pid {o_pid}, {a.cycles} cycles of {a.window:.0f} s windows after {a.settle:.0f} s settling; stream live/{a.stream}", flush=True)
        for cycle in range(1, a.cycles + 1):
            wait_edges_idle()
            measure("publisher", cycle)
            for _ in range(2):
                players.append(Drain(o_http, f"/live/{a.stream}.flv?mode=rtc"))
            for p in players:
                p.start()
            measure("direct-2", cycle)
            drop_players()
            measure("publisher", cycle)
            if a.via:
                for _ in range(2):
                    players.append(Drain(o_http, f"/live/{a.stream}.flv?mode=rtc&min_cache=0&max_cache=1", "x-livegate-via: bench\r\n"))
                for p in players:
                    p.start()
                measure("as-edge-2", cycle)
                drop_players()
                measure("publisher", cycle)
            for _, addr in edges:
                players.append(Drain(addr, f"/live/{a.stream}.flv"))
            for p in players:
                p.start()
            measure("edges-1", cycle)
            if a.edge_readers:
                more = [Drain(addr, f"/live/{a.stream}.flv") for _, addr in edges for _ in range(a.edge_readers)]
                for p in more:
                    p.start()
                players.extend(more)
                measure(f"edges-{a.edge_readers + 1}", cycle)
            drop_players()
        wait_edges_idle()
        measure("publisher", a.cycles + 1)
    finally:
        pub.stop.set()
        drop_players()
    if errors:
        print(f"  player errors: {errors[:3]}")
    print(json.dumps({"cost": rows, "edge_readers": a.edge_readers}))


QUIET = 0.15


def cost_units(rows, quiet=None):
    """Per cycle: the per-unit origin cost of each phase (us/s), against the publisher-only phases around it.
    With `quiet`, only windows in which other processes kept fewer than that many CPUs busy count: on this VM the
    same work costs up to 2.5x the CPU time while the other core is busy (a hyperthread sibling on the host?)."""
    ok = lambda r: quiet is None or r.get("others_cpus", 0) < quiet  # noqa: E731
    base = [(i, r) for i, r in enumerate(rows) if r["phase"] == "publisher" and ok(r)]
    out = []
    for i, r in enumerate(rows):
        if r["phase"] == "publisher" or not ok(r):
            continue
        before = [b for j, b in base if j < i][-1:]
        after = [b for j, b in base if j > i][:1]
        ref = [b["cpu_ms_per_s"]["origin"] for b in before + after]
        if not ref:
            continue
        units = 2  # two direct readers, or two edges
        out.append({"cycle": r["cycle"], "phase": r["phase"], "load": r["load"], "machine": r["machine_busy_cpus"],
                    "base_ms_s": sum(ref) / len(ref), "per_unit_us_s": (r["cpu_ms_per_s"]["origin"] - sum(ref) / len(ref)) * 1e3 / units,
                    "edges_ms_s": {n: v for n, v in r["cpu_ms_per_s"].items() if n != "origin"}})
    return out


# ---------------------------------------------------------------------------------------------- Redis


def redis_cmd(port, *args):
    """One command's raw RESP answer (enough for INFO)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"".join([f"*{len(args)}\r\n".encode()] + [f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args]))
        buf = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            buf += d
            j = buf.find(b"\r\n")
            if buf[:1] == b"$" and j > 0 and len(buf) >= j + 2 + int(buf[1:j]) + 2:
                break
            if buf[:1] != b"$" and j > 0:
                break
        return buf.decode(errors="replace")


def commandstats(port):
    out = {}
    for line in redis_cmd(port, "INFO", "commandstats").splitlines():
        m = re.match(r"cmdstat_([^:]+):calls=(\d+)", line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


MON_RE = re.compile(r'^\+(\d+\.\d+) \[\d+ ([^\]]+)\] "([^"]+)"(?: "([^"]*)")?')


class Monitor(threading.Thread):
    """Every command Redis runs, from MONITOR: (wall time, client "IP:PORT" or "lua", COMMAND, first arg)."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.s = socket.create_connection(("127.0.0.1", port))
        self.s.sendall(b"MONITOR\r\n")
        self.seen = []
        self.running = True

    def run(self):
        buf = b""
        while self.running:
            try:
                d = self.s.recv(65536)
            except OSError:
                return
            if not d:
                return
            buf += d
            *lines, buf = buf.split(b"\r\n")
            for line in lines:
                m = MON_RE.match(line.decode(errors="replace"))
                if m:
                    self.seen.append((float(m.group(1)), m.group(2), m.group(3).upper(), m.group(4) or ""))

    def between(self, t0, t1):
        return [x for x in self.seen if t0 <= x[0] < t1]

    def close(self):
        self.running = False
        try:
            self.s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


_SCRIPTS = None


def cmd_label(cmd, arg):
    """EVALSHA with the name of its script (claim, renew, release); other commands as they are."""
    global _SCRIPTS
    if cmd != "EVALSHA":
        return cmd
    if _SCRIPTS is None:
        _SCRIPTS = script_names()
    return f"EVALSHA:{_SCRIPTS.get(arg, arg[:8])}"


def redis_clients(port, names):
    """Client "IP:PORT" -> node name, for the livegate processes in `names` (pid -> name), from `ss -tnp`."""
    out = {}
    r = subprocess.run(["ss", "-Htnp", "state", "established", f"( dport = :{port} )"], capture_output=True, text=True)
    for line in r.stdout.splitlines():
        f = line.split()
        m = re.search(r"pid=(\d+)", line)
        if m and int(m.group(1)) in names and len(f) >= 4:
            out[f[2]] = names[int(m.group(1))]
    return out


# ---------------------------------------------------------------------------------------------- livegate nodes


class Node:
    def __init__(self, binary, work, role, node_id, redis_url, log_level="warn"):
        self.binary, self.role, self.id = binary, role, node_id
        self.dir = os.path.join(work, node_id)
        os.makedirs(self.dir, exist_ok=True)
        self.cfg = os.path.join(self.dir, "livegate.toml")
        with open(self.cfg, "w") as f:
            f.write(node_config(role, node_id, redis_url, log_level))
        self.proc = None

    def start(self):
        ready = os.path.join(self.dir, "ready.json")
        if os.path.exists(ready):
            os.unlink(ready)
        log = open(os.path.join(self.dir, "livegate.log"), "ab")
        self.proc = subprocess.Popen([self.binary, "serve", "--config", self.cfg, "--ready-file", ready], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        t = now()
        while now() - t < 30:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.id} exited at start; see {self.dir}/livegate.log")
            try:
                r = json.load(open(ready))
                self.rtmp = parse_addr(r["rtmp"])
                self.http = parse_addr(r["http"])
                return self
            except (OSError, ValueError, KeyError):
                time.sleep(0.05)
        raise RuntimeError(f"{self.id} did not come up")

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


def node_config(role, node_id, redis_url, log_level="warn"):
    return f"""[rtmp]
listen = "127.0.0.1:0"
max_connections_per_addr = 0

[http]
listen = "127.0.0.1:0"
max_connections_per_addr = 0

[log]
level = "{log_level}"

[cluster]
role = "{role}"
node_id = "{node_id}"
redis_url = "{redis_url}"
"""


def parse_addr(s):
    h, p = s.rsplit(":", 1)
    return (h, int(p))


def parse_named(spec):
    """NAME=VALUE,NAME=VALUE -> [(name, value)]."""
    return [tuple(x.split("=", 1)) for x in spec.split(",") if x]


def pct(xs, p):
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = max(1, min(len(s), int(-(-p / 100 * len(s) // 1))))
    return s[k - 1]


def http_json(addr, path):
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {addr[0]}:{addr[1]}\r\nConnection: close\r\n\r\n".encode())
        buf = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            buf += d
    head, body = buf.split(b"\r\n\r\n", 1)
    if b"chunked" in head.lower():
        out, rest = b"", body
        while rest:
            j = rest.find(b"\r\n")
            n = int(rest[:j], 16)
            if n == 0:
                break
            out += rest[j + 2 : j + 2 + n]
            rest = rest[j + 2 + n + 2 :]
        body = out
    return json.loads(body)


# ---------------------------------------------------------------------------------------------- failover


def failover(a):
    tags, loop_ms, media = read_flv(a.input)
    edges = [(n, parse_addr(v)) for n, v in parse_named(a.edges)]
    names = {int(p): n for n, p in parse_named(a.node_pids)}
    origins = [Node(a.livegate, a.work, "origin", "origin-fa", a.redis_url), Node(a.livegate, a.work, "origin", "origin-fb", a.redis_url)]
    mon = None
    try:
        for o in origins:
            o.start()
        holder = 0
        pub = Publisher(tags, loop_ms, a.stream, origins[holder].rtmp, a.retry_ms / 1000)
        pub.start()
        t = now()
        while not any(k == "accepted" for _, k, _ in pub.events):
            if now() - t > 15:
                raise RuntimeError(f"publisher: {pub.events}")
            time.sleep(0.05)
        readers = [FlvReader(n, addr, a.stream) for n, addr in edges]
        for r in readers:
            r.start()
        time.sleep(a.settle)
        for r in readers:
            if not r.frames:
                raise RuntimeError(f"edge reader {r.name_} got no frame: {r.ended}")
        mon = Monitor(a.redis_port)
        mon.start()
        print(f"failover: {a.reps} kills, {len(readers)} edge readers, publisher retry {a.retry_ms} ms, stream live/{a.stream}", flush=True)
        rows = []
        for rep in range(a.reps):
            for o in origins:
                names[o.proc.pid] = o.id
            clients = redis_clients(a.redis_port, names)
            other = 1 - holder
            pub.next_target = origins[other].rtmp
            n_ev = len(pub.events)
            t_kill, w_kill = now(), time.time()
            origins[holder].kill()
            # Wait for the new origin's first frame and every reader's first frame after it.
            deadline = t_kill + 30
            first_sent = accepted = None
            while now() < deadline:
                ev = pub.events[n_ev:]
                accepted = next((t for t, k, d in ev if k == "accepted"), None)
                first_sent = next((t for t, k, d in ev if k == "first_frame"), None)
                if first_sent and all(any(f[0] > first_sent for f in r.frames[-200:]) for r in readers):
                    break
                time.sleep(0.02)
            w_done = time.time()
            clients.update(redis_clients(a.redis_port, names))
            refusals = sum(1 for _, k, _ in pub.events[n_ev:] if k == "refused")
            failed = next((t for t, k, d in pub.events[n_ev:] if k == "failed"), None)
            row = {"rep": rep + 1, "killed": origins[holder].id, "to": origins[other].id, "refusals": refusals,
                   "publisher_saw_failure_ms": (failed - t_kill) * 1e3 if failed else None,
                   "kill_to_accept_ms": (accepted - t_kill) * 1e3 if accepted else None,
                   "accept_to_first_sent_ms": (first_sent - accepted) * 1e3 if first_sent and accepted else None, "edges": {}}
            for r in readers:
                old = [f for f in r.frames if f[0] <= t_kill + 0.2]
                new = [f for f in r.frames if first_sent and f[0] > first_sent]
                e = {"ok": bool(new), "ended": r.ended}
                if new:
                    e.update({"first_sent_to_edge_ms": (new[0][0] - first_sent) * 1e3, "kill_to_edge_ms": (new[0][0] - t_kill) * 1e3,
                              "freeze_ms": (new[0][0] - old[-1][0]) * 1e3 if old else None, "first_new_is_key": new[0][2]})
                row["edges"][r.name_] = e
            # The edges' Redis commands from the kill to recovery, by node.
            cmds = Counter()
            for w, client, cmd, key in mon.between(w_kill, w_done):
                who = "lua" if client == "lua" else clients.get(client, client)
                cmds[(who, cmd_label(cmd, key))] += 1
            row["redis"] = {f"{w} {c}": n for (w, c), n in sorted(cmds.items())}
            row["redis_window_s"] = w_done - w_kill
            rows.append(row)
            edge_part = ", ".join(f"{n} {e.get('first_sent_to_edge_ms', float('nan')):.0f}" for n, e in row["edges"].items())
            total = ", ".join(f"{n} {e.get('kill_to_edge_ms', float('nan')):.0f}" for n, e in row["edges"].items())
            print(f"  rep {rep + 1}: kill {row['killed']} -> accepted by {row['to']} after {row['kill_to_accept_ms'] or float('nan'):.0f} ms "
                  f"({refusals} refusals); first frame sent -> edge reader: {edge_part} ms; kill -> edge reader: {total} ms; "
                  f"redis: {row['redis']}", flush=True)
            # Restart the killed origin (same node id) for the next repetition, which kills the other one.
            time.sleep(a.settle)
            origins[holder].start()
            holder = other
            time.sleep(2)
        pub.stop.set()
        for r in readers:
            r.close()
        summarize_failover(rows, a)
    finally:
        if mon:
            mon.close()
        for o in origins:
            o.kill()


def summarize_failover(rows, a):
    def stat(xs):
        xs = [x for x in xs if x is not None]
        return f"p50 {pct(xs, 50):.0f} ms, max {max(xs):.0f} ms (n={len(xs)})" if xs else "none"

    edge_vals = lambda k: [e.get(k) for r in rows for e in r["edges"].values()]  # noqa: E731
    accept = [r["kill_to_accept_ms"] for r in rows]
    edge = edge_vals("first_sent_to_edge_ms")
    total = edge_vals("kill_to_edge_ms")
    freeze = edge_vals("freeze_ms")
    lost = sum(1 for r in rows for e in r["edges"].values() if not e["ok"])
    print("failover summary")
    print(f"  kill -> new origin accepts the publish (TTL part, publisher retrying every {a.retry_ms} ms): {stat(accept)}")
    print(f"  new origin's first frame sent -> first new frame at an edge reader (edge part): {stat(edge)}")
    print(f"  kill -> first new frame at an edge reader: {stat(total)}")
    print(f"  edge readers' freeze (last frame before the kill -> first new frame): {stat(freeze)}")
    print(f"  edge readers that did not recover: {lost}; readers' first new frame a keyframe: "
          f"{sum(1 for r in rows for e in r['edges'].values() if e.get('first_new_is_key'))} of {len(edge)}")
    gets = Counter()
    secs = sum(r["redis_window_s"] for r in rows)
    for r in rows:
        for k, n in r["redis"].items():
            gets[k] += n
    print(f"  Redis during the {len(rows)} failovers ({secs:.1f} s from kill to the last edge reader's recovery):")
    for k, n in sorted(gets.items()):
        print(f"    {k:<28} {n:>5}  ({n / secs:.2f}/s)")
    print(json.dumps({"failover": rows}))


# ---------------------------------------------------------------------------------------------- redis


def redis_load(a):
    edges = [(n, parse_addr(v)) for n, v in parse_named(a.edges)]
    names = {int(p): n for n, p in parse_named(a.node_pids)}
    tags, loop_ms, media = read_flv(a.input)
    bitrate = media * 8 / (loop_ms / 1000)
    mon = Monitor(a.redis_port)
    mon.start()
    procs = []
    marks = {}
    try:
        clients = redis_clients(a.redis_port, names)
        time.sleep(1)
        marks["claims"] = time.time()
        total = int(a.settle + a.window + a.settle + 6)
        pub = subprocess.Popen([a.load, "--attach", a.attach, "--readers", "0", "--publishers", str(a.streams), "--stream", a.stream,
                                "--ramp-ms", "100", "--warmup-secs", "1", "--secs", str(total)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(pub)
        # Until every publisher is live (the tool says so), its output line by line; the rest is read at the end.
        out = ""
        for line in pub.stdout:
            out += line
            if "publishers live" in line:
                break
        else:
            raise RuntimeError(f"the publishers' tool ended:\n{out}")
        time.sleep(1)
        marks["first_readers"] = time.time()
        for i in range(a.streams):
            for n, addr in edges:
                procs.append(subprocess.Popen(["curl", "-s", "-o", "/dev/null", "--max-time", str(total + 10), f"http://{addr[0]}:{addr[1]}/live/{a.stream}-{i}.flv"]))
        time.sleep(a.settle)
        clients.update(redis_clients(a.redis_port, names))
        pulls0 = {n: {p["stream"]: p["bytes_in"] for p in http_json(addr, "/api/v1/pulls").get("pulls", [])} for n, addr in edges}
        s0, t0 = commandstats(a.redis_port), time.time()
        marks["steady"] = t0
        # Later readers of a stream each edge already pulls: they should cost Redis nothing.
        for n, addr in edges:
            for _ in range(a.later):
                procs.append(subprocess.Popen(["curl", "-s", "-o", "/dev/null", "--max-time", str(total + 10), f"http://{addr[0]}:{addr[1]}/live/{a.stream}-0.flv"]))
        time.sleep(a.window)
        s1, t1 = commandstats(a.redis_port), time.time()
        pulls1 = {n: {p["stream"]: p["bytes_in"] for p in http_json(addr, "/api/v1/pulls").get("pulls", [])} for n, addr in edges}
        marks["missing"] = time.time()
        for i in range(a.missing):
            n, addr = edges[i % len(edges)]
            subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://{addr[0]}:{addr[1]}/live/nobody-{i}.flv"])
        time.sleep(0.5)
        marks["releases"] = time.time()
        out += pub.communicate(timeout=total + 60)[0]
        time.sleep(1.5)
        marks["end"] = time.time()
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        mon.close()

    secs = t1 - t0
    print(f"redis: 1 origin, {len(edges)} edges, {a.streams} streams (each read on every edge), steady window {secs:.1f} s")
    print(f"  INFO commandstats, calls per second in the window (commands run by scripts included):")
    for k in sorted(set(s1) | set(s0)):
        d = s1.get(k, 0) - s0.get(k, 0)
        if d:
            print(f"    {k:<12} {d / secs:8.2f}/s  ({d} calls)")
    phases = ["claims", "first_readers", "steady", "missing", "releases", "end"]
    summary = {}
    for p0, p1 in zip(phases, phases[1:]):
        c = Counter()
        for w, client, cmd, key in mon.between(marks[p0], marks[p1]):
            who = "lua" if client == "lua" else clients.get(client, client)
            c[(who, cmd_label(cmd, key))] += 1
        dur = marks[p1] - marks[p0]
        summary[p0] = {"secs": dur, "commands": {f"{w} {cmd}": n for (w, cmd), n in sorted(c.items())}}
        print(f"  MONITOR, phase {p0} ({dur:.1f} s): " + ", ".join(f"{w} {cmd} {n}" for (w, cmd), n in sorted(c.items())))
    egress = []
    for n, _ in edges:
        for s, b1 in pulls1[n].items():
            if s in pulls0[n]:
                egress.append((b1 - pulls0[n][s]) * 8 / secs)
    if egress:
        print(f"  edge pulls: {len(egress)}, each receiving {sum(egress) / len(egress) / 1e6:.3f} Mbit/s (min {min(egress) / 1e6:.3f}, max {max(egress) / 1e6:.3f}) "
              f"from the origin; the input's media bitrate {bitrate / 1e6:.3f} Mbit/s")
    print(json.dumps({"redis": {"streams": a.streams, "edges": len(edges), "window_s": secs, "later_readers_per_edge": a.later,
                                "commandstats_per_s": {k: (s1.get(k, 0) - s0.get(k, 0)) / secs for k in set(s1) | set(s0) if s1.get(k, 0) - s0.get(k, 0)},
                                "phases": summary, "missing_requests": a.missing,
                                "pull_bps": sum(egress) / len(egress) if egress else None, "input_bps": bitrate}}))
    if pub.returncode != 0:
        print(f"  the publishers' tool failed ({pub.returncode}):\n{out[-2000:]}")


# ---------------------------------------------------------------------------------------------- summary


def med(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return float("nan")
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def rng(xs, fmt="{:.0f}"):
    xs = [x for x in xs if x is not None]
    return " / ".join(fmt.format(x) for x in xs) if xs else "-"


def jsonl(path):
    try:
        return [json.loads(line) for line in open(path) if line.strip()]
    except OSError:
        return []


def script_names():
    """sha1 -> claim/renew/release, from the Lua in src/cluster/directory.rs (redis-rs sends EVALSHA of the text)."""
    import hashlib

    try:
        src = open(os.path.join(os.path.dirname(__file__), "..", "src", "cluster", "directory.rs")).read()
    except OSError:
        return {}
    return {hashlib.sha1(m.group(2).encode()).hexdigest(): m.group(1).lower() for m in re.finditer(r'const (\w+): &str = r"(.*?)";', src, re.S)}


def summarize(a):
    stages = a.stages or ["cost", "full", "latency", "redis", "failover"]
    if "cost" in stages:
        for r in jsonl(os.path.join(a.dir, "cost.jsonl")):
            summarize_cost(r)
    if "full" in stages:
        summarize_full(jsonl(os.path.join(a.dir, "full.jsonl")))
    if "latency" in stages:
        summarize_latency(jsonl(os.path.join(a.dir, "latency.jsonl")))
    if "redis" in stages:
        for r in jsonl(os.path.join(a.dir, "redis.jsonl")):
            summarize_redis(r["redis"], jsonl(os.path.join(a.dir, "failover.jsonl")))
    if "failover" in stages:
        for r in jsonl(os.path.join(a.dir, "failover.jsonl")):
            summarize_failover(r["failover"], argparse.Namespace(retry_ms=100))


def summarize_cost(r):
    print("origin CPU per unit, one window (phases alternated; a unit = a phase's rate minus the mean of the publisher-only")
    print("phases around it, / 2), CPU-us per second:")
    for quiet in (None, QUIET):
        summarize_units(r["cost"], quiet)


def summarize_units(rows, quiet):
    units = cost_units(rows, quiet)
    by = defaultdict(list)
    for u in units:
        by[u["phase"]].append(u)
    base = [x["cpu_ms_per_s"]["origin"] for x in rows if x["phase"] == "publisher" and (quiet is None or x.get("others_cpus", 0) < quiet)]
    if not base:
        print(f"  no publisher-only window with other processes under {quiet} CPUs")
        return
    print(f" {'all windows' if quiet is None else f'windows in which other processes kept < {quiet} CPUs busy'}: publisher-only "
          f"origin {min(base):.2f} - {max(base):.2f} ms/s (median {med(base):.2f}, {len(base)} windows)")
    d = med([u["per_unit_us_s"] for u in by.get("direct-2", [])])
    for ph, us in by.items():
        v = sorted(u["per_unit_us_s"] for u in us)
        q1, q3 = pct(v, 25), pct(v, 75)
        edges = {n: med([u["edges_ms_s"][n] for u in us]) for n in us[0]["edges_ms_s"]}
        print(f"  {ph:<10} median {med(v):5.0f} us/s per unit (quartiles {q1:.0f} - {q3:.0f}, n={len(v)})"
              + (f" = {med(v) / d:.2f} x a direct reader" if ph != "direct-2" and d > 0 else "")
              + "; edges " + ", ".join(f"{n} {x:.2f} ms/s" for n, x in edges.items()))


def summarize_full(runs):
    if not runs:
        return
    print(f"full size: 2 edges x {runs[0]['result']['readers'] // 2} HTTP-FLV readers (default mode), per run:")
    for r in runs:
        x = r["result"]
        st = x.get("steady") or {}
        secs = x["seconds"]
        pub_mbs = x["published_mb"] / secs
        net = x.get("livegate_steady_net_cpu_ms_per_s")
        print(f"  round {r['rep']} (load {r['load'].split()[0]}): {x['readers']} readers, {x['readers_behind']} behind, {x['disconnects']} disconnects, "
              f"{x['delivered_mb']:.0f} MB delivered; latency p50 {x['latency_ms']['p50']:.1f} / p95 {x['latency_ms']['p95']:.1f} / p99 {x['latency_ms']['p99']:.1f} ms; "
              f"first keyframe p50 {x['ttfk_ms']['p50']:.1f} / p95 {x['ttfk_ms']['p95']:.1f} ms; "
              f"tool {st.get('tool_cpu_s', 0) / max(st.get('secs', 1), 1e-3) * 100:.0f}% of a core, machine {st.get('machine_busy_cpus') or 0:.2f} CPUs busy")
        if net is not None:
            print(f"    origin: {x['livegate_cpu_s'] / secs * 1e3:.1f} ms/s over the run; steady {net:.2f} ms/s over its publisher-only rate "
                  f"({x['livegate_publisher_only_cpu_ms_per_s']:.2f} ms/s, warm-up) for 2 edges = {net * 1e3 / 2:.0f} us/s per edge "
                  f"= {net * 1e3 / (2 * pub_mbs):.0f} CPU-us per MB sent to the edges (~{pub_mbs * 8:.2f} Mbit/s media per edge)")
        for w, b in zip(x.get("watched", []), x.get("by_address", [])):
            n = b["readers"]
            steady = w.get("steady_cpu_ms_per_s")
            print(f"    {w['name']}: {n} readers, {b['readers_behind']} behind; CPU {steady or float('nan'):.1f} ms/s steady = "
                  f"{(steady or float('nan')) * 1e3 / max(n, 1):.0f} us per reader-second, {w['cpu_s'] * 1e6 / max(b['delivered_mb'], 1e-9):.0f} us per delivered MB "
                  f"(whole run); RSS +{(w['rss_end_kib'] - w['rss_before_kib']) / max(n, 1):.1f} KiB per reader ({w['rss_before_kib']} -> {w['rss_end_kib']} KiB); "
                  f"latency p50 {b['latency_ms']['p50']:.1f} / p95 {b['latency_ms']['p95']:.1f} / p99 {b['latency_ms']['p99']:.1f} ms; "
                  f"delivered {b['delivered_mb'] * 8 / secs / max(n, 1):.3f} Mbit/s per reader")


def summarize_latency(runs):
    if not runs:
        return
    print("added latency publisher -> reader, ms (readers on the origin vs on the edges, one run each):")
    hop = defaultdict(lambda: defaultdict(list))
    for r in runs:
        x = r["result"]
        b = x.get("by_address", [])
        if len(b) < 3:
            continue
        o = b[0]["latency_ms"]
        e = [y["latency_ms"] for y in b[1:]]
        ep50 = sum(y["p50"] for y in e) / len(e)
        ep95 = sum(y["p95"] for y in e) / len(e)
        hop[r["tag"]]["o50"].append(o["p50"])
        hop[r["tag"]]["o95"].append(o["p95"])
        hop[r["tag"]]["e50"].append(ep50)
        hop[r["tag"]]["e95"].append(ep95)
        hop[r["tag"]]["behind"].append(x["readers_behind"])
        print(f"  {r['tag']:<8} round {r['rep']} (load {r['load'].split()[0]}, {x['readers']} readers, {x['readers_behind']} behind): origin p50 {o['p50']:.1f} / p95 {o['p95']:.1f} / p99 {o['p99']:.1f}; "
              + "; ".join(f"edge-{i + 1} p50 {y['p50']:.1f} / p95 {y['p95']:.1f} / p99 {y['p99']:.1f}" for i, y in enumerate(e))
              + f"; hop p50 {ep50 - o['p50']:+.1f}, p95 {ep95 - o['p95']:+.1f}")
    for tag, h in hop.items():
        d50 = [e - o for e, o in zip(h["e50"], h["o50"])]
        d95 = [e - o for e, o in zip(h["e95"], h["o95"])]
        print(f"  {tag}: origin p50 {rng(h['o50'], '{:.1f}')}, p95 {rng(h['o95'], '{:.1f}')}; edges p50 {rng(h['e50'], '{:.1f}')}, p95 {rng(h['e95'], '{:.1f}')}; "
              f"edge hop p50 {rng(d50, '{:+.1f}')} (median {med(d50):+.1f}), p95 {rng(d95, '{:+.1f}')} (median {med(d95):+.1f})")


def summarize_redis(r, failovers):
    print(f"Redis: 1 origin, {r['edges']} edges, {r['streams']} streams, ttl 3 s (default), steady window {r['window_s']:.1f} s:")
    print("  commandstats per second: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["commandstats_per_s"].items())))
    print(f"  total {sum(r['commandstats_per_s'].values()):.2f} commands/s (commands run inside scripts included)")

    for ph, v in r["phases"].items():
        print(f"  {ph} ({v['secs']:.1f} s): " + ", ".join(f"{k} {n}" for k, n in v["commands"].items()))
    steady = r["phases"]["steady"]
    secs = steady["secs"]
    c = steady["commands"]
    node_sets = {k.split()[0]: n / secs for k, n in c.items() if k.endswith(" SET") and not k.startswith("lua")}
    evalsha = {k: n / secs for k, n in c.items() if " EVALSHA" in k}
    lua = sum(n for k, n in c.items() if k.startswith("lua ")) / secs
    print(f"  per node SET/s (heartbeats): {node_sets}; EVALSHA/s: {evalsha}; inside scripts {lua:.2f}/s = {lua / r['streams']:.2f} per stream per s")
    edge_gets = {k: n for k, n in c.items() if k.startswith("edge") and " GET" in k}
    print(f"  edges' GETs in the steady window (with {r.get('later_readers_per_edge', 0)} more readers per edge joining): {edge_gets or 0}")
    fr = r["phases"]["first_readers"]["commands"]
    gets = sum(n for k, n in fr.items() if k.startswith("edge") and k.endswith(" GET"))
    print(f"  first readers: {gets} edge GETs for {r['streams']} streams x {r['edges']} edges = {gets / (r['streams'] * r['edges']):.2f} per stream per edge")
    ms = r["phases"]["missing"]["commands"]
    gets = sum(n for k, n in ms.items() if k.startswith("edge") and k.endswith(" GET"))
    print(f"  streams nobody has: {gets} edge GETs for {r['missing_requests']} requests = {gets / max(r['missing_requests'], 1):.2f} per request")
    if r.get("pull_bps"):
        print(f"  origin egress per edge per stream (edge pull bytes_in): {r['pull_bps'] / 1e6:.3f} Mbit/s; input media {r['input_bps'] / 1e6:.3f} Mbit/s")
    for f in failovers:
        tot, secs = Counter(), 0.0
        for row in f["failover"]:
            secs += row["redis_window_s"]
            for k, n in row["redis"].items():
                tot[k] += n
        print(f"  failover ({len(f['failover'])} kills, {secs:.1f} s): " + ", ".join(f"{k} {n / secs:.2f}/s" for k, n in sorted(tot.items())))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("failover")
    f.add_argument("--livegate", default="target/release/livegate")
    f.add_argument("--work", required=True, help="directory for the origins' configs and logs")
    f.add_argument("--redis-url", required=True)
    f.add_argument("--redis-port", type=int, required=True)
    f.add_argument("--edges", required=True, help="NAME=HTTP_ADDR,...")
    f.add_argument("--node-pids", default="", help="NAME=PID,... of the other nodes (to name Redis clients)")
    f.add_argument("--input", default="target/load-input-720p.flv")
    f.add_argument("--stream", default="fo")
    f.add_argument("--reps", type=int, default=5)
    f.add_argument("--retry-ms", type=int, default=100)
    f.add_argument("--settle", type=float, default=4.0)
    r = sub.add_parser("redis")
    r.add_argument("--load", default="target/release/livegate-load")
    r.add_argument("--attach", required=True, help="the origin: PID,RTMP_ADDR,HTTP_ADDR")
    r.add_argument("--redis-port", type=int, required=True)
    r.add_argument("--edges", required=True, help="NAME=HTTP_ADDR,...")
    r.add_argument("--node-pids", default="", help="NAME=PID,... of the origin and the edges (to name Redis clients)")
    r.add_argument("--input", default="target/load-input-720p.flv")
    r.add_argument("--stream", default="rs")
    r.add_argument("--streams", type=int, default=10)
    r.add_argument("--window", type=float, default=30)
    r.add_argument("--settle", type=float, default=5)
    r.add_argument("--missing", type=int, default=20)
    r.add_argument("--later", type=int, default=20, help="more readers of stream 0 on each edge in the steady window")
    c = sub.add_parser("cost")
    c.add_argument("--attach", required=True, help="the origin: PID,RTMP_ADDR,HTTP_ADDR")
    c.add_argument("--edges", required=True, help="NAME=HTTP_ADDR,...")
    c.add_argument("--node-pids", default="", help="NAME=PID,... of the edges (their CPU is reported too)")
    c.add_argument("--input", default="target/load-input-720p.flv")
    c.add_argument("--stream", default="cost")
    c.add_argument("--cycles", type=int, default=10)
    c.add_argument("--window", type=float, default=5)
    c.add_argument("--settle", type=float, default=2)
    c.add_argument("--edge-readers", type=int, default=100, help="more players on each edge in the last phase (0: none)")
    c.add_argument("--no-via", dest="via", action="store_false", help="leave out the phase of readers that look like edge pulls")
    m = sub.add_parser("summarize")
    m.add_argument("dir")
    m.add_argument("stages", nargs="*")
    a = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if a.cmd == "failover":
        failover(a)
    elif a.cmd == "redis":
        redis_load(a)
    elif a.cmd == "cost":
        cost(a)
    else:
        summarize(a)


if __name__ == "__main__":
    main()
