"""The ledger of calls, and ending calls from the server: the caller's End, the session length, the kill switch.

Rows (one partition, realtime_proxy/tables.py):
- `call-{id}`: one per admitted connect: status, call id, its kind (how it is ended), client, origin, voice,
  start, planned end, the hash of the caller's capability, the session slots it holds. Status goes `starting`
  (admitted, nothing upstream yet) → `live` (the call exists) → `ending` (one ender has claimed it) → `ended`; or
  `starting` → `failed` (the connect failed) or `cancelled` (the operator paused while it was in flight).
  While a supervisor (realtime_proxy/supervisor.py) holds the call, the row also carries its lease
  (`supervisor`, `supervisedAt`), the session the server decided (`session0`, `session1`, …: JSON in chunks
  that fit Table Storage's property size) and what the call consumed (`usage`, `strikes`).
- `control`: the kill switch.

A call is ended exactly once: whoever ends it (the caller, the sweep on any instance, the kill switch, its
supervisor) first claims its row with a write conditional on the row's ETag, and only the winner hangs up; a
claim that lost only to a supervisor's bookkeeping (the row is still live) reads the row again and retries. A
claim whose hang-up failed goes stale and is claimed again by the next sweep, so every live call is retried
until it ends.

When the shared table cannot be written (an outage under LIMITS_FAIL_MODE=open, or a call that could be
neither recorded nor hung up), the call is kept in this process's own table and this process ends it
itself, at its planned end; it moves to the shared table as soon as storage answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .errors import ApiError
from .logs import logger
from .tables import Conflict, Op, Row, Table, Unavailable

log = logger(__name__)
Hangup = Callable[[str, str], Awaitable[None]]  # (call id, deployment kind): ends the call upstream
PAUSE_CACHE_SECONDS = 2.0  # how stale an instance's view of the kill switch may be
SERVICE_LIMIT_SECONDS = 3600  # the service ends sessions at 60 minutes; a session counts as live until then
KEEP_ENDED_SECONDS = 86400
ABANDONED_SECONDS = 300  # a row still `starting` this long after its connect began belongs to a lost instance
STALE_CLAIM_SECONDS = 30  # a claim older than this failed to hang up (or its instance died): claim it again
LOCAL_RETRY_SECONDS = 5.0
LEASE_SECONDS = 90.0  # a supervisor renews its lease every HEARTBEAT_SECONDS; one this old belongs to a lost instance
SESSION_CHUNK = 15_000  # characters per property: Table Storage allows 32 Ki UTF-16 units, and astral ones take two
WRITE_ATTEMPTS = 8  # read-modify-write retries when another writer changed the row in between
TOKEN = re.compile(r"([0-9a-f]{16})\.([A-Za-z0-9_-]{32})")  # `{ledger id}.{secret}`, exactly as Ticket makes it
OVER = ("ended", "failed", "cancelled")


@dataclass
class Ticket:
    """One admitted connect: its ledger row and the session slots it holds, in the table that recorded them."""

    id: str
    secret: str
    start: float
    end: float
    table: Table
    who: dict[str, object] = field(default_factory=dict)  # client, origin, voice: recorded once, kept on every write
    session: dict[str, object] = field(default_factory=dict)  # what the server decided, once the call is asked for
    ledger_etag: str = ""
    slots: dict[str, str] = field(default_factory=dict)  # live slot row -> its ETag

    @classmethod
    def new(cls, now: float, length: float, table: Table, who: dict[str, object]) -> Ticket:
        return cls(secrets.token_hex(8), secrets.token_urlsafe(24), now, now + length, table, who)

    @property
    def token(self) -> str:
        """The caller's capability to end this call early: unguessable, and useless for any other call."""
        return f"{self.id}.{self.secret}"

    @property
    def key(self) -> str:
        return f"call-{self.id}"


def paused_error() -> ApiError:
    return ApiError(
        503, "service_paused", "The operator has paused new conversations; try again later.", {"Retry-After": "60"}
    )


