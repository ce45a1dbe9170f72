"""OpenAI API routes: completions, chat completions, embeddings, models.

Every route is served under ``/openai/v1`` (KServe's prefix) and ``/v1``, except the model
listing, which ``routes_v1`` already serves under ``/v1`` (one merged body). Each request is
parsed and validated - including whether this model supports the endpoint at all - before it
reaches the engine. Streams are SSE; a failure after the first byte is an in-band error event.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import msgspec
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from steadyserve.engine.protocol import EngineClient
from steadyserve.engine.tokenizer import LoadedTokenizer
from steadyserve.errors import InvalidInput, UnsupportedEndpoint
from steadyserve.protocol import openai as oa
from steadyserve.protocol import openai_response as resp
from steadyserve.protocol import openai_template as ot
from steadyserve.protocol.openai_schema import (
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    parse,
)
from steadyserve.transport import sse
from steadyserve.transport.common import cancel_on_disconnect, read_json, request_timeout
from steadyserve.transport.context import ServerContext
from steadyserve.transport.openai_serving import (
    Event,
    SeqSpec,
    apply_chat_template,
    encode,
    error_payload,
    has_chat_template,
    log_prompt,
    merge,
    run_sequence,
    token_bytes,
    token_text,
)
from steadyserve.transport.routes_models import openai_model_card, openai_model_list
from steadyserve.types import Capability, EmbedRequest, GenerateRequest, ModelInfo, SamplingParams

PREFIXES = ("/openai/v1", "/v1")
TEMPLATE_TIME_LIMIT_S = 2.0
TEMPLATE_MAX_CHARS = 1_000_000


class _Job:
    """A validated generation request: its sequences and how to answer."""

    def __init__(
        self,
        *,
        chat: bool,
        model: str,
        engine: EngineClient,
        tokenizer: Any | None,
        seqs: list[SeqSpec],
        stops: list[str],
        stream: bool,
        include_usage: bool,
        logprobs: int | None,
        echo: list[str] | None,
        timeout_s: float | None,
        n: int,
        byte_level: bool = False,
    ) -> None:
        self.chat = chat
        self.byte_level = byte_level
        self.n = n
        self.model = model
        self.engine = engine
        self.tokenizer = tokenizer
        self.seqs = seqs
        self.stops = stops
        self.stream = stream
        self.include_usage = include_usage
        self.logprobs = logprobs
        self.echo = echo
        self.timeout_s = timeout_s
        self.rid = resp.new_id("chatcmpl" if chat else "cmpl")
        self.created = int(time.time())

    def events(self) -> AsyncGenerator[Event, None]:
        return merge(
            [
                run_sequence(
                    self.engine, s, self.tokenizer, self.stops, self.timeout_s, self.stream
                )
                for s in self.seqs
            ]
        )


async def _resolve_prompts(
    prompts: list[str | list[int]], loaded: LoadedTokenizer | None, info: ModelInfo, *, echo: bool
) -> tuple[list[list[int] | str], list[int], list[str] | None]:
    """Each prompt as token ids (as text for a model without a tokenizer), its token count, and
    the text to echo. A text too long to possibly fit is refused before it is tokenized."""
    echoed: list[str] | None = [] if echo else None
    if loaded is None:
        for prompt in prompts:
            if not isinstance(prompt, str):
                raise InvalidInput(
                    f"model {info.name} has no tokenizer: send the prompt as text", param="prompt"
                )
        if echoed is not None:
            echoed = [str(p) for p in prompts]
        return list(prompts), [0] * len(prompts), echoed
    texts = [p for p in prompts if isinstance(p, str)]
    for text in texts:
        oa.check_prompt_chars(text, info, loaded.max_token_chars, param="prompt")
    encoded = iter(await encode(loaded.tokenizer, texts) if texts else [])
    resolved: list[list[int] | str] = []
    lens: list[int] = []
    for prompt in prompts:
        if isinstance(prompt, str):
            ids = next(encoded)
        else:
            oa.check_token_ids(prompt, info.vocab_size, "prompt")
            ids = list(prompt)
        resolved.append(ids)
        lens.append(len(ids))
        if echoed is not None:
            echoed.append(
                prompt
                if isinstance(prompt, str)
                else await asyncio.to_thread(loaded.tokenizer.decode, ids)
            )
    return resolved, lens, echoed


def _choice_seed(seed: int, index: int) -> int:
    """Choice ``index``'s seed: ``seed + index``, wrapped into the signed 64-bit range."""
    return (seed + index + 2**63) % 2**64 - 2**63


