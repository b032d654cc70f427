"""Closed-loop load on a `/connect` endpoint: C clients, each posting a browser-like multipart offer
(`sdp`, `voice`) and waiting for the answer before sending the next, until N connects are done.

Closed loop because a user does not start a second connect before the first one answers; the throughput a
server reaches this way at C clients is what C simultaneous users experience.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

# What Chromium sends for one microphone track plus the "oai-events" data channel (~2.5 KB); the session id,
# ICE credentials and fingerprint change per offer as they do in a browser.
OFFER = """v=0
o=- {session} 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0 1
a=extmap-allow-mixed
a=msid-semantic: WMS {stream}
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126
c=IN IP4 0.0.0.0
a=rtcp:9 IN IP4 0.0.0.0
a=candidate:1 1 udp 2122260223 192.168.1.23 54321 typ host generation 0 network-id 1
a=candidate:2 1 tcp 1518280447 192.168.1.23 9 typ host tcptype active generation 0 network-id 1
a=ice-ufrag:{ufrag}
a=ice-pwd:{pwd}
a=ice-options:trickle
a=fingerprint:sha-256 {fingerprint}
a=setup:actpass
a=mid:0
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid
a=sendrecv
a=msid:{stream} {track}
a=rtcp-mux
a=rtcp-rsize
a=rtpmap:111 opus/48000/2
a=rtcp-fb:111 transport-cc
a=fmtp:111 minptime=10;useinbandfec=1
a=rtpmap:63 red/48000/2
a=fmtp:63 111/111
a=rtpmap:9 G722/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:13 CN/8000
a=rtpmap:110 telephone-event/48000
a=rtpmap:126 telephone-event/8000
a=ssrc:{ssrc} cname:{cname}
a=ssrc:{ssrc} msid:{stream} {track}
m=application 9 UDP/DTLS/SCTP webrtc-datachannel
c=IN IP4 0.0.0.0
a=ice-ufrag:{ufrag}
a=ice-pwd:{pwd}
a=ice-options:trickle
a=fingerprint:sha-256 {fingerprint}
a=setup:actpass
a=mid:1
a=sctp-port:5000
a=max-message-size:262144
""".replace("\n", "\r\n")


def offer_sdp() -> str:
    fingerprint = ":".join(f"{b:02X}" for b in secrets.token_bytes(32))
    return OFFER.format(
        session=secrets.randbits(62),
        stream=uuid.uuid4(),
        track=uuid.uuid4(),
        ufrag=secrets.token_urlsafe(3)[:4],
        pwd=secrets.token_urlsafe(18)[:24],
        fingerprint=fingerprint,
        ssrc=secrets.randbits(31),
        cname=secrets.token_urlsafe(12),
    )


def multipart_offer(voice: str = "marin") -> tuple[bytes, str]:
    """The body a browser's FormData(sdp, voice) produces, and its Content-Type."""
    boundary = "----WebKitFormBoundary" + secrets.token_urlsafe(12)
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in (("sdp", offer_sdp()), ("voice", voice))
    ]
    return ("".join(parts) + f"--{boundary}--\r\n").encode(), f"multipart/form-data; boundary={boundary}"


@dataclass
class LoadResult:
    clients: int
    wanted: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, successful connects only
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def completed(self) -> int:
        return len(self.latencies)

    @property
    def throughput(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        """Milliseconds; nearest-rank on the sorted latencies."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))] * 1000

    @property
    def median_ms(self) -> float:
        return statistics.median(self.latencies) * 1000 if self.latencies else float("nan")


async def connect_once(http: aiohttp.ClientSession, url: str) -> str | None:
    """One connect; None when it got a 201 SDP answer, else what went wrong."""
    body, content_type = multipart_offer()
    try:
        async with http.post(url, data=body, headers={"Content-Type": content_type}) as response:
            answer = await response.read()
            if response.status != 201:
                return f"HTTP {response.status}"
            if not answer.startswith(b"v=0") or response.content_type != "application/sdp":
                return "not an SDP answer"
            return None
    except (TimeoutError, aiohttp.ClientError) as exc:
        return type(exc).__name__


async def closed_loop(url: str, clients: int, total: int, max_seconds: float, timeout: float = 30.0) -> LoadResult:
    """`clients` loops share `total` connects; none starts after `max_seconds`, so a stuck server cannot hang us."""
    result = LoadResult(clients, total)
    remaining = total
    connector = aiohttp.TCPConnector(limit=clients, limit_per_host=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as http:
        started = time.perf_counter()
        stop_at = started + max_seconds

        async def client() -> None:
            nonlocal remaining
            while remaining > 0 and time.perf_counter() < stop_at:
                remaining -= 1
                sent = time.perf_counter()
                error = await connect_once(http, url)
                if error is None:
                    result.latencies.append(time.perf_counter() - sent)
                else:
                    result.errors[error] += 1

        await asyncio.gather(*(client() for _ in range(clients)))
        result.seconds = time.perf_counter() - started
    return result
