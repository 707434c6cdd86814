"""`mrt-star run` rule labels: `mrt-trace` runs filter rule mrt at mrt_level trace beside the episode-level `mrt`.

One round of the real loop code over hand-made scored rows (test_filter's and two more), with sampling, scoring and
fine-tuning stubbed: the filter stage is the real one, so the labels' picks and folders are what a run writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_filter import ROWS, _row  # tests/ is on the path (rootdir conftest, no package)

from mrt_star import loop
from mrt_star.config import ConfigError, build_config
from mrt_star.filter import FilterConfig
from mrt_star.filter_rules import select
from mrt_star.loop import RULE_LABELS, RunConfig, check_run, run_round, stage_config
from mrt_star.store import Store, read_rows

# p5: equal cumulative progress, so the trace level takes the shorter `late` (tie-break: fewer tokens); the
# episode level ranks by the area under J and takes `early`, which reaches J = 1 sooner.
EARLY = _row("p5", 0, ["Line 1: 3+4=7\n", "Check Line 1: 3+4=7 ok\n\\boxed{7}"], [0.0, 1.0, 1.0], True)
LATE = _row("p5", 1, ["Line 1: 3+4=7\n\\boxed{7}"], [0.0, 1.0], True)
SCORED = [*ROWS, LATE, EARLY]


def _run_config(tmp_path: Path, rules: list[str], filter_options: dict | None = None) -> RunConfig:
    return build_config(RunConfig, {"model": "toy-micro", "rules": rules, "output": str(tmp_path / "run"),
                                    "filter": {"min_j_end": 0.5, **(filter_options or {})}})


@pytest.fixture
def stubbed_stages(tmp_path, monkeypatch):
    """Generate and score return a finished folder of SCORED; finetune writes only its summary."""
    scored = tmp_path / "scored"
    store = Store(scored, "score", {"model": "toy"}, "fp")
    store.write_shard(0, SCORED)
    store.finish({})

    def finetune(cfg):
        Path(cfg.output).mkdir(parents=True)
        (Path(cfg.output) / "training_summary.json").write_text('{"final_loss": 0.0}')
        return cfg.output

    stages = dict(loop.STAGES)
    for name, fake in (("generate", lambda cfg: scored), ("score", lambda cfg: scored), ("finetune", finetune)):
        stages[name] = (loop.STAGES[name][0], fake)
    monkeypatch.setattr(loop, "STAGES", stages)
    return tmp_path / "problems.jsonl"


def _picks(sft: Path) -> list[tuple[str, int]]:
    return [(r["problem_id"], r["sample_index"]) for r in read_rows(str(sft))]


def test_mrt_trace_label_runs_the_trace_level_rule_in_its_own_folder(tmp_path, stubbed_stages):
    cfg = _run_config(tmp_path, ["mrt", "mrt-trace"], {"max_unrecovered_loss": None})
    run_dir = Path(cfg.output)
    results = {rule: run_round(cfg, rule, 1, "toy-micro", stubbed_stages, run_dir) for rule in cfg.rules}
    assert [r["rule"] for r in results.values()] == ["mrt", "mrt-trace"]  # run_summary.json's `rule`
    for label, level in (("mrt", "episode"), ("mrt-trace", "trace")):
        sft = run_dir / label / "round-1" / "sft"
        config = json.loads((sft / "manifest.json").read_text())["config"]
        assert (config["rule"], config["mrt_level"]) == ("mrt", level)
        expected = select(SCORED, FilterConfig(rule="mrt", mrt_level=level, min_j_end=0.5, max_unrecovered_loss=None))
        assert _picks(sft) == [(r["problem_id"], r["sample_index"]) for r, _ in expected]
        assert results[label]["model_out"] == str(run_dir / label / "round-1" / "model")
    assert ("p5", 0) in _picks(run_dir / "mrt" / "round-1" / "sft")  # the levels really differ on p5
    assert ("p5", 1) in _picks(run_dir / "mrt-trace" / "round-1" / "sft")


def test_recipe_mrt_level_still_applies_to_plain_mrt_and_the_label_wins_for_mrt_trace(tmp_path):
    fixed = {"input": "in", "output": "out", "seed": 0}
    trace_recipe = _run_config(tmp_path, ["mrt", "mrt-trace"], {"mrt_level": "trace"})
    check_run(trace_recipe, engines_installed=False)
    assert stage_config(trace_recipe, "filter", {**fixed, **RULE_LABELS["mrt"]}).mrt_level == "trace"
    episode_recipe = _run_config(tmp_path, ["mrt-trace", "star"], {"mrt_level": "episode"})
    check_run(episode_recipe, engines_installed=False)
    label_config = stage_config(episode_recipe, "filter", {**fixed, **RULE_LABELS["mrt-trace"]})
    assert (label_config.rule, label_config.mrt_level) == ("mrt", "trace")
    assert stage_config(episode_recipe, "filter", {**fixed, **RULE_LABELS["star"]}).rule == "star"


def test_rule_labels_are_checked_and_the_recipe_cannot_set_the_rule(tmp_path):
    with pytest.raises(ConfigError, match="rules.*mrt-trace"):
        _run_config(tmp_path, ["mrt-episode"])
    with pytest.raises(ConfigError, match="'rule' is set by the loop"):
        check_run(_run_config(tmp_path, ["mrt-trace"], {"rule": "star"}), engines_installed=False)
