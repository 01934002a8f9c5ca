#!/usr/bin/env python3
"""Makes the seed corpus in fuzz/corpus/<target>/ from real captures (run once; the files are committed).

usage: fuzz/make_corpus.py LIVEGATE_BINARY [SECTION ...]   (sections: media rtmp http sdp; default all)

- flv, avc_config, aac_config, amf0: an FLV that ffmpeg encodes (testsrc2 + sine, libx264 + aac), its head,
  and its sequence headers and onMetaData body;
- mp4: ffmpeg's flat and fragmented MP4 of the same media, and torn copies;
- hevc_config: the hvcC ffmpeg writes for libx265 output, and its SPS;
- rtmp_chunks, rtmp_session: what ffmpeg, GStreamer (rtmp2sink, rtmp2src) and librtmp (rtmpdump) send
  when they publish to, and play from, a running livegate, recorded by a proxy after the handshake (C0 C1 C2);
- http_flv_request: requests as curl, ffmpeg and mpegts.js send them;
- sdp_offer: Chromium's offer (tests/browser/make_offer.mjs) and aiortc's.
"""
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import json

ROOT = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(ROOT, "corpus")
TMP = tempfile.mkdtemp(prefix="lg-corpus-")


SKIP = set()  # targets not to rewrite this run


def put(target, name, data):
    if target in SKIP:
        return
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def ffmpeg(*args):
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


def flv_tags(data):
    i = 13
    while i + 11 <= len(data):
        t, size = data[i], int.from_bytes(data[i + 1:i + 4], "big")
        yield t, data[i + 11:i + 11 + size]
        i += 11 + size + 4


