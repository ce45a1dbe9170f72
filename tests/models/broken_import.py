"""A model file whose import fails (the CLI must refuse it before any port opens)."""

import steadyserve_no_such_module  # noqa: F401