def _sequences(
    prompts: list[list[int] | str],
    prompt_lens: list[int],
    base: SamplingParams,
    max_tokens: list[int],
    n: int,
    context: bool,
) -> list[SeqSpec]:
    seqs = []
    for p, prompt in enumerate(prompts):
        for i in range(n):
            index = p * n + i
            params = msgspec.structs.replace(
                base,
                max_tokens=max_tokens[p],
                seed=None if base.seed is None else _choice_seed(base.seed, index),
            )
            if isinstance(prompt, str):
                req = GenerateRequest(prompt=prompt, params=params)
                ctx_ids: list[int] = []
            else:
                req = GenerateRequest(prompt_token_ids=list(prompt), params=params)
                ctx_ids = list(prompt) if context else []
            seqs.append(
                SeqSpec(index=index, request=req, prompt_tokens=prompt_lens[p], context_ids=ctx_ids)
            )
    return seqs


def build_router(ctx: ServerContext) -> APIRouter:
    """The OpenAI routes of one server context."""
    router = APIRouter()
    registry = ctx.registry

    def model_and_info(request: Request, name: str) -> tuple[EngineClient, ModelInfo]:
        engine = registry.get(name)
        if ctx.metrics is not None:  # the body names the model: label the request's metrics
            ctx.metrics.label_model(request, name)
        return engine, engine.require_ready_info()

    # ---- completions -------------------------------------------------------------------------
    async def completions(request: Request) -> Response:
        req = parse(CompletionRequest, await read_json(request))
        engine, info = model_and_info(request, req.model)
        plan = oa.plan_completion(req, info)
        prompts = plan.prompts
        log_prompt(ctx, "completions", prompts[0] if len(prompts) == 1 else prompts)
        timeout_s = request_timeout(request)
        loaded = await engine.tokenizer()
        tokenizer = loaded.tokenizer if loaded is not None else None
        resolved, lens, echo = await _resolve_prompts(prompts, loaded, info, echo=req.echo)
        max_tokens = [
            plan.budget(n_tok, info, default=oa.DEFAULT_COMPLETION_TOKENS) for n_tok in lens
        ]
        seqs = _sequences(
            resolved, lens, plan.params, max_tokens, req.n, context=not info.is_encoder_decoder
        )
        job = _Job(
            chat=False,
            model=req.model,
            engine=engine,
            tokenizer=tokenizer,
            seqs=seqs,
            stops=plan.stops,
            stream=req.stream,
            include_usage=bool(req.stream_options and req.stream_options.include_usage),
            logprobs=plan.logprobs,
            echo=echo,
            timeout_s=timeout_s,
            n=req.n,
            byte_level=loaded is not None and loaded.byte_level,
        )
        return await _answer(request, job)

    # ---- chat ----------------------------------------------------------------------------------
    async def chat_completions(request: Request) -> Response:
        req = parse(ChatRequest, await read_json(request))
        engine, info = model_and_info(request, req.model)
        plan = oa.plan_chat(req, info, ctx.settings.allow_request_chat_template)
        messages = plan.messages
        timeout_s = request_timeout(request)
        loaded = await engine.tokenizer()
        if loaded is None:
            raise UnsupportedEndpoint(
                f"model {info.name} does not support chat completions (no tokenizer); "
                f"it supports: {oa.supported(info)}",
                param="model",
            )
        tokenizer = loaded.tokenizer
        kwargs = oa.template_kwargs(req)
        if req.chat_template is not None:
            variables = {
                **kwargs,
                "messages": messages,
                "add_generation_prompt": req.add_generation_prompt,
                "bos_token": str(getattr(tokenizer, "bos_token", "") or ""),
                "eos_token": str(getattr(tokenizer, "eos_token", "") or ""),
            }
            text = await asyncio.to_thread(
                ot.render_template_sandboxed,
                req.chat_template,
                variables,
                time_limit_s=TEMPLATE_TIME_LIMIT_S,
                max_chars=TEMPLATE_MAX_CHARS,
            )
        else:
            if not has_chat_template(tokenizer):
                raise UnsupportedEndpoint(
                    f"model {info.name} does not support chat completions (no chat template); "
                    f"it supports: {oa.supported(info)}",
                    param="model",
                )
            text = await apply_chat_template(tokenizer, messages, req.add_generation_prompt, kwargs)
        log_prompt(ctx, "chat", text)
        oa.check_prompt_chars(
            text, info, loaded.max_token_chars, param="messages", what="the rendered chat prompt"
        )
        ids = (await encode(tokenizer, [text], add_special_tokens=False))[0]
        if not ids:
            raise InvalidInput("the rendered chat prompt is empty", param="messages")
        max_tokens = plan.budget(len(ids), info, default=None)
        seqs = _sequences([ids], [len(ids)], plan.params, [max_tokens], req.n, context=True)
        job = _Job(
            chat=True,
            model=req.model,
            engine=engine,
            tokenizer=tokenizer,
            seqs=seqs,
            stops=plan.stops,
            stream=req.stream,
            include_usage=bool(req.stream_options and req.stream_options.include_usage),
            logprobs=plan.logprobs,
            echo=None,
            timeout_s=timeout_s,
            n=req.n,
            byte_level=loaded.byte_level,
        )
        return await _answer(request, job)

    # ---- embeddings ----------------------------------------------------------------------------
    async def embeddings(request: Request) -> Response:
        req = parse(EmbeddingRequest, await read_json(request))
        engine, info = model_and_info(request, req.model)
        oa.require(info, Capability.EMBED, "embeddings")
        texts, token_ids = oa.embedding_inputs(req.input, info)
        known_dim = info.extra.get("embedding_dim")
        if req.dimensions is not None and (
            req.dimensions < 1 or (known_dim is not None and req.dimensions != known_dim)
        ):
            raise InvalidInput(
                f"'dimensions' is not supported by model {info.name}"
                + (f" (its embeddings have {known_dim})" if known_dim else ""),
                param="dimensions",
            )
        counted = 0
        loaded = await engine.tokenizer()
        if token_ids is not None:
            counted = sum(len(t) for t in token_ids)
            lengths = [len(t) for t in token_ids]
        elif loaded is not None and texts is not None:
            for i, text in enumerate(texts):
                oa.check_prompt_chars(
                    text, info, loaded.max_token_chars, param="input", what=f"input[{i}]"
                )
            lengths = [len(t) for t in await encode(loaded.tokenizer, texts)]
            counted = sum(lengths)
        else:
            lengths = []
        if info.max_model_len is not None:
            for i, n_tok in enumerate(lengths):
                if n_tok > info.max_model_len:
                    raise InvalidInput(
                        f"input[{i}] has {n_tok} tokens; this model's limit is "
                        f"{info.max_model_len}",
                        param="input",
                    )
        work = engine.embed(
            EmbedRequest(texts=texts, token_ids=token_ids), timeout_s=request_timeout(request)
        )
        result = await cancel_on_disconnect(request, work)
        vectors = result.embeddings
        if req.dimensions is not None and vectors and req.dimensions != len(vectors[0]):
            raise InvalidInput(
                f"'dimensions' must equal the model's embedding size ({len(vectors[0])})",
                param="dimensions",
            )
        body = resp.embedding_response(
            req.model, vectors, req.encoding_format, result.prompt_tokens or counted
        )
        return JSONResponse(body)

    # ---- models --------------------------------------------------------------------------------
    async def list_models() -> dict[str, Any]:
        return openai_model_list(ctx)

    async def get_model(name: str) -> dict[str, Any]:
        registry.get(name)
        return openai_model_card(ctx, name)

    for prefix in PREFIXES:
        router.add_api_route(f"{prefix}/completions", completions, methods=["POST"])
        router.add_api_route(f"{prefix}/chat/completions", chat_completions, methods=["POST"])
        router.add_api_route(f"{prefix}/embeddings", embeddings, methods=["POST"])
    router.add_api_route("/openai/v1/models", list_models, methods=["GET"])
    router.add_api_route("/openai/v1/models/{name:path}", get_model, methods=["GET"])
    return router


