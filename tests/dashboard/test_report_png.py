"""`attnprof report --png`: static images through kaleido and a real Chromium, tall enough for their legends."""

import importlib.util
import shutil
import struct

import pytest
import seeding
from click.testing import CliRunner

from attnprof.cli import cli
from attnprof.dashboard.data import DataSource
from attnprof.dashboard.plotting import build_figure
from attnprof.report import LEGEND_ENTRY_PX, PNG_MIN_HEIGHT, PNG_WIDTH, png_height, report_sections


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def line(name: str, group: str, show: bool = True) -> dict:
    return {"type": "scatter", "x": [1, 2], "y": [1, 2], "name": name, "legendgroup": group, "showlegend": show}


def test_a_long_legend_makes_the_png_taller():
    """The default sweep's scaling figures have 29 legend entries in 10 groups: at 500 px the last ones were cut off.
    Here 33 in 11 (a measured line and two fits per impl)."""
    traces = [line(f"impl-{i} {kind}", f"impl-{i}") for i in range(11) for kind in ("", "bidir fit", "causal fit")]
    traces.append(line("p20-p80 band", "impl-0", show=False))  # hidden from the legend: takes no room
    height = png_height(build_figure(traces, {"height": 500}))
    assert height >= 100 + 33 * LEGEND_ENTRY_PX and height > 500
    ungrouped = [{**line(f"line {i}", ""), "legendgroup": None} for i in range(30)]  # a gap after each, once a group exists
    # plotly.js in Chromium drew these legends 899 and 348 px tall, between the default margins of 100 and 80 px
    assert png_height(build_figure(ungrouped + traces[:1], {})) >= 100 + 899 + 80
    assert png_height(build_figure([line(f"impl-{i}", f"impl-{i}") for i in range(12)], {})) >= 100 + 348 + 80
    assert png_height(build_figure(traces[:3], {"height": 640})) == 640  # short legends keep the figure's height
    assert png_height(build_figure([line("one", "one")], {})) == PNG_MIN_HEIGHT


@pytest.mark.skipif(importlib.util.find_spec("kaleido") is None, reason="needs kaleido (pip install 'attnprof[png]')")
@pytest.mark.skipif(shutil.which("chromium") is None, reason="kaleido needs a Chromium (apt-get install chromium)")
def test_report_writes_every_figure_as_png_at_its_height(two_runs_db, tmp_path):
    result = invoke("report", seeding.BASE, "--db", two_runs_db, "--out", tmp_path / "r.html", "--png", tmp_path / "png")
    assert result.exit_code == 0, result.output
    pngs = sorted((tmp_path / "png").glob("*.png"))
    assert len(pngs) == 9 and f"and 9 PNG files in {tmp_path / 'png'}" in result.output
    figures, _ = report_sections(DataSource(two_runs_db), seeding.BASE)
    for path in pngs:
        header = path.read_bytes()[:24]
        assert header[:8] == b"\x89PNG\r\n\x1a\n", path.name
        width, height = struct.unpack(">II", header[16:24])  # the IHDR chunk
        name = path.stem.removeprefix(f"{seeding.BASE}-")
        assert (width, height) == (PNG_WIDTH, png_height(figures[name])) and height >= PNG_MIN_HEIGHT, path.name


@pytest.mark.skipif(importlib.util.find_spec("kaleido") is None, reason="needs kaleido (pip install 'attnprof[png]')")
def test_kaleido_without_a_browser_is_one_line_naming_the_folder(two_runs_db, tmp_path, monkeypatch):
    """choreographer (kaleido's browser driver) takes the Chromium from BROWSER_PATH: a path that is no browser."""
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-chromium"))
    result = invoke("report", seeding.BASE, "--db", two_runs_db, "--out", tmp_path / "r.html", "--png", tmp_path / "png")
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"Error: kaleido could not write the PNG files in {str(tmp_path / 'png')!r}: ")
    assert result.output.count("\n") == 1 and not list((tmp_path / "png").glob("*.png"))
    assert "Chrome" in result.output and f"(BROWSER_PATH is {str(tmp_path / 'no-chromium')!r})" in result.output  # the reason was empty
