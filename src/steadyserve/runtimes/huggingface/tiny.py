"""Tiny local Hugging Face models with random weights, for tests, benchmarks and the demo.

Each builder writes a directory that ``AutoModel*.from_pretrained(dir)`` and
``AutoTokenizer.from_pretrained(dir)`` load offline: a real architecture (GPT-2, T5, Llama, BERT)
with random (seeded, so reproducible) weights saved as safetensors, and a tokenizer trained
in-process with the ``tokenizers`` library on :data:`CORPUS`, a few KB of English embedded here.
Nothing is downloaded. The outputs are meaningless: these models exist to exercise the serving
path, not to answer questions.

Builders (all return the directory they wrote, as a ``str``):

========================================  =====================================================
``build_gpt2(path, preset=None, ...)``    ``GPT2LMHeadModel``; ``preset="gpt2"``: GPT-2 base dims
``build_t5(path, preset=None, ...)``      ``T5ForConditionalGeneration``; ``preset="t5-small"``
``build_llama(path, ...)``                ``LlamaForCausalLM`` with a chat template
``build_bert(path, task, ...)``           ``fill_mask`` / ``sequence_classification`` /
                                          ``token_classification`` / ``text_embedding``
``ensure_demo_model(out=None, arch=...)``  the built-in demo (a tiny Llama by default, or any
                                          of :data:`DEMO_ARCHS`), cached
========================================  =====================================================
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger("steadyserve.tiny")

DEMO_VERSION = "demo-v1"
SEED = 1234

#: A small built-in English corpus the tokenizers are trained on (varied, a few KB).
CORPUS = """\
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
Hello, world! How are you today? I am fine, thank you. What is your name? My name is Alice.
Paris is the capital of France. Berlin is the capital of Germany. Tokyo is the capital of Japan.
The weather today is sunny and warm, but tomorrow it will rain in the afternoon and evening.
Machine learning models learn patterns from data. A neural network has layers of weights.
Translate English to German: The house is wonderful. Das Haus ist wunderbar.
Summarize: The committee met on Monday to discuss the budget for the coming year and agreed on it.
I love this movie, it was fantastic and moving. I hated the ending; it was boring and too long.
This product is great. This product is terrible. The service was excellent. The food was awful.
John Smith works at Acme Corporation in New York. Mary Johnson lives in London near the river.
The server answers requests over HTTP and gRPC. Each request is validated before it is admitted.
Numbers: one two three four five six seven eight nine ten eleven twelve 0 1 2 3 4 5 6 7 8 9 10 100.
Colors: red orange yellow green blue indigo violet black white gray brown pink purple.
Days: Monday Tuesday Wednesday Thursday Friday Saturday Sunday. Months: January February March
April May June July August September October November December. Seasons: spring summer autumn winter.
Once upon a time there was a little girl who lived in a village near the forest. She often
walked to her grandmother's house with a basket of bread, butter and fresh apples.
The scientist observed the results carefully and wrote them down in her notebook before lunch.
Water boils at one hundred degrees Celsius at sea level. Ice melts when the temperature rises.
Please write a short poem about the sea. The sea is deep and blue; the waves roll in and out.
Question: what is two plus two? Answer: four. Question: who wrote Hamlet? Answer: Shakespeare.
The cat sat on the mat. The dog barked at the mailman. Birds sing in the trees every morning.
She said, "Let's go to the market!" He replied, "Sure, but first I need my coffee."
Computers store information as bits and bytes. Programs are written in languages like Python.
def add(a, b): return a + b  # a tiny function; print("hello") and x = [1, 2, 3]
The train leaves the station at nine o'clock and arrives in the city two hours later.
Good morning! Good afternoon! Good evening! Good night! Thanks a lot. You're welcome. Sorry.
He ran quickly, she walked slowly, they talked quietly, and we listened carefully to everyone.
Teachers, students, doctors, nurses, farmers, engineers, artists and writers live in this town.
The mountain was high and the valley below was green with grass and full of small flowers.
An apple a day keeps the doctor away. Actions speak louder than words. Time is money.
It is important to drink water, sleep well, eat vegetables and exercise regularly every week.
The company reported strong earnings this quarter, and its stock price rose by ten percent.
Can you help me find the library? Turn left at the corner, then walk straight for two blocks.
The children played football in the park until the sun went down behind the tall buildings.
Music, painting, dance and theater are forms of art enjoyed by people around the world.
A user asked the assistant a question, and the assistant gave a helpful and polite answer.
system user assistant: You are a helpful assistant. Answer briefly and clearly.
Why is the sky blue? Because air scatters blue light from the sun more than red light.
History teaches us about kings, queens, wars, discoveries, inventions and great ideas.
The recipe needs two eggs, a cup of flour, some sugar, milk, and a pinch of salt.
Open the door, close the window, turn on the light, and sit down at the table, please.
"""

#: Labels of the tiny classifiers.
SEQUENCE_LABELS = {0: "negative", 1: "positive"}
TOKEN_LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-ORG", 4: "I-ORG", 5: "B-LOC", 6: "I-LOC"}
BERT_TASKS = ("fill_mask", "sequence_classification", "token_classification", "text_embedding")

#: Chat template (Jinja) of the tiny Llama and the demo model.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_DEMO_README = """\
# steadyserve demo model ({arch})

