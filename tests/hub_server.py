"""A local, in-memory stand-in for the Hugging Face Hub, enough for `huggingface_hub` to push and pull.

It serves the endpoints that `create_repo`, `upload_folder`, `hf_hub_download` and `snapshot_download`
call, on 127.0.0.1 only, from a thread. Files are uploaded in "regular" mode (base64 in the commit),
which keeps LFS and Xet out of the flow. `fail_with = 503` makes every request fail (a Hub outage). `SilentHub`
accepts connections and never answers.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha -> {path: content}
    branches: dict[str, str] = field(default_factory=dict)  # branch -> sha
    private: bool = False

    def resolve(self, revision: str) -> str | None:
        revision = unquote(revision)
        if revision in self.branches:
            return self.branches[revision]
        return revision if revision in self.commits else None


class FakeHub:
    """Start with `FakeHub().start()`; `endpoint` is the URL to put in HF_ENDPOINT."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[str] = []
        self.fail_with: int | None = None
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> FakeHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def commit(self, repo_id: str, files: dict[str, bytes], branch: str = "main", deleted: tuple[str, ...] = ()) -> str:
        """Add, replace or delete files on `branch` (the repo is created if needed); returns the new commit sha."""
        with self._lock:
            repo = self.repos.setdefault(repo_id, Repo())
            parent = repo.commits.get(repo.branches.get(branch, ""), {})
            snapshot = {p: c for p, c in {**parent, **files}.items() if p not in deleted}
            sha = hashlib.sha1(json.dumps(sorted((p, hashlib.sha256(c).hexdigest()) for p, c in snapshot.items()))
                               .encode() + repo_id.encode() + str(len(repo.commits)).encode()).hexdigest()
            repo.commits[sha] = snapshot
            repo.branches[branch] = sha
            return sha

    def upload_folder(self, repo_id: str, folder: str | Path) -> str:
        """Put a local folder's files into a repo directly (a published checkpoint, say)."""
        folder = Path(folder)
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        return self.commit(repo_id, files)


def populate_cache(cache_dir: str | Path, repo_id: str, folder: str | Path, revision: str = "main") -> Path:
    """Lay a folder out in the Hugging Face cache as if `hf_hub_download` had fetched it; returns the snapshot."""
    sha = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
    repo_dir = Path(cache_dir) / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / sha
    shutil.copytree(folder, snapshot, dirs_exist_ok=True)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / revision).write_text(sha)
    return snapshot


_REPO = r"(?P<repo>[^/]+/[^/]+)"


