"""The server stays in every call: a supervisor per admitted call, over the sideband (docs/supervisor.md).

`/connect` hands each call to a Storage queue (`REALTIME_SUPERVISOR_QUEUE`); the queue-triggered function runs
`Supervisor.run` on whichever instance takes the message, for as long as the call lasts. It:
- holds the session to what the server decided (realtime_proxy/guard.py): `observe` logs and counts each
  change, `enforce` restores the server's values at once and hangs up at the `REALTIME_POLICY_STRIKES`-th (a
  GPT-Live session's model, instructions and voice are immutable: its delegation is what can change);
- answers the function calls of the server-run tools (toolcalls.py; GPT-Live's delegated ones: delegation.py);
- ends the call at its planned end to the second, after a note shortly before;
- sums the call's usage into its ledger row and the metrics (GPT-Live: the cumulative usage of `session.closed`);
- frees the call's slot the moment the call ends, however it ends (the browser leaving without a word too).

A lease in the ledger row keeps one supervisor per call: a message delivered twice drops out while the first
holds it, and one delivered again after its instance died takes the stale lease over and re-attaches. Whatever
happens here, the minute sweep still ends the call at its planned end.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from .delegation import Answers, Delegations
from .guard import PolicyGuard
from .ledger import Ledger, Ticket, call_kind, decided_session
from .logs import REQUEST_ID, logger
from .settings import Supervision
from .sideband import NORMAL_CLOSE, Line, Refused, Sideband
from .tables import Row, Unavailable
from .toolcalls import Toolbox
from .transcripts import NO_TRANSCRIPTS, NoTranscripts, Transcripts
from .upstream import CALL_ID, Call
from .usage import Usage

log = logger(__name__)
HEARTBEAT_SECONDS = 30.0  # lease renewal and usage flush; the lease lasts ledger.LEASE_SECONDS
REATTACH_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0)  # seconds between attempts after a refused or dropped sideband
MAX_MESSAGE_BYTES = 1024
SUPERVISED_KINDS = ("realtime", "reasoning", "live")
STOP_SECONDS = 5.0  # at shutdown, how long a supervision has to leave its call before it is cancelled
CLOSE_SECONDS = 5.0  # how long `session.close` waits for `session.closed` on the supervisor's own socket
LIVE_SERVICE_REASONS = ("expired", "content")  # `session.closed` reasons that are the service's end of a session
_LEDGER_ID = re.compile(r"[0-9a-f]{16}")
POLICY_NOTE = "This conversation is being ended: its session was changed against this app's policy."


class Interrupted(Exception):
    """This instance is shutting down mid-call: the function fails, so the host delivers the message again and
    another instance takes the call over (the lease was given up)."""


class Queue(Protocol):
    """The queue output binding of `/connect` (func.Out[str])."""

    def set(self, val: str) -> None: ...


class Meter(Protocol):
    def tokens(self, added: dict[str, int], model: str, client: str) -> None: ...


@dataclass(frozen=True)
class Assignment:
    """A queue message: which call to supervise, and the connect's request id so both sides' logs line up."""

    ledger_id: str
    call_id: str
    request_id: str

    def dumps(self) -> str:
        return json.dumps({"v": 1, "ledger": self.ledger_id, "call": self.call_id, "request": self.request_id})

    @classmethod
    def parse(cls, body: bytes) -> Assignment | None:
        if len(body) > MAX_MESSAGE_BYTES:
            return None
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(data, dict) or data.get("v") != 1:
            return None
        ledger_id, call_id, request_id = data.get("ledger"), data.get("call"), data.get("request")
        if not (isinstance(ledger_id, str) and _LEDGER_ID.fullmatch(ledger_id)):
            return None
        if not (isinstance(call_id, str) and CALL_ID.fullmatch(call_id)):
            return None
        request_id = (
            request_id if isinstance(request_id, str) and request_id.isalnum() and len(request_id) <= 64 else "-"
        )
        return cls(ledger_id, call_id, request_id)


class HandOff:
    """What `/connect` does for supervision: the decided session goes into the call's row (the supervisor holds
    the call to it) and the call into the queue. Calls kept in one process's table during a storage outage
    are that process's to end; no supervisor could read them."""

    def __init__(self, supervised: bool) -> None:
        self.supervised = supervised

    def prepare(self, ticket: Ticket, call: Call) -> None:
        if self.supervised and ticket.table.shared and call.kind in SUPERVISED_KINDS and call.session:
            ticket.session = call.session

    def send(self, ticket: Ticket, call: Call, queue: Queue | None) -> None:
        if ticket.session and call.call_id and queue is not None:
            queue.set(Assignment(ticket.id, call.call_id, REQUEST_ID.get()).dumps())