{what}, with **random weights - demo only**. It exists so that `steadyserve serve` works without
a network (V1, V2 and the OpenAI API); its output is meaningless. Built by
`steadyserve build-demo --arch {arch}` (`steadyserve.runtimes.huggingface.tiny`).
"""


def _corpus_lines() -> list[str]:
    lines = [line for line in CORPUS.splitlines() if line.strip()]
    # a little variety in case and spacing so the vocab covers common forms
    return lines + [line.lower() for line in lines] + [line.upper() for line in lines[:8]]


def _seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def _save(model: Any, tokenizer: Any, path: str | os.PathLike[str]) -> str:
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        generation_config.save_pretrained(str(out))
    return str(out)


# ---- tokenizers -------------------------------------------------------------------------------


def _byte_bpe_tokenizer(vocab_size: int, specials: list[str], bos: str | None) -> Any:
    """A byte-level BPE (GPT-2 / Llama style); ``bos`` (if given) is prepended to each input."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus_lines(), trainer=trainer)
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A",
            pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, tok.token_to_id(bos))],
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _metaspace_bpe_tokenizer(vocab_size: int, specials: list[str], eos: str) -> Any:
    """A sentencepiece-like BPE (T5 style) that appends ``eos`` to each input."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False
    )
    tok.train_from_iterator(_corpus_lines(), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, tok.token_to_id(eos))]
    )
    return tok


def _wordpiece_tokenizer(vocab_size: int) -> Any:
    """A BERT-style uncased WordPiece with [PAD]/[UNK]/[CLS]/[SEP]/[MASK].

    The vocabulary is learned from :data:`CORPUS` by counting: every character (and its ``##``
    continuation form), then the most frequent words. Unlike the WordPiece trainer of
    ``tokenizers`` this is deterministic, so two builds give identical token ids.
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter()
    for line in _corpus_lines():
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line)):
            words[word] += 1
    chars = sorted({c for word in words for c in word})
    vocab = specials + chars + [f"##{c}" for c in chars]
    ranked = sorted((w for w in words if len(w) > 1), key=lambda w: (-words[w], w))
    vocab += ranked[: max(0, vocab_size - len(vocab))]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.BertProcessing(
        ("[SEP]", vocab.index("[SEP]")), ("[CLS]", vocab.index("[CLS]"))
    )
    return tok


def _fast(tok: Any, max_len: int, **special: str) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_len, **special)


# ---- models -----------------------------------------------------------------------------------


