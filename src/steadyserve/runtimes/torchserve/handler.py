"""A steadyserve :class:`~steadyserve.model.Model` that loads and drives a TorchServe handler.

It does what TorchServe's backend worker (``ts.model_loader`` + ``ts.service``) does, inside
steadyserve's worker process: put the unpacked archive on ``sys.path`` and make it the working
directory, import the handler (a built-in name, ``file.py``, ``file.py:function`` or a module
with one handler class), build the real ``ts.context.Context`` and call
``initialize(context)`` once; then per dynamic batch call ``handle(data, context)`` with one
entry per request, exactly as TorchServe would.

Two kinds of batch arrive:

* from TorchServe's own routes (``/predictions``, ``/explanations``): every instance is a
  :data:`TS_REQUEST` envelope (the request's inputs, headers and id); every output is a
  :data:`TS_RESPONSE` envelope (the handler's output, the status it set with
  ``set_response_status``, its response headers), turned into the HTTP response by
  ``transport.routes_torchserve``;
* from KServe V1 / V2 (REST or gRPC): object instances are passed to ``handle`` as they are
  (as TorchServe's ``kserve`` envelope does), other values (a V2 tensor's rows, a list) as
  ``{"data": value}``; the outputs are returned as predictions.

Failures stay local: a handler that raises on a batch is re-run one request at a time by the
scheduler, so only the culprit fails; a handler returning the wrong number of outputs fails with
a 500 naming the handler. Errors are never swallowed into a 200.
"""

from __future__ import annotations

import base64
import importlib
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from steadyserve.errors import InvalidInput, ModelError, NotFound, SteadyError, bounded
from steadyserve.model import Model
from steadyserve.runtimes.torchserve.archive import parse_manifest, read_model_config
from steadyserve.runtimes.torchserve.context import HandlerMetrics, bind_requests, make_context

log = logging.getLogger("steadyserve.torchserve")

#: The predict parameter naming a TorchServe-route batch: "predict" or "explain".
TS_MODE = "__torchserve__"
#: The key of a TorchServe-route instance / output envelope.
TS_REQUEST = "__torchserve_request__"
TS_RESPONSE = "__torchserve_response__"
#: TorchServe's built-in handlers (``ts.torch_handler.<name>``).
BUILTIN_HANDLERS = ("image_classifier", "image_segmenter", "object_detector", "text_classifier")
#: The dotted path a ModelSpec names to run an archive.
MODEL_CLASS = "steadyserve.runtimes.torchserve.handler:TorchServeModel"


class HandlerLoadError(Exception):
    """The handler named in the manifest cannot be found or imported (one line)."""


def import_handler(handler: str) -> tuple[Any, str | None]:
    """The handler's module and the function named after ``:`` (if any).

    Like TorchServe: the archive's own module first (the archive dir is on ``sys.path``), then
    ``ts.torch_handler.<name>``. Unlike TorchServe, an import error *inside* the handler keeps
    its own message instead of turning into "no built-in handler"."""
    module_part, _, function = handler.partition(":")
    module_name = module_part[:-3] if module_part.endswith(".py") else module_part
    module_name = module_name.replace("\\", "/").split("/")[-1]
    if not module_name or not module_name.replace("_", "a").replace(".", "a").isalnum():
        raise HandlerLoadError(f"invalid handler name {handler[:200]!r}")
    try:
        return importlib.import_module(module_name), function or None
    except ModuleNotFoundError as exc:
        if exc.name != module_name.split(".")[0] and exc.name != module_name:
            raise  # the handler imports something that is missing: its own message
    builtin = f"ts.torch_handler.{module_name}"
    try:
        return importlib.import_module(builtin), function or None
    except ModuleNotFoundError as exc:
        if exc.name == builtin:
            raise HandlerLoadError(
                f"handler {handler[:200]!r} not found: no {module_name}.py in the archive, no "
                f"module of that name, and no built-in handler of that name (built-ins: "
                f"{', '.join(BUILTIN_HANDLERS)})"
            ) from None
        raise HandlerLoadError(
            f"built-in handler {module_name!r} needs a package that is not installed: {exc}"
        ) from None


