"""Logging set-up (called from the CLI only): text or JSON lines, with a request id on every
line logged while a request is being served."""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import time

#: The id of the request being served by the current task (set by the HTTP/gRPC transports).
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "steadyserve_request_id", default=None
)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # a worker names the request explicitly (``extra={"request_id": ...}``)
        if not getattr(record, "request_id", None):
            record.request_id = request_id_var.get() or "-"
        return True


#: structured fields a log call may pass with ``extra=`` (the access log does); JSON lines carry
#: them as keys, text lines only in the message.
EXTRA_FIELDS = ("method", "route", "status", "duration_ms", "model", "worker_pid")


def _worker_pid(record: logging.LogRecord) -> bool:
    record.worker_pid = record.process
    return True


class TextFormatter(logging.Formatter):
    """Text lines; an access line (``steadyserve.access``) ends with ``model=NAME`` when the
    request named a model (JSON lines carry it as the ``model`` key instead)."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        model = getattr(record, "model", None)
        if model and record.name == "steadyserve.access":
            line += f" model={model}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, request_id (+ EXTRA_FIELDS)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        for key in EXTRA_FIELDS:
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str = "info", fmt: str = "text", *, worker: bool = False) -> None:
    """Logging of the server (``worker=False``) or of a model worker process: the same format
    (with ``LOG_FORMAT=json`` every line of every process is one JSON object; a worker's carry
    ``worker_pid``), the same request ids. Python warnings are logged, not printed."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
        if worker:
            handler.addFilter(_worker_pid)
    else:
        where = f"[worker {os.getpid()}] " if worker else ""
        handler.setFormatter(
            TextFormatter(f"%(asctime)s %(levelname)s {where}%(name)s [%(request_id)s] %(message)s")
        )
    logging.captureWarnings(True)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def adopt_transformers_logging() -> None:
    """Send ``transformers``' log records (its ``warning_once`` notices among them) through our
    handler - our format, JSON included, with the request id - instead of its own stderr
    handler. Imports transformers: call it where transformers is about to be used anyway."""
    try:
        from transformers.utils import logging as hf_logging
    except Exception:  # pragma: no cover - transformers missing or broken: nothing to adopt
        return
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
