"""Plays a stream over WHEP with aiortc (a recvonly, non-browser client) and decodes what arrives.

usage: whep_play.py <whep-url> [seconds=4] [loss=EVERY]

Offers recvonly video + audio (all ICE candidates in the offer, as livegate is non-trickle), applies the answer,
then decodes video (aiortc decodes H.264 with PyAV) and audio (Opus) until `seconds` of video (by its timestamps)
follow the first decoded frame, and DELETEs the session. Prints one JSON line:
  {ok, status, location, videoCodec, frames, fps, width, height, audioFrames, audioRms, opusMonoPackets,
   opusStereoPackets, opusPacketMs (the audio durations Opus packets carried), deleteStatus, message}
Exit 0 when media was decoded, 1 otherwise.

With loss=EVERY, every EVERY-th video RTP packet that arrives is dropped before SRTP, as the network would lose
it, each sequence number once: aiortc NACKs the holes, and a retransmission of a dropped number passes.
Adds {lossDropped, lossRecovered} (dropped numbers that arrived again) to the JSON.
"""

import asyncio
import math
import sys
import time

import numpy as np
import pylibsrtp

from lib import close, die_usage, offer_answer, peer_connection, run, sdp_video_codec
from aiortc import rtcdtlstransport
from aiortc.codecs import opus
from aiortc.mediastreams import MediaStreamError

result: dict = {"ok": False}


class Loss:
    """Drops every `every`-th arriving video packet once, before SRTP (as the network would: a packet SRTP
    has seen once counts as a replay when it comes again); counts the dropped numbers that come back."""

    def __init__(self, every: int) -> None:
        self.every, self.seen, self.dropped, self.recovered = every, 0, 0, 0
        self.video_pt: int | None = None
        self.lost: set[int] = set()

    def keep(self, data: bytes) -> bool:
        if len(data) < 12 or self.video_pt is None or data[1] & 0x7F != self.video_pt:
            return True
        seq = int.from_bytes(data[2:4], "big")
        if seq in self.lost:
            self.lost.discard(seq)
            self.recovered += 1
            return True
        self.seen += 1
        if self.seen % self.every:
            return True
        self.lost.add(seq)
        self.dropped += 1
        return False

    def install(self) -> None:
        setup = rtcdtlstransport.RTCDtlsTransport._setup_srtp
        loss = self

        class LossyRx:
            def __init__(self, inner) -> None:
                self.inner = inner

            def unprotect(self, data: bytes) -> bytes:
                if not loss.keep(data):
                    raise pylibsrtp.Error("dropped by the test")
                return self.inner.unprotect(data)

            def unprotect_rtcp(self, data: bytes) -> bytes:
                return self.inner.unprotect_rtcp(data)

        def lossy_setup(transport) -> None:
            setup(transport)
            if transport._rx_srtp is not None:
                transport._rx_srtp = LossyRx(transport._rx_srtp)

        rtcdtlstransport.RTCDtlsTransport._setup_srtp = lossy_setup


def video_pt(sdp: str) -> int | None:
    for line in sdp.splitlines():
        if line.startswith("m=video "):
            parts = line.split()
            return int(parts[3]) if len(parts) > 3 else None
    return None


async def consume_video(track, stats: dict) -> None:
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        stats["frames"] += 1
        stats["width"], stats["height"] = frame.width, frame.height
        if stats["first"] is None:
            stats["first"] = frame.time
            stats["started"].set()
        # The window ends on the stream's own clock: `seconds` of video decoded after the first frame.
        if frame.time is not None and stats["first"] is not None and frame.time - stats["first"] >= stats["window"]:
            stats["covered"].set()


def opus_packet_ms(packet: bytes) -> float | None:
    """The audio one Opus packet carries (RFC 6716 3.1-3.2: the TOC byte's configuration and frame count)."""
    if not packet:
        return None
    config, code = packet[0] >> 3, packet[0] & 3
    if config < 12:
        frame = (10, 20, 40, 60)[config & 3]
    elif config < 16:
        frame = (10, 20)[config & 1]
    else:
        frame = (2.5, 5, 10, 20)[config & 3]
    if code == 0:
        count = 1
    elif code < 3:
        count = 2
    elif len(packet) > 1:
        count = packet[1] & 0x3F
    else:
        return None
    return frame * count


