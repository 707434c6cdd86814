"""Run a round's fine-tune as an `accelerate launch` subprocess (multi-GPU training from `mrt-star run`).

Sampling runs in the `run` process on the GPUs; a full fine-tune of an 8B model needs all of them,
sharded (ZeRO-3 / FSDP2). So, when the recipe names `finetune_launcher` (an accelerate config file) and
`finetune_processes`, the loop writes the round's finetune config to a temporary recipe and starts
`accelerate launch --config_file LAUNCHER --num_processes N -m mrt_star.cli finetune --config RECIPE`,
after the stages have closed their engines and this process has returned its cached GPU memory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from mrt_star.config import config_to_dict
from mrt_star.errors import UserError


def check_launcher(launcher: str | None, processes: int) -> None:
    """Raise UserError when the launcher config is missing or the process count is not positive."""
    if launcher is None:
        return
    if not Path(launcher).is_file():
        raise UserError(f"finetune_launcher: no such accelerate config file {launcher!r}; use one of "
                        f"recipes/accelerate/*.yaml or write one with `accelerate config`")
    if processes < 1:
        raise UserError(f"finetune_processes: must be at least 1, got {processes}")


def launch_command(launcher: str, processes: int, recipe: str | Path) -> list[str]:
    """Return the argv that runs `mrt-star finetune --config RECIPE` under accelerate with N processes."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(launcher),
            "--num_processes", str(processes), "-m", "mrt_star.cli", "finetune", "--config", str(recipe)]


def release_gpu_memory() -> None:
    """Return this process's cached GPU memory before the launched trainers need it (engines are closed)."""
    import gc

    gc.collect()
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def launch_finetune(stage_cfg: Any, launcher: str, processes: int) -> Path:
    """Run the fine-tune described by `stage_cfg` under `accelerate launch`; return its output folder."""
    import yaml

    check_launcher(launcher, processes)
    release_gpu_memory()
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="mrt-star-finetune-", delete=False) as handle:
        yaml.safe_dump(config_to_dict(stage_cfg), handle, sort_keys=False)
    try:
        done = subprocess.run(launch_command(launcher, processes, handle.name), check=False)
    finally:
        os.unlink(handle.name)
    if done.returncode != 0:
        raise UserError(f"finetune under accelerate ({launcher}, {processes} processes) exited with code "
                        f"{done.returncode}; its output is above; re-run the same command to resume")
    return Path(stage_cfg.output)