class Supervisor:
    def __init__(
        self,
        ledger: Ledger,
        sideband: Sideband,
        supervision: Supervision,
        meter: Meter,
        turn_detection_choosable: bool,
        toolbox: Toolbox,
        transcripts: Transcripts | NoTranscripts = NO_TRANSCRIPTS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = ledger
        self.sideband = sideband
        self.supervision = supervision
        self.meter = meter
        self.turn_detection_choosable = turn_detection_choosable
        self.toolbox = toolbox  # the server-run tools the call's session declares (docs/tools.md)
        self.transcripts = transcripts
        self.clock = clock
        self.calls: dict[str, SupervisedCall] = {}  # call id -> its supervision, while it runs here

    async def run(self, body: bytes) -> None:
        """One queue message. Raises when storage is away or the instance is shutting down, so the host delivers
        the message again (after five tries, to the poison queue; the sweep still ends the call at its planned end)."""
        assignment = Assignment.parse(body)
        if assignment is None:
            log.error("supervisor: a queue message that is not a call assignment was dropped")
            return
        token = REQUEST_ID.set(assignment.request_id)
        try:
            await self._supervise(assignment)
        finally:
            REQUEST_ID.reset(token)

    async def _supervise(self, assignment: Assignment) -> None:
        call_id = assignment.call_id
        holder = secrets.token_hex(8)  # this run, in the lease: a second delivery, even to this process, drops out
        try:
            row = await self.ledger.supervise(assignment.ledger_id, holder)
        except Unavailable as error:
            log.warning("call %s: storage unavailable (%s); not supervised yet, the message is retried", call_id, error)
            raise
        if row is None:
            log.info("call %s: over, or supervised by another instance; nothing to do", call_id)
            return
        supervised = SupervisedCall(self, assignment, row, holder, task=asyncio.current_task())
        self.calls[call_id] = supervised
        try:
            await supervised.follow()
        finally:
            self.calls.pop(call_id, None)

    async def aclose(self) -> None:
        """Leaves every call this instance supervises, giving each a moment to record its usage and give its
        lease up; one still attaching then is cancelled."""
        for supervised in list(self.calls.values()):
            await supervised.stop()
        running = {supervised.task for supervised in self.calls.values() if supervised.task}
        if running:
            _, late = await asyncio.wait(running, timeout=STOP_SECONDS)
            for task in late:
                task.cancel()
        await self.transcripts.aclose()
        await self.sideband.aclose()

    async def close_live(self, session_id: str) -> bool:
        """Ends a GPT-Live session this instance supervises with `session.close` on its own socket, awaiting
        `session.closed`; False when it holds no open socket to the session, or the session did not answer."""
        supervised = self.calls.get(session_id)
        return supervised is not None and await supervised.close_live()


@dataclass
class SupervisedCall:
    supervisor: Supervisor
    assignment: Assignment
    row: Row
    holder: str
    task: asyncio.Task[Any] | None = None
    usage: Usage = field(default_factory=Usage)
    strikes: int = 0
    ended_by: str | None = None  # the reason this supervisor ended the call for
    expired: bool = False  # the service said the session expired before the sideband closed
    warned: bool = False
    line: Line | None = None
    _ending: asyncio.Task[None] | None = None  # this supervisor's end of the call, finished even if the line closes
    _stopping: bool = False  # leaving the call without ending it (shutdown, or the lease went elsewhere)
    _shutdown: bool = False

    def __post_init__(self) -> None:
        session = decided_session(self.row.props)
        self.kind = call_kind(self.row.props)
        self.live = self.kind == "live"
        self.guard = PolicyGuard(session, self.supervisor.turn_detection_choosable)
        self.closed = asyncio.Event()  # GPT-Live: `session.closed` came, or the socket closed with the session
        self.model = str(session.get("model") or "")
        self.end_at = float(str(self.row.props.get("end") or 0))
        self.usage = Usage.loads(self.row.props.get("usage"))
        self.strikes = int(str(self.row.props.get("strikes") or 0))
        self.tools = self.supervisor.toolbox.for_call(self.call_id)
        self.delegations = Delegations(self.tools)
        self.transcript = self.supervisor.transcripts.for_call(
            self.call_id, float(str(self.row.props.get("start") or 0))
        )
        self._answering: set[asyncio.Task[None]] = set()  # tool calls being run while events keep coming

    @property
    def call_id(self) -> str:
        return self.assignment.call_id

    async def follow(self) -> None:
        """Attached until the call ends: re-attaches after a dropped sideband, gives up (with a log line saying
        the sweep remains) only when the service refuses the app's credentials or keeps refusing."""
        mode = self.supervisor.supervision.mode
        log.info("call %s: supervising (%s), ends at the latest in %.0f s", self.call_id, mode, self._left())
        retries = iter(REATTACH_BACKOFF)
        while not self._stopping:
            try:
                self.line = await self.supervisor.sideband.attach(self.call_id, self.kind)
            except Refused as refused:
                if refused.gone:
                    return await self._over()
                wait = next(retries, None)
                if refused.forbidden or wait is None:
                    log.error(
                        "call %s: sideband refused (%s); NOT supervised from now on: the minute sweep still ends it "
                        "at its planned end",
                        self.call_id,
                        refused,
                    )
                    await self._flush()
                    return None
                log.warning("call %s: sideband refused (%s); retrying in %.1f s", self.call_id, refused, wait)
                await asyncio.sleep(wait)
                continue
            retries = iter(REATTACH_BACKOFF)
            if self._stopping:  # the instance began shutting down while this attach was under way
                await self.line.close()
                break
            if await self._attached(self.line) and not self._stopping:
                return await self._over()
            if not self._stopping:
                log.warning(
                    "call %s: the sideband dropped (code %s); attaching again", self.call_id, self.line.close_code
                )
        await self.settle()
        await self._flush(release=True)  # a redelivery may take the call over at once
        if self._shutdown:
            raise Interrupted(f"call {self.call_id}: this instance is shutting down; the call goes to another")
        return None

    async def _attached(self, line: Line) -> bool:
        """Reads events while the clock ends the call on time; True when the call is over."""
        clock = asyncio.ensure_future(self._clock(line))
        try:
            async for event in line.events():
                await self._on(line, event)
        finally:
            clock.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await clock
        over = line.close_code == NORMAL_CLOSE or self.ended_by is not None
        if over:
            self.closed.set()
        return over

    async def _on(self, line: Line, event: dict[str, Any]) -> None:
        kind = event["type"]
        self.transcript.observe(event)
        if kind == "session.updated":
            await self._check(line, event.get("session"))
        elif kind == "session.closed":
            self._closed_live(event)
        elif kind == "response.done":
            response = event.get("response")
            added = self.usage.add(response.get("usage") if isinstance(response, dict) else None)
            if added:
                self.supervisor.meter.tokens(added, self.model, str(self.row.props.get("client") or ""))
            self._beside(partial(self.tools.answer, event))
        elif kind == "response.event":
            answers = self.delegations.on(event)
            if answers is not None:
                self._beside(answers)
        elif kind == "error":
            error = event.get("error")
            code = error.get("code") if isinstance(error, dict) else None
            self.expired = self.expired or code == "session_expired"
            log.info("call %s: the service reported an error (%s)", self.call_id, str(code)[:64])

    def _closed_live(self, event: dict[str, Any]) -> None:
        """GPT-Live's last word: the session's cumulative usage, and why it closed."""
        added = self.usage.cumulative(event.get("usage"))
        if added:
            self.supervisor.meter.tokens(added, self.model, str(self.row.props.get("client") or ""))
        reason = event.get("reason")
        self.expired = self.expired or reason in LIVE_SERVICE_REASONS
        log.info("call %s: the session closed (%s)", self.call_id, str(reason)[:64])
        self.closed.set()

    async def close_live(self) -> bool:
        """`session.close` on this supervisor's socket, then `session.closed` awaited (bounded): True once the
        session said it closed. The clock or a handler may call this, never the event loop itself (it would
        wait for an event it reads)."""
        line = self.line
        if not self.live or line is None or line.closed:
            return False
        try:
            await line.send({"type": "session.close"})
            async with asyncio.timeout(CLOSE_SECONDS):
                await self.closed.wait()
        except (ConnectionError, RuntimeError, TimeoutError) as error:
            log.warning("call %s: session.close on the supervisor's socket went unanswered (%r)", self.call_id, error)
            return False
        return True

    async def _check(self, line: Line, session: object) -> None:
        changed = self.guard.violations(session)
        if not changed:
            return
        self.strikes += 1
        limit, mode = self.supervisor.supervision.strikes, self.supervisor.supervision.mode
        log.warning(
            "call %s: the session was changed (%s): violation %d of %d (%s)",
            self.call_id,
            ", ".join(changed),
            self.strikes,
            limit,
            mode,
        )
        if mode != "enforce":
            return
        if self.strikes >= limit:
            await line.send(_note(POLICY_NOTE))  # so the page can say why, before the hang-up closes it
            await self._end("policy")
        else:
            await line.send(self.guard.restore(changed))

    async def _clock(self, line: Line) -> None:
        """The timed work while attached: the warning, the end on the second, the lease and the usage."""
        warning = self.supervisor.supervision.warning_seconds
        next_beat = self.supervisor.clock() + HEARTBEAT_SECONDS
        while True:
            now = self.supervisor.clock()
            if not self.warned and warning and self.end_at - now <= warning:
                self.warned = True
                text = f"This conversation ends in {max(1, round(self.end_at - now))} seconds."
                await line.send(_live_note(text) if self.live else _note(text))
            if self.end_at <= now and self.ended_by is None:
                await self._end("time_limit")
            if now >= next_beat:
                next_beat = now + HEARTBEAT_SECONDS
                if not await self._flush():
                    log.warning("call %s: another instance took the supervision over; leaving", self.call_id)
                    self._stopping = True
                    await line.close()
                    return
            wake = min(next_beat, self.end_at if self.ended_by is None else next_beat)
            if not self.warned and warning:
                wake = min(wake, self.end_at - warning)
            await asyncio.sleep(max(0.0, wake - self.supervisor.clock()))

    def _beside(self, answers: Answers) -> None:
        """Runs a response's function calls beside the event stream (a slow tool must not hold the clock, the
        guard or the other answers up)."""
        task = asyncio.ensure_future(self._answer_tools(answers))
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    async def _answer_tools(self, answers: Answers) -> None:
        """Sends what answers a response's function calls on the sideband (each output, then one
        `response.create`)."""
        events = await answers()
        line = self.line
        try:
            for answer in events:
                if line is None or line.closed:
                    raise ConnectionError("the sideband closed")
                await line.send(answer)
        except (ConnectionError, RuntimeError) as error:
            log.warning("call %s: tool outputs not delivered (%s)", self.call_id, error)

    async def _end(self, reason: str) -> None:
        """Ends the call through the ledger. Hanging up closes the sideband, which cancels the clock that may be
        running this: the end is a task of its own, so the row is still closed and the slot freed."""
        self.ended_by = reason
        self._ending = asyncio.ensure_future(self._end_call(reason))
        await asyncio.shield(self._ending)

    async def _end_call(self, reason: str) -> None:
        try:
            await self.supervisor.ledger.end(self.assignment.ledger_id, reason)
        except Exception as error:  # ApiError or Unavailable: the row stays claimed and the sweep retries
            log.warning(
                "call %s: ending it (%s) failed (%s); the sweep retries", self.call_id, reason, type(error).__name__
            )

    async def _flush(self, release: bool = False) -> bool:
        """Renews (or gives up) the lease with the usage and strikes so far; False when the lease is someone
        else's now."""
        facts: dict[str, object] = {
            "usage": self.usage.dumps(),
            "strikes": self.strikes,
            "tools": json.dumps(dataclasses.asdict(self.tools.stats), separators=(",", ":")),
        }
        if release:
            facts["supervisedAt"] = 0
        try:
            return await self.supervisor.ledger.heartbeat(self.assignment.ledger_id, self.holder, facts) is not None
        except Unavailable as error:
            log.warning("call %s: could not record usage (%s); retried at the next heartbeat", self.call_id, error)
            return True

    async def _over(self) -> None:
        """The call ended: its usage recorded and, if nobody has closed its row yet, its slot freed now."""
        reason = self.ended_by or ("service" if self.expired else "gone")
        if self._ending is not None:
            await self._ending
        await self.settle()
        await self._flush()
        try:
            await self.supervisor.ledger.over(self.assignment.ledger_id, reason)
        except Unavailable as error:
            log.warning("call %s: ended, but its row could not be closed (%s); the sweep frees it", self.call_id, error)
        counts = self.usage.counts
        log.info(
            "call %s: supervision done (%s): %d input and %d output tokens, %d violations",
            self.call_id,
            reason,
            counts["inputTokens"],
            counts["outputTokens"],
            self.strikes,
        )

    async def settle(self) -> None:
        """What runs beside the events is finished: tool calls (pointless once the call is over) and the
        transcript's last lines."""
        for task in list(self._answering):
            task.cancel()
        await self.transcript.close()

    async def stop(self) -> None:
        """The instance is shutting down: leave the call, not end it (a redelivery takes it over)."""
        self._stopping = self._shutdown = True
        if self.line:
            await self.line.close()

    def _left(self) -> float:
        return self.end_at - self.supervisor.clock()


def _live_note(text: str) -> dict[str, Any]:
    """GPT-Live has no items: commentary is spoken to the user (realtime-api.md §6), so the page shows it too."""
    return {"type": "session.commentary.append", "content": text, "delegation_id": None}


def _note(text: str) -> dict[str, Any]:
    """A system message in the conversation: the model hears it, and the page sees it arrive."""
    return {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "system", "content": [{"type": "input_text", "text": text}]},
    }
