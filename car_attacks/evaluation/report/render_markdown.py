"""report.md: the report as Markdown, figures linked from ``figures/``."""

from __future__ import annotations

import re

from .document import Report
from .headline import HOW_TO_READ, HOW_TO_READ_CERTIFIED
from .tables import Table

__all__ = ["render_markdown"]


def _bold(text: str) -> str:
    """HTML ``<b>`` emphasis as Markdown ``**``."""
    return re.sub(r"</?b>", "**", text)


def _escape(s: str) -> str:
    return str(s).replace("|", "\\|")


def _table(t: Table) -> str:
    lines = [
        f"**{_escape(t.caption)}**",
        "",
        "| " + " | ".join(_escape(h) for h in t.header) + " |",
    ]
    lines.append("|" + "|".join("---" for _ in t.header) + "|")
    lines += ["| " + " | ".join(_escape(c) for c in row) + " |" for row in t.rows]
    return "\n".join(lines) + "\n"


def render_markdown(report: Report, tables: dict[str, Table]) -> str:
    """The Markdown page: notes, summary, per-attack figures and tables, runtime, config."""
    out = [f"# {report.title}", "", f"> **How to read this.** {_bold(HOW_TO_READ)}", ""]
    if report.certificate is not None:
        out += ["> " + _bold(HOW_TO_READ_CERTIFIED), ""]
    out += ["## Summary", ""]
    out += [f"- {line}" for line in report.headline]
    out += ["", "## Clean accuracy", "", _table(tables["clean"])]
    worst = [_table(tables[f"worst-case-{w.norm}"]) for w in report.worst_case]
    if worst:
        out += ["## Worst case over all attacks, per norm", ""] + worst
    out += ["## Robust accuracy and effective perturbation size per attack", ""]
    figures = {f.id: f for f in report.figures}
    for a in report.attacks:
        out += [f"### {a.id}", ""]
        for fid in (f"robust-{a.id}", f"norms-{a.id}"):
            out += [f"![{figures[fid].title}]({figures[fid].file})", ""]
        for name in (f"robust-{a.id}", f"certified-{a.id}", f"norms-{a.id}"):
            if name in tables:
                out += [_table(tables[name])]
    runtime = figures["runtime"]
    out += ["## Runtime", "", f"![{runtime.title}]({runtime.file})", ""]
    out += [_table(tables["runtime"])]
    out += ["## Config", "", "```yaml", report.config_yaml.rstrip("\n"), "```", ""]
    out += ["## Environment", "", _table(tables["environment"])]
    return "\n".join(out)
