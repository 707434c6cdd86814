"""The dataset store on real parquet files: atomic shards, resume, refusal on a changed config, SIGKILL."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from mrt_star.store import Store, StoreError, chunk, fingerprint, read_rows, shard_files

WRITER = r"""
import sys, time
from mrt_star.store import Store, chunk
out, delay = sys.argv[1], float(sys.argv[2])
store = Store(out, "demo", {"n": 40, "shard_size": 4}, "fp")
for index, ids in chunk(list(range(40)), 4):
    if store.is_done(index):
        continue
    time.sleep(delay)
    store.write_shard(index, [{"id": i, "text": "x" * 1000} for i in ids])
store.finish({"ok": True})
"""


def test_write_resume_and_finish(tmp_path):
    store = Store(tmp_path / "out", "demo", {"a": 1}, "fp")
    store.write_shard(0, [{"x": 1}, {"x": 2}])
    store.write_shard(1, [])
    assert store.is_done(0) and store.is_done(1) and not store.is_done(2)
    again = Store(tmp_path / "out", "demo", {"a": 1, "overwrite": True}, "fp")
    assert again.is_done(0) and not again.complete
    again.write_shard(2, [{"x": 3}])
    again.finish({"mean": 0.5})
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["rows"] == 3
    assert manifest["config"] == {"a": 1, "overwrite": True} and manifest["summary"] == {"mean": 0.5}
    assert [r["x"] for r in read_rows(tmp_path / "out")] == [1, 2, 3]
    assert Store(tmp_path / "out", "demo", {"a": 1}, "fp").complete


def test_changed_config_or_input_is_refused_unless_overwrite(tmp_path):
    Store(tmp_path / "out", "demo", {"a": 1}, "fp").write_shard(0, [{"x": 1}])
    with pytest.raises(StoreError, match="different config or input; pass --overwrite"):
        Store(tmp_path / "out", "demo", {"a": 2}, "fp")
    with pytest.raises(StoreError, match="different config"):
        Store(tmp_path / "out", "demo", {"a": 1}, "other-input")
    fresh = Store(tmp_path / "out", "demo", {"a": 2}, "fp", overwrite=True)
    assert not fresh.is_done(0) and shard_files(tmp_path / "out") == []


def test_refuses_foreign_folder_and_unfinished_reads(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(StoreError, match="not an mrt-star output folder"):
        Store(tmp_path / "mine", "demo", {}, "fp")
    with pytest.raises(StoreError, match="not an mrt-star output folder"):
        Store(tmp_path / "mine", "demo", {}, "fp", overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").exists()
    Store(tmp_path / "half", "demo", {}, "fp").write_shard(0, [{"x": 1}])
    with pytest.raises(StoreError, match="unfinished demo output"):
        read_rows(tmp_path / "half")


def test_fingerprint_follows_content(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text("a\n")
    first = fingerprint(f)
    f.write_text("b\n")
    assert fingerprint(f) != first and fingerprint({"x": 1}) == fingerprint({"x": 1})
    assert [i for i, _ in chunk(list(range(10)), 4)] == [0, 1, 2]


def test_sigkill_mid_run_then_rerun_loses_and_duplicates_nothing(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(out), "0.15"])
    deadline = time.time() + 60
    while len(shard_files(out)) < 3 and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = len(shard_files(out))
    assert 3 <= written < 10, "the writer should have been killed mid-run"
    subprocess.run([sys.executable, "-c", WRITER, str(out), "0"], check=True)
    ids = [r["id"] for r in read_rows(out)]
    assert sorted(ids) == list(range(40)) and len(ids) == len(set(ids))
    assert not list(out.glob(".*tmp*"))
    assert json.loads((out / "manifest.json").read_text())["resumed"] == 1
