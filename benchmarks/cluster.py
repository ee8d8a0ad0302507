"""The helpers that run the service as ``make run`` does live in :mod:`tools.cluster`, where
``make run`` itself (tools/run.py) uses them (tools never import benchmarks). This name is the same
module, for the benchmarks and tests that import it from here."""

import sys

import tools.cluster

sys.modules[__name__] = tools.cluster
