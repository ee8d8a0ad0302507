"""Call the running opensesame app from ANOTHER Ray job, through a Python ``DeploymentHandle``.

The service runs on a Ray cluster (``make run``, or any ``serve run serve_config.yaml``); this
script is a separate driver that joins that cluster and calls the Ingress deployment directly —
no HTTP, the same pydantic request and response models as ``POST /predict``:

    RAY_AUTH_MODE=disabled python examples/handle_client.py --address 127.0.0.1:6390 examples/request.json
    RAY_AUTH_MODE=disabled python examples/handle_client.py --address 127.0.0.1:6390 - < examples/request.json

(``make run``'s Ray head is ``127.0.0.1:6390``; a head started by ``ray start --head`` without
``--port`` is on Ray's default, 6379.)

Token auth (Ray 2.60): every process of a cluster must agree on ``RAY_AUTH_MODE``. With
``RAY_AUTH_MODE=token`` on the cluster, give this driver the same mode and the cluster's token:

    RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=/secrets/ray_token \\
        python examples/handle_client.py --address HEAD:6379 examples/request.json

(``RAY_AUTH_TOKEN=<token>`` works too; without either Ray reads ``~/.ray/auth_token``.) A local
development cluster started with ``RAY_AUTH_MODE=disabled`` (what ``make run`` does) needs
``RAY_AUTH_MODE=disabled`` here as well. Don't set ``RAY_SERVE_THROUGHPUT_OPTIMIZED`` in this
driver: with it, a synchronous ``.result()`` outside an event loop fails.

Prints the ``PredictResponse`` as JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from deployments.serving.schemas import FeedbackRequest, FeedbackResponse, PredictRequest, PredictResponse
from tools.cluster import become_driver_of, leave_ray

APP_NAME = "opensesame"


def connect(address: str) -> None:
    """Join the running cluster as a new job (never starts a local one: an address is required).
    ``make run``'s head on 127.0.0.1 is a one-machine cluster, and a driver joins it only as part
    of one: Ray reads that from the environment when first imported, hence the imports here."""
    become_driver_of(address)
    import ray

    ray.init(address=address, log_to_driver=False)


def predict(request: PredictRequest, *, app_name: str = APP_NAME, timeout_s: float = 60.0) -> PredictResponse:
    from ray import serve

    handle = serve.get_app_handle(app_name)  # the app's ingress deployment
    return handle.predict.remote(request).result(timeout_s=timeout_s)


def feedback(
    outcome: FeedbackRequest, *, app_name: str = APP_NAME, timeout_s: float = 60.0
) -> FeedbackResponse:
    from ray import serve

    handle = serve.get_app_handle(app_name)
    return handle.feedback.remote(outcome).result(timeout_s=timeout_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True,
                        help="the cluster's GCS address: make run's is 127.0.0.1:6390")
    parser.add_argument("--app-name", default=APP_NAME)
    parser.add_argument("request", help="a /predict request body as a JSON file, or - for stdin")
    args = parser.parse_args(argv)
    raw = sys.stdin.read() if args.request == "-" else Path(args.request).read_text()
    request = PredictRequest.model_validate(json.loads(raw))  # invalid input fails here, not remotely
    connect(args.address)
    try:
        response = predict(request, app_name=args.app_name)
    finally:
        leave_ray()  # leaves the cluster; the service keeps running
    print(response.model_dump_json())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
