"""`mrt-star push`: upload any stage's dataset folder to the Hugging Face Hub with a generated card.

The upload is one commit: the parquet shards under `data/`, the stage's `manifest.json`, and a
`README.md` dataset card (what the data is, its schema from `mrt_star.schemas`, the resolved recipe
from the manifest, counts and statistics, how to load it, and the MRT citation). The card is staged in a
temporary folder, never in the input folder (pushing must not change the data it pushes), so `--dry-run`
shows exactly what would go up, and where the card is, without touching the network.

The token comes from the standard Hugging Face login or `HF_TOKEN`; this module never reads, prints
or writes it, and scrubs anything that looks like a Hub token (`hf_` + 30 or more letters and digits,
or the value of a token variable) from every text it writes or prints, wherever it came from.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mrt_star.config import option
from mrt_star.errors import UserError

CARD = "README.md"
DATA_DIR = "data"
TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_TOKEN")
TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{30,}")

CITATION = """@misc{qu2025optimizing,
  title         = {Optimizing Test-Time Compute via Meta Reinforcement Fine-Tuning},
  author        = {Yuxiao Qu and Matthew Y. R. Yang and Amrith Setlur and Lewis Tunstall and
                   Edward Emanuel Beeching and Ruslan Salakhutdinov and Aviral Kumar},
  year          = {2025},
  eprint        = {2503.07572},
  archivePrefix = {arXiv},
  primaryClass  = {cs.LG},
  url           = {https://arxiv.org/abs/2503.07572}
}"""

STAGE_TEXT = {
    "generate": "reasoning traces sampled by a model for math problems, one row per trace, each cut into "
                "episodes and graded against the reference answer",
    "score": "reasoning traces scored with MRT's progress measure: for every episode prefix a prover is forced "
             "to answer, J(j) is its success rate, progress is J(j) - J(j-1), and regret is measured on the "
             "token axis",
    "filter": "a supervised fine-tuning set of reasoning traces kept by an MRT-STaR filter rule, in TRL's "
              "conversational prompt/completion format",
}


@dataclass
class PushConfig:
    """Options of `mrt-star push DIR --repo-id ORG/NAME`."""

    input: str | None = option(None, "the dataset folder to upload (the output folder of any stage)")
    repo_id: str = option(help="Hub dataset repository, ORG/NAME (created if missing)")
    private: bool = option(False, "create the repository as private")
    revision: str | None = option(None, "branch to push to (created if missing); default: main")
    commit_message: str | None = option(None, "commit message; default: 'Upload <stage> dataset (mrt-star)'")
    pretty_name: str | None = option(None, "title of the dataset card; default: the repository name")
    license: str | None = option(None, "license id for the card's metadata (e.g. apache-2.0); default: none stated")
    dry_run: bool = option(False, "write the card to a temporary folder (printed) and list the files that would "
                           "be uploaded; no network")


# --- safety -----------------------------------------------------------------------------------------


def scrub(text: str) -> str:
    """Return `text` with Hub tokens (the environment's, and anything shaped like one) and the home folder blanked."""
    for name in TOKEN_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    text = TOKEN_PATTERN.sub("hf_***", text)
    home = str(Path.home())
    if len(home) > 1:
        text = text.replace(home, "~")
    return text


# --- card -------------------------------------------------------------------------------------------


def _schema_docs(stage: str | None) -> dict[str, str]:
    from mrt_star import schemas

    return schemas.meanings(schemas.DATASETS.get(stage or "", {}))


def _columns(folder: Path) -> list[tuple[str, str]]:
    """Return (name, arrow type) of the dataset's columns from its first shard."""
    import pyarrow.parquet as pq

    from mrt_star.store import shard_files

    shards = shard_files(folder)
    if not shards:
        return []
    return [(f.name, str(f.type)) for f in pq.read_schema(shards[0])]


def _flat(summary: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Return summary items with nested dicts flattened one level per key path."""
    out = []
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out += _flat(value, f"{name}.")
        else:
            out.append((name, value))
    return out


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _size_category(rows: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < limit:
            return name
    return "1M<n<10M"


def dataset_card(folder: str | Path, repo_id: str, manifest: dict[str, Any], pretty_name: str | None = None,
                 license: str | None = None) -> str:
    """Return the README.md dataset card text for a stage output folder."""
    import yaml

    folder = Path(folder)
    stage = manifest.get("stage")
    config = manifest.get("config", {})
    counts = manifest.get("counts", {})
    summary = manifest.get("summary", {})
    rows = int(counts.get("rows", 0))
    title = pretty_name or repo_id.split("/")[-1]
    # A filter output names the model that sampled and scored its traces in its summary.
    model = summary.get("model") or config.get("resolved_model") or config.get("model")
    meta: dict[str, Any] = {
        "pretty_name": title,
        "language": ["en"],
        "tags": ["mrt-star", "meta-reinforcement-fine-tuning", "reasoning", "math", "test-time-compute",
                 *([f"mrt-star-{stage}"] if stage else [])],
        "task_categories": ["text-generation"],
        "size_categories": [_size_category(rows)],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": f"{DATA_DIR}/*.parquet"}]}],
    }
    if license:
        meta["license"] = license
    docs = _schema_docs(stage)
    columns = _columns(folder)
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", "", f"# {title}", ""]
    lines += [f"This dataset holds {STAGE_TEXT.get(stage, f'the output of the mrt-star `{stage}` stage')}. It was "
              "made with mrt-star, an implementation of MRT-STaR from [*Optimizing Test-Time Compute via Meta "
              "Reinforcement Fine-Tuning*](https://arxiv.org/abs/2503.07572) (Qu et al., 2025).", ""]
    facts = [("stage", stage), ("rows", rows), ("shards", counts.get("shards")), ("model", model),
             ("rule", config.get("rule") if stage == "filter" else None),
             ("estimator", config.get("estimator") if stage == "score" else None),
             ("mrt-star version", manifest.get("mrt_star_version")), ("created", manifest.get("finished")
                                                                       or manifest.get("created"))]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {_cell(v)} |" for k, v in facts if v is not None] + [""]
    lines += ["## Loading", "", "```python", "from datasets import load_dataset", "",
              f'ds = load_dataset("{repo_id}", split="train")', "```", ""]
    if stage == "filter":
        lines += ["The `prompt`/`completion` columns are TRL's conversational prompt-completion format, so the set "
                  "feeds `trl.SFTTrainer` as is (loss on the completion only). `prefix`/`suffix` split a "
                  "backtracking trace for suffix-only training of its revisions.", ""]
    lines += ["## Schema", "", "| column | type | description |", "|---|---|---|"]
    lines += [f"| `{name}` | `{_cell(kind)}` | {_cell(docs.get(name, ''))} |" for name, kind in columns]
    lines += [""]
    stats = [(k, v) for k, v in _flat(summary) if v is not None]
    if stats:
        lines += ["## Statistics", "", "| statistic | value |", "|---|---|"]
        lines += [f"| {k} | {_cell(v)} |" for k, v in stats] + [""]
    lines += ["## Recipe", "", f"The resolved `{stage}` configuration (from `manifest.json`):", "", "```yaml",
              yaml.safe_dump(config, sort_keys=True, default_flow_style=False).rstrip(), "```", ""]
    lines += ["## Method", "", "MRT treats a reasoning trace as a sequence of episodes. A prover stops the trace "
              "after each episode and answers; J(j) is the chance that answer is right, and an episode's *progress* "
              "is J(j) - J(j-1). MRT-STaR keeps the episodes that make progress (a correct trace cut where J peaks and "
              "closed with a forced answer; traces that lose ground without recovering are dropped; the earliest "
              "rising J curve is preferred), while plain STaR keeps every correct trace.", ""]
    lines += ["## Citation", "", "```bibtex", CITATION, "```", ""]
    return scrub("\n".join(lines))


# --- upload -----------------------------------------------------------------------------------------


def check_folder(folder: str | None) -> dict[str, Any]:
    """Return the manifest of a finished stage output folder with data, or raise UserError."""
    from mrt_star.schemas import DATASETS
    from mrt_star.store import read_stage_input, shard_files

    if not folder:
        raise UserError("input: name the dataset folder to push: mrt-star push DIR --repo-id ORG/NAME")
    manifest = read_stage_input(folder, tuple(DATASETS), "push")
    if not shard_files(folder):
        raise UserError(f"input: {folder} has no parquet shards (the stage kept no rows); nothing to push")
    return manifest


def check_repo_id(repo_id: str) -> None:
    """Raise UserError unless `repo_id` looks like ORG/NAME."""
    parts = (repo_id or "").split("/")
    if len(parts) != 2 or not all(parts) or any(c.isspace() for c in repo_id):
        raise UserError(f"repo_id: expected ORG/NAME, got {repo_id!r}")


def upload_plan(folder: str | Path, card: str | Path) -> list[tuple[Path, str]]:
    """Return (local file, path in the repository) for every file the push uploads; `card` is the staged card."""
    from mrt_star.store import MANIFEST, shard_files

    folder = Path(folder)
    plan = [(p, f"{DATA_DIR}/{p.name}") for p in shard_files(folder)]
    plan.append((folder / MANIFEST, MANIFEST))
    plan.append((Path(card), CARD))
    return plan


def prepare_push(cfg: PushConfig, staging: str | Path | None = None) -> tuple[list[tuple[Path, str]], dict[str, Any]]:
    """Return (upload plan, manifest) after writing the dataset card into `staging` (default: a new temporary
    folder), never into the input folder; no network."""
    check_repo_id(cfg.repo_id)
    manifest = check_folder(cfg.input)
    card = dataset_card(cfg.input, cfg.repo_id, manifest, cfg.pretty_name, cfg.license)
    staging = Path(staging) if staging else Path(tempfile.mkdtemp(prefix="mrt-star-push-"))
    staging.mkdir(parents=True, exist_ok=True)
    (staging / CARD).write_text(card)
    return upload_plan(cfg.input, staging / CARD), manifest


def _payload(src: Path) -> str | bytes:
    """Return what is uploaded for a file: parquet as is, text (manifest, card) scrubbed of tokens and home."""
    if src.suffix in (".json", ".md"):
        return scrub(src.read_text()).encode()
    return str(src)


def _hub_error(err: Exception) -> UserError:
    first = scrub(str(err)).strip().splitlines()[0] if str(err).strip() else ""
    hint = " (log in with `hf auth login` or set HF_TOKEN)" if "401" in first or "403" in first or "token" in first.lower() else ""
    return UserError(f"push failed: {type(err).__name__}: {first}{hint}")


def run_push(cfg: PushConfig) -> Path:
    """Return the pushed folder after uploading it (shards, manifest, card) as one commit to a Hub dataset repo."""
    from mrt_star.console import comparison_table, console

    plan, manifest = prepare_push(cfg)
    card = plan[-1][0]
    comparison_table(scrub(f"push {cfg.input} → hf.co/datasets/{cfg.repo_id}" + (" (dry run: nothing uploaded)"
                                                                                if cfg.dry_run else "")),
                     ["path in repository", "local file", "bytes"],
                     [[dest, scrub(str(src)), src.stat().st_size] for src, dest in plan])
    if cfg.dry_run:
        console.print(f"dry run: the card is at {scrub(str(card))} (the input folder is unchanged); nothing was "
                      f"uploaded")
        return Path(cfg.input)
    try:
        return _upload(cfg, plan, manifest)
    finally:
        shutil.rmtree(card.parent, ignore_errors=True)


def _upload(cfg: PushConfig, plan: list[tuple[Path, str]], manifest: dict[str, Any]) -> Path:
    from huggingface_hub import CommitOperationAdd, HfApi

    from mrt_star.console import console

    api = HfApi()
    message = cfg.commit_message or f"Upload {manifest.get('stage')} dataset (mrt-star)"
    try:
        api.create_repo(cfg.repo_id, repo_type="dataset", private=cfg.private, exist_ok=True)
        if cfg.revision and cfg.revision != "main":
            api.create_branch(cfg.repo_id, branch=cfg.revision, repo_type="dataset", exist_ok=True)
        operations = [CommitOperationAdd(path_in_repo=dest, path_or_fileobj=_payload(src)) for src, dest in plan]
        info = api.create_commit(cfg.repo_id, operations, commit_message=message, repo_type="dataset",
                                 revision=cfg.revision)
    except Exception as err:  # network, auth, permissions: one line for the user, never the token
        if isinstance(err, UserError):
            raise
        raise _hub_error(err) from None
    url = getattr(info, "commit_url", None) or f"https://huggingface.co/datasets/{cfg.repo_id}"
    console.print(scrub(f"pushed {len(plan)} files to {url}"))
    return Path(cfg.input)
