"""A test model that misbehaves on chosen inputs, to prove failures stay local.

predict instances (strings):
  "raise"        -> ValueError (500 for that request only)
  "bad-input"    -> InvalidInput (400)
  "crash"        -> os._exit(13) (the worker dies: 503, restart)
  "segfault"     -> SIGSEGV
  "hang"         -> sleeps forever (hang detection kills the worker)
  "oom"          -> allocates until MemoryError (run with a worker memory limit)
  "sleep:S"      -> sleeps S seconds, then echoes
  "wait:PATH"    -> waits until the file PATH exists (at most 60 s), then echoes: holds a
                    request in the worker for exactly as long as a test needs, under any load
  "env:NAME"     -> the worker's environment variable NAME ("" when unset)
  anything else  -> echoed back upper-cased
generate: prompt text "raise-after:N" fails after N tokens, "crash-after:N" kills the worker,
"slow" emits a token every 50 ms, otherwise emits max_tokens tokens then finishes.
load: waits while the file FAULTY_LOAD_GATE names exists (at most 60 s).
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Iterator
from typing import Any

import steadyserve
from steadyserve import GenerateRequest, TensorSpec, TokenDelta
from steadyserve.errors import InvalidInput

CALLS_FILE = os.environ.get("FAULTY_CALLS_FILE")


class Faulty(steadyserve.Model):
    inputs = [TensorSpec(name="text", datatype="BYTES", shape=[-1])]
    outputs = [TensorSpec(name="output-0", datatype="BYTES", shape=[-1])]

    def load(self) -> None:
        delay = float(self.options.get("load_delay", 0) or os.environ.get("FAULTY_LOAD_DELAY", 0))
        if delay:
            time.sleep(delay)
        gate = os.environ.get("FAULTY_LOAD_GATE")
        deadline = time.monotonic() + 60
        while gate and os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.02)  # a test holds this (re)load until it removes the file
        if os.environ.get("FAULTY_FAIL_LOAD"):
            raise RuntimeError("load failed on purpose")
        self.batches: list[int] = []

    def predict(self, instances: list[Any]) -> list[Any]:
        if CALLS_FILE:
            with open(CALLS_FILE, "a", encoding="utf-8") as fh:
                fh.write(f"{len(instances)}\n")
        out = []
        for item in instances:
            text = str(item)
            if text == "raise":
                raise ValueError("boom: the model raised on purpose")
            if text == "bad-input":
                raise InvalidInput("the model refused this input")
            if text == "crash":
                os._exit(13)
            if text == "segfault":
                ctypes.string_at(0)
            if text.startswith("env:"):
                out.append(os.environ.get(text[4:], ""))
                continue
            if text == "hang":
                while True:
                    time.sleep(0.1)
            if text == "oom":
                hog = []
                while True:
                    hog.append(bytearray(64 * 1024 * 1024))
            if text.startswith("wait:"):
                deadline = time.monotonic() + 60
                while not os.path.exists(text[5:]) and time.monotonic() < deadline:
                    time.sleep(0.02)
                out.append(text)
                continue
            if text.startswith("sleep:"):
                time.sleep(float(text.split(":", 1)[1]))
                out.append(text)
                continue
            out.append(text.upper())
        return out

    def generate(self, request: GenerateRequest) -> Iterator[TokenDelta]:
        prompt = request.prompt or ""
        n = request.params.max_tokens
        for i in range(n):
            if prompt.startswith("raise-after:") and i >= int(prompt.split(":")[1]):
                raise RuntimeError("generation failed on purpose")
            if prompt.startswith("crash-after:") and i >= int(prompt.split(":")[1]):
                os._exit(14)
            if prompt == "slow":
                time.sleep(0.05)
            last = i == n - 1
            yield TokenDelta(token_ids=[i], text=f"t{i} ", finish_reason="length" if last else None)