# ---- answering -------------------------------------------------------------------------------


async def _answer(request: Request, job: _Job) -> Response:
    if job.stream:
        return await _stream(request, job)
    return JSONResponse(await cancel_on_disconnect(request, _collect(job)))


async def _collect(job: _Job) -> dict[str, Any]:
    choices = {
        s.index: resp.ChoiceState(index=s.index, prompt_tokens=s.prompt_tokens) for s in job.seqs
    }
    async with contextlib.aclosing(job.events()) as events:
        async for ev in events:
            c = choices[ev.index]
            _accumulate(job, c, ev)
    ordered = [choices[i] for i in sorted(choices)]
    if job.echo is not None:
        for c in ordered:
            prefix = job.echo[c.index // job.n]
            c.text = prefix + c.text
            c.text_offset = len(prefix)
    prompt_tokens = _prompt_tokens(job, ordered)
    build = resp.chat_response if job.chat else resp.completion_response
    return build(job.rid, job.created, job.model, ordered, prompt_tokens, job.logprobs is not None)


def _accumulate(job: _Job, c: resp.ChoiceState, ev: Event) -> None:
    c.text += ev.text
    c.completion_tokens += len(ev.token_ids)
    if ev.prompt_tokens:
        c.prompt_tokens = ev.prompt_tokens if not c.prompt_tokens else c.prompt_tokens
    if ev.finish_reason is not None:
        c.finish_reason = ev.finish_reason
    if job.logprobs is not None:
        c.logprobs += _positions(job, ev)


def _positions(job: _Job, ev: Event) -> list[resp.PositionLogprobs]:
    """The logprobs of an event's tokens: each chosen token and all its alternatives (by id,
    most likely first - several ids may share a text such as a lone ``\ufffd``)."""
    lps = ev.logprobs or [0.0] * len(ev.token_ids)
    tops = ev.top_logprobs or [{} for _ in ev.token_ids]
    return [
        resp.PositionLogprobs(
            _token_logprob(job, token, lp),
            [_token_logprob(job, t, alt) for t, alt in sorted(top.items(), key=lambda kv: -kv[1])],
        )
        for token, lp, top in zip(ev.token_ids, lps, tops, strict=False)
    ]


def _token_logprob(job: _Job, token_id: int, logprob: float) -> resp.TokenLogprob:
    text = token_text(job.tokenizer, token_id)
    return resp.TokenLogprob(
        text, logprob, token_bytes(job.tokenizer, token_id, text, job.byte_level)
    )


def _prompt_tokens(job: _Job, choices: list[resp.ChoiceState]) -> int:
    """Each prompt counted once (not once per ``n``)."""
    return sum(c.prompt_tokens for c in choices if c.index % job.n == 0)


async def _stream(request: Request, job: _Job) -> Response:
    events = job.events()
    # The first event is awaited before any byte is sent: admission errors (429/503), an
    # immediate model failure or a deadline are then ordinary HTTP errors with their status.
    try:
        first = await cancel_on_disconnect(request, anext(events))
    except BaseException:
        await events.aclose()
        raise
    return sse.EventStreamResponse(_sse_body(job, first, events), on_close=events.aclose)


async def _sse_body(
    job: _Job, first: Event, events: AsyncGenerator[Event, None]
) -> AsyncIterator[bytes]:
    prompt_tokens = {s.index: s.prompt_tokens for s in job.seqs}
    completion_tokens = dict.fromkeys(prompt_tokens, 0)
    usage_extra = {"usage": None} if job.include_usage else {}
    obj = "chat.completion.chunk" if job.chat else "text_completion"
    # where each choice's next token starts in its text (after an echoed prompt), as in _collect
    offsets = {
        s.index: len(job.echo[s.index // job.n]) if job.echo is not None else 0 for s in job.seqs
    }

    def chunk(index: int, text: str, finish: str | None, ev: Event | None) -> bytes:
        lp = None
        if job.logprobs is not None and ev is not None and ev.token_ids:
            positions = _positions(job, ev)
            if job.chat:
                lp = resp.chat_logprobs_body(positions)
            else:
                lp = resp.completion_logprobs_body(positions, offsets[index])
                offsets[index] += resp.logprobs_text_length(positions)
        if job.chat:
            delta = {"content": text} if text or finish is None else {}
            body = resp.chat_chunk(job.rid, job.created, job.model, index, delta, finish, lp)
        else:
            body = resp.completion_chunk(job.rid, job.created, job.model, index, text, finish, lp)
        return sse.event({**body, **usage_extra})

    try:
        for s in job.seqs:
            if job.chat:
                yield sse.event(
                    {
                        **resp.chat_chunk(
                            job.rid,
                            job.created,
                            job.model,
                            s.index,
                            {"role": "assistant", "content": ""},
                            None,
                        ),
                        **usage_extra,
                    }
                )
            elif job.echo is not None:
                yield chunk(s.index, job.echo[s.index // job.n], None, None)
        ev: Event | None = first
        while ev is not None:
            completion_tokens[ev.index] += len(ev.token_ids)
            if ev.prompt_tokens and not prompt_tokens[ev.index]:
                prompt_tokens[ev.index] = ev.prompt_tokens
            if ev.text or ev.finish_reason is not None or job.logprobs is not None:
                yield chunk(ev.index, ev.text, ev.finish_reason, ev)
            ev = await anext(events, None)
        if job.include_usage:
            prompt_total = sum(v for k, v in prompt_tokens.items() if k % job.n == 0)
            yield sse.event(
                resp.usage_chunk(
                    job.rid,
                    job.created,
                    job.model,
                    obj,
                    prompt_total,
                    sum(completion_tokens.values()),
                )
            )
        yield sse.DONE
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        yield sse.event(error_payload(exc))
