"""Neutral request/response types shared by every protocol, the engine and the worker.

The protocol codecs (V1, V2 JSON/binary/gRPC, OpenAI) turn wire formats into these types and back;
the engine moves them between processes. They are ``msgspec.Struct`` so they cross the IPC
boundary as msgpack - no pickle, nothing from a client is ever unpickled.

Tensors travel as raw little-endian bytes (numeric types) or a list of ``bytes`` (BYTES); use
:func:`tensor_from_numpy` / :meth:`Tensor.to_numpy` to convert.

This module imports nothing else from the package.
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

# --------------------------------------------------------------------------------------------
# Tensors (Open Inference Protocol datatypes)

#: V2 datatype → numpy dtype (little-endian). BYTES is special (object array of ``bytes``).
V2_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
V2_DATATYPES: tuple[str, ...] = (*V2_TO_NUMPY.keys(), "BYTES")


def numpy_to_v2(dtype: np.dtype[Any]) -> str:
    """The V2 datatype name for a numpy dtype (object/str/bytes arrays are BYTES)."""
    if dtype.kind in ("O", "S", "U"):
        return "BYTES"
    for name, candidate in V2_TO_NUMPY.items():
        if candidate == dtype.newbyteorder("<") or candidate == dtype:
            return name
    raise ValueError(f"unsupported dtype {dtype}")


class Tensor(msgspec.Struct, frozen=True):
    """A named tensor. ``data`` is raw little-endian bytes, or a list of bytes for BYTES."""

    name: str
    datatype: str
    shape: list[int]
    data: bytes | list[bytes]
    parameters: dict[str, Any] = {}

    def to_numpy(self) -> np.ndarray[Any, Any]:
        if self.datatype == "BYTES":
            assert isinstance(self.data, list)
            arr = np.empty(len(self.data), dtype=object)
            arr[:] = self.data
            return arr.reshape(self.shape)
        assert isinstance(self.data, bytes)
        return np.frombuffer(self.data, dtype=V2_TO_NUMPY[self.datatype]).reshape(self.shape)


def tensor_from_numpy(
    name: str, array: np.ndarray[Any, Any], parameters: dict[str, Any] | None = None
) -> Tensor:
    """Build a :class:`Tensor` from a numpy array (str/bytes/object arrays become BYTES)."""
    array = np.asarray(array)
    datatype = numpy_to_v2(array.dtype)
    shape = [int(s) for s in array.shape]
    data: bytes | list[bytes]
    if datatype == "BYTES":
        data = [
            v if isinstance(v, bytes) else str(v).encode("utf-8")
            for v in array.reshape(-1).tolist()
        ]
    else:
        data = np.ascontiguousarray(array, dtype=V2_TO_NUMPY[datatype]).tobytes()
    return Tensor(name=name, datatype=datatype, shape=shape, data=data, parameters=parameters or {})


class TensorSpec(msgspec.Struct, frozen=True):
    """Metadata of one model input or output. ``-1`` in ``shape`` is a variable dimension."""

    name: str
    datatype: str
    shape: list[int]


# --------------------------------------------------------------------------------------------
# Requests


class PredictRequest(msgspec.Struct):
    """KServe V1 ``:predict``: a list of instances (one output per instance)."""

    instances: list[Any]
    parameters: dict[str, Any] = {}


class PredictResponse(msgspec.Struct):
    predictions: list[Any]


class RequestedOutput(msgspec.Struct):
    name: str
    parameters: dict[str, Any] = {}


class InferRequest(msgspec.Struct):
    """Open Inference Protocol V2 inference request."""

    inputs: list[Tensor]
    id: str | None = None
    parameters: dict[str, Any] = {}
    outputs: list[RequestedOutput] | None = None


class InferResponse(msgspec.Struct):
    model_name: str
    outputs: list[Tensor]
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] = {}


class EmbedRequest(msgspec.Struct):
    """Embeddings for a list of texts (or pre-tokenized ids)."""

    texts: list[str] | None = None
    token_ids: list[list[int]] | None = None
    normalize: bool = True


class EmbedResponse(msgspec.Struct):
    embeddings: list[list[float]]
    prompt_tokens: int = 0


class SamplingParams(msgspec.Struct):
    """Decoding parameters of one sequence (validated at the edge before they get here)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: list[int] = []
    logprobs: int | None = None
    logit_bias: dict[int, float] = {}
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


class GenerateRequest(msgspec.Struct):
    """One sequence to generate. The server tokenizes when it has the model's tokenizer."""

    prompt_token_ids: list[int] | None = None
    prompt: str | None = None
    params: SamplingParams = msgspec.field(default_factory=SamplingParams)


class TokenDelta(msgspec.Struct):
    """New tokens of one sequence, in order. ``finish_reason`` is set on the last delta."""

    token_ids: list[int] = []
    text: str | None = None
    logprobs: list[float] | None = None
    top_logprobs: list[dict[int, float]] | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None


# --------------------------------------------------------------------------------------------
# Model metadata


class Capability:
    """Names of what a model can serve. The edge refuses anything the model does not list."""

    PREDICT = "predict"  # V1 :predict
    INFER = "infer"  # V2 /infer
    GENERATE = "generate"  # OpenAI completions
    CHAT = "chat"  # OpenAI chat completions (needs a chat template)
    EMBED = "embed"  # OpenAI embeddings


class ModelInfo(msgspec.Struct):
    """What the worker reports once the model is loaded; the edge validates against it."""

    name: str
    platform: str = "steadyserve"
    versions: list[str] = []
    inputs: list[TensorSpec] = []
    outputs: list[TensorSpec] = []
    capabilities: list[str] = []
    task: str | None = None
    #: directory the server process loads the tokenizer from (HF models), if any.
    tokenizer_dir: str | None = None
    #: maximum prompt + generated tokens for generation models.
    max_model_len: int | None = None
    #: tokens a completion counts as its own (e.g. a decoder start token is not one).
    eos_token_ids: list[int] = []
    vocab_size: int | None = None
    is_encoder_decoder: bool = False
    device: str = "cpu"
    dtype: str | None = None
    extra: dict[str, Any] = {}
