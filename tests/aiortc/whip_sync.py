"""Publishes an A/V sync pattern over WHIP with aiortc: the picture flashes white for one frame once a second
and a 1 kHz beep starts at that frame's capture instant (100 ms long); otherwise black and silence.

usage: whip_sync.py <whip-url> [seconds=12]

Both tracks are timed from the same wall clock: a video frame's capture instant is when aiortc's
VideoStreamTrack paces it (its start + pts), an audio sample's is the audio track's start + sample index. So
whatever a reader sees, the beep onset minus the flash frame's timestamp is the A/V error added on the way
(aiortc's RTCP sender reports, livegate's timing, the AAC transcode). H.264 only. Prints
{"event":"connected"} once connected, then a final JSON line {ok, status, flashes, deleteStatus, message}.
"""

import asyncio
import sys
import time

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
)
from aiortc import RTCRtpSender, VideoStreamTrack

WIDTH, HEIGHT, FPS = 320, 240, 30
BEEP_SECS = 0.1

result: dict = {"ok": False}
# Wall-clock capture instants of the flash frames, shared by the two tracks.
flashes: list[float] = []


class FlashTrack(VideoStreamTrack):
    def __init__(self) -> None:
        super().__init__()
        self.frames = 0
        self.clock = MediaClock()
        self._dark = np.vstack([np.full((HEIGHT, WIDTH), 16, np.uint8), np.full((HEIGHT // 2, WIDTH), 128, np.uint8)])
        self._white = np.vstack([np.full((HEIGHT, WIDTH), 235, np.uint8), np.full((HEIGHT // 2, WIDTH), 128, np.uint8)])

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        # next_timestamp() has just waited until this frame's instant: that is its capture time.
        flash = self.frames % FPS == FPS // 2
        if flash:
            flashes.append(time.time())
        frame = av.VideoFrame.from_ndarray(self._white if flash else self._dark, format="yuv420p")
        frame.pts, frame.time_base = pts, time_base
        self.frames += 1
        self.clock.advance(float(pts * time_base))
        return frame


class BeepTrack(PacedAudioTrack):
    def samples(self, first: int, at: np.ndarray) -> np.ndarray:
        # It beeps within BEEP_SECS after a flash frame's capture instant.
        on = np.zeros(SAMPLES, dtype=bool)
        for f in flashes[-3:]:
            on |= (at >= f) & (at < f + BEEP_SECS)
        t = (first + np.arange(SAMPLES)) / SAMPLE_RATE
        return np.where(on, 0.5 * 32767 * np.sin(2 * np.pi * 1000.0 * t), 0).astype(np.int16)


async def main(url: str, seconds: float) -> bool:
    pc = peer_connection()
    video = FlashTrack()
    vt = pc.addTransceiver(video, direction="sendonly")
    pc.addTransceiver(BeepTrack(), direction="sendonly")
    vt.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType.lower() == "video/h264"])
    connected = connected_event(pc)
    try:
        if await offer_answer(pc, url, result) is None:
            return False
        await asyncio.wait_for(connected.wait(), timeout=15)
        emit({"event": "connected"})
        await video.clock.reached(seconds)
        result["flashes"] = len(flashes)
        return pc.connectionState == "connected"
    finally:
        await close(pc, result)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        die_usage("usage: whip_sync.py <whip-url> [seconds=12]")
    secs = float(sys.argv[2]) if len(sys.argv) > 2 else 12.0
    run(main(sys.argv[1], secs), secs, result)
