"""A loopback Hub-compatible HTTP server for tests, written by hand (test infrastructure, not a Hub).

The real Hub is unreachable from tests, so this speaks just enough of its HTTP API for the real
clients (huggingface_hub 2.x, hf_xet, transformers) to create a model repo, upload a folder through
Xet or the LFS batch API, commit it, and download it again. Every route was read off the installed
client code, not guessed: see the "Hub pushes" section of DESIGN.md. A request no route knows is
answered 501 and recorded in `LoopbackHub.unknown`, so tests notice when a client starts to call
something new. `LoopbackHub.fail` makes a route answer errors, to test retries and failures.

Xet storage is hf_xet's own local CAS (`local://DIR`): the client writes xorbs and shards there
directly, and the server reads the shards to map a committed file's sha256 to its Xet hash.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml
from huggingface_hub.repocard_data import model_index_to_eval_results

__all__ = ["LoopbackHub"]

_REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
_REV = r"(?P<rev>[^/]+)"
_GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
_LFS_MIN_SIZE = 10 * 1024 * 1024  # like the Hub: text files above this size go to LFS/Xet too


def _git_blob_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _xet_hex(raw: bytes) -> str:
    """Xet stores a 32-byte hash as four little-endian u64 words and prints each as 16 hex digits."""
    return "".join(f"{word:016x}" for word in struct.unpack("<4Q", raw))


def xet_files_in_shards(cas_dir: Path) -> dict[str, str]:
    """sha256 -> Xet file hash for every file recorded in the local CAS's shards (`*.mdb`).

    Shard layout (xet-core `mdb_shard`): a 48-byte header, then 48-byte file records, each
    `file_hash[32] flags:u32 n:u32 pad[8]`, followed by n segment records, n verification records
    when flags bit 31 is set, and one metadata record (`sha256[32] pad[16]`) when bit 30 is set;
    a record whose hash is all 0xff ends the file section.
    """
    found: dict[str, str] = {}
    for shard in cas_dir.rglob("*.mdb"):
        data, pos = shard.read_bytes(), 48
        while pos + 48 <= len(data) and data[pos : pos + 32] != b"\xff" * 32:
            file_hash = _xet_hex(data[pos : pos + 32])
            flags, n = struct.unpack_from("<II", data, pos + 32)
            pos += 48 + 48 * n + (48 * n if flags & (1 << 31) else 0)
            if flags & (1 << 30):
                found[_xet_hex(data[pos : pos + 32])] = file_hash
                pos += 48
    return found


@dataclass
class Blob:
    """One file in a commit: inline content for regular files, sha256 (+ Xet hash) for large ones."""

    size: int
    content: bytes | None = None
    sha256: str | None = None
    xet_hash: str | None = None

    @property
    def oid(self) -> str:
        """The git blob id: of the content, or of the LFS pointer file for large files."""
        return _git_blob_oid(self.content if self.sha256 is None else _lfs_pointer(self.sha256, self.size))

    def tree_entry(self, path: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": self.oid, "size": self.size, "path": path}
        if self.sha256 is not None:
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": len(_lfs_pointer(self.sha256, self.size))}
        if self.xet_hash is not None:
            entry["xetHash"] = self.xet_hash
        return entry


@dataclass
class Commit:
    oid: str
    title: str
    files: dict[str, Blob]
    date: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"))


@dataclass
class Repo:
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    def resolve(self, rev: str) -> Commit | None:
        return self.commits.get(self.branches.get(rev, rev))


class HubError(Exception):
    """An error answer: status, `X-Error-Code` (what huggingface_hub maps to exception types) and message."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None, **body: Any):
        super().__init__(message)
        self.status, self.code, self.headers, self.body = status, code, headers or {}, body


@dataclass
class _FailRule:
    pattern: re.Pattern
    status: int
    times: int | None
    message: str


