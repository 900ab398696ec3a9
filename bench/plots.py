"""SVG plots of a ``make bench`` run, drawn from its JSON (``bench.results``): no plotting library.

    uv run python -m bench.plots [--results bench/results/latest.json] [--out bench/results]

Draws, for whatever sections the run holds (a section that is missing is skipped, with a line saying so):

* ``latency.svg``: image sends, open loop: p50, p90 and p99 per send rate, per stack;
* ``ratios.svg``: our hot routes against the bare Litestar route of the same shape (target: 50%);
* ``layers.svg``: CPU µs per request by layer, per route and stack (``bench.layers``);
* ``socket_memory.svg``: memory per idle socket against the number of sockets (target: 20 KiB);
* ``firestore.svg``: the Firestore load model's write rates as a share of each published limit.

The docs show committed copies (``docs/img/bench/``: ``--out docs/img/bench`` after a run worth keeping).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from bench import results

__all__ = ["bar_chart", "draw_all", "line_chart", "stacked_bars"]

WIDTH, HEIGHT = 720, 400
LEFT, RIGHT, TOP, BOTTOM = 70, 190, 50, 60
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39")  # fmt: skip
FONT = 'font-family="DejaVu Sans, Helvetica, Arial, sans-serif"'


def _svg(title: str, body: list[str], *, height: int = HEIGHT, width: int = WIDTH, subtitle: str = "") -> str:
    head = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" {FONT} font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="15" '
        f'font-weight="bold">{escape(title)}</text>',
    ]
    if subtitle:
        head.append(
            f'<text x="{width / 2}" y="39" text-anchor="middle" fill="#555">{escape(subtitle)}</text>'
        )
    return "\n".join([*head, *body, "</svg>"]) + "\n"


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = float(10 ** math.floor(math.log10(value)))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def _ticks(top: float, count: int = 5) -> list[float]:
    return [top * i / count for i in range(count + 1)]


def _fmt(value: float) -> str:
    if value >= 100 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _legend(names: Sequence[str], colors: Sequence[str], *, x: float, y: float) -> list[str]:
    out = []
    for i, (name, color) in enumerate(zip(names, colors, strict=False)):
        yy = y + i * 18
        out.append(f'<rect x="{x}" y="{yy - 9}" width="12" height="12" fill="{color}"/>')
        out.append(f'<text x="{x + 18}" y="{yy + 1}">{escape(name)}</text>')
    return out


def _axes(x_label: str, y_label: str, y_top: float, *, y_unit: str = "", log: bool = False) -> list[str]:
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    out = [
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" y2="{TOP + plot_h}" stroke="#333"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" stroke="#333"/>',
        f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 15}" text-anchor="middle">{escape(x_label)}</text>',
        f'<text x="18" y="{TOP + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 18 {TOP + plot_h / 2})">{escape(y_label)}</text>',
    ]
    values = [10**e for e in range(int(math.log10(y_top)) + 1)] if log else _ticks(y_top)
    for value in values:
        y = _y(value, y_top, log=log)
        out.append(f'<line x1="{LEFT - 4}" y1="{y}" x2="{LEFT + plot_w}" y2="{y}" stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 7}" y="{y + 4}" text-anchor="end">{_fmt(value)}{y_unit}</text>')
    return out


def _y(value: float, top: float, *, log: bool = False) -> float:
    plot_h = HEIGHT - TOP - BOTTOM
    share = math.log10(max(value, 1.0)) / math.log10(top) if log else value / top
    return TOP + plot_h * (1 - min(1.0, share))


def line_chart(
    title: str,
    series: dict[str, list[tuple[float, float]]],
    *,
    x_label: str,
    y_label: str,
    target: float | None = None,
    target_label: str = "",
    log_y: bool = False,
    subtitle: str = "",
) -> str:
    """Lines with points; ``target`` draws a dashed horizontal line."""
    points = [p for line in series.values() for p in line]
    x_top = _nice_max(max((x for x, _ in points), default=1.0))
    y_values = [y for _, y in points] + ([target] if target else [])
    y_top = (
        10 ** math.ceil(math.log10(max(y_values, default=10)))
        if log_y
        else _nice_max(max(y_values, default=1))
    )
    plot_w = WIDTH - LEFT - RIGHT
    body = _axes(x_label, y_label, y_top, log=log_y)
    for value in _ticks(x_top):
        x = LEFT + plot_w * value / x_top
        body.append(f'<text x="{x}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">{_fmt(value)}</text>')
    if target is not None:
        y = _y(target, y_top, log=log_y)
        body.append(
            f'<line x1="{LEFT}" y1="{y}" x2="{LEFT + plot_w}" y2="{y}" stroke="#c00" stroke-dasharray="6 4"/>'
        )
        body.append(
            f'<text x="{LEFT + plot_w - 4}" y="{y - 5}" text-anchor="end" '
            f'fill="#c00">{escape(target_label)}</text>'
        )
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(series))]
    for color, line in zip(colors, series.values(), strict=True):
        coords = [(LEFT + plot_w * x / x_top, _y(y, y_top, log=log_y)) for x, y in sorted(line)]
        if len(coords) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
            body.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        body += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{color}"/>' for x, y in coords]
    body += _legend(list(series), colors, x=WIDTH - RIGHT + 15, y=TOP + 10)
    return _svg(title, body, subtitle=subtitle)


def bar_chart(
    title: str,
    bars: list[tuple[str, float]],
    *,
    y_label: str,
    target: float | None = None,
    target_label: str = "",
    percent: bool = False,
    subtitle: str = "",
    colors: Sequence[str] = (),
) -> str:
    """Vertical bars with their value on top; ``target`` draws a dashed line across."""
    top = _nice_max(max([value for _, value in bars] + ([target] if target else []) + [1e-9]))
    if percent:
        top = max(top, 1.0)
    plot_w, plot_h = WIDTH - LEFT - 30, HEIGHT - TOP - BOTTOM - 40
    body = [
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" y2="{TOP + plot_h}" stroke="#333"/>',
        f'<text x="18" y="{TOP + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 18 {TOP + plot_h / 2})">{escape(y_label)}</text>',
    ]

    def y_of(value: float) -> float:
        return TOP + plot_h * (1 - min(1.0, value / top))

    for value in _ticks(top):
        label = f"{value:.0%}" if percent else _fmt(value)
        body.append(
            f'<line x1="{LEFT - 4}" y1="{y_of(value)}" x2="{LEFT + plot_w}" '
            f'y2="{y_of(value)}" stroke="#ddd"/>'
        )
        body.append(f'<text x="{LEFT - 7}" y="{y_of(value) + 4}" text-anchor="end">{label}</text>')
    slot = plot_w / max(1, len(bars))
    for i, (label, value) in enumerate(bars):
        color = colors[i] if i < len(colors) else PALETTE[0]
        x = LEFT + slot * i + slot * 0.15
        body.append(
            f'<rect x="{x:.1f}" y="{y_of(value):.1f}" width="{slot * 0.7:.1f}" '
            f'height="{TOP + plot_h - y_of(value):.1f}" fill="{color}"/>'
        )
        text = f"{value:.0%}" if percent else _fmt(value)
        body.append(
            f'<text x="{x + slot * 0.35:.1f}" y="{y_of(value) - 4:.1f}" text-anchor="middle">{text}</text>'
        )
        for j, part in enumerate(label.split("\n")):
            body.append(
                f'<text x="{x + slot * 0.35:.1f}" y="{TOP + plot_h + 16 + 14 * j}" text-anchor="middle" '
                f'font-size="11">{escape(part)}</text>'
            )
    if target is not None:
        y = y_of(target)
        body.append(
            f'<line x1="{LEFT}" y1="{y}" x2="{LEFT + plot_w}" y2="{y}" stroke="#c00" stroke-dasharray="6 4"/>'
        )
        body.append(
            f'<text x="{LEFT + plot_w - 4}" y="{y - 5}" text-anchor="end" '
            f'fill="#c00">{escape(target_label)}</text>'
        )
    return _svg(title, body, subtitle=subtitle)


def stacked_bars(
    title: str, bars: list[tuple[str, dict[str, float]]], *, x_label: str, subtitle: str = ""
) -> str:
    """Horizontal stacked bars (one per label), parts in a shared legend: where each bar's total goes."""
    parts = list(dict.fromkeys(part for _, values in bars for part in values))
    colors = {part: PALETTE[i % len(PALETTE)] for i, part in enumerate(parts)}
    top = _nice_max(max((sum(values.values()) for _, values in bars), default=1.0))
    width, left, right = 980, 190, 320
    row_h = 34
    height = TOP + 30 + row_h * len(bars) + 40
    plot_w = width - left - right
    body = []
    for value in _ticks(top):
        x = left + plot_w * value / top
        body.append(f'<line x1="{x}" y1="{TOP}" x2="{x}" y2="{TOP + row_h * len(bars)}" stroke="#ddd"/>')
        body.append(
            f'<text x="{x}" y="{TOP + row_h * len(bars) + 16}" text-anchor="middle">{_fmt(value)}</text>'
        )
    body.append(
        f'<text x="{left + plot_w / 2}" y="{TOP + row_h * len(bars) + 34}" '
        f'text-anchor="middle">{escape(x_label)}</text>'
    )
    for i, (label, values) in enumerate(bars):
        y = TOP + row_h * i + 5
        body.append(f'<text x="{left - 8}" y="{y + 16}" text-anchor="end">{escape(label)}</text>')
        x = float(left)
        for part, value in values.items():
            bar_w = plot_w * max(0.0, value) / top
            body.append(
                f'<rect x="{x:.1f}" y="{y}" width="{bar_w:.1f}" height="{row_h - 10}" fill="{colors[part]}">'
                f"<title>{escape(part)}: {value:.1f}</title></rect>"
            )
            x += bar_w
        body.append(f'<text x="{x + 4:.1f}" y="{y + 16}">{sum(values.values()):,.0f}</text>')
    body += _legend(parts, list(colors.values()), x=width - right + 20, y=TOP + 5)
    return _svg(title, body, height=max(height, TOP + 20 + 18 * len(parts)), width=width, subtitle=subtitle)


