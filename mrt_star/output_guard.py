"""Output folders you can trust: one writer at a time, and `--overwrite` that removes only what mrt-star wrote.

The lock is an advisory `flock` on `.mrt-star.lock` inside the folder: the kernel drops it when the holder
exits in any way (SIGKILL included), so a crashed run never leaves a stale lock behind, and the file records
the holder's pid so a second writer (or a reader) can be told who is writing. Within one process the lock is
re-entrant: stages of one `mrt-star run` reopen folders the same process already holds.

Removal first checks every entry against what the toolkit writes for that kind of folder (stage output,
fine-tuned model, run folder) and refuses, naming the first foreign entry, before deleting anything.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from mrt_star.errors import UserError

LOCK_NAME = ".mrt-star.lock"
MANIFEST = "manifest.json"
STAGES = ("generate", "score", "filter", "eval")
# Keys every manifest the store writes has; a manifest.json without them was written by something else.
MANIFEST_KEYS = ("stage", "status", "mrt_star_version", "config")
EVAL_FILES = ("metrics.json", "accuracy_vs_tokens.png", "j_curves.png", "regret.png", "pass_maj_at_k.png")
MODEL_MARKERS = ("finetune_config.json", "training_summary.json")
# What transformers/TRL/PEFT save into a model folder or a checkpoint (weights, tokenizer, states, plots).
MODEL_SUFFIXES = (".json", ".safetensors", ".bin", ".pt", ".pth", ".png", ".txt", ".jinja", ".model", ".md",
                  ".tiktoken", ".index")
RUN_FILES = ("run_config.json", "run_summary.json")

_held: dict[str, list[Any]] = {}  # resolved folder -> [pid, open lock file, holders] held by this process


class OutputFolderError(UserError):
    """An output folder that another process is writing, or that holds files mrt-star did not write."""


# --- locking ------------------------------------------------------------------------------------------


def check_not_file(folder: str | Path, what: str = "output") -> None:
    """Raise before any work when the output path names an existing file (it must be a folder)."""
    if Path(folder).exists() and not Path(folder).is_dir():
        raise OutputFolderError(f"{what}: {folder} is an existing file, not a folder; choose another --output")


def _key(folder: Path) -> str:
    return str(folder.resolve())


def acquire(folder: str | Path) -> Path:
    """Take the folder's writer lock for this process (creating the folder), or raise naming the holder's pid."""
    folder = Path(folder)
    check_not_file(folder)
    key = _key(folder)
    if key in _held and _held[key][0] == os.getpid():
        _held[key][2] += 1
        return folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / LOCK_NAME, "a+")  # noqa: SIM115 - held until release or process exit
    except OSError as err:
        raise OutputFolderError(f"{folder}: cannot be written ({err.strerror or err}); fix its permissions or "
                                f"choose another --output") from None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _holder_pid(handle)
        handle.close()
        raise OutputFolderError(f"{folder} is being written by another mrt-star process (pid {pid}); wait for it "
                                f"to finish or stop it, or choose another --output") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _held[key] = [os.getpid(), handle, 1]
    return folder


def _holder_pid(handle: Any) -> str:
    """Return the pid the holder wrote into the lock file (it writes it just after taking the lock)."""
    for _ in range(100):
        handle.seek(0)
        pid = handle.read().strip()
        if pid:
            return pid
        time.sleep(0.005)
    return "unknown"


def release(folder: str | Path) -> None:
    """Drop one hold of this process on the folder; the lock goes when the last holder releases it."""
    key = _key(Path(folder))
    entry = _held.get(key)
    if entry is None or entry[0] != os.getpid():
        _held.pop(key, None)  # inherited through fork: not ours to hold
        return
    entry[2] -= 1
    if entry[2] <= 0:
        del _held[key]
        entry[1].close()  # closing the file drops the flock


def writer_pid(folder: str | Path) -> str | None:
    """Return the pid of the process writing the folder now, or None when no one holds its lock."""
    folder = Path(folder)
    key = _key(folder)
    if key in _held and _held[key][0] == os.getpid():
        return str(os.getpid())
    lock = folder / LOCK_NAME
    if not lock.is_file():
        return None
    with open(lock) as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder_pid(handle)
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return None


def has_content(folder: str | Path) -> bool:
    """Return True when the folder exists and holds anything besides its lock file."""
    folder = Path(folder)
    return folder.is_dir() and any(p.name != LOCK_NAME for p in folder.iterdir())


# --- ownership ----------------------------------------------------------------------------------------


def is_our_manifest(data: Any) -> bool:
    """Return True when a parsed manifest.json has the shape the store writes."""
    return isinstance(data, dict) and all(k in data for k in MANIFEST_KEYS) and isinstance(data["config"], dict)


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def kind_of(folder: Path) -> str | None:
    """Return 'stage', 'model' or 'run' for a folder mrt-star wrote, else None."""
    if (folder / MANIFEST).is_file() and is_our_manifest(_json(folder / MANIFEST)):
        return "stage"
    if any(isinstance(_json(folder / m), dict) for m in MODEL_MARKERS if (folder / m).is_file()):
        return "model"
    if isinstance(_json(folder / RUN_FILES[0]), dict):
        return "run"
    return None


def _ours_in_stage(entry: Path) -> bool:
    name = entry.name
    if entry.is_dir():
        return False
    return (name in (MANIFEST, LOCK_NAME, *EVAL_FILES) or (name.startswith("shard-") and entry.suffix in
            (".parquet", ".empty")) or ".tmp-" in name
            or (name == "README.md" and "mrt-star" in entry.read_text(errors="replace")))


def _ours_in_model(entry: Path, depth: int = 0) -> bool:
    if entry.is_dir() and depth == 0 and entry.name == "runs":  # report_to tensorboard: runs/<date>/events...
        return all(p.is_dir() or p.name.startswith("events.out.tfevents") for p in entry.rglob("*"))
    if entry.is_dir():
        return depth == 0 and entry.name.startswith("checkpoint-") and all(
            _ours_in_model(p, 1) for p in entry.iterdir())
    return entry.suffix in MODEL_SUFFIXES or entry.name == LOCK_NAME or ".tmp-" in entry.name


def _foreign(folder: Path, kind: str) -> Path | None:
    """Return the first entry of `folder` that mrt-star would not have written there, else None."""
    for entry in sorted(folder.iterdir()):
        if kind == "stage":
            ok = _ours_in_stage(entry)
        elif kind == "model":
            ok = _ours_in_model(entry)
        elif entry.is_dir():  # a run folder: round-k/, <rule>/ and the stage/model folders inside them
            sub = kind_of(entry)
            if sub is not None and sub != "run":
                pid = writer_pid(entry)
                if pid is not None and pid != str(os.getpid()):
                    raise OutputFolderError(f"refusing to --overwrite {folder}: {entry} is being written by "
                                            f"another mrt-star process (pid {pid})")
                bad = _foreign(entry, sub)
                if bad is not None:
                    return bad
                continue
            bad = _foreign(entry, "container")
            if bad is not None:
                return bad
            continue
        else:
            ok = kind == "run" and (entry.name in (*RUN_FILES, LOCK_NAME) or
                                    (entry.name.startswith("problems") and entry.suffix == ".jsonl"))
            ok = ok or entry.name == LOCK_NAME
        if not ok:
            return entry
    return None


def remove_ours(folder: str | Path, kind: str) -> None:
    """Empty an output folder mrt-star wrote (`kind`: stage, model or run), keeping the lock file.

    Refuses, deleting nothing, when the folder is not one of ours or holds anything the toolkit did not write.
    """
    folder = Path(folder)
    if not folder.exists():
        return
    check_not_file(folder)
    found = kind_of(folder)
    if found != kind and has_content(folder):
        what = {"stage": f"a {MANIFEST} written by mrt-star", "model": "an mrt-star fine-tune record",
                "run": "an mrt-star run_config.json"}[kind]
        raise OutputFolderError(f"refusing to --overwrite {folder}: it lacks {what}, so mrt-star did not make it; "
                                f"choose another --output")
    bad = _foreign(folder, kind)
    if bad is not None:
        raise OutputFolderError(f"refusing to --overwrite {folder}: it holds {bad.relative_to(folder)}, which "
                                f"mrt-star did not write; move it away or choose another --output")
    for entry in folder.iterdir():
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
