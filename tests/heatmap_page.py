"""Driving the explorer's overview heatmap from Selenium, as a person would: wait until it is drawn, point at a
cell, read the colour it shows. Shared by the browser tests and the README screenshots."""

from __future__ import annotations

import time


def wait_for(condition, timeout: float = 120.0):
    """Poll `condition` until it holds (the page's state); `timeout` only turns a page that never gets there into a
    failure instead of a hang, so it is generous: a browser on a loaded machine can take tens of seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("the page did not get there in time")


def open_overview(driver, site: str, query: str = "") -> None:
    driver.get(f"{site}/{query}")
    wait_for(lambda: driver.execute_script("return document.getElementById('heatmap').dataset.ready === 'true'"))


def cell_centre(driver, ckpt: int, chunk: int) -> dict:
    """Where the heatmap draws a cell: CSS px from the canvas's top-left corner."""
    centre = driver.execute_script("return window.memsweepHeatmap.cellCenter(arguments[0], arguments[1])", ckpt, chunk)
    assert centre is not None, f"cell ({ckpt}, {chunk}) is not in view"
    return centre


def cell_offset(driver, ckpt: int, chunk: int) -> tuple[int, int]:
    """A cell's centre as Selenium's pointer offset, which counts from the canvas's in-view centre (the centre of
    the part inside the viewport, floored, per WebDriver), not from the middle of the whole canvas."""
    centre = cell_centre(driver, ckpt, chunk)
    in_view = driver.execute_script(
        "const b = document.getElementById('heatmap').getBoundingClientRect();"
        "const left = Math.max(b.left, 0), right = Math.min(b.right, innerWidth);"
        "const top = Math.max(b.top, 0), bottom = Math.min(b.bottom, innerHeight);"
        "return [Math.floor((left + right) / 2) - b.left, Math.floor((top + bottom) / 2) - b.top];")
    return round(centre["x"] - in_view[0]), round(centre["y"] - in_view[1])


def point_at(driver, ckpt: int, chunk: int):
    """Selenium actions with the pointer over a cell (call .click() or .perform() on them)."""
    from selenium.webdriver import ActionChains

    return ActionChains(driver).move_to_element_with_offset(driver.find_element("id", "heatmap"),
                                                            *cell_offset(driver, ckpt, chunk))


def hover(driver, ckpt: int, chunk: int) -> str:
    """Point at a cell; the tooltip's text."""
    point_at(driver, ckpt, chunk).perform()
    tooltip = driver.find_element("id", "tooltip")
    wait_for(tooltip.is_displayed)
    return tooltip.text


def pixel(driver, x: float, y: float) -> tuple[int, int, int]:
    """The colour the canvas shows at CSS px (x, y) from its top-left corner."""
    return tuple(driver.execute_script(
        "const c = document.getElementById('heatmap'), r = window.devicePixelRatio || 1;"
        "return Array.from(c.getContext('2d').getImageData(Math.floor(arguments[0] * r), Math.floor(arguments[1] * r),"
        " 1, 1).data.slice(0, 3));", x, y))


def cell_pixel(driver, ckpt: int, chunk: int) -> tuple[int, int, int]:
    centre = cell_centre(driver, ckpt, chunk)
    return pixel(driver, centre["x"], centre["y"])
