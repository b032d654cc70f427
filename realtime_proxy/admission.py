"""Limits that hold for the whole app, the ledger of live calls, and ending calls from the server.

Rows, all in one partition (realtime_proxy/tables.py):
- `rate-{minute}-{who}-{slot}`: one per connect admitted in a one-minute window, `who` being `app` or
  `c-{client}`. A connect is admitted by *creating* its slot rows with slot <= the limit. Creation is atomic,
  so however many instances race, a window never holds more rows than its limit (no read-modify-write).
- `live-{who}-{slot}`: one per live session while a session cap is set; a slot whose session has passed its
  planned end is taken over by a replace conditional on its ETag.
- `call-{id}`: the ledger: call id, client, origin, voice, start, planned end, status, capability hash.
- `control`: the kill switch.
A connect writes its rows in one transaction before anything goes upstream and completes its ledger row
(or releases its session slots) in a second: two storage round trips per connect.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .errors import ApiError
from .logs import logger
from .settings import SharedLimits
from .tables import Conflict, MemoryTable, Op, Row, Table, Unavailable

log = logger(__name__)
ATTEMPTS = 8  # conflicts a connect resolves before giving up (each one means another instance won a slot)
PAUSE_CACHE_SECONDS = 5.0  # how stale an instance's view of the kill switch may be
SERVICE_LIMIT_SECONDS = 3600  # the service ends sessions at 60 minutes; a session counts as live until then
KEEP_ENDED_SECONDS = 86400
Hangup = Callable[[str], Awaitable[None]]


@dataclass
class Ticket:
    """One admitted connect: its ledger row and the session slots it holds, in the table that recorded them."""

    id: str
    secret: str
    start: float
    end: float
    table: Table
    who: dict[str, object] = field(default_factory=dict)  # client, origin, voice: recorded once, kept on every write
    ledger_etag: str = ""
    slots: dict[str, str] = field(default_factory=dict)  # live slot row -> its ETag

    @property
    def token(self) -> str:
        """The caller's capability to end this call early: unguessable, and useless for any other call."""
        return f"{self.id}.{self.secret}"


@dataclass(frozen=True)
class _Counter:
    key: str
    limit: int
    refusal: Callable[[float], ApiError]


