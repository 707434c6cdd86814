"""The dataset card, the prepared upload and the dry run of `mrt-star push`.

The Hub cannot be reached from the test machine, so the upload test replaces HfApi's network methods
(create_repo, create_branch, create_commit) with a recorder and checks what they were asked to do.
"""

from __future__ import annotations

import pytest
import yaml

from mrt_star.errors import UserError
from mrt_star.hub import CITATION, PushConfig, dataset_card, prepare_push, run_push
from mrt_star.store import Store

FAKE_TOKEN = "hf_FAKEtokenFAKEtokenFAKEtoken1234"


def _sft_folder(write, path):
    # Three rows in two shards, with a config and summary the card reads.
    return write(path, rows=3, shards=2, config={"rule": "mrt", "model": "toy", "input": "runs/x/scored"},
                 summary={"rule": "mrt", "kept_rows": 3, "per_rule": {"star": {"rows": 5}},
                          "mrt_pick_equals_shortest": 0.5})


def test_card_has_metadata_schema_recipe_loading_and_citation(tmp_path, write_sft_folder):
    from mrt_star.store import read_manifest

    folder = _sft_folder(write_sft_folder, tmp_path / "sft")
    card = dataset_card(folder, "me/toy-mrt", read_manifest(folder))
    front = yaml.safe_load(card.split("---")[1])
    assert front["configs"][0]["data_files"][0] == {"split": "train", "path": "data/*.parquet"}
    assert "mrt-star" in front["tags"] and front["size_categories"] == ["n<1K"]
    assert "| `cumulative_progress` | `double` | J at the kept end minus J(-1)" in card
    assert 'load_dataset("me/toy-mrt", split="train")' in card
    assert "rule: mrt" in card and "| per_rule.star.rows | 5 |" in card
    assert CITATION in card and "2503.07572" in card and "Qu" in card


def test_dry_run_stages_the_card_outside_the_input_and_lists_files_without_network(tmp_path, write_sft_folder, monkeypatch, capsys):
    import huggingface_hub

    def no_network(*a, **k):
        raise AssertionError("dry run touched the Hub")

    for name in ("create_repo", "create_branch", "create_commit", "upload_folder"):
        monkeypatch.setattr(huggingface_hub.HfApi, name, no_network)
    folder = _sft_folder(write_sft_folder, tmp_path / "sft")
    before = sorted(p.name for p in (tmp_path / "sft").iterdir())
    plan, _ = prepare_push(PushConfig(input=folder, repo_id="me/toy-mrt", dry_run=True), staging=tmp_path / "stage")
    assert [dest for _, dest in plan] == ["data/shard-00000.parquet", "data/shard-00001.parquet", "manifest.json",
                                          "README.md"]
    assert plan[-1][0] == tmp_path / "stage" / "README.md" and plan[-1][0].read_text().startswith("---\n")
    run_push(PushConfig(input=folder, repo_id="me/toy-mrt", dry_run=True))
    assert sorted(p.name for p in (tmp_path / "sft").iterdir()) == before  # pushing never writes into the data
    err = " ".join(capsys.readouterr().err.split())
    assert "data/shard-00001.parquet" in err and "the input folder is unchanged" in err
    card = err.split("the card is at ")[1].split(" ")[0]
    assert card.endswith("README.md") and not card.startswith(str(tmp_path / "sft"))


def test_token_shaped_values_anywhere_in_the_config_are_scrubbed_from_card_and_logs(tmp_path, write_sft_folder, capsys):
    import json

    other = "hf_" + "Zq9" * 12  # not the environment's token: scrubbed because of its shape
    folder = _sft_folder(write_sft_folder, tmp_path / "sft")
    manifest = json.loads((tmp_path / "sft" / "manifest.json").read_text())
    manifest["config"]["engine_options"] = {"nested": {"api_key": other}, "list": [other]}
    (tmp_path / "sft" / "manifest.json").write_text(json.dumps(manifest))
    plan, _ = prepare_push(PushConfig(input=folder, repo_id="me/toy-mrt", dry_run=True), staging=tmp_path / "s")
    card = plan[-1][0].read_text()
    assert other not in card and "hf_***" in card and "engine_options" in card
    run_push(PushConfig(input=folder, repo_id="me/toy-mrt", pretty_name=other, dry_run=True))
    captured = capsys.readouterr()
    assert other not in captured.out + captured.err


