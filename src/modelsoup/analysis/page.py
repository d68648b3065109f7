"""A results page: one self-contained HTML file (tables, figures embedded as data URIs,
the run's config and versions) that opens in a browser without a server or network.

The page references no external URL. A small inline script records, once the page has
loaded, how many of its images decoded (``<body data-images="ok/total">``), which a
headless browser can read back (tests/test_page.py does with Chromium).
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoints.save import atomic_output


@dataclass
class Table:
    caption: str
    header: Sequence[str]
    rows: Sequence[Sequence[Any]]


@dataclass
class Figure:
    caption: str
    path: Path  # a PNG file, embedded in the page


@dataclass
class Section:
    heading: str
    text: Sequence[str] = ()  # paragraphs (plain text, escaped)
    tables: Sequence[Table] = ()
    figures: Sequence[Figure] = ()
    items: Sequence[str] = field(default_factory=list)  # a bulleted list


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
caption { caption-side: top; text-align: left; font-weight: 600; padding: 0.3em 0; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
"""

_CHECK = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images', ok + '/' + imgs.length);
});
"""


def _table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in t.header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in t.rows
    )
    return (
        f"<table><caption>{html.escape(t.caption)}</caption><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table>"
    )


def _figure(f: Figure) -> str:
    data = base64.b64encode(Path(f.path).read_bytes()).decode("ascii")
    alt = html.escape(f.caption)
    return (
        f'<figure><img alt="{alt}" src="data:image/png;base64,{data}">'
        f"<figcaption>{alt}</figcaption></figure>"
    )


def render(
    title: str,
    sections: Sequence[Section],
    *,
    config: Mapping[str, Any] | None = None,
    versions: Mapping[str, str] | None = None,
) -> str:
    """The page as a string."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style>",
        f"<script>{_CHECK}</script></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.heading)}</h2>")
        parts += [f"<p>{html.escape(p)}</p>" for p in s.text]
        if s.items:
            parts.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in s.items) + "</ul>")
        parts += [_table(t) for t in s.tables]
        parts += [_figure(f) for f in s.figures]
    if config is not None:
        text = json.dumps(config, indent=2, default=str)
        parts += ["<h2>Configuration</h2>", f"<pre>{html.escape(text)}</pre>"]
    if versions is not None:
        parts.append("<h2>Versions</h2>")
        parts.append(_table(Table("", ["package", "version"], sorted(versions.items()))))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_page(path: str | os.PathLike, title: str, sections: Sequence[Section], **kw: Any) -> Path:
    """Render and write the page atomically; returns its path."""
    path = Path(path)
    text = render(title, sections, **kw)
    with atomic_output(path, force=True) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
