"""`memsweep serve`'s pages and their JSON, CSV and Parquet twins, against a tiny output with planted markup
(tests/explorer_world.py), in process through Starlette's TestClient; and what keeps it safe: loopback by
default, read-only, every bad parameter a one-line 4xx."""

from __future__ import annotations

import base64
import fnmatch
import io
import json
import shutil
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from starlette.testclient import TestClient

from tests.explorer_world import (FAILED_CELL, IMAGE, PLANTED_ROW, SCRIPT, _info, _rows, _sequences,
                                  build_explorer_output, open_explorer_output)
from sweep.cli import main
from sweep.analysis.examples import find_examples
from sweep.explorer.app import create_app
from sweep.explorer.data import ExplorerData
from sweep.exposures.history import ExposureHistory
from sweep.analysis.query import run_query
from sweep.landed.reader import LandedOutput, open_output
from sweep.landed.store import ResultStore, ScoredCell

REPO = Path(__file__).resolve().parents[1]


def client_for(output: Path, reader=open_output) -> TestClient:
    return TestClient(create_app(ExplorerData(output, open_reader=reader)), base_url="http://127.0.0.1")


@pytest.fixture(scope="module")
def client(explorer_output) -> TestClient:
    return client_for(explorer_output)


# ---- the same numbers as `memsweep query` ---------------------------------------------------------------


def test_api_cells_equals_memsweep_query_cell_for_cell(client, explorer_output):
    served = client.get("/api/cells").json()
    queried = run_query(explorer_output, "SELECT * FROM cells").sort("ckpt", "chunk").to_dicts()
    assert len(served) == len(queried) == 11
    assert served == queried


def test_cells_downloads_hold_the_view_as_csv_and_parquet(client, explorer_output):
    response = client.get("/api/cells.parquet?ckpt_min=1&ckpt_max=2&chunk_max=1")
    assert response.headers["content-disposition"] == 'attachment; filename="cells.parquet"'
    frame = pl.read_parquet(io.BytesIO(response.content))
    expected = run_query(explorer_output, "SELECT * FROM cells WHERE ckpt BETWEEN 1 AND 2 AND chunk <= 1 "
                                          "ORDER BY ckpt, chunk")
    assert frame.equals(expected)
    csv = pl.read_csv(io.BytesIO(client.get("/api/cells.csv?ckpt_min=3").content))
    assert csv.select("ckpt", "chunk").rows() == [(3, 0), (3, 1)]


def test_matrix_grid_holds_every_metric_and_marks_the_failed_cell(client, explorer_output):
    payload = client.get("/api/matrix").json()
    assert payload["checkpoints"] == [0, 1, 2, 3] and payload["chunks"] == [0, 1, 2]
    grid = np.frombuffer(base64.b64decode(payload["values"]["score"]), dtype="<f4").reshape(4, 3)
    cells = run_query(explorer_output, "SELECT ckpt, chunk, score FROM cells")
    for ckpt, chunk, score in cells.iter_rows():
        assert grid[ckpt, chunk] == pytest.approx(score, rel=1e-6)
    assert np.isnan(grid[FAILED_CELL]) and payload["failed"] == [list(FAILED_CELL)]
    assert [m["column"] for m in payload["metrics"]] == ["score", "full_match_rate", "mean_prefix_match", "nll",
                                                         "tf_accuracy"]


# ---- pages -------------------------------------------------------------------------------------------------


def test_overview_shows_facts_failures_and_metrics(client):
    page = client.get("/").text
    assert "11 of 12 planned" in page
    assert "ckpt 3, chunk 2" in page and "&lt;b&gt;at batch 1&lt;/b&gt;" in page  # the error is text, not markup
    assert '<option value="nll"' in page and '<canvas id="heatmap"' in page
    assert client.get("/?metric=nll").status_code == 200
    overview = client.get("/api/overview").json()
    assert overview["facts"]["cells"] == "11 of 12 planned" and overview["failures"][0]["attempts"] == 3


def test_cell_page_lists_sequences_in_show_order_decoded_with_markup_as_text(client, explorer_output):
    payload = client.get("/cell/2/1.json").json()
    shown = find_examples(open_output(explorer_output), 2, 1, top=100)
    assert [s["row"] for s in payload["sequences"]] == [e.row for e in shown]
    assert payload["decoding"] == {"ckpt": 2, "tokenizer": True, "why_not": None}
    planted = payload["sequences"][0]
    assert planted["row"] == PLANTED_ROW and planted["full_match"]
    assert SCRIPT in planted["prompt"] and IMAGE in planted["truth"] and planted["model"] == planted["truth"]
    partial = next(s for s in payload["sequences"] if not s["full_match"])
    hits = [hit for _, hit in partial["truth_spans"]]
    assert hits[0] and not hits[-1]  # right up to the first miss, wrong after it: the misses are marked
    page = client.get("/cell/2/1").text
    assert SCRIPT not in page and IMAGE not in page
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in page
    assert 'class="miss"' in page and 'class="hit"' in page


