"""The server's own token counters against the client's counts, around a run.

`/metrics` is read after the warm-up and again after the last level; the counters' increase must equal the
sum of the `usage` the client received. Counter families read:
  chimera-serve   chimera_prompt_tokens_total, chimera_completion_tokens_total, chimera_reasoning_tokens_total
                  (label model)
  vLLM's engine   vllm:prompt_tokens_total, vllm:generation_tokens_total (label model_name); chimera-serve
                  exposes these too, so there both are checked
Only the counters of the model under test are summed. Another client's traffic during the run would show up
as a difference, and so do requests the client saw fail (their tokens reach the server's counters but no
`usage` reaches the client): the report gives both counts.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp

from benchmarks.load.client import RequestResult

FAMILIES = {
    "chimera": {
        "label": "model",
        "prompt_tokens": "chimera_prompt_tokens_total",
        "completion_tokens": "chimera_completion_tokens_total",
        "reasoning_tokens": "chimera_reasoning_tokens_total",
    },
    "vllm": {
        "label": "model_name",
        "prompt_tokens": "vllm:prompt_tokens_total",
        "completion_tokens": "vllm:generation_tokens_total",
    },
}
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_counters(text: str, model: str) -> dict[str, dict[str, float]]:
    """Per family found in `text`: {counter: value}, summed over the series labelled with `model` (or over
    all series when none carries a model label)."""
    wanted = {
        name: (fam, key) for fam, spec in FAMILIES.items() for key, name in spec.items() if key != "label"
    }
    found: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = _SAMPLE.match(line)
        if not m or m.group(1) not in wanted:
            continue
        fam, key = wanted[m.group(1)]
        labels = dict(_LABEL.findall(m.group(2) or ""))
        label = labels.get(FAMILIES[fam]["label"])
        if label is not None and label != model:
            continue
        found.setdefault(fam, {}).setdefault(key, 0.0)
        found[fam][key] += float(m.group(3))
    return found


def server_kind(text: str | None) -> str:
    """'chimera-serve' | 'vllm' | 'unknown' from what /metrics exposes."""
    if text is None:
        return "unknown"
    if "chimera_completion_tokens_total" in text:
        return "chimera-serve"
    return "vllm" if "vllm:generation_tokens_total" in text else "unknown"


async def scrape(session: aiohttp.ClientSession, base_url: str, headers: dict[str, str]) -> str | None:
    """GET /metrics as text, or None when there is none."""
    try:
        async with session.get(
            f"{base_url}/metrics", headers=headers, timeout=aiohttp.ClientTimeout(10)
        ) as r:
            return await r.text() if r.status == 200 else None
    except (aiohttp.ClientError, TimeoutError):
        return None


async def scrape_settled(
    session: aiohttp.ClientSession, base_url: str, headers: dict[str, str], model: str
) -> str | None:
    """/metrics once its counters stop moving: a server counts a request as its stream closes, which can
    land just after the client read [DONE]."""
    last, text = None, None
    for _ in range(25):
        text = await scrape(session, base_url, headers)
        if text is None:
            return None
        now = parse_counters(text, model)
        if now == last:
            return text
        last = now
        await asyncio.sleep(0.2)
    return text


def client_totals(results: list[RequestResult]) -> dict[str, Any]:
    """What the client counted from `usage`, and how many requests brought none (failed ones)."""
    with_usage = [r for r in results if r.completion_tokens is not None]
    return {
        "prompt_tokens": sum(r.prompt_tokens or 0 for r in with_usage),
        "completion_tokens": sum(r.completion_tokens or 0 for r in with_usage),
        "reasoning_tokens": sum(r.reasoning_tokens or 0 for r in with_usage),
        "requests_with_usage": len(with_usage),
        "requests_without_usage": len(results) - len(with_usage),
    }


def compare(before: str | None, after: str | None, model: str, client: dict[str, Any]) -> dict[str, Any]:
    """Counter increases per family against the client's totals; `exact` when every one is equal."""
    if before is None or after is None:
        return {"checked": False, "note": "no /metrics on this endpoint (or it stopped answering)"}
    b, a = parse_counters(before, model), parse_counters(after, model)
    if not a:
        return {"checked": False, "note": "/metrics has neither chimera_* nor vllm:* token counters"}
    families = {}
    for fam, counters in a.items():
        delta = {k: v - b.get(fam, {}).get(k, 0.0) for k, v in counters.items()}
        diff = {k: delta[k] - client[k] for k in delta}
        families[fam] = {
            "server": {k: int(v) for k, v in delta.items()},
            "client": {k: client[k] for k in delta},
            "difference": {k: int(v) for k, v in diff.items()},
            "exact": all(v == 0 for v in diff.values()),
        }
    exact = all(f["exact"] for f in families.values())
    note = None
    if not exact and client["requests_without_usage"]:
        note = (
            f"{client['requests_without_usage']} requests failed without usage: the server counted tokens "
            "for them that the client could not"
        )
    return {"checked": True, "exact": exact, "families": families, "client": client, "note": note}


def mismatch_line(check: dict[str, Any]) -> str:
    """One line naming every difference (server - client)."""
    parts = [
        f"{fam} {k} {d:+d}"
        for fam, f in check["families"].items()
        for k, d in f["difference"].items()
        if d != 0
    ]
    return "server /metrics differ from the client's counts (server - client): " + ", ".join(parts)