def build_gpt2(
    path: str | os.PathLike[str],
    *,
    preset: str | None = None,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 2,
    n_positions: int = 512,
    vocab_size: int = 1000,
    seed: int = SEED,
) -> str:
    """A ``GPT2LMHeadModel`` (random weights) + byte-level BPE tokenizer at ``path``.

    ``preset="gpt2"`` uses GPT-2 base layer dims (12 layers, 768 wide, 12 heads, 1024 positions)
    with the small trained vocabulary. Special tokens: ``<|endoftext|>`` (bos/eos/unk), ``<pad>``.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    if preset == "gpt2":
        n_layer, n_embd, n_head, n_positions = 12, 768, 12, 1024
    elif preset is not None:
        raise ValueError(f"unknown gpt2 preset {preset!r} (valid: 'gpt2')")
    eos, pad = "<|endoftext|>", "<pad>"
    raw = _byte_bpe_tokenizer(vocab_size, [eos, pad], bos=None)
    tokenizer = _fast(raw, n_positions, bos_token=eos, eos_token=eos, unk_token=eos, pad_token=pad)
    _seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=tokenizer.convert_tokens_to_ids(eos),
        eos_token_id=tokenizer.convert_tokens_to_ids(eos),
        pad_token_id=tokenizer.convert_tokens_to_ids(pad),
    )
    model = GPT2LMHeadModel(config).eval()
    return _save(model, tokenizer, path)


def build_t5(
    path: str | os.PathLike[str],
    *,
    preset: str | None = None,
    d_model: int = 64,
    d_ff: int = 128,
    num_layers: int = 2,
    num_decoder_layers: int | None = None,
    num_heads: int = 2,
    d_kv: int | None = None,
    vocab_size: int = 1000,
    seed: int = SEED,
) -> str:
    """A ``T5ForConditionalGeneration`` (random weights) + sentencepiece-like tokenizer.

    Special tokens: ``<pad>`` = 0 (also the decoder start token), ``</s>`` = 1 (eos, appended to
    every input), ``<unk>`` = 2. ``preset="t5-small"`` uses t5-small dims (d_model 512, 6+6
    layers, 8 heads, d_kv 64, d_ff 2048) with the small trained vocabulary.
    """
    from transformers import T5Config, T5ForConditionalGeneration

    if preset == "t5-small":
        d_model, d_ff, num_layers, num_decoder_layers, num_heads, d_kv = 512, 2048, 6, 6, 8, 64
    elif preset is not None:
        raise ValueError(f"unknown t5 preset {preset!r} (valid: 't5-small')")
    pad, eos, unk = "<pad>", "</s>", "<unk>"
    raw = _metaspace_bpe_tokenizer(vocab_size, [pad, eos, unk], eos=eos)
    tokenizer = _fast(raw, 512, pad_token=pad, eos_token=eos, unk_token=unk)
    _seed(seed)
    t5_tokens: dict[str, Any] = {"decoder_start_token_id": 0, "tie_word_embeddings": True}
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_ff=d_ff,
        d_kv=d_kv if d_kv is not None else max(1, d_model // num_heads),
        num_layers=num_layers,
        num_decoder_layers=num_decoder_layers if num_decoder_layers is not None else num_layers,
        num_heads=num_heads,
        pad_token_id=0,
        eos_token_id=1,
        **t5_tokens,
    )
    model = T5ForConditionalGeneration(config).eval()
    return _save(model, tokenizer, path)


def build_llama(
    path: str | os.PathLike[str],
    *,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    max_position_embeddings: int = 1024,
    vocab_size: int = 1000,
    seed: int = SEED,
    chat_template: str = CHAT_TEMPLATE,
) -> str:
    """A ``LlamaForCausalLM`` (random weights) + byte-level BPE tokenizer with a chat template.

    Special tokens: ``<unk>``, ``<s>`` (bos, prepended to every input), ``</s>`` (eos),
    ``<pad>``. The chat template renders ``<|role|>\\ncontent</s>`` per message.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    unk, bos, eos, pad = "<unk>", "<s>", "</s>", "<pad>"
    raw = _byte_bpe_tokenizer(vocab_size, [unk, bos, eos, pad], bos=bos)
    tokenizer = _fast(
        raw, max_position_embeddings, unk_token=unk, bos_token=bos, eos_token=eos, pad_token=pad
    )
    tokenizer.chat_template = chat_template
    _seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.convert_tokens_to_ids(bos),
        eos_token_id=tokenizer.convert_tokens_to_ids(eos),
        pad_token_id=tokenizer.convert_tokens_to_ids(pad),
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    return _save(model, tokenizer, path)


def build_bert(
    path: str | os.PathLike[str],
    task: str,
    *,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 512,
    vocab_size: int = 1000,
    seed: int = SEED,
) -> str:
    """A BERT model for ``task`` (random weights) + uncased WordPiece tokenizer.

    ``task``: ``fill_mask`` (``BertForMaskedLM``), ``sequence_classification``
    (``BertForSequenceClassification``, labels :data:`SEQUENCE_LABELS`), ``token_classification``
    (``BertForTokenClassification``, labels :data:`TOKEN_LABELS`) or ``text_embedding``
    (``BertModel``).
    """
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        BertForSequenceClassification,
        BertForTokenClassification,
        BertModel,
    )

    classes: dict[str, Any] = {
        "fill_mask": BertForMaskedLM,
        "sequence_classification": BertForSequenceClassification,
        "token_classification": BertForTokenClassification,
        "text_embedding": BertModel,
    }
    if task not in classes:
        raise ValueError(f"unknown bert task {task!r} (valid: {', '.join(BERT_TASKS)})")
    raw = _wordpiece_tokenizer(vocab_size)
    tokenizer = _fast(
        raw,
        max_position_embeddings,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    labels: dict[int, str] = {}
    if task == "sequence_classification":
        labels = SEQUENCE_LABELS
    elif task == "token_classification":
        labels = TOKEN_LABELS
    extra: dict[str, Any] = {}
    if labels:
        extra = {"id2label": dict(labels), "label2id": {v: k for k, v in labels.items()}}
    _seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )
    model = classes[task](config).eval()
    return _save(model, tokenizer, path)


