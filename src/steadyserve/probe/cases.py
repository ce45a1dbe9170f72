"""The battery: each case is a small declarative :class:`Case`.

A case names what it sends (``build``: model → request, or ``None`` when it does not apply), what
a healthy server answers (``expect``), and how it is run (``kind``). The runner adds the follow-ups
(keep-alive, fresh connection, readiness) to every case. Every case is bounded: one request (a
burst: ``--burst`` requests), at most :data:`OVERSIZED_BYTES` bytes, ``--case_timeout`` seconds.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from steadyserve.probe import shapes
from steadyserve.probe.discovery import Found, Model
from steadyserve.probe.wire import Request

#: the largest body any case sends (a server's default limit is often 32 MiB or less)
OVERSIZED_BYTES = 40 * 1024 * 1024
#: a prompt far beyond any small model's context (~200k words), yet small on the wire
LONG_PROMPT = "Hello " * 200_000
UNICODE = "héllo 👩\u200d👩\u200d👧 عربى עִבְרִית 中文 e\u0301\u0301\u0301 \ufeff\u200b 𝔘𝔫𝔦 ǅ"
RAW = "@@raw@@"


class Expect(str, enum.Enum):
    OK = "2xx"  # a valid request: a 2xx of the documented shape
    REJECT = "4xx"  # a client error: a 4xx, never a 2xx or a 5xx
    EITHER = "2xx/4xx"  # serve it or reject it cleanly, never a 5xx, a hang or a drop
    SERVE_OR_DECLINE = "2xx or declined"  # a capability check: served, or a 4xx/501


class Kind(str, enum.Enum):
    CAPABILITY = "capability"
    PLAIN = "plain"
    STREAM_DISCONNECT = "stream_disconnect"
    STREAM_STALL = "stream_stall"
    BURST = "burst"


Builder = Callable[[Model, Found], "Request | None"]


@dataclass(frozen=True)
class Case:
    name: str
    protocol: str
    about: str
    expect: Expect
    build: Builder
    kind: Kind = Kind.PLAIN
    quick: bool = False
    #: shape check for a 2xx answer (parsed JSON, or text for streams)
    check: shapes.Check | None = None
    #: capabilities the model must have ("chat") or lack ("!chat") for the case to apply
    needs: tuple[str, ...] = ()
    #: the capability this case settles (capability cases)
    settles: str | None = None

    def applies(self, model: Model) -> str | None:
        """``None`` when the case applies to ``model``, else why not."""
        if self.protocol not in model.protocols:
            return f"{model.name} does not speak {self.protocol}"
        for need in self.needs:
            if need == "!gen":
                if model.caps.get("completions") or model.caps.get("chat"):
                    return f"{model.name} serves completions or chat (the OpenAI burst covers it)"
            elif need.startswith("!"):
                if model.caps.get(need[1:]) is not False:
                    return f"{model.name} serves {need[1:]}"
            elif need == "gen":
                if not (model.caps.get("completions") or model.caps.get("chat")):
                    return f"{model.name} serves neither completions nor chat"
            elif not model.caps.get(need):
                return f"{model.name} does not serve {need}"
        return None


# ---- request builders ----------------------------------------------------------------------


def _json(path: str, payload: Any, raw: str | None = None, **kw: Any) -> Request:
    """POST ``payload`` as JSON; a ``RAW`` string value is replaced by ``raw`` verbatim (NaN…)."""
    text = json.dumps(payload, ensure_ascii=False)
    if raw is not None:
        text = text.replace(f'"{RAW}"', raw)
    return Request("POST", path, text.encode("utf-8", "surrogateescape"), **kw)


def completions_body(m: Model, **over: Any) -> dict[str, Any]:
    return {"model": m.name, "prompt": "Hello", "max_tokens": 2, **over}


def chat_body(m: Model, **over: Any) -> dict[str, Any]:
    return {
        "model": m.name,
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 2,
        **over,
    }


def gen(m: Model, f: Found, raw: str | None = None, **over: Any) -> Request | None:
    """A generation request with ``over`` applied: completions if served, else chat."""
    if m.caps.get("completions"):
        return _json(f"{f.openai_prefix}/completions", completions_body(m, **over), raw)
    if m.caps.get("chat"):
        over = {("messages" if k == "prompt" else k): v for k, v in over.items()}
        if isinstance(over.get("messages"), str):
            over["messages"] = [{"role": "user", "content": over["messages"]}]
        return _json(f"{f.openai_prefix}/chat/completions", chat_body(m, **over), raw)
    return None


def gen_path(m: Model, f: Found) -> str:
    return f"{f.openai_prefix}/{'completions' if m.caps.get('completions') else 'chat/completions'}"


def v1_instances(m: Model) -> list[Any]:
    inputs = (m.v2_meta or {}).get("inputs") or []
    if len(inputs) == 1 and inputs[0].get("datatype") != "BYTES":
        row = [abs(d) if isinstance(d, int) and d else 1 for d in inputs[0].get("shape", [])[1:]]
        value: Any = 1.0
        for n in reversed(row):
            value = [value] * min(n, 64)
        return [value]
    return ["Hello"]


def v2_inputs(m: Model, text: str = "Hello") -> list[dict[str, Any]] | None:
    """One valid input set from the V2 metadata (-1 dims → 1), or None if too big to send."""
    specs = (m.v2_meta or {}).get("inputs") or []
    inputs = []
    for spec in specs:
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in spec.get("shape") or [1]]
        count = math.prod(shape)
        if count > 1_000_000:
            return None
        kind = str(spec.get("datatype", "BYTES"))
        value: Any = (
            text if kind == "BYTES" else True if kind == "BOOL" else 1 if "INT" in kind else 1.0
        )
        inputs.append(
            {"name": spec.get("name"), "shape": shape, "datatype": kind, "data": [value] * count}
        )
    return inputs or None


def v2_infer(
    m: Model, mutate: Callable[[dict[str, Any]], Any] | None = None, **kw: Any
) -> Request | None:
    inputs = v2_inputs(m)
    if inputs is None:
        return None
    if mutate is not None and mutate(inputs[0]) is False:
        return None
    return _json(f"/v2/models/{m.quoted}/infer", {"inputs": inputs}, **kw)


def _set(**changes: Any) -> Callable[[dict[str, Any]], Any]:
    def apply(tensor: dict[str, Any]) -> None:
        tensor.update(changes)

    return apply


def _nonfinite(tensor: dict[str, Any]) -> bool:
    if tensor["datatype"] in ("BYTES", "BOOL"):
        return False
    tensor.update(shape=[1] * (len(tensor["shape"]) - 1) + [3], data=RAW)
    return True


def _wrong_datatype(tensor: dict[str, Any]) -> None:
    tensor["datatype"] = "FP32" if tensor["datatype"] == "BYTES" else "BYTES"
    tensor["data"] = ["x"] * len(tensor["data"]) if tensor["datatype"] == "BYTES" else [1.0]


def _byte_count(m: Model, f: Found) -> Request | None:
    """Binary tensor extension: the header promises 64 bytes, the body carries 3."""
    inputs = v2_inputs(m)
    if inputs is None:
        return None
    tensor = inputs[0]
    tensor.pop("data")
    tensor["parameters"] = {"binary_data_size": 64}
    header = json.dumps({"inputs": [tensor]}).encode()
    return Request(
        "POST",
        f"/v2/models/{m.quoted}/infer",
        header + b"\x01\x02\x03",
        headers=(("Inference-Header-Content-Length", str(len(header))),),
        content_type="application/octet-stream",
    )


def _v1(m: Model, payload: Any = None, raw: str | None = None) -> Request:
    body = {"instances": v1_instances(m)} if payload is None else payload
    return _json(f"/v1/models/{m.quoted}:predict", body, raw)


def _get(path: str) -> Request:
    return Request("GET", path, content_type=None)


def _bytes(path: str, body: bytes) -> Request:
    return Request("POST", path, body)


def _oversized(path: str, key: str, prefix: bytes = b"{") -> Request:
    filler = b"a" * OVERSIZED_BYTES
    return Request("POST", path, prefix + f'"{key}": "'.encode() + filler + b'"}')
