"""The paper's figures with matplotlib, from the tidy frame, saved as SVG and PNG and embeddable in HTML.

- :func:`figure_data_size` (Figure 3): each Table 1 metric against the preference data size, one line per
  (model size, method); the untrained base model of a model size, when present, is a dashed horizontal line.
  Drawn when some (model size, method) was trained at two data sizes or more.
- :func:`figure_rejected` (Figure 4): each Table 1 metric per rejected-image strategy (crop, diffusion, black,
  random, contrast), grouped bars per (model size, method, data size). Drawn when some configuration was trained
  with two strategies or more.

Figures are :class:`matplotlib.figure.Figure` objects on the Agg canvas (no pyplot, no global backend state), and
saved deterministically (no date in the SVG, a fixed SVG hash salt). Text from run descriptions is escaped for
matplotlib (a ``$`` never starts mathtext).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from reports.frame import STRATEGIES, format_size
from reports.stats import seed_interval
from reports.tables import (
    DOWN,
    TABLE1_SPECS,
    MetricSpec,
    RowKey,
    Values,
    group_rows,
    method_label,
    run_meta,
    setting,
)

MAX_PANELS = 12
_RC = {"svg.hashsalt": "halluc-harness", "svg.fonttype": "path", "font.size": 9, "axes.titlesize": 9}


@dataclass(frozen=True)
class FigureFiles:
    """A saved figure: its files and what the HTML embeds."""

    id: str
    title: str
    caption: str
    svg_path: Path
    png_path: Path
    png_data_uri: str
    svg_data_uri: str


def mpl_text(text: str) -> str:
    """``text`` for a matplotlib label: ``$`` escaped so it never opens mathtext."""
    return text.replace("$", r"\$")


def _line_label(r: RowKey) -> str:
    size = r.get("model_size") or r.get("model") or ""
    return mpl_text(f"{method_label(r)} · {size}" if size else method_label(r))


def _panels(n: int) -> tuple[int, int]:
    cols = min(3, n)
    return math.ceil(n / cols), cols


def _new_figure(n_panels: int) -> tuple[Figure, list]:
    """A figure on the Agg canvas (no display, no pyplot state) with ``n_panels`` axes, 3 per row."""
    nrows, ncols = _panels(n_panels)
    fig = Figure(figsize=(3.4 * ncols, 2.6 * nrows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes


def figure_data_size(frame: pd.DataFrame, specs: Sequence[MetricSpec] = TABLE1_SPECS) -> Figure | None:
    """Figure 3: metric vs data size per (model size, method); None when no data-size sweep is present."""
    frame = frame[frame["source"] != "paper"]
    rows = group_rows(run_meta(frame))
    values = Values(frame)
    lines: dict[tuple, list[RowKey]] = {}
    for r in rows:
        if r.get("data_size") is not None and r.get("method") not in (None, "base"):
            lines.setdefault(
                (
                    r.get("model_size"),
                    r.get("method"),
                    setting(r, "beta"),
                    setting(r, "epochs"),
                    setting(r, "rejected_image"),
                ),
                [],
            ).append(r)
    lines = {
        k: sorted(v, key=lambda r: r.get("data_size"))
        for k, v in lines.items()
        if len({r.get("data_size") for r in v}) > 1
    }
    if not lines:
        return None
    # the dashed reference per model size: the SFT model the methods started from, else the untrained base
    bases: dict[Any, RowKey] = {}
    for method in ("base", "sft"):
        bases.update({r.get("model_size"): r for r in rows if r.get("method") == method})
    panels = [s for s in specs if any(values.spec_value(r, s) is not None for rs in lines.values() for r in rs)]
    panels = panels[:MAX_PANELS]
    if not panels:
        return None
    fig, axes = _new_figure(len(panels))
    drawn: set[str] = set()
    sizes = sorted({r.get("data_size") for rs in lines.values() for r in rs})
    for ax, spec in zip(axes, panels):
        for rs in lines.values():
            pts = [(r.get("data_size"), values.spec_value(r, spec), _seed_error(values, r, spec)) for r in rs]
            pts = [(x, y, e) for x, y, e in pts if y is not None]
            if pts:
                xs, ys, errors = [x for x, _, _ in pts], [y for _, y, _ in pts], [e for _, _, e in pts]
                (line,) = ax.plot(xs, ys, marker="o", label=_line_label(rs[0]))
                if any(e > 0 for e in errors):
                    ax.errorbar(xs, ys, yerr=errors, fmt="none", capsize=3, color=line.get_color())
        for size, base in bases.items():
            v = values.spec_value(base, spec)
            if v is not None and any(k[0] == size for k in lines):
                name = _REFERENCE_NAMES[base.get("method")]
                ax.axhline(
                    v, linestyle="--", linewidth=1, color="0.5", label=mpl_text(f"{name} · {size}" if size else name)
                )
                drawn.add(name)
        ax.set_xscale("log")
        ax.set_xticks(sizes, [format_size(s) for s in sizes])
        ax.minorticks_off()
        arrow = "\u2193" if spec.better == DOWN else "\u2191"
        ax.set_title(mpl_text(f"{spec.group} {spec.label} {arrow}"))
        ax.set_xlabel("preference data size")
        ax.grid(True, alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    for ax in axes[1 : len(panels)]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    fig.legend(
        list(seen.values()),
        list(seen.keys()),
        loc="outside lower center",
        ncols=min(4, len(seen)),
        fontsize=8,
        frameon=False,
    )
    fig.references = sorted(drawn)  # what the dashed lines show, for the caption
    fig.has_error_bars = any(len(r.runs) > 1 for rs in lines.values() for r in rs)
    return fig


_REFERENCE_NAMES = {"base": "base", "sft": "SFT"}


def _seed_error(values: Values, row: RowKey, spec: MetricSpec) -> float:
    """Half-width of the 95% t-interval over the row's seeds (0 for a single run)."""
    per_seed = [v for run in row.runs if (v := values.spec_value(RowKey((run,), row.meta), spec)) is not None]
    interval = seed_interval(per_seed)
    return 0.0 if interval is None else interval[1]


