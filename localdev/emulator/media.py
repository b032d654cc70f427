"""Media for an emulated call: the assistant's outgoing voice (a paced sine) and reading the browser's microphone."""

from __future__ import annotations

import array
import asyncio
import fractions
import math
import time
from collections.abc import AsyncIterator

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

SAMPLE_RATE = 48_000
FRAME_SAMPLES = 960  # 20 ms, what browsers and aiortc packetise Opus at
TONE_AMPLITUDE = 0.3
# A distinct pitch per voice, so a listener can tell that the session's voice reached the peer.
VOICE_PITCH_HZ = {
    "alloy": 220,
    "ash": 196,
    "ballad": 247,
    "coral": 294,
    "echo": 175,
    "sage": 262,
    "shimmer": 330,
    "verse": 208,
    "marin": 277,
    "cedar": 185,
}
DEFAULT_PITCH_HZ = 240


def peak_level(frame: av.AudioFrame) -> float:
    """Peak of an s16 frame (what aiortc's Opus decoder yields), normalised to 0..1; no numpy needed."""
    samples = array.array("h", bytes(frame.planes[0]))[: frame.samples * len(frame.layout.channels)]
    return max(max(samples), -min(samples)) / 32768 if samples else 0.0


async def audio_frames(track: MediaStreamTrack) -> AsyncIterator[av.AudioFrame]:
    """Frames from a remote audio track until it ends."""
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        if isinstance(frame, av.AudioFrame):  # an audio track yields only audio frames; recv() is typed for any
            yield frame


class ToneTrack(MediaStreamTrack):
    """Outgoing audio: a sine while the emulated assistant speaks, silence otherwise.

    Frames flow at real time even when silent, as from the real service, so the browser's inbound-rtp byte counters
    keep growing and an analyser sees a level only while the assistant speaks.
    """

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.pitch_hz: float | None = None  # None = silence
        self._start: float | None = None
        self._sent = 0  # samples sent so far; also the next frame's pts

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            await asyncio.sleep(self._start + self._sent / SAMPLE_RATE - time.monotonic())
        frame = av.AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        if self.pitch_hz is None:
            frame.planes[0].update(bytes(2 * FRAME_SAMPLES))
        else:
            step = 2 * math.pi * self.pitch_hz / SAMPLE_RATE
            scale = 32767 * TONE_AMPLITUDE
            samples = range(self._sent, self._sent + FRAME_SAMPLES)
            pcm = array.array("h", (int(scale * math.sin(step * n)) for n in samples))
            frame.planes[0].update(pcm.tobytes())
        frame.pts = self._sent
        frame.sample_rate = SAMPLE_RATE
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self._sent += FRAME_SAMPLES
        return frame
