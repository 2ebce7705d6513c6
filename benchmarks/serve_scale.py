"""`memsweep serve` at full size: how long each page takes cold, and the server's peak memory.

    python benchmarks/synthetic_output.py /tmp/synthetic-full           # 360 x 360 x 1000 = 129.6M rows, 1.8 GB
    python benchmarks/serve_scale.py /tmp/synthetic-full [--drop-caches] [--browser]

Starts `memsweep serve OUT --port 0` as a user would and asks for each page once: cold, in that this server has
read nothing of it before (each page and its JSON twin ask for a different cell or row); with --drop-caches the
kernel's page cache is emptied before every request too, as after a reboot (root only). Each is then asked again
(warm). Prints seconds per request, the time from starting the command to its printed URL, and the server's peak
RSS (VmHWM, /proc/<pid>/status) after all of it. An output with exposure counts adds the exposure heatmap grids
(their first request makes the one pass over every checkpoint that is then kept), a cell page ordered and filtered
by exposures and the sequence page of the most copied row. --browser also opens the overview in headless Chromium
(tests/chromium.py) and times the heatmap until drawn, then the cost of one hover and one zoom redraw at 360 x 360.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import polars as pl

from sweep.landed.reader import open_output

REPO = Path(__file__).resolve().parents[1]


def drop_page_cache() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as caches:
        caches.write("3")


def fetch(url: str) -> tuple[float, int]:
    """Seconds for one GET, and the body's size in bytes."""
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as response:
        body = response.read()
    return time.perf_counter() - started, len(body)


def peak_rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))


def pages(output: Path) -> list[tuple[str, str]]:
    """(page, path) pairs: the overview, then a cell and a sequence page, each with its JSON twin on another cell
    or row so that the twin is cold too."""
    landed = open_output(output)
    cells = landed.cells().select("ckpt", "chunk").collect().sort("ckpt", "chunk")
    (last, first_chunk), (_, other_chunk) = cells.row(-1), cells.row(-2)
    rows = (landed.sequences(last).filter(pl.col("chunk") == first_chunk).select("row").head(2)  # a census has no
            .collect()["row"].to_list())                                                           # probe rows
    wanted = [
        ("overview", "/"), ("overview: heatmap data", "/api/matrix"), ("overview: JSON twin", "/api/overview"),
        ("every cell (JSON)", "/api/cells"),
        ("cell page", f"/cell/{last}/{first_chunk}"), ("cell page: JSON twin", f"/cell/{last}/{other_chunk}.json"),
        ("sequence page", f"/sequence/{first_chunk}/{rows[0]}"),
        ("sequence page: JSON twin", f"/sequence/{first_chunk}/{rows[1]}.json"),
    ]
    if not landed.ledgers.scan_files():
        return wanted
    # A cell whose chunk its checkpoint has not trained on, and the most copied sequence of another chunk.
    unseen = cells.filter(pl.col("chunk") > pl.col("ckpt"))
    (mid, later), (_, other) = unseen.row(unseen.height // 2), unseen.row(unseen.height // 2 + 1)
    copied = (landed.exposures().filter(pl.col("chunk") == later).sort("window_count", descending=True)
              .select("row").head(1).collect().item())
    return wanted + [
        ("exposure heatmap metrics (first pass)", "/api/matrix/exposures"),
        ("cell page by exposures", f"/cell/{mid}/{later}?sort=exposures"),
        ("cell page by exposures: JSON twin", f"/cell/{mid}/{other}.json?sort=exposures&min_exposures=1"),
        ("sequence page of a copied row", f"/sequence/{later}/{copied}"),
    ]


def browser_timings(url: str) -> dict[str, float]:
    """Seconds until the heatmap is drawn, and milliseconds per hover and per zoom redraw, in headless Chromium."""
    sys.path.insert(0, str(REPO / "tests"))
    from chromium import chromium

    with chromium() as driver:
        started = time.perf_counter()
        driver.get(url)
        while not driver.execute_script("return document.getElementById('heatmap').dataset.ready === 'true'"):
            time.sleep(0.02)
        drawn = time.perf_counter() - started
        costs = driver.execute_script("""
            const canvas = document.getElementById('heatmap'), box = canvas.getBoundingClientRect();
            const centre = window.memsweepHeatmap.cellCenter(200, 100);
            const at = (dx) => ({clientX: box.left + centre.x + dx, clientY: box.top + centre.y, bubbles: true});
            let t = performance.now();
            for (let i = 0; i < 200; i++) canvas.dispatchEvent(new MouseEvent('mousemove', at(i % 40)));
            const hover = (performance.now() - t) / 200;
            t = performance.now();
            for (let i = 0; i < 20; i++) {
                canvas.dispatchEvent(new WheelEvent('wheel', {...at(0), deltaY: i < 10 ? -100 : 100}));
            }
            const zoom = (performance.now() - t) / 20;
            return {hover, zoom, nodes: document.getElementsByTagName('*').length};""")
    return {"heatmap drawn (s)": drawn, "hover (ms)": costs["hover"], "zoom redraw (ms)": costs["zoom"],
            "DOM elements": costs["nodes"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path)
    parser.add_argument("--drop-caches", action="store_true", help="empty the page cache before each cold request")
    parser.add_argument("--browser", action="store_true", help="also time the heatmap in headless Chromium")
    args = parser.parse_args()
    wanted = pages(args.output)
    if args.drop_caches:
        drop_page_cache()
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "sweep", "serve", str(args.output), "--port", "0"], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        url = next(word for word in line.split() if word.startswith("http://")).rstrip("/")
        print(f"server ready in {time.perf_counter() - started:.1f} s ({line.strip()})")
        results = []
        for name, path in wanted:
            if args.drop_caches:
                drop_page_cache()
            cold, size = fetch(url + path)
            warm, _ = fetch(url + path)
            results.append({"page": name, "path": path, "cold_s": round(cold, 3), "warm_s": round(warm, 3),
                            "bytes": size})
            print(f"{name:38} {path:52} cold {cold:6.3f} s  warm {warm:6.3f} s  {size / 1e6:8.2f} MB", flush=True)
        if args.browser:
            for name, value in browser_timings(url + "/").items():
                print(f"browser: {name}: {value:.3f}" if isinstance(value, float) else f"browser: {name}: {value}")
        print(f"server peak RSS: {peak_rss_of(server.pid) / 2**30:.2f} GiB")
        print(json.dumps(results))
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