def figure3_caption(fig: Figure) -> str:
    """Figure 3's caption: says what the dashed lines and error bars are only when they are drawn."""
    parts = ["One line per model size and method."]
    refs = getattr(fig, "references", [])
    if refs:
        parts.append(f"Dashed: {' / '.join(refs)}, the model the methods started from.")
    if getattr(fig, "has_error_bars", False):
        parts.append("Points: mean over seeds; bars: 95% t-interval over seeds.")
    return " ".join(parts)


def figure_rejected(frame: pd.DataFrame, specs: Sequence[MetricSpec] = TABLE1_SPECS) -> Figure | None:
    """Figure 4: metrics per rejected-image strategy; None when no configuration used two strategies."""
    frame = frame[frame["source"] != "paper"]
    rows = [r for r in group_rows(run_meta(frame)) if r.get("rejected_image") is not None]
    values = Values(frame)
    series: dict[tuple, list[RowKey]] = {}
    for r in rows:
        series.setdefault(
            (r.get("model_size"), r.get("method"), r.get("data_size"), setting(r, "beta"), setting(r, "epochs")), []
        ).append(r)
    series = {k: v for k, v in series.items() if len({r.get("rejected_image") for r in v}) > 1}
    if not series:
        return None
    used = {r.get("rejected_image") for rs in series.values() for r in rs}
    strategies = [s for s in STRATEGIES if s in used] + sorted(s for s in used if s not in STRATEGIES)
    panels = [s for s in specs if any(values.spec_value(r, s) is not None for rs in series.values() for r in rs)]
    panels = panels[:MAX_PANELS]
    if not panels:
        return None
    fig, axes = _new_figure(len(panels))
    width = 0.8 / len(series)
    for ax, spec in zip(axes, panels):
        for i, rs in enumerate(series.values()):
            by_strategy = {r.get("rejected_image"): values.spec_value(r, spec) for r in rs}
            xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(strategies))]
            ys = [by_strategy.get(s) for s in strategies]
            label = _line_label(rs[0])
            if rs[0].get("data_size") is not None:
                label += f" · {format_size(rs[0].get('data_size'))}"
            ax.bar(
                [x for x, y in zip(xs, ys) if y is not None], [y for y in ys if y is not None], width=width, label=label
            )
        ax.set_xticks(range(len(strategies)), [mpl_text(s) for s in strategies])
        arrow = "\u2193" if spec.better == DOWN else "\u2191"
        ax.set_title(mpl_text(f"{spec.group} {spec.label} {arrow}"))
        ax.grid(True, axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="outside lower center", ncols=min(4, max(1, len(labels))), fontsize=8, frameon=False
    )
    return fig


def save_figure(fig: Figure, out_dir: Path, fid: str, title: str, caption: str) -> FigureFiles:
    """Write ``out_dir/fid.svg`` and ``.png`` (deterministic) and return them with data URIs for the HTML."""
    out_dir.mkdir(parents=True, exist_ok=True)
    svg_path, png_path = out_dir / f"{fid}.svg", out_dir / f"{fid}.png"
    with rc_context(_RC):
        fig.savefig(svg_path, format="svg", metadata={"Date": None})
        fig.savefig(png_path, format="png", dpi=150, metadata={"Software": None})
    png = base64.b64encode(png_path.read_bytes()).decode("ascii")
    svg = base64.b64encode(svg_path.read_bytes()).decode("ascii")
    return FigureFiles(
        fid, title, caption, svg_path, png_path, f"data:image/png;base64,{png}", f"data:image/svg+xml;base64,{svg}"
    )


def all_figures(frame: pd.DataFrame, out_dir: Path) -> list[FigureFiles]:
    """Figures 3 and 4 where the runs support them, saved under ``out_dir``."""
    out = []
    with rc_context(_RC):
        fig3 = figure_data_size(frame)
        fig4 = figure_rejected(frame)
    if fig3 is not None:
        out.append(
            save_figure(fig3, out_dir, "figure3", "Figure 3: metrics vs preference data size", figure3_caption(fig3))
        )
    if fig4 is not None:
        out.append(
            save_figure(
                fig4,
                out_dir,
                "figure4",
                "Figure 4: rejected-image strategies",
                "Metrics of models trained with each rejected-image strategy.",
            )
        )
    return out
