"""A local stand-in for the Hugging Face Hub HTTP API, for tests: stdlib only, 127.0.0.1 only, everything in memory.

Serves what huggingface_hub 2.4.0 (HfApi, hf_hub_download, snapshot_download, HfFileSystem), transformers
``from_pretrained`` and datasets ``push_to_hub``/``load_dataset`` use, for model and dataset repos:

    GET  /api/whoami-v2                                  the user and its orgs for a known token, 401 otherwise
    POST /api/repos/create, DELETE /api/repos/delete     409 (with "url") if it exists: ``exist_ok=True`` works
    POST /api/validate-yaml                              always valid (create_commit sends README.md there)
    GET  /api/{models|datasets}/{repo}[/revision/{rev}]  repo_info / model_info / dataset_info / repo_exists
    GET  .../refs, POST|DELETE .../branch/{name}         list_repo_refs, create_branch (startingPoint), delete_branch
    GET  .../tree/{rev}[/{path}]?recursive=              list_repo_tree / list_repo_files (one page)
    POST .../paths-info/{rev}, GET .../commits/{rev}     get_paths_info (HfFileSystem), list_repo_commits
    POST .../preupload/{rev}                             uploadMode "regular" for every file, except "lfs" for paths
                                                         matching ``lfs`` (default *.parquet: datasets deletes its
                                                         parquet shards right after preupload, so they must go by
                                                         LFS); the oid of the file already there, so that the client
                                                         skips unchanged files
    POST .../commit/{rev}                                NDJSON: header (stale parentCommit -> 412), file (base64),
                                                         lfsFile, deletedFile, deletedFolder; a new sha1 per commit
    POST /[datasets/]{repo}.git/info/lfs/objects/batch   basic LFS transfer: PUT /lfs-upload/{sha256}
    GET|HEAD /[datasets/]{repo}/resolve/{rev}/{path}     X-Repo-Commit, ETag, Content-Length; 404 with X-Error-Code
                                                         RepoNotFound / RevisionNotFound / EntryNotFound
Revisions are branch names or commit ids. Not served (404 or 400): Xet storage, multipart LFS, pull requests
(``create_pr``), tags, Range requests (a full 200 is sent, which the client accepts), pagination, Spaces, buckets, gated
repos. Tokens: reads need none (but a wrong one gets 401; private repos are hidden without one), writes need a valid
one and a namespace that is the user or one of its orgs (403 otherwise).

For tests: ``fail()`` makes the next requests matching a path regex / method fail with a status (+ Retry-After), or
drops the connection, before or after handling them (a lost response); ``calls`` lists every request (method, path,
query, status, headers), ``count()`` counts them, ``uploads()`` counts the commits that wrote each path, ``files()``
returns a revision's files.

What the client does (huggingface_hub 2.4.0 source): ``huggingface_hub.constants`` reads HF_ENDPOINT, HF_HUB_OFFLINE,
HF_HUB_DISABLE_XET, HF_HOME... once, at import, and offline mode is checked on every request against
``constants.HF_HUB_OFFLINE``: ``use_hub()`` sets the environment (for later imports and subprocesses) and patches the
constants already imported, ``datasets.config`` and the ``HfApi`` instances that keep the endpoint they were made
with (``huggingface_hub.hf_api.api``, behind ``huggingface_hub.upload_folder`` & co, and transformers' shared one).
Xet: with hf_xet installed and not disabled, ``upload_folder`` goes through ``_upload_pipeline`` (commit POST retried
with backoff) rather than ``create_commit`` (commit POST not retried); both work against this server as long as no
file is LFS (an LFS-mode file would go to Xet storage). ``use_hub(disable_xet=True)``, the default, is
HF_HUB_DISABLE_XET=1.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import re
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.parquet filter=lfs diff=lfs merge=lfs -text\n"
WRITES = {"POST", "PUT", "DELETE", "PATCH"}


def git_sha1(data: bytes) -> str:
    """The git blob id of `data` (a regular file's oid and ETag on the Hub)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.code, self.headers, self.extra = status, message, code, headers or {}, extra


@dataclass
class Commit:
    id: str
    parent: str | None
    title: str
    message: str
    files: dict[str, bytes]  # the full snapshot, never mutated once committed
    changed: list[str]  # paths written by this commit
    deleted: list[str]
    date: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()))


