"""`chimera-merge publish DIR REPO`: what is refused before any upload (bad repo id, unfinished or damaged builds),
and the real huggingface_hub client uploading a finished child to a local stand-in for the hub's HTTP API.

No hub is reachable here, so the stand-in answers the three endpoints huggingface_hub's plain (non-xet) upload
uses: create repo, validate the model card's YAML, preupload, commit. What it cannot show: the hub's own behaviour, hf_xet's chunked transfer,
and resuming an interrupted upload of a large folder (that is huggingface_hub's, exercised by its own tests).
"""

from __future__ import annotations

import base64
import gzip
import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from merge_helpers import assert_one_line_error, run_cli

from merge.errors import PublishError
from merge.execute import build_child
from merge.publish import check_build, publish
from merge.recipe import Recipe
from merge.state import MANIFEST_NAME, STATE_NAME


@pytest.fixture(scope="module")
def child(parents: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = Recipe.model_validate({"name": "pub", "base": "a", "parents": {"a": str(parents["a"]), "b": str(parents["b"])},
                               "rules": [{"select": "routed_experts", "weights": {"a": 0.5, "b": 0.5}}],
                               "output": {"shard_size": "300KB"}})  # fmt: skip
    out = tmp_path_factory.mktemp("pub") / "child"
    build_child(r, out)
    return out


def _copy(child: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(child, tmp_path / "child"))


def test_refused_before_any_upload(child: Path, tmp_path: Path) -> None:
    with pytest.raises(PublishError, match="is not a hub model id; write it as owner/name"):
        publish(child, "no-owner")
    with pytest.raises(PublishError, match="not a directory"):
        publish(tmp_path / "nothing", "org/x")
    d = _copy(child, tmp_path)
    manifest = json.loads((d / MANIFEST_NAME).read_text())
    shard = d / manifest["output"]["shards"][1]
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF  # one flipped byte: same size, same header
    shard.write_bytes(data)
    check_build(d)  # sizes and headers look fine
    with pytest.raises(PublishError, match=f"{shard.name}: sha256 differs"):
        check_build(d, checksums=True)
    (d / "LICENSE").unlink()
    with pytest.raises(PublishError, match=r"LICENSE: listed in merge-manifest\.json but missing"):
        check_build(d)
    (d / STATE_NAME).write_text("{}")
    assert_one_line_error(run_cli("publish", str(d), "org/x"), "unfinished build", "--resume")


class _FakeHub(BaseHTTPRequestHandler):
    """The hub API calls of `upload_folder` without hf_xet: create repo, validate-yaml (parsed for real),
    preupload (every file regular), commit."""

    files: dict[str, bytes]
    calls: list[tuple[str, str]]

    def _body(self) -> bytes:
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        return gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw

    def _reply(self, obj: Any, status: int = 200) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        body = self._body()
        self.calls.append(("POST", self.path))
        host = f"http://{self.headers['Host']}"
        if self.path == "/api/repos/create":
            req = json.loads(body)
            self._reply({"url": f"{host}/{req['organization']}/{req['name']}"})
        elif self.path == "/api/validate-yaml":
            card = json.loads(body)["content"]
            meta = yaml.safe_load(card.split("---")[1]) if card.startswith("---") else None
            ok = isinstance(meta, dict)
            self._reply(
                {"errors": [] if ok else [{"message": "no YAML metadata"}], "warnings": []},
                200 if ok else 400,
            )
        elif "/preupload/" in self.path:
            files = json.loads(body)["files"]
            self._reply(
                {
                    "files": [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
                    ]
                }
            )
        elif "/commit/" in self.path:
            for line in body.splitlines():
                op = json.loads(line)
                if op["key"] == "file":
                    self.files[op["value"]["path"]] = base64.b64decode(op["value"]["content"])
            repo = self.path.removeprefix("/api/models/").split("/commit/")[0]
            self._reply(
                {
                    "commitUrl": f"{host}/{repo}/commit/{'1' * 40}",
                    "commitOid": "1" * 40,
                    "pullRequestUrl": None,
                }
            )
        else:
            self._reply({"error": "not found"}, 404)

    def do_GET(self) -> None:
        self.calls.append(("GET", self.path))
        self._reply({"error": "not found"}, 404)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_hub() -> Iterator[tuple[str, type[_FakeHub]]]:
    handler = type("Hub", (_FakeHub,), {"files": {}, "calls": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_publish_uploads_the_manifest_files(child: Path, fake_hub: tuple[str, type[_FakeHub]]) -> None:
    url, hub = fake_hub
    (child / ".chimera-merge-extra.tmp").write_text("never uploaded")
    try:
        env = {
            "HF_ENDPOINT": url,
            "HF_TOKEN": "hf_test",
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }
        p = run_cli("publish", str(child), "org/mini-chimera", "--checksums", env=env)
    finally:
        (child / ".chimera-merge-extra.tmp").unlink()
    assert p.returncode == 0, p.stderr
    assert f"{url}/org/mini-chimera" in p.stdout
    m = json.loads((child / MANIFEST_NAME).read_text())
    want = {*m["output"]["shards"], *m["output"]["files"], MANIFEST_NAME}
    assert set(hub.files) == want
    assert all(hub.files[n] == (child / n).read_bytes() for n in want)
    assert ("POST", "/api/repos/create") in hub.calls
