"""Shared output of the bench scripts: percentiles, the JSON file, a summary
table on stdout and a PNG chart (matplotlib, when installed: the ``bench``
extra)."""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile; None for no values; inf propagates (a failed join)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def finite(value: float | None, digits: int = 2) -> float | None:
    """A JSON-safe number: None for missing or infinite."""
    if value is None or math.isinf(value) or math.isnan(value):
        return None
    return round(value, digits)


def run_script(
    name: str, args: Any, run: Callable[[Any], Awaitable[dict[str, Any]]]
) -> tuple[dict[str, Any], str]:
    """Run a script's coroutine on uvloop, write its JSON to ``args.out``;
    returns the result and the chart's path (``--chart`` or ``--out`` as .png)."""
    import uvloop

    from .user_tokens import TokensUnavailable

    try:
        result = uvloop.run(run(args))
    except TokensUnavailable as exc:
        raise SystemExit(f"bench.{name}: {exc}") from None
    write_json(args.out, result)
    return result, args.chart or args.out.rsplit(".", 1)[0] + ".png"


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """``columns`` is [(key, heading)]; numbers right-aligned, None as '-'."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.2f}" if abs(value) < 1000 else f"{value:.0f}"
        return str(value)

    cells = [[cell(row.get(key)) for key, _ in columns] for row in rows]
    widths = [
        max([len(heading)] + [len(r[i]) for r in cells]) for i, (_, heading) in enumerate(columns)
    ]
    lines = ["  ".join(h.rjust(w) for (_, h), w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for r in cells:
        lines.append("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
    return "\n".join(lines)


def _pyplot() -> Any | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def chart_fanout(path: str | Path, steps: list[dict[str, Any]],
                 reference: list[dict[str, Any]] | None = None, title: str = "") -> bool:
    """Server CPU and loss against viewers; join-time percentiles. False when
    matplotlib is missing."""
    plt = _pyplot()
    if plt is None or not steps:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    viewers = [s["viewers"] for s in steps]
    left.plot(viewers, [s["server_cpu_pct"] or 0 for s in steps], "o-", label="airwave CPU %")
    if reference:
        left.plot([s["viewers"] for s in reference], [s["server_cpu_pct"] or 0 for s in reference],
                  "s--", color="tab:red", label="naive relay CPU %")
    left.set_xlabel("viewers")
    left.set_ylabel("server CPU (% of one core)")
    loss_axis = left.twinx()
    loss_axis.plot(viewers, [s["loss_pct"] or 0 for s in steps], "^:", color="tab:orange",
                   label="loss %")
    loss_axis.set_ylabel("loss (%)")
    lines = left.get_legend_handles_labels()
    more = loss_axis.get_legend_handles_labels()
    left.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left")
    left.set_title("CPU and loss")
    for key, label in (("join_p50_ms", "keyframe p50"), ("join_p95_ms", "keyframe p95"),
                       ("first_packet_p95_ms", "first packet p95")):
        right.plot(viewers, [s.get(key) for s in steps], "o-", label=label)
    right.set_xlabel("viewers")
    right.set_ylabel("ms from POST")
    right.set_title("join time")
    right.legend(loc="upper left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def chart_latency(path: str | Path, series: dict[str, list[tuple[float, float]]],
                  xlabel: str, ylabel: str, title: str) -> bool:
    """One line per series of (x, y) points."""
    plt = _pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in series.items():
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if any(series.values()):
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def chart_bars(path: str | Path, values: dict[str, float], ylabel: str, title: str) -> bool:
    plt = _pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.bar(list(values), [v or 0 for v in values.values()])
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
