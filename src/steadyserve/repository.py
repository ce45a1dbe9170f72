"""A model repository directory: one sub-directory per model."""

from __future__ import annotations

import os
from typing import Any

from steadyserve.engine.ipc import ModelSpec


def spec_for_dir(name: str, path: str, common: dict[str, Any]) -> ModelSpec:
    """A Hugging Face model (config.json), or a custom model (model.py with a ``Model``
    subclass named in ``steadyserve.txt``, default class ``Model``)."""
    if os.path.isfile(os.path.join(path, "config.json")):
        return ModelSpec(name=name, kind="huggingface", model_dir=path, **common)
    custom = os.path.join(path, "model.py")
    if os.path.isfile(custom):
        class_name = "Model"
        marker = os.path.join(path, "steadyserve.txt")
        if os.path.isfile(marker):
            with open(marker, encoding="utf-8") as fh:
                class_name = fh.read().strip() or class_name
        return ModelSpec(
            name=name, kind="custom", model_class=f"{custom}:{class_name}", model_dir=path, **common
        )
    return ModelSpec(name=name, kind="huggingface", model_dir=path, **common)


def scan_repository(root: str, common: dict[str, Any]) -> list[ModelSpec]:
    specs = []
    for entry in sorted(os.listdir(root)):
        path = os.path.join(root, entry)
        if os.path.isdir(path) and not entry.startswith("."):
            specs.append(spec_for_dir(entry, path, common))
    return specs