class OpusTap:
    """Counts the Opus packets aiortc decodes by their TOC byte: mono or stereo, and how much audio each carries."""

    def __init__(self) -> None:
        self.mono, self.stereo, self.packet_ms = 0, 0, set()

    def install(self) -> None:
        decode = opus.OpusDecoder.decode
        tap = self

        def tapped(decoder, encoded_frame):
            data = encoded_frame.data
            if data:
                if data[0] & 0x04:
                    tap.stereo += 1
                else:
                    tap.mono += 1
                ms = opus_packet_ms(data)
                if ms is not None:
                    tap.packet_ms.add(ms)
            return decode(decoder, encoded_frame)

        opus.OpusDecoder.decode = tapped


async def consume_audio(track, stats: dict) -> None:
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        stats["audioFrames"] += 1
        pcm = frame.to_ndarray().astype(np.float64)
        if frame.format.name.startswith("s16"):
            pcm /= 32768.0
        elif frame.format.name.startswith("s32"):
            pcm /= 2147483648.0
        rms = math.sqrt(float(np.mean(pcm * pcm))) if pcm.size else 0.0
        stats["audioRms"] = max(stats["audioRms"], rms)
        stats["sampleRate"] = frame.sample_rate


async def main(url: str, seconds: float, loss: Loss | None = None) -> bool:
    if loss:
        loss.install()
    tap = OpusTap()
    tap.install()
    pc = peer_connection()
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    stats = {"frames": 0, "width": 0, "height": 0, "first": None, "audioFrames": 0, "audioRms": 0.0,
             "window": seconds, "started": asyncio.Event(), "covered": asyncio.Event()}
    tasks = []

    @pc.on("track")
    def on_track(track):
        f = consume_video if track.kind == "video" else consume_audio
        tasks.append(asyncio.ensure_future(f(track, stats)))

    try:
        answer = await offer_answer(pc, url, result)
        if answer is None:
            return False
        result["videoCodec"] = sdp_video_codec(answer)
        if loss:
            loss.video_pt = video_pt(answer)
        try:
            await asyncio.wait_for(stats["started"].wait(), 15)
        except asyncio.TimeoutError:
            result["connection"] = pc.connectionState
            result["message"] = f"no video decoded within 15 s (connection {pc.connectionState})"
            return False
        result["connection"] = pc.connectionState
        # The rate: frames decoded per second between the first frame and the one `seconds` of media later.
        t0, f0 = time.monotonic(), stats["frames"]
        try:
            await asyncio.wait_for(stats["covered"].wait(), seconds + 15)
        except asyncio.TimeoutError:
            result["message"] = f"{seconds} s of video not decoded within {seconds + 15} s"
            return False
        t1, f1 = time.monotonic(), stats["frames"]
        result.update(
            frames=stats["frames"],
            fps=round((f1 - f0) / (t1 - t0), 1),
            width=stats["width"],
            height=stats["height"],
            audioFrames=stats["audioFrames"],
            audioRms=round(stats["audioRms"], 4),
            audioSampleRate=stats.get("sampleRate"),
            opusMonoPackets=tap.mono,
            opusStereoPackets=tap.stereo,
            opusPacketMs=sorted(tap.packet_ms),
            connection=pc.connectionState,
        )
        if loss:
            result.update(lossDropped=loss.dropped, lossRecovered=loss.recovered)
        return True
    finally:
        for t in tasks:
            t.cancel()
        await close(pc, result)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        die_usage("usage: whep_play.py <whep-url> [seconds=4] [loss=EVERY]")
    secs = float(sys.argv[2]) if len(sys.argv) > 2 else 4.0
    lossy = Loss(int(sys.argv[3].removeprefix("loss="))) if len(sys.argv) > 3 else None
    run(main(sys.argv[1], secs, lossy), secs, result)
