"""vLLM's ``LLMEngine`` driven step by step as a :class:`~steadyserve.model.BatchGenerator`.

The worker's scheduler calls ``add`` / ``abort`` between steps and ``step`` while ``has_work()``,
exactly as for the Hugging Face engine: admission, deadlines, cancellation and streaming stay
steadyserve's. vLLM gets token ids (the server tokenizes and detokenizes; vLLM runs with
``skip_tokenizer_init``) and answers with the new token ids of each step (``DELTA`` outputs).

Validation mirrors the Hugging Face engine (same messages), so a request is refused in ``add``
before vLLM sees it; a ``ValueError`` vLLM raises anyway becomes an
:class:`~steadyserve.errors.InvalidInput` (400), anything else a
:class:`~steadyserve.errors.ModelError`. vLLM's engine core dying (``EngineDeadError``) is a
worker failure: ``on_dead`` ends the worker, so in-flight requests get 503 and the supervisor
restarts it; so does a failed step of an engine core that runs in this process.

``has_work`` counts only the requests this engine still owes a finish to: vLLM's
``step`` blocks until the engine core has output, so it is never called with nothing running.
``run_batch`` serves V1/V2 ``predict`` on the same engine: outputs of streaming requests that
arrive meanwhile are kept and returned by the next ``step``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from steadyserve.errors import InvalidInput, ModelError, bounded
from steadyserve.runtimes.checks import check_prompt, check_sampling
from steadyserve.types import GenerateRequest, SamplingParams, TokenDelta

log = logging.getLogger("steadyserve.vllm")

StepOutput = list[tuple[str, TokenDelta | BaseException]]


@dataclass
class _Live:
    prompt_tokens: int
    logprobs: int | None
    started: bool = False


class VllmEngine:
    """One vLLM ``LLMEngine`` behind the BatchGenerator protocol (see the module docstring)."""

    def __init__(
        self,
        llm: Any,
        *,
        vocab_size: int,
        max_model_len: int,
        eos_token_ids: list[int],
        on_dead: Callable[[BaseException], None],
        in_process: bool = False,
    ) -> None:
        self.llm = llm
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len
        self.eos_token_ids = list(eos_token_ids)
        self.on_dead = on_dead
        #: the engine core runs in this process: a failed step leaves it in an unknown state,
        #: so it ends the worker as the engine core process dying would
        self.in_process = in_process
        self.live: dict[str, _Live] = {}
        #: deltas of streaming requests that arrived while ``run_batch`` drove the engine
        self.carry: StepOutput = []
        self._batch_ids = itertools.count()

    # ---- BatchGenerator --------------------------------------------------------------------
    def add(self, request_id: str, request: GenerateRequest) -> None:
        if request_id in self.live:
            raise InvalidInput(f"request id {request_id!r} is already generating")
        prompt = self._check_prompt(request.prompt_token_ids)
        self._check_params(request.params)
        self._submit(request_id, prompt, self.sampling_params(request.params))
        self.live[request_id] = _Live(len(prompt), request.params.logprobs)

    def abort(self, request_id: str) -> None:
        if self.live.pop(request_id, None) is not None:
            self._call(self.llm.abort_request, [request_id])

    def has_work(self) -> bool:
        return bool(self.live) or bool(self.carry)

    def step(self) -> StepOutput:
        out, self.carry = self.carry, []
        if self.live:
            out.extend(self._step_once())
        return out

    def reset(self) -> None:
        ids = list(self.live)
        self.live.clear()
        self.carry = []
        if ids:
            self._call(self.llm.abort_request, ids)

    def stats(self) -> dict[str, int]:
        return {"running": len(self.live)}

    # ---- V1 / V2 generation (greedy, on the same engine) -----------------------------------
    def run_batch(self, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        """Generate greedily for every prompt; returns the new token ids of each."""
        params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0)
        ids = [f"batch-{next(self._batch_ids)}" for _ in prompts]
        results: dict[str, list[int]] = {rid: [] for rid in ids}
        errors: dict[str, BaseException] = {}
        pending = set(ids)
        try:
            for rid, prompt in zip(ids, prompts, strict=True):
                self.add(rid, GenerateRequest(prompt_token_ids=prompt, params=params))
            while pending:
                for rid, item in self._step_once():
                    if rid not in results:
                        self.carry.append((rid, item))
                        continue
                    if isinstance(item, BaseException):
                        errors[rid] = item
                        pending.discard(rid)
                        continue
                    results[rid].extend(item.token_ids)
                    if item.finish_reason is not None:
                        pending.discard(rid)
        finally:
            for rid in ids:
                self.abort(rid)
        if errors:
            raise next(iter(errors.values()))
        return [results[rid] for rid in ids]

    # ---- vLLM calls --------------------------------------------------------------------------
    def sampling_params(self, p: SamplingParams) -> Any:
        """Our sampling parameters as vLLM's (DELTA outputs, no detokenization)."""
        from vllm import SamplingParams as VllmSamplingParams
        from vllm.sampling_params import RequestOutputKind

        stop = list(p.stop_token_ids)
        if not p.ignore_eos:  # vLLM has no tokenizer here: it learns EOS from us
            stop += [t for t in self.eos_token_ids if t not in stop]
        return VllmSamplingParams(
            max_tokens=p.max_tokens,
            temperature=p.temperature,
            top_p=p.top_p,
            top_k=p.top_k,
            seed=p.seed,
            min_tokens=p.min_tokens,
            ignore_eos=p.ignore_eos,
            stop_token_ids=stop or None,
            logprobs=p.logprobs,
            logit_bias={int(k): float(v) for k, v in p.logit_bias.items()} or None,
            repetition_penalty=p.repetition_penalty,
            presence_penalty=p.presence_penalty,
            frequency_penalty=p.frequency_penalty,
            detokenize=False,
            output_kind=RequestOutputKind.DELTA,
        )

    def _submit(self, request_id: str, prompt: list[int], params: Any) -> None:
        try:
            self._call(self.llm.add_request, request_id, {"prompt_token_ids": prompt}, params)
        except (ValueError, TypeError) as exc:
            raise InvalidInput(bounded(str(exc))) from None

    def _call(self, fn: Callable[..., Any], *args: Any, fatal: bool = False) -> Any:
        """Call into vLLM; its engine core dying ends the worker (``on_dead``), and so does
        any failure of a ``fatal`` call."""
        try:
            return fn(*args)
        except Exception as exc:
            if fatal or _is_engine_dead(exc):
                self.on_dead(exc)
            raise

    def _step_once(self) -> StepOutput:
        out: StepOutput = []
        for output in self._call(self.llm.step, fatal=self.in_process):
            rid = str(output.request_id)
            live = self.live.get(rid)
            if live is None:
                continue  # aborted meanwhile
            item = self._delta(output, live)
            if isinstance(item, BaseException) or item.finish_reason is not None:
                self.live.pop(rid, None)
            out.append((rid, item))
        return out

    def _delta(self, output: Any, live: _Live) -> TokenDelta | BaseException:
        completion = output.outputs[0] if output.outputs else None
        if completion is None:
            return ModelError("vLLM returned no completion")
        reason = completion.finish_reason
        if reason not in (None, "stop", "length"):
            return ModelError(f"vLLM ended the request: {reason}")
        tokens = [int(t) for t in completion.token_ids]
        logprobs: list[float] | None = None
        top: list[dict[int, float]] | None = None
        if live.logprobs is not None and completion.logprobs is not None:
            logprobs, top = _logprobs(tokens, completion.logprobs, live.logprobs)
        delta = TokenDelta(
            token_ids=tokens,
            logprobs=logprobs,
            top_logprobs=top,
            finish_reason=reason,
            prompt_tokens=None if live.started else live.prompt_tokens,
        )
        live.started = True
        return delta

    # ---- validation (the Hugging Face engine's rules and messages) --------------------------
    def _check_prompt(self, ids: list[int] | None) -> list[int]:
        return check_prompt(ids, vocab_size=self.vocab_size, max_model_len=self.max_model_len)

    def _check_params(self, p: SamplingParams) -> None:
        check_sampling(p, vocab_size=self.vocab_size)


def _logprobs(
    tokens: list[int], entries: Any, want: int
) -> tuple[list[float], list[dict[int, float]]]:
    """vLLM's per-token ``{token: Logprob}`` (the sampled token plus the top ``want``) → the
    chosen token's log-probability and the top ``want`` alternatives (by rank)."""
    chosen: list[float] = []
    top: list[dict[int, float]] = []
    for token, entry in zip(tokens, entries, strict=False):
        items = dict(entry.items())
        lp = items.get(token)
        chosen.append(float(lp.logprob) if lp is not None else float("-inf"))
        top.append(
            {
                int(t): float(v.logprob)
                for t, v in items.items()
                if v.rank is not None and 1 <= v.rank <= want
            }
        )
    return chosen, top


def _is_engine_dead(exc: BaseException) -> bool:
    try:
        from vllm.v1.engine.exceptions import EngineDeadError
    except ImportError:  # pragma: no cover - another vLLM layout
        return type(exc).__name__ == "EngineDeadError"
    return isinstance(exc, EngineDeadError)
