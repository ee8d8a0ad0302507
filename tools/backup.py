"""Copy the service's SQLite stores while it serves: ``python -m tools.backup --out DIR``.

Each store is copied with SQLite's online backup API in one step: the copy is the database as
of one committed transaction, whatever the replicas write meanwhile (copying the file, or the
file without its ``-wal``, can give a torn or stale database). Each copy is checked with
``PRAGMA integrity_check`` and listed, with its row counts and sha256, in ``DIR/manifest.json``.

The stores are those the settings (``OPENSESAME_*``) name: the feedback database, the population
memory learned from it and the spec cache; ``--data-dir`` overrides ``OPENSESAME_DATA_DIR``. A
store that does not exist is skipped. With the store actor (several nodes), run it on the node
that holds the data (``opensesame_data``): the files are there.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from core.scorer import file_sha256
from core.settings import load_settings

__all__ = ["backup_store", "backup_all", "main"]


def backup_store(src: Path, dst: Path) -> dict[str, Any]:
    """Copy one SQLite database consistently to ``dst`` (replaced); what was copied."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".partial")
    tmp.unlink(missing_ok=True)
    started = time.perf_counter()
    # read-only: a backup never takes the write lock, and never creates a missing store
    source = sqlite3.connect(f"{src.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    target = sqlite3.connect(tmp)
    try:
        source.backup(target)  # pages=-1: one step, one read transaction, one consistent state
        check = target.execute("PRAGMA integrity_check").fetchone()[0]
        if check != "ok":
            raise RuntimeError(f"the copy of {src} fails its integrity check: {check}")
        tables = [r[0] for r in target.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        counts = {t: target.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
        target.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
    finally:
        target.close()
        source.close()
    tmp.replace(dst)
    return {"source": str(src), "copy": dst.name, "rows": counts, "sha256": file_sha256(dst),
            "bytes": dst.stat().st_size, "seconds": round(time.perf_counter() - started, 3)}


def backup_all(out: Path, *, data_dir: str | None = None) -> dict[str, Any]:
    settings = load_settings(data_dir=data_dir) if data_dir else load_settings()
    stores: dict[str, Path] = {"feedback": settings.feedback_db_path,
                               "population": settings.population_db_path,
                               "spec_cache": settings.spec_cache_path}
    manifest: dict[str, Any] = {"created_at": time.time(), "stores": {}}
    for name, path in stores.items():
        if path.is_file():
            manifest["stores"][name] = backup_store(path, out / f"{name}.sqlite")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.backup", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for the copies")
    parser.add_argument("--data-dir", help="the service's data dir (default: the settings')")
    args = parser.parse_args(argv)
    manifest = backup_all(args.out, data_dir=args.data_dir)
    json.dump(manifest, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0 if manifest["stores"] else 1


if __name__ == "__main__":
    sys.exit(main())
