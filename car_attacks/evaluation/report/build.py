"""Building the report files of a run directory from what it stores."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from ..config import parse_config
from ..storage import RunStore, atomic_write_bytes, atomic_write_text
from .document import Report
from .figures import render_figures
from .render_html import render_html
from .render_markdown import render_markdown
from .summary import summarize
from .tables import report_tables

__all__ = ["build_report", "load_report"]


def load_report(run_dir: Path) -> Report:
    """The report of a run directory: config, manifest, results and errors as stored.

    Raises RunDirError if ``run_dir`` is not a run directory."""
    store = RunStore(run_dir)
    manifest = store.read_manifest()
    config_text = (run_dir / "config.yaml").read_text(encoding="utf-8")
    config = parse_config(yaml.safe_load(config_text), default_name=manifest.config_name)
    source = run_dir / "config.source.yaml"
    shown = source.read_text(encoding="utf-8") if source.is_file() else config_text
    return summarize(
        config,
        manifest,
        store.records(),
        store.errors(),
        config_text=shown,
    )


def build_report(run_dir: str | Path) -> list[Path]:
    """(Re)build report.json, report.md, report.html and figures/*.png of a run directory;
    returns the paths of the three report files.

    Raises RunDirError if ``run_dir`` is not a run directory."""
    d = Path(run_dir)
    report = load_report(d)
    figures = render_figures(report)
    tables = report_tables(report)
    for f in report.figures:
        atomic_write_bytes(d / f.file, figures[f.id])
    paths = []
    for name, text in (
        ("report.json", json.dumps(report.to_json(), indent=2, allow_nan=False) + "\n"),
        ("report.md", render_markdown(report, tables)),
        ("report.html", render_html(report, figures, tables)),
    ):
        atomic_write_text(d / name, text)
        paths.append(d / name)
    return paths
