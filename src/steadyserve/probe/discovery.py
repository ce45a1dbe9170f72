"""Discovery: which protocols the endpoint speaks, which models it serves, where readiness is.

Only GET requests of the documented listing/metadata routes are sent here. What each model can
do (completions? chat? V2 infer?) is settled later by the capability cases, which send one
minimal valid request per endpoint and read a 4xx as "this model does not serve that".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from steadyserve.probe.wire import Request, Response, Target, WireError, exchange

PROTOCOLS = ("openai", "v2", "v1")


class UsageError(Exception):
    """The probe cannot run as asked (unreachable URL, unknown model, bad flag): exit 2."""


@dataclass
class Model:
    name: str
    protocols: set[str] = field(default_factory=set)
    #: V2 model metadata (inputs/outputs), when the endpoint serves it
    v2_meta: dict[str, Any] | None = None
    #: endpoint → True (served) / False (declined with a 4xx), set by the capability cases
    caps: dict[str, bool] = field(default_factory=dict)
    #: endpoint → the server's reason for declining it
    declined: dict[str, str] = field(default_factory=dict)
    #: the fastest valid request the capability cases saw served: the follow-up request
    good: Request | None = None
    good_protocol: str = "-"
    good_latency_s: float = float("inf")
    #: slowest of the baseline good requests, seconds
    baseline_s: float = 0.0

    @property
    def quoted(self) -> str:
        return quote(self.name, safe="")


@dataclass
class Found:
    target: Target
    server: str = "unknown server"
    protocols: set[str] = field(default_factory=set)
    openai_prefix: str = "/v1"
    models: list[Model] = field(default_factory=list)
    #: a GET that answers 200 while the server is ready (None: no readiness route found)
    ready_path: str | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> list[str]:
        lines = [f"target: {self.target.base} ({self.server})"]
        lines.append(
            "protocols: "
            + (", ".join(p for p in PROTOCOLS if p in self.protocols) or "none")
            + (f" (OpenAI under {self.openai_prefix})" if "openai" in self.protocols else "")
        )
        for m in self.models:
            meta = ""
            if m.v2_meta is not None:
                ins = ", ".join(
                    f"{i.get('name')}:{i.get('datatype')}{i.get('shape')}"
                    for i in m.v2_meta.get("inputs", [])
                )
                meta = f"; V2 inputs {ins or 'none'}"
            lines.append(f"model {m.name}: {', '.join(sorted(m.protocols))}{meta}")
        lines.append(f"readiness: {self.ready_path or 'no readiness route found (not checked)'}")
        return lines + self.notes


def is_ready(resp: Response) -> bool:
    if resp.status != 200:
        return False
    body = resp.json()
    return not (isinstance(body, dict) and body.get("ready") is False)


async def _get(target: Target, path: str, timeout: float) -> Response | None:
    try:
        return await exchange(target, Request("GET", path, content_type=None), timeout)
    except WireError:
        return None


async def discover(
    target: Target,
    model: str | None = None,
    protocols: set[str] | None = None,
    timeout: float = 10.0,
) -> Found:
    found = Found(target=target)
    try:
        first = await exchange(target, Request("GET", "/v2", content_type=None), timeout)
    except WireError as exc:
        raise UsageError(f"cannot reach {target.base}: {exc}") from None
    if first.status in (401, 403):
        raise UsageError(
            f"{target.base} answered {first.status}: it needs an API key (--api_key or -H)"
        )
    server_meta = first.json() if first.status == 200 else None
    if isinstance(server_meta, dict) and isinstance(server_meta.get("name"), str):
        found.protocols.add("v2")
        found.server = f"{server_meta['name']} {server_meta.get('version', '')}".strip()

    v1_names: list[str] = []
    openai_names: list[str] = []
    refused = []
    for prefix in ("/v1", "/openai/v1"):
        resp = await _get(target, f"{prefix}/models", timeout)
        if resp is not None and resp.status in (401, 403):
            refused.append(f"{prefix}/models: {resp.status}")
        body = resp.json() if resp is not None and resp.status == 200 else None
        if not isinstance(body, dict):
            continue
        if prefix == "/v1" and isinstance(body.get("models"), list):
            v1_names = [str(n) for n in body["models"]]
        data = body.get("data")
        if isinstance(data, list) and not openai_names:
            openai_names = [str(d["id"]) for d in data if isinstance(d, dict) and "id" in d]
            found.openai_prefix = prefix
    if v1_names:
        found.protocols.add("v1")
    if openai_names:
        found.protocols.add("openai")

    v2_names: list[str] = []
    if "v2" in found.protocols and not (openai_names or v1_names) and model is None:
        # Triton / MLServer list models only through the repository extension (read-only).
        try:
            resp = await exchange(target, Request.post_json("/v2/repository/index", {}), timeout)
            index = resp.json() if resp.status == 200 else None
        except WireError:
            index = None
        if isinstance(index, list):
            v2_names = [str(m["name"]) for m in index if isinstance(m, dict) and "name" in m]
    names = list(dict.fromkeys([*openai_names, *v1_names, *v2_names]))
    if model is not None:
        names = [model]
    for name in names:
        m = Model(name=name)
        if name in openai_names:
            m.protocols.add("openai")
        if name in v1_names:
            m.protocols.add("v1")
        resp = await _get(target, f"/v2/models/{m.quoted}", timeout)
        meta = resp.json() if resp is not None and resp.status == 200 else None
        if isinstance(meta, dict) and isinstance(meta.get("inputs"), list):
            m.protocols.add("v2")
            found.protocols.add("v2")
            m.v2_meta = meta
        if "v1" not in m.protocols and model is not None:
            resp = await _get(target, f"/v1/models/{m.quoted}", timeout)
            body = resp.json() if resp is not None and resp.status == 200 else None
            if isinstance(body, dict) and body.get("name") == name:
                m.protocols.add("v1")
                found.protocols.add("v1")
        if protocols:
            m.protocols &= protocols
        if m.protocols:
            found.models.append(m)
    if protocols:
        found.protocols &= protocols
    if not found.models and refused:
        raise UsageError(
            f"{target.base} refused the model listing ({', '.join(refused)}): "
            "it needs an API key (--api_key or -H)"
        )
    if not found.models:
        served = ", ".join(dict.fromkeys([*openai_names, *v1_names]))
        over = f" over {', '.join(sorted(protocols))}" if protocols else ""
        what = f"model {model!r} not found" if model else "found no model"
        raise UsageError(
            f"{what} at {target.base}{over}" + (f" (served: {served})" if served else "")
        )
    await _find_readiness(found, timeout)
    return found


async def _find_readiness(found: Found, timeout: float) -> None:
    first = found.models[0]
    candidates = ["/v2/health/ready", f"/v2/models/{first.quoted}/ready"]
    if "v1" in first.protocols:
        candidates.append(f"/v1/models/{first.quoted}")
    candidates.append("/health")
    statuses = []
    for path in candidates:
        resp = await _get(found.target, path, timeout)
        if resp is None:
            continue
        statuses.append(f"{path}: {resp.status}")
        if is_ready(resp):
            found.ready_path = path
            return
        if resp.status == 503:
            raise UsageError(
                f"{found.target.base} is not ready ({path} answered 503); probe it once ready"
            )
    found.notes.append("no readiness route answered 200 (" + "; ".join(statuses) + ")")
