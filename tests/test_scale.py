"""Scale-out on a real local Ray cluster (127.0.0.1 only): the same rows for 1 or N workers, local or Ray;
a worker killed mid-run has its shard run again elsewhere; a killed run resumes; bad scale options fail
in one line; the CLI's --help does not import Ray."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mrt_star.errors import UserError
from mrt_star.generate import GenerateConfig, run_generate
from mrt_star.scale import check_scale
from mrt_star.store import read_manifest, read_rows, shard_files

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def problems_file(tmp_path_factory):
    from mrt_star.toy.problems import generate_problems

    path = tmp_path_factory.mktemp("problems") / "problems.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in generate_problems(8, seed=5)))
    return path


def generate_options(problems_file, micro_model, **kw):
    return {"input": str(problems_file), "model": str(micro_model), "n": 2, "max_new_tokens": 40,
            "grading": "hendrycks", "shard_size": 1, **kw}


@pytest.fixture(scope="module")
def local_rows(problems_file, micro_model, tmp_path_factory):
    """The reference: the same command run locally in this process."""
    out = tmp_path_factory.mktemp("local") / "traces"
    return out, read_rows(run_generate(GenerateConfig(output=str(out), **generate_options(problems_file, micro_model))))


@pytest.fixture(scope="module")
def local_cluster():
    """A real Ray cluster on loopback, started here and stopped after this module's tests (the stages use it
    as it is: they stop only a cluster they started)."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level="WARNING")
    yield ray
    ray.shutdown()


def test_cli_generate_on_two_ray_workers_equals_the_local_run_row_for_row(problems_file, micro_model, local_rows,
                                                                          tmp_path):
    out = tmp_path / "ray"
    options = generate_options(problems_file, micro_model)
    argv = ["generate", "--backend", "ray", "--workers", "2", "--output", str(out)]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    done = subprocess.run([sys.executable, "-m", "mrt_star.cli", *argv], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    rows, reference = read_rows(out), local_rows[1]
    assert len(rows) == 16 and rows == reference
    manifest = read_manifest(out)
    assert manifest["timings"]["scale"]["workers"] == 2 and manifest["timings"]["scale"]["retried_shards"] == 0
    local_stats = read_manifest(local_rows[0])["timings"]["engine_stats"]
    for key in ("completion_tokens", "prompt_tokens_encoded", "requests"):  # the same engine calls, summed over workers
        assert manifest["timings"]["engine_stats"][key] == local_stats[key]
    assert "backend" not in manifest["config"]  # where shards ran never blocks a resume


def test_help_does_not_import_ray():
    code = ("import sys\nfrom mrt_star.cli import main\ntry:\n    main(['generate', '--help'])\nexcept SystemExit:\n"
            "    pass\nassert 'ray' not in sys.modules, 'ray imported'\nprint('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-1000:]
    assert "--workers" in done.stdout and "--ray-address" in done.stdout


def test_data_parallel_size_names_ray_workers():
    from mrt_star.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match="--data-parallel-size was renamed to --workers"):
        parse_config(GenerateConfig, ["--engine", "vllm", "--data-parallel-size", "2"])


@pytest.mark.parametrize("options, message", [
    ({"workers": 3}, "--backend ray --workers 3"),
    ({"ray_address": "auto"}, "only used with --backend ray"),
])
def test_bad_scale_options_fail_in_one_line(options, message):
    with pytest.raises(UserError, match=message) as err:
        check_scale(GenerateConfig(**options))
    assert "\n" not in str(err.value)


def _busy_worker_pids() -> list[int]:
    """Return the pids of this test's Ray workers now running a shard (children of the raylet this process started)."""
    def parent(pid: int) -> int:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])

    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(b"ray::ShardWorker.run") \
                    and parent(parent(int(entry.name))) == os.getpid():
                pids.append(int(entry.name))
        except OSError:  # a process that ended while we looked
            continue
    return pids


def _kill_one_worker(how: str) -> None:
    if how == "sigkill":  # as the kernel's OOM killer would
        deadline = time.time() + 60
        while not (pids := _busy_worker_pids()) and time.time() < deadline:
            time.sleep(0.02)
        assert pids, "no busy Ray worker found"
        os.kill(pids[0], signal.SIGKILL)
        return
    victims = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
               if a["name"].startswith("mrt-star-generate-")]
    assert victims, "no Ray worker found"
    ray.kill(ray.get_actor(sorted(victims)[0]), no_restart=True)  # as if its machine went away


