"""`mrt-star finetune --dry-run`: will the fine-tune fit? Per-device memory for weights, gradients, AdamW.

The parameter count comes from the model's config alone: the model is built on the `meta` device (no
weights read, no memory used). Bytes per parameter, full fine-tune: master weights and gradients in the
master dtype (float32: 4 + 4) plus AdamW's two float32 moments (8), i.e. 16 bytes/param in float32.
Under DeepSpeed ZeRO-3 or FSDP full sharding all three are divided across the processes; under DDP (or
one device) every device holds all of them. With LoRA the frozen base is held once (replicated, or
sharded), and only the adapter has gradients and optimizer states. Activations are not counted: they
depend on batch × length and on gradient checkpointing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 4}
ADAMW_STATE_BYTES = 8  # exp_avg + exp_avg_sq, float32


@dataclass
class MemoryEstimate:
    """Per-device bytes of each part, for one layout (`replicated` or `sharded` over `processes`)."""

    layout: str
    processes: int
    params: int
    trainable: int
    weights: float
    gradients: float
    optimizer: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer


def count_parameters(model_path: str, lora_r: int = 0, lora_targets: list[str] | None = None) -> tuple[int, int]:
    """Return (all parameters, trainable parameters) of a model built from its config on the meta device."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    if not lora_r:
        return total, total
    output = model.get_output_embeddings()
    adapters = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is output:
            continue
        if lora_targets in (None, ["all-linear"]) or name.split(".")[-1] in lora_targets:
            adapters += lora_r * (module.in_features + module.out_features)
    return total, adapters


def estimate(params: int, trainable: int, master_dtype: str, processes: int, sharded: bool) -> MemoryEstimate:
    """Return the per-device estimate for one layout."""
    size = DTYPE_BYTES[master_dtype]
    share = processes if sharded else 1
    return MemoryEstimate("sharded" if sharded else "replicated", processes, params, trainable,
                          weights=params * size / share, gradients=trainable * size / share,
                          optimizer=trainable * ADAMW_STATE_BYTES / share)


def launch_layout() -> tuple[int, str | None]:
    """Return (processes, 'sharded'/'replicated' or None when not under `accelerate launch`) from the environment."""
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "")
        return processes, "sharded" if stage == "3" else "replicated"
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        strategy = os.environ.get("FSDP_SHARDING_STRATEGY", "FULL_SHARD").upper()  # FSDP2 always shards
        return processes, "replicated" if strategy in ("3", "NO_SHARD") else "sharded"
    return processes, ("replicated" if processes > 1 else None)


def dry_run_report(cfg: Any, model_path: str, default_processes: int = 8) -> list[MemoryEstimate]:
    """Print and return the estimates: the launch's own layout under accelerate, else one device and N-way sharding."""
    from mrt_star.console import summary_table

    params, trainable = count_parameters(model_path, cfg.lora_r if cfg.lora else 0, cfg.lora_target_modules)
    processes, layout = launch_layout()
    if layout is None:  # a plain command: show one device (or DDP) and full sharding over a typical node
        rows = [estimate(params, trainable, cfg.master_dtype, 1, False),
                estimate(params, trainable, cfg.master_dtype, default_processes, True)]
    else:
        rows = [estimate(params, trainable, cfg.master_dtype, processes, layout == "sharded")]
    table = [("parameters (trainable)", f"{params / 1e9:.3f} B ({trainable / 1e9:.3f} B)"),
             ("master dtype", f"{cfg.master_dtype} ({DTYPE_BYTES[cfg.master_dtype]} bytes/param), AdamW states float32")]
    for row in rows:
        where = ("per device, replicated (one device or DDP)" if row.layout == "replicated"
                 else f"per device, sharded over {row.processes} processes (ZeRO-3 / FSDP full shard)")
        table.append((where, f"weights {row.weights / GIB:.2f} + gradients {row.gradients / GIB:.2f} + "
                             f"AdamW {row.optimizer / GIB:.2f} = {row.total / GIB:.2f} GiB"))
    table.append(("not counted", "activations (grow with batch × max_length; --gradient-checkpointing cuts them)"))
    summary_table(f"mrt-star finetune --dry-run: {model_path}", table)
    return rows
