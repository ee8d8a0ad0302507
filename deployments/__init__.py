"""Serving: the four Serve deployments of the graph (``ingress``, ``candidate_generator``,
``feature_extractor``, ``ranking``), thin classes over :mod:`core`; what only serving needs is in
:mod:`deployments.serving`. Imports :mod:`core`, never :mod:`ranker` or :mod:`tools`."""

# First, before any deployment's module imports its dependencies: a replica of the graph lowers
# its priority here, so its start does not take the CPU from HAProxy and the Ingress.
from deployments.serving.admission import lower_priority_if_graph_replica

lower_priority_if_graph_replica()
