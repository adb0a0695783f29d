"""The robustness report of a run directory: report.json, report.md, report.html.

Everything is computed from the stored files (manifest, config, results), so
``car-attacks report DIR`` rebuilds the same report.json at any time, also for a run
that is still incomplete (missing points are ``null`` and flagged).

* :mod:`.collect` gathers the typed unit records per method and sample;
* :mod:`.summary` computes the numbers (definitions there) into the typed
  :class:`~.document.Report`, whose ``to_json`` is report.json;
* :mod:`.certified` adds certified robust accuracy, the gap and the soundness column for
  certified models (``ModelSpec.certified``, e.g. BCOP networks);
* :mod:`.headline` writes the summary prose, :mod:`.tables` and :mod:`.figures` the
  tables and plots, :mod:`.render_html` and :mod:`.render_markdown` the pages;
* :mod:`.build` writes the files.
"""

from __future__ import annotations

from ..config import ExperimentConfig
from .build import build_report
from .certified import certified_lp_radius
from .document import REPORT_FORMAT, figure_specs
from .summary import compute_report

__all__ = [
    "REPORT_FORMAT",
    "build_report",
    "certified_lp_radius",
    "compute_report",
    "expected_figures",
]


def expected_figures(config: ExperimentConfig) -> list[dict[str, str]]:
    """The figures of a report (id, title, file): per attack a robust-accuracy curve and a
    perturbation-size plot, and one runtime chart."""
    return [f.to_json() for f in figure_specs(config)]
