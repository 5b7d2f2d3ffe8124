"""`omnittt eval --plot`: loss vs position bucket per run, with intervals and ln(vocab), as a PNG (matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omnittt.atomic import atomic_write
from omnittt.errors import UserError


def require_matplotlib() -> Any:
    """matplotlib.pyplot on the Agg backend, or the one-line error (checked before a long evaluation)."""
    try:  # matplotlib is optional (the [plot] extra): imported only for --plot
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("--plot needs matplotlib, which is not installed",
                        fix="pip install matplotlib, or leave out --plot (the terminal chart is always printed)"
                        ) from None
    return plt


def plot_report(report: dict[str, Any], path: str | Path) -> None:
    """Loss vs position bucket per run (with intervals) and ln(vocab), written to `path` with matplotlib."""
    plt = require_matplotlib()

    fig, ax = plt.subplots(figsize=(8, 4.5))
    labels = report["buckets"]
    for run in report["runs"]:
        xs, ys, lo, hi = [], [], [], []
        for i, row in enumerate(run["buckets"]):
            if row["loss"] is None:
                continue
            xs.append(i)
            ys.append(row["loss"])
            low, high = row["ci"] or (row["loss"], row["loss"])
            lo.append(row["loss"] - low)
            hi.append(high - row["loss"])
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=run["name"])
    ax.axhline(report["uniform_loss"], color="grey", linestyle="--", label=f"uniform guess ln {report['vocab_size']}")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_xlabel("position (real tokens since the conversation start)")
    ax.set_ylabel("loss (nats / assistant token)")
    ax.set_title("loss vs position")
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
