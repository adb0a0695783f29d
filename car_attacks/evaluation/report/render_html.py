"""report.html: one self-contained page (figures inlined as PNG data URLs)."""

from __future__ import annotations

import base64
import html

from .document import Report
from .formatting import NORM_NAME
from .headline import HOW_TO_READ, HOW_TO_READ_CERTIFIED
from .tables import Table

__all__ = ["render_html"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1240px;
margin:1.5em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.9em}
caption{text-align:left;font-weight:600;padding:.3em 0}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
td:first-child,th:first-child{text-align:left}
table.report-table[data-table^="robust"] td:nth-child(2),
table.report-table[data-table="runtime"] td:nth-child(2){text-align:left}
th{background:#f2f2f2}figure{margin:.5em 0;display:inline-block;vertical-align:top}
figcaption{font-size:.85em;color:#555}img{max-width:100%}
.note{background:#f6f8fa;border-left:4px solid #1f77b4;padding:.6em 1em}
.warn{background:#fff4e5;border-left:4px solid #d62728;padding:.6em 1em}
pre{background:#f6f8fa;padding:.8em;overflow-x:auto;font-size:.85em}
.pair{display:flex;flex-wrap:wrap;gap:1em}.pair figure{flex:1 1 560px;max-width:600px}
"""


def _table(name: str, t: Table) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in t.header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in t.rows
    )
    return (
        f'<table class="report-table" data-table="{html.escape(name)}">'
        f"<caption>{html.escape(t.caption)}</caption><thead><tr>{h}</tr></thead>"
        f"<tbody>{body}</tbody></table>"
    )


def _figure(fig_id: str, title: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure id="fig-{html.escape(fig_id)}"><img class="report-figure" '
        f'alt="{html.escape(title)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(title)}</figcaption></figure>"
    )


def _paragraph(text: str, css_class: str = "") -> str:
    """An HTML paragraph of plain (escaped) text."""
    attr = f' class="{css_class}"' if css_class else ""
    return f"<p{attr}>{html.escape(text)}</p>"


def render_html(report: Report, figures: dict[str, bytes], tables: dict[str, Table]) -> str:
    """The page: notes, summary, per-attack figures and tables, runtime, run, config."""
    titles = {f.id: f.title for f in report.figures}
    title = html.escape(report.title)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{title}</title><style>{_CSS}</style></head><body>",
        f"<h1>{title}</h1>",
        f'<p class="note"><b>How to read this.</b> {HOW_TO_READ}</p>',
    ]
    if report.certificate is not None:
        parts.append(f'<p class="note">{HOW_TO_READ_CERTIFIED}</p>')
    run = report.run
    if not run.complete or run.errors:
        failed = f", {len(run.errors)} failed" if run.errors else ""
        parts.append(
            _paragraph(
                f"This run is incomplete: {run.units_done} of {run.units_total} units done"
                f"{failed}. Missing points are shown as n/a.",
                "warn",
            )
        )
    parts.append("<h2>Summary</h2><ul>")
    parts += [f"<li>{html.escape(line)}</li>" for line in report.headline]
    parts.append("</ul>")
    c = report.config
    parts.append(
        _paragraph(
            f"Model {c.model.name}, data {c.data.name} ({c.data.split}, {c.data.n} samples "
            f"from index {c.data.start}, batches of {c.data.batch_size}), seed {c.seed}, "
            f"device {c.device}."
        )
    )
    parts.append("<h2>Clean accuracy</h2>")
    parts.append(_table("clean", tables["clean"]))
    if report.worst_case:
        parts.append("<h2>Worst case over all attacks, per norm</h2>")
        parts += [
            _table(f"worst-case-{w.norm}", tables[f"worst-case-{w.norm}"])
            for w in report.worst_case
        ]
    parts.append("<h2>Robust accuracy and effective perturbation size per attack</h2>")
    for a in report.attacks:
        params = ", ".join(f"{k}={v}" for k, v in a.config.params.items()) or "defaults"
        peers = ", ".join(m.key for m in a.methods if m.peer) or "no peers"
        parts.append(f"<h3>{html.escape(a.id)}</h3>")
        parts.append(
            _paragraph(
                f"{a.config.cls} ({a.kind} attack, {NORM_NAME[a.norm]} norm), parameters: "
                f"{params}. Compared with: {peers}."
            )
        )
        parts.append('<div class="pair">')
        for fid in (f"robust-{a.id}", f"norms-{a.id}"):
            parts.append(_figure(fid, titles[fid], figures[fid]))
        parts.append("</div>")
        for name in (f"robust-{a.id}", f"certified-{a.id}", f"norms-{a.id}"):
            if name in tables:
                parts.append(_table(name, tables[name]))
    parts.append("<h2>Runtime</h2>")
    parts.append(_figure("runtime", titles["runtime"], figures["runtime"]))
    parts.append(_table("runtime", tables["runtime"]))
    if run.incomplete or run.errors:
        parts.append("<h2>Run</h2><ul>")
        parts += [
            f"<li>failed: {html.escape(e.key)}: {html.escape(e.error)}</li>" for e in run.errors
        ]
        parts += [f"<li>missing: {html.escape(s)}</li>" for s in run.incomplete[:50]]
        parts.append("</ul>")
    parts.append("<h2>Config</h2>")
    parts.append(f"<pre>{html.escape(report.config_yaml)}</pre>")
    parts.append("<h2>Environment</h2>")
    parts.append(_table("environment", tables["environment"]))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
