"""What a page shows, as JSON, CSV or Parquet: the same data, for scripts, notebooks and spreadsheets."""

from __future__ import annotations

import io
import json
import math

import polars as pl
from starlette.responses import Response

FORMATS = ("json", "csv", "parquet")
MEDIA_TYPES = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
}


def frame_response(frame: pl.DataFrame, fmt: str, name: str) -> Response:
    """`frame` as a JSON array of row objects (NaN as null), a CSV file or a Parquet file named `name`.<fmt>."""
    if fmt == "json":
        body = frame.write_json().encode()
    elif fmt == "csv":
        body = frame.write_csv().encode()
    else:
        buffer = io.BytesIO()
        frame.write_parquet(buffer)
        body = buffer.getvalue()
    headers = {} if fmt == "json" else {"Content-Disposition": f'attachment; filename="{name}.{fmt}"'}
    return Response(body, media_type=MEDIA_TYPES[fmt], headers=headers)


def json_response(payload: object, status_code: int = 200) -> Response:
    """`payload` as JSON, NaN and infinities as null (JSON has no NaN; Starlette's JSONResponse refuses it)."""
    body = json.dumps(_finite(payload), ensure_ascii=False, separators=(",", ":"), default=str)
    return Response(body, status_code=status_code, media_type=MEDIA_TYPES["json"])


def _finite(value: object) -> object:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value