def test_push_uploads_one_commit_and_never_leaks_the_token(tmp_path, write_sft_folder, monkeypatch, capsys):
    import huggingface_hub

    calls = []

    class Info:
        commit_url = "https://huggingface.co/datasets/me/toy-mrt/commit/abc"
        oid = "abc"

    # Recorder in place of the network methods (the Hub is unreachable from tests).
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, *a, **k: calls.append(("repo", a, k)))
    monkeypatch.setattr(huggingface_hub.HfApi, "create_branch", lambda self, *a, **k: calls.append(("branch", a, k)))
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit",
                        lambda self, *a, **k: calls.append(("commit", a, k)) or Info())
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    folder = _sft_folder(write_sft_folder, tmp_path / "sft")
    # A config that carried the token by mistake is scrubbed from the card.
    import json

    manifest = json.loads((tmp_path / "sft" / "manifest.json").read_text())
    manifest["config"]["note"] = f"token {FAKE_TOKEN}"
    (tmp_path / "sft" / "manifest.json").write_text(json.dumps(manifest))

    run_push(PushConfig(input=folder, repo_id="me/toy-mrt", private=True, revision="round-1"))
    kinds = [c[0] for c in calls]
    assert kinds == ["repo", "branch", "commit"]
    assert calls[0][2]["repo_type"] == "dataset" and calls[0][2]["private"] is True and calls[0][2]["exist_ok"]
    commit = calls[2]
    assert commit[2]["revision"] == "round-1" and commit[2]["repo_type"] == "dataset"
    assert sorted(op.path_in_repo for op in commit[1][1]) == ["README.md", "data/shard-00000.parquet",
                                                             "data/shard-00001.parquet", "manifest.json"]
    uploaded_manifest = next(op for op in commit[1][1] if op.path_in_repo == "manifest.json")
    assert FAKE_TOKEN.encode() not in uploaded_manifest.path_or_fileobj
    captured = capsys.readouterr()
    assert FAKE_TOKEN not in captured.out + captured.err
    uploaded_card = next(op for op in commit[1][1] if op.path_in_repo == "README.md").path_or_fileobj
    assert FAKE_TOKEN.encode() not in uploaded_card and b"rule: mrt" in uploaded_card
    assert not (tmp_path / "sft" / "README.md").exists()
    for path in (tmp_path / "sft").rglob("*"):
        if path.is_file() and path.name != "manifest.json":  # the manifest was edited by this test itself
            assert FAKE_TOKEN.encode() not in path.read_bytes()


def test_push_input_checks(tmp_path, write_sft_folder):
    with pytest.raises(UserError, match="ORG/NAME"):
        run_push(PushConfig(input=_sft_folder(write_sft_folder, tmp_path / "a"), repo_id="no-slash", dry_run=True))
    with pytest.raises(UserError, match="not an mrt-star stage output"):
        (tmp_path / "empty").mkdir()
        run_push(PushConfig(input=str(tmp_path / "empty"), repo_id="me/x", dry_run=True))
    half = Store(tmp_path / "half", "score", {}, "fp")
    half.write_shard(0, [{"a": 1}])
    with pytest.raises(UserError, match="still being written|unfinished"):
        run_push(PushConfig(input=str(tmp_path / "half"), repo_id="me/x", dry_run=True))


def test_push_cli_takes_the_folder_positionally(tmp_path, write_sft_folder):
    from mrt_star.cli import main

    folder = _sft_folder(write_sft_folder, tmp_path / "sft")
    assert main(["push", folder, "--repo-id", "me/toy-mrt", "--dry-run"]) == 0
    assert not (tmp_path / "sft" / "README.md").exists()
    assert main(["push", folder, "--dry-run"]) == 2  # repo id is required
