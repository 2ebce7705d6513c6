"""olah (a self-hosted Hugging Face Hub mirror) over local git repositories, answering as huggingface.co does.

    python tests/hub_world_server.py --config olah.toml --port 8123 --log-dir logs --request-log requests.jsonl

Started as a subprocess by `tests.hub_world.serve_hub`; the table of what the real Hub does, what olah 0.5.4 does
in offline mirror mode, and what this file changes is in that module's docstring. olah's installed files are not
touched: `HubConformance` is an ASGI middleware around olah's unmodified FastAPI app. For requests that name a
repository present in olah's mirrors it

- resolves the revision itself (branch, tag or full commit sha, as the Hub accepts) and answers an unknown one
  404 `RevisionNotFound`; a known one is handed to olah as the commit sha, so one request sees one commit;
- answers a path missing from an existing revision 404 `EntryNotFound` (with `X-Repo-Commit`, which
  huggingface_hub uses to cache the file's absence), for `resolve` and for `tree/<rev>/<path>`;
- answers `HEAD .../resolve/...` itself with the Hub's metadata headers (quoted `ETag`, `X-Repo-Commit`,
  `Content-Length`, and for LFS files `X-Linked-Etag` / `X-Linked-Size` read from the pointer), and on
  `GET .../resolve/...` puts the same headers on olah's bytes and cuts them to a `Range: bytes=...` request
  (206 with `Content-Range`, 416 past the end);
- answers `GET /api/<type>/<org>/<name>` (no revision) with the default branch, which olah offline can only
  serve from its own cache (empty for a local mirror), and lists the repository root without olah's 307;
- fills `lastCommit` (last commit touching the path, on the requested revision) into `tree?expand=true` and
  `paths-info` with `expand`, which olah computes on HEAD (500 for a path HEAD's history never had) or drops;
- reshapes olah's `commits` entries as the Hub's (`title` = first line, `message` = the rest, `authors[].user`):
  huggingface_hub's `list_repo_commits` raises KeyError on olah's `authors[].name`.

Everything else (every JSON body but those two changes, and every byte of every file) is olah's answer. Each request
is appended to `--request-log` as one JSON line (method, path as requested, query, range, status, the response's
Content-Length, X-Error-Code), written before the response starts, so a client that got an answer finds its line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode

from git import BadName, BadObject, Repo  # GitPython: olah's own dependency, the library it reads mirrors with

LFS_POINTER = re.compile(
    rb"version https://git-lfs\.github\.com/spec/v[0-9]\noid sha256:([0-9a-z]{64})\nsize ([0-9]+?)\n")
# olah treats a blob of 121..149 bytes matching LFS_POINTER as a pointer and serves .git/lfs/objects/<oid>
# instead (olah/mirror/repos.py); the wrapper must use the same rule to announce the same bytes.
LFS_POINTER_SIZES = range(121, 150)
# A file of this name beside the request log makes the server ignore Range requests until it is deleted
# (HubServer.ignore_ranges), so one server can answer both ways within one test module.
IGNORE_RANGE_FLAG = "ignore-range"
# A file of this name beside the request log holds, one per line, paths inside a repository (`train/train_002.jsonl`)
# whose GETs wait while the line is there (HubServer.hold): a test releases them once the state it needs is reached.
# A held request is served after HOLD_GUARD_S whatever the file says, so a test that never releases fails, not hangs.
HOLD_FLAG = "hold-paths"
HOLD_GUARD_S = 300
FULL_SHA = re.compile(r"[0-9a-f]{40}")
API = re.compile(r"/api/(?P<type>models|datasets|spaces)/(?P<org>[^/]+)/(?P<name>[^/]+)"
                 r"(?:/(?P<op>revision|tree|paths-info|commits)/(?P<rev>[^/]+)(?P<rest>/.*)?)?")
RESOLVE = re.compile(r"/(?:(?P<type>datasets|spaces)/)?(?P<org>[^/]+)/(?P<name>[^/]+)"
                     r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)")
TRUE_VALUES = {"1", "true", "True"}


@dataclass(frozen=True)
class FileMeta:
    """What the Hub says of one file at one commit: `size` in bytes of the content (not of an LFS pointer)."""

    commit: str
    size: int
    blob_id: str  # git blob sha1 of what is committed (the pointer, for LFS files)
    lfs_sha256: str | None

    def headers(self) -> list[tuple[bytes, bytes]]:
        etag = f'"{self.lfs_sha256 or self.blob_id}"'
        headers = [(b"x-repo-commit", self.commit), (b"etag", etag), (b"accept-ranges", "bytes")]
        if self.lfs_sha256 is not None:
            headers += [(b"x-linked-etag", etag), (b"x-linked-size", str(self.size))]
        return [(name, value.encode()) for name, value in headers]


class HubConformance:
    """ASGI middleware around olah's app; `mirrors` are olah's mirrors-path folders, searched in order as olah does.

    `conform=False` only logs requests: olah answers everything as installed (to see what the wrapper changes).
    """

    def __init__(self, app, mirrors: list[Path], request_log: Path, conform: bool = True):
        self.app, self.mirrors, self.request_log, self.conform = app, mirrors, request_log, conform

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":  # lifespan: olah's own startup
            return await self.app(scope, receive, send)
        send = self._logged(scope, send)
        if not self.conform:
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path.startswith("/api/"):
            match = API.fullmatch(path)
            repo = match and self._repo(match["type"], match["org"], match["name"])
            if repo is not None:
                return await self._api(match, repo, scope, receive, send)
        elif (match := RESOLVE.fullmatch(path)) and scope["method"] in ("GET", "HEAD"):
            repo = self._repo(match["type"] or "models", match["org"], match["name"])
            if repo is not None:
                return await self._resolve(match, repo, scope, receive, send)
        await self.app(scope, receive, send)

    def _repo(self, repo_type: str, org: str, name: str) -> Path | None:
        return next((m / repo_type / org / name for m in self.mirrors if (m / repo_type / org / name).exists()), None)

    # --- /api/<type>/<org>/<name>[/revision|tree|paths-info|commits/<rev>[/<path>]] ---------------------------
    async def _api(self, match, repo: Path, scope, receive, send):
        op, prefix = match["op"], f"/api/{match['type']}/{match['org']}/{match['name']}"
        with Repo(repo) as git:
            commit = git.head.commit if op is None else _commit(git, match["rev"])
            if commit is None:
                return await _error(send, 404, "RevisionNotFound", f"Invalid rev id: {match['rev']}")
            sub = (match["rest"] or "").strip("/")
            if op == "tree" and sub and not _is_directory(commit.tree, sub):
                return await _error(send, 404, "EntryNotFound", f"{sub} does not exist on \"{match['rev']}\"",
                                    commit.hexsha)
            query = dict(parse_qsl(scope["query_string"].decode()))
            body = b""
            if op == "paths-info":  # form body: read it to see `expand`, then hand the same bytes to olah
                body = await _read_body(receive)
                expand = dict(parse_qsl(body.decode())).get("expand") in TRUE_VALUES
            else:
                expand = op == "tree" and query.pop("expand", None) in TRUE_VALUES
            inner_path = f"{prefix}/{op or 'revision'}/{commit.hexsha}" + (f"/{sub}" if op == "tree" else "")
            inner = _with_path(scope, inner_path, urlencode(query) if op == "tree" else None)
            if op == "paths-info":
                receive = _replay(body)
            if not expand and op != "commits":
                return await self.app(inner, receive, send)
            status, headers, content = await _collect(self.app, inner, receive)
            if status == 200:
                entries = json.loads(content)
                for entry in entries:
                    if op == "commits":
                        _as_hub_commit(entry)
                    else:
                        _add_last_commit(entry, git, commit.hexsha)
                content = json.dumps(entries).encode()
                headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
                headers.append((b"content-length", str(len(content)).encode()))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": content})

    # --- /[datasets/]<org>/<name>/resolve/<rev>/<path> -------------------------------------------------------
    async def _resolve(self, match, repo: Path, scope, receive, send):
        with Repo(repo) as git:
            commit = _commit(git, match["rev"])
            if commit is None:
                return await _error(send, 404, "RevisionNotFound", f"Invalid rev id: {match['rev']}")
            meta = _file_meta(commit, match["path"])
        if meta is None:
            return await _error(send, 404, "EntryNotFound", "Entry not found", commit.hexsha)
        if scope["method"] == "HEAD":  # the Hub: 302 to its CDN for LFS files, same headers; see hub_world.py
            headers = meta.headers() + [(b"content-length", str(meta.size).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            return await send({"type": "http.response.body", "body": b""})
        await self._wait_while_held(match["path"])
        window = _byte_range(dict(scope["headers"]).get(b"range"), meta.size)
        if self.request_log.with_name(IGNORE_RANGE_FLAG).exists():
            window = None  # as some mirrors do (olah offline among them): 200 and the whole file
        if window == "unsatisfiable":
            headers = [(b"content-range", f"bytes */{meta.size}".encode()), (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 416, "headers": headers})
            return await send({"type": "http.response.body", "body": b""})
        start, stop = window or (0, meta.size)
        headers = meta.headers() + [(b"content-length", str(stop - start).encode())]
        if window is not None:
            headers.append((b"content-range", f"bytes {start}-{stop - 1}/{meta.size}".encode()))
        prefix = "" if match["type"] is None else f"/{match['type']}"
        inner = _with_path(scope, f"{prefix}/{match['org']}/{match['name']}/resolve/{commit.hexsha}/{match['path']}")
        await self.app(inner, receive, _sliced(send, start, stop, 206 if window else 200, headers))

    async def _wait_while_held(self, path: str) -> None:
        flag, began = self.request_log.with_name(HOLD_FLAG), time.monotonic()
        while time.monotonic() - began < HOLD_GUARD_S:
            try:
                held = flag.read_text().splitlines()
            except FileNotFoundError:
                return
            if path not in held:
                return
            await asyncio.sleep(0.05)  # how often to look, not how long to wait

    # --- request log ----------------------------------------------------------------------------------------
    def _logged(self, scope, send):
        headers = dict(scope["headers"])

        async def logged_send(message):
            if message["type"] == "http.response.start":
                answer = {k.lower(): v for k, v in message.get("headers", [])}
                line = {"time": time.time(), "method": scope["method"], "path": scope["path"],
                        "query": scope["query_string"].decode(), "range": _text(headers.get(b"range")),
                        "status": message["status"], "length": _int(answer.get(b"content-length")),
                        "error_code": _text(answer.get(b"x-error-code"))}
                with self.request_log.open("a") as log:
                    log.write(json.dumps(line) + "\n")
            await send(message)

        return logged_send


def _commit(git, revision: str):
    """The commit a Hub revision names (branch, tag, or full 40-hex sha), or None: the Hub resolves nothing else."""
    candidates = [revision] if FULL_SHA.fullmatch(revision) else [f"refs/heads/{revision}", f"refs/tags/{revision}"]
    for candidate in candidates:
        try:
            return git.commit(candidate)
        except (BadName, BadObject, ValueError):
            continue
    return None


def _as_hub_commit(entry: dict) -> None:
    """olah puts the whole message in `title` and authors as {"name"}; the Hub (and huggingface_hub) use
    `title` = first line, `message` = the rest, authors as {"user"}."""
    title, _, message = entry["title"].partition("\n")
    entry.update(title=title, message=message.strip(),
                 authors=[{"user": author["name"], "avatar": author.get("avatar")} for author in entry["authors"]])


def _add_last_commit(entry: dict, git, commit: str) -> None:
    """The Hub's `lastCommit` of a tree / paths-info entry: the last commit touching its path, as of `commit`."""
    last = next(git.iter_commits(commit, paths=entry["path"], max_count=1))
    entry["lastCommit"] = {"id": last.hexsha, "title": last.summary,
                           "date": last.committed_datetime.strftime("%Y-%m-%dT%H:%M:%S.000Z")}