@dataclass
class Repo:
    type: str  # "model" | "dataset"
    id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit id
    commits: dict[str, Commit] = field(default_factory=dict)

    def commit(self, rev: str) -> Commit:
        sha = self.branches.get(rev) or next((c for c in self.commits if len(rev) >= 7 and c.startswith(rev)), None)
        if sha is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return self.commits[sha]


@dataclass
class Fault:
    status: int | None  # None: close the connection without answering
    times: int
    method: str | None  # None: any; "WRITE": POST/PUT/DELETE/PATCH
    path: re.Pattern
    retry_after: int | None = None
    after: bool = False  # handle the request (e.g. make the commit), then fail or drop the answer: a lost response

    def matches(self, method: str, path: str) -> bool:
        wanted = self.method in (None, method) or (self.method == "WRITE" and method in WRITES)
        return self.times > 0 and wanted and self.path.search(path) is not None


class Call(NamedTuple):
    method: str
    path: str  # unquoted, without the query string
    query: str
    status: int  # 0: connection dropped
    headers: dict


class HubServer:
    """``with HubServer(tokens={"hf_test"}, user="me", orgs=("myorg",)) as hub: HfApi(endpoint=hub.url, ...)``."""

    def __init__(self, tokens=("hf_test",), user: str = "me", orgs=("myorg",), lfs=("*.parquet",)):
        self.tokens, self.user, self.orgs, self.lfs = set(tokens), user, list(orgs), tuple(lfs)
        self.repos: dict[tuple[str, str], Repo] = {}  # (repo type, repo id) -> Repo
        self.blobs: dict[str, bytes] = {}  # LFS objects by sha256
        self.calls: list[Call] = []
        self.faults: list[Fault] = []
        self.env: dict[str, str] = {}  # set by the hub_server fixture: what a subprocess needs to use this server
        self.lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None

    def __enter__(self) -> HubServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Handler,), {"hub": self}))
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="hub-server", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    # ------------------------------------------------------------------ for tests
    def fail(self, status: int | None = 500, *, times: int = 1, path: str = "", method: str | None = None,
             retry_after: int | None = None, after: bool = False) -> Fault:  # fmt: skip
        """The next `times` requests whose unquoted path matches the regex `path` ("/commit/", "/preupload/",
        "/resolve/", ...) and whose method is `method` ("POST", ..., "write", None: any) get `status` (None: the
        connection is closed without an answer), with Retry-After: `retry_after` if given. `after=True`: the request
        is handled first (the commit is made), then its answer is replaced, i.e. lost."""
        fault = Fault(status, times, method and method.upper(), re.compile(path), retry_after, after)
        with self.lock:
            self.faults.append(fault)
        return fault

    def count(self, method: str | None = None, path: str = "") -> int:
        """How many requests came with this method (None: any) and a path matching the regex `path`."""
        with self.lock:
            return sum(method in (None, c.method) and re.search(path, c.path) is not None for c in self.calls)

    def uploads(self, repo_id: str, repo_type: str = "model") -> Counter:
        """How many commits (on any branch) wrote each path: more than 1 means it was uploaded again."""
        with self.lock:
            return Counter(p for c in self.repos[(repo_type, repo_id)].commits.values() for p in c.changed)

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        with self.lock:
            return dict(self.repos[(repo_type, repo_id)].commit(revision).files)

    # ------------------------------------------------------------------ protocol
    def _authed(self, headers, required: bool) -> bool:
        auth = headers.get("authorization") or ""
        token = auth[7:] if auth.lower().startswith("bearer ") else None
        if token is not None and token not in self.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        if required and token is None:
            raise HubError(401, "You must be authenticated to access this resource")
        return token is not None

    def _writable(self, namespace: str) -> None:
        if namespace != self.user and namespace not in self.orgs:
            raise HubError(403, f"You don't have the rights to write to {namespace}")

    def _repo(self, repo_type: str, repo_id: str, headers, write: bool = False) -> Repo:
        authed = self._authed(headers, required=write)
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not authed):
            raise HubError(404, "Repository not found", "RepoNotFound")
        if write:
            self._writable(repo_id.split("/")[0])
        return repo

    def _oid(self, path: str, files: dict[str, bytes]) -> str | None:
        """The oid the client compares with its own to skip unchanged files (sha256 for LFS, git sha1 otherwise)."""
        if path not in files:
            return None
        return hashlib.sha256(files[path]).hexdigest() if self._is_lfs(path) else git_sha1(files[path])

    def _is_lfs(self, path: str) -> bool:
        return any(fnmatch.fnmatch(path, pattern) for pattern in self.lfs)

    def _url(self, repo: Repo) -> str:
        return f"{self.url}/{'datasets/' if repo.type == 'dataset' else ''}{repo.id}"

    def _new_commit(self, repo: Repo, branch: str, title: str, message: str, files: dict, changed, deleted) -> Commit:
        sha = hashlib.sha1(os.urandom(20)).hexdigest()
        commit = Commit(sha, repo.branches.get(branch), title, message, files, changed, deleted)
        repo.commits[sha] = commit
        repo.branches[branch] = sha
        return commit

    def dispatch(self, method: str, path: str, query: dict, headers, body: bytes):
        """The answer to a request: a JSON-able object, or (bytes, headers) for a file; raises HubError."""
        if path == "/api/whoami-v2":
            self._authed(headers, required=True)
            orgs = [{"name": o, "type": "org", "roleInOrg": "write"} for o in self.orgs]
            auth = {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}}
            return {"type": "user", "name": self.user, "fullname": self.user, "orgs": orgs, "auth": auth}
        if path == "/api/validate-yaml":
            return {"errors": [], "warnings": []}
        if path in ("/api/repos/create", "/api/repos/delete"):
            self._authed(headers, required=True)
            payload = json.loads(body or b"{}")
            repo_type, namespace = payload.get("type") or "model", payload.get("organization") or self.user
            if repo_type not in ("model", "dataset"):
                raise HubError(400, f"HubServer does not serve {repo_type} repos")
            self._writable(namespace)
            key = (repo_type, repo_id := f"{namespace}/{payload['name']}")
            if method == "DELETE":
                if self.repos.pop(key, None) is None:
                    raise HubError(404, "Repository not found", "RepoNotFound")
                return {}
            if key in self.repos:
                raise HubError(409, f"You already created this {repo_type} repo", url=self._url(self.repos[key]))
            private = payload.get("visibility", "private" if payload.get("private") else "public") != "public"
            repo = self.repos[key] = Repo(repo_type, repo_id, private)
            self._new_commit(repo, "main", "initial commit", "", {".gitattributes": GITATTRIBUTES}, [], [])
            return {"url": self._url(repo), "name": repo_id, "id": uuid.uuid4().hex}
        if m := re.fullmatch(r"/api/(model|dataset)s/([^/]+/[^/]+)(?:/([a-z-]+)(?:/([^/]+)(?:/(.+))?)?)?", path):
            kind, repo_id, action, arg, rest = m.groups()
            repo = self._repo(kind, repo_id, headers, write=method in WRITES and action != "paths-info")
            return self._repo_api(method, repo, action, unquote(arg or ""), unquote(rest or ""), query, body)
        if m := re.fullmatch(r"/(datasets/)?([^/]+/[^/]+)\.git/info/lfs/objects/batch", path):
            self._repo("dataset" if m.group(1) else "model", m.group(2), headers, write=True)
            objects = [{"oid": o["oid"], "size": o["size"]} for o in json.loads(body)["objects"]]
            for o in objects:
                if o["oid"] not in self.blobs:
                    o["actions"] = {"upload": {"href": f"{self.url}/lfs-upload/{o['oid']}"}}
            return {"transfer": "basic", "objects": objects}
        if (m := re.fullmatch(r"/lfs-upload/([0-9a-f]{64})", path)) and method == "PUT":
            if hashlib.sha256(body).hexdigest() != m.group(1):
                raise HubError(400, "sha256 mismatch")
            self.blobs[m.group(1)] = body
            return {}
        if (m := re.fullmatch(r"/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)) and method in ("GET", "HEAD"):
            commit = self._repo("dataset" if m.group(1) else "model", m.group(2), headers).commit(unquote(m.group(3)))
            if (data := commit.files.get(unquote(m.group(4)))) is None:
                raise HubError(
                    404, f"Entry not found: {unquote(m.group(4))}", "EntryNotFound", {"X-Repo-Commit": commit.id}
                )
            return data, {"X-Repo-Commit": commit.id, "ETag": f'"{git_sha1(data)}"'}
        raise HubError(404, f"Not served by HubServer: {method} {path}")

    def _repo_api(self, method: str, repo: Repo, action: str | None, arg: str, rest: str, query: dict, body: bytes):
        if action in (None, "revision"):
            c = repo.commit(arg or "main")
            return {"id": repo.id, "sha": c.id, "private": repo.private, "author": repo.id.split("/")[0],
                    "lastModified": c.date, "siblings": [{"rfilename": p} for p in sorted(c.files)]}  # fmt: skip
        if action == "refs":
            refs = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": c} for b, c in sorted(repo.branches.items())]
            return {"branches": refs, "converts": [], "tags": [], "pullRequests": []}
        if action == "branch" and method == "DELETE":
            if repo.branches.pop(arg, None) is None:
                raise HubError(404, f"Invalid rev id: {arg}", "RevisionNotFound")
            return {}
        if action == "branch":
            if arg in repo.branches:
                raise HubError(409, f"Reference already exists: refs/heads/{arg}")
            repo.branches[arg] = repo.commit(json.loads(body or b"{}").get("startingPoint") or "main").id
            return {}
        if action == "paths-info":
            files = repo.commit(arg).files
            wanted = [p.strip("/") for p in parse_qs(body.decode()).get("paths", [])]
            return [_entry(p, files) for p in wanted if p in files or any(f.startswith(p + "/") for f in files)]
        if action == "tree":
            files, prefix = repo.commit(arg).files, rest.strip("/")
            rel = [p[len(prefix) + 1 :] if prefix else p for p in files if not prefix or p.startswith(prefix + "/")]
            if prefix and not rel:
                raise HubError(404, f"{rest} does not exist", "EntryNotFound")
            if query.get("recursive", ["false"])[0].lower() in ("1", "true"):
                names = {"/".join(p.split("/")[:i]) for p in rel for i in range(1, p.count("/") + 2)}
            else:
                names = {p.split("/")[0] for p in rel}
            return [_entry(f"{prefix}/{n}" if prefix else n, files) for n in sorted(names)]
        if action == "commits":
            commits, c = [], repo.commit(arg)
            while c is not None:
                commits.append({"id": c.id, "title": c.title, "message": c.message, "date": c.date,
                                "authors": [{"user": self.user}]})  # fmt: skip
                c = repo.commits.get(c.parent)
            return commits
        if action == "preupload":
            files = repo.commit(arg).files
            paths = [f["path"] for f in json.loads(body)["files"]]
            return {"files": [{"path": p, "uploadMode": "lfs" if self._is_lfs(p) else "regular", "shouldIgnore": False,
                               "oid": self._oid(p, files)} for p in paths]}  # fmt: skip
        if action == "commit":
            return self._commit(repo, arg, query, body)
        raise HubError(404, f"Not served by HubServer: {method} .../{action}")

    def _commit(self, repo: Repo, branch: str, query: dict, body: bytes):
        if query.get("create_pr"):
            raise HubError(400, "HubServer does not serve pull requests (create_pr)")
        if branch not in repo.branches:
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first line must be the commit header")
        header, head = lines[0]["value"], repo.commit(branch)
        if header.get("parentCommit") and header["parentCommit"] != head.id:
            raise HubError(412, f"Parent commit {header['parentCommit']} is not the head of {branch} ({head.id})")
        files, changed, deleted = dict(head.files), [], []
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value", {})
            path = value.get("path", "")
            if key == "file":
                files[path] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                if value.get("oid") not in self.blobs:
                    raise HubError(400, f"LFS object {value.get('oid')} was not uploaded")
                files[path] = self.blobs[value["oid"]]
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                deleted.append(path)
            elif key == "deletedFolder":
                deleted += [p for p in list(files) if p.startswith(path.rstrip("/") + "/") and files.pop(p)]
            else:
                raise HubError(400, f"HubServer does not serve the commit operation {key!r}")
            changed += [path] if key in ("file", "lfsFile") else []
        commit = self._new_commit(repo, branch, header.get("summary", ""), header.get("description", ""), files,
                                  changed, deleted)  # fmt: skip
        url = f"{self._url(repo)}/commit/{commit.id}"
        return {"success": True, "commitOid": commit.id, "commitUrl": url, "pullRequestUrl": None}


def _entry(path: str, files: dict[str, bytes]) -> dict:
    if path in files:
        return {"type": "file", "path": path, "oid": git_sha1(files[path]), "size": len(files[path])}
    return {"type": "directory", "path": path, "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0}


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects

    def log_message(self, *args) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b""
        while size := int(self.rfile.readline().split(b";")[0], 16):
            body += self.rfile.read(size)
            self.rfile.readline()
        self.rfile.readline()
        return body

    def _serve(self) -> None:
        hub, method, url = self.hub, self.command, urlsplit(self.path)
        path, body, headers = unquote(url.path), self._body(), {}
        with hub.lock:
            fault = next((f for f in hub.faults if f.matches(method, path)), None)
            if fault is not None:
                fault.times -= 1
            if fault is None or fault.after:
                try:
                    payload = hub.dispatch(method, url.path, parse_qs(url.query), self.headers, body)
                    status, (payload, headers) = 200, payload if isinstance(payload, tuple) else (payload, {})
                except HubError as e:
                    status, payload = e.status, {"error": e.message, **e.extra}
                    headers = {
                        "X-Error-Message": e.message.encode("ascii", "backslashreplace").decode(),
                        **({"X-Error-Code": e.code} if e.code else {}),
                        **e.headers,
                    }
            if fault is not None:
                status, payload = fault.status or 0, {"error": f"HubServer.fail({fault.status})"}
                headers = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
            hub.calls.append(Call(method, path, url.query, status, dict(self.headers)))
        if status == 0:
            self.close_connection = True  # no answer at all
            return
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header(
            "Content-Type", "application/octet-stream" if isinstance(payload, bytes) else "application/json"
        )
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _serve


def use_hub(monkeypatch, url: str, token: str | None, home, disable_xet: bool = True) -> dict[str, str]:
    """Point huggingface_hub, transformers and datasets at `url`, online, with `token` and HF_HOME=`home`, until
    `monkeypatch` undoes it. Returns the environment variables set (to pass to a subprocess)."""
    from huggingface_hub import constants, hf_api

    home = os.fspath(home)
    env = {"HF_ENDPOINT": url, "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
           "HF_HOME": home, "HF_HUB_CACHE": os.path.join(home, "hub"), "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HUB_DISABLE_XET": "1" if disable_xet else "0", **({"HF_TOKEN": token} if token else {})}  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if not token:
        monkeypatch.delenv("HF_TOKEN", raising=False)
    # An empty agent-harness registry: else the first User-Agent built in a process asks the Hub for one.
    os.makedirs(home, exist_ok=True)
    with open(os.path.join(home, ".agent_harnesses.json"), "w") as f:
        json.dump({"standardEnvVars": [], "harnesses": {}}, f)
    patches = {
        "ENDPOINT": url, "HUGGINGFACE_CO_URL_TEMPLATE": url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_OFFLINE": False, "HF_HUB_DISABLE_XET": disable_xet, "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HOME": home, "HF_HUB_CACHE": env["HF_HUB_CACHE"], "HF_ASSETS_CACHE": os.path.join(home, "assets"),
        "HF_XET_CACHE": os.path.join(home, "xet"), "HF_TOKEN_PATH": os.path.join(home, "token"),
        "HF_STORED_TOKENS_PATH": os.path.join(home, "stored_tokens"),
        "AGENT_HARNESSES_PATH": os.path.join(home, ".agent_harnesses.json"),
    }  # fmt: skip
    for name, value in patches.items():
        monkeypatch.setattr(constants, name, value)
    monkeypatch.setattr(hf_api.api, "endpoint", url)  # behind huggingface_hub.create_repo, upload_folder, ...
    if "transformers.utils.hub" in sys.modules:  # its shared HfApi keeps the endpoint it was created with
        monkeypatch.setattr(sys.modules["transformers.utils.hub"], "_hf_api", None)
    if "datasets.config" in sys.modules:
        cache = Path(home, "datasets")
        for name, value in {
            "HF_ENDPOINT": url, "HUB_DATASETS_URL": url + "/datasets/{repo_id}/resolve/{revision}/{path}",
            "HF_HUB_OFFLINE": False, "HF_DATASETS_OFFLINE": False, "HF_DATASETS_CACHE": cache,
            "HF_MODULES_CACHE": Path(home, "modules"), "DOWNLOADED_DATASETS_PATH": cache / "downloads",
            "EXTRACTED_DATASETS_PATH": cache / "downloads" / "extracted",
        }.items():  # fmt: skip
            monkeypatch.setattr(sys.modules["datasets.config"], name, value)
    return env
