"""Server-made SVG bar charts for the dashboard: no script, no library, every label escaped."""

from __future__ import annotations

from html import escape

from markupsafe import Markup

WIDTH, BAR, GAP, LABEL = 420, 16, 6, 150


def bars(rows: list[tuple[str, float]], unit: str = "", empty: str = "Nothing yet.") -> Markup:
    """A horizontal bar chart of ``(label, value)`` rows as inline SVG markup."""
    if not rows:
        return Markup('<p class="none">{}</p>').format(empty)
    top = max(v for _, v in rows) or 1
    height = len(rows) * (BAR + GAP) + GAP
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img">'
    ]
    span = WIDTH - LABEL - 50
    for i, (label, value) in enumerate(rows):
        y = GAP + i * (BAR + GAP)
        width = max(1, round(span * value / top)) if value else 0
        number = f"{value:g}{unit}"
        parts.append(
            f'<text x="{LABEL - 4}" y="{y + BAR - 4}" text-anchor="end">{escape(label[:28])}</text>'
            f'<rect class="bar" x="{LABEL}" y="{y}" width="{width}" height="{BAR}">'
            f"<title>{escape(label)}: {escape(number)}</title></rect>"
            f'<text x="{LABEL + width + 4}" y="{y + BAR - 4}">{escape(number)}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))
