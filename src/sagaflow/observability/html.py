"""A self-contained HTML page for one flow: summary, sequence diagram, tree, timeline.

No script, no web font, no CDN: the sequence diagram is inline SVG drawn here,
the style is inline CSS, so the page opens offline and can be attached to a
ticket. Everything shown is escaped.
"""

from __future__ import annotations

from html import escape

from sagaflow.observability.trace import FlowTrace, SequenceItem, render_text

__all__ = ["render_html", "sequence_svg"]

_LANE = 170
_ROW = 34
_TOP = 56
_MARGIN = 64  # room for the time labels left of the first lane
_MAX_TEXT = 46
_CHAR = 6.6  # average glyph width at 11-12 px, to size note boxes

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:24px 0 8px}
.sub{color:#666} pre{background:#f6f8fa;padding:12px;overflow-x:auto;font-size:12.5px}
.diagram{overflow-x:auto;border:1px solid #ddd;background:#fff}
table{border-collapse:collapse;font-size:12.5px} td,th{padding:3px 8px;border-bottom:1px solid #eee;
text-align:left;white-space:nowrap} tr.bad td{background:#fdecee}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;background:#e2e3e5}
.completed{background:#d4edda}.compensated{background:#fff3cd}.failed{background:#f8d7da}
"""


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"


def sequence_svg(trace: FlowTrace) -> str:
    """Draw `FlowTrace.sequence` as an SVG sequence diagram (lanes and arrows)."""
    actors = trace.actors()
    items = trace.sequence()
    x = {name: _MARGIN + _LANE // 2 + index * _LANE for index, name in enumerate(actors)}
    width = _MARGIN + max(len(actors), 1) * _LANE + _LANE // 2
    height = _TOP + (len(items) + 1) * _ROW
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="system-ui,sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="#fff"/>',
        "<defs>"
        '<marker id="ok" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto"><path d="M0,0L10,5L0,10z" fill="#333"/></marker>'
        '<marker id="bad" viewBox="0 0 10 10" refX="5" refY="5" markerWidth="9" '
        'markerHeight="9"><path d="M0,0L10,10M10,0L0,10" stroke="#c00" stroke-width="2"/>'
        "</marker></defs>",
    ]
    for name, cx in x.items():
        parts.append(
            f'<rect x="{cx - 75}" y="8" width="150" height="28" rx="4" fill="#eef2f7" '
            f'stroke="#8a99ad"/><text x="{cx}" y="27" text-anchor="middle" font-weight="600">'
            f"{escape(_clip(name))}</text>"
            f'<line x1="{cx}" y1="36" x2="{cx}" y2="{height - 8}" stroke="#bbb" '
            'stroke-dasharray="4 3"/>'
        )
    for row, item in enumerate(items):
        parts.append(_svg_item(item, x, _TOP + row * _ROW + 14, trace.start))
    parts.append("</svg>")
    return "".join(parts)


def _svg_item(item: SequenceItem, x: dict[str, int], y: int, start: float) -> str:
    color = "#c00" if item.failed else "#333"
    offset = (item.at - start) * 1000
    when = f'<text x="4" y="{y + 4}" fill="#999" font-size="10">+{offset:.0f}ms</text>'
    text = escape(_clip(item.text))
    sx = x[item.source]
    if item.target is None:
        fill = "#fdecee" if item.failed else "#fffbe6"
        half = int(min(max(len(_clip(item.text)) * _CHAR + 16, 90), 2 * _LANE - 20) / 2)
        left = max(sx - half, _MARGIN)  # keep wide notes clear of the time labels
        return (
            f'{when}<rect x="{left}" y="{y - 11}" width="{2 * half}" height="20" rx="3" '
            f'fill="{fill}" stroke="{color}" stroke-width="0.6"/><text x="{left + half}" '
            f'y="{y + 3}" text-anchor="middle" fill="{color}" font-size="11">{text}</text>'
        )
    tx = x[item.target]
    marker = "bad" if item.failed else "ok"
    if tx == sx:  # a group handling its own event: a small loop
        path = f"M{sx},{y - 4} h30 v12 h-30"
        return (
            f'{when}<path d="{path}" fill="none" stroke="{color}" marker-end="url(#{marker})"/>'
            f'<text x="{sx + 36}" y="{y + 4}" fill="{color}">{text}</text>'
        )
    mid = (sx + tx) // 2
    dash = ' stroke-dasharray="5 3"' if item.dashed else ""
    return (
        f'{when}<line x1="{sx}" y1="{y + 6}" x2="{tx}" y2="{y + 6}" stroke="{color}"{dash} '
        f'marker-end="url(#{marker})"/><text x="{mid}" y="{y}" text-anchor="middle" '
        f'fill="{color}">{text}</text>'
    )


def render_html(trace: FlowTrace) -> str:
    """Render one flow as a standalone HTML page (inline CSS and SVG, no scripts)."""
    outcome = trace.outcome()
    badge = (
        f' <span class="badge {escape(outcome)}">saga {escape(outcome.upper())}</span>'
        if outcome
        else ""
    )
    rows = []
    for entry in trace.entries:
        cells = [
            f"+{(entry.at - trace.start) * 1000:.1f} ms",
            entry.service,
            entry.kind.value,
            entry.event_type or entry.step or entry.detail or "",
            entry.group or "",
            str(entry.attempt or ""),
            entry.outcome or "",
            f"{entry.error_type}: {entry.error_message}" if entry.error_type else "",
        ]
        klass = ' class="bad"' if entry.failed else ""
        rows.append(f"<tr{klass}>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
    head = "".join(
        f"<th>{h}</th>"
        for h in ("time", "service", "kind", "what", "group", "attempt", "outcome", "error")
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>flow {escape(trace.correlation_id)}</title><style>{_CSS}</style></head>
<body>
<h1>flow {escape(trace.correlation_id)}{badge}</h1>
<div class="sub">{len(trace.events)} events · {len(trace.failures())} failures ·
services: {escape(", ".join(trace.services()))}</div>
<h2>Sequence</h2>
<div class="diagram">{sequence_svg(trace)}</div>
<h2>Causal tree and timeline</h2>
<pre>{escape(render_text(trace))}</pre>
<h2>Journal entries</h2>
<table><thead><tr>{head}</tr></thead><tbody>
{"".join(rows)}
</tbody></table>
</body></html>
"""
