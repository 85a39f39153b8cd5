"""Line charts drawn as inline SVG from a job's progress history.

Rendering on the server keeps the curves visible without JavaScript; the job page's
script only re-fetches this fragment while the job runs, so there is one drawing
implementation, not a Python one and a JavaScript one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

WIDTH, HEIGHT = 640, 220
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 64, 12, 12, 28
COLORS = ("#5b4bdb", "#e0542b", "#1f9d6b", "#c7921a", "#2b7de0", "#a63fa6")
LOG_RATIO = 50.0  # a series spanning more than this factor is drawn on a log scale


@dataclass(frozen=True)
class Chart:
    title: str
    series: dict[str, list[tuple[float, float]]]
    log: bool

    def __bool__(self) -> bool:
        return any(len(points) >= 1 for points in self.series.values())


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def pick_series(
    history: list[dict[str, Any]], *, contains: str, x: str = "step"
) -> dict[str, list[tuple[float, float]]]:
    """Every numeric key whose name contains ``contains``, as (x, y) points in order."""
    series: dict[str, list[tuple[float, float]]] = {}
    for point in history:
        x_value = _number(point.get(x))
        if x_value is None:
            continue
        for key, value in point.items():
            y = _number(value)
            if key != x and contains in key and y is not None:
                series.setdefault(key, []).append((x_value, y))
    return series


def make_chart(title: str, series: dict[str, list[tuple[float, float]]]) -> Chart:
    values = [y for points in series.values() for _, y in points]
    positive = values and min(values) > 0
    log = bool(positive and max(values) / min(values) > LOG_RATIO)
    return Chart(title, series, log)


def charts_for(kind: str, history: list[dict[str, Any]]) -> list[Chart]:
    """The curves worth drawing for a job of ``kind``: loss always, accuracy when recorded."""
    charts = [make_chart("loss", pick_series(history, contains="loss"))]
    if kind != "style_transfer":
        charts.append(make_chart("accuracy", pick_series(history, contains="acc")))
    return [chart for chart in charts if chart]


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-2:
        return f"{value:.2e}"
    return f"{value:.3g}"


def to_svg(chart: Chart) -> str:
    """One chart as a self-contained ``<svg>`` element (axes, min/max labels, legend)."""
    ys = [y for points in chart.series.values() for _, y in points]
    xs = [x for points in chart.series.values() for x, _ in points]
    scale = math.log10 if chart.log else (lambda v: v)
    y_lo, y_hi = scale(min(ys)), scale(max(ys))
    x_lo, x_hi = min(xs), max(xs)
    y_span = (y_hi - y_lo) or 1.0
    x_span = (x_hi - x_lo) or 1.0
    inner_w = WIDTH - PAD_LEFT - PAD_RIGHT
    inner_h = HEIGHT - PAD_TOP - PAD_BOTTOM

    def px(x: float, y: float) -> str:
        sx = PAD_LEFT + (x - x_lo) / x_span * inner_w
        sy = PAD_TOP + (1 - (scale(y) - y_lo) / y_span) * inner_h
        return f"{sx:.1f},{sy:.1f}"

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{chart.title} curve" data-chart="{chart.title}">',
        f'<rect x="{PAD_LEFT}" y="{PAD_TOP}" width="{inner_w}" height="{inner_h}" class="plot"/>',
        f'<text x="{PAD_LEFT - 6}" y="{PAD_TOP + 10}" text-anchor="end">{_fmt(max(ys))}</text>',
        f'<text x="{PAD_LEFT - 6}" y="{PAD_TOP + inner_h}" text-anchor="end">'
        f"{_fmt(min(ys))}</text>",
        f'<text x="{PAD_LEFT}" y="{HEIGHT - 8}">step {_fmt(x_lo)}</text>',
        f'<text x="{WIDTH - PAD_RIGHT}" y="{HEIGHT - 8}" text-anchor="end">'
        f"step {_fmt(x_hi)}</text>",
    ]
    legend_x = PAD_LEFT + 8
    for index, (name, points) in enumerate(sorted(chart.series.items())):
        color = COLORS[index % len(COLORS)]
        coords = " ".join(px(x, y) for x, y in points)
        if len(points) == 1:
            x, y = px(*points[0]).split(",")
            parts.append(f'<circle cx="{x}" cy="{y}" r="3" fill="{color}"/>')
        else:
            parts.append(
                f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{coords}"/>'
            )
        parts.append(
            f'<text x="{legend_x}" y="{PAD_TOP + 16}" fill="{color}" class="legend">'
            f"{name} {_fmt(points[-1][1])}</text>"
        )
        legend_x += 8 * (len(name) + len(_fmt(points[-1][1]))) + 24
    if chart.log:
        parts.append(
            f'<text x="{WIDTH - PAD_RIGHT - 4}" y="{PAD_TOP + 14}" '
            'text-anchor="end" class="muted">log scale</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