def test_cell_page_filters_sorts_and_pages(client):
    def rows(query: str) -> list[int]:
        return [s["row"] for s in client.get(f"/cell/2/0.json?{query}").json()["sequences"]]

    everything = client.get("/cell/2/0.json").json()
    assert everything["total"] == 6 and everything["sources"] == ["code", "records", "web"]
    assert rows("source=code") == [s["row"] for s in everything["sequences"] if s["source"] == "code"]
    assert all(s["full_match"] for s in client.get("/cell/2/0.json?full_match=yes").json()["sequences"])
    assert all(s["prefix_match"] >= 20 for s in client.get("/cell/2/0.json?min_prefix=20").json()["sequences"])
    assert rows("sort=row&order=asc") == sorted(rows("sort=row&order=asc"))
    nll = [s["nll"] for s in client.get("/cell/2/0.json?sort=nll").json()["sequences"]]
    assert nll == sorted(nll)
    assert rows("sort=row&order=asc&limit=2&offset=2") == rows("sort=row&order=asc")[2:4]
    csv = pl.read_csv(io.BytesIO(client.get("/cell/2/0.csv?full_match=no").content))
    assert 0 < csv.height < 6 and csv["row"].to_list() == rows("full_match=no")
    assert {"prompt", "truth", "model"} <= set(csv.columns)


def test_sequence_page_follows_one_row_across_checkpoints(client, explorer_output):
    store = open_output(explorer_output)
    row = 31  # chunk 1's row 31: memorized partly, more with training
    payload = client.get(f"/sequence/1/{row}.json").json()
    history = store.sequences().filter((pl.col("chunk") == 1) & (pl.col("row") == row)).sort("ckpt").collect()
    assert [p["ckpt"] for p in payload["checkpoints"]] == history["ckpt"].to_list() == [0, 1, 2, 3]
    assert [p["score"] for p in payload["checkpoints"]] == pytest.approx(history["score"].to_list())
    memorized = history.filter(pl.col("full_match"))["ckpt"].to_list()
    assert (payload["first_memorized"], payload["last_memorized"]) == (min(memorized), max(memorized))
    assert [p["full_match"] for p in payload["checkpoints"]] == history["full_match"].to_list()
    # Each checkpoint's misses are marked on the truth: right up to its exact prefix, wrong at the next position.
    for point in payload["checkpoints"]:
        hits = [hit for text, hit in point["truth_spans"] for _ in text]
        assert hits[0] == (point["prefix_match"] > 0) and (point["full_match"] or not all(hits))
    planted = client.get(f"/sequence/1/{PLANTED_ROW}.json").json()
    assert planted["first_memorized"] == 0 and planted["latest"]["ckpt"] == 3
    assert SCRIPT in planted["latest"]["prompt"] and IMAGE in planted["latest"]["model"]
    page = client.get(f"/sequence/1/{PLANTED_ROW}").text
    assert "<polyline" in page and "&lt;img src=x onerror=" in page and IMAGE not in page
    assert pl.read_csv(io.BytesIO(client.get(f"/sequence/1/{row}.csv").content)).height == 4