def _make_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # keep test output clean
            pass

        def _reply(self, status: int, body: bytes | dict | list = b"", headers: dict[str, str] | None = None,
                   head: bool = False) -> None:
            if isinstance(body, (dict, list)):
                body = json.dumps(body).encode()
                headers = {"Content-Type": "application/json", **(headers or {})}
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _not_found(self, code: str, head: bool = False) -> None:
            self._reply(404, {"error": code}, {"X-Error-Code": code, "X-Error-Message": code}, head=head)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))

        def _dispatch(self, method: str) -> None:
            path = urlparse(self.path).path
            hub.requests.append(f"{method} {path}")
            if hub.fail_with is not None:
                if method == "POST":
                    self._body()
                return self._reply(hub.fail_with, {"error": "unavailable"}, head=method == "HEAD")
            for pattern, handler in self.routes.get(method, []):
                match = re.fullmatch(pattern, path)
                if match:
                    return handler(self, **match.groupdict())
            self._reply(404, {"error": f"fake hub has no route for {method} {path}"})

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_HEAD(self) -> None:
            self._dispatch("HEAD")

        def do_POST(self) -> None:
            self._dispatch("POST")

        def create_repo(self) -> None:
            request = json.loads(self._body() or b"{}")
            repo_id = f"{request['organization']}/{request['name']}" if request.get("organization") else request["name"]
            with hub._lock:
                repo = hub.repos.setdefault(repo_id, Repo(private=bool(request.get("private"))))
            if not repo.commits:
                hub.commit(repo_id, {".gitattributes": b""})
            self._reply(200, {"url": f"{hub.endpoint}/{repo_id}", "name": repo_id})

        def validate_yaml(self) -> None:
            self._body()
            self._reply(200, {"errors": [], "warnings": []})

        def preupload(self, repo: str, revision: str) -> None:
            files = json.loads(self._body())["files"]
            if repo not in hub.repos:
                return self._not_found("RepoNotFound")
            self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                        for f in files]})

        def commit(self, repo: str, revision: str) -> None:
            lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
            if repo not in hub.repos:
                return self._not_found("RepoNotFound")
            files, deleted = {}, []
            for line in lines:
                if line["key"] == "file":
                    files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                elif line["key"] == "deletedFile":
                    deleted.append(line["value"]["path"])
                elif line["key"] != "header":
                    return self._reply(400, {"error": f"fake hub cannot apply '{line['key']}'"})
            sha = hub.commit(repo, files, branch=unquote(revision), deleted=tuple(deleted))
            self._reply(200, {"commitUrl": f"{hub.endpoint}/{repo}/commit/{sha}", "commitOid": sha,
                              "pullRequestUrl": None})

        def _snapshot(self, repo: str, revision: str, head: bool = False) -> tuple[str, dict] | None:
            if repo not in hub.repos:
                self._not_found("RepoNotFound", head)
                return None
            sha = hub.repos[repo].resolve(revision)
            if sha is None:
                self._not_found("RevisionNotFound", head)
                return None
            return sha, hub.repos[repo].commits[sha]

        def resolve(self, repo: str, revision: str, file: str, head: bool = False) -> None:
            found = self._snapshot(repo, revision, head)
            if found is None:
                return
            sha, files = found
            content = files.get(unquote(file))
            if content is None:
                return self._not_found("EntryNotFound", head)
            etag = hashlib.sha256(content).hexdigest()
            self._reply(200, content, {"X-Repo-Commit": sha, "ETag": f'"{etag}"',
                                       "Content-Type": "application/octet-stream"}, head=head)

        def resolve_head(self, repo: str, revision: str, file: str) -> None:
            self.resolve(repo, revision, file, head=True)

        def revision_info(self, repo: str, revision: str = "main") -> None:
            found = self._snapshot(repo, revision)
            if found is not None:
                sha, files = found
                self._reply(200, {"id": repo, "modelId": repo, "sha": sha, "private": hub.repos[repo].private,
                                  "siblings": [{"rfilename": p} for p in sorted(files)]})

        def tree(self, repo: str, revision: str, subpath: str | None = None) -> None:
            found = self._snapshot(repo, revision)
            if found is not None:
                _, files = found
                prefix = f"{unquote(subpath).strip('/')}/" if subpath else ""
                self._reply(200, [
                    {"type": "file", "path": p, "size": len(c), "oid": hashlib.sha1(c).hexdigest()}
                    for p, c in sorted(files.items()) if p.startswith(prefix)
                ])

        routes = {
            "POST": [
                (r"/api/repos/create", create_repo),
                (r"/api/validate-yaml", validate_yaml),
                (rf"/api/models/{_REPO}/preupload/(?P<revision>[^/]+)", preupload),
                (rf"/api/models/{_REPO}/commit/(?P<revision>[^/]+)", commit),
            ],
            "HEAD": [(rf"/{_REPO}/resolve/(?P<revision>[^/]+)/(?P<file>.+)", resolve_head)],
            "GET": [
                (rf"/{_REPO}/resolve/(?P<revision>[^/]+)/(?P<file>.+)", resolve),
                (rf"/api/models/{_REPO}/revision/(?P<revision>[^/]+)", revision_info),
                (rf"/api/models/{_REPO}", revision_info),
                (rf"/api/models/{_REPO}/tree/(?P<revision>[^/]+)(?:/(?P<subpath>.+))?", tree),
            ],
        }

    return Handler


class SilentHub:
    """A server that accepts connections, reads each request's first line and never answers (a hung Hub)."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self.requests: list[str] = []
        self._connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> SilentHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        try:
            self._socket.shutdown(socket.SHUT_RDWR)  # wakes the accept() of the serving thread
        except OSError:
            pass
        self._socket.close()
        for connection in self._connections:
            connection.close()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:  # closed by stop()
                return
            self._connections.append(connection)
            request_line = connection.recv(65536).split(b"\r\n", 1)[0].decode(errors="replace")
            self.requests.append(request_line.rsplit(" ", 1)[0])  # "GET /path"