class Ledger:
    def __init__(
        self,
        table: Table,
        local: Table,
        hangup: Hangup,
        slots_freed: Callable[[dict[str, str]], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.table = table
        self.local = local  # this process's own table: calls only this instance can end (see the module doc)
        self.hangup = hangup
        self.slots_freed = slots_freed  # admission's hint that those session slots are free again
        self.clock = clock
        self._paused: tuple[float, bool] = (-math.inf, False)
        self._enforcing: dict[str, asyncio.Task[None]] = {}  # local call row -> the task that ends it here
        self._reconciling: asyncio.Task[None] | None = None

    # -- a connect's rows --------------------------------------------------------------------------------------

    def opening(self, ticket: Ticket) -> Op:
        return Op("create", ticket.key, self._props(ticket, "starting", None))

    async def confirm(self, ticket: Ticket, call_id: str | None, deadline: float, kind: str = "realtime") -> None:
        """The call exists: the row gets its id and kind, so the server can end it later. If the operator cancelled the
        row meanwhile, or the row cannot be written before the deadline, the new call is hung up at once (a
        call nobody can end must not run) and the caller gets a 503."""
        ticket.who["kind"] = kind
        live = Op("replace", ticket.key, self._props(ticket, "live", call_id), ticket.ledger_etag)
        loop = asyncio.get_running_loop()
        record_by = deadline - min(2.0, (deadline - loop.time()) / 2)  # the rest is for hanging up
        backoff = 0.1
        while True:
            try:
                async with asyncio.timeout_at(record_by):
                    [ticket.ledger_etag] = await ticket.table.transact([live])
                if ticket.table is self.local:
                    self._enforce_here(ticket.key)
                return
            except Conflict:
                row = await _quietly(ticket.table.get(ticket.key))
                cancelled = row is not None and row.props.get("status") == "cancelled"
                log.warning(
                    "call %s: its ledger row changed while connecting (%s)",
                    call_id,
                    "paused" if cancelled else "conflict",
                )
                await self._abandon(ticket, call_id, deadline)
                raise paused_error() if cancelled else _unrecorded() from None
            except (Unavailable, TimeoutError) as error:
                if loop.time() + backoff < record_by:
                    log.warning("call %s: recording it failed (%s); retrying", call_id, type(error).__name__)
                    await asyncio.sleep(backoff)
                    backoff *= 2
                    continue
                log.error("call %s could not be recorded before the deadline: ending it", call_id)
                await self._abandon(ticket, call_id, deadline)
                raise _unrecorded() from None

    async def release(self, ticket: Ticket) -> None:
        """The connect failed: its session slots are free again at once (its rate slots stay spent)."""
        failed = Op("replace", ticket.key, self._props(ticket, "failed", None), ticket.ledger_etag)
        try:
            await ticket.table.transact([failed, *self._free(ticket.slots)])
        except (Conflict, Unavailable) as error:  # the sweep frees an abandoned row's slots later
            log.warning("could not release the session slots of %s: %s", ticket.id, error)

    async def _abandon(self, ticket: Ticket, call_id: str | None, deadline: float) -> None:
        """Hangs up a call the ledger does not hold; if even that fails, this process keeps it and retries."""
        if call_id is None:
            log.error("a call without an id escaped the ledger (connect %s)", ticket.id)
            return
        try:
            async with asyncio.timeout_at(deadline):
                await self.hangup(call_id, call_kind(ticket.who))
            return
        except (ApiError, TimeoutError):
            log.error("call %s: could not hang it up yet; this instance retries until it ends", call_id)
        kept = self._props(ticket, "live", call_id) | {"end": self.clock(), "slots": "{}", "reason": "unrecorded"}
        await self.local.transact([Op("upsert", ticket.key, kept)])
        self._enforce_here(ticket.key)

    # -- ending calls ------------------------------------------------------------------------------------------

    async def hang_up_for_caller(self, call_id: str, token: str) -> bool:
        """Ends the call if `token` is the capability issued with it; False for any other call or token (a
        malformed token never reaches storage)."""
        match = TOKEN.fullmatch(token)
        if not match:
            return False
        ledger_id, secret = match.groups()
        found = await self._find(f"call-{ledger_id}")
        if found is None:
            return False
        table, row = found
        if row.props.get("call") != call_id or not hmac.compare_digest(
            str(row.props.get("capability")), _digest(secret)
        ):
            return False
        if row.props.get("status") == "live":
            await self._end_call(table, row, "user")
        return True

    async def _find(self, key: str) -> tuple[Table, Row] | None:
        """The row in the shared table or, for a call admitted while storage was away, in this process's."""
        try:
            row = await self.table.get(key)
            if row is not None:
                return self.table, row
        except Unavailable:
            row = await self.local.get(key)
            if row is None:
                raise
            return self.local, row
        row = await self.local.get(key)
        return (self.local, row) if row is not None else None

    async def sweep(self) -> dict[str, int]:
        """The timer's job, safe to run on every instance at once: ends calls past their planned end (and every
        live call while paused), retries hang-ups that failed, releases connects an instance abandoned, and
        deletes rows nobody needs any more."""
        now = self.clock()
        paused = await self.paused()
        done = {"ended": 0, "failed": 0, "released": 0, "deleted": 0}
        due: list[tuple[Row, str]] = []
        for row in await self.table.rows("call-"):
            status, end = row.props.get("status"), _number(row.props.get("end"))
            if status == "live" and (paused or end <= now):
                due.append((row, "operator" if paused else "time_limit"))
            elif status == "ending" and _number(row.props.get("claimed")) < now - STALE_CLAIM_SECONDS:
                due.append((row, str(row.props.get("reason") or "time_limit")))
            elif status == "starting" and _number(row.props.get("start")) < now - ABANDONED_SECONDS:
                done["released"] += await self._close_row(self.table, row, "failed", "abandoned")
            elif status in OVER and end < now - KEEP_ENDED_SECONDS:
                done["deleted"] += await self._delete([row])
        ended, failed = await self._end_calls(self.table, due)
        done["ended"], done["failed"] = ended, failed
        window = int(now // 60)
        done["deleted"] += await self._delete(await self.table.rows("rate-", below=f"rate-{window - 1:010d}"))
        return done

    async def _end_calls(self, table: Table, due: list[tuple[Row, str]]) -> tuple[int, int]:
        """Ends calls a few at a time (fast for many calls, gentle on the resource); one failure stops none of
        the others. Returns (ended here, failed)."""
        ended = failed = 0
        for start in range(0, len(due), 20):
            chunk = due[start : start + 20]
            results = await asyncio.gather(
                *(self._end_call(table, row, why) for row, why in chunk), return_exceptions=True
            )
            for (row, _), result in zip(chunk, results, strict=True):
                if isinstance(result, BaseException):
                    failed += 1
                    if not isinstance(result, (ApiError, Unavailable)):
                        log.error("ending call %s failed unexpectedly: %r", row.props.get("call"), result)
                else:
                    ended += result
        return ended, failed

    async def _end_call(self, table: Table, row: Row, reason: str) -> bool:
        """Claims the row, hangs up, marks it ended and frees its session slots. False when another ender holds
        the claim; raises ApiError (the row stays claimed, to be retried) when the hang-up fails."""
        claimed = await self._claim(table, row, reason)
        if claimed is None:
            return False
        row, etag, claim = claimed, claimed.etag, claimed.props
        call_id = str(row.props.get("call") or "")
        try:
            if call_id:
                await self.hangup(call_id, call_kind(row.props))
        except ApiError as error:
            log.warning("hang-up of %s failed (%s); it is retried", call_id, error.code)
            raise
        log.info("call %s ended (%s)", call_id, reason)
        await self._close_row(table, Row(row.key, claim, etag), "ended", reason)
        return True

    async def _claim(self, table: Table, row: Row, reason: str) -> Row | None:
        """The row marked `ending` by this ender, or None when another ender got there first. A conflict that
        leaves the row as it was (still live, or the same stale claim) was a supervisor's bookkeeping: retry."""
        for _ in range(WRITE_ATTEMPTS):
            claim = {**row.props, "status": "ending", "reason": reason, "claimed": self.clock()}
            try:
                [etag] = await table.transact([Op("replace", row.key, claim, row.etag)])
                return Row(row.key, claim, etag)
            except Conflict:
                fresh = await table.get(row.key)
                if fresh is None or not _same_state(fresh, row):
                    return None
                row = fresh
        return None

    async def _close_row(self, table: Table, row: Row, status: str, reason: str) -> bool:
        """Marks a row over and frees its session slots; a slot already taken over is left to its new owner. A
        row changed meanwhile only by bookkeeping (same status, same claim) is read again and closed."""
        slots = json.loads(str(row.props.get("slots") or "{}"))
        for _ in range(WRITE_ATTEMPTS):
            props = {**row.props, "status": status, "reason": reason, "ended": self.clock()}
            closed = Op("replace", row.key, props, row.etag)
            try:
                await table.transact([closed, *self._free(slots)])
                return True
            except Conflict as conflict:
                if conflict.index > 0:
                    await table.transact([closed])
                    return True
            fresh = await table.get(row.key)
            if fresh is None or not _same_state(fresh, row):
                return False
            row = fresh
        return False

    def _free(self, slots: dict[str, str]) -> list[Op]:
        self.slots_freed(slots)
        return [Op("delete", key, etag=etag) for key, etag in slots.items()]

    async def _delete(self, rows: list[Row]) -> int:
        deleted = 0
        for start in range(0, len(rows), 100):  # a transaction holds at most 100 operations
            chunk = rows[start : start + 100]
            with contextlib.suppress(Conflict):  # another instance's sweep is deleting them too
                await self.table.transact([Op("delete", row.key, etag=row.etag) for row in chunk])
                deleted += len(chunk)
        return deleted

    # -- supervision (realtime_proxy/supervisor.py) ------------------------------------------------------------

    async def supervise(self, ledger_id: str, holder: str) -> Row | None:
        """Takes the call's supervision lease for `holder`: the row if it is live and was unsupervised, ours, or
        held by a supervisor whose lease went stale (its instance died); else None (over, unknown, or held)."""
        now = self.clock()

        def take(props: dict[str, object]) -> dict[str, object] | None:
            holder_now = props.get("supervisor")
            held = holder_now not in (None, "", holder) and _number(props.get("supervisedAt")) > now - LEASE_SECONDS
            return (
                None if props.get("status") != "live" or held else {**props, "supervisor": holder, "supervisedAt": now}
            )

        row = await self._update(f"call-{ledger_id}", take)
        return row if row and row.props.get("supervisor") == holder and row.props.get("status") == "live" else None

    async def heartbeat(self, ledger_id: str, holder: str, facts: dict[str, object]) -> Row | None:
        """Renews the lease and records the call's facts (usage, strikes; `supervisedAt: 0` gives the lease up),
        whatever its status; None when the lease is someone else's now (this supervisor was taken for dead) or
        the row is gone."""

        def renew(props: dict[str, object]) -> dict[str, object] | None:
            return {**props, "supervisedAt": self.clock(), **facts} if props.get("supervisor") == holder else None

        row = await self._update(f"call-{ledger_id}", renew)
        return row if row and row.props.get("supervisor") == holder else None

    async def end(self, ledger_id: str, reason: str) -> bool:
        """The supervisor ends a live call (time limit, policy): claimed, hung up and closed like any other end."""
        row = await self.table.get(f"call-{ledger_id}")
        return bool(row and row.props.get("status") == "live" and await self._end_call(self.table, row, reason))

    async def over(self, ledger_id: str, reason: str) -> bool:
        """The call ended by itself (the sideband closed): a row still live is closed with `reason` and its
        slots are free at once; one that an ender has claimed is left to it."""
        row = await self.table.get(f"call-{ledger_id}")
        if row is None or row.props.get("status") != "live":
            return False
        closed = await self._close_row(self.table, row, "ended", reason)
        if closed:
            log.info("call %s ended (%s)", row.props.get("call"), reason)
        return closed

    async def _update(self, key: str, change: Callable[[dict[str, object]], dict[str, object] | None]) -> Row | None:
        """Read-modify-write conditional on the ETag, retried when another writer got in between. `change` returns
        the new properties, or None to leave the row alone; the answer is the row as written or as found."""
        for _ in range(WRITE_ATTEMPTS):
            row = await self.table.get(key)
            if row is None:
                return None
            props = change(dict(row.props))
            if props is None:
                return row
            try:
                [etag] = await self.table.transact([Op("replace", key, props, row.etag)])
                return Row(key, props, etag)
            except Conflict:
                continue
        raise Unavailable(f"{key} kept changing under {WRITE_ATTEMPTS} writes")

    # -- the kill switch ---------------------------------------------------------------------------------------

    async def paused(self) -> bool:
        """The switch as this instance last read it, read again when older than PAUSE_CACHE_SECONDS."""
        checked, paused = self._paused
        if self.clock() - checked > PAUSE_CACHE_SECONDS:
            row = await self.table.get("control")
            paused = bool(row and row.props.get("paused"))
            self._paused = (self.clock(), paused)
        return paused

    @property
    def last_known_paused(self) -> bool:
        """What the switch said when storage last answered: an outage does not unpause the app."""
        return self._paused[1]

    async def pause(self, paused: bool) -> tuple[int, int]:
        """Refuses new connects on every instance and, when pausing, ends every call: those live now, those in
        flight (their rows are cancelled, so their connects hang up what they made), and, after every
        instance's view of the switch has caught up, those that slipped in meanwhile and those whose hang-up
        failed. Returns (calls ended, hang-ups still failing: every sweep retries them while paused)."""
        await self.table.transact([Op("upsert", "control", {"paused": paused, "at": self.clock()})])
        self._paused = (self.clock(), paused)
        if not paused:
            return 0, 0
        ended, _ = await self._end_everything(retry_claimed_before=self.clock())
        await asyncio.sleep(PAUSE_CACHE_SECONDS)
        more, failed = await self._end_everything(retry_claimed_before=self.clock())
        if failed:
            log.warning("pause: %d hang-ups failed; every sweep retries them while paused", failed)
        return ended + more, failed

    async def _end_everything(self, retry_claimed_before: float) -> tuple[int, int]:
        due: list[tuple[Row, str]] = []
        for row in await self.table.rows("call-"):
            status = row.props.get("status")
            if status == "starting" and not await self._close_row(self.table, row, "cancelled", "operator"):
                row = await self.table.get(row.key) or row  # it went live meanwhile
                status = row.props.get("status")
            if status == "live" or (status == "ending" and _number(row.props.get("claimed")) < retry_claimed_before):
                due.append((row, "operator"))
        return await self._end_calls(self.table, due)

    # -- calls this process keeps ------------------------------------------------------------------------------

    def _enforce_here(self, key: str) -> None:
        if key not in self._enforcing:
            self._enforcing[key] = asyncio.ensure_future(self._end_here(key))

    async def _end_here(self, key: str) -> None:
        """Ends a call kept in this process's table at its planned end, retrying until the hang-up succeeds."""
        try:
            while (row := await self.local.get(key)) is not None and row.props.get("status") not in OVER:
                wait = _number(row.props.get("end")) - self.clock()
                if wait > 0:
                    await asyncio.sleep(min(wait, 60))
                    continue
                with contextlib.suppress(ApiError):
                    await self._end_call(self.local, row, str(row.props.get("reason") or "time_limit"))
                    continue
                await asyncio.sleep(LOCAL_RETRY_SECONDS)
        finally:
            self._enforcing.pop(key, None)

    def reconcile_soon(self) -> None:
        """Storage answers again: move the calls this process kept into the shared table, where the caller's
        hang-up, the sweep and the kill switch of every instance find them."""
        if self._enforcing and (self._reconciling is None or self._reconciling.done()):
            self._reconciling = asyncio.ensure_future(self._reconcile())

    async def _reconcile(self) -> None:
        for row in await self.local.rows("call-"):
            if row.props.get("status") in OVER:
                continue
            try:
                await self.table.transact([Op("upsert", row.key, {**row.props, "slots": "{}"})])
            except (Unavailable, Conflict):
                return
            task = self._enforcing.pop(row.key, None)
            if task:
                task.cancel()
            with contextlib.suppress(Conflict):
                await self.local.transact([Op("delete", row.key, etag=row.etag)])
            log.info("call %s moved to the shared ledger", row.props.get("call"))

    async def aclose(self) -> None:
        for task in [*self._enforcing.values(), self._reconciling]:
            if task is not None:
                task.cancel()

    def _props(self, ticket: Ticket, status: str, call_id: str | None) -> dict[str, object]:
        props: dict[str, object] = {
            "status": status,
            "start": ticket.start,
            "end": ticket.end,
            "capability": _digest(ticket.secret),
            "slots": json.dumps(ticket.slots),
            **ticket.who,
            **_chunks(json.dumps(ticket.session, separators=(",", ":")) if ticket.session else ""),
        }
        if call_id is not None:
            props["call"] = call_id
        return props


def _chunks(text: str) -> dict[str, object]:
    return {
        f"session{index}": text[start : start + SESSION_CHUNK]
        for index, start in enumerate(range(0, len(text), SESSION_CHUNK))
    }


def decided_session(props: dict[str, object]) -> dict[str, object]:
    """The session the server decided for this call, as `confirm` recorded it (empty when none was)."""
    text = "".join(
        str(props[f"session{index}"])
        for index in itertools.takewhile(lambda i: f"session{i}" in props, itertools.count())
    )
    try:
        session = json.loads(text) if text else {}
    except ValueError:
        return {}
    return session if isinstance(session, dict) else {}


def _same_state(fresh: Row, seen: Row) -> bool:
    return all(fresh.props.get(name) == seen.props.get(name) for name in ("status", "claimed", "call"))


def _unrecorded() -> ApiError:
    return ApiError(
        503,
        "limits_unavailable",
        "The app could not record the call, so it ended it; try again shortly.",
        {"Retry-After": "5"},
    )


async def _quietly(read: Awaitable[Row | None]) -> Row | None:
    try:
        return await read
    except Unavailable:
        return None


def _number(value: object) -> float:
    return float(value) if isinstance(value, (int, float, str)) and value != "" else 0.0


def call_kind(props: dict[str, object]) -> str:
    """A row written before calls had kinds is a realtime call."""
    return str(props.get("kind") or "realtime")


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