def entry_points(
    module: Any, function: str | None
) -> tuple[Callable[..., Any], Callable[..., Any], str]:
    """``(handle, initialize, description)`` of a handler module, as TorchServe finds them."""
    from ts.utils.util import list_classes_from_module

    name = function or "handle"
    if hasattr(module, name):
        fn = getattr(module, name)
        if not callable(fn):
            raise HandlerLoadError(f"{module.__name__}.{name} is not callable")
        return fn, (lambda ctx: fn(None, ctx)), f"{module.__name__}:{name}"
    if function is not None:
        raise HandlerLoadError(f"handler module {module.__name__} has no function {function!r}")
    classes = list_classes_from_module(module)
    if len(classes) != 1:
        raise HandlerLoadError(
            f"handler module {module.__name__} must define a handle(data, context) function or "
            f"exactly one class; it defines {len(classes)} classes: "
            f"{', '.join(c.__name__ for c in classes)[:300]}"
        )
    instance = classes[0]()
    if not hasattr(instance, "handle"):
        raise HandlerLoadError(f"handler class {classes[0].__name__} has no handle method")
    return instance.handle, instance.initialize, f"{module.__name__}.{classes[0].__name__}"


def decode_value(value: Any, content_type: str | None) -> Any:
    """A request input as TorchServe's worker decodes it: JSON parsed, text as str, the rest
    as ``bytearray`` (``TS_DECODE_INPUT_REQUEST=false`` keeps everything raw)."""
    if not isinstance(value, (bytes, bytearray)):
        return value
    raw = os.environ.get("TS_DECODE_INPUT_REQUEST")
    decode = raw is None or raw == "true"
    ct = (content_type or "").split(";")[0].strip().lower()
    if decode and ct == "application/json":
        try:
            return json.loads(value.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return bytearray(value)
    if decode and ct.startswith("text"):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return bytearray(value)
    return bytearray(value)


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # torch tensors, numpy arrays and scalars
        return value.tolist()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def encode_output(value: Any, handler: str = "") -> dict[str, Any]:
    """One output as TorchServe sends it: bytes as they are, str as text, the rest as JSON
    (a tensor becomes its list). An output that is none of these fails the request (500)."""
    if isinstance(value, (bytes, bytearray)):
        return {"b64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, str):
        return {"text": value}
    try:
        return {"json_text": json.dumps(value, default=_json_default, ensure_ascii=False)}
    except (TypeError, ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"handler {handler} returned an output that is not JSON: {exc}") from None


def _status_error(code: int, phrase: str, handler: str) -> SteadyError:
    message = phrase or f"handler {handler} set status {code}"
    if code == 404:
        return NotFound(message)
    if 400 <= code < 500:
        return InvalidInput(message)
    return ModelError(message)


def gpu_id_for(device: str | None, cuda_available: bool) -> int | None:
    """TorchServe's ``gpu_id`` from steadyserve's ``--device``: ``cuda:N`` → N, ``cuda`` → 0,
    ``auto`` → 0 when CUDA is available (TorchServe hands out GPUs when there are any), else
    ``None`` (BaseHandler then runs on the CPU)."""
    device = (device or "auto").lower()
    if device.startswith("cuda"):
        _, _, index = device.partition(":")
        return int(index) if index else 0
    if device == "auto" and cuda_available:
        return 0
    return None


class TorchServeModel(Model):
    """A TorchServe archive (unpacked into ``model_dir``) served by steadyserve."""

    platform = "torchserve"

    def load(self) -> None:
        if self.model_dir is None:
            raise HandlerLoadError("a TorchServe model needs its unpacked archive as model_dir")
        try:
            import ts  # noqa: F401
        except ImportError:
            raise HandlerLoadError(
                "TorchServe archives need the ts package: pip install 'steadyserve[torchserve]'"
            ) from None
        model_dir = os.path.abspath(self.model_dir)
        manifest = parse_manifest(model_dir)
        yaml_config = read_model_config(model_dir, manifest)
        handler = str(self.options.get("handler") or manifest.handler)
        self.handler_name = handler
        # TorchServe's worker runs in the archive dir with it first on the path: handlers
        # import their siblings (model.py, utilities) and open files by relative names.
        if model_dir not in sys.path:
            sys.path.insert(0, model_dir)
        os.chdir(model_dir)
        module, function = import_handler(handler)
        self._handle, initialize, self.entry = entry_points(module, function)
        self.metrics = HandlerMetrics()
        self.batch_size = int(self.options.get("batch_size") or 1)
        self.context = make_context(
            self.name,
            model_dir,
            manifest.raw,
            self.batch_size,
            self._gpu_id(),
            yaml_config,
            self.metrics,
            bool(self.options.get("limit_max_image_pixels", True)),
        )
        self.metrics.set_request_ids(str(uuid.uuid4()))
        initialize(self.context)
        log.info("loaded TorchServe handler %s for %s", self.entry, self.name)

    def _gpu_id(self) -> int | None:
        if "gpu_id" in self.options:
            return self.options["gpu_id"]  # type: ignore[no-any-return]
        import torch

        return gpu_id_for(self.options.get("device"), torch.cuda.is_available())

    def predict(self, inputs: Any, parameters: dict[str, Any] | None = None) -> Any:
        mode = (parameters or {}).get(TS_MODE)
        if mode is None:
            return self._predict_kserve(inputs)
        data, ids, headers = [], [], []
        for item in inputs:
            req = item.get(TS_REQUEST) if isinstance(item, dict) else None
            if not isinstance(req, dict):
                raise InvalidInput("not a TorchServe request envelope")
            types = req.get("content_types") or {}
            data.append({k: decode_value(v, types.get(k)) for k, v in req["inputs"].items()})
            hdrs = dict(req.get("headers") or {})
            for k, ct in types.items():
                if ct:
                    hdrs[k] = {"content-type": ct}  # type: ignore[assignment]
            if mode == "explain":
                hdrs["explain"] = "True"
            headers.append(hdrs)
            ids.append(str(req.get("request_id") or uuid.uuid4()))
        if mode == "explain":
            self._check_explains()
        processors = bind_requests(self.context, self.metrics, ids, headers)
        try:
            ret = self._call(data)
        except Exception as exc:
            code = getattr(exc, "error_code", None)
            if len(inputs) == 1 and type(exc).__name__ == "PredictionException" and code:
                # ts.utils.util.PredictionException(message, error_code): TorchServe answers
                # with that status and message
                out = {"status": int(code), "phrase": "", "headers": {}, "content_type": None}
                out.update(encode_output(bounded(str(getattr(exc, "message", exc)))))
                out["metrics"] = self._drain_metrics()
                return [{TS_RESPONSE: out}]
            raise
        outputs = []
        for idx, value in enumerate(ret):
            proc = processors[idx]
            resp_headers = {str(k): str(v) for k, v in proc.get_response_headers().items()}
            content_type = resp_headers.pop("content-type", None)
            env = {
                "status": int(proc.get_response_status_code() or 200),
                "phrase": proc.get_response_status_phrase() or "",
                "headers": resp_headers,
                "content_type": content_type,
            }
            env.update(encode_output(value, self.entry))
            outputs.append({TS_RESPONSE: env})
        if outputs:
            outputs[0][TS_RESPONSE]["metrics"] = self._drain_metrics()
        return outputs

    def _predict_kserve(self, inputs: list[Any]) -> list[Any]:
        ids = [str(uuid.uuid4()) for _ in inputs]
        processors = bind_requests(self.context, self.metrics, ids, [{} for _ in inputs])
        # An instance that is an object is handed over as it is (``{"data": ...}``, as
        # TorchServe's KServe envelope passes it); any other value becomes ``{"data": value}``,
        # the shape every TorchServe handler reads.
        ret = self._call([i if isinstance(i, dict) else {"data": i} for i in inputs])
        for proc in processors:
            code = int(proc.get_response_status_code() or 200)
            if code >= 400:
                if len(inputs) > 1:  # re-run one by one: only the culprit fails
                    raise ModelError(f"handler {self.entry} set status {code} in a batch")
                raise _status_error(code, proc.get_response_status_phrase() or "", self.entry)
        return [bytes(v) if isinstance(v, bytearray) else v for v in ret]

    def _call(self, data: list[Any]) -> list[Any]:
        start = time.time()
        ret = self._handle(data, self.context)
        if not isinstance(ret, list):
            raise ModelError(
                f"handler {self.entry} returned {type(ret).__name__}, not a list with one "
                f"output per request ({len(data)})"
            )
        if len(ret) != len(data):
            raise ModelError(
                f"handler {self.entry} returned {len(ret)} outputs for a batch of "
                f"{len(data)} requests"
            )
        self.metrics.add_time("PredictionTime", round((time.time() - start) * 1000, 2))
        return ret

    def _check_explains(self) -> None:
        """400 when the handler is BaseHandler's own ``handle`` with nothing that explains
        (TorchServe would fail inside ``explain_handle`` with an AttributeError)."""
        owner = getattr(self._handle, "__self__", None)
        base = _base_handler()
        if owner is None or base is None or not isinstance(owner, base):
            return  # a function or custom handle() sees the explain header and decides
        cls = type(owner)
        if cls.handle is not base.handle:
            return
        if hasattr(owner, "get_insights") or cls.explain_handle is not base.explain_handle:
            return
        raise InvalidInput(f"handler {self.entry} does not implement explanations")

    def _drain_metrics(self) -> list[list[Any]]:
        return [[m.name, m.kind, m.unit, m.value] for m in self.metrics.drain()]


def _base_handler() -> Any:
    try:
        from ts.torch_handler.base_handler import BaseHandler
    except ImportError:  # pragma: no cover - ts is installed with this runtime
        return None
    return BaseHandler