# --- the run's plots ------------------------------------------------------------------------------
def _latency(data: dict[str, Any]) -> str | None:
    sends = [row for row in results.rows("http", data) if str(row["row"]).startswith("image send")]
    if not sends:
        return None
    series: dict[str, list[tuple[float, float]]] = {}
    for row in sends:
        rate = float(str(row["row"]).split("@")[1].split("/")[0])
        for p in ("p50", "p90", "p99"):
            series.setdefault(f"{row['stack']} {p}", []).append((rate, float(row[f"{p}_ms"])))
    return line_chart(
        "Image sends, open loop: latency per rate",
        series,
        x_label="sends per second (scheduled)",
        y_label="ms from the scheduled start (log)",
        log_y=True,
        subtitle="each send a fresh upload; latency counts queueing (no coordinated omission)",
    )


def _ratios(data: dict[str, Any]) -> str | None:
    ours = [
        row
        for row in results.rows("http", data)
        if row.get("shape") and not str(row["row"]).startswith("bare")
    ]
    if not ours:
        return None
    bars = [(f"{row['stack']}\n{row['shape']}", float(row["ratio"])) for row in ours]
    colors = [PALETTE[0] if "upload" in str(row["shape"]) else PALETTE[1] for row in ours]
    return bar_chart(
        "Hot routes against a bare Litestar route of the same shape",
        bars,
        y_label="req/s, ours / bare same shape",
        target=0.5,
        target_label="target 50%",
        percent=True,
        colors=colors,
        subtitle="wrk -t1 -c32, same run, same server settings",
    )