def _is_directory(tree, path: str) -> bool:
    try:
        return (tree / path).type == "tree"
    except KeyError:
        return False


def _file_meta(commit, path: str) -> FileMeta | None:
    try:
        blob = commit.tree / path
    except KeyError:
        return None
    if blob.type != "blob":
        return None
    if blob.size in LFS_POINTER_SIZES and (pointer := LFS_POINTER.match(blob.data_stream.read())):
        return FileMeta(commit.hexsha, int(pointer[2]), blob.hexsha, pointer[1].decode())
    return FileMeta(commit.hexsha, blob.size, blob.hexsha, None)


def _byte_range(header: bytes | None, size: int):
    """[start, stop) for one `bytes=a-b` / `bytes=a-` / `bytes=-n` range; None for no (or an unsupported) range."""
    match = re.fullmatch(rb"bytes=(\d*)-(\d*)", header.strip()) if header else None
    if match is None or match[1] == match[2] == b"":
        return None  # multi-range or garbage: RFC 9110 lets a server ignore Range and send 200
    if match[1] == b"":  # suffix: the last n bytes
        start, stop = max(0, size - int(match[2])), size
    else:
        start, stop = int(match[1]), size if match[2] == b"" else min(size, int(match[2]) + 1)
    return "unsatisfiable" if start >= size or start >= stop else (start, stop)