def media():
    src = ["-f", "lavfi", "-i", "testsrc2=s=160x90:r=15", "-f", "lavfi", "-i", "sine=f=440:r=44100", "-t", "2"]
    enc = ["-c:v", "libx264", "-g", "15", "-bf", "2", "-c:a", "aac", "-b:a", "32k"]
    flv = os.path.join(TMP, "a.flv")
    ffmpeg(*src, *enc, "-f", "flv", flv)
    data = open(flv, "rb").read()
    put("flv", "ffmpeg-head.flv", data[:6000])
    put("flv", "ffmpeg-torn.flv", data[:1500])
    for t, body in flv_tags(data):
        if t == 9 and body[:2] == b"\x17\x00":
            put("avc_config", "ffmpeg-x264.avcc", body[5:])
        if t == 8 and body[1:2] == b"\x00":
            put("aac_config", "ffmpeg-aac-lc.asc", body[2:])
        if t == 18:
            put("amf0", "ffmpeg-onmetadata.amf0", body)
    for name, extra in [("flat.mp4", []), ("fragmented.mp4", ["-movflags", "frag_keyframe+empty_moov+default_base_moof"])]:
        out = os.path.join(TMP, name)
        ffmpeg(*src, *enc, *extra, out)
        d = open(out, "rb").read()
        put("mp4", "ffmpeg-" + name, d[:12000])
        put("mp4", "ffmpeg-torn-" + name, d[: len(d) // 3][:4000])
    hevc = os.path.join(TMP, "h.mp4")
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=642x362:rate=25", "-frames:v", "3", "-c:v", "libx265",
           "-x265-params", "log-level=none", hevc)
    d = open(hevc, "rb").read()
    at = d.find(b"hvcC")
    hvcc = d[at + 4:at - 4 + int.from_bytes(d[at - 4:at], "big")]
    put("hevc_config", "ffmpeg-x265.hvcc", hvcc)
    sps_at = hvcc.find(b"\x42\x01")  # the SPS NAL header, after its array's type and length fields
    put("hevc_config", "x265.sps", hvcc[sps_at:sps_at + int.from_bytes(hvcc[sps_at - 2:sps_at], "big")])


def proxy_capture(upstream, client_cmd, label, seconds):
    """Runs client_cmd against a proxy in front of upstream; records client bytes after C0 C1 C2."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    port = ls.getsockname()[1]
    got = bytearray()

    def serve():
        c, _ = ls.accept()
        u = socket.create_connection(upstream)

        def pump(a, b, rec):
            try:
                while True:
                    d = a.recv(65536)
                    if not d:
                        break
                    if rec:
                        got.extend(d)
                    b.sendall(d)
            except OSError:
                pass

        threading.Thread(target=pump, args=(u, c, False), daemon=True).start()
        pump(c, u, True)

    threading.Thread(target=serve, daemon=True).start()
    p = subprocess.Popen([a.replace("PORT", str(port)) for a in client_cmd], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    time.sleep(seconds)
    p.kill()
    p.wait()
    body = bytes(got[1 + 1536 + 1536:])
    put("rtmp_chunks", label, body[:8000])
    put("rtmp_session", label, body[:8000])
    # The command phase alone, where the session's logic is.
    put("rtmp_session", label + "-commands", body[:1200])


def rtmp(livegate):
    d = tempfile.mkdtemp(prefix="lg-corpus-srv-")
    cfg = os.path.join(d, "c.toml")
    open(cfg, "w").write(f'[rtmp]\nlisten = "127.0.0.1:0"\n[http]\nlisten = "127.0.0.1:0"\n[record]\nroot = "{d}/rec"\n')
    ready = os.path.join(d, "ready.json")
    srv = subprocess.Popen([livegate, "serve", "--config", cfg, "--ready-file", ready], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        while not os.path.exists(ready):
            time.sleep(0.05)
        rtmp_port = int(json.load(open(ready))["rtmp"].rsplit(":", 1)[1])
        flv = os.path.join(TMP, "a.flv")
        pub = ["ffmpeg", "-v", "error", "-re", "-stream_loop", "-1", "-i", flv, "-c", "copy", "-f", "flv",
               "rtmp://127.0.0.1:PORT/live/seed?txTime=0&room=1"]
        keeper = subprocess.Popen([a.replace("PORT", str(rtmp_port)) for a in pub[:-1]] +
                                  [f"rtmp://127.0.0.1:{rtmp_port}/live/held"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        proxy_capture(("127.0.0.1", rtmp_port), pub, "ffmpeg-publish", 2.0)
        time.sleep(1.0)
        play = ["ffmpeg", "-v", "error", "-i", "rtmp://127.0.0.1:PORT/live/held?mode=rtc", "-t", "1", "-f", "null", "-"]
        proxy_capture(("127.0.0.1", rtmp_port), play, "ffmpeg-play", 3.0)
        # GStreamer's own RTMP client (not libavformat): its command order differs (releaseStream/FCPublish
        # before createStream, play with no start argument).
        gst_pub = ["gst-launch-1.0", "-q", "filesrc", f"location={flv}", "!", "flvdemux", "name=d",
                   "flvmux", "name=m", "streamable=true", "!", "rtmp2sink",
                   "location=rtmp://127.0.0.1:PORT/live/gst?txTime=0", "d.video", "!", "queue", "!", "h264parse",
                   "!", "m.video", "d.audio", "!", "queue", "!", "aacparse", "!", "m.audio"]
        proxy_capture(("127.0.0.1", rtmp_port), gst_pub, "gstreamer-publish", 2.0)
        gst_play = ["gst-launch-1.0", "-q", "rtmp2src", "location=rtmp://127.0.0.1:PORT/live/held", "!",
                    "fakesink"]
        proxy_capture(("127.0.0.1", rtmp_port), gst_play, "gstreamer-play", 2.0)
        # librtmp (rtmpdump, and the players built on it): live play asks start -1000 and sends its own
        # buffer length and a second ping order.
        rd_play = ["rtmpdump", "-q", "-v", "-r", "rtmp://127.0.0.1:PORT/live/held", "-o", "/dev/null"]
        proxy_capture(("127.0.0.1", rtmp_port), rd_play, "librtmp-play", 2.0)
        keeper.kill()
    finally:
        srv.kill()


def http():
    reqs = {
        "curl.http": b"GET /live/test.flv HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n",
        "ffmpeg.http": b"GET /live/test.flv?mode=rtc HTTP/1.1\r\nUser-Agent: Lavf/59.27.100\r\nAccept: */*\r\nRange: bytes=0-\r\n"
                       b"Connection: close\r\nHost: 127.0.0.1:8080\r\nIcy-MetaData: 1\r\n\r\n",
        "mpegts-js.http": b"GET /live/test.flv?min_cache=1&max_cache=3 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
                          b"Origin: http://127.0.0.1:3000\r\nAccept: */*\r\nAccept-Encoding: identity\r\n\r\n",
        "http10.http": b"GET /live/test.flv HTTP/1.0\r\n\r\n",
        "api.http": b"POST /api/v1/recordings HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    }
    for name, r in reqs.items():
        put("http_flv_request", name, r)


def sdp():
    repo = os.path.dirname(ROOT)
    out = subprocess.run(["node", os.path.join(repo, "tests/browser/make_offer.mjs")], capture_output=True, check=True)
    put("sdp_offer", "chromium-offer.sdp", out.stdout)
    py = os.path.join(repo, "tests/aiortc/.venv/bin/python")
    code = ("import asyncio\nfrom aiortc import RTCPeerConnection\n"
            "async def m():\n pc=RTCPeerConnection(); pc.addTransceiver('video',direction='recvonly');"
            " pc.addTransceiver('audio',direction='recvonly'); await pc.setLocalDescription(await pc.createOffer());"
            " print(pc.localDescription.sdp); await pc.close()\nasyncio.run(m())\n")
    out = subprocess.run([py, "-c", code], capture_output=True, check=True)
    put("sdp_offer", "aiortc-offer.sdp", out.stdout)


if __name__ == "__main__":
    only = set(sys.argv[2:]) or {"media", "rtmp", "http", "sdp"}
    if "media" not in only:
        SKIP.update({"flv", "avc_config", "hevc_config", "aac_config", "amf0", "mp4"})
    media()  # the RTMP captures publish its FLV
    if "rtmp" in only:
        rtmp(sys.argv[1])
    if "http" in only:
        http()
    if "sdp" in only:
        sdp()
    print("corpus in", CORPUS)
