"""The study's HTML page: every package publishes its plots and tables into one place.

``publish(study_dir, section, items)`` records a section in ``report/sections.json`` and
rewrites ``report/index.html``; a section published again replaces its earlier version, so the
page always shows the latest search, ensemble and submission figures side by side.
"""
from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Sequence

from competition.io import atomic_write_json, atomic_write_text, read_json

__all__ = ["publish", "report_dir"]

# Order of sections on the page; unknown sections follow in publication order.
_ORDER = ["data", "search", "ensemble", "audit", "submissions"]


def report_dir(study_dir: str | os.PathLike) -> Path:
    path = Path(study_dir) / "report"
    path.mkdir(parents=True, exist_ok=True)
    return path


def publish(
    study_dir: str | os.PathLike,
    section: str,
    items: Sequence[tuple[str, str | os.PathLike]],
    *,
    text: str = "",
) -> Path:
    """Publish ``items`` — (title, file) pairs, PNG images or HTML/text fragments — under
    ``section`` and return the path of ``index.html``. Files outside ``report/`` are linked by a
    path relative to it."""
    out = report_dir(study_dir)
    registry_path = out / "sections.json"
    registry = read_json(registry_path) if registry_path.exists() else {}
    entries = []
    for title, file in items:
        rel = os.path.relpath(Path(file).resolve(), out.resolve())
        entries.append({"title": str(title), "file": rel})
    registry[section] = {"text": text, "items": entries}
    atomic_write_json(registry_path, registry)
    index = out / "index.html"
    atomic_write_text(index, _render(Path(study_dir).name, registry, out))
    return index


def _render(study: str, registry: dict, out: Path) -> str:
    names = sorted(registry, key=lambda s: (_ORDER.index(s) if s in _ORDER else len(_ORDER), s))
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>herostack · {html.escape(study)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "img{max-width:100%;border:1px solid #ddd}pre{background:#f6f6f6;padding:1em;overflow:auto}"
        "figure{margin:1em 0}</style></head><body>",
        f"<h1>herostack study <code>{html.escape(study)}</code></h1>",
    ]
    for name in names:
        sec = registry[name]
        parts.append(f"<h2>{html.escape(name)}</h2>")
        if sec.get("text"):
            parts.append(f"<pre>{html.escape(sec['text'])}</pre>")
        for item in sec["items"]:
            title, rel = html.escape(item["title"]), html.escape(item["file"])
            suffix = Path(item["file"]).suffix.lower()
            if suffix in (".png", ".jpg", ".jpeg", ".svg"):
                parts.append(f"<figure><img src='{rel}' alt='{title}'><figcaption>{title}</figcaption></figure>")
            elif suffix in (".html", ".htm"):
                frag = (out / item["file"]).read_text(encoding="utf-8") if (out / item["file"]).exists() else ""
                parts.append(f"<h3>{title}</h3>{frag}")
            else:
                body = (out / item["file"]).read_text(encoding="utf-8") if (out / item["file"]).exists() else ""
                parts.append(f"<h3>{title}</h3><pre>{html.escape(body)}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
