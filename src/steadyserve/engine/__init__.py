"""The engine: admission and exactly-once completion (client), the supervised worker process
(worker, supervisor in client), and its scheduler (dynamic + continuous batching)."""
