"""The explorer's routes: each page is a view of one read, and the same read is public as JSON, CSV and Parquet.

    /                               overview: the checkpoint x chunk heatmap, the run's facts, failures
    /api/overview                   its facts, failures and metrics (JSON)
    /api/matrix                     the heatmap's numbers: every cell metric as a float32 grid (base64, JSON)
    /api/matrix/exposures           the same for the metrics from exposure counts (empty before counts land)
    /api/cells[.csv|.parquet]       every landed cell (ckpt_min/ckpt_max/chunk_min/chunk_max narrow it)
    /cell/{ckpt}/{chunk}[.json|.csv|.parquet]       a cell's numbers and its sequences, decoded
    /sequence/{chunk}/{row}[.json|.csv|.parquet]    one training row across every checkpoint

Read-only by construction: only GET (and HEAD) routes, and every read goes through `ExplorerData`. A bad
parameter is a 400, an unknown cell or row a 404, each with one line of text; no traceback reaches a client.
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import polars as pl
from jinja2 import Environment, PackageLoader
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.datastructures import MutableHeaders
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from actors.protocol import one_line
from sweep.analysis.examples import VISIBLE_WHITESPACE
from sweep.explorer import params
from sweep.explorer.data import (HISTORY_COLUMNS, SEQUENCE_COLUMNS, SEQUENCE_SORTS, BadQuery, CellMatrix,
                                 ExplorerData, NotLanded)
from sweep.explorer.exposures import CELL_EXPOSURE_COLUMNS, EXPOSURE_SORTS
from sweep.explorer.downloads import FORMATS, frame_response, json_response
from sweep.explorer.trajectory import trajectory
from sweep.landed.schema import SEQUENCE_SCHEMA

STATIC = Path(__file__).parent / "static"
# Defence in depth: training text is escaped by the templates; were anything to slip through, the browser
# would still run no inline script or event handler and load nothing from elsewhere.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
LOCAL_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
SEQUENCE_TYPES = {"ckpt": pl.Int32(), **SEQUENCE_SCHEMA}
HISTORY_SCHEMA = {"chunk": pl.Int32(), "row": pl.Int64(),
                  **{name: SEQUENCE_TYPES[name] for name in HISTORY_COLUMNS if name != "match_mask"}}
CELL_PAGE_COLUMNS = [("row", "row"), ("source", "source"), ("score", "score"), ("matches", "matches"),
                     ("prefix_match", "exact prefix"), ("full_match", "full match"), ("nll", "NLL"),
                     ("tf_accuracy", "tf accuracy")]
EXPOSURE_PAGE_COLUMNS = [("exposures", "exposures by this ckpt"), ("window_count", "in all scanned files")]


def create_app(data: ExplorerData, allowed_hosts: list[str] | None = None) -> Starlette:
    """The ASGI app over `data`. `allowed_hosts`: Host headers answered (default: loopback names only, so a web
    page elsewhere cannot reach this server through DNS rebinding); ["*"] answers any."""
    pages = Pages(data)
    routes = [
        Route("/", pages.overview),
        Route("/api/overview", pages.overview_json),
        Route("/api/matrix", pages.matrix),
        Route("/api/matrix/exposures", pages.exposure_matrix),
        Route("/api/cells", pages.cells),
        Route("/api/cells.{fmt}", pages.cells),
        Route("/cell/{ckpt:int}/{chunk:int}", pages.cell),
        Route("/cell/{ckpt:int}/{chunk:int}.{fmt}", pages.cell),
        Route("/sequence/{chunk:int}/{row:int}", pages.sequence),
        Route("/sequence/{chunk:int}/{row:int}.{fmt}", pages.sequence),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or LOCAL_HOSTS),
                    Middleware(SecurityHeaders)],
        exception_handlers={HTTPException: _http_error, params.BadParameter: _bad_request, BadQuery: _bad_request,
                            NotLanded: _not_found, Exception: _server_error},
    )


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every response (a plain ASGI middleware: it never buffers a body)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(SECURITY_HEADERS)
            await send(message)

        await self.app(scope, receive, send_with_headers)


class Pages:
    """The route handlers (plain functions: Starlette runs them in its thread pool, so Polars never blocks the
    event loop)."""

    def __init__(self, data: ExplorerData):
        self.data = data
        self.templates = Environment(loader=PackageLoader("sweep.explorer", "templates"), autoescape=True,
                                     trim_blocks=True, lstrip_blocks=True)
        self.templates.filters["number"] = _number
        self.templates.filters["visible"] = lambda text: text.translate(VISIBLE_WHITESPACE)

    def render(self, template: str, **context) -> HTMLResponse:
        page = self.templates.get_template(template)
        return HTMLResponse(page.render(run=self.data.run_name(), output=str(self.data.output), **context))

    # ---- overview ------------------------------------------------------------------------------

    def overview(self, request: Request) -> Response:
        params.check_names(request.query_params, ["metric"])
        matrix = self.data.matrix()
        columns = [metric.column for metric in matrix.metrics]
        default = columns[0] if columns else ""
        # an exposure metric's grid loads after the page (/api/matrix/exposures); its name is valid before
        allowed = columns + self.data.exposure_metric_names()
        chosen = params.metric(request.query_params, allowed, default) if columns else default
        return self.render("overview.html", metrics=matrix.metrics, metric=chosen, landed=matrix.landed,
                           facts=self.data.facts(), failures=self.data.failures())

    def overview_json(self, request: Request) -> Response:
        params.check_names(request.query_params, [])
        matrix = self.data.matrix()
        return json_response({
            "run": self.data.run_name(), "facts": dict(self.data.facts()), "failures": self.data.failures(),
            "metrics": [{"column": m.column, "label": m.label, "lower_is_memorized": m.lower_is_memorized}
                        for m in matrix.metrics],
            "cells_landed": matrix.landed, "checkpoints": matrix.ckpts, "chunks": matrix.chunks,
        })

    def matrix(self, request: Request) -> Response:
        params.check_names(request.query_params, [])
        failed = [[f["ckpt"], f["chunk"]] for f in self.data.failures()]
        return json_response({**_grids(self.data.matrix()), "failed": failed})

    def exposure_matrix(self, request: Request) -> Response:
        params.check_names(request.query_params, [])
        matrix = self.data.exposure_matrix()
        if matrix is None:
            return json_response({"checkpoints": [], "chunks": [], "cells_landed": 0, "metrics": [], "values": {}})
        return json_response(_grids(matrix))

    def cells(self, request: Request) -> Response:
        fmt = _format(request, default="json")
        params.check_names(request.query_params, params.CELLS_PARAMS)
        frame = self.data.cells(params.id_range(request.query_params, "ckpt"),
                                params.id_range(request.query_params, "chunk"))
        return frame_response(frame, fmt, "cells")

    # ---- a cell --------------------------------------------------------------------------------

    def cell(self, request: Request) -> Response:
        fmt = _format(request, default="html")
        ckpt, chunk = request.path_params["ckpt"], request.path_params["chunk"]
        query = params.sequence_query(request.query_params, self.data.has_exposures())
        view = self.data.cell_view(ckpt, chunk, query)
        if fmt == "json":
            return json_response({
                "cell": view.cell, "decoding": view.decoding.as_record(), "total": view.total,
                "offset": query.offset, "limit": query.limit, "sort": query.sort,
                "order": "desc" if query.descending else "asc", "sources": view.sources,
                "seen": view.seen, "exposure_coverage": view.coverage,
                "sequences": [sequence.as_record() for sequence in view.sequences],
            })
        if fmt != "html":
            rows = [{key: value for key, value in s.as_record().items() if not key.endswith("_spans")}
                    for s in view.sequences]
            return frame_response(_rows_frame(rows, view.has_exposures), fmt, f"cell-{ckpt}-{chunk}")
        columns = [*CELL_PAGE_COLUMNS, *(EXPOSURE_PAGE_COLUMNS if view.has_exposures else [])]
        sorts = [*SEQUENCE_SORTS, *(EXPOSURE_SORTS if view.has_exposures else ())]
        return self.render("cell.html", view=view, query=query, ckpt=ckpt, chunk=chunk, columns=columns, sorts=sorts,
                           sort_links=_sort_links(request, query, sorts), neighbours=self._neighbours(ckpt, chunk),
                           links=_page_links(request, query, view.total))

    def _neighbours(self, ckpt: int, chunk: int) -> dict[str, tuple[int, int] | None]:
        """The landed cells next to this one along each axis (for the page's arrows)."""
        landed = self.data.cells().select("ckpt", "chunk")
        same_chunk = sorted(landed.filter(pl.col("chunk") == chunk)["ckpt"].to_list())
        same_ckpt = sorted(landed.filter(pl.col("ckpt") == ckpt)["chunk"].to_list())

        def step(values: list[int], here: int, direction: int) -> int | None:
            index = values.index(here) + direction if here in values else -1
            return values[index] if 0 <= index < len(values) else None

        before, after = step(same_chunk, ckpt, -1), step(same_chunk, ckpt, 1)
        left, right = step(same_ckpt, chunk, -1), step(same_ckpt, chunk, 1)
        return {"earlier checkpoint": None if before is None else (before, chunk),
                "later checkpoint": None if after is None else (after, chunk),
                "previous chunk": None if left is None else (ckpt, left),
                "next chunk": None if right is None else (ckpt, right)}

    # ---- a sequence ----------------------------------------------------------------------------

    def sequence(self, request: Request) -> Response:
        fmt = _format(request, default="html")
        params.check_names(request.query_params, [])
        chunk, row = request.path_params["chunk"], request.path_params["row"]
        view = self.data.sequence_view(chunk, row)
        if fmt == "json":
            return json_response({
                "chunk": chunk, "row": row, "source": view.source, "decoding": view.decoding.as_record(),
                "latest": view.latest.as_record() if view.latest else None,
                "first_memorized": view.first_memorized, "last_memorized": view.last_memorized,
                "exposures": view.exposures.as_record() if view.exposures else None,
                "checkpoints": [point.as_record() for point in view.checkpoints],
            })
        if fmt != "html":
            schema = {**HISTORY_SCHEMA, **({"exposures": pl.Int64} if view.exposures else {})}
            history = pl.DataFrame([point.numbers for point in view.checkpoints], schema=schema)
            return frame_response(history, fmt, f"sequence-{chunk}-{row}")
        numbers = [point.numbers for point in view.checkpoints]
        length = self._continuation_len()
        timeline = self.data.timeline()
        chart = trajectory(
            [n["ckpt"] for n in numbers], [n["score"] for n in numbers],
            [None if n["prefix_match"] is None or not length else n["prefix_match"] / length for n in numbers],
            [bool(n["full_match"]) for n in numbers], timeline.first_trained_by(chunk, row),
            f"trained on chunk {chunk}" if not timeline.step_indexed else
            f"trained on (step {timeline.first_trained_by(chunk, row)})")
        return self.render("sequence.html", view=view, chart=chart)

    def _continuation_len(self) -> int | None:
        """l, for the prefix line: the manifest's continuation length."""
        identity = self.data.manifest().get("identity", {})
        value = identity.get("memorization.continuation_len")
        return int(value) if value else None


# ---- helpers ---------------------------------------------------------------------------------------


def _format(request: Request, default: str) -> str:
    fmt = request.path_params.get("fmt", default)
    if fmt != default and fmt not in FORMATS:
        raise HTTPException(404, f"no such format .{fmt[:20]} (use .json, .csv or .parquet)")
    return fmt


def _rows_frame(rows: list[dict], has_exposures: bool) -> pl.DataFrame:
    """A cell page's decoded rows as a flat table (one schema whether or not the page has rows)."""
    schema = {**{name: SEQUENCE_TYPES[name] for name in SEQUENCE_COLUMNS},
              **({name: pl.Int64 for name in CELL_EXPOSURE_COLUMNS} if has_exposures else {}),
              "prompt": pl.String, "truth": pl.String, "model": pl.String}
    return pl.DataFrame(rows, schema=schema)


def _grids(matrix: CellMatrix) -> dict:
    """A heatmap matrix as JSON: its axes, metrics and every grid as base64 float32."""
    return {
        "checkpoints": matrix.ckpts, "chunks": matrix.chunks, "cells_landed": matrix.landed,
        "metrics": [{"column": m.column, "label": m.label, "lower_is_memorized": m.lower_is_memorized}
                    for m in matrix.metrics],
        "encoding": "base64 of little-endian float32, row-major [checkpoint][chunk], NaN where no cell landed",
        "values": {name: base64.b64encode(grid.astype("<f4").tobytes()).decode()
                   for name, grid in matrix.values.items()},
        "staircase": matrix.staircase,  # per checkpoint, where the seen | unseen line crosses its row (in columns)
    }


def _sort_links(request: Request, query: params.SequenceQuery, sorts: list[str]) -> dict[str, dict]:
    """Per sortable column: the URL that orders by it (clicking the current one flips the direction), and the
    arrow that marks the current one."""
    links = {}
    for column in sorts:
        current = column == query.sort
        order = ("asc" if query.descending else "desc") if current else None
        url = request.url.remove_query_params(["sort", "order", "offset"]).include_query_params(sort=column)
        if order:
            url = url.include_query_params(order=order)
        arrow = (" ▼" if query.descending else " ▲") if current else ""
        links[column] = {"url": str(url.replace(scheme="", netloc="")), "arrow": arrow}
    return links


def _page_links(request: Request, query: params.SequenceQuery, total: int) -> dict[str, str | None]:
    """URLs of the previous and next page, and of this view as JSON, CSV and Parquet."""
    here = request.url

    def with_offset(offset: int) -> str:
        return str(here.include_query_params(offset=offset).replace(scheme="", netloc=""))

    links = {
        "previous": with_offset(max(query.offset - query.limit, 0)) if query.offset > 0 else None,
        "next": with_offset(query.offset + query.limit) if query.offset + query.limit < total else None,
    }
    for fmt in FORMATS:
        links[fmt] = f"{here.path}.{fmt}" + (f"?{here.query}" if here.query else "")
    return links


def _number(value: object, digits: int = 4) -> str:
    """A cell or sequence number for a page: 4 significant digits, '–' when missing."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "–" if np.isnan(value) else f"{value:.{digits}g}"
    return str(value)


async def _http_error(request: Request, error: HTTPException) -> Response:
    return PlainTextResponse(one_line(str(error.detail)), status_code=error.status_code)


async def _bad_request(request: Request, error: Exception) -> Response:
    return PlainTextResponse(one_line(error), status_code=400)


async def _not_found(request: Request, error: Exception) -> Response:
    return PlainTextResponse(one_line(error), status_code=404)


async def _server_error(request: Request, error: Exception) -> Response:
    """A damaged output or a bug: one line to the client; the traceback goes to the server's log only."""
    return PlainTextResponse(f"server error: {one_line(error)}", status_code=500)

