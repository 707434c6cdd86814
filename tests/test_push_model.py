"""`mrt-star push-model`: the model card, the upload plan, and one commit that also deletes stale files.

The Hub cannot be reached from the test machine, so HfApi's network methods (create_repo, create_branch,
list_repo_files, create_commit) are replaced with a recorder; everything else is real.
"""

from __future__ import annotations

import json

import pytest
import yaml

from mrt_star.errors import UserError
from mrt_star.push_model import PushModelConfig, run_push_model

FAKE_TOKEN = "hf_FAKEtokenFAKEtokenFAKEtoken1234"


def _model_folder(path):
    path.mkdir()
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"\0" * 16)
    (path / "tokenizer.json").write_text("{}")
    (path / "loss.png").write_bytes(b"png")
    (path / "finetune_config.json").write_text("{}")
    (path / ".mrt-star.lock").write_text("1")
    (path / "checkpoint-2").mkdir()
    (path / "checkpoint-2" / "optimizer.pt").write_bytes(b"x")
    summary = {"base_model": "Qwen/Qwen2.5-1.5B-Instruct", "examples_used": 10, "examples_total": 12, "steps": 3,
               "global_batch_size": 4, "epochs": 1.0, "lora": False, "initial_loss": 1.2, "final_loss": 0.8,
               "probe_loss_before": 1.1, "probe_loss_after": 0.9, "devices": 2, "device": "cuda",
               "config": {"learning_rate": 1e-6, "max_length": 4096, "note": f"token {FAKE_TOKEN}"}}
    (path / "training_summary.json").write_text(json.dumps(summary))
    return str(path)


def _recorder(monkeypatch, present):
    import huggingface_hub

    calls = []

    class Info:
        commit_url = "https://huggingface.co/me/m/commit/abc"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, *a, **k: calls.append(("repo", a, k)))
    monkeypatch.setattr(huggingface_hub.HfApi, "create_branch", lambda self, *a, **k: calls.append(("branch", a, k)))
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files",
                        lambda self, *a, **k: calls.append(("list", a, k)) or list(present))
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit",
                        lambda self, *a, **k: calls.append(("commit", a, k)) or Info())
    return calls


def test_push_is_one_commit_with_a_card_linking_the_dataset_and_deletes_stale_files(tmp_path, monkeypatch, capsys):
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    folder = _model_folder(tmp_path / "model")
    calls = _recorder(monkeypatch, [".gitattributes", "config.json", "pytorch_model.bin", "old/notes.txt"])
    run_push_model(PushModelConfig(input=folder, hub_model_id="me/m", dataset="me/sft", revision="round-1"))
    assert [c[0] for c in calls] == ["repo", "branch", "list", "commit"]
    assert calls[0][2]["repo_type"] == "model"
    ops = calls[3][1][1]
    added = {op.path_in_repo: op for op in ops if isinstance(op, CommitOperationAdd)}
    deleted = sorted(op.path_in_repo for op in ops if isinstance(op, CommitOperationDelete))
    assert sorted(added) == ["README.md", "config.json", "loss.png", "model.safetensors", "tokenizer.json",
                             "training_summary.json"]  # no lock, no checkpoints, no run record
    assert deleted == ["old/notes.txt", "pytorch_model.bin"]
    card = added["README.md"].path_or_fileobj.decode()
    front = yaml.safe_load(card.split("---")[1])
    assert front["datasets"] == ["me/sft"] and front["base_model"] == "Qwen/Qwen2.5-1.5B-Instruct"
    assert "(https://huggingface.co/datasets/me/sft)" in card and "| probe loss before → after | 1.1 → 0.9 |" in card
    assert FAKE_TOKEN.encode() not in added["training_summary.json"].path_or_fileobj
    assert FAKE_TOKEN not in capsys.readouterr().err
    assert not (tmp_path / "model" / "README.md").exists()  # the card is staged outside the model folder


def test_a_new_repository_deletes_nothing_and_dry_run_touches_no_network(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    folder = _model_folder(tmp_path / "model")
    calls = _recorder(monkeypatch, [])

    def missing(self, *a, **k):
        from types import SimpleNamespace

        # The error huggingface_hub raises for a missing repository (its HTTP response reduced to what it reads).
        raise RepositoryNotFoundError("404 no such repo", response=SimpleNamespace(headers={}, request=None))

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", missing)
    run_push_model(PushModelConfig(input=folder, hub_model_id="me/m", dataset="me/sft"))
    assert not any(op.__class__.__name__ == "CommitOperationDelete" for op in calls[-1][1][1])
    calls.clear()
    run_push_model(PushModelConfig(input=folder, hub_model_id="me/m", dataset="me/sft", dry_run=True))
    assert calls == []


def test_push_model_input_checks(tmp_path):
    folder = _model_folder(tmp_path / "model")
    with pytest.raises(UserError, match="ORG/NAME"):
        run_push_model(PushModelConfig(input=folder, hub_model_id="nope", dataset="me/sft", dry_run=True))
    with pytest.raises(UserError, match="push the SFT set"):
        run_push_model(PushModelConfig(input=folder, hub_model_id="me/m", dataset="local/folder/sft", dry_run=True))
    (tmp_path / "half").mkdir()
    with pytest.raises(UserError, match="not a finished `mrt-star finetune` output"):
        run_push_model(PushModelConfig(input=str(tmp_path / "half"), hub_model_id="me/m", dataset="me/sft"))


def test_push_model_is_a_cli_verb(tmp_path):
    from mrt_star.cli import main

    folder = _model_folder(tmp_path / "model")
    assert main(["push-model", folder, "--hub-model-id", "me/m", "--dataset", "me/sft", "--dry-run"]) == 0
    assert main(["push-model", folder, "--dataset", "me/sft", "--dry-run"]) == 2  # the model repo id is required
