"""TorchServe material for the tests: tiny models, handlers in every form TorchServe accepts,
and ``.mar`` archives built with TorchServe's own ``torch-model-archiver`` (its Python API).

Each handler module has a distinct name so that several can be imported in one process.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("ts", reason="steadyserve[torchserve] is not installed")
pytest.importorskip("model_archiver", reason="torch-model-archiver is not installed")

import torch  # noqa: E402
from model_archiver.model_archiver_config import ModelArchiverConfig  # noqa: E402
from model_archiver.model_packaging import generate_model_archive  # noqa: E402

#: BaseHandler subclass: default initialize (TorchScript or eager + model.py), own preprocess
TENSOR_HANDLER = """
import torch
from ts.torch_handler.base_handler import BaseHandler


class TensorHandler(BaseHandler):
    def preprocess(self, data):
        rows = []
        for row in data:
            value = row.get("data") or row.get("body")
            if isinstance(value, dict):
                value = value["x"]
            rows.append([float(v) for v in value])
        return torch.tensor(rows, dtype=torch.float32)
"""

#: the eager model definition shipped as model.py (one class, as BaseHandler requires)
MODEL_PY = """
import torch


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(x)
"""

#: a module-level handle(data, context) entry point: echo, context details, metrics, faults
FUNCTION_HANDLER = """
import time

_state = {"initialized": 0}


def handle(data, context):
    if data is None:  # TorchServe calls handle(None, context) once at load
        _state["initialized"] += 1
        _state["model_dir"] = context.system_properties["model_dir"]
        return None
    context.metrics.add_counter("EchoRequests", len(data))
    out = []
    for idx, row in enumerate(data):
        value = row.get("data") if row.get("data") is not None else row.get("body")
        if isinstance(value, (bytes, bytearray)):
            value = bytes(value).decode("utf-8", "replace")
        if isinstance(value, dict) and value.get("sleep"):
            time.sleep(float(value["sleep"]))
        if value == "boom" or (isinstance(value, dict) and value.get("boom")):
            raise ValueError("boom: this input is poisoned")
        out.append({
            "echo": value,
            "batch": len(data),
            "model": context.model_name,
            "request_id": context.get_request_id(idx),
            "tag": context.get_request_header(idx, "x-tag"),
            "saw_authorization": context.get_request_header(idx, "authorization") is not None,
            "content_type": (context.get_request_header(idx, "body") or {}).get("content-type")
            if isinstance(context.get_request_header(idx, "body"), dict) else None,
            "fields": sorted(row),
            "initialized": _state["initialized"],
            "props": {k: context.system_properties[k] for k in (
                "batch_size", "gpu_id", "server_name", "limit_max_image_pixels")},
            "yaml": context.model_yaml_config,
        })
    return out


def other_entry(data, context):
    if data is None:
        return None
    return ["other:" + str(row.get("body") or row.get("data")) for row in data]
"""

#: a handler class (not a BaseHandler) that sets per-request status, content type and headers
STATUS_HANDLER = """
class StatusHandler:
    def initialize(self, context):
        self.context = context

    def handle(self, data, context):
        out = []
        for idx, row in enumerate(data):
            value = row.get("body") if row.get("body") is not None else row.get("data")
            if value == "teapot":
                context.set_response_status(418, "I'm a teapot", idx)
                out.append({"error": "short and stout"})
            elif value == "text":
                context.set_response_content_type(idx, "text/plain")
                context.set_response_header(idx, "x-handler", "status")
                out.append("plain words")
            elif value == "bytes":
                out.append(b"\\x00\\x01raw")
            elif value == "object":
                out.append(object())  # not JSON: a 500 naming the handler
            elif value == "prediction-exception":
                from ts.utils.util import PredictionException

                raise PredictionException("cannot predict that", 422)
            else:
                out.append({"ok": value})
        return out
"""

WRONG_COUNT_HANDLER = """
def handle(data, context):
    if data is None:
        return None
    return [{"only": "one"}] * (len(data) + 1)
"""

IMPORT_ERROR_HANDLER = """
import not_a_real_package_for_steadyserve_tests  # noqa: F401


def handle(data, context):
    return data
"""

EXPLAIN_HANDLER = """
import torch
from ts.torch_handler.base_handler import BaseHandler


