"""Debian's Chromium under Playwright, set up for WebRTC on loopback and nothing beyond it."""

from __future__ import annotations

import functools
import math
import struct
import threading
import wave
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
# Playwright passes its own --disable-features list and Chromium keeps only the last copy of the switch,
# so Playwright's list is restated here together with the feature that hides loopback ICE candidates.
DISABLED_FEATURES = ",".join(
    [
        "AvoidUnnecessaryBeforeUnloadCheckSync",
        "DestroyProfileOnBrowserClose",
        "HttpsUpgrades",
        "HttpsFirstBalancedModeAutoEnable",
        "LensOverlay",
        "MediaRouter",
        "PaintHolding",
        "ThirdPartyStoragePartitioning",
        "AvoidCorsURLLoaderRestartOnRedirect",
        "OptimizationHints",
        "NetworkTimeServiceQuerying",
        "AimEnabled",
        "PreconnectToSearch",
        "WebRtcHideLocalIpsWithMdns",
    ]
)


def speech_like_wav(path: Path, seconds: float = 6.0, amplitude: float = 0.8) -> Path:
    """A voiced, syllable-paced signal for the fake microphone.

    Chromium's noise suppression treats a steady tone as noise and fades it out, so the pitch glides
    and the loudness pulses at a syllable rate, as speech does; it never falls silent, so the
    emulator's VAD hears one long turn.
    """
    rate = 48000
    phase, samples = 0.0, []
    for i in range(int(rate * seconds)):
        t = i / rate
        pitch = 160 + 60 * math.sin(2 * math.pi * 0.7 * t)
        phase += 2 * math.pi * pitch / rate
        envelope = 0.55 + 0.45 * math.sin(2 * math.pi * 4 * t)
        voiced = sum(math.sin(k * phase) / k for k in (1, 2, 3, 4))
        samples.append(int(max(-1.0, min(1.0, amplitude * envelope * voiced / 1.6)) * 32767))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(struct.pack(f"<{len(samples)}h", *samples))
    return path


def launch_args(microphone_wav: Path) -> list[str]:
    return [
        "--no-sandbox",
        "--disable-gpu",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone_wav}",
        "--autoplay-policy=no-user-gesture-required",
        "--allow-loopback-in-peer-connection",
        f"--disable-features={DISABLED_FEATURES}",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-pings",
        "--disable-domain-reliability",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ]


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


def serve_folder(directory: Path) -> tuple[ThreadingHTTPServer, str]:
    """A folder served on a loopback origin of its own (a page on another site); shut it down when done."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietFiles, directory=str(directory)))
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"
