"""``VllmModel``: a decoder-only Hugging Face checkpoint served by vLLM's engine in our worker.

``load`` builds vLLM's ``LLMEngine`` (its engine-core process, and on CPU its executor process,
become children of this worker) and warms it up; ``generation_engine`` hands the scheduler a
:class:`~steadyserve.runtimes.vllm.engine.VllmEngine`; ``predict`` serves V1/V2 generation
(the Hugging Face runtime's ``text_generation`` semantics: greedy, ``max_new_tokens``, only the
new text) on the same engine. The server keeps tokenizing, detokenizing and validating: ``info``
reports the tokenizer directory, ``max_model_len``, EOS ids and vocabulary size, as the Hugging
Face runtime does.

No orphans, honest failure:

- every process vLLM starts gets ``PR_SET_PDEATHSIG`` (SIGKILL when this worker dies, even by
  ``kill -9``): forked ones through a fork hook, spawned ones (vLLM's CPU build always spawns)
  through our vLLM plugin (:mod:`.plugin`);
- a watchdog thread ends the worker when a vLLM child process dies (the engine core killed, an
  OOM kill), busy or idle, so the supervisor fails in-flight requests with 503 and restarts it;
- ``unload`` (normal stop) shuts vLLM down, and any child still alive is killed.

``--vllm_engine_core worker`` runs vLLM's engine core inside this worker instead
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``; on CPU and on one GPU the model then runs here too): no
process hop per step, a faster start and less memory. A failure of the engine's step is then
a worker failure as well (``VllmEngine.in_process``).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from steadyserve.config import ModelSpec
from steadyserve.model import BatchGenerator, Model
from steadyserve.runtimes.vllm.engine import VllmEngine
from steadyserve.types import Capability, ModelInfo, TensorSpec

log = logging.getLogger("steadyserve.vllm")

#: exit status of a worker whose vLLM engine died (the supervisor restarts it)
EXIT_ENGINE_DEAD = 5
WATCHDOG_S = 0.5
DEFAULT_MAX_NEW_TOKENS = 32

_fork_hook_installed = False


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # pragma: no cover - not Linux
        pass


def _install_fork_hook() -> None:
    """vLLM's children die with this worker (forked from its main thread, which lives as long
    as the worker does)."""
    global _fork_hook_installed
    if not _fork_hook_installed:
        os.register_at_fork(after_in_child=_die_with_parent)
        _fork_hook_installed = True


def _children() -> list[Any]:
    import psutil

    return list(psutil.Process().children(recursive=True))


def kill_children() -> None:
    for child in _children():
        try:
            child.kill()
        except Exception:  # noqa: BLE001 - already gone
            pass


def _engine_args(spec: ModelSpec, options: dict[str, Any], source: str) -> Any:
    from vllm import EngineArgs

    kwargs: dict[str, Any] = dict(
        model=source,
        tokenizer=source,
        skip_tokenizer_init=True,
        trust_remote_code=spec.trust_remote_code,
        dtype=spec.dtype,
        max_num_seqs=spec.max_num_seqs,
        gpu_memory_utilization=float(options.get("gpu_memory_utilization", 0.9)),
        tensor_parallel_size=int(options.get("tensor_parallel_size", 1)),
        enforce_eager=bool(options.get("enforce_eager", False)),
        disable_log_stats=True,
    )
    if spec.max_model_len is not None:
        kwargs["max_model_len"] = spec.max_model_len
    if spec.model_dir is None and spec.revision:
        kwargs["revision"] = spec.revision
        kwargs["tokenizer_revision"] = spec.tokenizer_revision or spec.revision
    if spec.device not in ("auto", "cpu") and spec.device.startswith("cuda:"):
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", spec.device.split(":", 1)[1])
    return EngineArgs(**kwargs)


def _eos_ids(source: str, config: Any, tokenizer: Any) -> list[int]:
    """EOS ids from the generation config, the model config and the tokenizer (in that order),
    as the Hugging Face runtime collects them."""
    import transformers

    try:
        gen_eos = transformers.GenerationConfig.from_pretrained(source).eos_token_id
    except Exception:  # noqa: BLE001 - no generation_config.json
        gen_eos = None
    from steadyserve.runtimes.huggingface.runtime import merge_eos_ids

    return merge_eos_ids(gen_eos, getattr(config, "eos_token_id", None), tokenizer.eos_token_id)


class VllmModel(Model):
    """A text-generation model served by vLLM (see the module docstring)."""

    platform = "vllm"

    def __init__(self, name: str, spec: ModelSpec, options: dict[str, Any]) -> None:
        super().__init__(name, spec.model_dir)
        self.spec = spec
        self.backend_options = options
        self.llm: Any = None
        self.engine: VllmEngine | None = None
        self.tokenizer: Any = None
        self.source = ""
        self.device = "cpu"
        self.max_model_len = 0
        self.vocab_size = 0
        self.eos_token_ids: list[int] = []
        self._stopping = threading.Event()
        self.inputs = [TensorSpec("text", "BYTES", [-1])]
        self.outputs = [TensorSpec("text", "BYTES", [-1])]

    # ---- lifecycle ---------------------------------------------------------------------------
    def load(self) -> None:
        import transformers

        from steadyserve.runtimes.huggingface.loading import find_model_dir

        spec = self.spec
        source = find_model_dir(spec.model_dir) if spec.model_dir else spec.model_id
        if source is None:
            raise ValueError("no model: give --model_dir or --model_id")
        self.source = source
        space = self.backend_options.get("kv_cache_space_gb")
        if space is not None:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(int(space))
        # vLLM sizes, pins and waits its own OpenMP threads: the processes it starts get
        # vLLM's defaults, not ours (cpus.py; our passive wait cost its executor 13% at c=32
        # on 2 cores). This process's OpenMP read them when torch loaded: an engine core run
        # in the worker (--vllm_engine_core worker) keeps the worker's.
        from steadyserve.cpus import drop_defaults

        dropped = drop_defaults(os.environ)
        if dropped:
            log.debug("vLLM's processes start without our thread defaults %s", dropped)
        in_worker = self.backend_options.get("engine_core") == "worker"
        # vLLM reads this when it builds the engine: 0 runs the engine core in this process
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if in_worker else "1"
        if spec.torch_threads:
            os.environ.setdefault("OMP_NUM_THREADS", str(spec.torch_threads))
        revision = {"revision": spec.tokenizer_revision or spec.revision} if spec.revision else {}
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(
            source, trust_remote_code=spec.trust_remote_code, **revision
        )
        _install_fork_hook()
        from steadyserve.runtimes.vllm.plugin import ENV

        os.environ[ENV] = "1"  # vLLM's spawned processes die with this worker (plugin.py)
        from vllm.v1.engine.llm_engine import LLMEngine

        log.info("starting vLLM's engine for %s", source)
        started = time.monotonic()
        self.llm = LLMEngine.from_engine_args(_engine_args(spec, self.backend_options, source))
        model_config = self.llm.model_config
        self.max_model_len = int(model_config.max_model_len)
        from vllm.platforms import current_platform

        self.device = str(current_platform.device_type)
        self.vocab_size = int(model_config.get_vocab_size())
        self.eos_token_ids = _eos_ids(source, model_config.hf_config, self.tokenizer)
        if self.tokenizer.pad_token_id is None and self.eos_token_ids:
            self.tokenizer.pad_token_id = self.eos_token_ids[0]
        self.engine = VllmEngine(
            self.llm,
            vocab_size=self.vocab_size,
            max_model_len=self.max_model_len,
            eos_token_ids=self.eos_token_ids,
            on_dead=self._engine_dead,
            in_process=in_worker,
        )
        self.engine.run_batch([self.tokenizer("hello world")["input_ids"] or [0]], 2)  # warm-up
        children = _children()
        log.info(
            "vLLM ready in %.1fs (max_model_len=%d, processes %s)",
            time.monotonic() - started,
            self.max_model_len,
            [c.pid for c in children],
        )
        threading.Thread(
            target=self._watch, args=(children,), name="vllm-watchdog", daemon=True
        ).start()

    def _watch(self, children: list[Any]) -> None:
        """End the worker when one of vLLM's processes dies (see the module docstring)."""
        while not self._stopping.wait(WATCHDOG_S):
            for child in children:
                try:
                    alive = child.is_running() and child.status() != "zombie"
                except Exception:  # noqa: BLE001 - gone
                    alive = False
                if not alive and not self._stopping.is_set():
                    self._engine_dead(RuntimeError(f"vLLM process {child.pid} died"))

    def _engine_dead(self, exc: BaseException) -> None:
        log.error("vLLM's engine died (%s); the worker exits and is restarted", exc)
        kill_children()
        sys.stderr.flush()
        os._exit(EXIT_ENGINE_DEAD)

    def unload(self) -> None:
        self._stopping.set()
        llm, self.llm, self.engine = self.llm, None, None
        if llm is not None:
            try:
                llm.engine_core.shutdown()
            except Exception:  # noqa: BLE001 - best effort, the children are killed below
                log.debug("vLLM shutdown failed", exc_info=True)
        kill_children()

    # ---- serving -----------------------------------------------------------------------------
    def generation_engine(self) -> BatchGenerator | None:
        return self.engine

    def predict(self, instances: list[Any], parameters: dict[str, Any] | None = None) -> list[Any]:
        """V1/V2 generation, as the Hugging Face runtime's ``text_generation`` task."""
        from steadyserve.errors import InvalidInput
        from steadyserve.runtimes.huggingface import tasks

        if self.engine is None:
            raise RuntimeError("model is not loaded")
        texts = tasks.texts_from_instances(instances)
        params = dict(parameters or {})
        max_new = tasks._param_int(
            params, "max_new_tokens", DEFAULT_MAX_NEW_TOKENS, 1, max(1, self.max_model_len)
        )
        prompts: list[list[int]] = []
        for i, text in enumerate(texts):
            ids = list(self.tokenizer(text)["input_ids"])
            n = len(ids)
            if n == 0:
                raise InvalidInput(f"instance {i}: the prompt is empty")
            if n + max_new > self.max_model_len:
                raise InvalidInput(
                    f"instance {i}: {n} prompt tokens + max_new_tokens {max_new} exceeds the "
                    f"model's limit of {self.max_model_len} tokens"
                )
            prompts.append(ids)
        outputs = self.engine.run_batch(prompts, max_new)
        return [str(t) for t in self.tokenizer.batch_decode(outputs, skip_special_tokens=True)]

    def v2_columns(self, predictions: list[Any]) -> dict[str, list[Any]]:
        return {"text": list(predictions)}

    # ---- introspection -----------------------------------------------------------------------
    def capabilities(self) -> list[str]:
        caps = [Capability.PREDICT, Capability.INFER, Capability.GENERATE]
        if self.tokenizer is not None and getattr(self.tokenizer, "chat_template", None):
            caps.append(Capability.CHAT)
        return caps

    def info(self) -> ModelInfo:
        dtype = str(getattr(self.llm.model_config, "dtype", "")) if self.llm else None
        return ModelInfo(
            name=self.name,
            platform=self.platform,
            inputs=list(self.inputs),
            outputs=list(self.outputs),
            capabilities=self.capabilities(),
            task="text_generation",
            tokenizer_dir=self.source,
            max_model_len=self.max_model_len,
            eos_token_ids=list(self.eos_token_ids),
            vocab_size=self.vocab_size,
            is_encoder_decoder=False,
            device=self.device,
            dtype=dtype.replace("torch.", "") if dtype else None,
            extra={"backend": "vllm"},
        )