class LoopbackHub:
    """The server's state and routes. `with LoopbackHub(tmp, token=...) as hub:` serves on `hub.endpoint`."""

    def __init__(self, root: Path, token: str | None = None, user: str = "hfssl-tester"):
        self.token, self.user = token, user
        self.cas_dir = Path(root) / "xet-cas"
        self.cas_dir.mkdir(parents=True, exist_ok=True)
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}  # sha256 -> content, uploaded through the LFS batch API
        self.requests: list[str] = []  # "METHOD /path" of every request, in order
        self.unknown: list[str] = []  # requests answered 501, with the reason
        self.authorizations: list[str] = []  # Authorization headers received (tests check what clients sent)
        self._rules: list[_FailRule] = []
        self._lock = threading.Lock()
        self._routes: list[tuple[str, re.Pattern, Callable[..., tuple[int, dict[str, str], bytes]]]] = [
            (m, re.compile(p + r"$"), h)
            for m, p, h in [
                ("POST", r"/api/repos/create", self._create_repo),
                ("DELETE", r"/api/repos/delete", self._delete_repo),
                ("POST", r"/api/validate-yaml", self._validate_yaml),
                ("GET", r"/api/agent-harnesses", self._agent_harnesses),
                ("GET", rf"/api/models/{_REPO}(?:/revision/{_REV})?", self._repo_info),
                ("GET", rf"/api/models/{_REPO}/tree/{_REV}(?:/(?P<path>.+))?", self._tree),
                ("POST", rf"/api/models/{_REPO}/branch/{_REV}", self._create_branch),
                ("POST", rf"/api/models/{_REPO}/preupload/{_REV}", self._preupload),
                ("GET", rf"/api/models/{_REPO}/xet-(?P<kind>read|write)-token/{_REV}", self._xet_token),
                ("POST", rf"/api/models/{_REPO}/commit/{_REV}", self._commit),
                ("POST", rf"/{_REPO}\.git/info/lfs/objects/batch", self._lfs_batch),
                ("POST", rf"/{_REPO}\.git/info/lfs/objects/verify", self._lfs_verify),
                ("PUT", r"/lfs-storage/(?P<oid>[0-9a-f]{64})", self._lfs_put),  # stands in for the presigned S3 URL
                ("GET", rf"/{_REPO}/resolve/{_REV}/(?P<path>.+)", self._resolve),
                ("HEAD", rf"/{_REPO}/resolve/{_REV}/(?P<path>.+)", self._resolve),
            ]
        ]
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the clients expect

            def log_message(self, format: str, *args: Any) -> None:  # quiet: requests are recorded instead
                pass

            def _handle(self) -> None:
                # The clients send a Content-Length; a body sent any other way is new (answered 501, connection closed).
                sized = "Transfer-Encoding" not in self.headers
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if sized else None
                self.close_connection = self.close_connection or not sized
                status, headers, payload = hub._dispatch(self.command, self.path, self.headers, body)
                self.send_response(status)
                for key, value in {"Content-Length": str(len(payload)), **headers}.items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="loopback-hub", daemon=True)

    # ------------------------------------------------------------------ lifecycle and test hooks

    def __enter__(self) -> LoopbackHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail(self, pattern: str, status: int, times: int | None = None, message: str = "injected failure") -> None:
        """Answer `status` to requests whose "METHOD /path" matches `pattern`, `times` times (None: always)."""
        self._rules.append(_FailRule(re.compile(pattern), status, times, message))

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The content of every file in a repo revision (large files from LFS storage or the Xet CAS)."""
        commit = self.repos[repo_id].resolve(revision)
        return {path: blob.content if blob.sha256 is None else self._large_content(blob) for path, blob in commit.files.items()}

    def _large_content(self, blob: Blob) -> bytes:
        if blob.sha256 in self.lfs_objects:
            return self.lfs_objects[blob.sha256]
        from hf_xet import XetFileInfo, XetSession

        target = self.cas_dir.parent / "materialized" / blob.sha256
        target.parent.mkdir(exist_ok=True)
        with XetSession().new_file_download_group(endpoint=f"local://{self.cas_dir}") as group:
            group.start_download_file(XetFileInfo(blob.xet_hash, blob.size), str(target))
        return target.read_bytes()

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, method: str, raw_path: str, headers: Any, body: bytes | None) -> tuple[int, dict[str, str], bytes]:
        url = urlsplit(raw_path)
        request = f"{method} {url.path}"
        with self._lock:
            self.requests.append(request)
            if headers.get("Authorization"):
                self.authorizations.append(headers["Authorization"])
            try:
                for rule in self._rules:
                    if rule.times != 0 and rule.pattern.search(request):
                        rule.times = None if rule.times is None else rule.times - 1
                        raise HubError(rule.status, rule.message)
                for route_method, pattern, handler in self._routes:
                    match = pattern.match(url.path)
                    if route_method == method and match and body is not None:
                        groups = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                        return handler(
                            **groups, query=parse_qs(url.query), body=body, method=method, authorized=self._authorized(headers)
                        )
                raise HubError(501, f"the loopback Hub does not implement {request}")
            except HubError as e:
                if e.status == 501:  # an unknown route, or an option of a known one that is not implemented
                    self.unknown.append(f"{request}: {e}")
                extra = {"X-Error-Code": e.code} if e.code else {}
                if e.status == 401:
                    extra["X-Error-Message"] = "Invalid credentials in Authorization header"
                return self._json({"error": str(e), **e.body}, e.status, {**extra, **e.headers})

    def _authorized(self, headers: Any) -> bool:
        return self.token is None or headers.get("Authorization") == f"Bearer {self.token}"

    @staticmethod
    def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(data).encode()

    def _repo(self, repo: str, authorized: bool, write: bool = False) -> Repo:
        if write and not authorized:
            raise HubError(401, "Invalid username or password.")
        found = self.repos.get(repo)
        if found is None or (found.private and not authorized):
            raise HubError(404, f"Repository {repo} not found", "RepoNotFound")
        return found

    def _commit_of(self, repo: Repo, rev: str) -> Commit:
        commit = repo.resolve(rev)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return commit

    def _new_commit(self, repo: Repo, branch: str, title: str, files: dict[str, Blob]) -> Commit:
        oid = hashlib.sha1(f"{branch}{title}{time.time_ns()}{sorted((p, b.oid) for p, b in files.items())}".encode()).hexdigest()
        repo.commits[oid] = commit = Commit(oid, title, files)
        repo.branches[branch] = oid
        return commit

    # ------------------------------------------------------------------ repos

    def _create_repo(self, body: bytes, authorized: bool, **_: Any):
        if not authorized:
            raise HubError(401, "Invalid username or password.")
        payload = json.loads(body)
        if payload.get("type", "model") != "model":
            raise HubError(501, "the loopback Hub serves model repos only")
        repo_id = f"{payload.get('organization') or self.user}/{payload['name']}"
        if repo_id in self.repos:
            raise HubError(409, "You already created this model repo", "RepoExists", url=f"{self.endpoint}/{repo_id}")
        repo = self.repos[repo_id] = Repo(private=bool(payload.get("private") or payload.get("visibility") == "private"))
        self._new_commit(repo, "main", "initial commit", {".gitattributes": Blob(len(_GITATTRIBUTES), _GITATTRIBUTES)})
        return self._json({"url": f"{self.endpoint}/{repo_id}", "name": repo_id, "id": repo_id})

    def _delete_repo(self, body: bytes, authorized: bool, **_: Any):
        payload = json.loads(body)
        repo_id = f"{payload.get('organization') or self.user}/{payload['name']}"
        self._repo(repo_id, authorized, write=True)
        del self.repos[repo_id]
        return self._json({})

    def _create_branch(self, repo: str, rev: str, body: bytes, authorized: bool, **_: Any):
        found = self._repo(repo, authorized, write=True)
        if rev in found.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{rev}")
        start = self._commit_of(found, json.loads(body or b"{}").get("startingPoint", "main"))
        found.branches[rev] = start.oid
        return self._json({})

    def _validate_yaml(self, body: bytes, **_: Any):
        content = json.loads(body)["content"]
        match = re.match(r"---\n(.*?)\n---\n", content, re.S)
        try:
            metadata = yaml.safe_load(match.group(1)) or {} if match else {}
            if not isinstance(metadata, dict):
                raise yaml.YAMLError("metadata must be a mapping")
            if "model-index" in metadata:  # the Hub rejects a model-index it cannot read as evaluation results
                model_index_to_eval_results(metadata["model-index"])
        except (yaml.YAMLError, KeyError, TypeError, ValueError) as e:
            return self._json({"errors": [{"message": f"{type(e).__name__}: {e}"}], "warnings": []}, 400)
        return self._json({"errors": [], "warnings": []})

    def _agent_harnesses(self, **_: Any):
        """The registry huggingface_hub reads to name an AI agent in its user-agent; empty here."""
        return self._json({"standardEnvVars": [], "harnesses": {}})

    def _repo_info(self, repo: str, authorized: bool, rev: str = "main", **_: Any):
        found = self._repo(repo, authorized)
        commit = self._commit_of(found, rev)
        return self._json(
            {
                "_id": hashlib.sha1(repo.encode()).hexdigest()[:24],
                "id": repo,
                "modelId": repo,
                "author": repo.split("/")[0],
                "sha": commit.oid,
                "lastModified": commit.date,
                "createdAt": found.commits[next(iter(found.commits))].date,
                "private": found.private,
                "disabled": False,
                "gated": False,
                "tags": [],
                "siblings": [{"rfilename": path} for path in sorted(commit.files)],
            }
        )

    def _tree(self, repo: str, rev: str, query: dict, authorized: bool, path: str = "", **_: Any):
        commit = self._commit_of(self._repo(repo, authorized), rev)
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        prefix = f"{path.strip('/')}/" if path else ""
        entries: dict[str, dict[str, Any]] = {}
        for file_path, blob in sorted(commit.files.items()):
            if not file_path.startswith(prefix):
                continue
            relative = file_path[len(prefix) :]
            folders = relative.split("/")[:-1] if recursive else relative.split("/")[:-1][:1]
            for depth in range(1, len(folders) + 1):
                folder = prefix + "/".join(folders[:depth])
                folder_oid = hashlib.sha1(folder.encode()).hexdigest()
                entries.setdefault(folder, {"type": "directory", "oid": folder_oid, "path": folder})
            if recursive or "/" not in relative:
                entries[file_path] = blob.tree_entry(file_path)
        if path and not entries:
            raise HubError(404, f"{path} does not exist on {rev}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        return self._json(list(entries.values()))

    # ------------------------------------------------------------------ uploads

    def _preupload(self, repo: str, rev: str, query: dict, body: bytes, authorized: bool, **_: Any):
        if query:
            raise HubError(501, f"the loopback Hub does not implement preupload options {sorted(query)}")
        commit = self._commit_of(self._repo(repo, authorized, write=True), rev)
        files = []
        for item in json.loads(body)["files"]:
            sample = base64.b64decode(item["sample"])
            large = b"\0" in sample or item["size"] >= _LFS_MIN_SIZE
            existing = commit.files.get(item["path"])
            remote_oid = None if existing is None else (existing.sha256 or existing.oid)
            files.append(
                {"path": item["path"], "uploadMode": "lfs" if large else "regular", "shouldIgnore": False, "oid": remote_oid}
            )
        return self._json({"files": files, "commitOid": commit.oid})

    def _xet_token(self, repo: str, kind: str, authorized: bool, **_: Any):
        self._repo(repo, authorized, write=kind == "write")
        expires, cas = int(time.time()) + 3600, f"local://{self.cas_dir}"
        headers = {"X-Xet-Cas-Url": cas, "X-Xet-Access-Token": f"xet-{kind}-token", "X-Xet-Token-Expiration": str(expires)}
        return self._json({"accessToken": f"xet-{kind}-token", "exp": expires, "casUrl": cas}, headers=headers)

    def _lfs_batch(self, repo: str, body: bytes, authorized: bool, **_: Any):
        self._repo(repo, authorized, write=True)
        payload = json.loads(body)
        if payload.get("operation") != "upload" or "basic" not in payload.get("transfers", ["basic"]):
            raise HubError(501, "the loopback Hub implements basic LFS uploads only")
        objects = []
        for obj in payload["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.lfs_objects:
                entry["actions"] = {
                    "upload": {"href": f"{self.endpoint}/lfs-storage/{obj['oid']}", "header": {}},
                    "verify": {"href": f"{self.endpoint}/{repo}.git/info/lfs/objects/verify", "header": {}},
                }
            objects.append(entry)
        return self._json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def _lfs_put(self, oid: str, body: bytes, **_: Any):
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, "content does not match its sha256")
        self.lfs_objects[oid] = body
        return 200, {}, b""

    def _lfs_verify(self, repo: str, body: bytes, authorized: bool, **_: Any):
        self._repo(repo, authorized, write=True)
        obj = json.loads(body)
        if obj["oid"] not in self.lfs_objects or len(self.lfs_objects[obj["oid"]]) != obj["size"]:
            raise HubError(404, f"object {obj['oid']} was not uploaded")
        return self._json({})

    def _commit(self, repo: str, rev: str, query: dict, body: bytes, authorized: bool, **_: Any):
        if query:
            raise HubError(501, f"the loopback Hub does not implement commit options {sorted(query)}")
        found = self._repo(repo, authorized, write=True)
        if rev not in found.branches:
            raise HubError(404, f"Invalid rev id: {rev} is not a branch", "RevisionNotFound")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0]["key"] != "header":
            raise HubError(400, "a commit starts with its header line")
        header = lines[0]["value"]
        head = found.resolve(rev)
        if header.get("parentCommit") not in (None, head.oid):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files, xet = dict(head.files), None
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                files[value["path"]] = Blob(len(content := base64.b64decode(value["content"])), content)
            elif key == "lfsFile":
                xet = xet if xet is not None else xet_files_in_shards(self.cas_dir)
                sha, size = value["oid"], value["size"]
                if sha not in self.lfs_objects and sha not in xet:
                    raise HubError(422, f"Your push was rejected: {value['path']} points to an object that was never uploaded")
                files[value["path"]] = Blob(size, sha256=sha, xet_hash=None if sha in self.lfs_objects else xet[sha])
            elif key in ("deletedFile", "deletedFolder"):
                folder = value["path"].rstrip("/") + "/"
                gone = [p for p in files if p == value["path"] or (key == "deletedFolder" and p.startswith(folder))]
                if not gone:
                    raise HubError(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
                for p in gone:
                    del files[p]
            else:
                raise HubError(501, f"the loopback Hub does not implement commit operation {key!r}")
        commit = self._new_commit(found, rev, header["summary"], files)
        url = f"{self.endpoint}/{repo}/commit/{commit.oid}"
        return self._json({"success": True, "commitOid": commit.oid, "commitUrl": url})

    # ------------------------------------------------------------------ downloads

    def _resolve(self, repo: str, rev: str, path: str, method: str, authorized: bool, **_: Any):
        commit = self._commit_of(self._repo(repo, authorized), rev)
        blob = commit.files.get(path)
        if blob is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        headers = {"X-Repo-Commit": commit.oid, "Content-Type": "application/octet-stream"}
        if blob.sha256 is None:
            headers["ETag"] = f'"{blob.oid}"'
            return 200, headers, blob.content
        headers.update({"ETag": f'"{blob.sha256}"', "X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(blob.size)})
        if blob.xet_hash is not None:
            headers["X-Xet-Hash"] = blob.xet_hash
            headers["Link"] = f'<{self.endpoint}/api/models/{repo}/xet-read-token/{commit.oid}>; rel="xet-auth"'
        if method == "HEAD":
            return 200, {**headers, "Content-Length": str(blob.size)}, b""
        return 200, headers, self._large_content(blob)
