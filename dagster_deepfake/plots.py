"""Small PNG plots for the UI (Dagster metadata, the job page). Agg backend, no pyplot state."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence


def line_plot_png(
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    *,
    title: str,
    xlabel: str = "time (s)",
    ylabel: str = "",
    ylim: tuple[float, float] | None = None,
    hline: float | None = None,
    spans: Sequence[tuple[float, float]] = (),
) -> bytes:
    """A compact line plot (640×200 px) as PNG bytes; `spans` are shaded x-ranges (e.g. speech)."""
    from matplotlib.figure import Figure  # ~0.8 s at import; only plotting steps pay it

    fig = Figure(figsize=(6.4, 2.0), dpi=100)
    # Fixed margins, not tight_layout(): that renders the figure once more to measure it, which
    # was half of a plot's cost and ~1 s of every analysis run on a loaded 2-core machine (issue 20).
    fig.subplots_adjust(left=0.09, right=0.98, top=0.86, bottom=0.24)
    ax = fig.add_subplot(1, 1, 1)
    for start, end in spans:
        ax.axvspan(start, end, color="#f5c542", alpha=0.25, lw=0)
    for label, ys in series.items():
        ax.plot(list(x), list(ys), lw=1.4, label=label, marker="o" if len(x) < 30 else None, ms=3)
    if hline is not None:
        ax.axhline(hline, color="#888", lw=0.8, ls="--")
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    if len(series) > 1:
        ax.legend(fontsize=7, loc="upper right")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