def _sliced(send, start: int, stop: int, status: int, headers):
    """A `send` that announces `status`/`headers` and forwards only bytes [start, stop) of olah's 200 body."""
    offset = 0
    passthrough = False

    async def sliced_send(message):
        nonlocal offset, passthrough
        if message["type"] == "http.response.start":
            passthrough = message["status"] != 200  # not expected after our checks: show olah's answer as is
            return await send(message if passthrough else {**message, "status": status, "headers": headers})
        if passthrough or message["type"] != "http.response.body":
            return await send(message)
        chunk, more = message.get("body", b""), message.get("more_body", False)
        piece = chunk[max(0, start - offset):max(0, stop - offset)]
        offset += len(chunk)
        if piece or not more:
            await send({"type": "http.response.body", "body": piece, "more_body": more})

    return sliced_send


def _with_path(scope, path: str, query: str | None = None):
    inner = {**scope, "path": path, "raw_path": quote(path).encode()}
    if query is not None:
        inner["query_string"] = query.encode()
    return inner


async def _read_body(receive) -> bytes:
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    return body


def _replay(body: bytes):
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def _collect(app, scope, receive):
    """Run olah on `scope` and return (status, headers, body) instead of sending them."""
    answer = {"status": 500, "headers": [], "body": b""}

    async def collect(message):
        if message["type"] == "http.response.start":
            answer.update(status=message["status"], headers=list(message.get("headers", [])))
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")

    await app(scope, receive, collect)
    return answer["status"], answer["headers"], answer["body"]


async def _error(send, status: int, code: str, message: str, commit: str | None = None):
    """The Hub's error answer: X-Error-Code / X-Error-Message headers and a JSON `error` body."""
    body = json.dumps({"error": message}).encode()
    headers = [(b"x-error-code", code.encode()), (b"x-error-message", message.encode()),
               (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if commit is not None:
        headers.append((b"x-repo-commit", commit.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def _int(value: bytes | None) -> int | None:
    return None if value is None else int(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="olah TOML config (mirrors-path, offline = true)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-dir", required=True, help="olah's own log folder")
    parser.add_argument("--request-log", required=True, help="JSON-lines file, one line per request")
    parser.add_argument("--plain", action="store_true", help="olah as installed: log requests, change no answer")
    args = parser.parse_args()
    # olah's documented multi-worker configuration path: its app module reads OLAH_CONFIG when imported.
    os.environ["OLAH_CONFIG"], os.environ["OLAH_LOG_PATH"] = args.config, args.log_dir
    import uvicorn
    from olah.server import app

    mirrors = [Path(path) for path in app.state.app_settings.config.mirrors_path]
    uvicorn.run(HubConformance(app, mirrors, Path(args.request_log), conform=not args.plain), host="127.0.0.1",
                port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