def test_text_shows_as_token_ids_with_the_reason_when_no_tokenizer(explorer_output, tmp_path):
    copy = tmp_path / "out"
    shutil.copytree(explorer_output, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["spec"]["model"]["source"] = str(tmp_path / "gone")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    payload = client_for(copy).get("/cell/1/0.json").json()
    assert payload["decoding"]["tokenizer"] is False and "gone" in payload["decoding"]["why_not"]
    assert payload["sequences"][0]["prompt"].startswith("[") and "<script>" not in payload["sequences"][0]["prompt"]


# ---- safety ------------------------------------------------------------------------------------------------

BAD_REQUESTS = [
    ("/cell/9/0", 404), ("/cell/3/2", 404), ("/cell/0/99999999999999999999999", 404), ("/cell/abc/0", 404),
    ("/cell/-1/0", 404), ("/cell/1/0.xml", 404), ("/sequence/0/424242", 404), ("/sequence/0/1e9", 404),
    ("/cell/1/0?limit=abc", 400), ("/cell/1/0?limit=0", 400), ("/cell/1/0?limit=99999999", 400),
    ("/cell/1/0?offset=-1", 400), ("/cell/1/0?offset=1e99", 400), ("/cell/1/0?sort=__class__", 400),
    ("/cell/1/0?sort=prompt_count", 400), ("/cell/1/0?min_exposures=-1", 400), ("/cell/1/0?max_exposures=x", 400),
    ("/api/matrix/exposures?x=1", 400), ("/cell/1/0?full_match=maybe", 400),
    ("/cell/1/0?order=sideways", 400), ("/cell/1/0?limit=1&limit=2", 400), ("/cell/1/0?nonsense=1", 400),
    ("/cell/1/0?source=%00%01", 400), ("/cell/1/0?min_prefix=" + "9" * 5000, 400), ("/?metric=evil", 400),
    ("/?metric=n", 400), ("/api/cells?ckpt_min=5&ckpt_max=1", 400), ("/api/cells?chunk_min=x", 400),
    ("/api/cells.exe", 404), ("/api/matrix?x=1", 400), ("/sequence/0/1?sort=row", 400),
]


@pytest.mark.parametrize("url, status", BAD_REQUESTS)
def test_bad_requests_are_a_one_line_4xx(client, url, status):
    response = client.get(url)
    assert response.status_code == status, response.text
    text = response.text
    assert "\n" not in text.strip() and len(text) < 600 and "Traceback" not in text and text.strip()


LEAVING_PATHS = ["/static/../manifest.json", "/static/%2e%2e/%2e%2e/store.py", "/static/..%2f..%2fapp.py",
                 "/static//etc/passwd", "/static/%2fetc%2fpasswd", "/cell/..%2f..%2fmanifest.json/0",
                 "/sequence/%2e%2e/0", "/../../etc/passwd", "/manifest.json", "/ledger/probes.json"]


@pytest.mark.parametrize("path", LEAVING_PATHS)
def test_no_path_leaves_the_shipped_files(client, path):
    response = client.get(path)
    assert response.status_code == 404, response.text
    assert "identity" not in response.text and "root:" not in response.text and "import" not in response.text


def test_browsing_writes_nothing(explorer_output, served_explorer):
    def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
        return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}

    model = explorer_output.parent / "model"
    before = snapshot(explorer_output), snapshot(model)
    client = client_for(explorer_output)
    for url in ["/", "/?metric=nll", "/api/overview", "/api/matrix", "/api/cells", "/api/cells.csv",
                "/api/cells.parquet", "/cell/2/1", "/cell/2/1.json", "/cell/2/1.csv", "/cell/2/1.parquet",
                "/cell/0/2?source=web", f"/sequence/1/{PLANTED_ROW}", f"/sequence/1/{PLANTED_ROW}.parquet",
                "/cell/3/2", "/cell/1/0?limit=abc"]:
        client.get(url)
    url = served_explorer[0]
    for path in ["/", "/cell/2/1", f"/sequence/0/{PLANTED_ROW}"]:
        urllib.request.urlopen(url + path).read()
    assert (snapshot(explorer_output), snapshot(model)) == before


def test_serves_what_has_landed_while_a_sweep_writes(explorer_output, tmp_path):
    copy = tmp_path / "out"
    shutil.copytree(explorer_output, copy)
    client = client_for(copy)
    assert len(client.get("/api/cells").json()) == 11 and client.get("/cell/3/2").status_code == 404
    ckpt, chunk = FAILED_CELL
    rows = _rows(_tokenizer_of(copy), chunk)
    ResultStore(copy).write_cells(ckpt, [ScoredCell(chunk, _sequences(ckpt, chunk, rows), _info(ckpt, chunk))])
    assert len(client.get("/api/cells").json()) == 12
    assert client.get("/cell/3/2").status_code == 200
    assert client.get("/api/overview").json()["failures"] == []


def _tokenizer_of(output: Path):
    from tokenizers import Tokenizer

    spec = json.loads((output / "manifest.json").read_text())["spec"]
    return Tokenizer.from_file(str(Path(spec["model"]["source"]) / "ckpt_003" / "tokenizer.json"))


def test_an_output_where_nothing_landed_yet_says_so(tmp_path):
    client = client_for(open_explorer_output(tmp_path, cells="diagonal").output)
    assert "No cell has landed yet" in client.get("/").text
    assert client.get("/api/cells").json() == []
    assert client.get("/api/overview").json()["facts"]["cells"] == "0 of 3 planned"  # the diagonal of 4 x 3
    assert client.get("/cell/0/0").status_code == 404


