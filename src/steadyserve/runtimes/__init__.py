"""Built-in runtimes (models the server knows how to load)."""
