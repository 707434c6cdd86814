"""The fast part of the fault suite (default run): bad output paths, --overwrite of folders mrt-star did not
write, two writers at once, a reader during a write, a full disk, and one kill + resume of generate.

Real CLI in real subprocesses on the real micro toy model; the full disk is the one injected fault
(`_runner.py` makes a parquet write raise ENOSPC, as a full disk would: this machine's disk cannot be filled).
"""

from __future__ import annotations

import json

import pytest
from fault_harness import cli, compare, complete, kill_on, manifest, shards, stamps, start, wait_for

from mrt_star.cli import main


def _generate(out, n="1"):
    return ["generate", "--input", "toy:3", "--model", "toy-micro", "--shard-size", "1", "--n", n,
            "--max-new-tokens", "48", "--output", str(out)]


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if a stage gets as far as loading a model (the checks must come first)."""
    import transformers

    import mrt_star.engines

    def loaded(*a, **k):
        raise AssertionError("a model was loaded before the output path was checked")

    monkeypatch.setattr(mrt_star.engines, "load_engine", loaded)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", loaded)


def test_an_output_path_that_is_a_file_is_one_line_before_any_model_load(tmp_path, write_sft_folder, capsys, no_model_load,
                                                                         micro_model):
    taken = tmp_path / "taken.txt"
    taken.write_text("x")
    sft = write_sft_folder(tmp_path / "sft")
    for argv in (_generate(taken), ["finetune", "--input", sft, "--model", "toy-micro", "--output", str(taken)],
                 ["run", "--input", "toy:2", "--model", "toy-micro", "--output", str(taken)]):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert "is an existing file, not a folder; choose another --output" in err and "\n" not in err, err
    assert taken.read_text() == "x"


def test_overwrite_refuses_folders_and_files_mrt_star_did_not_write(tmp_path, write_sft_folder, capsys, no_model_load):
    from mrt_star import output_guard
    from mrt_star.store import Store

    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "app.py").write_text("print(1)\n")
    (project / "manifest.json").write_text(json.dumps({"name": "app", "version": "1"}))
    assert main(_generate(project) + ["--overwrite"]) == 1
    assert "not an mrt-star output folder" in capsys.readouterr().err
    # A model folder (ours by its record) that also holds someone's sources: refused before any model load.
    model = tmp_path / "model"
    (model / "src").mkdir(parents=True)
    (model / "src" / "train.py").write_text("x\n")
    (model / "finetune_config.json").write_text(json.dumps({"config": {}}))
    sft = write_sft_folder(tmp_path / "sft")
    assert main(["finetune", "--input", sft, "--model", "toy-micro", "--output", str(model), "--overwrite"]) == 1
    assert "refusing to --overwrite" in capsys.readouterr().err
    # A run folder: our stage folders inside are fine, a stray file anywhere is named and nothing is removed.
    run = tmp_path / "run"
    run.mkdir()
    (run / "run_config.json").write_text("{}")
    Store(run / "round-1" / "traces", "generate", {}, "fp").finish()
    (run / "round-1" / "traces" / "notes.txt").write_text("mine")
    with pytest.raises(output_guard.OutputFolderError, match=r"holds round-1/traces/notes.txt"):
        output_guard.remove_ours(run, "run")
    assert (project / "src" / "app.py").exists() and (model / "src" / "train.py").exists()
    assert (run / "round-1" / "traces" / "manifest.json").exists()
    (run / "round-1" / "traces" / "notes.txt").unlink()
    output_guard.remove_ours(run, "run")
    assert [p.name for p in run.iterdir()] == [".mrt-star.lock"] or not list(run.iterdir())


def test_two_writers_and_a_reader_during_the_write(tmp_path, micro_model):
    out = tmp_path / "traces"
    first = start(_generate(out), MRT_FAULT_PACE="1.5")
    try:
        wait_for(first, lambda: len(shards(out)) >= 1)
        for argv in (_generate(out), _generate(out, n="2")):  # the same command, and a different config
            second = cli(argv)
            assert second.returncode == 1
            line = second.stderr.strip()
            assert f"being written by another mrt-star process (pid {first.pid})" in line and "\n" not in line
        reader = cli(["score", "--input", str(out), "--model", "toy-micro", "--output", str(tmp_path / "s")])
        assert reader.returncode == 1 and f"still being written by `mrt-star generate` (pid {first.pid})" in \
            reader.stderr
        assert first.wait(timeout=300) == 0
    finally:
        first.kill()
    assert complete(out) and len(shards(out)) == 3 and manifest(out)["resumed"] == 0


def test_a_full_disk_is_one_line_leaves_no_partial_shard_and_the_rerun_completes(tmp_path, micro_model):
    out = tmp_path / "traces"
    failed = cli(_generate(out), MRT_FAULT_ENOSPC_AT="1")
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "cannot write shard 1 (No space left on device); free space" in failed.stderr.strip().splitlines()[-1]
    assert [p.name for p in out.iterdir() if "shard" in p.name] == ["shard-00000.parquet"]
    before = stamps(out)
    assert cli(_generate(out)).returncode == 0
    assert complete(out) and len(shards(out)) == 3 and manifest(out)["resumed"] == 1
    assert stamps(out)["shard-00000.parquet"] == before["shard-00000.parquet"]


def test_generate_killed_after_a_shard_resumes_to_the_uninterrupted_rows(tmp_path, micro_model):
    reference, out = tmp_path / "reference", tmp_path / "traces"
    assert cli(_generate(reference)).returncode == 0
    kill_on(_generate(out), lambda: len(shards(out)) >= 1)
    before = stamps(out)
    assert 1 <= len(before) < 3
    assert cli(_generate(out)).returncode == 0
    counts = compare(reference, out)
    assert (counts["lost"], counts["duplicated"], counts["differing"]) == (0, 0, 0) and counts["rows"] == 3
    assert all(stamps(out)[name] == stamp for name, stamp in before.items())
