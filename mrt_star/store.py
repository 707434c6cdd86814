"""The dataset store every stage writes through: parquet shards plus a `manifest.json`.

A stage cuts its input into numbered shards and asks the store which are finished; each shard is
written to a temp file and renamed into place, so a killed run leaves only whole shards behind and a
re-run of the same command skips them (resume without lost or duplicated rows). Re-running with a
different config into the same folder is refused unless `overwrite` is set.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import time
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mrt_star import __version__, output_guard
from mrt_star.errors import UserError

MANIFEST = "manifest.json"
SHARD_GLOB = "shard-*.parquet"
# Keys of a config that do not change what a stage computes, so they never block a resume.
RESUME_NEUTRAL_KEYS = ("overwrite", "output", "progress")


class StoreError(UserError):
    """An output folder that cannot be opened as asked."""


def check_output_path(path: str | Path) -> None:
    """Raise StoreError now (before any model load) when an output path is a file or a folder mrt-star did not make."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise StoreError(f"output: {path} is an existing file, not a folder; choose another --output")
    if output_guard.has_content(path) and output_guard.kind_of(path) != "stage":
        found = "a manifest.json mrt-star did not write" if (path / MANIFEST).exists() else "no manifest.json"
        raise StoreError(f"{path} exists and is not an mrt-star output folder ({found}); nothing was removed; "
                         f"choose another --output")


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


def _comparable(config: dict[str, Any], neutral: tuple[str, ...] = RESUME_NEUTRAL_KEYS) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in neutral}


def resume_or_refuse(folder: str | Path, what: str, old: dict[str, Any] | None, new: dict[str, Any],
                     overwrite: bool, neutral: tuple[str, ...] = RESUME_NEUTRAL_KEYS) -> str:
    """Return 'fresh' (nothing there, or --overwrite) or 'resume' (same config and input); refuse anything else.

    The one rule every output follows (stage folders, fine-tuned models, run folders): the same command
    resumes; a different config or input is refused unless `overwrite` is set. `old` and `new` are records of
    {"config": ..., "input_fingerprint": ...} (either key may be absent); `neutral` config keys never block.
    """
    if old is None or overwrite:
        return "fresh"
    same = (_canonical(_comparable(old.get("config", {}), neutral)) == _canonical(_comparable(new.get("config", {}), neutral))
            and old.get("input_fingerprint") == new.get("input_fingerprint"))
    if not same:
        raise StoreError(f"{folder} already holds {what} made with a different config or input; pass --overwrite "
                         f"to replace it, or choose another --output")
    return "resume"


class Store:
    """One stage's output folder: which shards are finished, writing new ones, and the manifest."""

    def __init__(self, path: str | Path, stage: str, config: dict[str, Any], input_fingerprint: str,
                 overwrite: bool = False):
        self.path = Path(path)
        self.stage = stage
        self.config = config
        self.input_fingerprint = input_fingerprint
        self._started = time.time()
        check_output_path(self.path)
        output_guard.acquire(self.path)  # one writer per folder until finish() or process exit
        self._unlock = weakref.finalize(self, output_guard.release, self.path)  # runs once: finish() or GC
        self.manifest = self._open(overwrite)

    # -- opening --------------------------------------------------------------------------------
    def _open(self, overwrite: bool) -> dict[str, Any]:
        old = self._read_manifest()
        if old is not None and not output_guard.is_our_manifest(old) and not overwrite:
            raise StoreError(f"{self.path} holds a {MANIFEST} that mrt-star did not write; choose another --output")
        if old is not None and old.get("stage") != self.stage and not overwrite:
            raise StoreError(f"{self.path} already holds a {old.get('stage')} output; pass --overwrite to replace "
                             f"it, or choose another --output")
        record = {"config": self.config, "input_fingerprint": self.input_fingerprint}
        if old is not None and resume_or_refuse(self.path, f"a {old.get('stage')} output", old, record,
                                                overwrite) == "resume":
            old["config"] = self.config  # the same up to resume-neutral keys; keep the latest
            timings = old.setdefault("timings", {})
            self._prior_seconds = float(timings.get("seconds_total", timings.get("seconds_last_run", 0.0)) or 0.0)
            if old.get("status") != "complete":  # a run that continues a partial output
                old["status"] = "running"
                old["resumed"] = int(old.get("resumed", 0)) + 1
                self._write_manifest(old)
            return old
        self._prior_seconds = 0.0
        if overwrite and output_guard.has_content(self.path):
            output_guard.remove_ours(self.path, "stage")  # refuses folders and files mrt-star did not write
        self.path.mkdir(parents=True, exist_ok=True)
        manifest = {
            "stage": self.stage, "status": "running", "mrt_star_version": __version__,
            "config": self.config, "input_fingerprint": self.input_fingerprint,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "timings": {}, "counts": {}, "summary": {}, "resumed": 0,
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
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, final)
        except OSError as err:  # disk full, read-only folder: no partial shard, one line, resume later
            tmp.unlink(missing_ok=True)
            reason = err.strerror or errno.errorcode.get(err.errno or 0, "") or str(err)
            raise StoreError(f"{self.path}: cannot write shard {index} ({reason}); free space or fix the folder's "
                             f"permissions, then re-run the same command to resume") from None
        self._record_time()
        return final

    def _record_time(self) -> None:
        """Keep the manifest's total time current, so a killed run's time still counts after a resume."""
        self.manifest.setdefault("timings", {})["seconds_total"] = round(
            self._prior_seconds + time.time() - self._started, 3)
        self._write_manifest(self.manifest)

    def finish(self, summary: dict[str, Any] | None = None, counts: dict[str, Any] | None = None) -> Path:
        """Mark the output complete with its counts, timings and summary; return the folder."""
        for stray in self.path.glob(".*.tmp-*"):
            stray.unlink(missing_ok=True)
        self.manifest["status"] = "complete"
        self.manifest["counts"] = {"rows": count_rows(self.path), "shards": len(shard_files(self.path)), **(counts or {})}
        timings = self.manifest.setdefault("timings", {})
        timings["seconds_last_run"] = round(time.time() - self._started, 3)
        timings["seconds_total"] = round(self._prior_seconds + timings["seconds_last_run"], 3)
        self.manifest["summary"] = summary or {}
        self.manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        self._write_manifest(self.manifest)
        self._unlock()
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


