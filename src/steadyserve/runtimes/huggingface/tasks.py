"""The six Hugging Face tasks as batched functions: texts in, one output per text.

Every function tokenizes the whole batch with padding and runs ONE forward pass (or one batched
``generate``). Inputs are already plain strings (see :func:`texts_from_instances`); request
``parameters`` are checked here and a bad one raises :class:`~steadyserve.errors.InvalidInput`.

=============================  ================================================  =========================================
task                           V1 prediction per instance                        parameters
=============================  ================================================  =========================================
``text_generation``            the generated continuation (prompt not repeated)  ``max_new_tokens`` (default 32), greedy
``text2text_generation``       the generated text                                ``max_new_tokens`` (default 32), greedy
``fill_mask``                  top-k ``[{"token_str", "score", "sequence"}]``    ``top_k`` (default 5); exactly one mask
``sequence_classification``    the label string                                  ``return_scores``: ``{"label", "score"}``;
                                                                                 ``return_all_scores``: also ``"all_scores"``
                                                                                 ``{label: score}``
``token_classification``       ``[{"entity", "score", "index", "word",           ``ignore_labels`` (default ``["O"]``)
                               "start", "end"}]`` per token (not aggregated)
``text_embedding``             the mean-pooled vector, L2-normalised             ``normalize`` (default true)
=============================  ================================================  =========================================

Too-long inputs are truncated to ``max_model_len`` for classification, fill-mask and embeddings;
for generation, prompt + ``max_new_tokens`` beyond ``max_model_len`` is an InvalidInput.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from steadyserve.errors import InvalidInput, ModelError

MAX_TOP_K = 100
DEFAULT_MAX_NEW_TOKENS = 32
DEFAULT_TOP_K = 5


@dataclasses.dataclass
class TaskContext:
    """What a task function needs: the loaded model, its tokenizer and limits."""

    model: Any
    tokenizer: Any
    device: str
    max_model_len: int
    pad_token_id: int | None = None
    eos_token_ids: list[int] = dataclasses.field(default_factory=list)


def texts_from_instances(instances: list[Any]) -> list[str]:
    """V1 instances (strings or ``{"text": str}``) and V2 rows (str) → strings."""
    if not isinstance(instances, list) or not instances:
        raise InvalidInput("instances must be a non-empty list of strings")
    texts: list[str] = []
    for i, item in enumerate(instances):
        if isinstance(item, dict) and set(item) == {"text"}:
            item = item["text"]
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput(f"instance {i} is not valid UTF-8") from None
        if not isinstance(item, str):
            raise InvalidInput(
                f'instance {i} must be a string or {{"text": string}}, got {type(item).__name__}'
            )
        if not item.strip():
            # an empty text has no tokens to run: refused whatever it is batched with (a padded
            # batch would otherwise answer for it with a score of padding)
            raise InvalidInput(f"instance {i} is an empty string; every input needs some text")
        texts.append(item)
    return texts


#: request parameters that belong to the transport (V2's binary extension), not to a task
TRANSPORT_PARAMETERS = frozenset({"binary_data_output"})

#: the parameters each generation task honours; any other (``temperature``, ``top_p``, a
#: tritonclient ``sequence_id``...) is refused with a 400 naming it, never silently ignored
GENERATION_PARAMETERS = frozenset({"max_new_tokens"})


def check_generation_parameters(task: str, parameters: dict[str, Any]) -> None:
    """400 for a parameter a generation task does not honour (greedy decoding only)."""
    for name in parameters:
        if name not in GENERATION_PARAMETERS and name not in TRANSPORT_PARAMETERS:
            raise InvalidInput(
                f"parameter '{str(name)[:60]}' is not supported by {task} over V1/V2 "
                f"(greedy decoding; supported: {', '.join(sorted(GENERATION_PARAMETERS))}); "
                "use the OpenAI completions endpoint for sampling",
                param=str(name)[:60],
            )


def _param_int(parameters: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = parameters.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidInput(f"parameter {name} must be an integer in [{lo}, {hi}]", param=name)
    return value


def _param_bool(parameters: dict[str, Any], name: str, default: bool) -> bool:
    value = parameters.get(name, default)
    if not isinstance(value, bool):
        raise InvalidInput(f"parameter {name} must be true or false", param=name)
    return value


def _encode(ctx: TaskContext, texts: list[str], *, truncate: bool, **kwargs: Any) -> Any:
    enc = ctx.tokenizer(
        texts,
        padding=True,
        truncation=truncate,
        max_length=ctx.max_model_len if truncate else None,
        return_tensors="pt",
        **kwargs,
    )
    return enc


def _to_device(enc: Any, device: str) -> dict[str, Any]:
    return {k: v.to(device) for k, v in enc.items() if hasattr(v, "to")}


# ---- generation -------------------------------------------------------------------------------


def generate_texts(ctx: TaskContext, texts: list[str], parameters: dict[str, Any]) -> list[str]:
    """Greedy batched ``generate()``; returns only the new text of each input."""
    check_generation_parameters("text generation", parameters)
    max_new = _param_int(
        parameters, "max_new_tokens", DEFAULT_MAX_NEW_TOKENS, 1, max(1, ctx.max_model_len)
    )
    is_enc_dec = bool(getattr(ctx.model.config, "is_encoder_decoder", False))
    tokenizer = ctx.tokenizer
    if not is_enc_dec:
        tokenizer.padding_side = "left"  # decoder-only: prompts end where generation starts
    enc = _encode(ctx, texts, truncate=False)
    lengths = enc["attention_mask"].sum(dim=1).tolist()
    for i, n in enumerate(lengths):
        if n == 0:
            raise InvalidInput(f"instance {i}: the prompt is empty")
        total = n + (0 if is_enc_dec else max_new)
        limit = ctx.max_model_len
        if n > limit or total > limit:
            raise InvalidInput(
                f"instance {i}: {n} prompt tokens"
                + ("" if is_enc_dec else f" + max_new_tokens {max_new}")
                + f" exceeds the model's limit of {limit} tokens"
            )
    inputs = _to_device(enc, ctx.device)
    out = ctx.model.generate(
        **inputs,
        max_new_tokens=max_new,
        do_sample=False,
        num_beams=1,
        pad_token_id=ctx.pad_token_id,
        eos_token_id=ctx.eos_token_ids or None,
    )
    if not is_enc_dec:
        out = out[:, inputs["input_ids"].shape[1] :]
    return [str(t) for t in tokenizer.batch_decode(out, skip_special_tokens=True)]


# ---- fill-mask --------------------------------------------------------------------------------


def fill_mask(
    ctx: TaskContext, texts: list[str], parameters: dict[str, Any]
) -> list[list[dict[str, Any]]]:
    """Top-k fills of the (single) mask token of each input."""
    import torch

    tokenizer = ctx.tokenizer
    mask_id = tokenizer.mask_token_id
    vocab = int(ctx.model.config.vocab_size)
    top_k = _param_int(parameters, "top_k", DEFAULT_TOP_K, 1, min(MAX_TOP_K, vocab))
    mask = str(tokenizer.mask_token)
    for i, text in enumerate(texts):
        if text.count(mask) != 1:
            raise InvalidInput(
                f"instance {i} must contain the mask token {mask} exactly once "
                f"(found {text.count(mask)})"
            )
    enc = _encode(ctx, texts, truncate=True)
    ids = enc["input_ids"]
    positions = (ids == mask_id).nonzero()
    if positions.shape[0] != len(texts):
        raise InvalidInput(
            f"the mask token {mask} was cut off by truncation to {ctx.max_model_len} tokens"
        )
    logits = ctx.model(**_to_device(enc, ctx.device)).logits
    rows = positions[:, 0].to(logits.device)
    cols = positions[:, 1].to(logits.device)
    probs = torch.softmax(logits[rows, cols].float(), dim=-1)
    scores, tokens = probs.topk(top_k, dim=-1)
    results: list[list[dict[str, Any]]] = []
    for b in range(len(texts)):
        fills = []
        seq = ids[b][enc["attention_mask"][b].bool()].clone()
        pos = int(positions[b, 1])
        for score, token in zip(scores[b].tolist(), tokens[b].tolist(), strict=True):
            seq[pos] = token
            fills.append(
                {
                    "token_str": str(tokenizer.decode([token])).strip(),
                    "token": int(token),
                    "score": float(score),
                    "sequence": str(tokenizer.decode(seq, skip_special_tokens=True)),
                }
            )
        results.append(fills)
    return results


# ---- classification ---------------------------------------------------------------------------


def _labels(model: Any) -> dict[int, str]:
    id2label = getattr(model.config, "id2label", None) or {}
    return {int(k): str(v) for k, v in id2label.items()}


def classify_sequences(ctx: TaskContext, texts: list[str], parameters: dict[str, Any]) -> list[Any]:
    """The label of each input (softmax; sigmoid for multi-label models)."""
    import torch

    all_scores = _param_bool(parameters, "return_all_scores", False)
    with_score = _param_bool(parameters, "return_scores", False) or all_scores
    enc = _encode(ctx, texts, truncate=True)
    logits = ctx.model(**_to_device(enc, ctx.device)).logits.float()
    if getattr(ctx.model.config, "problem_type", None) == "multi_label_classification":
        probs = torch.sigmoid(logits)
    else:
        probs = torch.softmax(logits, dim=-1)
    labels = _labels(ctx.model)
    out: list[Any] = []
    for row in probs.cpu().tolist():
        best = max(range(len(row)), key=row.__getitem__)
        label = labels.get(best, f"LABEL_{best}")
        if not with_score:
            out.append(label)
            continue
        item: dict[str, Any] = {"label": label, "score": float(row[best])}
        if all_scores:
            item["all_scores"] = {labels.get(i, f"LABEL_{i}"): float(s) for i, s in enumerate(row)}
        out.append(item)
    return out


def classify_tokens(
    ctx: TaskContext, texts: list[str], parameters: dict[str, Any]
) -> list[list[dict[str, Any]]]:
    """Per-token labels (special tokens and ``ignore_labels`` left out), with char offsets."""
    import torch

    ignore = parameters.get("ignore_labels", ["O"])
    if not isinstance(ignore, list) or not all(isinstance(x, str) for x in ignore):
        raise InvalidInput(
            "parameter ignore_labels must be a list of strings", param="ignore_labels"
        )
    enc = _encode(ctx, texts, truncate=True, return_offsets_mapping=True)
    offsets = enc.pop("offset_mapping").tolist()
    special = enc.pop("special_tokens_mask", None)
    logits = ctx.model(**_to_device(enc, ctx.device)).logits.float()
    probs = torch.softmax(logits, dim=-1).cpu()
    scores, best = probs.max(dim=-1)
    labels = _labels(ctx.model)
    special_ids = set(ctx.tokenizer.all_special_ids)
    results: list[list[dict[str, Any]]] = []
    for b, text in enumerate(texts):
        ids = enc["input_ids"][b].tolist()
        mask = enc["attention_mask"][b].tolist()
        entities = []
        for t, token_id in enumerate(ids):
            if not mask[t] or token_id in special_ids or (special is not None and special[b][t]):
                continue
            label = labels.get(int(best[b, t]), f"LABEL_{int(best[b, t])}")
            if label in ignore:
                continue
            start, end = offsets[b][t]
            entities.append(
                {
                    "entity": label,
                    "score": float(scores[b, t]),
                    "index": t,
                    "word": text[start:end],
                    "start": int(start),
                    "end": int(end),
                }
            )
        results.append(entities)
    return results


# ---- embeddings -------------------------------------------------------------------------------


def mean_pool(hidden: Any, attention_mask: Any, normalize: bool = True) -> Any:
    """Mean of ``hidden`` [B, T, H] over the positions where ``attention_mask`` [B, T] is 1,
    L2-normalised when ``normalize``."""
    import torch

    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    summed = (hidden * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1.0)
    pooled = summed / counts
    if normalize:
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
    return pooled


def embed_batch(
    ctx: TaskContext,
    *,
    texts: list[str] | None = None,
    token_ids: list[list[int]] | None = None,
    normalize: bool = True,
) -> tuple[list[list[float]], int]:
    """Embeddings of texts (or pre-tokenized ids) and the number of non-pad tokens used."""
    import torch

    if texts is not None:
        enc = _encode(ctx, texts, truncate=True)
        input_ids, attention = enc["input_ids"], enc["attention_mask"]
    else:
        if not token_ids:
            raise InvalidInput("no input token ids")
        vocab = int(ctx.model.config.vocab_size)
        rows = []
        for i, ids in enumerate(token_ids):
            if not ids:
                raise InvalidInput(f"input {i} has no tokens")
            if any((not isinstance(t, int)) or t < 0 or t >= vocab for t in ids):
                raise InvalidInput(f"input {i} has token ids outside [0, {vocab})")
            rows.append(list(ids[: ctx.max_model_len]))
        width = max(len(r) for r in rows)
        pad = ctx.pad_token_id if ctx.pad_token_id is not None else 0
        input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)
        attention = torch.tensor(
            [[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long
        )
    inputs = {"input_ids": input_ids.to(ctx.device), "attention_mask": attention.to(ctx.device)}
    hidden = ctx.model(**inputs).last_hidden_state
    pooled = mean_pool(hidden.float(), inputs["attention_mask"], normalize).cpu()
    vectors = pooled.tolist()
    for i, vec in enumerate(vectors):
        if not all(math.isfinite(x) for x in vec):
            raise ModelError(f"input {i} produced a non-finite embedding")
    return vectors, int(attention.sum())


def embed_texts(
    ctx: TaskContext, texts: list[str], parameters: dict[str, Any]
) -> list[list[float]]:
    """V1/V2 ``predict`` for ``text_embedding``: one vector per text."""
    normalize = _param_bool(parameters, "normalize", True)
    vectors, _ = embed_batch(ctx, texts=texts, normalize=normalize)
    return vectors


TASK_FUNCTIONS: dict[str, Any] = {
    "text_generation": generate_texts,
    "text2text_generation": generate_texts,
    "fill_mask": fill_mask,
    "sequence_classification": classify_sequences,
    "token_classification": classify_tokens,
    "text_embedding": embed_texts,
}
