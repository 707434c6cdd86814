"""`mrt-star push-model`: upload a fine-tuned model folder to the Hugging Face Hub with a model card.

One commit holds the weights, config, tokenizer, `training_summary.json`, the loss plot and a
generated `README.md` card that links the Hub dataset the model was trained on (push the SFT set
first with `mrt-star push`). Files that are in the repository but no longer in the folder are
deleted in the same commit, so the repository is exactly the folder, not a mix of two fine-tunes.
The card is staged outside the model folder; `--dry-run` lists the plan without touching the network.
The token comes from the standard Hugging Face login or HF_TOKEN and is never read or written here.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mrt_star.config import option
from mrt_star.errors import UserError
from mrt_star.hub import CITATION, _hub_error, check_repo_id, scrub

CARD = "README.md"
SUMMARY = "training_summary.json"
# Written into a model folder but not part of the model: checkpoints, the writer lock, the adapter of a merged run.
SKIPPED = (".mrt-star.lock", "finetune_config.json")
SKIPPED_DIRS = ("checkpoint-",)


@dataclass
class PushModelConfig:
    """Options of `mrt-star push-model MODEL_DIR --hub-model-id ORG/NAME --dataset ORG/NAME`."""

    input: str | None = option(None, "the fine-tuned model folder (the output of `mrt-star finetune`)")
    hub_model_id: str = option(help="Hub model repository, ORG/NAME (created if missing)")
    dataset: str = option(help="Hub dataset the model was trained on, ORG/NAME (push it with `mrt-star push`); "
                               "the card links it")
    private: bool = option(False, "create the repository as private")
    revision: str | None = option(None, "branch to push to (created if missing); default: main")
    license: str | None = option(None, "license id for the card's metadata (e.g. apache-2.0); default: none stated")
    dry_run: bool = option(False, "list the files that would be uploaded and deleted; no network")


def check_model_folder(folder: str | None) -> dict[str, Any]:
    """Return the training summary of a finished fine-tune folder, or raise UserError."""
    if not folder:
        raise UserError("input: name the model folder: mrt-star push-model MODEL_DIR --hub-model-id ORG/NAME")
    path = Path(folder)
    if not path.is_dir():
        raise UserError(f"input: {folder} is not a folder")
    if not (path / SUMMARY).exists():
        raise UserError(f"input: {folder} is not a finished `mrt-star finetune` output (no {SUMMARY}); "
                        f"finish the fine-tune first")
    if not (path / "config.json").exists() or not any(path.glob("*.safetensors")):
        raise UserError(f"input: {folder} holds no full model (config.json and *.safetensors); a LoRA run saved "
                        f"with merge_lora false cannot be pushed as a model")
    return json.loads((path / SUMMARY).read_text())


def model_card(summary: dict[str, Any], hub_model_id: str, dataset: str, license: str | None = None) -> str:
    """Return the README.md model card: metadata, the dataset link, training numbers, loading, citation."""
    import yaml

    meta: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": "text-generation",
                            "tags": ["mrt-star", "sft", "reasoning"], "datasets": [dataset]}
    base = str(summary.get("base_model", ""))
    if base and not Path(base).is_absolute() and base.count("/") == 1:  # a Hub id, not a local folder
        meta["base_model"] = base
    if license:
        meta["license"] = license
    config = summary.get("config", {})
    numbers = [("examples used / total", f"{summary.get('examples_used')} / {summary.get('examples_total')}"),
               ("optimizer steps (global batch)", f"{summary.get('steps')} ({summary.get('global_batch_size')})"),
               ("epochs", summary.get("epochs")), ("learning rate", config.get("learning_rate")),
               ("max length", config.get("max_length")), ("LoRA", summary.get("lora")),
               ("loss first → last step", f"{summary.get('initial_loss')} → {summary.get('final_loss')}"),
               ("probe loss before → after", f"{summary.get('probe_loss_before')} → {summary.get('probe_loss_after')}"),
               ("devices", f"{summary.get('devices')} × {summary.get('device')}")]
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "", f"# {hub_model_id.split('/')[1]}", "",
             f"Fine-tuned with mrt-star `finetune` (TRL SFT) from `{base}` on the dataset "
             f"[{dataset}](https://huggingface.co/datasets/{dataset}), an MRT-STaR SFT set of reasoning traces "
             f"kept for making progress ([arXiv:2503.07572](https://arxiv.org/abs/2503.07572)).", "",
             "## Training", "", "| | |", "| --- | --- |", *[f"| {k} | {v} |" for k, v in numbers], "",
             "![training loss](loss.png)", "", "The full configuration is in `training_summary.json`.", "",
             "## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
             f'model = AutoModelForCausalLM.from_pretrained("{hub_model_id}")',
             f'tokenizer = AutoTokenizer.from_pretrained("{hub_model_id}")', "```", "",
             "## Citation", "", "```bibtex", CITATION, "```", ""]
    return scrub("\n".join(lines))


def upload_plan(folder: str | Path, card: Path) -> list[tuple[Path, str]]:
    """Return (local file, path in the repository) for every file of the model folder that goes up, and the card."""
    folder = Path(folder)
    plan = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if (not path.is_file() or rel.name in SKIPPED or rel.name == CARD or rel.parts[0] == "adapter"
                or any(part.startswith(SKIPPED_DIRS) or part.startswith(".") for part in rel.parts)):
            continue
        plan.append((path, rel.as_posix()))
    return [*plan, (card, CARD)]


def stale_files(api: Any, cfg: PushModelConfig, plan: list[tuple[Path, str]]) -> list[str]:
    """Return the repository's files that the folder no longer has (none when the repo or branch is new)."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        present = api.list_repo_files(cfg.hub_model_id, repo_type="model", revision=cfg.revision)
    except (RepositoryNotFoundError, RevisionNotFoundError):
        return []
    keep = {dest for _, dest in plan} | {".gitattributes"}
    return sorted(f for f in present if f not in keep)


