"""A model for in-process engine tests (a worker in a thread: ``tests/engine_harness.py``).

predict instances: "raise" -> ValueError; "crash" -> the worker "dies" (SystemExit ends its
thread and closes its channel, as a process exit would); "block" -> waits for ``GATE`` (at most
5 s); anything else -> upper-cased. generate: prompt "crash-after:N" dies after N tokens;
"slow" sleeps 20 ms per token; otherwise max_tokens tokens. ``CALLS`` records predict batch
sizes, ``CLOSED`` the generations closed early (aborted)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import steadyserve
from steadyserve import GenerateRequest, TokenDelta

GATE = threading.Event()
CALLS: list[int] = []
CLOSED: list[str] = []


class Echo(steadyserve.Model):
    def load(self) -> None:
        pass

    def predict(self, instances: list[Any]) -> list[Any]:
        CALLS.append(len(instances))
        for item in instances:
            if item == "raise":
                raise ValueError("boom")
            if item == "crash":
                raise SystemExit(13)
            if item == "block":
                GATE.wait(5)
        return [str(item).upper() for item in instances]

    def generate(self, request: GenerateRequest) -> Iterator[TokenDelta]:
        prompt = request.prompt or ""
        n = request.params.max_tokens
        finished = False
        try:
            for i in range(n):
                if prompt.startswith("crash-after:") and i >= int(prompt.split(":")[1]):
                    raise SystemExit(14)
                if prompt == "slow":
                    time.sleep(0.02)
                last = i == n - 1
                yield TokenDelta(
                    token_ids=[i],
                    text=f"t{i} ",
                    finish_reason="length" if last else None,
                    prompt_tokens=3 if i == 0 else None,
                )
            finished = True
        finally:
            if not finished:
                CLOSED.append(prompt)
