"""Runs the battery: one case at a time (so a fault is pinned on the case that caused it), each
followed by a good request on the same keep-alive connection, one on a fresh connection, and a
readiness read. Only a burst sends requests concurrently, at most ``--burst`` of them.
"""

from __future__ import annotations

import asyncio
import enum
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from steadyserve.probe import shapes
from steadyserve.probe.cases import Case, Expect, Kind
from steadyserve.probe.discovery import Found, Model, is_ready
from steadyserve.probe.wire import (
    Connection,
    Dropped,
    Refused,
    Request,
    Response,
    TimedOut,
    WireError,
    exchange,
)

BASELINE_RUNS = 3
#: a good request this many times slower than the baseline (and past half the case timeout)
#: after a case means the server serves worse
SLOWDOWN = 10


class Fault(str, enum.Enum):
    SERVER_ERROR = "5xx for a client error"
    HANG = "hang"
    DROPPED = "dropped connection"
    OK_FOR_FAILURE = "200 for a failure"
    READINESS_LIES = "readiness lies"
    DEGRADED = "serves worse afterwards"
    NONCONFORMANT = "nonconformant"


@dataclass
class Options:
    case_timeout: float = 10.0
    burst: int = 32
    #: how long the never-reading stream stays open while follow-ups run
    stall_s: float = 2.0


@dataclass
class Result:
    case: str
    model: str
    protocol: str
    about: str = ""
    status: str = "-"
    latency_s: float | None = None
    verdict: str = "pass"  # pass | fail | skip
    faults: list[tuple[Fault, str]] = field(default_factory=list)
    note: str = ""
    request: str = ""
    answer: str = ""

    def add(self, faults: list[tuple[Fault, str]]) -> None:
        self.faults += faults
        if faults:
            self.verdict = "fail"

    @property
    def why(self) -> str:
        if self.faults:
            return "; ".join(f"{kind.value}: {why}" for kind, why in self.faults)
        return self.note

    def to_dict(self) -> dict[str, Any]:
        return {
            "case": self.case,
            "model": self.model,
            "protocol": self.protocol,
            "about": self.about,
            "status": self.status,
            "latency_s": None if self.latency_s is None else round(self.latency_s, 4),
            "verdict": self.verdict,
            "faults": [{"kind": k.name.lower(), "why": w} for k, w in self.faults],
            "why": self.why,
            "note": self.note,
            "request": self.request,
            "answer": self.answer,
        }


def judge_answer(
    expect: Expect, check: shapes.Check | None, resp: Response
) -> tuple[list[tuple[Fault, str]], str]:
    """Faults in one answer, given what a healthy server answers; and a note (why it passed)."""
    s = resp.status
    if 200 <= s < 300:
        if expect is Expect.REJECT:
            return [(Fault.OK_FOR_FAILURE, f"{s} for a request that must fail")], ""
        parsed: Any = resp.body.decode("utf-8", "replace") if check is shapes.sse else resp.json()
        if (err := shapes.error_in_body(parsed)) is not None:
            return [(Fault.OK_FOR_FAILURE, err)], ""
        if check is not None and (dev := check(parsed)) is not None:
            return [(Fault.NONCONFORMANT, f"{s} but {dev}")], ""
        return [], "served" if expect is not Expect.OK else ""
    message = _message(resp)
    if 400 <= s < 500:
        if expect is Expect.OK:
            return [(Fault.NONCONFORMANT, f"a valid request answered {s}: {message}")], ""
        return [], f"declined: {message}" if expect is Expect.SERVE_OR_DECLINE else message
    if s == 501 and expect is Expect.SERVE_OR_DECLINE:
        return [], f"declined: {message}"
    if s >= 500:
        if expect is Expect.OK:
            return [(Fault.NONCONFORMANT, f"a valid request failed with {s}: {message}")], ""
        return [(Fault.SERVER_ERROR, f"{s} for a request to reject or serve: {message}")], ""
    return [(Fault.NONCONFORMANT, f"unexpected status {s}")], ""


def _message(resp: Response) -> str:
    body = resp.json()
    if isinstance(body, dict):
        err = body.get("error", body.get("detail", body))
        if isinstance(err, dict):
            err = err.get("message", err)
        return str(err)[:160]
    return resp.body[:160].decode("utf-8", "replace").strip()


