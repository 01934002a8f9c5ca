#!/usr/bin/env python3
"""Low-Latency HLS blocking playlist reloads under load (issue #13's figures; benches/hls_bench.sh runs it).

    hls_blocking.py block --http 127.0.0.1:PORT --stream live/NAME --clients 1000 --secs 30 [--pid PID]
    hls_blocking.py poll  --http 127.0.0.1:PORT --streams live/a,live/b,... [--every 5] [--secs 60]
    hls_blocking.py cpu PID...

block: CLIENTS keep-alive HTTP/1.1 connections each keep one request blocked on the part that comes next:
`GET /APP/NAME.m3u8?_HLS_msn=M&_HLS_part=P` for the part the playlist's preload hint names; as soon as an
answer is complete the connection asks for the part after the newest one listed (the answer's own hint).
The receive time of an answer is the kernel's (SO_TIMESTAMPNS on each TCP read: when the bytes arrived,
however long this client takes to get to them), so a busy client makes its reactions late (counted) but not
its measurements. Per part: the first answer marks when livegate let the part out; every other answer's
response time is its arrival - the first answer's. A request sent after its part's first answer arrived was
never blocked ("unblocked" in the output) and is left out of the response times. Also reported: the first
answer - the part's completion as the playlist dates it (EXT-X-PROGRAM-DATE-TIME of the first segment listed
+ the durations up to the end of the part: when the frame that closed the part reached livegate, if the push
is paced in real time); how long after a part's first answer all CLIENTS had asked for the next one
("re-arm"); livegate's CPU (/proc/PID/stat) over the window, per part published and per answer; and this
client's own CPU. One JSON line on stdout (progress on stderr).

poll: one thread per stream GETs its playlist every EVERY s (keeps the streams' segmenters running: they start
with the first playlist request and stop when nobody asks). Runs for SECS s, or until killed.

cpu: the CPU seconds each process used so far, from its CPU-time clock (nanoseconds; hls_bench.sh's windows).
"""

import argparse
import ctypes
import datetime as dt
import http.client
import json
import os
import re
import resource
import selectors
import socket
import struct
import sys
import threading
import time

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python does not export it
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


_libc = None


def proc_cpu(pid):
    """CPU seconds a process used (all its threads, exited ones included): its CPU-time clock, which counts
    nanoseconds (utime + stime in /proc/PID/stat are ticks, and sampled ones: too coarse for small costs)."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        clk = ctypes.c_int()
        if _libc.clock_getcpuclockid(int(pid), ctypes.byref(clk)) == 0:
            return time.clock_gettime(clk.value)
    except (OSError, AttributeError):
        pass
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def proc_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def machine_busy():
    """(busy, total) jiffies of the whole machine (all CPUs) from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return sum(v) - v[3] - v[4], sum(v)