def test_exposures_appear_only_once_landed(tmp_path):
    plain = client_for(build_explorer_output(tmp_path, scans=False))
    payload = plain.get("/cell/2/1.json").json()
    assert "exposures" not in payload["sequences"][0] and payload["seen"] is None
    assert "min_exposures" not in plain.get("/cell/2/1").text
    assert plain.get("/cell/2/1.json?min_exposures=1").status_code == 400
    assert plain.get("/cell/2/1.json?sort=exposures").status_code == 400
    assert plain.get("/api/matrix/exposures").json()["metrics"] == []
    assert plain.get(f"/sequence/1/{PLANTED_ROW}.json").json()["exposures"] is None
    assert "exposure counts" not in plain.get("/api/overview").json()["facts"]


def test_cell_page_shows_sorts_and_filters_exposures(client):
    # checkpoint 0 has trained on chunk 0 only: chunk 1's row 1 was copied 4 times into it, and the planted row
    # (the same tokens in every chunk) occurs there once; the other rows occur only in chunk 1
    payload = client.get("/cell/0/1.json?sort=exposures").json()
    got = {s["row"]: (s["exposures"], s["window_count"]) for s in payload["sequences"]}
    assert got == {1: (4, 5), PLANTED_ROW: (1, 3), 11: (0, 1), 21: (0, 1), 31: (0, 1), 41: (0, 1)}
    assert [s["row"] for s in payload["sequences"]][:2] == [1, PLANTED_ROW]
    # row 1 (exact prefix 0) and the planted row (memorized) were seen; the four others never
    assert payload["seen"] == {"covered": 6, "n_seen": 2, "full_match_rate_seen": 0.5,
                               "full_match_rate_never_seen": 0.0}
    assert "cover 3 of the 3 chunk files" in payload["exposure_coverage"]
    window = client.get("/cell/0/1.json?min_exposures=1&max_exposures=2").json()
    assert [s["row"] for s in window["sequences"]] == [PLANTED_ROW] and window["total"] == 1
    csv = pl.read_csv(io.BytesIO(client.get("/cell/0/1.csv?sort=window_count").content))
    assert csv["window_count"].to_list()[:2] == [5, 3] and csv["exposures"].to_list()[:2] == [4, 1]
    page = client.get("/cell/0/1").text
    assert 'name="max_exposures"' in page and "exposures by this ckpt" in page
    assert "2 of the 6 sequences with known exposures were seen by checkpoint 0" in page


@pytest.mark.parametrize("query, filters", [
    ("sort=exposures", dict(sort="exposures")),
    ("min_exposures=1&max_exposures=4&sort=exposures", dict(min_exposures=1, max_exposures=4, sort="exposures")),
    ("full_match=no&min_prefix=1", dict(full_match=False, min_prefix=1)),
    ("source=web", dict(source="web")),
])
def test_cell_page_selects_and_orders_as_show_does(client, explorer_output, query, filters):
    # one selection (sweep/analysis/selection.py): the cell page lists what `memsweep show` would, in its order
    landed = open_output(explorer_output)
    history = ExposureHistory.read(landed)
    for ckpt, chunk in ((0, 1), (1, 0), (2, 1), (3, 0)):
        listed = [s["row"] for s in client.get(f"/cell/{ckpt}/{chunk}.json?{query}&limit=1000").json()["sequences"]]
        shown = find_examples(landed, ckpt, chunk, top=1000, history=history, **filters)
        assert listed == [example.row for example in shown], (ckpt, chunk)


def test_sequence_page_shows_exposures_file_by_file(client):
    payload = client.get("/sequence/2/12.json").json()
    exposures = payload["exposures"]
    assert exposures["covered"] and [exposures[name] for name in ("window_count", "prompt_count", "first_chunk",
                                                                   "last_chunk", "chunks_scanned")] == [4, 6, 0, 2, 3]
    assert exposures["files"] == [{"seen_chunk": 0, "window_count": 2, "prompt_count": 2},
                                  {"seen_chunk": 1, "window_count": 1, "prompt_count": 3},
                                  {"seen_chunk": 2, "window_count": 1, "prompt_count": 1}]
    assert [point["exposures"] for point in payload["checkpoints"]] == [2, 3, 4]  # (3, 2) failed
    prompt_only = client.get("/sequence/0/20.json").json()["exposures"]["files"]
    assert prompt_only[-1] == {"seen_chunk": 2, "window_count": 0, "prompt_count": 3}
    csv = pl.read_csv(io.BytesIO(client.get("/sequence/2/12.csv").content))
    assert csv["exposures"].to_list() == [2, 3, 4]
    page = client.get("/sequence/2/12").text
    assert "(its own)" in page and "occur 4 times in the 3 chunk files scanned for it" in page


