"""``python -m steadyserve.engine --fd N``: a model worker (see :mod:`steadyserve.engine.worker`)."""

from steadyserve.engine.worker import entry

entry()
