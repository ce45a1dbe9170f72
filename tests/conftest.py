"""Session fixtures shared by every test: tiny Hugging Face models with random weights.

Each fixture builds its model once per test session (on first use) into a temporary directory
and returns the directory path as a ``str``; see ``steadyserve.runtimes.huggingface.tiny``.

==========================  ==========================================================
fixture                     model
==========================  ==========================================================
``tiny_gpt2_dir``           GPT2LMHeadModel (text_generation), no chat template
``tiny_t5_dir``             T5ForConditionalGeneration (text2text_generation)
``tiny_llama_dir``          LlamaForCausalLM (text_generation) with a chat template
``tiny_bert_mlm_dir``       BertForMaskedLM (fill_mask)
``tiny_bert_cls_dir``       BertForSequenceClassification (negative / positive)
``tiny_bert_tok_dir``       BertForTokenClassification (O, B-PER, I-PER, ...)
``tiny_bert_embed_dir``     BertModel (text_embedding)
==========================  ==========================================================
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from filelock import FileLock


def _build(factory: pytest.TempPathFactory, name: str, kind: str) -> str:
    """Build once per test run: under pytest-xdist every worker shares the directory (the
    first one to ask builds it, under a file lock; the others wait and reuse it)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = factory.getbasetemp().parent / "tiny-models"  # shared by the run's workers
        root.mkdir(exist_ok=True)
        path = root / name
        with FileLock(str(root / f"{name}.lock")):
            if not (root / f"{name}.built").exists():
                _build_into(path, kind)
                (root / f"{name}.built").touch()
        return str(path)
    return _build_into(factory.mktemp("models") / name, kind)


def _build_into(path: Path, kind: str) -> str:
    from steadyserve.runtimes.huggingface import tiny

    if kind == "gpt2":
        return tiny.build_gpt2(path)
    if kind == "t5":
        return tiny.build_t5(path)
    if kind == "llama":
        return tiny.build_llama(path)
    return tiny.build_bert(path, kind)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _build(tmp_path_factory, "tiny-gpt2", "gpt2")


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _build(tmp_path_factory, "tiny-t5", "t5")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _build(tmp_path_factory, "tiny-llama", "llama")


@pytest.fixture(scope="session")
def tiny_bert_mlm_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _build(tmp_path_factory, "tiny-bert-mlm", "fill_mask")


@pytest.fixture(scope="session")
def tiny_bert_cls_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _build(tmp_path_factory, "tiny-bert-cls", "sequence_classification")


@pytest.fixture(scope="session")
def tiny_bert_tok_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _build(tmp_path_factory, "tiny-bert-tok", "token_classification")


@pytest.fixture(scope="session")
def tiny_bert_embed_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _build(tmp_path_factory, "tiny-bert-embed", "text_embedding")
