"""Plays a stream over WHEP with aiortc (a recvonly, non-browser client) and decodes what arrives.

usage: whep_play.py <whep-url> [seconds=4]

Offers recvonly video + audio (all ICE candidates in the offer, as livegate is non-trickle), applies the answer,
then decodes video (aiortc decodes H.264 with PyAV) and audio (Opus) for `seconds` after the first decoded video
frame, and DELETEs the session. Prints one JSON line:
  {ok, status, location, videoCodec, frames, fps, width, height, audioFrames, audioRms, deleteStatus, message}
Exit 0 when media was decoded, 1 otherwise.
"""

import asyncio
import math
import sys
import time

import numpy as np

from lib import close, die_usage, offer_answer, peer_connection, run, sdp_video_codec
from aiortc.mediastreams import MediaStreamError

result: dict = {"ok": False}


async def consume_video(track, stats: dict) -> None:
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        stats["frames"] += 1
        stats["width"], stats["height"] = frame.width, frame.height
        if stats["first"] is None:
            stats["first"] = time.monotonic()


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


async def main(url: str, seconds: float) -> bool:
    pc = peer_connection()
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    stats = {"frames": 0, "width": 0, "height": 0, "first": None, "audioFrames": 0, "audioRms": 0.0}
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
        deadline = time.monotonic() + 15
        while stats["first"] is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        result["connection"] = pc.connectionState
        if stats["first"] is None:
            result["message"] = f"no video decoded within 15 s (connection {pc.connectionState})"
            return False
        # Count from one point in time to another so the rate is not skewed by the first frame's burst.
        t0, f0 = time.monotonic(), stats["frames"]
        await asyncio.sleep(seconds)
        t1, f1 = time.monotonic(), stats["frames"]
        result.update(
            frames=stats["frames"],
            fps=round((f1 - f0) / (t1 - t0), 1),
            width=stats["width"],
            height=stats["height"],
            audioFrames=stats["audioFrames"],
            audioRms=round(stats["audioRms"], 4),
            audioSampleRate=stats.get("sampleRate"),
            connection=pc.connectionState,
        )
        return True
    finally:
        for t in tasks:
            t.cancel()
        await close(pc, result)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        die_usage("usage: whep_play.py <whep-url> [seconds=4]")
    secs = float(sys.argv[2]) if len(sys.argv) > 2 else 4.0
    run(main(sys.argv[1], secs), secs, result)
