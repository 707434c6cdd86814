"""The demo end to end on the micro world, then the analysis notebook executed on its outputs (slow)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_demo_fast_then_notebook_runs_on_its_outputs(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    from mrt_star.demo import main

    assert main(["--fast", "--output", str(tmp_path)]) == 0
    demo = tmp_path / "demo"
    assert (demo / "report.json").exists() and list((demo / "seed-0" / "eval").glob("*.png"))
    monkeypatch.setenv("MRT_STAR_DEMO_DIR", str(demo))
    monkeypatch.setenv("MRT_STAR_ANALYSIS_DIR", str(tmp_path / "analysis"))
    notebook = nbformat.read(Path("notebooks/regret_analysis.ipynb"), as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": os.getcwd()}}).execute()
    assert sorted(p.name for p in (tmp_path / "analysis").glob("*.png")) == [
        "maj_vs_tokens.png", "progress_hist.png", "regret_axes.png", "regret_vs_budget.png"]
