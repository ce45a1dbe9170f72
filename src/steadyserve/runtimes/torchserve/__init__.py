"""TorchServe handlers and ``.mar`` archives on steadyserve (``pip install steadyserve[torchserve]``).

* :mod:`.archive` - safe ``.mar`` unpacking, ``MANIFEST.json`` and ``model-config.yaml``;
* :mod:`.config` - ``config.properties`` (``--ts_config``) → settings;
* :mod:`.specs` - model specs for archives (``--model_archive``, model stores);
* :mod:`.context` - the handler's ``context`` (``ts.context.Context``) and metrics;
* :mod:`.handler` - :class:`~.handler.TorchServeModel`, the steadyserve model that runs a handler.

The routes (``/predictions``, ``/explanations``, ``/ping``, management) are in
``steadyserve.transport.routes_torchserve``. Only :mod:`.handler` and :mod:`.context` import
``ts``; the server process reads archives without it.
"""
