"""Tensor parallel on the CPU, with flags alone: `--tensor-parallel-size 2` and no environment variables.

The 8-GPU deployment runs the child with tensor parallelism; this is the one place here where that code path
runs (two CPU ranks, one core each). Without the server's CPU defaults vLLM refuses to start ("Not enough
allowed NUMA nodes", or its memory check). Its greedy answers must equal the TP=1 session server's.
"""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from conftest import API_KEY, RunningServer, running_server

pytestmark = pytest.mark.engine
PROMPTS = ["What is 27+48?", "13+56", "What is 64+19?", "5+7", "What is 90+9?"]


@pytest.fixture(scope="module")
def tp2(model_dir, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    unset = {"VLLM_CPU_KVCACHE_SPACE": None, "VLLM_CPU_OMP_THREADS_BIND": None}
    with running_server(
        model_dir, tmp_path_factory.mktemp("tp2-log"), "--tensor-parallel-size", "2", env=unset
    ) as srv:
        yield srv


def _answers(srv: RunningServer) -> list[tuple[str | None, str]]:
    oai = openai.OpenAI(base_url=f"{srv.base_url}/v1", api_key=API_KEY, max_retries=0, timeout=120)
    out = []
    for p in PROMPTS:
        r = oai.chat.completions.create(
            model=srv.model, messages=[{"role": "user", "content": p}], temperature=0, max_tokens=40
        )
        m = r.choices[0].message.model_dump()
        out.append((m.get("reasoning"), m["content"]))
    return out


def test_tp2_starts_with_flags_alone_and_answers_like_tp1(tp2: RunningServer, server: RunningServer) -> None:
    assert "VLLM_CPU_OMP_THREADS_BIND=" in tp2.log()  # the default the server chose, logged at start
    assert _answers(tp2) == _answers(server)
