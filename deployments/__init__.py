"""Serving: the four Serve deployments of the graph (``ingress``, ``candidate_generator``,
``feature_extractor``, ``ranking``), thin classes over :mod:`core`; what only serving needs is in
:mod:`deployments.serving`. Imports :mod:`core`, never :mod:`ranker` or :mod:`tools`."""
