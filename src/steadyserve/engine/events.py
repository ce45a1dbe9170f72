"""Typed engine events, for observers (metrics) of an engine client.

Listeners are called as ``listener(client, event)`` with one of these; a renamed field is a
type error, not a silently wrong metric. Token events are per engine step and per request,
timed when the step's output reached the server (not when a reader got round to it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Union

if TYPE_CHECKING:
    from steadyserve.engine.protocol import EngineClient


@dataclass(frozen=True, slots=True)
class Ready:
    """The worker loaded the model and serves (after each start and restart)."""


@dataclass(frozen=True, slots=True)
class Restarted:
    """The worker went away and is being restarted."""

    reason: str


@dataclass(frozen=True, slots=True)
class QueueWait:
    """A request's work started: the seconds it waited in the worker's queue."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Tokens:
    """A generation request's tokens from one engine step. ``first``: its first output
    (``seconds`` is then the time to first token, from admission); otherwise ``seconds`` is
    the gap since its previous output, shared by its ``tokens`` tokens."""

    first: bool
    seconds: float
    tokens: int
    #: the prompt's tokens, on the first output that knows them
    prompt_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Aborted:
    """The caller went away (cancelled, disconnected)."""


@dataclass(frozen=True, slots=True)
class Expired:
    """The request's deadline passed."""


@dataclass(frozen=True, slots=True)
class Failed:
    """The request ended with an error."""

    error: BaseException


EngineEvent = Union[Ready, Restarted, QueueWait, Tokens, Aborted, Expired, Failed]


class Listener(Protocol):
    def __call__(self, client: EngineClient, event: EngineEvent) -> None: ...