class Runner:
    def __init__(
        self,
        found: Found,
        cases: list[Case],
        options: Options,
        on_result: Callable[[Result], None] = lambda r: None,
    ) -> None:
        self.found = found
        self.target = found.target
        self.cases = cases
        self.opts = options
        self.on_result = on_result
        self.results: list[Result] = []

    def _emit(self, result: Result) -> None:
        self.results.append(result)
        self.on_result(result)

    async def run(self) -> list[Result]:
        for model in self.found.models:
            await self._run_model(model)
        return self.results

    async def _run_model(self, model: Model) -> None:
        rest = []
        for case in self.cases:
            if case.protocol not in model.protocols:
                continue  # not reported: the plan already says which protocols it speaks
            if case.kind is Kind.CAPABILITY:
                self._emit(await self._capability(case, model))
            else:
                rest.append(case)
        base = await self._baseline(model)
        self._emit(base)
        for case in rest:
            if base.verdict == "fail":
                self._emit(self._skip(case, model, "the baseline failed: nothing can be judged"))
                continue
            reason = case.applies(model)
            req = case.build(model, self.found) if reason is None else None
            if req is None:
                self._emit(self._skip(case, model, reason or "no such request for this model"))
                continue
            run = {
                Kind.PLAIN: self._plain,
                Kind.STREAM_DISCONNECT: self._stream_disconnect,
                Kind.STREAM_STALL: self._stream_stall,
                Kind.BURST: self._burst,
            }[case.kind]
            result = self._new(case, model, req)
            await run(case, model, req, result)
            self._emit(result)

    def _new(self, case: Case, model: Model, req: Request) -> Result:
        return Result(case.name, model.name, case.protocol, case.about, request=req.describe())

    def _skip(self, case: Case, model: Model, why: str) -> Result:
        return Result(case.name, model.name, case.protocol, case.about, verdict="skip", note=why)

    # ---- phases ---------------------------------------------------------------------------

    async def _capability(self, case: Case, model: Model) -> Result:
        reason = case.applies(model)
        req = case.build(model, self.found) if reason is None else None
        if req is None:
            return self._skip(case, model, reason or "cannot build a request from the metadata")
        result = self._new(case, model, req)
        resp = await self._send_fresh(req, result)
        if resp is not None:
            faults, note = judge_answer(case.expect, case.check, resp)
            result.add(faults)
            result.note = note
            settles = case.settles or case.protocol
            if 200 <= resp.status < 300 and not faults:
                model.caps[settles] = True
                if resp.latency_s < model.good_latency_s:
                    model.good, model.good_protocol = req, case.protocol
                    model.good_latency_s = resp.latency_s
            elif 400 <= resp.status < 500 or resp.status == 501:
                model.caps[settles] = False
                model.declined[settles] = note
        return result

    async def _baseline(self, model: Model) -> Result:
        good = model.good
        result = Result(
            "baseline", model.name, model.good_protocol, "good requests before the battery"
        )
        if good is None:
            result.add([(Fault.NONCONFORMANT, "no valid request succeeded over any protocol")])
            return result
        result.request = good.describe()
        latencies = []
        for _ in range(BASELINE_RUNS):
            resp = await self._send_fresh(good, result)
            if resp is not None and not 200 <= resp.status < 300:
                why = (
                    f"a request served during the capability checks now answers {resp.excerpt(160)}"
                )
                result.add([(Fault.DEGRADED, why)])
            if result.faults:  # one of the capability checks broke it (a hang is a fault too)
                result.note = "the server broke during the capability checks"
                result.add(await self._readiness(served=False))
                return result
            assert resp is not None
            latencies.append(resp.latency_s)
        model.baseline_s = max(latencies)
        result.latency_s = model.baseline_s
        result.note = f"slowest of {BASELINE_RUNS}: {model.baseline_s * 1000:.0f} ms"
        result.add(await self._readiness(served=True))
        return result

    # ---- case kinds -----------------------------------------------------------------------

    async def _send_fresh(self, req: Request, result: Result) -> Response | None:
        try:
            resp = await exchange(self.target, req, self.opts.case_timeout)
        except TimedOut as exc:
            result.status = "timeout"
            result.add([(Fault.HANG, str(exc))])
            return None
        except Dropped as exc:
            result.status = "dropped"
            result.add([(Fault.DROPPED, str(exc))])
            return None
        result.status = str(resp.status)
        result.latency_s = resp.latency_s
        result.answer = resp.excerpt()
        return resp

    async def _plain(self, case: Case, model: Model, req: Request, result: Result) -> None:
        conn = Connection(self.target)
        try:
            await conn.open(self.opts.case_timeout)
            resp = await conn.send(req, self.opts.case_timeout)
        except TimedOut as exc:
            result.status = "timeout"
            result.add([(Fault.HANG, str(exc))])
        except Refused as exc:
            result.status = "refused"
            if case.expect is Expect.OK:
                result.add([(Fault.DROPPED, str(exc))])
            else:  # HTTP lets a server stop reading a body it rejects, and close
                result.note = str(exc)
        except Dropped as exc:
            result.status = "dropped"
            result.add([(Fault.DROPPED, str(exc))])
        else:
            result.status = str(resp.status)
            result.latency_s = resp.latency_s
            result.answer = resp.excerpt()
            faults, result.note = judge_answer(case.expect, case.check, resp)
            result.add(faults)
        try:
            result.add(await self._followups(model, conn))
        finally:
            conn.abort()

    async def _stream_disconnect(
        self, case: Case, model: Model, req: Request, result: Result
    ) -> None:
        conn = Connection(self.target)
        try:
            await self._start_stream(conn, case, req, result)
            if result.status.startswith("2"):
                seen = b""
                while b"data:" not in seen:
                    chunk = await conn.read_some(self.opts.case_timeout)
                    if not chunk:
                        break
                    seen += chunk
                result.note = "the client went away after the first event"
        except TimedOut as exc:
            result.add([(Fault.HANG, str(exc))])
        except Dropped as exc:
            result.add([(Fault.DROPPED, str(exc))])
        finally:
            conn.abort()
        result.add(await self._followups(model, None))

    async def _stream_stall(self, case: Case, model: Model, req: Request, result: Result) -> None:
        conn = Connection(self.target, rcvbuf=4096)
        try:
            await self._start_stream(conn, case, req, result)
            if conn.writer is not None and result.status.startswith("2"):
                conn.writer.transport.pause_reading()  # type: ignore[attr-defined]
                await asyncio.sleep(min(self.opts.stall_s, self.opts.case_timeout))
                # While it stays unread, others must still be served (maybe slower: the
                # unread stream may still compete for compute) and readiness must agree.
                assert model.good is not None
                faults, served = await self._good(model, model.good, None, timed=False)
                result.add(faults)
                result.add(await self._readiness(served))
                result.note = "others were served while the stream was unread"
                conn.abort()
            result.add(await self._followups(model, None))
        except TimedOut as exc:
            result.add([(Fault.HANG, str(exc))])
        except Dropped as exc:
            result.add([(Fault.DROPPED, str(exc))])
        finally:
            conn.abort()

    async def _start_stream(
        self, conn: Connection, case: Case, req: Request, result: Result
    ) -> None:
        await conn.open(self.opts.case_timeout)
        resp = await conn.start(req, self.opts.case_timeout)
        result.status = str(resp.status)
        result.latency_s = resp.latency_s
        if not 200 <= resp.status < 300:
            faults, result.note = judge_answer(case.expect, None, resp)
            result.add(faults)

    async def _burst(self, case: Case, model: Model, req: Request, result: Result) -> None:
        n = self.opts.burst

        async def one() -> Response | WireError:
            try:
                return await exchange(self.target, req, self.opts.case_timeout)
            except WireError as exc:
                return exc

        outcomes = await asyncio.gather(*(one() for _ in range(n)))
        counts: Counter[str] = Counter()
        bad: Counter[Fault] = Counter()
        whys: dict[Fault, str] = {}
        for out in outcomes:
            if isinstance(out, TimedOut):
                counts["timeout"] += 1
                bad[Fault.HANG] += 1
                continue
            if isinstance(out, WireError):
                counts["dropped"] += 1
                bad[Fault.DROPPED] += 1
                whys.setdefault(Fault.DROPPED, str(out))
                continue
            counts[str(out.status)] += 1
            if out.status in (429, 503):
                continue  # shedding load is the right answer to a burst
            faults, _ = judge_answer(Expect.OK, case.check, out)
            for kind, why in faults:
                kind = Fault.SERVER_ERROR if out.status >= 500 else kind
                bad[kind] += 1
                whys.setdefault(kind, why)
        result.status = " ".join(f"{k}×{v}" for k, v in sorted(counts.items()))
        latencies = [o.latency_s for o in outcomes if isinstance(o, Response)]
        result.latency_s = max(latencies) if latencies else None
        for kind, count in bad.items():
            detail = whys.get(kind, f"no answer within {self.opts.case_timeout:g}s")
            result.add([(kind, f"{count} of {n} concurrent requests: {detail}")])
        result.note = f"{n} concurrent requests; 429/503 count as shedding load"
        result.add(await self._followups(model, None))

    # ---- follow-ups -----------------------------------------------------------------------

    async def _followups(self, model: Model, conn: Connection | None) -> list[tuple[Fault, str]]:
        """A good request on ``conn`` (when the server kept it open) and one on a fresh
        connection, at once; then a readiness read that must agree with them."""
        good = model.good
        assert good is not None
        checks = [self._good(model, good, None)]
        if conn is not None and conn.is_open and not conn.server_closes:
            checks.append(self._good(model, good, conn))
        outcomes = await asyncio.gather(*checks)
        faults = [f for found, _ in outcomes for f in found]
        return faults + await self._readiness(served=outcomes[0][1])

    async def _good(
        self, model: Model, good: Request, conn: Connection | None, timed: bool = True
    ) -> tuple[list[tuple[Fault, str]], bool]:
        """A good request on ``conn`` (the case's keep-alive connection) or a fresh one:
        (faults, whether it was served). ``timed``: also fault it for being slow."""
        where = "the same keep-alive connection" if conn is not None else "a fresh connection"
        timeout = self.opts.case_timeout
        try:
            if conn is not None:
                resp = await conn.send(good, timeout)
            else:
                resp = await exchange(self.target, good, timeout)
        except Dropped as exc:
            if conn is not None:
                why = "the server closed the keep-alive connection after its answer without `Connection: close`"
                return [(Fault.DROPPED, why)], False
            return [(Fault.DEGRADED, f"a good request on {where} was dropped: {exc}")], False
        except TimedOut:
            return [(Fault.DEGRADED, f"a good request on {where} hung past {timeout:g}s")], False
        if not 200 <= resp.status < 300:
            return [
                (Fault.DEGRADED, f"a good request on {where} answered {resp.excerpt(160)}")
            ], False
        # Slow means: far slower than the baseline *and* past half of --case_timeout, the
        # line the user drew between slow and hung (a busy machine alone rarely crosses both).
        limit = max(SLOWDOWN * model.baseline_s, model.baseline_s + timeout / 2)
        if timed and resp.latency_s > limit:
            # Once more before blaming the case: a busy machine can stall one request.
            again = await self._send_fresh(good, Result("", "", ""))
            if again is None or again.latency_s > limit:
                took = resp.latency_s if again is None else again.latency_s
                why = f"a good request took {took:.2f}s (baseline {model.baseline_s:.2f}s)"
                return [(Fault.DEGRADED, why)], True
        return [], True

    async def _readiness(self, served: bool) -> list[tuple[Fault, str]]:
        path = self.found.ready_path
        if path is None:
            return []
        try:
            resp = await exchange(
                self.target, Request("GET", path, content_type=None), self.opts.case_timeout
            )
        except TimedOut:
            return [(Fault.HANG, f"the readiness route {path} hung")]
        except Dropped as exc:
            return [(Fault.DROPPED, f"the readiness route {path}: {exc}")]
        ready = is_ready(resp)
        if ready and not served:
            return [
                (
                    Fault.READINESS_LIES,
                    f"{path} says ready ({resp.status}) while a good request fails",
                )
            ]
        if not ready and served:
            return [
                (
                    Fault.READINESS_LIES,
                    f"{path} says not ready ({resp.status}) while requests succeed",
                )
            ]
        return []
