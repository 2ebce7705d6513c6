"""The explorer in a real browser: Debian's headless Chromium, driven by Selenium, against `memsweep serve` on the
tiny output of tests/explorer_world.py. Each test checks what a person would see: the heatmap's colours, the
tooltip's words, the page a click opens, text that holds markup shown as text and never run.

Skipped, saying why, where Chromium, chromedriver or Selenium is missing (.ci/run installs them).
"""

from __future__ import annotations

import re

import pytest

from tests.chromium import chromium, why_no_browser
from tests.explorer_world import FAILED_CELL, IMAGE, PLANTED_ROW, SCRIPT
from tests.heatmap_page import cell_centre, cell_offset, cell_pixel, hover, open_overview, pixel, point_at, wait_for

pytestmark = pytest.mark.skipif(why_no_browser() is not None, reason=f"browser tests: {why_no_browser()}")

FAILED_RGB = (214, 39, 40)
MISSING_RGB = (226, 226, 226)
BOUNDARY_RGB = (232, 22, 27)


@pytest.fixture(scope="module")
def browser():
    with chromium() as driver:
        driver.set_page_load_timeout(30)
        yield driver


@pytest.fixture(scope="module")
def site(served_explorer):
    return served_explorer[0]


def test_heatmap_is_one_canvas_coloured_by_cell(browser, site):
    open_overview(browser, site)
    assert len(browser.find_elements("tag name", "canvas")) == 1
    assert browser.execute_script("return document.getElementsByTagName('*').length") < 400  # not a node per cell
    colours = {(ckpt, chunk): cell_pixel(browser, ckpt, chunk) for ckpt in range(4) for chunk in range(3)}
    assert colours[FAILED_CELL] == FAILED_RGB  # the failed cell stands out
    landed = [colour for cell, colour in colours.items() if cell != FAILED_CELL]
    assert all(colour not in (FAILED_RGB, MISSING_RGB, (0, 0, 0), (255, 255, 255)) for colour in landed)
    # More memorized is brighter (viridis: yellow-green), the least memorized cell darkest (purple).
    brightness = {cell: sum(colour) for cell, colour in colours.items() if cell != FAILED_CELL}
    assert brightness[(3, 0)] > brightness[(0, 2)]


def test_hover_shows_the_cells_numbers(browser, site):
    open_overview(browser, site)
    cell = next(c for c in browser.execute_script("return fetch('/api/cells').then(r => r.json())")
                if (c["ckpt"], c["chunk"]) == (2, 1))
    text = hover(browser, 2, 1)
    assert "ckpt 2 · chunk 1" in text and "trained on (seen)" in text
    score = float(re.search(r"score: ([0-9.]+)", text).group(1))
    assert score == pytest.approx(cell["score"], abs=5e-4)
    assert f"sequences: {cell['n']}" in text
    assert "failed" in hover(browser, *FAILED_CELL)


def test_seen_unseen_boundary_runs_between_trained_and_untrained_chunks(browser, site):
    open_overview(browser, site)
    for ckpt in (0, 1):
        left, right = cell_centre(browser, ckpt, ckpt), cell_centre(browser, ckpt, ckpt + 1)
        edge = (left["x"] + right["x"]) / 2
        line = [pixel(browser, edge + dx, left["y"]) for dx in (-1, 0, 1)]
        assert BOUNDARY_RGB in line, line
        assert pixel(browser, edge - 8, left["y"]) != BOUNDARY_RGB  # the cell itself is not covered


def test_drag_zooms_to_a_region_and_reset_returns(browser, site):
    from selenium.webdriver import ActionChains

    open_overview(browser, site)
    canvas = browser.find_element("id", "heatmap")
    start, end = cell_offset(browser, 0, 0), cell_offset(browser, 1, 1)
    ActionChains(browser).move_to_element_with_offset(canvas, *start).click_and_hold() \
        .move_to_element_with_offset(canvas, *end).release().perform()
    assert browser.execute_script("return window.memsweepHeatmap.view()") == {"ckpts": [0, 1], "chunks": [0, 1]}
    assert "ckpt_max=1" in browser.find_element("id", "download-csv").get_attribute("href")
    assert "ckpt 1 · chunk 1" in hover(browser, 1, 1)
    assert browser.execute_script("return window.memsweepHeatmap.cellCenter(3, 2)") is None  # out of view now
    browser.find_element("id", "reset-zoom").click()
    assert browser.execute_script("return window.memsweepHeatmap.view()") == {"ckpts": [0, 3], "chunks": [0, 2]}


