"""report.html in a real browser (Debian's chromium driven by Playwright): it renders every figure, logs no error
and fetches nothing but itself; `deploykit report DIST --html` puts every target on one page; a rebuild shows what
changed since the previous build."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from deploykit.cli import main
from deploykit.report.html import render_html

CHROMIUM = Path("/usr/bin/chromium")
VIEWPORT = {"width": 1280, "height": 900}
FIGURE_WIDTH_PX = 960  # figure svg's max-width in the template; the page is wide enough to reach it


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        if os.geteuid() != 0:
            pytest.skip(f"{CHROMIUM} missing and not root to install it: run `sudo make system-packages`")
        pytest.fail(f"{CHROMIUM} missing: run `make system-packages` (tools/setup/system_packages.sh installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()


def build(out: Path, cache: Path, model: Path, data: Path, targets: str):
    return CliRunner().invoke(main, [
        "build", str(model), "--data", str(data), "--target", targets, "--out", str(out), "--cache", str(cache),
        "--runs", "20", "--warmup", "2", "--evaluation-samples", "40", "--calibration-samples", "20"])


@pytest.fixture(scope="module")
def dist(tmp_path_factory, tiny_classifier, labelled_data) -> Path:
    """A classifier built for intel-cpu (OpenVINO: per-op profile) and arm-cpu (LiteRT)."""
    root = tmp_path_factory.mktemp("html")
    out = root / "dist"
    built = build(out, root / "cache", tiny_classifier, labelled_data, "intel-cpu,arm-cpu")
    assert built.exit_code == 0, built.output
    return out


def open_page(browser, path: Path):
    """The page opened from disk, with every request it made and every console error or page error it logged."""
    page = browser.new_page(viewport=VIEWPORT)
    requests, errors = [], []
    page.on("request", lambda request: requests.append(request.url))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(path.resolve().as_uri())
    page.wait_for_load_state("load")
    return page, requests, errors


def assert_figures_rendered(page) -> list[str]:
    """Every figure's SVG is laid out at the template's width with its own aspect ratio; returns the figure ids."""
    figures = page.locator("figure.plot")
    ids = []
    for index in range(figures.count()):
        figure = figures.nth(index)
        svg = figure.locator("svg").first
        box = svg.bounding_box()
        width, height = (float(value) for value in svg.get_attribute("viewBox").split()[2:])
        assert box is not None and box["width"] == pytest.approx(FIGURE_WIDTH_PX, abs=1)
        assert box["height"] == pytest.approx(box["width"] * height / width, abs=2)
        ids.append(figure.get_attribute("id"))
    return ids


def test_target_report_renders_every_figure_offline(browser, dist, tmp_path):
    page, requests, errors = open_page(browser, dist / "intel-cpu" / "report.html")

    ids = assert_figures_rendered(page)
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)

    assert ids == ["target-0-latency", "target-0-candidates", "target-0-ops", "target-0-fidelity"]
    assert requests == [(dist / "intel-cpu" / "report.html").resolve().as_uri()]
    assert errors == []
    assert (tmp_path / "report.png").stat().st_size > 10_000
    ids_in_page = page.eval_on_selector_all("[id]", "nodes => nodes.map(node => node.id)")
    assert len(ids_in_page) == len(set(ids_in_page))  # several inline SVGs share one id namespace


def test_report_json_keeps_what_the_figures_draw(dist):
    report = json.loads((dist / "intel-cpu" / "report.json").read_text())

    assert len(report["metrics"]["latency_samples_ms"]) == 20
    assert len(report["baseline"]["latency_samples_ms"]) == 20
    confusion = report["metrics"]["per_sample"]["confusion"]
    assert confusion["classes"] == ["food", "sports"]
    assert sum(map(sum, confusion["vs_original"])) == sum(map(sum, confusion["vs_labels"])) == 40
    assert report["previous"] is None


def test_build_writes_the_same_html_for_the_same_report(dist):
    report = json.loads((dist / "arm-cpu" / "report.json").read_text())

    assert render_html([report]) == (dist / "arm-cpu" / "report.html").read_text()


def test_report_command_puts_every_target_on_one_page(browser, dist):
    result = CliRunner().invoke(main, ["report", str(dist), "--html"])

    assert result.exit_code == 0, result.output
    assert str(dist / "report.html") in result.stdout
    page, requests, errors = open_page(browser, dist / "report.html")
    assert page.locator("#comparison tbody tr").count() == 2
    assert page.locator("section.target h2").all_inner_texts() == ["arm-cpu: gates passed", "intel-cpu: gates passed"]
    assert [re.sub(r"-\w+$", "", name) for name in assert_figures_rendered(page)] == \
        ["target-0"] * 3 + ["target-1"] * 4
    assert requests == [(dist / "report.html").resolve().as_uri()] and errors == []
    assert not [path.name for path in dist.iterdir() if path.name.startswith(".")]  # no temporary file left


def test_rebuild_shows_what_changed_since_the_previous_build(browser, dist, tmp_path, tiny_classifier,
                                                             labelled_data):
    out = tmp_path / "dist"
    shutil.copytree(dist / "arm-cpu", out / "arm-cpu")
    before = json.loads((out / "arm-cpu" / "report.json").read_text())

    rebuilt = build(out, dist.parent / "cache", tiny_classifier, labelled_data, "arm-cpu")

    assert rebuilt.exit_code == 0, rebuilt.output
    previous = json.loads((out / "arm-cpu" / "report.json").read_text())["previous"]
    assert previous["artifact_changed"] is False  # same inputs, cached stages: the same bytes
    assert previous["changes"]["bytes"] == {"before": before["artifact"]["bytes"],
                                            "after": before["artifact"]["bytes"], "change": 0}
    assert "## Changes since the previous build" in (out / "arm-cpu" / "report.md").read_text()
    page, _, errors = open_page(browser, out / "arm-cpu" / "report.html")
    assert "unchanged (same sha256" in page.locator("p.previous-summary").inner_text()
    assert page.locator("table.previous tbody tr").count() == 4  # size, p50, agreement, accuracy
    assert errors == []


def test_search_front_sensitivity_and_cosines_get_their_figures(browser, dist, tmp_path):
    report = json.loads((dist / "intel-cpu" / "report.json").read_text())
    report["search"] = {"chosen_trial": 2, "front": [
        {"trial": 0, "latency_ms": 0.9, "size_mb": 0.13, "quality_loss": 0.02},
        {"trial": 2, "latency_ms": 1.1, "size_mb": 0.12, "quality_loss": 0.005}]}
    report["artifact"]["mixed_precision"] = {
        "metric": "cosine", "target": 0.995, "fidelity_all_quantized": 0.99, "kept_high": ["layer_0/ffn"],
        "ranking": [{"group": "layer_0/ffn", "fidelity_kept_high": 0.996},
                    {"group": "layer_0/attention", "fidelity_kept_high": 0.991}]}
    report["metrics"]["per_sample"] = {"cosine": [0.99, 0.995, 0.998, 0.97]}
    page_path = tmp_path / "report.html"
    page_path.write_text(render_html([report]))

    page, requests, errors = open_page(browser, page_path)

    assert assert_figures_rendered(page) == [f"target-0-{name}" for name in (
        "latency", "candidates", "pareto", "ops", "sensitivity", "fidelity")]
    assert "Cosine of each of the 4 evaluation samples." in page.locator("#target-0-fidelity").inner_text()
    assert len(requests) == 1 and errors == []


def test_report_html_of_a_report_missing_a_section_fails_in_one_line(dist, tmp_path):
    report = json.loads((dist / "arm-cpu" / "report.json").read_text())
    del report["measured_on"]
    (tmp_path / "arm-cpu").mkdir()
    (tmp_path / "arm-cpu" / "report.json").write_text(json.dumps(report))

    result = CliRunner().invoke(main, ["report", str(tmp_path), "--html"])

    assert result.exit_code == 2
    assert result.stderr.count("error:") == 1 and "lacks what the HTML report needs" in result.stderr
    assert not (tmp_path / "report.html").exists()