def _layers(data: dict[str, Any]) -> str | None:
    rows = results.rows("layers", data)
    if not rows:
        return None
    skip = {"our layers, sum", "whole route (in-process)"}
    bars: list[tuple[str, dict[str, float]]] = []
    for stack in dict.fromkeys(row["stack"] for row in rows):
        for route in ("POST upload_url", "proxy 302"):
            parts = {
                str(row["layer"]): float(row["cpu_us"])
                for row in rows
                if row["stack"] == stack
                and row["route"] == route
                and row["layer"] not in skip
                and not str(row["layer"]).startswith("in the route")
            }
            if parts:
                bars.append((f"{stack} {route}", parts))
    return stacked_bars(
        "CPU µs per request, by layer",
        bars,
        x_label="CPU µs per request (in-process, each layer timed alone)",
        subtitle="bench.layers; the bare route of the same shape is the framework's floor",
    )


def _socket_memory(data: dict[str, Any]) -> str | None:
    rows = results.rows("socket_memory", data)
    if not rows:
        return None
    series: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        series.setdefault(str(row["process"]), []).append(
            (float(row["sockets"]), float(row["kib_per_socket"]))
        )
    return line_chart(
        "Memory per idle socket against open sockets",
        series,
        x_label="sockets open",
        y_label="KiB per socket (RSS growth / sockets)",
        target=20.0,
        target_label="target 20 KiB",
    )


def _firestore(data: dict[str, Any]) -> str | None:
    rows = [row for row in results.rows("firestore_model", data) if row.get("limit")]
    if not rows:
        return None
    rate = rows[0].get("rate", 3300)
    bars = [(_short(str(row["what"])), float(row["per_second"]) / float(row["limit"])) for row in rows]
    colors = [PALETTE[2] if share <= 1 else PALETTE[3] for _, share in bars]
    return bar_chart(
        f"Firestore at {float(rate):,.0f} messages/s: share of each published limit",
        bars,
        y_label="writes/s / limit",
        target=1.0,
        target_label="the limit",
        percent=True,
        colors=colors,
        subtitle="counted on the emulator from the code's real writes (bench.firestore_model)",
    )


def _short(what: str) -> str:
    head = (
        what.split(":")[0]
        .replace("`", "")
        .replace("index ", "")
        .replace("document", "a busy conversation's document")
    )
    words, lines, line = head.split(), [], ""
    for word in words:
        if len(line) + len(word) > 22 and line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    return "\n".join(lines[:3])


PLOTS = {
    "latency.svg": _latency,
    "ratios.svg": _ratios,
    "layers.svg": _layers,
    "socket_memory.svg": _socket_memory,
    "firestore.svg": _firestore,
}


def draw_all(data: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in PLOTS.items():
        svg = draw(data)
        if svg is None:
            print(f"plots: no data for {name} in this run: skipped")
            continue
        (out / name).write_text(svg)
        written.append(out / name)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--results", type=Path, default=None, help="a results JSON (default: the current run's)"
    )
    parser.add_argument("--out", type=Path, default=results.DEFAULT.parent)
    args = parser.parse_args()
    data = json.loads(args.results.read_text()) if args.results else results.load()
    for path in draw_all(data, args.out):
        print(f"plot: {path}")


if __name__ == "__main__":
    main()
