"""Who may start a conversation now: connect rates per client and for the app, and live-session caps.

Rows (one partition, realtime_proxy/tables.py; the calls themselves are the ledger's, realtime_proxy/ledger.py):
- `rate-{minute}-{who}-{slot}`: one per connect admitted in a one-minute window, `who` being `app` or
  `c-{client}`. A connect is admitted by *creating* its slot rows with slot <= the limit. Creation is atomic,
  so however many instances race, a window never holds more rows than its limit (no read-modify-write).
- `live-{who}-{slot}`: one per live session while a session cap is set; a slot whose session has passed its
  planned end is taken over by a replace conditional on its ETag.
A connect creates its slot rows and its ledger row in one transaction, before anything goes upstream.
"""

from __future__ import annotations

import functools
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from .errors import ApiError
from .ledger import SERVICE_LIMIT_SECONDS, Ledger, Ticket, paused_error
from .logs import logger
from .settings import SharedLimits
from .tables import Conflict, Op, Table, Unavailable

log = logger(__name__)
ATTEMPTS = 8  # conflicts a connect resolves before giving up (each one means another instance won a slot)


@dataclass(frozen=True)
class _Counter:
    key: str
    limit: int
    refusal: Callable[[float], ApiError]  # the refusal at time `now`, with its honest Retry-After


class Admission:
    def __init__(
        self,
        table: Table,
        local: Table,
        ledger: Ledger,
        config: SharedLimits,
        per_client_per_minute: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.table = table
        self.local = local  # LIMITS_FAIL_MODE=open: per-instance limits while storage is away
        self.ledger = ledger
        self.config = config
        self.per_client = int(per_client_per_minute)
        self.clock = clock
        self._next: dict[str, int] = {}  # next slot to try, per counter (hints: forgetting one costs a retry)
        self._window = 0
        self._takeover: dict[str, tuple[int, str]] = {}  # live counter -> (expired slot, its ETag)
        self._free_at: dict[str, float] = {}  # live counter -> when its first slot frees, as last read

    @property
    def shared(self) -> bool:
        return self.table.shared

    async def admit(self, client: str, origin: str, voice: str) -> Ticket:
        """Records the connect and takes its slots, or refuses it (429, or 503 while paused or storage is away)."""
        try:
            ticket = await self._admit(self.table, client, origin, voice)
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
            return await self._admit(self.local, client, origin, voice)
        self.ledger.reconcile_soon()
        return ticket

    def slots_freed(self, slots: dict[str, str]) -> None:
        """The ledger freed these session slots: try them first again."""
        for key in slots:
            counter, _, slot = key.rpartition("-")
            self._next[counter] = min(self._next.get(counter, 1), int(slot))

    async def _paused(self, table: Table) -> bool:
        return await self.ledger.paused() if table is self.table else self.ledger.last_known_paused

    async def _admit(self, table: Table, client: str, origin: str, voice: str) -> Ticket:
        if await self._paused(table):
            raise paused_error()
        now = self.clock()
        who = "c-" + hashlib.sha256(client.encode()).hexdigest()[:16]
        length = self.config.max_session_seconds or SERVICE_LIMIT_SECONDS
        ticket = Ticket.new(now, length, table, {"client": who, "origin": origin, "voice": voice})
        counters = self._counters(who, now)
        for _ in range(ATTEMPTS):
            for counter in counters:  # every session slot this instance knew of is taken: look again
                if self._needs_a_look(counter):
                    await self._learn_live(table, counter, now)
            ops = [self.ledger.opening(ticket)]
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
                op.key: etag for op, etag in zip(ops[1:], etags[1:], strict=True) if op.key.startswith("live-")
            }
            if await self._paused(table):  # the switch flipped while the rows were written (a cache went stale)
                await self.ledger.release(ticket)
                raise paused_error()
            return ticket
        raise ApiError(
            503, "limits_busy", "Too many connects are competing for the same limits; retry.", {"Retry-After": "1"}
        )

    def _counters(self, who: str, now: float) -> list[_Counter]:
        window = int(now // 60)

        def rate(now: float) -> ApiError:
            retry_in = str(max(1, math.ceil(60 - now % 60)))
            return ApiError(
                429, "rate_limited", f"Too many connects; retry in {retry_in} s.", {"Retry-After": retry_in}
            )

        counters = []
        if self.per_client > 0:
            counters.append(_Counter(f"rate-{window:010d}-{who}", self.per_client, rate))
        if self.config.app_rate_per_minute > 0:
            counters.append(_Counter(f"rate-{window:010d}-app", self.config.app_rate_per_minute, rate))
        for key, limit in (
            (f"live-{who}", self.config.max_active_sessions_per_client),
            ("live-app", self.config.max_active_sessions),
        ):
            if limit > 0:
                counters.append(_Counter(key, limit, functools.partial(self._sessions_refusal, key)))
        if window != self._window:  # hints are per window or only hints: start each minute afresh, memory stays bounded
            self._window, self._next, self._takeover, self._free_at = window, {}, {}, {}
        return counters

    def _sessions_refusal(self, key: str, now: float) -> ApiError:
        return _too_many_sessions(self._free_at.get(key, now + 60) - now)

    def _needs_a_look(self, counter: _Counter) -> bool:
        return (
            counter.key.startswith("live-")
            and counter.key not in self._takeover
            and self._next.get(counter.key, 1) > counter.limit
        )

    def _take(self, counter: _Counter, now: float, ops: list[Op]) -> int:
        """Claims the next slot this instance believes free, before any await, so concurrent connects in one
        instance never race each other for it."""
        takeover = self._takeover.pop(counter.key, None)
        slot = takeover[0] if takeover else self._next.get(counter.key, 1)
        if slot > counter.limit:
            raise counter.refusal(self.clock())  # now: others' rows may end after this connect began
        if not takeover:
            self._next[counter.key] = slot + 1
        row = f"{counter.key}-{slot:06d}"
        props = {"end": now + (self.config.max_session_seconds or SERVICE_LIMIT_SECONDS)}
        ops.append(Op("replace", row, props, takeover[1]) if takeover else Op("create", row, props))
        return slot

    def _give_back(self, counters: list[_Counter], taken: list[int], failed: int) -> None:
        """After a refused transaction the slot that conflicted is someone else's; the others are free again."""
        for index, (counter, slot) in enumerate(zip(counters, taken, strict=True)):
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
            if _end(row.props) <= now:
                self._takeover[counter.key] = (slot, row.etag)
                return
        self._next[counter.key] = counter.limit + 1
        self._free_at[counter.key] = min((_end(row.props) for row in held.values()), default=now + 60)
        raise counter.refusal(self.clock())  # now: others' rows may end after this connect began


def _end(props: dict[str, object]) -> float:
    end = props.get("end")
    return float(end) if isinstance(end, (int, float)) else 0.0


def _too_many_sessions(wait: float) -> ApiError:
    retry = str(min(3600, max(1, math.ceil(wait))))
    return ApiError(
        429, "too_many_sessions", f"Too many live conversations; retry in {retry} s.", {"Retry-After": retry}
    )
