"""The dataset store every stage writes through: parquet shards plus a `manifest.json`.

A stage cuts its input into numbered shards and asks the store which are finished; each shard is
written to a temp file and renamed into place, so a killed run leaves only whole shards behind and a
re-run of the same command skips them (resume without lost or duplicated rows). Re-running with a
different config into the same folder is refused unless `overwrite` is set.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mrt_star import __version__
from mrt_star.errors import UserError

MANIFEST = "manifest.json"
SHARD_GLOB = "shard-*.parquet"
# Keys of a config that do not change what a stage computes, so they never block a resume.
RESUME_NEUTRAL_KEYS = ("overwrite", "output", "progress")


class StoreError(UserError):
    """An output folder that cannot be opened as asked."""


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def fingerprint(source: str | Path | dict | None) -> str:
    """Return a short content hash of an input: a file's bytes, a stage folder's manifest+shards, or a value."""
    h = hashlib.sha256()
    p = Path(str(source)) if isinstance(source, (str, Path)) else None
    if p is not None and p.is_file():
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    elif p is not None and p.is_dir():
        for shard in sorted(p.glob(SHARD_GLOB)):
            h.update(f"{shard.name}:{shard.stat().st_size}".encode())
        manifest = p / MANIFEST
        if manifest.exists():
            data = json.loads(manifest.read_text())
            h.update(_canonical({k: data.get(k) for k in ("stage", "config", "input_fingerprint")}).encode())
    else:
        h.update(_canonical(source).encode())
    return h.hexdigest()[:16]


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in RESUME_NEUTRAL_KEYS}


class Store:
    """One stage's output folder: which shards are finished, writing new ones, and the manifest."""

    def __init__(self, path: str | Path, stage: str, config: dict[str, Any], input_fingerprint: str,
                 overwrite: bool = False):
        self.path = Path(path)
        self.stage = stage
        self.config = config
        self.input_fingerprint = input_fingerprint
        self._started = time.time()
        self.manifest = self._open(overwrite)

    # -- opening --------------------------------------------------------------------------------
    def _open(self, overwrite: bool) -> dict[str, Any]:
        old = self._read_manifest()
        if old is not None and not overwrite:
            same = (old.get("stage") == self.stage and old.get("input_fingerprint") == self.input_fingerprint
                    and _canonical(_comparable(old.get("config", {}))) == _canonical(_comparable(self.config)))
            if not same:
                raise StoreError(
                    f"{self.path} already holds a {old.get('stage')} output made with a different config or "
                    f"input; pass --overwrite to replace it, or choose another --output"
                )
            old["config"] = self.config  # the same up to resume-neutral keys; keep the latest
            old["status"] = "complete" if old.get("status") == "complete" else "running"
            old.setdefault("resumed", 0)
            old["resumed"] += old["status"] != "complete"
            return old
        if self.path.exists() and overwrite:
            self._clear()
        elif self.path.exists() and any(self.path.iterdir()) and old is None:
            raise StoreError(f"{self.path} exists and is not an mrt-star output folder; choose another --output")
        self.path.mkdir(parents=True, exist_ok=True)
        manifest = {
            "stage": self.stage, "status": "running", "mrt_star_version": __version__,
            "config": self.config, "input_fingerprint": self.input_fingerprint,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "timings": {}, "counts": {}, "summary": {},
        }
        self._write_manifest(manifest)
        return manifest

    def _read_manifest(self) -> dict[str, Any] | None:
        p = self.path / MANIFEST
        if not p.exists():
            return None
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError:
            raise StoreError(f"{p} is not valid JSON; delete the folder or pass --overwrite") from None

    def _clear(self) -> None:
        if not (self.path / MANIFEST).exists() and any(self.path.iterdir()):
            raise StoreError(f"refusing to --overwrite {self.path}: it is not an mrt-star output folder")
        shutil.rmtree(self.path)

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        _atomic_write_text(self.path / MANIFEST, json.dumps(manifest, indent=2, default=str) + "\n")

    # -- shards ---------------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        """Return True when a previous run of the same command finished this output."""
        return self.manifest.get("status") == "complete"

    def shard_path(self, index: int) -> Path:
        return self.path / f"shard-{index:05d}.parquet"

    def is_done(self, index: int) -> bool:
        """Return True when shard `index` was written whole (or recorded as empty)."""
        return self.shard_path(index).exists() or self.shard_path(index).with_suffix(".empty").exists()

    def write_shard(self, index: int, rows: list[dict[str, Any]], schema: Any = None) -> Path:
        """Write shard `index` atomically and return its path; an empty shard leaves a `.empty` marker."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        final = self.shard_path(index)
        if not rows:
            final.with_suffix(".empty").touch()
            return final.with_suffix(".empty")
        table = pa.Table.from_pylist(rows, schema=schema)
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        pq.write_table(table, tmp)
        os.replace(tmp, final)
        return final

    def finish(self, summary: dict[str, Any] | None = None, counts: dict[str, Any] | None = None) -> Path:
        """Mark the output complete with its counts, timings and summary; return the folder."""
        for stray in self.path.glob(".*.tmp-*"):
            stray.unlink(missing_ok=True)
        self.manifest["status"] = "complete"
        self.manifest["counts"] = {"rows": count_rows(self.path), "shards": len(shard_files(self.path)), **(counts or {})}
        self.manifest["timings"]["seconds_last_run"] = round(time.time() - self._started, 3)
        self.manifest["summary"] = summary or {}
        self.manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        self._write_manifest(self.manifest)
        return self.path


def shard_files(path: str | Path) -> list[Path]:
    """Return the finished parquet shards of an output folder, in order."""
    return sorted(Path(path).glob(SHARD_GLOB))


def count_rows(path: str | Path) -> int:
    """Return the number of rows over all shards (from parquet metadata, without reading data)."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in shard_files(path))


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Return an output folder's manifest, or raise StoreError with what to do."""
    p = Path(path) / MANIFEST
    if not p.exists():
        raise StoreError(f"{path} is not an mrt-star stage output (no {MANIFEST}); run the previous stage first")
    return json.loads(p.read_text())


def read_rows(path: str | Path, require_complete: bool = True) -> list[dict[str, Any]]:
    """Return all rows of an output folder as dicts (shards in order)."""
    import pyarrow.parquet as pq

    manifest = read_manifest(path)
    if require_complete and manifest.get("status") != "complete":
        raise StoreError(f"{path} is an unfinished {manifest.get('stage')} output; re-run that stage to finish it")
    rows: list[dict[str, Any]] = []
    for shard in shard_files(path):
        rows.extend(pq.read_table(shard).to_pylist())
    return rows


def chunk(items: list[Any], size: int) -> Iterable[tuple[int, list[Any]]]:
    """Yield (shard index, items) in fixed-size pieces; the same input always gives the same shards."""
    for index, start in enumerate(range(0, len(items), max(1, size))):
        yield index, items[start : start + size]
