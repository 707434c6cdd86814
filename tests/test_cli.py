"""The `mrt-star` command itself: fast help, verbs, errors as one line with the right exit code."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from mrt_star.cli import VERBS, main


def _run(*args):
    return subprocess.run([sys.executable, "-m", "mrt_star.cli", *args], capture_output=True, text=True)


def test_top_level_help_lists_verbs_quickly():
    start = time.perf_counter()
    done = _run("--help")
    elapsed = time.perf_counter() - start
    assert done.returncode == 0
    for verb in ("generate", "score", "filter", "finetune", "run", "eval", "push", "toy"):
        assert f"  {verb}" in done.stdout
    assert elapsed < 2.0, f"mrt-star --help took {elapsed:.2f}s"
    assert _run("--version").stdout.startswith("mrt-star ")


def test_help_does_not_import_heavy_libraries():
    code = ("import sys; from mrt_star.cli import main; main(['--help']); "
            "print(sorted(m for m in ('torch','transformers','trl','datasets') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip().endswith("[]")


def test_unknown_verb_and_bad_flag_exit_2_with_one_line():
    done = _run("frobnicate")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "unknown verb 'frobnicate'" in done.stderr
    assert main(["toy", "problems", "--count", "many"]) == 2


def test_every_verb_has_help_or_says_not_implemented():
    import importlib.util

    for name, verb in VERBS.items():
        done = _run(*name.split(), "--help")
        if importlib.util.find_spec(verb.module) is None:
            assert done.returncode == 1 and done.stderr == f"mrt-star {name}: error: not implemented yet\n"
        else:
            assert done.returncode == 0 and "--config" in done.stdout, (name, done.stderr[-400:])


@pytest.mark.parametrize("args", [["--eval-limit", "0"], ["--seeds", "-2"], ["--seeds", "many"]])
def test_demo_refuses_bad_counts_before_doing_any_work(args, capsys):
    from mrt_star.demo import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert "must be a whole number of at least 1" in capsys.readouterr().err
