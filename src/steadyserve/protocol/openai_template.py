"""Client-supplied chat templates (``--allow_request_chat_template``): a Jinja sandbox bounded in
time, in output size and in the size of every value it computes.

Pure, blocking: the routes call :func:`render_template_sandboxed` in a thread. Anything a
client's template raises is a :class:`TemplateError` (400, ``param`` ``chat_template``).
"""

from __future__ import annotations

import functools
import math
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

from steadyserve.errors import InvalidInput


class TemplateError(InvalidInput):
    """A request chat template failed, ran too long, or rendered too much."""


#: the largest integer (in bits) a request template's arithmetic may produce
MAX_TEMPLATE_INT_BITS = 16_384
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|[0-9]+)?(?:\.(\*|[0-9]+))?")


def _too_big(what: str) -> TemplateError:
    return TemplateError(f"chat_template: {what} would be too large", param="chat_template")


def _over(number: str | int, limit: int) -> bool:
    """Whether a width (digits, ``*`` or an int) may exceed ``limit``."""
    if isinstance(number, int):
        return number > limit
    return number == "*" or len(number) > len(str(limit)) or int(number) > limit


def check_template_binop(operator: str, left: Any, right: Any, max_chars: int) -> None:
    """Refuse an operation of a request template whose result would be huge: ``**`` or ``*`` on
    integers beyond :data:`MAX_TEMPLATE_INT_BITS`, sequence repetition or concatenation beyond
    ``max_chars``, ``%`` formatting with a width beyond ``max_chars``. One such C-level operation
    holds the GIL for as long as it runs; the time limit's tracer cannot stop it."""
    ints = isinstance(left, int) and isinstance(right, int)
    if operator == "**" and ints:
        if right > 0 and abs(left) > 1 and right * math.log2(abs(left)) > MAX_TEMPLATE_INT_BITS:
            raise _too_big(f"an integer power ({MAX_TEMPLATE_INT_BITS}-bit limit)")
    elif operator == "*" and ints:
        if left.bit_length() + right.bit_length() > MAX_TEMPLATE_INT_BITS:
            raise _too_big(f"an integer product ({MAX_TEMPLATE_INT_BITS}-bit limit)")
    elif operator == "*":
        seq, times = (left, right) if isinstance(right, int) else (right, left)
        if (
            isinstance(times, int)
            and isinstance(seq, (str, list, tuple))
            and (len(seq) * times > max_chars)
        ):
            raise _too_big(f"a repetition ({max_chars} items limit)")
    elif (
        operator == "+"
        and isinstance(left, (str, list, tuple))
        and isinstance(right, (str, list, tuple))
    ):
        if len(left) + len(right) > max_chars:
            raise _too_big(f"a concatenation ({max_chars} items limit)")
    elif operator == "%" and isinstance(left, str):
        check_percent_format(left, max_chars)


def check_percent_format(fmt: str, max_chars: int) -> None:
    """``%`` formatting: no width or precision beyond ``max_chars`` (nor a ``*`` one)."""
    for width, precision in _PERCENT_SPEC.findall(fmt):
        if any(n and _over(n, max_chars) for n in (width, precision)):
            raise _too_big(f"a %-format width ({max_chars} characters limit)")


def _check_format_specs(fmt: str, max_chars: int) -> None:
    """``str.format``: no width or precision beyond ``max_chars``, no nested (argument) ones."""
    import string

    for _, _, spec, _ in string.Formatter().parse(fmt):
        if spec and ("{" in spec or any(_over(n, max_chars) for n in re.findall("[0-9]+", spec))):
            raise _too_big(f"a format width ({max_chars} characters limit)")


def check_template_call(
    func: Any, args: Sequence[Any], kwargs: dict[str, Any], max_chars: int
) -> None:
    """Refuse a ``str`` method call of a request template whose result would be huge: a
    padding width (``center``, ``ljust``, ``zfill``, ...) or format width beyond
    ``max_chars``, a ``replace`` or ``join`` that would grow past it."""
    method = getattr(func, "__wrapped__", func)  # the sandbox wraps str.format
    owner = getattr(method, "__self__", None)
    if not isinstance(owner, str):
        return
    name = getattr(method, "__name__", "")
    if any(isinstance(v, int) and v > max_chars for v in (*args, *kwargs.values())):
        raise _too_big(f"str.{name} ({max_chars} characters limit)")
    if name in ("format", "format_map"):
        _check_format_specs(owner, max_chars)
    elif name == "replace" and len(args) >= 2 and all(isinstance(a, str) for a in args[:2]):
        if len(owner) + owner.count(args[0]) * len(args[1]) > max_chars:
            raise _too_big(f"str.replace ({max_chars} characters limit)")
    elif (
        name == "join"
        and args
        and isinstance(args[0], (str, list, tuple))
        and len(owner) * len(args[0]) > max_chars
    ):
        raise _too_big(f"str.join ({max_chars} characters limit)")


