"""Re-cutting the vLLM bundle keeps its byte stream and fits every call under the limit."""

from __future__ import annotations

import pytest

from benchmarks.gpu import recut_bundle


def test_cut_keeps_the_stream_and_fills_parts_evenly() -> None:
    stream = bytes(range(256)) * 40  # 10,240 bytes
    caps = recut_bundle.capacities(5000, 1000, 600, 300, 4)
    assert caps == [3400, 4000, 4000, 3700]
    pieces = recut_bundle.cut(stream, caps)
    assert b"".join(pieces) == stream
    assert all(len(p) <= c for p, c in zip(pieces, caps, strict=True))
    assert (
        max(len(p) / c for p, c in zip(pieces, caps, strict=True))
        - min(len(p) / c for p, c in zip(pieces, caps, strict=True))
        < 0.01
    )


def test_cut_refuses_what_cannot_fit() -> None:
    with pytest.raises(SystemExit, match="add --parts"):
        recut_bundle.cut(b"x" * 100, [30, 30, 30])
    with pytest.raises(SystemExit, match="no room"):
        recut_bundle.capacities(1000, 990, 20, 0, 2)
