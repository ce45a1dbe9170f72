"""Command line: argv → :class:`Settings` → run. Logging is set up here, nothing at import time.

``steadyserve serve --model_name NAME --model_dir DIR`` (KServe's flags). ``steadyserve --flag ...``
without a sub-command also serves, so a KServe ServingRuntime can pass only args. Unknown flags
are an error (exit 2), as are invalid values (one line naming the setting and the valid values).
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import subprocess
import sys
from typing import Any, get_args, get_origin

from steadyserve.settings import (
    DEMO_MODEL_NAME,
    ENV_ONLY,
    ENV_VARS,
    ConfigError,
    Settings,
    accepted_values,
    build_settings,
    check_ports,
    resolve_model_dir,
)

log = logging.getLogger("steadyserve")

EXIT_CONFIG = 2

#: Other spellings KServe's servers accept for our flags (huggingfaceserver's --max_length).
FLAG_ALIASES: dict[str, tuple[str, ...]] = {
    "max_model_len": ("--max_length", "--max-model-len"),
    # vLLM's spellings, which KServe's huggingfaceserver passes through
    "gpu_memory_utilization": ("--gpu-memory-utilization",),
    "tensor_parallel_size": ("--tensor-parallel-size",),
    "enforce_eager": ("--enforce-eager",),
}

#: Flags of KServe's model server and huggingfaceserver that have no meaning in steadyserve.
#: They are accepted (their values still type-checked) so that an InferenceService written for
#: KServe's runtime starts unchanged, and each one given is named in a start-up warning with
#: the reason - never silently dropped. Anything else unknown is still an error (exit 2).
KSERVE_NO_EFFECT: dict[str, tuple[Any, str]] = {
    "workers": (int, "one HTTP process per pod; each model has its own worker process"),
    "max_threads": (int, "gRPC runs on asyncio"),
    "max_asyncio_workers": (int, "model code runs in the model's worker process"),
    "enable_latency_logging": ("bool", "every access log line carries duration_ms"),
    "configure_logging": ("bool", "logging is set by --log_level / --log_format"),
    "log_config_file": (str, "logging is set by --log_level / --log_format"),
    "access_log_format": (str, "the access line is fixed (LOG_FORMAT=json for fields)"),
    "disable_log_requests": ("bool", "prompts are logged only with --log_prompts"),
    "max_log_len": (int, "--log_prompts logs at most 500 characters"),
    "disable_lower_case": ("bool", "the tokenizer's own configuration is used"),
    "disable_special_tokens": ("bool", "the tokenizer's own configuration is used"),
    "return_token_type_ids": ("bool", "inputs are tokenized by the runtime"),
    "tensor_input_names": (str, "inputs are tokenized by the runtime"),
    "return_probabilities": ("bool", 'ask per request: parameters {"return_all_scores": true}'),
}


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {raw!r}")


def _is_bool(annotation: Any) -> bool:
    return annotation is bool or (
        get_origin(annotation) is not None and bool in get_args(annotation)
    )


class _Parser(argparse.ArgumentParser):
    #: every option string of ``serve`` (for "did you mean" on an unknown flag)
    known_flags: list[str] = []

    def error(self, message: str) -> None:  # type: ignore[override]
        # One line, exit 2 - and no usage dump burying the message.
        hint = ""
        if message.startswith("unrecognized arguments:"):
            unknown = [a for a in message.split(":", 1)[1].split() if a.startswith("--")]
            hint = did_you_mean(unknown[0] if unknown else "", self.known_flags)
        sys.stderr.write(f"steadyserve: error: {message}{hint}\n")
        sys.exit(EXIT_CONFIG)


def did_you_mean(flag: str, known: list[str]) -> str:
    """``" (did you mean --model_name?)"`` for a misspelled flag, or ``""``."""
    name = flag.split("=", 1)[0]
    if not name.startswith("--"):
        return ""
    candidates = [k for k in known if k.startswith("--")]
    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.75)
    if not match:
        normalized = name.replace("-", "_")
        match = difflib.get_close_matches(
            "--" + normalized[2:], [c for c in candidates if "-" not in c[2:]], n=1, cutoff=0.6
        )
    return f" (did you mean {match[0]}?)" if match else ""


def _flag_spellings(name: str) -> list[str]:
    """``--model_name`` and ``--model-name`` (as vLLM and TorchServe users type)."""
    spellings = [f"--{name}"]
    if "_" in name:
        spellings.append(f"--{name.replace('_', '-')}")
    return spellings


def _shown_default(default: Any) -> str:
    if default is None or default == []:
        return "none"
    if isinstance(default, bool):
        return str(default).lower()
    return str(default)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="steadyserve",
        description="A model server for Hugging Face and custom models: KServe V1/V2 "
        "(REST + gRPC) and the OpenAI API.",
        allow_abbrev=False,
    )
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser(
        "serve",
        help="serve a model",
        description="Serve a model. Precedence: flags > environment > defaults. "
        "With no model source at all (no --model_dir, STORAGE_URI, /mnt/models, --model_id, "
        "--model_class or --model_repository), the built-in demo model is served.",
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.error = _Parser.error.__get__(serve)  # type: ignore[method-assign]
    for name, field in Settings.model_fields.items():
        if name in ENV_ONLY:
            continue
        env = ENV_VARS.get(name)
        default = field.get_default(call_default_factory=True)
        help_text = (field.description or "").replace("%", "%%")
        help_text += f" (default: {_shown_default(default)}) [env {env}]"
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": help_text}
        choices = accepted_values(name)
        if _is_bool(field.annotation):
            kwargs.update(nargs="?", const=True, type=_parse_bool, metavar="BOOL")
        elif choices:
            kwargs.update(metavar="{" + ",".join(choices) + "}")
        else:
            kwargs.update(metavar=name.upper())
        serve.add_argument(*_flag_spellings(name), *FLAG_ALIASES.get(name, ()), **kwargs)
    compat = serve.add_argument_group(
        "KServe compatibility",
        "Flags of KServe's model server / huggingfaceserver that have no effect here; accepted so "
        "InferenceServices written for KServe start unchanged, and named in a start-up warning.",
    )
    for name, (kind, why) in KSERVE_NO_EFFECT.items():
        extra: dict[str, Any] = (
            {"nargs": "?", "const": True, "type": _parse_bool, "metavar": "BOOL"}
            if kind == "bool"
            else {"type": kind, "metavar": name.upper()}
        )
        compat.add_argument(
            *_flag_spellings(name),
            dest=f"kserve_{name}",
            default=None,
            help=f"no effect: {why}".replace("%", "%%"),
            **extra,
        )
    _Parser.known_flags = [o for a in serve._actions for o in a.option_strings]
    serve.epilog = (
        "Environment only: STEADYSERVE_API_KEY (API keys, comma-separated). "
        "Per request: X-Request-Timeout header (seconds)."
    )
    demo = sub.add_parser("build-demo", help="build the demo model directory and print its path")
    from steadyserve.runtimes.huggingface.tiny import DEMO_ARCHS  # no torch import: cheap

    demo.add_argument("--out", default=None, help="directory (default: the cache)")
    demo.add_argument(
        "--arch",
        default="llama",
        choices=sorted(DEMO_ARCHS),
        help="architecture (default: llama, the demo served with no model argument): "
        + "; ".join(f"{k}: {v}" for k, v in DEMO_ARCHS.items()),
    )
    from steadyserve.probe.main import add_parser as add_probe_parser

    probe = add_probe_parser(sub)
    probe.error = _Parser.error.__get__(probe)  # type: ignore[method-assign]
    return parser


def setup_logging(settings: Settings) -> None:
    from steadyserve.logs import configure

    configure(settings.log_level, settings.log_format)


def model_specs(settings: Settings, ts_config: Any = None) -> list[Any]:
    """The models to serve, from the settings (and TorchServe's config.properties, parsed by
    ``runtimes.torchserve.config``). Raises ConfigError for unusable paths."""
    from steadyserve.config import ModelSpec, model_options

    common = model_options(settings)
    if settings.model_archive is not None:
        from steadyserve.runtimes.torchserve.archive import ArchiveError
        from steadyserve.runtimes.torchserve.specs import archive_spec

        overrides = ts_config.models if ts_config is not None else None
        try:
            return [archive_spec(settings.model_archive, common, settings.model_name, overrides)]
        except ArchiveError as exc:
            raise ConfigError(
                f"invalid --model_archive={settings.model_archive!r}: {exc}"
            ) from None
    if settings.model_repository is not None:
        from steadyserve.repository import scan_repository

        if ts_config is not None:  # TorchServe's model store: load_models and per-model config
            from steadyserve.runtimes.torchserve.specs import scan_store

            return scan_store(
                settings.model_repository, common, ts_config.load_models, ts_config.models
            )
        return scan_repository(settings.model_repository, common)
    if settings.model_class is not None:
        target = settings.model_class.rpartition(":")[0]
        if (target.endswith(".py") or os.sep in target) and not os.path.isfile(target):
            raise ConfigError(f"invalid --model_class={settings.model_class!r}: {target} not found")
        model_dir = resolve_model_dir(settings)
        name = settings.model_name or "model"
        return [
            ModelSpec(
                name=name,
                runtime="custom",
                model_class=settings.model_class,
                model_dir=model_dir,
                **common,
            )
        ]
    if settings.model_id is not None:
        name = settings.model_name or settings.model_id.rsplit("/", 1)[-1]
        return [
            ModelSpec(
                name=name,
                runtime="huggingface",
                model_id=settings.model_id,
                revision=settings.model_revision,
                tokenizer_revision=settings.tokenizer_revision,
                **common,
            )
        ]
    model_dir = resolve_model_dir(settings)
    if model_dir is None:
        from steadyserve.runtimes.huggingface.tiny import ensure_demo_model

        path = ensure_demo_model()
        name = settings.model_name or DEMO_MODEL_NAME
        return [ModelSpec(name=name, runtime="huggingface", model_dir=path, **common)]
    _check_hf_model_dir(model_dir)
    name = settings.model_name or (os.path.basename(os.path.normpath(model_dir)) or "model")
    if name == "models" and model_dir == "/mnt/models":
        name = settings.model_name or "model"
    return [ModelSpec(name=name, runtime="huggingface", model_dir=model_dir, **common)]


#: Run in a throw-away interpreter: import each ``--model_class`` the way the worker will, and
#: print one line per class that cannot be served (exit 1 if any).
_CHECK_CLASSES = """
import sys
from steadyserve.runtimes import load_class
bad = 0
for ref in sys.argv[1:]:
    try:
        load_class(ref)
    except BaseException as exc:
        bad = 1
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(ref + "\\t" + type(exc).__name__ + ": " + msg[:300], flush=True)
sys.exit(bad)
"""

#: the longest the class check may take (user code importing torch included)
CHECK_CLASSES_TIMEOUT_S = 120.0


def check_model_classes(specs: list[Any]) -> None:
    """Every custom model class can be imported and is a ``steadyserve.Model``: a typo in the
    class name, a class of the wrong kind or an import error in the file stops start-up with one
    line (exit 2) instead of a worker crash loop. User code is imported in a throw-away process
    (the server process never runs it)."""
    refs = [s.model_class for s in specs if getattr(s, "model_class", None)]
    if not refs:
        return
    safe_path = ["-P"] if sys.version_info >= (3, 11) else []  # as the worker: no cwd in front
    try:
        done = subprocess.run(
            [sys.executable, *safe_path, "-c", _CHECK_CLASSES, *refs],
            capture_output=True,
            text=True,
            timeout=CHECK_CLASSES_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise ConfigError(
            f"invalid --model_class={refs[0]!r}: importing it took over "
            f"{CHECK_CLASSES_TIMEOUT_S:.0f}s"
        ) from None
    if done.returncode == 0:
        return
    for line in done.stdout.splitlines():
        ref, _, why = line.partition("\t")
        if why:
            raise ConfigError(f"invalid --model_class={ref!r}: {why}")
    tail = " ".join(done.stderr.split())[-300:] or f"exit status {done.returncode}"
    raise ConfigError(f"invalid --model_class={refs[0]!r}: the import failed: {tail}")


def _check_hf_model_dir(model_dir: str) -> None:
    """A Hugging Face model directory must hold a ``config.json`` (or have exactly one
    sub-directory that does, as KServe's storage initializer may add one level): an empty or
    wrong directory is a configuration error before any port opens, not a crash loop."""
    from steadyserve.runtimes.huggingface.loading import LoadError, find_model_dir

    try:
        find_model_dir(model_dir)
    except LoadError as exc:
        raise ConfigError(f"invalid model directory {model_dir!r}: {exc}") from None


def log_configuration(settings: Settings) -> None:
    """The effective configuration at start-up: one key per line in text logs (readable), one
    line holding the whole mapping in JSON logs (one record, easy to query)."""
    config = settings.redacted()
    if settings.log_format == "json":
        log.info("effective configuration: %s", config)
        return
    log.info("effective configuration (%d settings):", len(config))
    for key, value in config.items():
        log.info("  %s = %r", key, value)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv.insert(0, "serve")  # KServe style: args only
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_CONFIG
    if args.command == "probe":
        from steadyserve.probe.main import run as run_probe

        return run_probe(args)
    if args.command == "build-demo":
        from steadyserve.runtimes.huggingface.tiny import ensure_demo_model

        try:
            print(ensure_demo_model(args.out, args.arch))
        except (OSError, ValueError) as exc:
            sys.stderr.write(f"steadyserve: {exc}\n")
            return EXIT_CONFIG
        return 0
    values = vars(args)
    flags = {k: v for k, v in values.items() if k != "command" and not k.startswith("kserve_")}
    ignored = {
        k[len("kserve_") :]: v
        for k, v in values.items()
        if k.startswith("kserve_") and v is not None
    }
    ts_config = None
    try:
        if flags.get("ts_config"):
            from steadyserve.runtimes.torchserve.config import load_ts_config

            ts_config = load_ts_config(flags["ts_config"])
            for key, value in ts_config.settings.items():  # explicit flags win
                if flags.get(key) is None:
                    flags[key] = value
        settings = build_settings(flags)
        setup_logging(settings)
        specs = model_specs(settings, ts_config)
        from steadyserve.runtimes.vllm.select import apply_backend

        specs = apply_backend(settings, specs)
        check_ports(settings)
        check_model_classes(specs)
    except ConfigError as exc:
        sys.stderr.write(f"steadyserve: {exc}\n")
        return EXIT_CONFIG
    for warning in ts_config.warnings if ts_config is not None else ():
        log.warning("--ts_config: %s", warning)
    from steadyserve.server import run

    for name, value in ignored.items():
        log.warning(
            "--%s=%s is accepted for KServe compatibility and has no effect: %s",
            name,
            value,
            KSERVE_NO_EFFECT[name][1],
        )
    log_configuration(settings)
    return run(settings, specs)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