class ExplainHandler(BaseHandler):
    def initialize(self, context):
        self.context = context
        self.initialized = True

    def preprocess(self, data):
        return [row.get("body") or row.get("data") for row in data]

    def inference(self, data):
        return data

    def postprocess(self, data):
        return [{"prediction": d} for d in data]

    def get_insights(self, tensor_data, raw_data, target):
        return [{"explanation": "because", "target": target}]
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def archive(
    out: Path,
    name: str,
    handler: str,
    *,
    serialized: Path | None = None,
    model_file: Path | None = None,
    extra: list[Path] | None = None,
    config_yaml: str | None = None,
    version: str = "1.0",
) -> Path:
    """A ``.mar`` built by torch-model-archiver in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    config_file = None
    if config_yaml is not None:
        config_file = str(_write(out / f"{name}-config.yaml", config_yaml))
    generate_model_archive(
        ModelArchiverConfig(
            model_name=name,
            handler=handler,
            version=version,
            serialized_file=str(serialized) if serialized else None,
            model_file=str(model_file) if model_file else None,
            extra_files=",".join(str(p) for p in extra) if extra else None,
            export_path=str(out),
            config_file=config_file,
            force=True,
        )
    )
    return out / f"{name}.mar"


def patch_manifest(mar: Path, **model_fields: str) -> Path:
    """Rewrite fields of ``model`` in an archive's manifest (what a hand-edited archive has)."""
    tmp = mar.with_suffix(".tmp")
    with zipfile.ZipFile(mar) as src, zipfile.ZipFile(tmp, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "MAR-INF/MANIFEST.json":
                doc = json.loads(data)
                doc["model"].update(model_fields)
                data = json.dumps(doc).encode()
            dst.writestr(info, data)
    shutil.move(tmp, mar)
    return mar


def build_all(work: Path, store: Path) -> dict[str, Path]:
    """Every archive the tests serve, in ``store``. Returns name → .mar path."""
    src = work / "src"
    src.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    tiny = torch.nn.Sequential(torch.nn.Linear(3, 2))
    scripted = torch.jit.script(tiny)
    scripted.save(str(src / "tiny.pt"))
    tensor_handler = _write(src / "tensor_handler.py", TENSOR_HANDLER)
    model_py = _write(src / "model.py", MODEL_PY)
    namespace: dict[str, object] = {}
    exec(MODEL_PY, namespace)  # noqa: S102 - the test's own model definition
    eager = namespace["TinyNet"]()  # type: ignore[operator]
    torch.save(eager.state_dict(), src / "tiny_state.pth")
    fn = _write(src / "echo_handler.py", FUNCTION_HANDLER)
    out = {
        "scripted": archive(store, "scripted", str(tensor_handler), serialized=src / "tiny.pt"),
        "eager": archive(
            store,
            "eager",
            str(tensor_handler),
            serialized=src / "tiny_state.pth",
            model_file=model_py,
        ),
        "echo": archive(
            store,
            "echo",
            str(fn),
            config_yaml="batchSize: 8\nmaxBatchDelay: 50\nresponseTimeout: 30\nhandler:\n  greeting: hi\n",
            version="2.0",
        ),
        "status": archive(store, "status", str(_write(src / "status_handler.py", STATUS_HANDLER))),
        "wrongcount": archive(
            store, "wrongcount", str(_write(src / "wrong_handler.py", WRONG_COUNT_HANDLER))
        ),
        "explain": archive(
            store, "explain", str(_write(src / "explain_handler.py", EXPLAIN_HANDLER))
        ),
    }
    # file.py:function - TorchServe's loader accepts it in the manifest; the archiver does not
    # take it as --handler, so it is written into the manifest as a hand-made archive would be
    out["other"] = patch_manifest(
        archive(store, "other", str(fn)), handler="echo_handler.py:other_entry"
    )
    return out


def build_broken(store: Path, work: Path) -> dict[str, Path]:
    """Archives whose load fails: an import error inside the handler, a wrong handler name."""
    src = work / "broken-src"
    src.mkdir(parents=True, exist_ok=True)
    return {
        "importerror": archive(
            store, "importerror", str(_write(src / "bad_import_handler.py", IMPORT_ERROR_HANDLER))
        ),
        "wrongname": patch_manifest(
            archive(store, "wrongname", str(_write(src / "renamed.py", WRONG_COUNT_HANDLER))),
            handler="no_such_handler.py",
        ),
    }