def _payload(src: Path) -> str | bytes:
    # Text files the toolkit wrote (summary, card) are scrubbed of tokens and the home folder; weights go as is.
    return scrub(src.read_text()).encode() if src.name in (SUMMARY, CARD) else str(src)


def run_push_model(cfg: PushModelConfig) -> Path:
    """Return the model folder after pushing it and its card as one commit (deleting files no longer there)."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    from mrt_star.console import comparison_table, console

    check_repo_id(cfg.hub_model_id)
    try:
        check_repo_id(cfg.dataset)
    except UserError:
        raise UserError(f"dataset: expected the Hub dataset ORG/NAME the model was trained on, got {cfg.dataset!r}; "
                        f"push the SFT set with `mrt-star push SFT_DIR --repo-id ORG/NAME` first") from None
    summary = check_model_folder(cfg.input)
    staging = Path(tempfile.mkdtemp(prefix="mrt-star-push-model-"))
    try:
        (staging / CARD).write_text(model_card(summary, cfg.hub_model_id, cfg.dataset, cfg.license))
        plan = upload_plan(cfg.input, staging / CARD)
        comparison_table(scrub(f"push-model {cfg.input} → hf.co/{cfg.hub_model_id}"
                               + (" (dry run: nothing uploaded)" if cfg.dry_run else "")),
                         ["path in repository", "bytes"], [[dest, src.stat().st_size] for src, dest in plan])
        if cfg.dry_run:
            return Path(cfg.input)
        api = HfApi()
        try:
            api.create_repo(cfg.hub_model_id, repo_type="model", private=cfg.private, exist_ok=True)
            if cfg.revision:
                api.create_branch(cfg.hub_model_id, branch=cfg.revision, repo_type="model", exist_ok=True)
            deletions = stale_files(api, cfg, plan)
            operations = [CommitOperationAdd(path_in_repo=dest, path_or_fileobj=_payload(src)) for src, dest in plan]
            operations += [CommitOperationDelete(path_in_repo=path) for path in deletions]
            info = api.create_commit(cfg.hub_model_id, operations, repo_type="model", revision=cfg.revision,
                                     commit_message=f"Upload fine-tuned model (mrt-star), trained on {cfg.dataset}")
        except UserError:
            raise
        except Exception as err:  # network, auth, quota: one line, token scrubbed
            raise _hub_error(err) from None
        console.print(f"pushed {len(plan)} file(s), deleted {len(deletions)}: {info.commit_url}")
        return Path(cfg.input)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