def test_wheel_zooms_in_around_the_pointer(browser, site):
    from selenium.webdriver import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin

    open_overview(browser, site)
    origin = ScrollOrigin.from_element(browser.find_element("id", "heatmap"), *cell_offset(browser, 3, 0))
    for _ in range(3):
        ActionChains(browser).scroll_from_origin(origin, 0, -120).perform()
    view = browser.execute_script("return window.memsweepHeatmap.view()")
    assert view != {"ckpts": [0, 3], "chunks": [0, 2]}
    assert view["ckpts"][0] <= 3 <= view["ckpts"][1] and view["chunks"][0] <= 0 <= view["chunks"][1]


def test_metric_choice_recolours_the_heatmap(browser, site):
    from selenium.webdriver.support.ui import Select

    def colours() -> dict[tuple[int, int], tuple[int, int, int]]:
        return {(c, j): cell_pixel(browser, c, j) for c in range(4) for j in range(3) if (c, j) != FAILED_CELL}

    open_overview(browser, site)
    scores = colours()
    Select(browser.find_element("id", "metric")).select_by_value("full_match_rate")
    assert browser.current_url.endswith("?metric=full_match_rate")
    assert colours() != scores
    # NLL falls as memorization grows: its scale is flipped, so the most memorized cell stays the brightest.
    Select(browser.find_element("id", "metric")).select_by_value("nll")
    nll = colours()
    assert max(nll, key=lambda cell: sum(nll[cell])) == max(scores, key=lambda cell: sum(scores[cell])) == (3, 0)


def test_exposure_metrics_join_the_menu_once_loaded(browser, site):
    from selenium.webdriver.support.ui import Select

    open_overview(browser, site, "?metric=seen_share")  # named before its grid has loaded
    wait_for(lambda: browser.execute_script("return document.getElementById('heatmap').dataset.exposures === 'true'"))
    menu = Select(browser.find_element("id", "metric"))
    assert menu.first_selected_option.get_attribute("value") == "seen_share"
    assert {"seen_share", "full_match_rate_never_seen", "full_match_rate_seen"} <= {
        option.get_attribute("value") for option in menu.options}
    # every sequence of a trained-on chunk is seen (brightest); 2 of 6 of chunk 1's at checkpoint 0
    assert cell_pixel(browser, 0, 0) == cell_pixel(browser, 3, 0) != cell_pixel(browser, 0, 1)
    assert "seen by this checkpoint: 0.3333" in hover(browser, 0, 1)
    menu.select_by_value("full_match_rate_never_seen")
    assert cell_pixel(browser, 2, 0) == MISSING_RGB  # no never-seen sequence in a trained-on chunk


def test_click_opens_the_cell_with_its_decoded_text_and_inert_markup(browser, site):
    open_overview(browser, site)
    point_at(browser, 2, 1).click().perform()
    wait_for(lambda: browser.current_url.endswith("/cell/2/1"))
    assert "Checkpoint 2 × chunk 1" in browser.find_element("tag name", "h1").text
    table = browser.find_element("css selector", "table.sequences")
    text = table.text
    assert SCRIPT in text and IMAGE in text  # shown as the training text says, character for character
    assert "quick brown fox" in text and "prompt" in text and "model" in text
    assert table.find_elements("css selector", "img, script") == []
    assert browser.execute_script("return window.__pwned") is None
    misses = browser.find_elements("css selector", "table.sequences .miss")
    assert misses and misses[0].value_of_css_property("text-decoration-line") == "underline"


def test_cell_page_sorts_and_filters_from_its_controls(browser, site):
    from selenium.webdriver.support.ui import Select

    browser.get(f"{site}/cell/2/1")
    browser.find_element("link text", "row").click()
    wait_for(lambda: "sort=row" in browser.current_url)
    rows = [int(a.text) for a in browser.find_elements("css selector", "table.sequences tbody td:first-child a")]
    assert rows == sorted(rows)
    Select(browser.find_element("name", "full_match")).select_by_value("yes")
    browser.find_element("css selector", "form.filters button").click()
    wait_for(lambda: "full_match=yes" in browser.current_url)
    cells = browser.find_elements("css selector", "table.sequences tbody tr td:nth-child(6)")
    assert cells and {td.text for td in cells} == {"yes"}


def test_sequence_page_charts_the_row_and_shows_its_text(browser, site):
    browser.get(f"{site}/sequence/1/{PLANTED_ROW}")
    assert browser.find_elements("css selector", "svg.trajectory polyline.score")
    summary = browser.find_element("css selector", "p.summary").text
    assert "first at checkpoint 0" in summary and "last at checkpoint 3" in summary
    block = browser.find_element("css selector", ".row-text").text
    assert SCRIPT in block and IMAGE in block
    assert browser.execute_script("return window.__pwned") is None
    assert len(browser.find_elements("css selector", "table.sequences tbody tr")) == 4