@pytest.mark.parametrize("how", ["ray.kill", pytest.param("sigkill", marks=pytest.mark.slow)])
def test_a_worker_killed_mid_run_has_its_shard_retried_elsewhere(problems_file, micro_model, local_rows, tmp_path,
                                                                 local_cluster, how):
    out = tmp_path / "ray"
    cfg = GenerateConfig(output=str(out), backend="ray", workers=2, **generate_options(problems_file, micro_model))
    result: dict = {}
    runner = threading.Thread(target=lambda: result.setdefault("path", run_generate(cfg)))
    runner.start()
    deadline = time.time() + 180
    while not shard_files(out) and time.time() < deadline:  # the workers are busy: shards are being written
        time.sleep(0.05)
    _kill_one_worker(how)
    runner.join(240)
    assert "path" in result, "the run did not finish"
    assert ray.is_initialized()  # the stage left the test's cluster running
    _, reference = local_rows
    rows = read_rows(out)
    keys = [(r["problem_id"], r["sample_index"]) for r in rows]
    assert len(keys) == len(set(keys)) == 16  # nothing lost, nothing written twice
    assert rows == reference
    assert read_manifest(out)["timings"]["scale"]["retried_shards"] >= 1


def test_a_killed_run_resumes_on_ray_at_its_missing_shards(problems_file, micro_model, local_rows, tmp_path,
                                                           local_cluster):
    reference_dir, reference = local_rows
    out = tmp_path / "resumed"
    shutil.copytree(reference_dir, out)
    written = shard_files(out)
    kept = {p.name: p.stat().st_mtime_ns for p in written[::2]}
    for p in written[1::2]:  # a run killed after half its shards: only whole shards are left
        p.unlink()
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["status"] = "running"
    (out / "manifest.json").write_text(json.dumps(manifest))
    cfg = GenerateConfig(output=str(out), backend="ray", workers=2, **generate_options(problems_file, micro_model))
    assert read_rows(run_generate(cfg)) == reference
    assert {p.name: p.stat().st_mtime_ns for p in shard_files(out) if p.name in kept} == kept  # skipped, not redone


@pytest.mark.slow
def test_score_and_eval_on_ray_equal_local(micro_model, local_rows, tmp_path, local_cluster):
    from mrt_star.eval.stage import EvalConfig, run_eval
    from mrt_star.score import ScoreConfig, run_score

    traces, _ = local_rows
    score = {"input": str(traces), "prover_k": 2, "prover_max_new_tokens": 16, "shard_size": 4, "grading": "hendrycks"}
    here = read_rows(run_score(ScoreConfig(output=str(tmp_path / "s1"), **score)))
    there = read_rows(run_score(ScoreConfig(output=str(tmp_path / "s2"), backend="ray", workers=2, **score)))
    assert len(here) == 16 and here == there
    ev = {"models": [str(micro_model)], "n": 2, "max_new_tokens": 40, "limit": 6, "shard_size": 2, "plots": False,
          "grading": "hendrycks"}
    here = read_rows(run_eval(EvalConfig(output=str(tmp_path / "e1"), **ev)))
    there = read_rows(run_eval(EvalConfig(output=str(tmp_path / "e2"), backend="ray", workers=2, **ev)))
    assert len(here) == 12 and here == there


def test_a_worker_that_cannot_start_fails_with_the_stage_error(problems_file, micro_model, tmp_path, local_cluster):
    cfg = GenerateConfig(output=str(tmp_path / "bad"), backend="ray", workers=2, engine_options={"bogus": 1},
                         **generate_options(problems_file, micro_model))
    with pytest.raises(UserError, match="unknown option 'bogus'") as err:
        run_generate(cfg)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "bad").exists()  # nothing written before the checks that need the model


@pytest.mark.parametrize("options, message", [
    ({"workers": 3}, "workers 3: they need 3 CPUs, the Ray cluster has 2"),
    ({"workers": 2, "engine": "vllm"}, "workers 2: they need 2 GPUs, the Ray cluster has 0"),
])
def test_more_workers_than_the_cluster_holds_fail_in_one_line(problems_file, micro_model, tmp_path, local_cluster,
                                                              options, message):
    cfg = GenerateConfig(output=str(tmp_path / "big"), backend="ray", **generate_options(problems_file, micro_model),
                         **options)
    with pytest.raises(UserError, match=message):
        run_generate(cfg)


def test_an_address_nobody_answers_fails_in_one_line(problems_file, micro_model, tmp_path):
    import socket

    with socket.socket() as probe:  # a loopback port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = ["generate", "--backend", "ray", "--ray-address", f"127.0.0.1:{port}", "--output", str(tmp_path / "out"),
            "--input", str(problems_file), "--model", str(micro_model)]
    # A fresh process: this one may already be connected to the module's cluster.
    done = subprocess.run([sys.executable, "-m", "mrt_star.cli", *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert f"ray_address '127.0.0.1:{port}': cannot connect" in done.stderr and "ray start --head" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()
