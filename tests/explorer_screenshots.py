"""The README's explorer screenshots, taken in headless Chromium against a running `memsweep serve`.

    make demo                                                  # results/demo, in the clone
    .venv/bin/memsweep serve results/demo --port 8765 &        # the output as a user names it: the page header shows it
    .venv/bin/python -m tests.explorer_screenshots http://127.0.0.1:8765 docs/

Writes docs/explorer-overview.png (the heatmap with a cell's tooltip showing) and docs/explorer-cell.png. Serve the
output by its relative path, from the clone: the header of every page shows the path `serve` was given.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tests.chromium import chromium
from tests.heatmap_page import open_overview, point_at

OVERVIEW_HOVER = (6, 3)  # the cell whose tooltip the overview shot shows: (ckpt, chunk)
CELL_PAGE = "/cell/7/6?full_match=no&limit=10"  # partly memorized rows: the misses show


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="where memsweep serve listens, e.g. http://127.0.0.1:8765")
    parser.add_argument("folder", type=Path, help="where the PNGs go")
    args = parser.parse_args()
    url = args.url.rstrip("/")
    with chromium(width=1280, height=960) as driver:
        open_overview(driver, url)
        point_at(driver, *OVERVIEW_HOVER).perform()
        driver.save_screenshot(str(args.folder / "explorer-overview.png"))
        driver.get(url + CELL_PAGE)
        driver.save_screenshot(str(args.folder / "explorer-cell.png"))


if __name__ == "__main__":
    main()
