"""A stand-in for the Hugging Face hub on 127.0.0.1, for the hub tests.

It serves the routes huggingface_hub and tui-infer's downloader use (see
shared/docs/field-notes.md): model search, model info with siblings (and LFS sha256
with ?blobs=true), the file tree, and HEAD/GET on resolve with Range/206,
X-Repo-Commit, ETag / X-Linked-Etag, Content-Length / X-Linked-Size and the error
headers. Per-file switches make it misbehave on purpose: drop the connection after N
bytes, serve corrupted bytes of the right length, throttle.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse


@dataclass
class ServedFile:
    data: bytes
    drop_after: int | None = None  # close the connection after this many bytes ...
    drops: int = 1  # ... this many times
    corrupt: bool = False  # flip a byte in what is served (the listed sha256 stays right)
    rate: int | None = None  # bytes per second
    stall_at: int | None = None  # after this many bytes, send nothing for stall_s ...
    stall_s: float = 0.0
    stalls: int = 0  # ... this many times, then close the connection
    sha_override: str | None = None

    @property
    def sha256(self) -> str:
        return self.sha_override or hashlib.sha256(self.data).hexdigest()


@dataclass
class Repo:
    files: dict[str, ServedFile]
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    gated: bool = False
    downloads: int = 0
    likes: int = 0


@dataclass
class Hit:
    method: str
    path: str
    range: str | None
    status: int
    sent: int = 0


@dataclass
class HubState:
    repos: dict[str, Repo] = field(default_factory=dict)
    hits: list[Hit] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bytes_sent(self, filename: str) -> int:
        with self.lock:
            return sum(h.sent for h in self.hits if h.path.endswith("/" + filename))

    def gets(self, filename: str) -> list[Hit]:
        with self.lock:
            return [h for h in self.hits if h.method == "GET" and h.path.endswith("/" + filename)]


class Handler(BaseHTTPRequestHandler):
    state: HubState
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # ----- helpers -----

    def _json(self, obj: Any, status: int = 200) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self._hit(status, 0)

    def _error(self, status: int, code: str | None, message: str = "") -> None:
        body = json.dumps({"error": message or code or "not found"}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message or code or "")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._hit(status, 0)

    def _hit(self, status: int, sent: int) -> None:
        with self.state.lock:
            self.state.hits.append(
                Hit(
                    self.command,
                    unquote(urlparse(self.path).path),
                    self.headers.get("Range"),
                    status,
                    sent,
                )
            )

    def _repo(self, repo_id: str) -> Repo | None:
        repo = self.state.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        if repo.gated and not self.headers.get("Authorization"):
            self._error(401, "GatedRepo", "Access to this repo is restricted")
            return None
        return repo

    # ----- routes -----

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        url = urlparse(self.path)
        path = unquote(url.path)
        query = parse_qs(url.query)
        if path == "/api/models":
            return self._search(query)
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path):
            return self._tree(m.group(1))
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path):
            return self._info(m.group(1), "blobs" in query)
        if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            return self._resolve(m.group(1), m.group(2), m.group(3))
        self._error(404, None, "no such route")

    def _search(self, query: dict[str, list[str]]) -> None:
        words = query.get("search", [""])[0].lower()
        limit = int(query.get("limit", ["1000"])[0])
        out = []
        for rid, repo in sorted(self.state.repos.items(), key=lambda kv: -kv[1].downloads):
            if words in rid.lower():
                out.append(
                    {
                        "_id": rid,
                        "id": rid,
                        "modelId": rid,
                        "downloads": repo.downloads,
                        "likes": repo.likes,
                        "lastModified": "2025-06-01T12:00:00.000Z",
                        "gated": "auto" if repo.gated else False,
                        "private": False,
                        "tags": ["gguf"],
                        "library_name": "gguf",
                    }
                )
        self._json(out[:limit])

    def _info(self, repo_id: str, blobs: bool) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        siblings = []
        for name, f in repo.files.items():
            s: dict[str, Any] = {"rfilename": name}
            if blobs:
                s.update(
                    size=len(f.data),
                    blobId=f.sha256[:40],
                    lfs={"sha256": f.sha256, "size": len(f.data), "pointerSize": 134},
                )
            siblings.append(s)
        self._json(
            {
                "_id": repo_id,
                "id": repo_id,
                "modelId": repo_id,
                "sha": repo.commit,
                "lastModified": "2025-06-01T12:00:00.000Z",
                "private": False,
                "gated": "auto" if repo.gated else False,
                "disabled": False,
                "downloads": repo.downloads,
                "likes": repo.likes,
                "tags": ["gguf"],
                "siblings": siblings,
            }
        )

    def _tree(self, repo_id: str) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        self._json(
            [
                {
                    "type": "file",
                    "path": name,
                    "size": len(f.data),
                    "oid": f.sha256[:40],
                    "lfs": {"oid": f.sha256, "size": len(f.data), "pointerSize": 134},
                }
                for name, f in repo.files.items()
            ]
        )

    def _resolve(self, repo_id: str, rev: str, filename: str) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        if rev not in ("main", repo.commit):
            return self._error(404, "RevisionNotFound", "Revision not found")
        f = repo.files.get(filename)
        if f is None:
            return self._error(404, "EntryNotFound", "Entry not found")
        data = f.data
        if f.corrupt:
            data = data[:-100] + bytes(b ^ 0xFF for b in data[-100:])
        start, end = 0, len(data) - 1
        rng = self.headers.get("Range")
        status = 200
        if rng and (m := re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())):
            start = int(m.group(1))
            end = min(int(m.group(2)), len(data) - 1) if m.group(2) else len(data) - 1
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return self._hit(416, 0)
            status = 206
        self.send_response(status)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("X-Repo-Commit", repo.commit)
        self.send_header("ETag", f'"{f.sha256}"')
        self.send_header("X-Linked-Etag", f'"{f.sha256}"')
        self.send_header("X-Linked-Size", str(len(data)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.end_headers()
        if self.command == "HEAD":
            return self._hit(status, 0)
        sent = 0
        limit = end - start + 1
        drop = None
        with self.state.lock:
            if f.drop_after is not None and f.drops > 0:
                f.drops -= 1
                drop = f.drop_after
            stall = None
            if f.stall_at is not None and f.stalls > 0:
                f.stalls -= 1
                stall = f.stall_at
        try:
            pos = start
            while sent < limit:
                n = min(65536, limit - sent)
                if stall is not None and sent + n > stall:
                    self.wfile.write(data[pos : pos + stall - sent])
                    sent = stall
                    self.wfile.flush()
                    time.sleep(f.stall_s)
                    self.close_connection = True
                    break
                if drop is not None and sent + n > drop:
                    n = drop - sent
                    if n > 0:
                        self.wfile.write(data[pos : pos + n])
                        sent += n
                    self.wfile.flush()
                    self.close_connection = True
                    # Drop it hard: the client sees a short body.
                    import socket

                    self.connection.shutdown(socket.SHUT_RDWR)
                    break
                self.wfile.write(data[pos : pos + n])
                pos += n
                sent += n
                if f.rate:
                    time.sleep(n / f.rate)
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True
        self._hit(status, sent)


class HubServer:
    """A ThreadingHTTPServer on 127.0.0.1 in a daemon thread."""

    def __init__(self, repos: dict[str, Repo] | None = None) -> None:
        self.state = HubState(repos or {})
        handler = type("BoundHandler", (Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
