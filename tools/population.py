"""What the population memory holds per API, and clearing an API's memory.

    python -m tools.population list                       # every API: its counts, and those usable
    python -m tools.population clear --spec spec.json     # forget what was learned for this API
    python -m tools.population clear --api '|billing'     # the same by its key (as `list` shows it)

Works on ``$OPENSESAME_DATA_DIR/population.sqlite`` (``OPENSESAME_POPULATION_PATH``) while the
service runs: the replicas drop a cleared API from their memory within a second.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.errors import PredictorError
from core.priors.population import api_key
from core.settings import load_settings
from core.spec.openapi import parse_spec
from deployments.serving.population_store import PopulationStore, population_config

__all__ = ["main"]


def main(argv: list[str] | None = None, *, prog: str = "python -m tools.population") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, default=None, help="default: the settings' population store")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every API's counts, and how many have enough users to be used")
    clear = sub.add_parser("clear", help="forget everything learned for one API")
    which = clear.add_mutually_exclusive_group(required=True)
    which.add_argument("--api", help="the API's key, as `list` shows it")
    which.add_argument("--spec", type=Path, help="an OpenAPI document of the API (any version)")
    clear.add_argument("--tenant", default="", help="with API keys: whose memory of the API (with --spec)")
    args = parser.parse_args(argv)
    settings = load_settings()
    store = PopulationStore(args.path or settings.population_db_path, config=population_config(settings))
    try:
        if args.command == "list":
            print(json.dumps(store.apis(), indent=1, sort_keys=True))
            return 0
        try:
            key = (args.api if args.api is not None
                   else api_key(parse_spec(args.spec.read_bytes()), args.tenant))
        except (OSError, PredictorError) as exc:  # a bad --spec is bad input: one line, exit 2
            detail = exc.message if isinstance(exc, PredictorError) else str(exc)
            print(f"{parser.prog}: --spec {args.spec}: {detail.splitlines()[0]}", file=sys.stderr)
            return 2
        removed = store.clear(key)
        print(json.dumps({"api": key, "counts_removed": removed}))
        return 0
    finally:
        store.close()


if __name__ == "__main__":
    raise SystemExit(main())
