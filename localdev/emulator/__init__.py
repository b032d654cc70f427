"""A real WebRTC peer that stands in for Azure OpenAI `gpt-realtime` on loopback.

`FakeAzureOpenAI(peers=PeerHost())` answers `POST /openai/v1/realtime/calls` with `PeerHost.answer(...)`, its hang-up
endpoint with `PeerHost.hangup(...)`, and binds each call to its `FakeCall`, so sideband WebSockets see the same server
events as the browser and their events reach the same conversation. The browser talks to an `EmulatedPeer` as it
would to Azure: audio both ways as media tracks, GA realtime events on the data channel (shared/docs/realtime-api.md
§3). Replies are canned text plus a sine tone, so a UI can be exercised end to end without Azure. Nothing leaves
127.0.0.1.

One module per job: `media` (the tracks), `conversation` (the event protocol: what the service answers to each
client event, turn detection, replies), `peer` (one call's connection, and the ways it ends: hang-up, the service's
session limit, a lost network) and `host` (the loop thread every call lives on). Which session fields Azure is known
to accept: `service_rules.AZURE_SESSION_KEYS`.
"""

from .conversation import SPEECH_LEVEL, Conversation
from .host import PeerHost
from .media import audio_frames
from .peer import EmulatedPeer

__all__ = ["SPEECH_LEVEL", "Conversation", "EmulatedPeer", "PeerHost", "audio_frames"]
