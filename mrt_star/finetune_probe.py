"""The probe loss of `mrt-star finetune` (mean loss on a fixed slice of the SFT set) and the loss plot.

The probe is measured by a `TrainerCallback` at train begin and train end, on the model the trainer
has already wrapped, with a plain forward pass under `no_grad`. Calling `trainer.evaluate()` before
`trainer.train()` instead builds a DeepSpeed inference engine that `train()` then frees, which crashes
ZeRO-3 runs; the callback never creates an engine of its own. Every process runs the same probe
batches (ZeRO-3 and FSDP gather parameters collectively, so all ranks must take part), and the loss is
the token mean over the probe set, identical on every rank.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import TrainerCallback


def probe_indices(n: int, k: int) -> list[int]:
    """Return k indices evenly spread over range(n), the same every run."""
    k = min(k, n)
    return sorted({int(i * n / k) for i in range(k)}) if k > 0 else []


def probe_loss(model: Any, examples: list[dict[str, list[int]]], batch_size: int, pad_id: int,
               autocast: Any = None) -> float:
    """Return the token-mean loss of `model` on tokenized examples (input_ids + labels), without gradients."""
    import contextlib

    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            width = max(len(e["input_ids"]) for e in batch)
            ids = torch.tensor([e["input_ids"] + [pad_id] * (width - len(e["input_ids"])) for e in batch], device=device)
            labels = torch.tensor([e["labels"] + [-100] * (width - len(e["labels"])) for e in batch], device=device)
            mask = torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in batch],
                                device=device)
            n = int((labels[:, 1:] != -100).sum())  # the model shifts labels by one; the first is never predicted
            with torch.no_grad(), (autocast or contextlib.nullcontext)():
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            total += float(loss) * n
            count += n
    finally:
        model.train(was_training)
    return total / count if count else float("nan")


class ProbeCallback(TrainerCallback):
    """Measure the probe loss when training begins and when it ends (`before`, `after`)."""

    def __init__(self, examples: list[dict[str, list[int]]], batch_size: int, pad_id: int):
        self.examples, self.batch_size, self.pad_id = examples, batch_size, pad_id
        self.trainer: Any = None  # set after the trainer is built: its accelerator gives the autocast context
        self.before: float | None = None
        self.after: float | None = None

    def _measure(self, model: Any) -> float:
        autocast = self.trainer.accelerator.autocast if self.trainer is not None else None
        return probe_loss(model, self.examples, self.batch_size, self.pad_id, autocast)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.examples and model is not None and state.global_step == 0:  # not again on resume
            self.before = self._measure(model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.examples and model is not None:
            self.after = self._measure(model)


def plot_loss(losses: list[tuple[int, float]], path: Path, title: str,
              probe: tuple[float | None, float | None] = (None, None)) -> Path:
    """Return the path of a PNG of the training loss per step (probe losses as dashed lines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if losses:
        ax.plot([s for s, _ in losses], [v for _, v in losses], marker="." if len(losses) < 50 else None, label="train loss")
    for value, name, style in ((probe[0], "probe before", ":"), (probe[1], "probe after", "--")):
        if value is not None:
            ax.axhline(value, linestyle=style, color="gray", label=f"{name} ({value:.3f})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
