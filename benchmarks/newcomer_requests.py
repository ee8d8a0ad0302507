"""The ten requests a newcomer tried (issue 20, with issue 17's Discord ones), answered again.

    python -m benchmarks.newcomer_requests [--k 3] [--out benchmarks/results/newcomer_requests.md]

Each request runs on a real spec of ``../shared/data/jentic`` (inline, as a user would send it)
through the in-process pipeline (:mod:`deployments.serving.pipeline`: the same stages and the
same answer as the Serve graph), with a fresh data directory: no recorded outcomes, so no
personalisation. For each: the top ``k`` with score, params, ``destructive`` and ``why``, and
the place of the call a person would make next among the top 20 (``right``). They were not
tuned one by one: run this before and after a change to show what it did to them.

Writes ``benchmarks/results/newcomer_requests.md`` (and ``.json``); the answers before issue 20's
fixes (commit 3500e2f, model lgbm-f9) stay in ``newcomer_requests_before.md`` to compare with.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.settings import PROJECT_ROOT, load_settings
from deployments.serving.pipeline import Pipeline
from deployments.serving.schemas import PredictRequest, PredictResponse

__all__ = ["REQUESTS", "Ask", "main"]

RESULTS = PROJECT_ROOT / "benchmarks" / "results"
SPECS = {
    "lyft": "lyft.com/main/1.0.0/openapi.json",
    "zendesk": "zendesk.com/main/2.0.0/openapi.json",
    "jira": "atlassian.com/jira/1001.0.0-SNAPSHOT-636312f2dc6e26921216979d4ae12655beeff255/openapi.json",
    "digitalocean": "digitalocean.com/main/2.0/openapi.json",
    "discord": "discord.com/main/10/openapi.json",
}


@dataclass(frozen=True)
class Ask:
    """One request as the newcomer typed it, and the call a person would make next."""

    name: str
    spec: str  # a key of SPECS
    prompt: str | None
    right: str  # "METHOD <paths key>"
    events: list[dict[str, Any]] = field(default_factory=list)
    # what to look at besides the rank: a param that must not be filled from the events
    note: str = ""


REQUESTS: list[Ask] = [
    Ask("lyft: destination after an eta", "lyft", "change the destination of my ride to the airport",
        "PUT /rides/{id}/destination",
        [{"endpoint": "GET /v1/eta?lat=37.77&lng=-122.41", "params": {"lat": 37.77, "lng": -122.41}},
         {"endpoint": "POST /v1/rides", "params": {"ride_type": "lyft"}},
         {"endpoint": "GET /v1/rides/r_981"}],
        note="the eta's lat/lng are the pickup point: they must not become the new destination"),
    Ask("lyft: book another ride", "lyft", "book another ride", "POST /rides",
        [{"endpoint": "GET /v1/rides"}, {"endpoint": "GET /v1/rides/r_981/receipt"}]),
    Ask("zendesk: reply and solve", "zendesk", "reply to the customer and mark the ticket as solved",
        "PUT /api/v2/tickets/{ticket_id}",
        [{"endpoint": "GET /api/v2/tickets/4821"}, {"endpoint": "GET /api/v2/tickets/4821/comments"}],
        note="spam / redact / suspend are what a user regrets: destructive, not proposed unasked"),
    Ask("zendesk: mark as spam (asked)", "zendesk", "this ticket is spam, mark it as spam",
        "PUT /api/v2/tickets/{ticket_id}/mark_as_spam", [{"endpoint": "GET /api/v2/tickets/4821"}]),
    Ask("jira: move PROJ-123 to Done", "jira", "move PROJ-123 to Done",
        "POST /rest/api/3/issue/{issueIdOrKey}/transitions",
        [{"endpoint": "GET /rest/api/3/issue/PROJ-123"}]),
    Ask("jira: transition PROJ-123 to Done", "jira", "transition PROJ-123 to Done",
        "POST /rest/api/3/issue/{issueIdOrKey}/transitions",
        [{"endpoint": "GET /rest/api/3/issue/PROJ-123"}]),
    Ask("digitalocean: reboot this droplet", "digitalocean", "reboot this droplet",
        "POST /v2/droplets/{droplet_id}/actions", [{"endpoint": "GET /v2/droplets/3164444"}]),
    Ask("discord: delete a message", "discord", "delete the message 1234567 in channel 998877",
        "DELETE /channels/{channel_id}/messages/{message_id}"),
    Ask("discord: send a message", "discord", "send 'hello team' to channel 998877",
        "POST /channels/{channel_id}/messages"),
    Ask("discord: who is in a guild", "discord", "who is in the guild 4455?",
        "GET /guilds/{guild_id}/members"),
]


def _spec(jentic_dir: Path, key: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((jentic_dir / "apis" / "openapi" / SPECS[key]).read_text())
    return loaded


def _rank(answer: PredictResponse, right: str) -> int | None:
    return next((i for i, p in enumerate(answer.predictions, 1) if p.endpoint == right), None)


async def run(k: int, jentic_dir: Path | None = None) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as data_dir:
        settings = load_settings(data_dir=data_dir)
        jentic = jentic_dir or settings.jentic_dir
        pipeline = Pipeline(settings)
        rows = []
        try:
            for ask in REQUESTS:
                request = PredictRequest(user_id="newcomer", spec=_spec(jentic, ask.spec), events=ask.events,
                                         prompt=ask.prompt, k=20)
                answer = await pipeline.predict(request)
                rows.append({
                    "name": ask.name, "prompt": ask.prompt, "right": ask.right, "note": ask.note,
                    "events": [e["endpoint"] for e in ask.events],
                    "rank_of_right": _rank(answer, ask.right),
                    "model_version": answer.metadata.model_version,
                    "top": [p.model_dump(mode="json") for p in answer.predictions[:k]],
                })
        finally:
            await pipeline.aclose()
    return rows


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def markdown(rows: list[dict[str, Any]], *, k: int, commit: str) -> str:
    found = [r["rank_of_right"] for r in rows]
    lines = [
        "# The newcomer's ten requests (issue 20)",
        "",
        f"`python -m benchmarks.newcomer_requests` at commit {commit}: the in-process pipeline, model "
        f"`{rows[0]['model_version']}`, no recorded outcomes. `right`: the call a person would make "
        f"next, and its place among the top 20 (– : not there).",
        "",
        f"Right call first: {sum(r == 1 for r in found)} of {len(rows)}; in the top 3: "
        f"{sum(r is not None and r <= 3 for r in found)}.",
        "",
    ]
    for r in rows:
        lines += [f"## {r['name']}", "",
                  f"prompt: \"{r['prompt']}\"" + (f"; events: {', '.join(f'`{e}`' for e in r['events'])}"
                                                  if r["events"] else "; no events"),
                  "",
                  f"right: `{r['right']}` — place {r['rank_of_right'] or '–'}"
                  + (f" ({r['note']})" if r["note"] else ""), "",
                  "| # | score | endpoint | params | missing | destructive | why |",
                  "| ---: | ---: | --- | --- | --- | --- | --- |"]
        for i, p in enumerate(r["top"][:k], 1):
            params = ", ".join(f"{n}={json.dumps(v)}" for n, v in p["params"].items())
            lines.append(f"| {i} | {p['score']:.3f} | `{p['endpoint']}` | {params} | "
                         f"{', '.join(p['missing_params'])} | {'yes' if p['destructive'] else ''} | "
                         f"{p['why']} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=3, help="predictions shown per request (default 3)")
    parser.add_argument("--jentic-dir", type=Path)
    parser.add_argument("--out", type=Path, default=RESULTS / "newcomer_requests.md")
    args = parser.parse_args(argv)
    rows = asyncio.run(run(args.k, args.jentic_dir))
    text = markdown(rows, k=args.k, commit=_commit())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
