"""Stacked bar charts drawn on the server as SVG: no chart library, no script, no CDN.

A chart is a list of days, each split into named series (models or keys). The SVG carries
only geometry and class names (``s0``…``s7`` colour a series, from ``tools.css``), so the
page's CSP needs no inline style; labels arrive already formatted for the page's locale.
Each chart's numbers are also rendered as a table beside it (``usage/index.html``), for
screen readers and for copying.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from functools import cached_property
from html import escape

#: Series beyond this many are summed as one "other" series.
MAX_SERIES = 7
WIDTH, HEIGHT = 720, 240
LEFT, RIGHT, TOP, BOTTOM = 96, 8, 14, 34


@dataclass(frozen=True)
class Series:
    key: str
    label: str
    #: One value per day of the chart.
    values: tuple[int, ...]
    #: Colour class (``s0``… ``s7``).
    css: str

    @cached_property
    def total(self) -> int:
        return sum(self.values)


@dataclass(frozen=True)
class Chart:
    days: tuple[date, ...]
    series: tuple[Series, ...]

    @cached_property  # the template reads it once per table cell
    def totals(self) -> tuple[int, ...]:
        return tuple(
            sum(column) for column in zip(*(s.values for s in self.series), strict=True)
        ) or ((0,) * len(self.days))

    @property
    def empty(self) -> bool:
        return not any(self.totals)


def build(
    days: Sequence[date],
    values: dict[str, dict[date, int]],
    labels: dict[str, str],
    other_label: str,
) -> Chart:
    """Series per group (most first), the smallest folded into "other" past ``MAX_SERIES``."""
    ranked = sorted(values, key=lambda g: (-sum(values[g].values()), labels.get(g, g)))
    ranked = [g for g in ranked if sum(values[g].values()) > 0]
    keep, rest = ranked[:MAX_SERIES], ranked[MAX_SERIES:]
    if rest:
        keep = ranked[: MAX_SERIES - 1]
        rest = ranked[MAX_SERIES - 1 :]
    series = [
        Series(g, labels.get(g, g), tuple(values[g].get(d, 0) for d in days), f"s{i}")
        for i, g in enumerate(keep)
    ]
    if rest:
        folded = tuple(sum(values[g].get(d, 0) for g in rest) for d in days)
        series.append(Series("", other_label, folded, f"s{MAX_SERIES}"))
    return Chart(tuple(days), tuple(series))


def nice_ceiling(value: int) -> int:
    """The top of the axis: four equal whole steps, each 1, 2, 2.5 or 5 times a power of
    ten, together at or above ``value``."""
    if value <= 0:
        return 4
    power = 10 ** max(0, math.floor(math.log10(value / 4)))
    for step in (1, 2, 2.5, 5, 10):
        size = step * power
        if size == int(size) and size * 4 >= value:
            return int(size * 4)
    return int(40 * power)  # pragma: no cover


def svg(
    chart: Chart,
    *,
    title: str,
    value_label: Callable[[int], str],
    day_label: Callable[[date], str],
    chart_id: str,
    tip_label: Callable[[int], str] | None = None,
) -> str:
    """The chart as an ``<svg>`` element: gridlines, y labels, stacked bars, a few day labels.
    Every bar has a ``<title>`` (the day, its total) for pointer users."""
    n = max(1, len(chart.days))
    top = nice_ceiling(max(chart.totals, default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / n
    bar = max(1.0, slot * 0.72)
    out = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="{chart_id}-title" preserveAspectRatio="xMidYMid meet">',
        f'<title id="{chart_id}-title">{escape(title)}</title>',
    ]
    for i in range(5):
        y = TOP + plot_h - plot_h * i / 4
        out.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
        )
        if i % 2 == 0:  # three labels (0, half, top): short enough for a phone's width
            out.append(
                f'<text class="axis" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
                f"{escape(value_label(round(top * i / 4)))}</text>"
            )
    totals = chart.totals
    for index, day in enumerate(chart.days):
        x = LEFT + slot * index + (slot - bar) / 2
        base = TOP + plot_h
        tip = f"{day_label(day)}: {(tip_label or value_label)(totals[index])}"
        out.append(f"<g><title>{escape(tip)}</title>")
        for series in chart.series:
            value = series.values[index]
            if value <= 0:
                continue
            h = plot_h * value / top
            base -= h
            out.append(
                f'<rect class="{series.css}" x="{x:.1f}" y="{base:.1f}" '
                f'width="{bar:.1f}" height="{max(h, 0.5):.1f}"/>'
            )
        out.append("</g>")
    for index in label_positions(n):
        x, anchor = LEFT + slot * index + slot / 2, "middle"
        if index == n - 1 and n > 1:
            x, anchor = WIDTH - RIGHT, "end"  # the last day's label stays inside the chart
        out.append(
            f'<text class="axis" x="{x:.1f}" y="{HEIGHT - 8}" text-anchor="{anchor}">'
            f"{escape(day_label(chart.days[index]))}</text>"
        )
    out.append("</svg>")
    return "".join(out)


def label_positions(n: int, most: int = 5) -> list[int]:
    """Which days get a label under the axis: at most ``most``, evenly spaced, ends included."""
    if n <= most:
        return list(range(n))
    step = (n - 1) / (most - 1)
    return sorted({round(step * i) for i in range(most)})
