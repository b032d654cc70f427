"""The GPT-Live attach socket of the fake service and the emulator (realtime-api.md §6), over real sockets."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
import requests
from aiortc import RTCSessionDescription

from localdev.emulator import PeerHost
from localdev.fake_openai import FakeAzureOpenAI
from tests.conftest import API_KEY, OFFER
from tests.test_fake_sideband import Sideband, until
from tests.test_webrtc_peer import Browser

# -- the fake's and the emulator's attach socket ------------------------------------------------------------------


def live_session(fake: FakeAzureOpenAI, offer: str = OFFER) -> tuple[str, str]:
    created = requests.post(
        fake.url + "/openai/v1/live/sessions",
        headers={"api-key": API_KEY},
        json={
            "session": {"model": "gpt-live-1", "instructions": "Be brief."},
            "transport": {"type": "webrtc", "sdp": offer},
        },
        timeout=10,
    )
    assert created.status_code == 201, created.text
    return created.json()["session"]["id"], created.json()["transport"]["sdp"]


async def attach(http: aiohttp.ClientSession, fake: FakeAzureOpenAI, session_id: str, key: str = API_KEY) -> Sideband:
    url = fake.url.replace("http://", "ws://") + f"/openai/v1/live/sessions/{session_id}/attach"
    return Sideband(await http.ws_connect(url, headers={"api-key": key}))


def test_the_fakes_attach_socket_speaks_gpt_live(fake: FakeAzureOpenAI) -> None:
    session_id, _ = live_session(fake)

    async def main() -> None:
        async with aiohttp.ClientSession() as http:
            for key, status in (("wrong", 401), (API_KEY, 404)):
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await attach(http, fake, session_id if status == 401 else "sess_unknown", key)
                assert refused.value.status == status
            sideband = await attach(http, fake, session_id)
            await sideband.send({"type": "session.update", "session": {"instructions": "Obey me."}})
            error = (await sideband.expect("error"))["error"]
            assert (error["code"], error["param"]) == ("immutable_parameter", "session.instructions")
            await sideband.send({"type": "session.instructions.append", "content": "Be kind.", "delegation_id": None})
            await sideband.expect("session.instructions.appended")
            await sideband.send({"type": "response.create"})
            assert (await sideband.expect("error"))["error"]["code"] == "unknown_event", "no response lifecycle"
            await sideband.send({"type": "session.close"})
            closed = await sideband.expect("session.closed")
            assert closed["reason"] == "close_requested" and isinstance(closed["usage"], dict)
            assert await sideband.closed() == 1000
            with pytest.raises(aiohttp.WSServerHandshakeError) as gone:
                await attach(http, fake, session_id)
            assert gone.value.status == 404, "the session ended"

    asyncio.run(main())
    assert fake.live_call(session_id).ended


def test_session_close_on_the_emulators_attach_socket_closes_the_browsers_channel() -> None:
    peers = PeerHost()
    emulator = FakeAzureOpenAI(api_key=API_KEY, peers=peers)

    async def main() -> None:
        browser = Browser()
        await browser.pc.setLocalDescription(await browser.pc.createOffer())
        session_id, answer = await asyncio.to_thread(live_session, emulator, browser.pc.localDescription.sdp)
        await browser.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        try:
            async with aiohttp.ClientSession() as http:
                await browser.expect("session.started")
                sideband = await attach(http, emulator, session_id)
                await sideband.send({"type": "session.commentary.append", "content": "Hello", "delegation_id": None})
                await sideband.expect("session.commentary.appended")
                await sideband.expect("session.output_transcript.delta")  # spoken to the browser, mirrored here
                await sideband.send({"type": "session.close"})
                assert (await sideband.expect("session.closed"))["reason"] == "close_requested"
                assert (await browser.expect("session.closed"))["reason"] == "close_requested"
                assert await sideband.closed() == 1000
                await until(lambda: browser.channel.readyState == "closed", "the browser's channel to close")
        finally:
            await browser.hang_up()

    try:
        asyncio.run(main())
    finally:
        emulator.close()
        peers.close()
