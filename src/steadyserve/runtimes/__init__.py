"""Built-in runtimes (models the server knows how to load), found by name.

:data:`RUNTIMES` maps a :attr:`ModelSpec.runtime <steadyserve.config.ModelSpec.runtime>` to
``"module:factory"``; the factory takes the spec and returns a :class:`~steadyserve.Model`
(constructed, not loaded). The module is imported only in the worker that builds such a model,
so the engine never imports a runtime (no torch in the server process, no import cycle: the
runtimes import :mod:`steadyserve.config`, the engine imports this table). A new runtime adds
one line here. ``"custom"`` is the user's own :class:`~steadyserve.Model` subclass
(``--model_class``).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path

from steadyserve.config import ModelSpec
from steadyserve.model import Model

CUSTOM = "custom"

RUNTIMES: dict[str, str] = {
    # our own engine, or vLLM's for what it can serve (--backend auto|vllm|huggingface)
    "huggingface": "steadyserve.runtimes.vllm.select:huggingface_or_vllm",
}

#: runtimes whose worker routes transformers' logging through ours, and whose server side
#: should import transformers early (for the tokenizer)
TRANSFORMERS_RUNTIMES = frozenset({"huggingface"})


def build_model(spec: ModelSpec) -> Model:
    """Construct (not load) the model a spec describes."""
    if spec.runtime == CUSTOM:
        if spec.model_class is None:
            raise ValueError("a custom model needs model_class")
        cls = load_class(spec.model_class)
        return cls(spec.name, spec.model_dir, **spec.options)
    ref = RUNTIMES.get(spec.runtime)
    if ref is None:
        raise ValueError(f"unknown runtime {spec.runtime!r} (known: {', '.join(sorted(RUNTIMES))})")
    module_name, _, attr = ref.partition(":")
    factory: object = importlib.import_module(module_name)
    for part in attr.split("."):
        factory = getattr(factory, part)
    model = factory(spec)  # type: ignore[operator]
    if not isinstance(model, Model):
        raise TypeError(f"runtime {spec.runtime!r} built {type(model).__name__}, not a Model")
    return model


def load_class(ref: str) -> type[Model]:
    """Import ``path/to/file.py:Class`` or ``package.module:Class``."""
    target, _, class_name = ref.rpartition(":")
    if target.endswith(".py") or os.sep in target:
        path = Path(target).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"model class file not found: {target}")
        module_name = f"steadyserve_user_{path.stem}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {target}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        sys.path.insert(0, str(path.parent))
        spec.loader.exec_module(module)
    else:
        # The worker runs with a safe sys.path (no current directory in front: a stray
        # ``triton.py`` there must not replace an installed package). A module given by name
        # may still live in the directory the server was started from: look there last, and
        # for this import only.
        cwd = os.getcwd()
        sys.path.append(cwd)
        try:
            module = importlib.import_module(target)
        finally:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ImportError(f"{target} has no attribute {class_name}")
    if not (isinstance(cls, type) and issubclass(cls, Model)):
        raise TypeError(f"{ref} is not a subclass of steadyserve.Model")
    return cls