def test_heatmap_gains_exposure_metrics_split_by_seen(client):
    payload = client.get("/api/matrix/exposures").json()
    assert payload["checkpoints"] == [0, 1, 2, 3] and payload["chunks"] == [0, 1, 2]
    assert [m["column"] for m in payload["metrics"]] == ["seen_share", "full_match_rate_never_seen",
                                                         "full_match_rate_seen"]

    def grid(name: str) -> np.ndarray:
        return np.frombuffer(base64.b64decode(payload["values"][name]), dtype="<f4").reshape(4, 3)

    seen = grid("seen_share")
    assert seen[:, 0].tolist() == [1, 1, 1, 1] and np.isnan(seen[FAILED_CELL])
    assert seen[0, 1] == pytest.approx(2 / 6) and seen[1, 2] == pytest.approx(2 / 6) and seen[2, 2] == 1
    never = grid("full_match_rate_never_seen")
    assert np.isnan(never[2, 1]) and never[0, 1] == 0  # a trained-on chunk has no never-seen sequence
    assert "cover 3 of the 3" in client.get("/api/overview").json()["facts"]["exposure counts"]
    assert client.get("/?metric=seen_share").status_code == 200


def test_only_loopback_host_names_are_answered(client):
    assert client.get("/", headers={"Host": "evil.example:8765"}).status_code == 400
    assert client.get("/", headers={"Host": "localhost:8765"}).status_code == 200


def test_pages_forbid_inline_script_and_foreign_loads(client):
    policy = client.get("/cell/2/1").headers["content-security-policy"]
    assert "default-src 'self'" in policy and "unsafe-inline" not in policy


# ---- the command ---------------------------------------------------------------------------------------------


def test_serve_command_prints_its_url_on_loopback(served_explorer):
    url, line, log = served_explorer
    assert url.startswith("http://127.0.0.1:") and "read-only" in line
    with urllib.request.urlopen(url + "/api/cells") as response:
        assert len(json.load(response)) == 11
    assert "warning" not in log.read_text()


def test_serve_warns_what_a_non_local_bind_exposes(explorer_output, monkeypatch, capsys):
    import uvicorn

    served = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets: served.append(sockets[0].getsockname())
                        or sockets[0].close())
    assert main(["serve", str(explorer_output), "--port", "0"]) == 0
    out, err = capsys.readouterr()
    assert served[0][0] == "127.0.0.1" and "http://127.0.0.1:" in out and err == ""
    assert main(["serve", str(explorer_output), "--host", "0.0.0.0", "--port", "0"]) == 0
    out, err = capsys.readouterr()
    assert served[1][0] == "0.0.0.0"
    assert "not on loopback" in err and "anyone who can reach this machine" in err and "no password" in err


def test_serve_refuses_a_folder_that_is_not_an_output(tmp_path, capsys):
    assert main(["serve", str(tmp_path)]) == 2
    assert "not a memsweep output" in capsys.readouterr().err


SERVE_WITHOUT_PLOTTING = """
import sys
from starlette.testclient import TestClient
import sweep.cli, sweep.explorer.server  # what `memsweep serve` imports
from sweep.explorer.app import create_app
from sweep.explorer.data import ExplorerData
from sweep.exposures.history import ExposureHistory
client = TestClient(create_app(ExplorerData(sys.argv[1])), base_url="http://127.0.0.1")
for url in ("/", "/api/overview", "/api/matrix/exposures", "/cell/2/1", "/sequence/1/" + sys.argv[2]):
    assert client.get(url).status_code == 200, url
print(sorted(name for name in sys.modules if name.split(".")[0] == "matplotlib"))
"""


def test_serving_pages_never_loads_matplotlib(explorer_output):
    # The explorer's labels and run facts live beside the analyses (sweep/analysis/labels.py), not in the report that
    # draws with matplotlib: `memsweep serve` starts without it, and no page it serves loads it.
    shown = subprocess.run([sys.executable, "-c", SERVE_WITHOUT_PLOTTING, str(explorer_output), str(PLANTED_ROW)],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert shown.stdout.splitlines()[-1] == "[]"


def test_pages_and_scripts_ship_as_package_data():
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = REPO / "sweep" / "explorer"
    files = [p.relative_to(shipped).as_posix() for p in shipped.rglob("*")
             if p.is_file() and p.parent != shipped and "__pycache__" not in p.parts]
    assert files and all(any(fnmatch.fnmatch(f, g) for g in patterns["sweep.explorer"]) for f in files), files
    assert "http" not in (shipped / "static" / "heatmap.js").read_text().replace("http.", "")  # no CDN, nothing remote
