"""Shared pieces of the aiortc test clients: loopback-only ICE, WHIP/WHEP signalling, JSON output.

Run with the project's virtualenv (`tests/aiortc/.venv/bin/python`, made by `scripts/setup.sh`).
"""

import asyncio
import fractions
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import aioice.ice
import av
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

SAMPLE_RATE, SAMPLES = 48_000, 960  # 20 ms audio frames


class MediaClock:
    """The media time a track has produced, and the moments scripts wait for on it: a client publishes for,
    or does something at, so many seconds of its own media, not of the wall clock."""

    def __init__(self) -> None:
        self.secs = 0.0
        self._marks: list[tuple[float, asyncio.Event]] = []

    def advance(self, secs: float) -> None:
        self.secs = secs
        for at, ev in self._marks:
            if secs >= at:
                ev.set()
        self._marks = [(at, ev) for at, ev in self._marks if not ev.is_set()]

    async def reached(self, secs: float) -> None:
        """Returns once the track has produced `secs` seconds of media."""
        if self.secs >= secs:
            return
        ev = asyncio.Event()
        self._marks.append((secs, ev))
        await ev.wait()


class PacedAudioTrack(MediaStreamTrack):
    """s16 stereo 48 kHz audio paced in real time from the wall clock (as aiortc's AudioStreamTrack paces),
    so a sample's capture instant is `start + index / SAMPLE_RATE`. Subclasses say what each frame sounds
    like: `samples(first_index, capture_instants)` returns SAMPLES mono int16 values."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.frames = 0
        self.start: float | None = None

    def samples(self, first: int, at: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    async def recv(self) -> av.AudioFrame:
        if self.start is None:
            self.start = time.time()
        pts = self.frames * SAMPLES
        wait = self.start + pts / SAMPLE_RATE - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        mono = self.samples(pts, self.start + (pts + np.arange(SAMPLES)) / SAMPLE_RATE)
        frame = av.AudioFrame.from_ndarray(np.repeat(mono, 2).reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = SAMPLE_RATE
        frame.pts, frame.time_base = pts, fractions.Fraction(1, SAMPLE_RATE)
        self.frames += 1
        return frame


def _loopback_only(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    return ["127.0.0.1"] if use_ipv4 else []


# Tests talk to 127.0.0.1 only (TESTING.md), and livegate is ICE-lite and non-trickle: the offer must carry a
# candidate the server can reach. aioice builds host candidates from `get_host_addresses()`, which lists the
# machine's interfaces but deliberately skips 127.0.0.1 and ::1, and neither aiortc's RTCConfiguration nor
# aioice's Connection has an option to add an address (libnice's `add-local-ip-address` has no aioice
# counterpart). `Connection.gather_candidates` looks the function up in the `aioice.ice` module at call time,
# so replacing it there makes the offer carry exactly one host candidate, 127.0.0.1, and nothing else.
aioice.ice.get_host_addresses = _loopback_only


class _SlowestConsent:
    @staticmethod
    def random() -> float:
        return 1.0


# Once connected, aioice sends RFC 7675 consent checks every 5 s randomized to 0.8-1.2x (4-6 s) and nothing
# else: for an ICE-lite server they are the only sign of life. aioice draws that factor from `random.random()`
# (its only use in `aioice.ice`); pinning it to 1.0 makes these clients check at the slowest interval RFC 7675
# allows, every 6 s, so a server that gives up on a peer too early fails these tests every time, not by chance.
aioice.ice.random = _SlowestConsent


def peer_connection() -> RTCPeerConnection:
    # No ICE servers: aiortc's default is a public STUN server, which a loopback-only test must never contact.
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


def post_sdp(url: str, sdp: str) -> tuple[int, str, str | None]:
    """POSTs an offer; returns (status, body, Location made absolute)."""
    req = urllib.request.Request(
        url, data=sdp.encode(), method="POST", headers={"Content-Type": "application/sdp"}
    )
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            loc = r.headers.get("Location")
            return r.status, r.read().decode(), urllib.parse.urljoin(url, loc) if loc else None
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace"), None


def delete(url: str | None) -> int:
    if not url:
        return 0
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="DELETE"), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def sdp_video_codec(sdp: str) -> str | None:
    """The first codec of the first video m-line of an SDP ("H264", "VP8", ...)."""
    pts: list[str] = []
    for line in sdp.splitlines():
        if line.startswith("m=video"):
            pts = line.split()[3:]
        elif pts and line.startswith(f"a=rtpmap:{pts[0]} "):
            return line.split()[1].split("/")[0]
    return None


def emit(obj: dict) -> None:
    print(json.dumps(obj, separators=(",", ":")), flush=True)


def host_candidates(sdp: str) -> list[str]:
    return [l.split()[4] for l in sdp.splitlines() if l.startswith("a=candidate:")]


async def offer_answer(pc: RTCPeerConnection, url: str, result: dict) -> str | None:
    """POSTs pc's offer (aiortc gathers inside setLocalDescription, so it carries every candidate) and applies
    the answer. Fills result's status, location and offerCandidates; returns the answer, or None with
    result["message"] saying why."""
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    result["offerCandidates"] = host_candidates(offer)
    status, body, location = await asyncio.to_thread(post_sdp, url, offer)
    result.update(status=status, location=location)
    if status != 201:
        result["message"] = f"POST {status}: {body[:300]}"
        return None
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
    return body


def connected_event(pc: RTCPeerConnection) -> asyncio.Event:
    """Set once pc connects (register before signalling)."""
    ev = asyncio.Event()

    @pc.on("connectionstatechange")
    def on_state():
        if pc.connectionState == "connected":
            ev.set()

    return ev


async def close(pc: RTCPeerConnection, result: dict) -> None:
    """DELETEs the session (its Location) and closes the PeerConnection."""
    result["deleteStatus"] = await asyncio.to_thread(delete, result.get("location"))
    await pc.close()


def run(main, seconds: float, result: dict) -> None:
    """Runs `main` (a coroutine, bounded by seconds + 40), prints result as the final JSON line the Rust
    test reads, and exits 0 when main returned true."""
    try:
        ok = asyncio.run(asyncio.wait_for(main, timeout=seconds + 40))
    except Exception as e:  # report every failure as that JSON line
        ok = False
        result["message"] = f"{type(e).__name__}: {e}"
    result["ok"] = ok
    emit(result)
    sys.exit(0 if ok else 1)


def die_usage(text: str) -> None:
    print(text, file=sys.stderr)
    sys.exit(2)
