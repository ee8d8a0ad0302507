"""A retrained model rolled out through the RayService resource, so that what KubeRay reconciles
and what runs agree (a ``serve deploy`` into the cluster would be undone at its next reconcile).

    kubectl patch rayservice opensesame --type merge \\
        -p "$(python -m tools.kuberay patch --model-path /app/var/models/VERSION)"

Prints a JSON merge patch whose ``serveConfigV2`` is the manifest's with only the Ranker's
``user_config.model_path`` changed (tools/rollout.py's :func:`live_config`, as for ``make run``):
KubeRay hands it to Serve, which reconfigures the live Ranker replicas in place. ``--model-path``
is a path on the head's data volume (``opensesame retrain`` writes versions under
``/app/var/models``); without it the patch goes back to the shipped model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from tools.rollout import live_config

__all__ = ["rayservice_patch", "main"]

MANIFEST = Path(__file__).resolve().parent.parent / "configs" / "rayservice.yaml"


def rayservice_patch(manifest: dict[str, Any], *, model_path: Path | None) -> dict[str, Any]:
    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    live = live_config(serve_config, model_path=model_path)
    return {"spec": {"serveConfigV2": yaml.safe_dump(live, sort_keys=False)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.kuberay", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["patch"])
    parser.add_argument("--model-path", type=Path, help="the model directory on the head's volume")
    parser.add_argument("--manifest", type=Path, default=MANIFEST)
    args = parser.parse_args(argv)
    manifest = yaml.safe_load(args.manifest.read_text())
    sys.stdout.write(json.dumps(rayservice_patch(manifest, model_path=args.model_path)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
