"""The dataset store on real parquet files: atomic shards, resume, refusal on a changed config, SIGKILL."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from mrt_star.errors import UserError
from mrt_star.store import Store, StoreError, chunk, fingerprint, read_rows, shard_files

WRITER = r"""
import sys, time
from mrt_star.errors import UserError
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


# --- output folders you can trust (issue 18) ---------------------------------------------------------


def _wait_for_shards(out, n, proc, timeout=60):
    """Poll the folder (not a sleep) until `n` shards are there; fail if the writer died first."""
    deadline = time.time() + timeout
    while len(shard_files(out)) < n:
        assert proc.poll() is None, "the writer exited before it was expected to"
        assert time.time() < deadline, "the writer made no progress"
        time.sleep(0.01)


def test_overwrite_never_removes_a_folder_mrt_star_did_not_write(tmp_path):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('mine')\n")
    (project / "manifest.json").write_text(json.dumps({"name": "my-app", "version": "1.0"}))
    for overwrite in (False, True):
        with pytest.raises(StoreError, match="not an mrt-star output folder .a manifest.json mrt-star did not write"):
            Store(project, "generate", {}, "fp", overwrite=overwrite)
    assert (project / "src" / "main.py").read_text() == "print('mine')\n"
    assert sorted(p.name for p in project.iterdir()) == ["manifest.json", "src"]  # not even a lock file


def test_overwrite_removes_only_our_files_and_names_a_foreign_one(tmp_path):
    out = tmp_path / "out"
    store = Store(out, "demo", {"a": 1}, "fp")
    store.write_shard(0, [{"x": 1}])
    store.write_shard(1, [])
    store.finish()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match=r"refusing to --overwrite .*out: it holds notes.txt, which mrt-star did not"):
        Store(out, "demo", {"a": 2}, "fp", overwrite=True)
    assert (out / "shard-00000.parquet").exists() and (out / "notes.txt").exists()  # nothing was removed
    (out / "notes.txt").unlink()
    Store(out, "demo", {"a": 2}, "fp", overwrite=True).finish()
    assert sorted(p.name for p in out.iterdir()) == [".mrt-star.lock", "manifest.json"]


def test_output_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(StoreError, match="is an existing file, not a folder; choose another --output"):
        Store(tmp_path / "taken", "demo", {}, "fp")


def test_a_second_writer_is_refused_with_the_holders_pid_and_readers_are_told_it_is_being_written(tmp_path):
    from mrt_star.store import read_stage_input

    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(out), "0.2"])
    try:
        _wait_for_shards(out, 1, proc)
        for config in ({"n": 40, "shard_size": 4}, {"other": 1}):  # same or different config: both refused
            with pytest.raises(UserError, match=rf"being written by another mrt-star process \(pid {proc.pid}\)"):
                Store(out, "demo", config, "fp")
        with pytest.raises(StoreError, match=rf"still being written by `mrt-star demo` \(pid {proc.pid}\); wait"):
            read_stage_input(str(out), ("demo",), "score")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with pytest.raises(StoreError, match="it was stopped.*re-run `mrt-star demo`"):
        read_stage_input(str(out), ("demo",), "score")
    store = Store(out, "demo", {"n": 40, "shard_size": 4}, "fp")  # the kernel dropped the dead writer's lock
    assert store.manifest["resumed"] == 1


def test_resumes_are_all_counted_and_time_adds_up_over_runs(tmp_path):
    out = tmp_path / "out"
    for kill_after in (2, 5):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(out), "0.1"])
        _wait_for_shards(out, kill_after, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_seconds = json.loads((out / "manifest.json").read_text())["timings"]["seconds_total"]
    assert killed_seconds >= 0.4  # at least the 5 shard delays of the killed runs are on record
    subprocess.run([sys.executable, "-c", WRITER, str(out), "0.1"], check=True)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["resumed"] == 2
    timings = manifest["timings"]
    assert timings["seconds_total"] >= killed_seconds + timings["seconds_last_run"] - 0.01
    assert sorted(r["id"] for r in read_rows(out)) == list(range(40))


def test_a_failed_write_leaves_no_partial_shard_and_one_clear_error(tmp_path, monkeypatch):
    import errno

    import pyarrow.parquet as pq

    store = Store(tmp_path / "out", "demo", {}, "fp")
    store.write_shard(0, [{"x": 1}])

    def disk_full(table, where, *a, **k):
        with open(where, "wb") as f:
            f.write(b"PAR1 half a shard")  # what a full disk leaves behind
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", disk_full)
    with pytest.raises(StoreError, match=r"cannot write shard 1 \(No space left on device\); free space") as info:
        store.write_shard(1, [{"x": 2}])
    assert "\n" not in str(info.value)
    assert [p.name for p in (tmp_path / "out").iterdir() if "shard" in p.name] == ["shard-00000.parquet"]
    monkeypatch.undo()
    store.write_shard(1, [{"x": 2}])  # the same command resumes once the disk has room
    store.finish()
    assert [r["x"] for r in read_rows(tmp_path / "out")] == [1, 2]


OPENER = r"""
import os, sys, time
from mrt_star.errors import UserError
from mrt_star.store import Store
out, go, config = sys.argv[1], sys.argv[2], {"variant": sys.argv[3]}
while not os.path.exists(go):
    time.sleep(0.001)
try:
    store = Store(out, "demo", config, "fp")
except UserError as err:
    print(err)
    sys.exit(1)
time.sleep(1.0)  # hold the folder while the other process tries
"""


def test_two_processes_opening_one_store_at_the_same_instant_one_is_refused(tmp_path):
    out, go = tmp_path / "out", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", OPENER, str(out), str(go), variant], stdout=subprocess.PIPE,
                              text=True) for variant in ("a", "b")]
    time.sleep(0.5)  # both interpreters are up and polling for the start signal
    go.touch()
    results = [(p.wait(timeout=60), p.stdout.read()) for p in procs]
    assert sorted(rc for rc, _ in results) == [0, 1]
    winner = next(i for i, (rc, _) in enumerate(results) if rc == 0)
    refused = next(text for rc, text in results if rc == 1)
    assert f"being written by another mrt-star process (pid {procs[winner].pid})" in refused
    assert json.loads((out / "manifest.json").read_text())["config"] == {"variant": "ab"[winner]}
