"""Re-cut the vLLM bundle's parts so that each device call carries at most a byte limit, the repository included.

`../shared/gpu/build_vllm_bundle.sh` cuts the compressed stream into 49,000,000-byte parts and puts the zstandard
wheel and the unpack script in p0. With the working tree (~8 MB) travelling in every call, that is ~63 MB in the
first call, and the wheels the first call needs for the background merge build (`.whl/`, pydantic) would not fit
under a 55 MB budget. This moves the unpacker to the last part (it runs in the last carrying call anyway) and
cuts the stream again: call 1 = p0 + .whl/ + tree, calls 2..N-1 = pK + tree, call N = pN + unpacker + tree. The
stream's bytes and order are unchanged (`cat part.*` gives the same file), which is checked before writing.

    python benchmarks/gpu/recut_bundle.py .vllm-bundle [--limit 55000000] [--parts 4]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
from pathlib import Path


def tree_bytes(repo: Path) -> int:
    """Bytes of what every device call sends: tracked and untracked-not-ignored files."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=repo, capture_output=True,
                         check=True).stdout  # fmt: skip
    return sum((repo / n).stat().st_size for n in out.decode().split("\0") if n and (repo / n).is_file())


def capacities(limit: int, tree: int, first_extra: int, last_extra: int, parts: int) -> list[int]:
    """Stream bytes each part may hold under `limit`."""
    caps = [limit - tree] * parts
    caps[0] -= first_extra
    caps[-1] -= last_extra
    if min(caps) <= 0:
        raise SystemExit(f"limit {limit:,} leaves no room for a part (working tree {tree:,} bytes)")
    return caps


def cut(stream: bytes, caps: list[int]) -> list[bytes]:
    """Consecutive pieces of `stream`, each within its capacity, filled evenly."""
    if sum(caps) < len(stream):
        raise SystemExit(
            f"{len(stream):,} bytes do not fit in {len(caps)} parts ({sum(caps):,}); add --parts"
        )
    share = len(stream) / sum(caps)
    sizes = [int(c * share) for c in caps]
    sizes[-1] = len(stream) - sum(sizes[:-1])
    out, pos = [], 0
    for n in sizes:
        out.append(stream[pos : pos + n])
        pos += n
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--limit", type=int, default=55_000_000, help="bytes per call, the working tree included")
    ap.add_argument("--parts", type=int, default=4)
    ap.add_argument("--whl", type=Path, default=Path(".whl"), help="wheels the first call carries too")
    a = ap.parse_args()
    repo = Path(__file__).resolve().parents[2]
    old = sorted(a.bundle.glob("p*/part.*"), key=lambda p: p.name)
    unpacker = [*a.bundle.glob("p*/zstandard-*.whl"), *a.bundle.glob("p*/unpack_vllm_bundle.sh")]
    if not old or len(unpacker) != 2:
        raise SystemExit(
            f"{a.bundle} does not hold a bundle (part.* files, the zstandard wheel, the unpack script)"
        )
    stream = b"".join(p.read_bytes() for p in old)
    digest = hashlib.sha256(stream).hexdigest()
    whl = sum(f.stat().st_size for f in a.whl.glob("*.whl"))
    tree = tree_bytes(repo)
    pieces = cut(stream, capacities(a.limit, tree, whl, sum(f.stat().st_size for f in unpacker), a.parts))
    if hashlib.sha256(b"".join(pieces)).hexdigest() != digest:
        raise SystemExit("re-cut stream differs from the original; nothing written")
    staging = a.bundle.with_name(a.bundle.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    for i, piece in enumerate(pieces):
        (staging / f"p{i}").mkdir(parents=True)
        (staging / f"p{i}" / f"part.{i}").write_bytes(piece)
    for f in unpacker:
        shutil.copy2(f, staging / f"p{len(pieces) - 1}" / f.name)
    shutil.rmtree(a.bundle)
    staging.rename(a.bundle)
    for i in range(len(pieces)):
        part = sum(f.stat().st_size for f in (a.bundle / f"p{i}").iterdir())
        call = part + tree + (whl if i == 0 else 0)
        print(f"p{i}: {part:,} bytes; call {i + 1} carries {call:,} bytes with the working tree"
              + (" and .whl/" if i == 0 else ""))  # fmt: skip
    print(f"stream sha256 {digest} (unchanged), working tree {tree:,} bytes")


if __name__ == "__main__":
    main()
