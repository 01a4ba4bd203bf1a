"""A Hub on loopback: a tiny server answering `/{repo}/resolve/{revision}/config.json` with the headers
huggingface_hub needs, so that the launcher fetches real shapes from it with HF_ENDPOINT pointing here. Subclass it
with the configs to serve (and which repos are gated, and what an unknown repo gets)."""

from __future__ import annotations

import contextlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class LoopbackHub(BaseHTTPRequestHandler):
    configs: dict[str, bytes] = {}  # repo id -> its config.json
    gated: dict[str, str] = {}  # repo id -> the one token granted access
    unknown_status = 404  # 404: "no such repo"; 503: the Hub cannot say, and the size stays unknown
    requests: list[str] = []  # files asked for (huggingface_hub also reads /api/... for its user agent)

    def do_HEAD(self):
        self.answer(body=False)

    def do_GET(self):
        self.answer(body=True)

    def answer(self, body: bool):
        if "/resolve/" in self.path:
            self.requests.append(self.path)
        repo, _, rest = self.path.lstrip("/").partition("/resolve/")
        _revision, _, filename = rest.partition("/")
        if repo not in self.configs or filename != "config.json":
            if self.unknown_status == 404:
                return self.refuse(404, "RepoNotFound", "Repository not found")
            return self.refuse(self.unknown_status, "ServiceUnavailable", "Try again later")
        token = self.headers.get("Authorization")
        if repo in self.gated and token is None:
            message = (
                f"Access to model {repo} is restricted. You must have access to it and be authenticated to access it."
            )
            return self.refuse(401, "GatedRepo", message)
        if repo in self.gated and token != f"Bearer {self.gated[repo]}":
            return self.refuse(
                403, "GatedRepo", f"Access to model {repo} is restricted and you are not in the authorized list."
            )
        content = self.configs[repo]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(content)))
        self.send_header("ETag", f'"{abs(hash(content)):x}"')
        self.send_header("X-Repo-Commit", COMMIT)
        self.end_headers()
        if body:
            self.wfile.write(content)

    def refuse(self, status: int, code: str, message: str):
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serving(hub: type[LoopbackHub]):
    """The hub's endpoint (for HF_ENDPOINT) while it serves."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), hub)
    hub.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
