"""report.html: the report's tables and figures in one file (images inlined as data URIs),
to open in a browser or attach to a message without its directory."""

from __future__ import annotations

import base64
import html
from pathlib import Path

STYLE = """body{font-family:sans-serif;margin:2em;max-width:90em}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eee}td:first-child{text-align:left}
b{color:#063}img{max-width:100%;margin:1em 0;border:1px solid #ddd}"""


def write_html(path: Path, title: str, notes: list[str], header: list[str],
               rows: list[list[tuple[str, bool]]], unfinished: list[str], images: list[Path]) -> Path:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        cells = (f"<b>{html.escape(t)}</b>" if best and t else html.escape(t) for t, best in row)
        parts.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    parts.append("</table>")
    if unfinished:
        parts.append("<h2>Jobs that did not finish</h2><ul>" +
                     "".join(f"<li>{html.escape(u)}</li>" for u in unfinished) + "</ul>")
    for image in images:
        data = base64.b64encode(image.read_bytes()).decode("ascii")
        parts.append(f"<h3>{html.escape(image.stem)}</h3><img alt='{html.escape(image.stem)}' "
                     f"src='data:image/png;base64,{data}'>")
    parts.append("</body></html>\n")
    path.write_text("\n".join(parts))
    return path
