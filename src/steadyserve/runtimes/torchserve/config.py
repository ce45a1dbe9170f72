"""TorchServe's ``config.properties`` (``--ts_config``) mapped onto steadyserve's settings.

==============================  =================================================================
key                             steadyserve
==============================  =================================================================
``inference_address``           ``--host`` / ``--http_port`` (``http://host:port``; https needs
                                ``--ssl_certfile``/``--ssl_keyfile``)
``management_address``,         served on the same port as inference; a different address is
``metrics_address``             warned about
``model_store``                 ``--model_repository``
``load_models``                 which archives of the store to serve: ``all`` (default),
                                ``name.mar,other.mar`` or ``name=name.mar``
``default_response_timeout``    ``--request_timeout_s`` (seconds)
``max_request_size``            ``--max_request_body_bytes``
``job_queue_size``              ``--max_queue_size``
``models``                      per model and version: ``batchSize`` → batch size,
                                ``maxBatchDelay`` (ms) → batch wait, ``responseTimeout`` (s) →
                                the model's deadline on the TorchServe routes
==============================  =================================================================

Every other key is named in a start-up warning (it has no effect here). A bad value raises
:class:`~steadyserve.settings.ConfigError` naming the key (the CLI exits 2).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from steadyserve.settings import ConfigError

#: keys read (all others are warned about)
KNOWN_KEYS = frozenset(
    {
        "inference_address",
        "management_address",
        "metrics_address",
        "model_store",
        "load_models",
        "default_response_timeout",
        "max_request_size",
        "job_queue_size",
        "models",
    }
)


#: why some common keys have no effect (others: "has no effect in steadyserve")
NO_EFFECT_WHY = {
    "service_envelope": "KServe V1/V2 (REST and gRPC) are served for every model without one",
    "default_workers_per_model": "each model has one worker process",
    "number_of_gpu": "the device is --device",
    "install_py_dep_per_model": "install a model's requirements into the environment yourself",
    "enable_envvars_config": "environment variables are always read (steadyserve serve --help)",
    "metrics_mode": "metrics are Prometheus at /metrics",
    "disable_token_authorization": "the API key is STEADYSERVE_API_KEY (unset: no key)",
    "enable_model_api": "the management API is always on, behind the API key",
}


@dataclass(frozen=True)
class ModelOverrides:
    batch_size: int | None = None
    max_batch_delay_ms: float | None = None
    response_timeout_s: float | None = None


@dataclass
class TsConfig:
    path: str
    #: Settings field → value, applied where no flag was given
    settings: dict[str, Any] = field(default_factory=dict)
    #: None or ["all"]: every archive; else archive file names (or name=file pairs)
    load_models: list[str] | None = None
    models: dict[str, ModelOverrides] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def read_properties(text: str) -> dict[str, str]:
    """Java ``.properties``: ``key=value`` / ``key: value`` / ``key value``, ``#``/``!``
    comments, backslash line continuations."""
    out: dict[str, str] = {}
    logical: list[str] = []
    for raw in text.splitlines():
        line = raw.strip() if not logical else raw.lstrip()
        if not logical and (not line or line[0] in "#!"):
            continue
        if line.endswith("\\") and not line.endswith("\\\\"):
            logical.append(line[:-1])
            continue
        logical.append(line)
        entry, logical = "".join(logical), []
        m = re.match(r"([^=:\s]+)\s*[=:\s]\s*(.*)$", entry)
        if m is None:
            out[entry] = ""
        else:
            out[m.group(1)] = m.group(2).strip()
    return out


def _bad(path: str, key: str, value: str, why: str) -> ConfigError:
    return ConfigError(f"invalid {key}={value[:200]!r} in --ts_config {path}: {why}")


def _positive(path: str, key: str, value: str, integer: bool = True) -> float:
    try:
        number = int(value) if integer else float(value)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise _bad(path, key, value, f"must be {kind}") from None
    if number <= 0:
        raise _bad(path, key, value, "must be positive")
    return number


def _address(path: str, key: str, value: str) -> tuple[str, int, str]:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _bad(path, key, value, "must look like http://host:port")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise _bad(path, key, value, "the port must be 1-65535") from None
    return parts.hostname, port, parts.scheme


def _model_overrides(path: str, value: str) -> dict[str, ModelOverrides]:
    try:
        doc = json.loads(value)
    except ValueError as exc:
        raise _bad(path, "models", value, f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _bad(path, "models", value, "must be a JSON object {model: {version: {...}}}")
    out: dict[str, ModelOverrides] = {}
    for name, versions in doc.items():
        if not isinstance(versions, dict):
            raise _bad(path, f"models.{name}", str(versions), "must be an object of versions")
        for version, conf in versions.items():
            if not isinstance(conf, dict):
                raise _bad(path, f"models.{name}.{version}", str(conf), "must be an object")
            vals: dict[str, Any] = {}
            for src, dst, integer in (
                ("batchSize", "batch_size", True),
                ("maxBatchDelay", "max_batch_delay_ms", True),
                ("responseTimeout", "response_timeout_s", True),
            ):
                if src in conf:
                    vals[dst] = _positive(
                        path, f"models.{name}.{version}.{src}", str(conf[src]), integer
                    )
            out[name] = ModelOverrides(**vals)
    return out


def load_ts_config(path: str) -> TsConfig:
    """Parse ``config.properties``; raises :class:`ConfigError` naming the bad key."""
    try:
        with open(path, encoding="utf-8") as fh:
            props = read_properties(fh.read())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"invalid --ts_config={path!r}: {getattr(exc, 'strerror', exc) or exc}"
        ) from None
    cfg = TsConfig(path=path)
    for key in sorted(props):
        if key not in KNOWN_KEYS:
            why = NO_EFFECT_WHY.get(key, "not a setting steadyserve has")
            cfg.warnings.append(f"{key} (in {path}) has no effect: {why}")
    inference = None
    if "inference_address" in props:
        host, port, scheme = _address(path, "inference_address", props["inference_address"])
        cfg.settings["host"], cfg.settings["http_port"] = host, port
        inference = (host, port)
        if scheme == "https":
            cfg.warnings.append(
                "inference_address is https: give --ssl_certfile and --ssl_keyfile for TLS"
            )
    for key in ("management_address", "metrics_address"):
        if key in props:
            host, port, _ = _address(path, key, props[key])
            if inference is None or (host, port) != inference:
                cfg.warnings.append(
                    f"{key}={props[key]} has no effect: management and metrics are served "
                    "on the inference address (behind the API key)"
                )
    if "model_store" in props:
        if not props["model_store"]:
            raise _bad(path, "model_store", "", "must be a directory")
        cfg.settings["model_repository"] = props["model_store"]
    if "load_models" in props:
        names = [n.strip() for n in props["load_models"].split(",") if n.strip()]
        if not names:
            raise _bad(path, "load_models", props["load_models"], "names no archive")
        cfg.load_models = None if names == ["all"] else names
    if "default_response_timeout" in props:
        cfg.settings["request_timeout_s"] = _positive(
            path, "default_response_timeout", props["default_response_timeout"]
        )
    if "max_request_size" in props:
        cfg.settings["max_request_body_bytes"] = _positive(
            path, "max_request_size", props["max_request_size"]
        )
    if "job_queue_size" in props:
        cfg.settings["max_queue_size"] = _positive(path, "job_queue_size", props["job_queue_size"])
    if "models" in props:
        cfg.models = _model_overrides(path, props["models"])
    return cfg
