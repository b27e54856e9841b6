"""`chimera-merge publish DIR REPO`: a finished, verified child onto the Hugging Face hub, resumably.

Only a complete build is published: its manifest present and no resume state, every file the manifest lists on
disk with the shard sizes it recorded (and with `--checksums`, each shard's sha256 re-read and compared:
another full read of the child, ~10 minutes for 690 GB), and `verify --headers-only` passing. The upload is
huggingface_hub's resumable one: `HfApi.upload_large_folder` (many commits, each finished task cached, so
rerunning the same command after an interruption resumes it) where the installed huggingface_hub has it; from
huggingface_hub 2 on, `upload_folder` itself streams, commits in batches and resumes (over hf_xet) and replaces
it. Only the manifest's files are sent, never the build's hidden state.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from merge.errors import CheckpointError, PublishError
from merge.state import FORMAT, MANIFEST_NAME, STATE_NAME, file_sha256
from merge.verify import verify_child

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def check_build(root: Path, *, checksums: bool = False, workers: int = 1) -> dict[str, Any]:
    """The manifest of the finished build in `root`; PublishError (one line, naming the file) if it is not one."""
    if not root.is_dir():
        raise PublishError(f"{root}: not a directory; give the --out directory of a finished build")
    if (root / STATE_NAME).exists():
        raise PublishError(
            f"{root}: an unfinished build; finish it with `chimera-merge build RECIPE --out {root} --resume`"
        )
    try:
        manifest = json.loads((root / MANIFEST_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        raise PublishError(
            f"{root}: no readable {MANIFEST_NAME}; publish the --out directory of a finished build"
        ) from None
    if manifest.get("format") != FORMAT:
        raise PublishError(
            f"{root}: built by an older chimera-merge (no shard checksums); rebuild it, then publish"
        )
    out = manifest["output"]
    for name in [*out["shards"], *out["files"]]:
        if not (root / name).is_file():
            raise PublishError(f"{root / name}: listed in {MANIFEST_NAME} but missing; rebuild the child")
    if checksums:
        with ThreadPoolExecutor(workers) as pool:
            sums = dict(
                zip(out["shards"], pool.map(lambda n: file_sha256(root / n), out["shards"]), strict=True)
            )
        bad = [n for n in out["shards"] if sums[n] != out["sha256"][n]]
        if bad:
            raise PublishError(
                f"{root / bad[0]}: sha256 differs from {MANIFEST_NAME}; the shard is damaged, rebuild it"
            )
    try:
        verify_child(root, headers_only=True)
    except CheckpointError as e:  # VerifyError included
        raise PublishError(f"{root}: fails verify ({e}); rebuild the child") from None
    return manifest


def publish(root: Path, repo: str, *, private: bool = True, checksums: bool = False, workers: int = 8) -> str:
    """Upload the finished build in `root` to hub model repo `repo` (created if absent); returns its URL."""
    if not REPO_ID.match(repo):
        raise PublishError(f"repo {repo!r} is not a hub model id; write it as owner/name")
    manifest = check_build(root, checksums=checksums, workers=workers)
    files = [*manifest["output"]["shards"], *manifest["output"]["files"], MANIFEST_NAME]
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        large = getattr(api, "upload_large_folder", None)
        if large is not None:  # huggingface_hub 0.25 - 1.x
            large(repo_id=repo, folder_path=root, repo_type="model", private=private, allow_patterns=files,
                  num_workers=workers)  # fmt: skip
        else:  # 2.x: upload_folder is the resumable, multi-commit upload
            api.upload_folder(repo_id=repo, folder_path=root, repo_type="model", allow_patterns=files,
                              commit_message=f"chimera-merge: {manifest['recipe']['name']}")  # fmt: skip
    except Exception as e:  # every hub failure (auth, network, quota) as one line; rerunning resumes
        first = str(e).splitlines()[0] if str(e) else ""
        raise PublishError(
            f"cannot upload {root} to {repo} ({type(e).__name__}: {first}); check your login (`hf auth login` or "
            "HF_TOKEN) and rerun the same command: the upload resumes"
        ) from None
    return str(url)
