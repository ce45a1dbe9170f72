"""TorchServe handlers driven in-process by :class:`TorchServeModel` (the code the worker
runs): every handler form, the context, per-request status, metrics, faults."""

from __future__ import annotations

import base64
import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from steadyserve.errors import InvalidInput, ModelError
from steadyserve.runtimes.torchserve.archive import open_archive
from steadyserve.runtimes.torchserve.handler import (
    TS_MODE,
    TS_REQUEST,
    TS_RESPONSE,
    HandlerLoadError,
    TorchServeModel,
    gpu_id_for,
)
from steadyserve.runtimes.torchserve.specs import archive_spec
from tests.ts_material import build_all, build_broken  # skips without ts / the archiver

HANDLER_MODULES = (
    "tensor_handler",
    "model",
    "echo_handler",
    "status_handler",
    "wrong_handler",
    "explain_handler",
    "bad_import_handler",
)


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("ts")
    out = build_all(work, work / "store")
    out.update(build_broken(work / "broken", work))
    return out


@pytest.fixture()
def isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The worker chdirs into the archive and puts it on sys.path: undo both, and forget the
    handler modules, so each test loads its own."""
    monkeypatch.chdir(Path.cwd())
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    for name in HANDLER_MODULES:
        sys.modules.pop(name, None)


def load(archives: dict[str, Path], name: str, **options: Any) -> TorchServeModel:
    spec = archive_spec(str(archives[name]), {"device": "cpu"})
    model = TorchServeModel(name, spec.model_dir, **{**spec.options, **options})
    model.load()
    return model


def ts_request(body: Any, content_type: str | None = None, **headers: str) -> dict[str, Any]:
    return {
        TS_REQUEST: {
            "request_id": f"rid-{body!r}"[:40],
            "headers": headers,
            "inputs": {"body": body},
            "content_types": {"body": content_type},
        }
    }


def ts(model: TorchServeModel, *requests: dict[str, Any], mode: str = "predict") -> list[Any]:
    out = [o[TS_RESPONSE] for o in model.predict(list(requests), {TS_MODE: mode})]
    for env in out:
        if "json_text" in env:
            env["json"] = json.loads(env.pop("json_text"))
    return out


def test_torchscript_and_eager_load_with_base_handler(
    archives: dict[str, Path], isolated: None
) -> None:
    rows = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    for name, weights in (("scripted", "tiny.pt"), ("eager", "tiny_state.pth")):
        model = load(archives, name)
        got = model.predict(rows)
        src = archives[name].parent.parent / "src"
        if name == "scripted":
            ref = torch.jit.load(str(src / weights))
        else:
            sys.modules.pop("model", None)
            ns: dict[str, Any] = {}
            exec((src / "model.py").read_text(), ns)  # noqa: S102
            ref = ns["TinyNet"]()
            ref.load_state_dict(torch.load(src / weights))
        want = ref(torch.tensor(rows)).tolist()
        assert [v for row in got for v in row] == pytest.approx([v for row in want for v in row])
        sys.modules.pop("tensor_handler", None)


def test_function_handler_gets_torchserve_context(
    archives: dict[str, Path], isolated: None
) -> None:
    model = load(archives, "echo")
    a, b = ts(
        model,
        ts_request(b"hello", "text/plain", **{"x-tag": "t1"}),
        ts_request(b'{"k": [1, 2]}', "application/json"),
    )
    assert a["status"] == 200 and b["status"] == 200
    assert a["json"]["echo"] == "hello" and b["json"]["echo"] == {"k": [1, 2]}
    assert a["json"]["tag"] == "t1" and a["json"]["batch"] == 2
    assert a["json"]["request_id"] == "rid-b'hello'" and a["json"]["model"] == "echo"
    assert a["json"]["content_type"] == "text/plain" and a["json"]["fields"] == ["body"]
    assert a["json"]["initialized"] == 1  # handle(None, context) once at load
    assert a["json"]["props"] == {
        "batch_size": 8,
        "gpu_id": None,
        "server_name": "MMS",
        "limit_max_image_pixels": True,
    }
    assert a["json"]["yaml"]["handler"] == {"greeting": "hi"}
    # raw bytes (no content type) arrive as bytearray, as in TorchServe
    (c,) = ts(model, ts_request(b"\xff\x00", None))
    assert c["json"]["echo"] == "\ufffd\x00"
    metrics = {(m[0], m[1]) for m in a["metrics"]}
    assert ("EchoRequests", "counter") in metrics and ("PredictionTime", "gauge") in metrics


def test_kserve_instances_reach_the_handler_as_data_rows(
    archives: dict[str, Path], isolated: None
) -> None:
    model = load(archives, "echo")
    a, b = model.predict([{"data": "as is"}, [1, 2]])
    assert (a["echo"], a["fields"]) == ("as is", ["data"])  # an object: passed as it is
    assert (b["echo"], b["fields"]) == ([1, 2], ["data"])  # any other value: {"data": value}
    assert a["batch"] == 2


def test_file_function_entry_point(archives: dict[str, Path], isolated: None) -> None:
    model = load(archives, "other")
    (out,) = ts(model, ts_request(b"x", "text/plain"))
    assert out["text"] == "other:x"
    assert model.entry == "echo_handler:other_entry"


def test_handler_raising_raises(archives: dict[str, Path], isolated: None) -> None:
    model = load(archives, "echo")
    with pytest.raises(ValueError, match="poisoned"):
        ts(model, ts_request(b"ok", "text/plain"), ts_request(b"boom", "text/plain"))
    (ok,) = ts(model, ts_request(b"ok", "text/plain"))  # the model is still fine
    assert ok["json"]["echo"] == "ok"


def test_set_response_status_content_type_and_headers(
    archives: dict[str, Path], isolated: None
) -> None:
    model = load(archives, "status")
    tea, text, raw, ok = ts(
        model,
        ts_request(b"teapot", "text/plain"),
        ts_request(b"text", "text/plain"),
        ts_request(b"bytes", "text/plain"),
        ts_request(b"fine", "text/plain"),
    )
    assert (tea["status"], tea["phrase"], tea["json"]) == (
        418,
        "I'm a teapot",
        {"error": "short and stout"},
    )
    assert (text["status"], text["content_type"], text["text"]) == (
        200,
        "text/plain",
        "plain words",
    )
    assert text["headers"] == {"x-handler": "status"}
    assert base64.b64decode(raw["b64"]) == b"\x00\x01raw"
    assert ok == {**ok, "status": 200, "json": {"ok": "fine"}}
    # KServe V1 path: alone, the status is the error; in a batch, re-run to find it
    with pytest.raises(InvalidInput, match="teapot"):
        model.predict(["teapot"])
    with pytest.raises(ModelError, match="set status 418 in a batch"):
        model.predict(["fine", "teapot"])
    assert model.predict(["fine"]) == [{"ok": "fine"}]
    with pytest.raises(
        ModelError, match="handler status_handler.StatusHandler returned an output that is not JSON"
    ):
        ts(model, ts_request(b"object", "text/plain"))
    # ts.utils.util.PredictionException(message, code): that status, as in TorchServe
    (exc,) = ts(model, ts_request(b"prediction-exception", "text/plain"))
    assert (exc["status"], exc["text"]) == (422, "cannot predict that")


def test_wrong_number_of_outputs_names_the_handler(
    archives: dict[str, Path], isolated: None
) -> None:
    model = load(archives, "wrongcount")
    with pytest.raises(
        ModelError, match=r"handler wrong_handler:handle returned 2 outputs for a batch of 1"
    ):
        ts(model, ts_request(b"x", "text/plain"))


def test_explanations(archives: dict[str, Path], isolated: None) -> None:
    model = load(archives, "explain")
    (out,) = ts(model, ts_request(b'{"target": 1}', "application/json"), mode="explain")
    assert (out["status"], out["json"]) == (200, {"explanation": "because", "target": 0})
    (pred,) = ts(model, ts_request(b"q", "text/plain"))
    assert pred["json"] == {"prediction": "q"}
    sys.modules.pop("tensor_handler", None)
    scripted = load(archives, "scripted")
    with pytest.raises(InvalidInput, match="does not implement explanations"):
        ts(scripted, ts_request(b'{"x": [1, 2, 3]}', "application/json"), mode="explain")


def test_load_failures_keep_the_handlers_message(archives: dict[str, Path], isolated: None) -> None:
    with pytest.raises(ModuleNotFoundError, match="not_a_real_package_for_steadyserve_tests"):
        load(archives, "importerror")
    with pytest.raises(HandlerLoadError, match=r"handler 'no_such_handler.py' not found"):
        load(archives, "wrongname")


def test_builtin_handler_names(archives: dict[str, Path], isolated: None) -> None:
    # the vision and text built-ins need captum plus torchvision / torchtext, which do not
    # install against this CPU torch: the load says which package is missing
    if importlib.util.find_spec("captum") is not None:
        pytest.skip("captum is installed here: the built-ins' imports may succeed")
    for name in ("image_classifier", "image_segmenter", "object_detector", "text_classifier"):
        with pytest.raises(HandlerLoadError) as info:
            load(archives, "echo", handler=name)
        message = str(info.value)
        assert f"built-in handler {name!r} needs a package that is not installed" in message
        assert "No module named" in message


def test_unpacked_archive_dir_serves_too(archives: dict[str, Path], isolated: None) -> None:
    model_dir, manifest = open_archive(str(archives["echo"]))
    spec = archive_spec(model_dir, {}, name="echo-dir")
    assert spec.model_dir == model_dir and spec.options["handler"] == manifest.handler


def test_gpu_id_follows_device() -> None:
    assert gpu_id_for("cpu", True) is None
    assert gpu_id_for("auto", False) is None
    assert gpu_id_for("auto", True) == 0
    assert gpu_id_for("cuda", True) == 0
    assert gpu_id_for("cuda:3", True) == 3