class Admission:
    def __init__(
        self, table: Table, config: SharedLimits, per_client_per_minute: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.table = table
        self.config = config
        self.per_client = int(per_client_per_minute)
        self.clock = clock
        self.fallback = MemoryTable()  # LIMITS_FAIL_MODE=open: per-instance limits while storage is away
        self._next: dict[str, int] = {}  # next slot to try, per counter (hints: forgetting one costs a retry)
        self._window = 0
        self._takeover: dict[str, tuple[int, str]] = {}  # live counter -> (expired slot, its ETag)
        self._paused: tuple[float, bool] = (-math.inf, False)

    @property
    def shared(self) -> bool:
        return self.table.shared

    async def admit(self, client: str, origin: str, voice: str) -> Ticket:
        """Records the connect and takes its slots, or refuses it (429, or 503 while paused or storage is away)."""
        try:
            return await self._admit(self.table, client, origin, voice)
        except Unavailable as error:
            if self.config.fail_mode == "closed":
                log.warning("limits storage unavailable (%s): refusing connects (LIMITS_FAIL_MODE=closed)", error)
                raise ApiError(
                    503,
                    "limits_unavailable",
                    "The app cannot reach its limits storage; try again shortly.",
                    {"Retry-After": "5"},
                ) from None
            log.warning("limits storage unavailable (%s): per-instance limits (LIMITS_FAIL_MODE=open)", error)
            return await self._admit(self.fallback, client, origin, voice)

    async def confirm(self, ticket: Ticket, call_id: str | None) -> None:
        """The call exists: the ledger row gets its id, so the server can end it later."""
        await self._settle(
            ticket, [Op("replace", f"call-{ticket.id}", self._ledger(ticket, "live", call_id), ticket.ledger_etag)]
        )

    async def release(self, ticket: Ticket) -> None:
        """The connect failed: its session slots are free again at once (its rate slots stay spent)."""
        ledger = Op("replace", f"call-{ticket.id}", self._ledger(ticket, "failed", None), ticket.ledger_etag)
        await self._settle(ticket, [ledger, *self._free(ticket.slots)])

    async def hang_up_for_caller(self, call_id: str, token: str, hangup: Hangup) -> bool:
        """Ends the call if `token` is the capability issued with it; False for any other call or token."""
        ledger_id, _, secret = token.partition(".")
        if not ledger_id.isalnum() or not secret:
            return False
        row = await self.table.get(f"call-{ledger_id}")
        if row is None or row.props.get("call") != call_id:
            return False
        if not hmac.compare_digest(str(row.props.get("capability", "")), _digest(secret)):
            return False
        if row.props.get("status") == "live":
            await hangup(call_id)
            await self._end(self.table, row, "caller")
        return True

    async def sweep(self, hangup: Hangup) -> dict[str, int]:
        """The timer's job, safe to run on every instance at once: ends calls past their planned end (hang up,
        then mark ended; a failed hang-up is retried next time), releases connects an instance abandoned,
        and deletes rows nobody needs any more."""
        now = self.clock()
        done = {"ended": 0, "failed": 0, "released": 0, "deleted": 0}
        for row in await self.table.rows("call-"):
            status, end = row.props.get("status"), float(row.props.get("end") or 0)  # type: ignore[arg-type]
            if status == "live" and end <= now:
                done["ended" if await self._hang_up_row(row, hangup, "time_limit") else "failed"] += 1
            elif status == "starting" and float(row.props.get("start") or 0) < now - 300:  # type: ignore[arg-type]
                done["released"] += await self._end(self.table, row, "abandoned")
            elif status in ("ended", "failed") and end < now - KEEP_ENDED_SECONDS:
                done["deleted"] += await self._delete([row])
        window = int(now // 60)
        done["deleted"] += await self._delete(await self.table.rows("rate-", below=f"rate-{window - 1:010d}"))
        return done

    async def pause(self, paused: bool, hangup: Hangup) -> int:
        """The kill switch: refuse new connects on every instance (within PAUSE_CACHE_SECONDS) and, when
        pausing, end every live call. Returns how many calls were ended."""
        await self.table.transact([Op("upsert", "control", {"paused": paused, "at": self.clock()})])
        self._paused = (self.clock(), paused)
        if not paused:
            return 0
        live = [row for row in await self.table.rows("call-") if row.props.get("status") == "live"]
        ended = 0
        for start in range(0, len(live), 20):  # a few at a time: fast for many calls, gentle on the resource
            ended += sum(
                await asyncio.gather(*(self._hang_up_row(row, hangup, "operator") for row in live[start : start + 20]))
            )
        return ended

    # -- admission ------------------------------------------------------------------------------------------

    async def _admit(self, table: Table, client: str, origin: str, voice: str) -> Ticket:
        if await self._is_paused(table):
            raise ApiError(
                503,
                "service_paused",
                "The operator has paused new conversations; try again later.",
                {"Retry-After": "60"},
            )
        now = self.clock()
        who = "c-" + hashlib.sha256(client.encode()).hexdigest()[:16]
        ticket = Ticket(
            secrets.token_hex(8),
            secrets.token_urlsafe(24),
            now,
            now + (self.config.max_session_seconds or SERVICE_LIMIT_SECONDS),
            table,
            {"client": who, "origin": origin, "voice": voice},
        )
        counters = self._counters(who, now)
        for _ in range(ATTEMPTS):
            for counter in counters:  # every session slot this instance knew of is taken: look again
                if (
                    counter.key.startswith("live-")
                    and counter.key not in self._takeover
                    and self._next.get(counter.key, 1) > counter.limit
                ):
                    await self._learn_live(table, counter, now)
            ops = [Op("create", f"call-{ticket.id}", self._ledger(ticket, "starting", None))]
            taken = [self._take(counter, now, ops) for counter in counters]
            try:
                etags = await table.transact(ops)
            except Conflict as conflict:
                self._give_back(counters, taken, failed=conflict.index - 1)
                if conflict.index > 0 and counters[conflict.index - 1].key.startswith("live-"):
                    await self._learn_live(table, counters[conflict.index - 1], now)
                continue
            ticket.ledger_etag = etags[0]
            ticket.slots = {
                op.key: etag for op, etag in zip(ops[1:], etags[1:], strict=False) if op.key.startswith("live-")
            }
            return ticket
        raise ApiError(
            503, "limits_busy", "Too many connects are competing for the same limits; retry.", {"Retry-After": "1"}
        )

    def _counters(self, who: str, now: float) -> list[_Counter]:
        window = int(now // 60)
        retry_in = str(max(1, math.ceil(60 - now % 60)))

        def rate():
            return ApiError(
                429, "rate_limited", f"Too many connects; retry in {retry_in} s.", {"Retry-After": retry_in}
            )

        counters = []
        if self.per_client > 0:
            counters.append(_Counter(f"rate-{window:010d}-{who}", self.per_client, lambda _: rate()))
        if self.config.app_rate_per_minute > 0:
            counters.append(_Counter(f"rate-{window:010d}-app", self.config.app_rate_per_minute, lambda _: rate()))
        if self.config.max_active_sessions_per_client > 0:
            counters.append(_Counter(f"live-{who}", self.config.max_active_sessions_per_client, _too_many_sessions))
        if self.config.max_active_sessions > 0:
            counters.append(_Counter("live-app", self.config.max_active_sessions, _too_many_sessions))
        if window != self._window:  # hints are per window or only hints: start each minute afresh, memory stays bounded
            self._window, self._next = window, {}
        return counters

    def _take(self, counter: _Counter, now: float, ops: list[Op]) -> int:
        """Claims the next slot this instance believes free, before any await, so concurrent connects in one
        instance never race each other for it."""
        takeover = self._takeover.pop(counter.key, None)
        slot = takeover[0] if takeover else self._next.get(counter.key, 1)
        if slot > counter.limit:
            raise counter.refusal(now)
        if not takeover:
            self._next[counter.key] = slot + 1
        row = f"{counter.key}-{slot:06d}"
        props = {"end": now + (self.config.max_session_seconds or SERVICE_LIMIT_SECONDS)}
        ops.append(Op("replace", row, props, takeover[1]) if takeover else Op("create", row, props))
        return slot

    def _give_back(self, counters: list[_Counter], taken: list[int], failed: int) -> None:
        """After a refused transaction the slot that conflicted is someone else's; the others are free again."""
        for index, (counter, slot) in enumerate(zip(counters, taken, strict=False)):
            if index != failed and self._next.get(counter.key) == slot + 1:
                self._next[counter.key] = slot

    async def _learn_live(self, table: Table, counter: _Counter, now: float) -> None:
        """A session slot was taken: read the counter's rows once to find a free slot or an expired one."""
        held = {row.key: row for row in await table.rows(f"{counter.key}-")}
        for slot in range(1, counter.limit + 1):
            row = held.get(f"{counter.key}-{slot:06d}")
            if row is None:
                self._next[counter.key] = slot
                return
            if float(row.props.get("end") or 0) <= now:  # type: ignore[arg-type]
                self._takeover[counter.key] = (slot, row.etag)
                return
        ends = [float(row.props.get("end") or 0) for row in held.values()]  # type: ignore[arg-type]
        self._next[counter.key] = counter.limit + 1
        raise _too_many_sessions(min(ends, default=now + 60) - now)

    async def _is_paused(self, table: Table) -> bool:
        checked, paused = self._paused
        if self.clock() - checked > PAUSE_CACHE_SECONDS:
            row = await table.get("control")
            paused = bool(row and row.props.get("paused"))
            self._paused = (self.clock(), paused)
        return paused

    # -- ending ---------------------------------------------------------------------------------------------

    def _ledger(self, ticket: Ticket, status: str, call_id: str | None) -> dict[str, object]:
        props = {
            "status": status,
            "start": ticket.start,
            "end": ticket.end,
            "capability": _digest(ticket.secret),
            "slots": json.dumps(ticket.slots),
            **ticket.who,
        }
        if call_id is not None:
            props["call"] = call_id
        return props

    async def _settle(self, ticket: Ticket, ops: list[Op]) -> None:
        """The second write of a connect; a failure is logged, never turned into a failed connect."""
        try:
            await ticket.table.transact(ops)
        except (Conflict, Unavailable) as error:
            log.warning("could not update the ledger for %s: %s", ticket.id, error)

    async def _hang_up_row(self, row: Row, hangup: Hangup, reason: str) -> bool:
        call_id = str(row.props.get("call") or "")
        try:
            if call_id:
                await hangup(call_id)
        except ApiError as error:
            log.warning("hang-up of %s failed (%s); retrying on the next sweep", call_id, error.code)
            return False
        return await self._end(self.table, row, reason)

    async def _end(self, table: Table, row: Row, reason: str) -> bool:
        """Marks the call ended and frees its session slots; False when another instance got there first."""
        slots = json.loads(str(row.props.get("slots") or "{}"))
        ended = Op(
            "replace", row.key, {**row.props, "status": "ended", "reason": reason, "ended": self.clock()}, row.etag
        )
        try:
            await table.transact([ended, *self._free(slots)])
        except Conflict:
            return False
        return True

    def _free(self, slots: dict[str, str]) -> list[Op]:
        """Deletes session slots (only if still ours) and lets this instance try them first again."""
        for key in slots:
            counter, _, slot = key.rpartition("-")
            self._next[counter] = min(self._next.get(counter, 1), int(slot))
        return [Op("delete", key, etag=etag) for key, etag in slots.items()]

    async def _delete(self, rows: list[Row]) -> int:
        deleted = 0
        for start in range(0, len(rows), 100):  # a transaction holds at most 100 operations
            chunk = rows[start : start + 100]
            try:
                await self.table.transact([Op("delete", row.key, etag=row.etag) for row in chunk])
                deleted += len(chunk)
            except Conflict:
                pass  # another instance's sweep is deleting them too
        return deleted


def _too_many_sessions(wait: float) -> ApiError:
    retry = str(min(3600, max(1, math.ceil(wait))))
    return ApiError(
        429, "too_many_sessions", f"Too many live conversations; retry in {retry} s.", {"Retry-After": retry}
    )


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
