"""PNG plots of an evaluation's metrics (matplotlib, Agg backend: no display needed).

Each function takes the `models` mapping of `metrics.json` ({label: metrics}) and returns the file it wrote.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(fig: Any, ax: Any, path: Path, xlabel: str, ylabel: str, title: str, legend: str = "small") -> Path:
    """Label the axes (rates on a 0-1 scale), add the legend, and save the figure to `path`."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=legend)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def plot_accuracy_vs_tokens(models: dict[str, dict[str, Any]], path: Path) -> Path:
    """Return `path`: accuracy if stopped at t tokens (lines) and maj@k against total tokens (markers)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (label, m) in enumerate(models.items()):
        color = f"C{i}"
        curve = m["accuracy_vs_tokens"]
        ax.plot(curve["tokens"], curve["accuracy"], color=color, label=f"{label}: one trace, stopped at t")
        pts = m["maj_vs_tokens"]
        ax.plot([p["tokens"] for p in pts], [p["maj"] for p in pts], color=color, linestyle="--", marker="o",
                markersize=3, label=f"{label}: maj@k over k traces")
    return _finish(fig, ax, path, "tokens spent per problem", "accuracy", "accuracy and maj@k vs tokens", legend="x-small")


def plot_j_curves(models: dict[str, dict[str, Any]], path: Path) -> Path:
    """Return `path`: mean J after each episode (attempt) — traces that ended hold their final J."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, m) in enumerate(models.items()):
        values = m["j_by_episode"]
        ax.plot(range(1, len(values) + 1), values, marker="o", color=f"C{i}", label=label)
    return _finish(fig, ax, path, "episode (attempt) j", "J after episode j", "J curves on the episode axis")


def plot_regret(models: dict[str, dict[str, Any]], path: Path) -> Path:
    """Return `path`: regret on the token axis vs budget (dashed: the maj@k baseline's), and on the episode
    axis against the appendix's comparator (the better of maj@(j+1) and the next episode's J)."""
    plt = _pyplot()
    fig, (ax, ax_ep) = plt.subplots(1, 2, figsize=(10, 4))
    for i, (label, m) in enumerate(models.items()):
        budgets = sorted(m["regret"], key=float)
        ax.plot([float(b) for b in budgets], [m["regret"][b] for b in budgets], marker="o", color=f"C{i}", label=label)
        maj = m.get("maj_regret") or {}
        if maj:
            ax.plot([float(b) for b in budgets], [maj[b] for b in budgets], linestyle="--", color=f"C{i}",
                    alpha=0.6, label=f"{label}: maj@k")
        episode = m.get("episode_regret") or []
        ax_ep.plot(range(1, len(episode) + 1), episode, marker="o", color=f"C{i}", label=label)
    ax_ep.set_xlabel("episode j")
    ax_ep.set_ylabel("cumulative regret vs comparator")
    ax_ep.set_title("episode axis")
    ax_ep.legend(fontsize="small")
    axis = next(iter(models.values())).get("regret_axis", "thinking")
    return _finish(fig, ax, path, f"token budget C ({axis} axis)", "normalized regret (lower is better)",
                   "cumulative regret vs budget")


def plot_extrapolation(models: dict[str, dict[str, Any]], path: Path) -> Path:
    """Return `path`: forced-answer accuracy (solid) and regret (dashed) per budget when thinking is extended
    with the extension word past its end; the dotted line marks the training length."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, m) in enumerate(models.items()):
        for key, style in (("extrapolation_accuracy", "-"), ("extrapolation_regret", "--")):
            points = sorted(m.get(key, {}).items(), key=lambda kv: float(kv[0]))
            ax.plot([float(b) for b, _ in points], [v for _, v in points], linestyle=style, marker="o",
                    color=f"C{i}", label=f"{label}: {key.split('_')[1]}")
        if m.get("training_length"):
            ax.axvline(m["training_length"], color="grey", linestyle=":", linewidth=1)
    return _finish(fig, ax, path, "thinking-token budget (extended with 'Wait')", "accuracy / regret",
                   "budget-forcing extrapolation")


def plot_at_k(models: dict[str, dict[str, Any]], path: Path) -> Path:
    """Return `path`: pass@k (solid) and maj@k (dashed) against k."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, m) in enumerate(models.items()):
        for key, style in (("pass@k", "-"), ("maj@k", "--")):
            ks = sorted(m[key], key=int)
            ax.plot([int(k) for k in ks], [m[key][k] for k in ks], linestyle=style, marker="o", color=f"C{i}",
                    label=f"{label} {key}")
    return _finish(fig, ax, path, "k samples", "rate", "pass@k and maj@k", legend="x-small")


def plot_all(models: dict[str, dict[str, Any]], folder: Path) -> list[Path]:
    """Return the PNGs written into `folder` for these models' metrics."""
    return [plot_accuracy_vs_tokens(models, folder / "accuracy_vs_tokens.png"),
            plot_j_curves(models, folder / "j_curves.png"),
            plot_regret(models, folder / "regret.png"),
            plot_at_k(models, folder / "pass_maj_at_k.png"),
            *([plot_extrapolation(models, folder / "extrapolation.png")]
              if any(m.get("extrapolation_accuracy") for m in models.values()) else [])]
