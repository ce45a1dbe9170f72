"""``HuggingFaceModel``: a :class:`steadyserve.Model` that serves a transformers checkpoint.

Runs in the worker process. ``load`` resolves task / device / dtype (see
:mod:`~steadyserve.runtimes.huggingface.loading`), loads the weights onto one device and runs a
warm-up pass before the model reports ready. ``predict`` serves V1 and V2 for all six tasks
(see :mod:`~steadyserve.runtimes.huggingface.tasks`); ``embed`` serves OpenAI embeddings for
``text_embedding``; ``generation_engine`` gives the continuous-batching engine (OpenAI
completions / chat) for the generation tasks.

The task decides the capabilities, not which methods exist: predict + infer always; generate for
``text_generation`` / ``text2text_generation``; chat only when the tokenizer has a chat template;
embed only for ``text_embedding``.

V2 metadata: one input ``text`` (BYTES, ``[-1]``); outputs per task:

============================  =========================================================
task                          V2 outputs
============================  =========================================================
generation (both)             ``text`` BYTES [-1]
fill_mask                     ``token_str`` BYTES [-1, k], ``score`` FP32 [-1, k],
                              ``sequence`` BYTES [-1, k]
sequence_classification       ``label`` BYTES [-1], ``score`` FP32 [-1]
token_classification          ``entities`` BYTES [-1] (a JSON list per row)
text_embedding                ``embedding`` FP32 [-1, hidden]
============================  =========================================================
"""

from __future__ import annotations

import importlib.util
import json
import logging
from typing import Any

from steadyserve.config import ModelSpec
from steadyserve.errors import InvalidInput
from steadyserve.model import GenerationEngine, Model
from steadyserve.runtimes.huggingface import loading, tasks
from steadyserve.types import Capability, EmbedRequest, EmbedResponse, ModelInfo, TensorSpec

log = logging.getLogger("steadyserve.huggingface")

_GENERATION_MODULE = "steadyserve.runtimes.huggingface.generation"

_OUTPUTS: dict[str, list[TensorSpec]] = {
    "text_generation": [TensorSpec("text", "BYTES", [-1])],
    "text2text_generation": [TensorSpec("text", "BYTES", [-1])],
    "fill_mask": [
        TensorSpec("token_str", "BYTES", [-1, -1]),
        TensorSpec("score", "FP32", [-1, -1]),
        TensorSpec("sequence", "BYTES", [-1, -1]),
    ],
    "sequence_classification": [
        TensorSpec("label", "BYTES", [-1]),
        TensorSpec("score", "FP32", [-1]),
    ],
    "token_classification": [TensorSpec("entities", "BYTES", [-1])],
    "text_embedding": [TensorSpec("embedding", "FP32", [-1, -1])],
}


def merge_eos_ids(*sources: Any) -> list[int]:
    """The EOS ids of several ``eos_token_id`` values (an int, a list of ints or None), in
    order, without repeats: the generation config's, the model config's, the tokenizer's. The
    vLLM runtime collects them the same way."""
    ids: list[int] = []
    for source in sources:
        for value in source if isinstance(source, list) else [source]:
            if isinstance(value, int) and value not in ids:
                ids.append(value)
    return ids


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    gen = getattr(model, "generation_config", None)
    return merge_eos_ids(
        getattr(gen, "eos_token_id", None),
        getattr(model.config, "eos_token_id", None),
        getattr(tokenizer, "eos_token_id", None),
    )


