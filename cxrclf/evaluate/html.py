"""report.html: the evaluation's report.md as one self-contained web page.

A Markdown file with loose PNGs beside it is not something a mail client or an intranet
shows. The page holds the same content (the very Markdown that :func:`cxrclf.evaluate.report.markdown`
wrote, rendered by markdown-it-py, which rich already installs) with every figure embedded as
a ``data:`` URI and its style inline: it makes no network request, needs no JavaScript, and
reads at a phone's width (tables wrap their cells, figures shrink to the page) as on a laptop.
Raw HTML in the Markdown is shown as text, never interpreted.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from cxrclf import io
from cxrclf.errors import CxrclfError

__all__ = ["STYLE", "render", "write_html"]

_NARROW_COLUMNS = 3  # tables of up to this many columns fit a phone's width as tables
_MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml", ".gif": "image/gif"}

STYLE = """
:root { color-scheme: light; }
body { font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: #1b1b1b;
       background: #fff; max-width: 62rem; margin: 0 auto; padding: 0.75rem 1rem 3rem; overflow-wrap: break-word; }
h1 { font-size: 1.55rem; line-height: 1.25; margin: 0.6rem 0 1rem; }
h2 { font-size: 1.25rem; line-height: 1.3; margin: 2rem 0 0.6rem; padding-bottom: 0.2rem; border-bottom: 1px solid #ddd; }
h3 { font-size: 1.05rem; margin: 1.4rem 0 0.4rem; }
table { border-collapse: collapse; margin: 0.8rem 0; max-width: 100%; font-size: 0.9rem; }
th, td { border: 1px solid #cfcfcf; padding: 0.3rem 0.5rem; text-align: left; vertical-align: top; }
thead th { background: #f2f2f2; }
tbody tr:nth-child(even) { background: #fafafa; }
img { display: block; max-width: 100%; height: auto; margin: 0.8rem 0; border: 1px solid #e5e5e5; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.88em; background: #f3f3f3;
       padding: 0 0.2em; border-radius: 3px; overflow-wrap: anywhere; }
pre { background: #f3f3f3; padding: 0.6rem; overflow-x: auto; white-space: pre-wrap; }
pre code { background: none; padding: 0; }
blockquote { margin: 1rem 0; padding: 0.4rem 1rem; border-left: 4px solid #c98a00; background: #fff8e5; }
.missing { color: #8a1c1c; font-style: italic; }
/* a phone: each row of a wide table becomes a card of "column: value" lines, so no table is wider than the screen */
@media (max-width: 40rem) {
  body { font-size: 15px; padding: 0.5rem 0.6rem 2rem; }
  td { overflow-wrap: anywhere; }
  table.wide, table.wide tbody, table.wide tr, table.wide td { display: block; }
  table.wide { border: none; font-size: 0.9rem; }
  table.wide thead { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); }
  table.wide tr { border: 1px solid #cfcfcf; border-radius: 4px; margin: 0 0 0.5rem; padding: 0.25rem 0.5rem; }
  table.wide tbody tr:nth-child(even) { background: #fff; }
  table.wide td { border: none; padding: 0.05rem 0; text-align: left !important; }
  table.wide td[data-label]:not([data-label=""])::before { content: attr(data-label) ": "; font-weight: 600; }
}
@media print { body { max-width: none; } h2 { break-after: avoid; } img, table { break-inside: avoid; } }
"""


def _figure_uri(folder: Path, reference: str) -> str | None:
    """A ``data:`` URI of the figure ``reference`` names inside ``folder``; None for anything else (a URL, a path outside it, a missing file)."""
    if "://" in reference or reference.startswith(("/", "data:", "\\")):
        return None
    path = (folder / reference).resolve()
    media = _MEDIA_TYPES.get(path.suffix.lower())
    if media is None or not path.is_file() or folder.resolve() not in path.parents:
        return None
    return f"data:{media};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _label_cells(tokens: list) -> None:
    """Give every table cell its column's header as ``data-label``, and a table of more than ``_NARROW_COLUMNS``
    columns the class ``wide``: the phone layout shows such a table's rows as cards, each value beside its header."""
    headers: list[str] = []
    column = 0
    for index, token in enumerate(tokens):
        if token.type == "table_open":
            closing = next(i for i in range(index, len(tokens)) if tokens[i].type == "thead_close")
            if sum(t.type == "th_open" for t in tokens[index:closing]) > _NARROW_COLUMNS:
                token.attrSet("class", "wide")
        elif token.type == "thead_open":
            headers = []
        elif token.type == "th_open":
            headers.append(tokens[index + 1].content.replace("**", "").replace("`", "").strip())
        elif token.type == "tr_open":
            column = 0
        elif token.type == "td_open":
            token.attrSet("data-label", headers[column] if column < len(headers) else "")
            column += 1


def render(markdown_text: str, folder: Path, title: str | None = None) -> str:
    """The HTML page of ``markdown_text`` with the figures it names (relative to ``folder``) embedded.

    A figure that is not a file inside ``folder`` becomes a line saying so: the page never
    links out, so it never breaks when moved or mailed.
    """
    from markdown_it import MarkdownIt

    parser = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = parser.parse(markdown_text)
    _label_cells(tokens)
    for token in tokens:
        for child in token.children or []:
            if child.type != "image":
                continue
            uri = _figure_uri(Path(folder), str(child.attrGet("src") or ""))
            if uri is None:
                alt = "".join(grandchild.content for grandchild in child.children or []) or str(child.attrGet("src"))
                child.type, child.tag, child.children, child.content = "html_inline", "", None, (
                    f'<span class="missing">[figure not found beside the report: {html.escape(str(child.attrGet("src")))} ({html.escape(alt)})]</span>')
                continue
            child.attrSet("src", uri)
    body = parser.renderer.render(tokens, parser.options, {})
    if title is None:
        heading = next((t for i, t in enumerate(tokens) if t.type == "inline" and i and tokens[i - 1].type == "heading_open"), None)
        title = heading.content if heading is not None else "cxrclf report"
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<meta name=\"generator\" content=\"cxrclf\">\n<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n"
            f"<body>\n<main>\n{body}</main>\n</body>\n</html>\n")


def write_html(markdown_file: Path, out: Path | None = None) -> Path:
    """Write ``report.html`` (or ``out``) beside ``markdown_file``, from it and the figures it names."""
    markdown_file = Path(markdown_file)
    if not markdown_file.is_file():
        raise CxrclfError("report not found", markdown_file)
    out = Path(out) if out is not None else markdown_file.with_suffix(".html")
    io.write_text(out, render(markdown_file.read_text(encoding="utf-8"), markdown_file.parent))
    return out
