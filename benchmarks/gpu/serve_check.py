"""Does chimera-serve work on this machine's vLLM? Every endpoint, checked over HTTP; exit 1 on any failure.

Issue 20's "must hold" on the GPU machine (vLLM 0.25 there): GET /health, /ready, /v1/models, /metrics (ours and
vLLM's names), POST /v1/chat/completions streaming and not, POST /v1/completions streaming and not. Each check is
one line of the report: `ok` or what was wrong. Against a running server, or one this script starts:

    python benchmarks/gpu/serve_check.py --base-url http://127.0.0.1:8000 --model-name NAME
    python benchmarks/gpu/serve_check.py --model merge/lab/models/mini-r1 [--json OUT] [-- extra chimera-serve flags]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
CHAT = [{"role": "user", "content": "What is 27+48?"}]
TIMEOUT = httpx.Timeout(120.0)


def _sse(r: httpx.Response) -> list[dict[str, Any]]:
    """The JSON frames of a Server-Sent Events body; requires the closing `data: [DONE]`."""
    frames, done = [], False
    for line in r.iter_lines():
        if not line.startswith("data: "):
            continue
        if line == "data: [DONE]":
            done = True
            continue
        frame = json.loads(line[6:])
        if "error" in frame:
            raise AssertionError(f"error frame: {frame['error']}")
        frames.append(frame)
    if not done:
        raise AssertionError("stream ended without data: [DONE]")
    return frames


def _ok(r: httpx.Response) -> Any:
    if r.status_code != 200:
        raise AssertionError(f"HTTP {r.status_code}: {r.text[:200]}")
    return r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text


def checks(c: httpx.Client, model: str) -> dict[str, Callable[[], str]]:
    def health() -> str:
        _ok(c.get("/health"))
        return "ok"

    def ready() -> str:
        body = _ok(c.get("/ready"))
        if body.get("ready") is not True:
            raise AssertionError(f"not ready: {body}")
        return f"ok {body}"

    def models() -> str:
        ids = [m["id"] for m in _ok(c.get("/v1/models"))["data"]]
        if model not in ids:
            raise AssertionError(f"{model!r} not among {ids}")
        return "ok"

    def chat() -> str:
        body = {"model": model, "messages": CHAT, "max_tokens": 32, "temperature": 0}
        r = _ok(c.post("/v1/chat/completions", json=body))
        msg, usage = r["choices"][0]["message"], r["usage"]
        if not isinstance(msg.get("content"), str | None) or usage["completion_tokens"] < 1:
            raise AssertionError(f"odd answer: {r}")
        if r["choices"][0]["finish_reason"] not in ("stop", "length"):
            raise AssertionError(f"finish_reason {r['choices'][0]['finish_reason']!r}")
        return f"ok {usage['completion_tokens']} tokens, content {str(msg.get('content'))[:40]!r}"

    def chat_stream() -> str:
        body = {"model": model, "messages": CHAT, "max_tokens": 32, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}}  # fmt: skip
        with c.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                raise AssertionError(f"HTTP {r.status_code}: {r.read()[:200]!r}")
            frames = _sse(r)
        deltas = [f for f in frames if f.get("choices")]
        usage = next((f["usage"] for f in frames if f.get("usage")), None)
        if not deltas or usage is None or usage["completion_tokens"] < 1:
            raise AssertionError(f"{len(deltas)} delta frames, usage {usage}")
        return f"ok {len(deltas)} delta frames, {usage['completion_tokens']} tokens"

    def completions() -> str:
        r = _ok(
            c.post(
                "/v1/completions",
                json={"model": model, "prompt": "12+30=", "max_tokens": 16, "temperature": 0},
            )
        )
        if not isinstance(r["choices"][0]["text"], str) or r["usage"]["completion_tokens"] < 1:
            raise AssertionError(f"odd answer: {r}")
        return f"ok {r['usage']['completion_tokens']} tokens"

    def completions_stream() -> str:
        body = {"model": model, "prompt": "12+30=", "max_tokens": 16, "temperature": 0, "stream": True}
        with c.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                raise AssertionError(f"HTTP {r.status_code}: {r.read()[:200]!r}")
            frames = _sse(r)
        text = "".join(ch.get("text", "") for f in frames for ch in f.get("choices", []))
        if not frames:
            raise AssertionError("no frames")
        return f"ok {len(frames)} frames, text {text[:30]!r}"

    def metrics() -> str:
        text = _ok(c.get("/metrics"))
        served = sum(  # answered generation requests only (rejected /v1/models polls at start-up count too)
            float(ln.rsplit(" ", 1)[1])
            for ln in text.splitlines()
            if ln.startswith("chimera_requests_total{") and 'status="200"' in ln and "completions" in ln
        )
        if served < 4:  # the four generation checks before this one
            raise AssertionError(f"answered completions in chimera_requests_total: {served}, expected >= 4")
        if "\nvllm:" not in text:
            raise AssertionError("no vllm:* metrics beside ours")
        return f"ok chimera_requests_total {served:g}, vllm:* present"

    return {"health": health, "ready": ready, "models": models, "chat": chat, "chat_stream": chat_stream,
            "completions": completions, "completions_stream": completions_stream, "metrics": metrics}  # fmt: skip


def run_checks(base: str, model: str) -> dict[str, str]:
    """Every check against `base`; each value is 'ok ...' or 'FAIL: why'."""
    results: dict[str, str] = {}
    with httpx.Client(base_url=base, timeout=TIMEOUT) as c:
        for name, check in checks(c, model).items():
            try:
                results[name] = check()
            except Exception as e:  # a failed check is a result: report it and go on with the others
                results[name] = f"FAIL: {type(e).__name__}: {str(e)[:300]}"
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base-url", help="a running server")
    ap.add_argument("--model-name", default=None, help="served model name (default: the one started here)")
    ap.add_argument("--model", type=Path, help="start chimera-serve on this model directory instead")
    ap.add_argument("--log-dir", type=Path, default=Path("/tmp/serve-check-logs"))
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("extra", nargs="*", help="extra chimera-serve flags (after --)")
    a = ap.parse_args()
    if bool(a.base_url) == bool(a.model):
        ap.error("give exactly one of --base-url and --model")
    srv = None
    if a.model:
        sys.path[:0] = [str(HERE), str(HERE.parents[1])]  # servers.py beside it, the repo for its imports
        import servers

        flags = servers.engine_flags(max_model_len=256, gpu_memory_utilization=0.5, max_num_seqs=16,
                                     enforce_eager=servers.has_cuda(), extra=a.extra)  # fmt: skip
        srv = servers.start("chimera", a.model, flags, a.log_dir)
        base, model = srv.base, a.model_name or servers.NAME
    else:
        base, model = a.base_url, a.model_name or "default"
    try:
        results = run_checks(base, model)
    finally:
        if srv is not None:
            srv.stop()
    for name, res in results.items():
        print(f"{name:<20} {res}")
    if a.json:
        a.json.write_text(json.dumps(results, indent=1) + "\n")
    failed = [n for n, r in results.items() if r.startswith("FAIL")]
    if failed:
        print(
            f"serve_check: {len(failed)} of {len(results)} checks failed: {', '.join(failed)}",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
