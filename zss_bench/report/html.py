"""The few HTML pieces the report needs, all escaped: a page shell with inline CSS and a strict
Content-Security-Policy, embedded PNGs, figures, notes and ``<details>`` blocks. Tables come from
tabulate/pandas, never from here."""
from __future__ import annotations

import base64
import html
import json

# data: images and the inline style only: the page can never fetch anything, even by mistake
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; background: #fff; }
h1 { border-bottom: 3px solid #4c72b0; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #ccc; margin-top: 2.5em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; white-space: nowrap; }
th { background: #eef2f8; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
figure { margin: 1em 0; }
figcaption, .note { color: #555; font-size: 13px; }
.warn { color: #8a5300; }
details { margin: .3em 0; }
summary { cursor: pointer; font-family: ui-monospace, monospace; font-size: 13px; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: 12px; }
nav a { margin-right: 1em; }
"""


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def png_img(png: bytes, alt: str) -> str:
    """An ``<img>`` whose picture is inside the page (a base64 data URI)."""
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def figure(png: bytes, caption: str) -> str:
    return f"<figure>{png_img(png, caption)}<figcaption>{esc(caption)}</figcaption></figure>"


def note(text: str, warn: bool = False) -> str:
    return f'<p class="{"note warn" if warn else "note"}">{esc(text)}</p>'


def json_details(summary: str, doc) -> str:
    """A collapsed block: ``summary`` on the page, ``doc`` as pretty JSON on a click."""
    body = json.dumps(doc, indent=2, sort_keys=False, default=str, ensure_ascii=False)
    return f"<details><summary>{esc(summary)}</summary><pre>{html.escape(body, quote=False)}</pre></details>"


def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")