class HuggingFaceModel(Model):
    """A transformers model served for one task (see the module docstring)."""

    platform = "huggingface"

    def __init__(self, name: str, spec: ModelSpec) -> None:
        super().__init__(name, spec.model_dir)
        self.spec = spec
        self.task: str | None = spec.task
        self.device = "cpu"
        self.loaded: loading.Loaded | None = None
        self.ctx: tasks.TaskContext | None = None
        self._engine_available = False

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> HuggingFaceModel:
        """Build (not load) the model a worker spec describes."""
        return cls(spec.name, spec)

    # ---- lifecycle ---------------------------------------------------------------------------
    def load(self) -> None:
        """Load weights and tokenizer onto one device, then warm up (readiness after that)."""
        import torch

        loaded = loading.load(self.spec, progress=log.info)
        self.loaded = loaded
        self.task = loaded.task
        self.device = loaded.device
        tokenizer = loaded.tokenizer
        if loaded.task == "fill_mask" and tokenizer.mask_token_id is None:
            raise loading.LoadError("task fill_mask needs a tokenizer with a mask token")
        eos = _eos_ids(loaded.model, tokenizer)
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = getattr(loaded.model.config, "pad_token_id", None)
        if pad is None and eos:
            pad = eos[0]
        if tokenizer.pad_token_id is None and pad is not None:
            tokenizer.pad_token_id = pad  # batched tokenization needs a pad token
        self.ctx = tasks.TaskContext(
            model=loaded.model,
            tokenizer=tokenizer,
            device=loaded.device,
            max_model_len=loaded.max_model_len,
            pad_token_id=pad,
            eos_token_ids=eos,
        )
        self.inputs = [TensorSpec("text", "BYTES", [-1])]
        self.outputs = list(_OUTPUTS[loaded.task])
        if loaded.task in loading.GENERATION_TASKS:
            self._engine_available = importlib.util.find_spec(_GENERATION_MODULE) is not None
            if not self._engine_available:
                log.warning("no continuous-batching engine installed; OpenAI generation is off")
        log.info("warming up %s (%s on %s)", self.name, loaded.task, loaded.device)
        with torch.inference_mode():
            self._warm_up()
        log.info("%s ready", self.name)

    def _warm_up(self) -> None:
        assert self.ctx is not None and self.task is not None
        text = "hello world"
        if self.task == "fill_mask":
            text = f"hello {self.ctx.tokenizer.mask_token} world"
        params: dict[str, Any] = (
            {"max_new_tokens": 2} if self.task in loading.GENERATION_TASKS else {}
        )
        tasks.TASK_FUNCTIONS[self.task](self.ctx, [text], params)

    def unload(self) -> None:
        self.ctx = None
        self.loaded = None

    # ---- serving -----------------------------------------------------------------------------
    def predict(self, instances: list[Any], parameters: dict[str, Any] | None = None) -> list[Any]:
        """One output per instance (strings or ``{"text": ...}``); one forward pass per batch."""
        import torch

        if self.ctx is None or self.task is None:
            raise RuntimeError("model is not loaded")
        texts = tasks.texts_from_instances(instances)
        params = dict(parameters or {})
        with torch.inference_mode():
            return list(tasks.TASK_FUNCTIONS[self.task](self.ctx, texts, params))

    def embed(self, request: EmbedRequest) -> EmbedResponse:
        """OpenAI embeddings (``text_embedding`` only)."""
        import torch

        if self.ctx is None or self.task != "text_embedding":
            raise InvalidInput(f"model {self.name} does not serve embeddings")
        if request.texts is None and request.token_ids is None:
            raise InvalidInput("no input to embed")
        with torch.inference_mode():
            vectors, tokens = tasks.embed_batch(
                self.ctx,
                texts=list(request.texts) if request.texts is not None else None,
                token_ids=request.token_ids,
                normalize=request.normalize,
            )
        return EmbedResponse(embeddings=vectors, prompt_tokens=tokens)

    def generation_engine(self) -> GenerationEngine | None:
        """The continuous-batching engine for the generation tasks (else ``None``)."""
        if self.ctx is None or self.task not in loading.GENERATION_TASKS:
            return None
        if not self._engine_available:
            return None
        import importlib

        module = importlib.import_module(_GENERATION_MODULE)
        engine: GenerationEngine = module.ContinuousBatcher(
            self.ctx.model,
            eos_token_ids=list(self.ctx.eos_token_ids),
            pad_token_id=self.ctx.pad_token_id if self.ctx.pad_token_id is not None else 0,
            max_num_seqs=self.spec.max_num_seqs,
            max_model_len=self.ctx.max_model_len,
            device=self.device,
            compile=self.spec.compile,
            prefill_delay_steps=self.spec.prefill_delay_steps,
            prefill_hold_ms=self.spec.prefill_hold_ms,
        )
        return engine

    # ---- V2 output tensors (used by the engine's V2 bridge) ----------------------------------
    def infer_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        """V2 declares ``label`` *and* ``score`` for sequence classification: compute both
        (V1 keeps KServe's plain labels unless ``return_scores`` is asked for)."""
        if self.task == "sequence_classification":
            return {"return_scores": True, **parameters}
        return parameters

    def v2_columns(self, predictions: list[Any]) -> dict[str, list[Any]]:
        """Per-row predictions → V2 output columns (see the module docstring)."""
        task = self.task
        if task == "fill_mask":
            return {
                "token_str": [[f["token_str"] for f in row] for row in predictions],
                "score": [[f["score"] for f in row] for row in predictions],
                "sequence": [[f["sequence"] for f in row] for row in predictions],
            }
        if task == "sequence_classification":
            if predictions and isinstance(predictions[0], dict):
                return {
                    "label": [p["label"] for p in predictions],
                    "score": [p["score"] for p in predictions],
                }
            return {"label": list(predictions)}
        if task == "token_classification":
            return {"entities": [json.dumps(row) for row in predictions]}
        return {self.outputs[0].name: list(predictions)}

    # ---- introspection -----------------------------------------------------------------------
    def capabilities(self) -> list[str]:
        """Decided by the task (and the tokenizer's chat template), not by method presence."""
        caps = [Capability.PREDICT, Capability.INFER]
        if self.task in loading.GENERATION_TASKS and self._engine_available:
            caps.append(Capability.GENERATE)
            tokenizer = self.ctx.tokenizer if self.ctx is not None else None
            if tokenizer is not None and getattr(tokenizer, "chat_template", None):
                caps.append(Capability.CHAT)
        if self.task == "text_embedding":
            caps.append(Capability.EMBED)
        return caps

    def info(self) -> ModelInfo:
        loaded = self.loaded
        if loaded is None:
            return ModelInfo(name=self.name, platform=self.platform, capabilities=[])
        vocab = getattr(loaded.model.config, "vocab_size", None)
        extra: dict[str, Any] = {}
        hidden = getattr(loaded.model.config, "hidden_size", None)
        if loaded.task == "text_embedding" and isinstance(hidden, int):
            extra["embedding_dim"] = hidden
        return ModelInfo(
            name=self.name,
            platform=self.platform,
            inputs=list(self.inputs),
            outputs=list(self.outputs),
            capabilities=self.capabilities(),
            task=loaded.task,
            tokenizer_dir=loaded.tokenizer_dir,
            max_model_len=loaded.max_model_len,
            eos_token_ids=list(self.ctx.eos_token_ids) if self.ctx is not None else [],
            vocab_size=int(vocab) if isinstance(vocab, int) else len(loaded.tokenizer),
            is_encoder_decoder=bool(getattr(loaded.config, "is_encoder_decoder", False)),
            device=loaded.device,
            dtype=str(loaded.dtype).replace("torch.", ""),
            extra=extra,
        )
