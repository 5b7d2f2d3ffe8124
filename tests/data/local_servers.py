"""Local HTTP servers on 127.0.0.1 for the download tests: a static file server (Range requests, a connection
cut mid-file, a server that ignores Range) and a minimal Hugging Face Hub (the tree API and /resolve/, as
huggingface_hub calls them). Each runs in a daemon thread with short socket timeouts and is shut down by the
fixture, so nothing waits on the network and nothing leaves the machine."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import urllib.parse
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class _Handler(BaseHTTPRequestHandler):
    timeout = 5  # a stuck client never holds a server thread for long
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    @property
    def state(self) -> ServerState:
        return self.server.state  # type: ignore[attr-defined]

    def _send_file(self, data: bytes, head: bool, extra: dict[str, str] | None = None, path: str = "") -> None:
        state = self.state
        start = 0
        rng = self.headers.get("Range")
        state.requests.append((self.command, self.path, rng))
        status = 200
        if rng and state.honour_range:
            start = int(re.match(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Accept-Ranges", "bytes")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if head:
            return
        cut = state.cut_after.pop(path, None)
        if cut is not None:  # send part of the body, then drop the connection
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def _not_found(self) -> None:
        self.state.requests.append((self.command, self.path, None))
        body = b'{"error": "not found"}'
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_HEAD(self) -> None:  # noqa: N802
        self._route(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._route(head=False)

    def _route(self, head: bool) -> None:
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path)
        state = self.state
        hub = re.match(r"^/api/datasets/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?$", path)
        if hub and state.hub_repo == hub.group(1):
            query = urllib.parse.parse_qs(url.query)
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            state.requests.append((self.command, self.path, None))
            body = json.dumps(state.tree(hub.group(3) or "", recursive)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        resolve = re.match(r"^/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.*)$", path)
        if resolve and state.hub_repo == resolve.group(1) and resolve.group(3) in state.files \
                and resolve.group(3) not in state.unavailable:
            name = resolve.group(3)
            data = state.files[name]
            etag = hashlib.sha1(data).hexdigest()  # noqa: S324 - a git blob-like id, as the Hub's ETag
            self._send_file(data, head, {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"'}, path=name)
            return
        name = path.lstrip("/")
        if state.hub_repo is None and name in state.files:
            self._send_file(state.files[name], head, path=name)
            return
        self._not_found()


class ServerState:
    def __init__(self, files: dict[str, bytes], hub_repo: str | None = None) -> None:
        self.files = files
        self.hub_repo = hub_repo
        self.cut_after: dict[str, int] = {}
        self.honour_range = True
        self.unavailable: set[str] = set()  # listed in the tree, but /resolve/ answers 404 (a flaky mirror)
        self.requests: list[tuple[str, str, str | None]] = []

    def tree(self, prefix: str, recursive: bool) -> list[dict]:
        prefix = prefix.strip("/")
        entries: dict[str, dict] = {}
        for path, data in sorted(self.files.items()):
            if prefix and not path.startswith(prefix + "/"):
                continue
            rest = path[len(prefix) + 1:] if prefix else path
            parts = rest.split("/")
            if recursive:
                for depth in range(1, len(parts)):
                    folder = "/".join(([prefix] if prefix else []) + parts[:depth])
                    entries[folder] = {"type": "directory", "oid": "0" * 40, "path": folder}
                entries[path] = {"type": "file", "oid": hashlib.sha1(data).hexdigest(),  # noqa: S324
                                 "size": len(data), "path": path}
            elif len(parts) == 1:
                entries[path] = {"type": "file", "oid": hashlib.sha1(data).hexdigest(),  # noqa: S324
                                 "size": len(data), "path": path}
            else:
                folder = "/".join(([prefix] if prefix else []) + parts[:1])
                entries[folder] = {"type": "directory", "oid": "0" * 40, "path": folder}
        return list(entries.values())


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # a client dropping a connection is expected here
        pass


@contextmanager
def serve(files: dict[str, bytes], hub_repo: str | None = None):
    """Yield (base_url, state); the server stops when the block ends."""
    server = _QuietServer(("127.0.0.1", 0), _Handler)
    server.state = ServerState(files, hub_repo)  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.state  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
