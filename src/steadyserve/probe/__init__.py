"""``steadyserve probe URL``: test any inference endpoint for the failures that take servers down.

Modules: :mod:`~steadyserve.probe.wire` (one HTTP/1.1 connection, faults visible),
:mod:`~steadyserve.probe.discovery` (protocols, models, readiness), :mod:`~steadyserve.probe.cases`
and :mod:`~steadyserve.probe.battery` (the declarative cases), :mod:`~steadyserve.probe.shapes`
(response-shape checks), :mod:`~steadyserve.probe.runner` (cases + follow-ups → verdicts),
:mod:`~steadyserve.probe.report` (table, JSON, JUnit, progress), :mod:`~steadyserve.probe.main`
(flags, exit codes). Standard library only: it runs wherever steadyserve is installed.
"""
