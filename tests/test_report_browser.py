"""The HTML report in a real headless browser (Chromium from Debian's packages).

Skipped when /usr/bin/chromium is missing, with the command that installs it; a failure
instead under ``CAR_ATTACKS_REQUIRE_SYSTEM_PACKAGES`` (set by ``.ci/run``).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from test_evaluation import register_tiny, tiny_raw, write_tiny_config

from car_attacks.evaluation import load_config, run_experiment

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def chromium(missing_system_package: Callable[[str, str], None]) -> str:
    if not os.path.exists(CHROMIUM):
        missing_system_package(f"the browser check of the HTML report needs {CHROMIUM}", "chromium")
    return CHROMIUM


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    register_tiny()
    base = tiny_raw()
    raw_attacks = [base["attacks"][0], base["attacks"][1]]
    d = tmp_path_factory.mktemp("browser")
    path = write_tiny_config(
        d / "tiny.yaml",
        attacks=raw_attacks,
        peers=[base["peers"][0]],
        data={"name": "tiny_data", "n": 4, "batch_size": 4},
    )
    cfg, text = load_config(path)
    summary = run_experiment(cfg, d / "run", source_text=text, progress=False)
    assert summary.units_failed == 0
    return d / "run"


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[dict[str, str | None]] = []
        self.tables: list[str | None] = []
        self.rows = 0
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a)
        elif tag == "table":
            self.tables.append(a.get("data-table"))
        elif tag == "tr":
            self.rows += 1

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _browser(chromium: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [chromium, *FLAGS, f"--user-data-dir={tmp / 'profile'}", *args],
        capture_output=True,
        timeout=120,
        cwd=tmp,
    )


def test_report_renders_in_chromium(chromium: str, report_dir: Path, tmp_path: Path) -> None:
    page = (report_dir / "report.html").resolve()
    report: dict[str, Any] = json.loads((report_dir / "report.json").read_text())

    r = _browser(chromium, tmp_path, "--dump-dom", page.as_uri())
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    dom = _Collect()
    dom.feed(r.stdout.decode())
    assert "car-attacks robustness report" in "".join(dom.text)

    figures = [i for i in dom.imgs if (i.get("src") or "").startswith("data:image/png;base64,")]
    assert len(figures) == len(dom.imgs) == len(report["figures"]) == 2 * 2 + 1
    for img in figures:
        png = base64.b64decode((img["src"] or "").split(",", 1)[1])
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
        assert img.get("alt")

    expected = {"clean", "runtime", "environment"} | {
        f"{kind}-{a['id']}" for a in report["attacks"] for kind in ("robust", "norms")
    }
    expected |= {f"worst-case-{w['norm']}" for w in report["worst_case"]}
    assert set(dom.tables) == expected
    assert dom.rows > 20
    text = " ".join(dom.text)
    assert "How to read this." in text and "Summary" in text and "Config" in text

    shot = tmp_path / "report.png"
    r = _browser(
        chromium, tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri()
    )
    assert r.returncode == 0 and shot.is_file(), r.stderr.decode(errors="replace")[-2000:]

    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))
    assert pixels.shape[:2] == (2000, 1280)
    rgb = pixels[..., :3].reshape(-1, 3)
    assert float(rgb.std()) > 0.05  # not a uniform page
    colors = {tuple(c) for c in (rgb[::97] * 255).astype(int).tolist()}
    assert len(colors) > 50  # text and plotted colours, not a blank or error page
    # the plots' line colours (car blue, naive red) are on the first screen
    blue = ((abs(rgb[:, 0] - 0x1F / 255) < 0.03) & (abs(rgb[:, 2] - 0xB4 / 255) < 0.03)).sum()
    red = ((abs(rgb[:, 0] - 0xD6 / 255) < 0.03) & (abs(rgb[:, 1] - 0x27 / 255) < 0.03)).sum()
    assert blue > 200 and red > 50
