"""Protocol codecs: wire formats ⇄ neutral types. Pure functions, no I/O."""
