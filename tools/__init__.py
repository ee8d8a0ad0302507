"""What operators run: the ``opensesame`` command, retraining and rollout to a running app, and
the load generator. The top layer: it may import :mod:`deployments`, :mod:`ranker` and :mod:`core`."""