# ---- the demo model ---------------------------------------------------------------------------


#: ``steadyserve build-demo --arch NAME``: what each demo architecture builds (all tiny, random
#: weights, offline). ``llama`` is the default demo (chat template); ``t5`` reproduces KServe's
#: seed failure (a text2text model asked for chat); the ``bert-*`` ones cover the encoder tasks.
DEMO_ARCHS: dict[str, str] = {
    "llama": "LlamaForCausalLM with a chat template (text_generation, chat)",
    "gpt2": "GPT2LMHeadModel, no chat template (text_generation)",
    "t5": "T5ForConditionalGeneration (text2text_generation; chat is refused)",
    "bert-classifier": "BertForSequenceClassification (sequence_classification)",
    "bert-ner": "BertForTokenClassification (token_classification)",
    "bert-mlm": "BertForMaskedLM (fill_mask)",
    "bert-embedding": "BertModel (text_embedding, OpenAI embeddings)",
}
_BERT_TASKS = {
    "bert-classifier": "sequence_classification",
    "bert-ner": "token_classification",
    "bert-mlm": "fill_mask",
    "bert-embedding": "text_embedding",
}


def demo_cache_dir(arch: str = "llama") -> str:
    """Where a demo model is cached: ``$STEADYSERVE_CACHE/demo-v1`` (or ``demo-v1-ARCH`` for
    another architecture than the default Llama), under ``~/.cache/steadyserve`` by default."""
    base = os.environ.get("STEADYSERVE_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "steadyserve"
    )
    return os.path.join(base, DEMO_VERSION if arch == "llama" else f"{DEMO_VERSION}-{arch}")


def _build_arch(path: str, arch: str) -> None:
    if arch == "llama":
        build_llama(path)
    elif arch == "gpt2":
        build_gpt2(path)
    elif arch == "t5":
        build_t5(path)
    elif arch in _BERT_TASKS:
        build_bert(path, _BERT_TASKS[arch])
    else:
        raise ValueError(f"unknown demo architecture {arch!r} (valid: {', '.join(DEMO_ARCHS)})")


def _is_complete(path: str, arch: str = "llama") -> bool:
    marker = os.path.join(path, "steadyserve-demo.json")
    try:
        with open(marker) as fh:
            meta = json.load(fh)
    except (OSError, ValueError):
        return False
    return bool(meta.get("version") == DEMO_VERSION and meta.get("arch", "llama") == arch)


def ensure_demo_model(out: str | None = None, arch: str = "llama") -> str:
    """Build the demo model (a tiny Llama with a chat template, random weights; or another of
    :data:`DEMO_ARCHS`) into ``out`` or :func:`demo_cache_dir`, and return its path. Idempotent: a complete existing build is reused.
    The build goes to a temporary sibling directory that is renamed into place, so a crash or a
    concurrent build never leaves a half-written model behind."""
    if arch not in DEMO_ARCHS:
        raise ValueError(f"unknown demo architecture {arch!r} (valid: {', '.join(DEMO_ARCHS)})")
    target = os.path.abspath(out or demo_cache_dir(arch))
    if _is_complete(target, arch):
        return target
    if os.path.isdir(target) and os.listdir(target):
        raise FileExistsError(
            f"{target} exists and is not a steadyserve {arch} demo model; choose another --out"
        )
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".demo-build-", dir=parent)
    try:
        log.info("building the demo model in %s", target)
        _build_arch(tmp, arch)
        Path(tmp, "README.md").write_text(_DEMO_README.format(arch=arch, what=DEMO_ARCHS[arch]))
        Path(tmp, "steadyserve-demo.json").write_text(
            json.dumps(
                {"version": DEMO_VERSION, "arch": arch, "weights": "random", "purpose": "demo only"}
            )
        )
        if os.path.isdir(target):
            with contextlib.suppress(OSError):
                os.rmdir(target)  # empty (checked above) unless a concurrent build filled it
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_complete(target, arch):  # not a concurrent build that won the race
                raise
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
    return target
