"""Publishes synthetic video + a sine tone over WHIP with aiortc (a sendonly, non-browser client).

usage: whip_publish.py <whip-url> [seconds=10] [h264|vp8] [loss=EVERY:FROM:TO]

With loss=EVERY:FROM:TO, every EVERY-th RTP packet it sends (RTCP is spared) is dropped between FROM and TO
seconds after it connected, retransmissions included: a lossy uplink, deterministic, for the quality tests
(tc on loopback is not allowed here). It prints {"event":"loss", "on": true|false} at each end of the window.

Video: 640x360 at 30 fps, a moving test pattern drawn with numpy, offered as H.264 only or VP8 only (aiortc
encodes H.264 with the libx264 that PyAV's wheels carry, constrained baseline, packetization-mode 1; VP8 with
libvpx). Audio: a 440 Hz sine as Opus 48 kHz stereo. All ICE candidates are in the offer (livegate is
non-trickle). Prints {"event":"connected"} as soon as the PeerConnection connects, publishes for `seconds`,
DELETEs the session, and prints one final JSON line:
  {ok, status, location, videoCodec, framesSent, audioFramesSent, videoPackets, audioPackets, deleteStatus, message}
Exit 0 when it connected and published, 1 otherwise.
"""

import asyncio
import sys

import av
import numpy as np

from lib import (
    SAMPLE_RATE,
    SAMPLES,
    MediaClock,
    PacedAudioTrack,
    close,
    connected_event,
    die_usage,
    emit,
    offer_answer,
    peer_connection,
    run,
    sdp_video_codec,
)
from aiortc import RTCRtpSender, VideoStreamTrack
from aiortc import rtcdtlstransport

WIDTH, HEIGHT = 640, 360
TONE_HZ = 440.0

result: dict = {"ok": False}


class PatternTrack(VideoStreamTrack):
    """A moving luma ramp with a bright bar sweeping across, built straight in yuv420p (no RGB conversion)."""

    def __init__(self) -> None:
        super().__init__()
        x = np.arange(WIDTH, dtype=np.uint16)
        self._ramp = np.tile(((x * 255) // (WIDTH - 1)).astype(np.uint8), (HEIGHT, 1))
        # yuv420p as one array: HEIGHT rows of Y, then the U and V planes (each HEIGHT/2 x WIDTH/2) packed
        # into HEIGHT/4 rows of WIDTH each: a constant bluish tint.
        self._chroma = np.full((HEIGHT // 2, WIDTH), 160, dtype=np.uint8)
        self._chroma[: HEIGHT // 4] = 170
        self.frames = 0
        self.clock = MediaClock()

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        n = self.frames
        y = np.roll(self._ramp, n * 4, axis=1)
        bar = (n * 8) % WIDTH
        y[:, bar : bar + 24] = 235
        frame = av.VideoFrame.from_ndarray(np.vstack([y, self._chroma]), format="yuv420p")
        frame.pts, frame.time_base = pts, time_base
        self.frames += 1
        self.clock.advance(float(pts * time_base))
        return frame


class ToneTrack(PacedAudioTrack):
    """A 440 Hz sine."""

    def samples(self, first: int, at: np.ndarray) -> np.ndarray:
        t = (first + np.arange(SAMPLES)) / SAMPLE_RATE
        return (0.3 * 32767 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.int16)


class Loss:
    """Drops every `every`-th RTP packet while `on`."""

    def __init__(self, every: int) -> None:
        self.every, self.on, self.seen, self.dropped = every, False, 0, 0

    def install(self) -> None:
        send = rtcdtlstransport.RTCDtlsTransport._send_rtp
        loss = self

        async def lossy(transport, data: bytes) -> None:
            if loss.on and not rtcdtlstransport.is_rtcp(data):
                loss.seen += 1
                if loss.seen % loss.every == 0:
                    loss.dropped += 1
                    return
            await send(transport, data)

        rtcdtlstransport.RTCDtlsTransport._send_rtp = lossy


async def lossy_window(loss: Loss, clock: MediaClock, start: float, end: float) -> None:
    """Loss from `start` to `end` seconds of the published video."""
    await clock.reached(start)
    loss.on = True
    emit({"event": "loss", "on": True})
    await clock.reached(end)
    loss.on = False
    emit({"event": "loss", "on": False, "dropped": loss.dropped})


async def main(url: str, seconds: float, codec: str, loss_spec: str | None = None) -> bool:
    pc = peer_connection()
    video, audio = PatternTrack(), ToneTrack()
    vt = pc.addTransceiver(video, direction="sendonly")
    pc.addTransceiver(audio, direction="sendonly")
    # Offer one video codec only, so the test knows which path livegate takes (H.264 passthrough or VP8
    # transcode). aiortc's H.264 entries are 42001f and 42e01f, both packetization-mode 1.
    want = f"video/{codec}".lower()
    prefs = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType.lower() == want]
    if not prefs:
        raise RuntimeError(f"aiortc cannot send {codec}")
    vt.setCodecPreferences(prefs)

    connected = connected_event(pc)
    try:
        answer = await offer_answer(pc, url, result)
        if answer is None:
            return False
        result["videoCodec"] = sdp_video_codec(answer)
        try:
            await asyncio.wait_for(connected.wait(), timeout=15)
        except asyncio.TimeoutError:
            result["message"] = f"not connected within 15 s (connection {pc.connectionState})"
            return False
        emit({"event": "connected", "videoCodec": result["videoCodec"]})
        window = None
        if loss_spec:
            every, start, end = loss_spec.split(":")
            loss = Loss(int(every))
            loss.install()
            window = asyncio.ensure_future(lossy_window(loss, video.clock, float(start), float(end)))
        await video.clock.reached(seconds)
        if window is not None:
            window.cancel()
        for s in (await pc.getStats()).values():
            if s.type == "outbound-rtp":
                result[f"{s.kind}Packets"] = s.packetsSent
        result.update(framesSent=video.frames, audioFramesSent=audio.frames, connection=pc.connectionState)
        return pc.connectionState == "connected"
    finally:
        await close(pc, result)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        die_usage("usage: whip_publish.py <whip-url> [seconds=10] [h264|vp8]")
    secs = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
    codec = sys.argv[3] if len(sys.argv) > 3 else "h264"
    loss_arg = next((a.removeprefix("loss=") for a in sys.argv[4:] if a.startswith("loss=")), None)
    run(main(sys.argv[1], secs, codec, loss_arg), secs, result)