def _bounded_filters(filters: dict[str, Any], max_chars: int) -> dict[str, Any]:
    """The padding and formatting filters, refusing output beyond ``max_chars``."""
    center, indent, fmt = filters["center"], filters["indent"], filters["format"]

    def do_center(value: Any, width: int = 80) -> Any:
        if isinstance(width, int) and width > max_chars:
            raise _too_big(f"center ({max_chars} characters limit)")
        return center(value, width)

    def do_indent(value: Any, width: int | str = 4, *args: Any, **kwargs: Any) -> Any:
        size = len(width) if isinstance(width, str) else width
        if isinstance(size, int) and size * (str(value).count("\n") + 1) > max_chars:
            raise _too_big(f"indent ({max_chars} characters limit)")
        return indent(value, width, *args, **kwargs)

    def do_format(value: Any, *args: Any, **kwargs: Any) -> Any:
        check_percent_format(str(value), max_chars)
        return fmt(value, *args, **kwargs)

    return {**filters, "center": do_center, "indent": do_indent, "format": do_format}


@functools.cache
def _sandbox_class() -> type[Any]:
    """An immutable Jinja sandbox that bounds what one operation can build (see
    :func:`check_template_binop`, :func:`check_template_call`). Built on first use: ``jinja2``
    is imported only when a request brings a template."""
    from jinja2.runtime import Context
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"**", "*", "+", "%"})

        def __init__(self, max_chars: int, **options: Any) -> None:
            super().__init__(**options)
            self.max_chars = max_chars
            self.filters = _bounded_filters(self.filters, max_chars)

        def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
            check_template_binop(operator, left, right, self.max_chars)
            return super().call_binop(context, operator, left, right)

        def call(
            __self,
            __context: Context,
            __obj: Any,
            *args: Any,  # noqa: N805
            **kwargs: Any,
        ) -> Any:
            check_template_call(__obj, args, kwargs, __self.max_chars)
            return super().call(__context, __obj, *args, **kwargs)

    return BoundedSandbox


def render_template_sandboxed(
    template: str,
    variables: dict[str, Any],
    *,
    time_limit_s: float = 2.0,
    max_chars: int = 1_000_000,
) -> str:
    """Render a client-supplied Jinja template in an immutable sandbox, bounded in time (a
    tracer stops it between lines, compilation included), in the size of what one operation can
    build, and in output size. Whatever the template raises is a :class:`TemplateError` (400).
    Blocking: call it off the event loop."""
    env = _sandbox_class()(max_chars, trim_blocks=True, lstrip_blocks=True)
    deadline = time.monotonic() + time_limit_s

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if time.monotonic() > deadline:
            raise TimeoutError("chat template rendering took too long")
        return tracer

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        return _render(env, template, variables, max_chars)
    except TemplateError:
        raise
    except TimeoutError:
        raise TemplateError(
            f"chat_template did not render within {time_limit_s}s", param="chat_template"
        ) from None
    except Exception as exc:  # noqa: BLE001 - the client's template raised: its error, a 400
        raise TemplateError(
            f"chat_template failed: {_describe(exc)}", param="chat_template"
        ) from None
    finally:
        sys.settrace(previous)


def _render(env: Any, template: str, variables: dict[str, Any], max_chars: int) -> str:
    from jinja2 import TemplateSyntaxError

    try:
        compiled = env.from_string(template)
    except TemplateSyntaxError as exc:
        raise TemplateError(
            f"chat_template is invalid: {_describe(exc)}", param="chat_template"
        ) from None
    parts: list[str] = []
    size = 0
    for chunk in compiled.generate(**variables):
        size += len(chunk)
        if size > max_chars:
            raise TemplateError(
                f"chat_template rendered more than {max_chars} characters", param="chat_template"
            )
        parts.append(chunk)
    return "".join(parts)


def _describe(exc: BaseException) -> str:
    """An exception as a short message: its type (unless a Jinja error) and a bounded text."""
    text = str(exc)
    text = text if len(text) <= 300 else text[:300] + "..."
    if type(exc).__module__.startswith("jinja2"):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