def self_cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def pct(xs, p):
    if not xs:
        return None
    s = sorted(xs)
    i = min(len(s) - 1, max(0, -(-len(s) * p // 100) - 1))
    return s[int(i)]


def dist_ms(xs):
    r = lambda v: None if v is None else round(v / 1e6, 3)
    return {"n": len(xs), "p50": r(pct(xs, 50)), "p95": r(pct(xs, 95)), "p99": r(pct(xs, 99)), "max": r(pct(xs, 100))}


HINT = re.compile(rb'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="[^"]*-(\d+)\.(\d+)\.m4s')


def next_target(body):
    """(msn, part) of the preload hint: the part after the newest one listed."""
    m = HINT.search(body, max(0, len(body) - 600))
    if not m:
        m = HINT.search(body)
    return (int(m.group(1)), int(m.group(2))) if m else None


def part_end_wall_ns(body, target):
    """When the playlist says part `target` ended: program date-time of the first segment listed + the media
    durations up to the end of that part (None if not listed or no date-time)."""
    text = body.decode("utf-8", "replace")
    pdt = None
    cum = 0.0  # ms of complete segments listed before the current one
    part_cum = 0.0
    for line in text.splitlines():
        if line.startswith("#EXT-X-PROGRAM-DATE-TIME:") and pdt is None:
            v = line.split(":", 1)[1].strip().replace("Z", "+00:00")
            pdt = dt.datetime.fromisoformat(v).timestamp()
        elif line.startswith("#EXT-X-PART:"):
            attrs = dict(a.split("=", 1) for a in re.findall(r'[A-Z-]+=(?:"[^"]*"|[^,]*)', line.split(":", 1)[1]))
            part_cum += float(attrs["DURATION"]) * 1000
            m = re.search(r"-(\d+)\.(\d+)\.m4s", attrs["URI"])
            if m and (int(m.group(1)), int(m.group(2))) == target and pdt is not None:
                return int((pdt * 1000 + cum + part_cum) * 1e6)
        elif line.startswith("#EXTINF:"):
            cum += float(line.split(":", 1)[1].rstrip(",")) * 1000
            part_cum = 0.0
    return None


class Conn:
    __slots__ = ("sock", "buf", "target", "sent_ns", "first_ts", "idx")

    def __init__(self, sock, idx):
        self.sock = sock
        self.buf = bytearray()
        self.target = None
        self.sent_ns = 0
        self.first_ts = None
        self.idx = idx


def http_get_simple(addr, path, timeout=20):
    s = socket.create_connection(addr, timeout=timeout)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        data += d
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def block(a):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    host, port = a.http.rsplit(":", 1)
    addr = (host, int(port))
    path = f"/{a.stream}.m3u8"
    status, body = http_get_simple(addr, path)
    if status != 200:
        sys.exit(f"GET {path}: {status} {body[:200]!r}")
    target = next_target(body)
    if target is None:
        sys.exit(f"no preload hint in {path} (is the stream's app lowlatency?):\n{body.decode()[:500]}")

    sel = selectors.DefaultSelector()
    conns = []
    for i in range(a.clients):
        s = socket.create_connection(addr)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        s.setblocking(False)
        c = Conn(s, i)
        conns.append(c)
        sel.register(s, selectors.EVENT_READ, c)
    log(f"{a.clients} connections open; first part {target}")

    def send(c, t):
        c.target = t
        c.sent_ns = time.time_ns()
        c.first_ts = None
        req = f"GET {path}?_HLS_msn={t[0]}&_HLS_part={t[1]} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
        c.sock.send(req)  # small: fits the empty send buffer of a connection with nothing in flight

    # Per part: answers [(kernel ns, sent ns, user ns)], when the last request for it was sent and how many
    # were, and the playlist's own end time for it (from the first answer read).
    answers = {}
    last_sent = {}
    sent_count = {}
    dated = {}
    errors = {}
    for c in conns:
        send(c, target)
        sent_count[target] = sent_count.get(target, 0) + 1
        last_sent[target] = c.sent_ns
    # The window opens after --warmup s of blocking (every connection is in its loop by then).
    warm_until = time.monotonic() + a.warmup
    t_end = warm_until + a.secs
    w0 = None
    anc = socket.CMSG_SPACE(16)
    while True:
        now = time.monotonic()
        if w0 is None and now >= warm_until:
            errors.clear()
            w0 = {"wall_ns": time.time_ns(), "mono": now, "cpu": proc_cpu(a.pid) if a.pid else None,
                  "self": self_cpu(), "rss": proc_rss_kib(a.pid) if a.pid else None, "machine": machine_busy()}
        if now >= t_end:
            break
        for key, _ in sel.select(timeout=0.5):
            c = key.data
            try:
                data, ancdata, _, _ = c.sock.recvmsg(262144, anc)
            except BlockingIOError:
                continue
            if not data:
                sys.exit(f"connection {c.idx} closed by livegate")
            ts = None
            for lvl, typ, d in ancdata:
                if lvl == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS:
                    sec, ns = struct.unpack("qq", d[:16])
                    ts = sec * 1_000_000_000 + ns
            user_ns = time.time_ns()
            if ts is None:
                ts = user_ns
            c.buf += data
            head_end = c.buf.find(b"\r\n\r\n")
            if head_end < 0:
                continue
            head = bytes(c.buf[:head_end])
            m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            length = int(m.group(1)) if m else 0
            if len(c.buf) < head_end + 4 + length:
                continue
            status = int(head.split(b" ", 2)[1])
            resp_body = bytes(c.buf[head_end + 4 : head_end + 4 + length])
            del c.buf[: head_end + 4 + length]
            t = c.target
            if status != 200:
                errors[status] = errors.get(status, 0) + 1
                nt = t
            else:
                if t not in answers:
                    dated[t] = part_end_wall_ns(resp_body, t)
                answers.setdefault(t, []).append((ts, c.sent_ns, user_ns))
                nt = next_target(resp_body) or t
            send(c, nt)
            sent_count[nt] = sent_count.get(nt, 0) + 1
            last_sent[nt] = c.sent_ns
    w1 = {"wall_ns": time.time_ns(), "mono": time.monotonic(), "cpu": proc_cpu(a.pid) if a.pid else None,
          "self": self_cpu(), "rss": proc_rss_kib(a.pid) if a.pid else None, "machine": machine_busy()}
    for c in conns:
        c.sock.close()

    # A part's first answer (the earliest arrival) marks when livegate let it out. Parts whose first answer
    # came inside the window count; an answer to a request sent after that was never blocked.
    first = {t: min(x[0] for x in xs) for t, xs in answers.items()}
    parts = sorted(t for t, f in first.items() if w0["wall_ns"] <= f <= w1["wall_ns"])
    resp, lag, last_per_part, rearm, from_dated, per_part = [], [], [], [], [], []
    unblocked = 0
    for i, t in enumerate(parts):
        f = first[t]
        blocked = [x for x in answers[t] if x[1] <= f]
        unblocked += len(answers[t]) - len(blocked)
        per_part.append([f"{t[0]}.{t[1]}", round((f - w0["wall_ns"]) / 1e9, 3),
                         round((max(x[0] for x in blocked) - f) / 1e6, 1) if blocked else None,
                         len(blocked), len(answers[t]) - len(blocked),
                         round((f - dated[t]) / 1e6, 1) if dated.get(t) is not None else None])
        resp += [x[0] - f for x in blocked]
        lag += [x[2] - x[0] for x in answers[t]]
        if blocked:
            last_per_part.append(max(x[0] for x in blocked) - f)
        # When all connections had asked for the next part (the hint of the answers to this one).
        if i + 1 < len(parts) and sent_count.get(parts[i + 1]) == a.clients:
            rearm.append(last_sent[parts[i + 1]] - f)
        if dated.get(t) is not None:
            from_dated.append(f - dated[t])
    secs = w1["mono"] - w0["mono"]
    out = {
        "clients": a.clients,
        "stream": a.stream,
        "window_s": round(secs, 3),
        "parts": len(parts),
        "parts_per_s": round(len(parts) / secs, 3),
        "answers": sum(len(answers[t]) for t in parts),
        "unblocked": unblocked,
        "errors": errors,
        "response_from_first_ms": dist_ms(resp),
        "last_answer_per_part_ms": dist_ms(last_per_part),
        "first_answer_after_part_end_ms": dist_ms(from_dated),
        "rearm_ms": dist_ms(rearm),
        "client_lag_ms": dist_ms(lag),
        "client_cpu_s": round(w1["self"] - w0["self"], 3),
        "client_cores": round((w1["self"] - w0["self"]) / secs, 3),
        # CPUs the whole machine kept busy over the window (livegate, this client and anything else).
        "machine_busy_cpus": round((w1["machine"][0] - w0["machine"][0]) / max(1, w1["machine"][1] - w0["machine"][1]) * os.cpu_count(), 3),
        # Per part: [msn.part, first answer (s into the window), last blocked answer - first (ms), blocked
        # answers, answers to requests sent after the first answer, first answer - dated part end (ms)].
        "per_part": per_part,
    }
    if a.pid:
        cpu = w1["cpu"] - w0["cpu"]
        out.update({
            "livegate_cpu_s": round(cpu, 3),
            "livegate_cores": round(cpu / secs, 3),
            "livegate_cpu_ms_per_part": round(cpu * 1000 / max(1, len(parts)), 3),
            "livegate_cpu_us_per_answer": round(cpu * 1e6 / max(1, out["answers"]), 2),
            "livegate_rss_kib": [w0["rss"], w1["rss"]],
        })
    print(json.dumps(out), flush=True)


def poll(a):
    host, port = a.http.rsplit(":", 1)
    addr = (host, int(port))
    stop = time.monotonic() + a.secs if a.secs > 0 else float("inf")
    counts = {}

    def run(stream):
        n = 0
        conn = None
        while time.monotonic() < stop:
            t = time.monotonic()
            try:
                # One keep-alive connection per stream, as a player holds.
                conn = conn or http.client.HTTPConnection(*addr, timeout=30)
                conn.request("GET", f"/{stream}.m3u8")
                r = conn.getresponse()
                r.read()
                n += r.status == 200
            except (OSError, http.client.HTTPException):
                conn = None
            counts[stream] = n
            time.sleep(max(0.0, a.every - (time.monotonic() - t)))

    threads = [threading.Thread(target=run, args=(s,), daemon=True) for s in a.streams.split(",") if s]
    for th in threads:
        th.start()
    try:
        while time.monotonic() < stop:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    print(json.dumps({"polled": counts}), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("block")
    b.add_argument("--http", required=True, help="livegate's HTTP address, HOST:PORT")
    b.add_argument("--stream", required=True, help="APP/NAME of a lowlatency stream")
    b.add_argument("--clients", type=int, default=1000)
    b.add_argument("--secs", type=float, default=30, help="measurement window")
    b.add_argument("--warmup", type=float, default=3, help="seconds of blocking before the window opens")
    b.add_argument("--pid", type=int, help="livegate's PID: its CPU and RSS over the window")
    b.set_defaults(fn=block)
    q = sub.add_parser("poll")
    q.add_argument("--http", required=True)
    q.add_argument("--streams", required=True, help="APP/NAME,APP/NAME,...")
    q.add_argument("--every", type=float, default=5)
    q.add_argument("--secs", type=float, default=0, help="0: until killed")
    q.set_defaults(fn=poll)
    c = sub.add_parser("cpu", help="print the CPU seconds the processes used so far (nanosecond clock)")
    c.add_argument("pids", nargs="+", type=int)
    c.set_defaults(fn=lambda a: print(" ".join(f"{proc_cpu(p):.6f}" for p in a.pids)))
    a = p.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
