"""vLLM as a generation backend (``--backend vllm|auto``), inside steadyserve's worker.

:mod:`.select` decides which engine serves a Hugging Face model (importing vLLM only when it has
to); :mod:`.model` is the :class:`~steadyserve.model.Model` that holds vLLM's engine;
:mod:`.engine` drives that engine step by step as a
:class:`~steadyserve.model.BatchGenerator`, so the scheduler, admission, deadlines, aborts,
streams and every edge check stay steadyserve's.
"""
