"""Helpers of the fault suite: run the real CLI in a subprocess, SIGKILL it on progress, compare outputs.

A kill is triggered by progress seen in the folder (a shard, a checkpoint, a finished manifest), never by a
sleep; `_runner.py` paces writes so the kill lands between two of them. Comparisons count rows lost,
duplicated and differing against an uninterrupted run, and finished shards rewritten by the resume.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

RUNNER = str(Path(__file__).with_name("_runner.py"))


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


def cli(args: list[str], **extra: str) -> subprocess.CompletedProcess:
    """Run `mrt-star ARGS` to the end (with fault hooks from `extra`) and return the finished process."""
    return subprocess.run([sys.executable, RUNNER, *args], capture_output=True, text=True, env=env(**extra),
                          timeout=600)


def start(args: list[str], **extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, RUNNER, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env(**extra))


def wait_for(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 300) -> None:
    """Poll the filesystem until `ready()`; fail if the process ended first."""
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before the kill point: "
                                 f"{(proc.stderr.read() if proc.stderr else '')[-1500:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("no progress before the timeout")
        time.sleep(0.01)


def kill_on(args: list[str], ready: Callable[[], bool], pace: float = 0.4) -> None:
    """Start `mrt-star ARGS`, SIGKILL it as soon as `ready()` holds, and check it really died mid-run."""
    proc = start(args, MRT_FAULT_PACE=str(pace))
    try:
        wait_for(proc, ready)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def shards(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob("shard-*.parquet"))


def manifest(folder: Path) -> dict:
    p = Path(folder) / "manifest.json"
    return json.loads(p.read_text()) if p.exists() else {}


def complete(folder: Path) -> bool:
    return manifest(folder).get("status") == "complete"


def stamps(folder: Path) -> dict[str, tuple[int, int]]:
    """Return {shard name: (mtime_ns, size)} of the finished shards, to prove a resume never rewrote one."""
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in shards(folder)}


def _key(row: dict) -> str:
    return json.dumps([row.get("problem_id"), row.get("sample_index"), row.get("rule")])


def rows(folder: Path) -> list[dict]:
    import pyarrow.parquet as pq

    out: list[dict] = []
    for shard in shards(folder):
        out.extend(pq.read_table(shard).to_pylist())
    return out


def compare(reference: Path, resumed: Path) -> dict[str, int]:
    """Return counts of rows lost, duplicated and differing in `resumed` against `reference`."""
    want = {_key(r): json.dumps(r, sort_keys=True, default=str) for r in rows(reference)}
    got_rows = rows(resumed)
    seen = Counter(_key(r) for r in got_rows)
    got = {_key(r): json.dumps(r, sort_keys=True, default=str) for r in got_rows}
    return {"rows": len(want), "lost": sum(k not in got for k in want),
            "duplicated": sum(n - 1 for n in seen.values()),
            "differing": sum(k in got and got[k] != v for k, v in want.items()) + sum(k not in want for k in got)}


def check_resume(reference: Path, resumed: Path, before: dict[str, tuple[int, int]]) -> dict[str, int]:
    """Assert the resumed folder equals the reference and kept every shard finished before the kill."""
    counts = compare(reference, resumed)
    after = stamps(resumed)
    counts["rewritten"] = sum(after.get(name) != stamp for name, stamp in before.items())
    counts["kept_shards"] = len(before)
    assert complete(resumed)
    assert (counts["lost"], counts["duplicated"], counts["differing"], counts["rewritten"]) == (0, 0, 0, 0), counts
    assert not list(Path(resumed).glob(".*.tmp-*")), "a temp file survived the resume"
    return counts


def record(name: str, counts: dict) -> None:
    """Append one kill point's counts to $MRT_FAULT_LOG (JSON lines) for the README's Reliability figures."""
    log = os.environ.get("MRT_FAULT_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"point": name, **counts}) + "\n")
