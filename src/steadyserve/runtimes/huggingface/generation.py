"""Continuous (iteration-level) batching for Hugging Face generation models.

:class:`ContinuousBatcher` implements :class:`steadyserve.model.GenerationEngine` for decoder-only
models (GPT-2's absolute positions, Llama's RoPE, ...) and encoder-decoder models (T5). The
worker's scheduler calls ``add`` / ``abort`` between steps and ``step`` while ``has_work()``.

Each ``step``:

1. runs one decoding iteration for every running sequence (one forward pass over the batch, one
   new token per row) and drops the rows that finished, freeing their KV memory at once;
2. prefills the waiting requests that fit in the free slots (batched among themselves: left-padded
   prompts for decoder-only models; for encoder-decoder models the encoder plus the first decoder
   step), picks their first token, and moves them into free cache slots.

**Arrivals and time to first token.** Every prefill pass has a fixed cost (on a CPU, a
one-row prefill of t5-small costs about a 32-row decode step), so arrivals are prefilled
together where that costs little waiting:

* *Replacements.* A sequence that just finished is often replaced at once by its client's next
  request (closed-loop clients, chat turns, batch jobs); while the replacements of recent
  finishes (at most ``prefill_hold_ms`` old) are still on their way and slots are free for
  them, arrivals are held, each at most ``prefill_hold_ms`` after it arrived. A lone client
  (each arrival replaces the one finish) is never held. With nothing to decode meanwhile the
  engine sleeps (``idle_s``), which leaves the CPUs to the HTTP side that is sending the
  replacements.
* *While rows decode*, arrivals may also be held until they would fill the free slots or
  number at least two and a quarter of the running batch, and never longer than
  ``prefill_delay_steps`` steps (default 4 on CUDA, where a prefill pass costs about a decode
  step; 0 on CPU).

So a request that finds a free slot gets its first token within ``prefill_hold_ms`` plus
``prefill_delay_steps + 1`` steps.

The running batch lives in :mod:`.slots` (pre-allocated per-slot KV buffers: joins and leaves copy
nothing); ``kv_cache="dynamic"`` keeps the older :mod:`.kvcache` batch (a padded ``DynamicCache``
re-padded on every join), which the prefill pass itself also uses. Token choice is in
:mod:`.sampling`. A request that cannot be served (no prompt,
a prompt longer than ``max_model_len``, token ids outside the vocabulary, bad parameters) is
refused in ``add`` with :class:`~steadyserve.errors.InvalidInput`; a prefill that raises fails only
the requests that raise when prefilled alone. If the decoding step itself raises, the scheduler
fails every running request and calls ``reset``.

Token accounting: every chosen token is emitted, the EOS or stop token that ends a sequence
included (as vLLM does); the decoder start token of encoder-decoder models is never emitted.
"""

from __future__ import annotations

import inspect
import logging
import random
import time
from collections import OrderedDict, deque
from typing import Any

import torch
from transformers.modeling_outputs import BaseModelOutput

from steadyserve.errors import InvalidInput
from steadyserve.runtimes.checks import check_prompt, check_sampling
from steadyserve.runtimes.huggingface.compiled import DecodeForward
from steadyserve.runtimes.huggingface.hf_cache import cache_keyword, output_cache
from steadyserve.runtimes.huggingface.kvcache import Batch, Seq, new_cache
from steadyserve.runtimes.huggingface.sampling import Selection, select_tokens, stop_ids
from steadyserve.runtimes.huggingface.slots import SlotBatch, buckets, static_shapes
from steadyserve.types import GenerateRequest, SamplingParams, TokenDelta

log = logging.getLogger("steadyserve.generation")

#: at most this many (padded) prompt tokens are prefilled in one forward pass
PREFILL_TOKEN_BUDGET = 8192
#: default bound on how many decoding steps an arrival may wait for others to be prefilled with
#: (on CUDA; 0 on CPU, where one prompt's prefill costs less than a batched decode step)
PREFILL_DELAY_STEPS_GPU = 4
#: default bound on how long an arrival is held for the replacements of recent finishes
PREFILL_HOLD_MS = 50.0

