"""Server-drawn charts: series ranked and folded, whole-step axes, SVG with no style."""

from __future__ import annotations

from datetime import date, timedelta
from xml.etree import ElementTree

from keyhouse.web import charts

DAYS = [date(2026, 3, 1) + timedelta(days=n) for n in range(10)]


def test_series_are_ranked_and_the_smallest_folded_into_other() -> None:
    values = {f"m{n}": {DAYS[0]: n + 1, DAYS[3]: 1} for n in range(10)}
    values["idle"] = {DAYS[0]: 0}
    chart = charts.build(DAYS, values, {"m9": "Model nine"}, "Other")
    labels = [s.label for s in chart.series]
    assert labels[0] == "Model nine" and labels[-1] == "Other"
    assert len(chart.series) == charts.MAX_SERIES and "idle" not in labels
    assert [s.css for s in chart.series] == [f"s{i}" for i in range(6)] + ["s7"]
    assert sum(chart.totals) == sum(sum(v.values()) for v in values.values())
    assert not chart.empty and charts.build(DAYS, {}, {}, "Other").empty


def test_axis_tops_are_four_whole_steps() -> None:
    for value in (0, 1, 3, 7, 12, 88, 101, 23_000, 2_000_000):
        top = charts.nice_ceiling(value)
        assert top >= value and top % 4 == 0
        assert top <= max(4, value * 2.5)


def test_svg_is_well_formed_labelled_and_has_no_style() -> None:
    chart = charts.build(DAYS, {"<b>": {DAYS[2]: 5}, "m": {DAYS[2]: 3, DAYS[9]: 1}}, {}, "x")
    text = charts.svg(
        chart,
        title="Cost & more",
        value_label=str,
        day_label=lambda d: d.isoformat(),
        chart_id="c",
    )
    root = ElementTree.fromstring(text)
    ns = "{http://www.w3.org/2000/svg}"
    assert root.get("role") == "img" and root.get("aria-labelledby") == "c-title"
    assert "style" not in text
    rects = root.findall(f".//{ns}rect") or root.findall(".//rect")
    assert len(rects) == 3 and {r.get("class") for r in rects} == {"s0", "s1"}
    tips = [t.text for t in root.iter() if t.tag.endswith("title")]
    assert "Cost & more" in tips and "2026-03-03: 8" in tips
    assert charts.label_positions(30) == [0, 7, 14, 22, 29]
    assert charts.label_positions(3) == [0, 1, 2]