def _unfinished(path: str | Path, stage: Any, prefix: str) -> str:
    """Return the message for reading an unfinished output: still being written (by whom), or stopped."""
    pid = output_guard.writer_pid(path)
    if pid is not None:
        return (f"{prefix}{path} is still being written by `mrt-star {stage}` (pid {pid}); wait for it to finish, "
                f"then run this again")
    return f"{prefix}{path} is an unfinished {stage} output (it was stopped); re-run `mrt-star {stage}` to finish it"


def read_stage_input(path: str | None, stages: tuple[str, ...], verb: str,
                     needed: tuple[str, ...] | dict[str, tuple[str, ...]] = ()) -> dict[str, Any]:
    """Return the manifest of `path` after checking it is a finished output of one of `stages` with `needed` columns.

    The one check every stage makes of a previous stage's output; `needed` may map a stage to its columns.
    """
    import pyarrow.parquet as pq

    wanted = " or ".join(f"`mrt-star {s}`" for s in stages)
    if not path:
        raise StoreError(f"input: pass the output folder of {wanted} (--input DIR)")
    if not Path(path).is_dir():
        raise StoreError(f"input: {path} is not a folder; pass the output folder of {wanted}")
    manifest = read_manifest(path)
    stage = manifest.get("stage")
    if stage not in stages:
        raise StoreError(f"input: {path} is a {stage!r} output; {verb} reads the output of {wanted}")
    if manifest.get("status") != "complete":
        raise StoreError(_unfinished(path, stage, "input: "))
    columns = needed.get(stage, ()) if isinstance(needed, dict) else needed
    shards = shard_files(path)
    if shards and columns:
        names = set(pq.read_schema(shards[0]).names)
        missing = [c for c in columns if c not in names]
        if missing:
            raise StoreError(f"input: {path} lacks the column(s) {', '.join(missing)}; is it a {stage} output of "
                             f"this mrt-star version?")
    return manifest


def read_rows(path: str | Path, require_complete: bool = True) -> list[dict[str, Any]]:
    """Return all rows of an output folder as dicts (shards in order)."""
    import pyarrow.parquet as pq

    manifest = read_manifest(path)
    if require_complete and manifest.get("status") != "complete":
        raise StoreError(_unfinished(path, manifest.get("stage"), ""))
    rows: list[dict[str, Any]] = []
    for shard in shard_files(path):
        rows.extend(pq.read_table(shard).to_pylist())
    return rows


def chunk(items: list[Any], size: int) -> Iterable[tuple[int, list[Any]]]:
    """Yield (shard index, items) in fixed-size pieces; the same input always gives the same shards."""
    for index, start in enumerate(range(0, len(items), max(1, size))):
        yield index, items[start : start + size]
