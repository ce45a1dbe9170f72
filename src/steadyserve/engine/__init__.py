"""The engine: the :class:`~steadyserve.engine.protocol.EngineClient` interface the transports
use; its implementation (client: admission, exactly-once completion, per-step output), which
owns a supervisor (the worker process's lifecycle); the IPC messages; the worker process and
its scheduler (dynamic + continuous batching). See docs/architecture.md."""