StepOutput = list[tuple[str, TokenDelta | BaseException]]
_WARM_UP = SamplingParams(max_tokens=4, min_tokens=4, temperature=0.0, ignore_eos=True)


class ContinuousBatcher:
    """Iteration-level batching over a ``transformers`` model (see the module docstring)."""

    def __init__(
        self,
        model: Any,
        *,
        eos_token_ids: list[int],
        pad_token_id: int,
        max_num_seqs: int,
        max_model_len: int,
        device: torch.device | str | None = None,
        kv_cache: str = "slots",
        prefill_delay_steps: int | None = None,
        prefill_hold_ms: float | None = None,
        compile: bool = False,
    ) -> None:
        if max_num_seqs < 1 or max_model_len < 2:
            raise ValueError("max_num_seqs must be >= 1 and max_model_len >= 2")
        if kv_cache not in ("slots", "dynamic"):
            raise ValueError(f"kv_cache must be 'slots' or 'dynamic', not {kv_cache!r}")
        model_device = _model_device(model)
        if device is not None and model_device is not None:
            want = torch.device(device)  # "cuda" names the model's "cuda:0" too
            same_index = want.index is None or model_device.index in (None, want.index)
            if want.type != model_device.type or not same_index:
                raise ValueError(f"device={device} but the model is on {model_device}")
        self.model = model
        self.config = model.config
        self._cache_kw = cache_keyword(model)  # "cache" on transformers 5 (no deprecation log)
        self.encoder_decoder = bool(getattr(self.config, "is_encoder_decoder", False))
        self.eos_token_ids = [int(t) for t in eos_token_ids]
        self.pad_token_id = int(pad_token_id)
        self.max_num_seqs = max_num_seqs
        self.max_model_len = max_model_len
        self.device = model_device or torch.device(device or "cpu")
        self.kv_cache = kv_cache
        self.vocab_size = int(model.get_input_embeddings().num_embeddings)
        start = getattr(self.config, "decoder_start_token_id", None)
        self.decoder_start = int(start if start is not None else self.pad_token_id)
        params = inspect.signature(model.forward).parameters
        self._logits_to_keep = "logits_to_keep" in params
        self._rng = torch.Generator(device=self.device)
        self._rng.manual_seed(random.getrandbits(63))
        if prefill_delay_steps is None:  # a prefill pass costs about a decode step on a GPU
            prefill_delay_steps = PREFILL_DELAY_STEPS_GPU if self.device.type == "cuda" else 0
        if prefill_delay_steps < 0:
            raise ValueError("prefill_delay_steps must be >= 0")
        self.prefill_delay_steps = prefill_delay_steps
        if prefill_hold_ms is None:
            prefill_hold_ms = PREFILL_HOLD_MS
        if prefill_hold_ms < 0:
            raise ValueError("prefill_hold_ms must be >= 0")
        self.prefill_hold_s = prefill_hold_ms / 1000
        self._now = time.monotonic  # the clock of the hold (tests set their own)
        self._steps = 0
        #: each waiting request's arrival: (step, monotonic time)
        self._arrived: dict[str, tuple[int, float]] = {}
        #: when recent sequences finished (those whose replacement has not arrived yet)
        self._finished: deque[float] = deque()
        self.waiting: OrderedDict[str, Seq] = OrderedDict()
        self.batch: Batch | None = None
        #: static shapes for the compiled step (until compiling fails)
        self._static = compile and kv_cache == "slots"
        self.slots = self._new_slots() if kv_cache == "slots" else None
        self._forward = DecodeForward(model, on_disable=self._eager)
        self._max_position = max_model_len - 1
        if compile:  # last: it runs a warm-up request through the engine
            self._compile()

    # ---- GenerationEngine ------------------------------------------------------------------
    def add(self, request_id: str, request: GenerateRequest, arrived: float | None = None) -> None:
        """Queue a request; it joins the running batch at the next step with a free slot.
        ``arrived``: when it reached the worker (``time.monotonic()``; default now), so that a
        request that first waited for a slot is not held again for others."""
        if request_id in self.waiting or self._row_of(request_id) is not None:
            raise InvalidInput(f"request id {request_id!r} is already generating")
        prompt = self._check_prompt(request.prompt_token_ids)
        params = request.params
        self._check_params(params)
        generator: torch.Generator | None = None
        if params.seed is not None and params.temperature > 0:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(int(params.seed))
        self._arrived[request_id] = (self._steps, self._now() if arrived is None else arrived)
        if self._finished:  # the replacement of a recent finish (or a new client: no matter)
            self._finished.popleft()
        self.waiting[request_id] = Seq(
            params=params,
            prompt=prompt,
            generator=generator,
            penalize_prompt=not self.encoder_decoder,
            request_id=request_id,
        )

    def abort(self, request_id: str) -> None:
        """Forget a request; a running one leaves the batch (and frees its cache) at once."""
        if self.waiting.pop(request_id, None) is not None:
            self._arrived.pop(request_id, None)
            return
        if self.slots is not None:
            slot = self.slots.row_of(request_id)
            if slot is not None:
                self.slots.leave({slot})
            return
        row = self._row_of(request_id)
        if row is not None:
            with torch.inference_mode():
                self._drop({row})

    def has_work(self) -> bool:
        return bool(self.waiting) or self._running() > 0

    def _running(self) -> int:
        if self.slots is not None:
            return self.slots.rows
        return self.batch.rows if self.batch is not None else 0

    def step(self) -> StepOutput:
        """One decoding iteration for the running batch, then admit and prefill new requests."""
        out: StepOutput = []
        if not self._running() and self._hold_s() > 0:
            return out  # nothing to decode, and the arrivals wait for the rest
        self._steps += 1
        with torch.inference_mode():
            if self.slots is not None:
                if self.slots.rows:
                    self._decode_slots(out)
            elif self.batch is not None:
                logits = self._decode(self.batch)
                self._finish_step(self.batch, logits, out)
            admitted = self._admit()
            for group in self._groups(admitted):
                self._prefill_group(group, out)
        return out

    def reset(self) -> None:
        """Drop every sequence and the cache (after a failed step)."""
        self.waiting.clear()
        self._arrived.clear()
        self._finished.clear()
        self.batch = None
        if self.slots is not None:  # a step that raised may have left it half-updated
            self.slots = self._new_slots()

    def idle_s(self) -> float:
        """Seconds to sleep rather than step: arrivals are held and nothing decodes."""
        return 0.0 if self._running() else self._hold_s()

    def stats(self) -> dict[str, int]:
        batch = self.slots or self.batch
        return {
            "running": self._running(),
            "waiting": len(self.waiting),
            "cache_columns": batch.columns if batch is not None else 0,
        }

    # ---- validation --------------------------------------------------------------------------
    def _check_prompt(self, ids: list[int] | None) -> list[int]:
        return check_prompt(
            ids,
            vocab_size=self.vocab_size,
            max_model_len=self.max_model_len,
            encoder_decoder=self.encoder_decoder,
        )

    def _check_params(self, p: SamplingParams) -> None:
        check_sampling(p, vocab_size=self.vocab_size)

    # ---- batch plumbing ----------------------------------------------------------------------
    def _row_of(self, request_id: str) -> int | None:
        if self.slots is not None:
            return self.slots.row_of(request_id)
        if self.batch is None:
            return None
        for i, seq in enumerate(self.batch.seqs):
            if seq.request_id == request_id:
                return i
        return None

    def _drop(self, rows: set[int]) -> None:
        batch = self.batch
        if batch is None or not rows:
            return
        keep = [i for i in range(batch.rows) if i not in rows]
        if not keep:
            self.batch = None
        else:
            batch.select(keep)

    def _admit(self) -> list[Seq]:
        """The waiting requests to prefill now: as many as there are free slots, unless they
        are held (see the module docstring: replacements on their way, or arrivals that
        ``prefill_delay_steps`` lets wait for others while rows decode)."""
        running = self._running()
        free = self.max_num_seqs - running
        if self._hold_s() > 0:
            return []
        if self.waiting and free and running and self.prefill_delay_steps:
            oldest = self._arrived.get(next(iter(self.waiting)), (self._steps, 0.0))[0]
            enough = len(self.waiting) >= min(free, max(2, running // 4))
            if not enough and self._steps - oldest < self.prefill_delay_steps:
                return []
        admitted: list[Seq] = []
        while self.waiting and len(admitted) < free:
            seq = self.waiting.popitem(last=False)[1]
            self._arrived.pop(seq.request_id, None)
            admitted.append(seq)
        return admitted

    def _hold_s(self) -> float:
        """How much longer the waiting requests are held for the replacements of recent
        finishes (0: not held)."""
        if not self.waiting or not self._finished:
            return 0.0
        now = self._now()
        horizon = now - self.prefill_hold_s
        while self._finished and self._finished[0] <= horizon:
            self._finished.popleft()  # too old: its replacement is not coming soon
        free = self.max_num_seqs - self._running()
        if not self._finished or len(self.waiting) >= free:
            return 0.0
        oldest = self._arrived.get(next(iter(self.waiting)), (0, now))[1]
        # until the oldest arrival has waited its bound, or the newest finish is too old
        return max(0.0, min(oldest, self._finished[-1]) + self.prefill_hold_s - now)

    @staticmethod
    def _groups(seqs: list[Seq]) -> list[list[Seq]]:
        """Split the prefill into passes of at most ``PREFILL_TOKEN_BUDGET`` padded tokens."""
        groups: list[list[Seq]] = []
        current: list[Seq] = []
        longest = 0
        for seq in seqs:
            n = len(seq.prompt)
            if current and max(longest, n) * (len(current) + 1) > PREFILL_TOKEN_BUDGET:
                groups.append(current)
                current, longest = [], 0
            current.append(seq)
            longest = max(longest, n)
        if current:
            groups.append(current)
        return groups

    # ---- forward passes ----------------------------------------------------------------------
    def _decode(self, batch: Batch) -> torch.Tensor:
        """One token for every running row; returns ``[rows, vocab]`` logits."""
        ids = batch.last.unsqueeze(1)
        mask = torch.cat([batch.mask, batch.mask.new_ones((batch.rows, 1))], dim=1)
        if self.encoder_decoder:
            assert batch.enc_mask is not None
            out = self.model(
                encoder_outputs=self._encoder_placeholder(batch.enc_mask),
                attention_mask=batch.enc_mask,
                decoder_input_ids=ids,
                decoder_attention_mask=mask,
                **{self._cache_kw: batch.cache},
                use_cache=True,
            )
        else:
            assert batch.positions is not None
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=batch.positions.unsqueeze(1),
                **{self._cache_kw: batch.cache},
                use_cache=True,
            )
            batch.positions = batch.positions + 1
        batch.cache = output_cache(out)
        batch.mask = mask
        return out.logits[:, -1, :]

    def _decode_slots(self, out: StepOutput) -> None:
        """One token for every slot in use (see :mod:`.slots`), emitted; finished rows leave."""
        slots = self.slots
        assert slots is not None
        inputs = slots.prepare_decode()
        if self._cache_kw != "past_key_values":  # transformers 5 takes it as "cache"
            inputs[self._cache_kw] = inputs.pop("past_key_values")
        if self.encoder_decoder:
            inputs["encoder_outputs"] = self._encoder_placeholder(inputs["attention_mask"])
        logits = self._forward(inputs).logits[:, -1, :]
        slots.advance(self._max_position)
        active = slots.active()
        holes = len(active) < logits.shape[0]  # free slots below hi, or a static bucket's pad
        idx = torch.tensor(active, dtype=torch.long, device=self.device) if holes else None
        if idx is not None:
            logits = logits.index_select(0, idx)
        seqs = [seq for seq in slots.seqs if seq is not None]
        sel = select_tokens(logits, seqs, eos_token_ids=self.eos_token_ids, generator=self._rng)
        done = self._emit(seqs, sel, out)
        tokens = torch.tensor(sel.tokens, dtype=torch.long, device=self.device)
        if idx is not None:
            slots.last.index_copy_(0, idx, tokens)
        else:
            slots.last[: slots.hi] = tokens
        if done:
            slots.leave({active[j] for j in done})

    # ---- --compile ---------------------------------------------------------------------------
    def _compile(self) -> None:
        """Compile the decoding step (slots only) and run it once on a dummy request, so that
        a compile failure shows at load: a warning, then eager mode (see :mod:`.compiled`)."""
        if self.slots is None:
            log.warning("--compile needs the slot KV cache; decoding runs eagerly")
            return
        shapes = static_shapes(self.max_num_seqs, self.max_model_len)
        if not self._forward.compile(self.device, shapes=shapes):
            return
        try:  # every bucket of rows once, so that no request waits for a compile later
            for size in buckets(self.max_num_seqs):
                for i in range(size):
                    request = GenerateRequest(prompt_token_ids=[0, 0], params=_WARM_UP)
                    self.add(f"__warmup_{size}_{i}__", request)
                while self.has_work():
                    for _rid, item in self.step():
                        if isinstance(item, BaseException):
                            raise item
            self._finished.clear()  # no client waits to replace a warm-up request
        except Exception as exc:  # noqa: BLE001 - never fail the load over an optimisation
            self._forward.disable(exc)
            self.reset()

    def _eager(self) -> None:
        """Compiling failed: decode over the windowed view again (cheaper without a graph)."""
        self._static = False
        if self.slots is not None:
            self.slots.static = False

    def _new_slots(self) -> SlotBatch:
        return SlotBatch(
            slots=self.max_num_seqs,
            max_model_len=self.max_model_len,
            encoder_decoder=self.encoder_decoder,
            device=self.device,
            static=self._static,
        )

    def _encoder_placeholder(self, enc_mask: torch.Tensor) -> BaseModelOutput:
        """Encoder states are only read when the cross-attention cache is filled (at prefill);
        later steps need a tensor of the right shape, not the values."""
        d_model = int(self.config.d_model)
        dtype = self.model.dtype
        hidden = torch.zeros((1, 1, d_model), dtype=dtype, device=self.device)
        return BaseModelOutput(
            last_hidden_state=hidden.expand(enc_mask.shape[0], enc_mask.shape[1], d_model)
        )

    def _prefill(self, seqs: list[Seq]) -> tuple[Batch, torch.Tensor]:
        """Run the prompts of ``seqs`` and return their batch and next-token logits."""
        n = len(seqs)
        width = max(len(s.prompt) for s in seqs)
        ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, seq in enumerate(seqs):
            k = len(seq.prompt)
            if self.encoder_decoder:  # right-padded encoder input
                ids[i, :k] = torch.tensor(seq.prompt)
                mask[i, :k] = 1
            else:  # left-padded: the newest token of every row in the last column
                ids[i, width - k :] = torch.tensor(seq.prompt)
                mask[i, width - k :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        cache = new_cache(self.config, self.encoder_decoder)
        if self.encoder_decoder:
            encoder = self.model.get_encoder()
            enc = encoder(input_ids=ids, attention_mask=mask)
            start = torch.full((n, 1), self.decoder_start, dtype=torch.long, device=self.device)
            out = self.model(
                encoder_outputs=enc,
                attention_mask=mask,
                decoder_input_ids=start,
                **{self._cache_kw: cache},
                use_cache=True,
            )
            batch = Batch(
                seqs=list(seqs),
                cache=output_cache(out),
                mask=torch.ones((n, 1), dtype=torch.long, device=self.device),
                last=start[:, 0],
                enc_mask=mask,
            )
        else:
            positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
            extra = {"logits_to_keep": 1} if self._logits_to_keep else {}
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                **{self._cache_kw: cache},
                use_cache=True,
                **extra,
            )
            lengths = torch.tensor([len(s.prompt) for s in seqs], dtype=torch.long)
            batch = Batch(
                seqs=list(seqs),
                cache=output_cache(out),
                mask=mask,
                last=ids[:, -1],
                positions=lengths.to(self.device),
            )
        return batch, out.logits[:, -1, :]

    def _prefill_group(self, group: list[Seq], out: StepOutput) -> None:
        """Prefill ``group`` and merge it into the running batch; a group that raises is
        retried one request at a time, so only the requests that fail alone fail."""
        try:
            batch, logits = self._prefill(group)
        except Exception as exc:  # noqa: BLE001 - isolate the culprit
            if len(group) == 1:
                out.append((group[0].request_id, exc))
                return
            del exc
            for seq in group:
                self._prefill_group([seq], out)
            return
        self._finish_step(batch, logits, out)
        if batch.rows == 0:
            return
        if self.slots is not None:
            self.slots.join(batch)
        elif self.batch is None:
            self.batch = batch
        else:
            self.batch.merge(batch)

    # ---- token choice and bookkeeping -----------------------------------------------------
    def _finish_step(self, batch: Batch, logits: torch.Tensor, out: StepOutput) -> None:
        """Choose each row's token, emit its delta, and drop the rows that finished."""
        sel = select_tokens(
            logits, batch.seqs, eos_token_ids=self.eos_token_ids, generator=self._rng
        )
        done = self._emit(batch.seqs, sel, out)
        batch.last = torch.tensor(sel.tokens, dtype=torch.long, device=self.device)
        if not done:
            return
        keep = [i for i in range(batch.rows) if i not in done]
        if batch is self.batch:
            self._drop(done)
        elif keep:
            batch.select(keep)
        else:
            batch.seqs = []

    def _emit(self, seqs: list[Seq], sel: Selection, out: StepOutput) -> set[int]:
        done: set[int] = set()
        for i, seq in enumerate(seqs):
            token = sel.tokens[i]
            seq.output.append(token)
            reason = self._finish_reason(seq, token)
            lp = sel.logprobs[i]
            top = sel.top_logprobs[i]
            delta = TokenDelta(
                token_ids=[token],
                logprobs=[lp] if lp is not None else None,
                top_logprobs=[top] if top is not None else None,
                finish_reason=reason,
                prompt_tokens=None if seq.started else len(seq.prompt),
            )
            seq.started = True
            out.append((seq.request_id, delta))
            if reason is not None:
                done.add(i)
        if done and self.prefill_hold_s:
            now = self._now()
            self._finished.extend(now for _ in done)
            while len(self._finished) > self.max_num_seqs:  # at most a batch is replaced
                self._finished.popleft()
        return done

    def _finish_reason(self, seq: Seq, token: int) -> str | None:
        p = seq.params
        n = len(seq.output)
        if n >= p.min_tokens and token in stop_ids(p, self.eos_token_ids):
            return "stop"
        if n >= p.max_tokens:
            return "length"
        used = n if self.encoder_decoder else n + len(seq.prompt)
        if used >= self.max_model_len:
            return "length"
        return None


def _model_device(model: Any) -> torch.device | None:
    """The device of the model's weights (``None`` for a model without parameters)."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    for param in model.parameters():
        return torch.device(param.device)
    return None
