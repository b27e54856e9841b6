"""Configuration at the boundary and the workloads it names (pure: no HTTP)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from benchmarks.load.config import (
    Fixed,
    JsonlWorkload,
    LabWorkload,
    LoadConfig,
    LogNormal,
    Sweep,
    SyntheticWorkload,
    Uniform,
    parse_lengths,
)
from benchmarks.load.errors import ConfigError
from benchmarks.load.workload import (
    answer_of,
    jsonl_prompts,
    lab_prompts,
    sample_lengths,
    synthetic_prompts,
    write_sharegpt,
)

MINI = Path(__file__).resolve().parents[2] / "merge" / "lab" / "models" / "mini-r1"


def test_lengths_parse() -> None:
    assert parse_lengths("128") == Fixed(value=128)
    assert parse_lengths("uniform:4:9") == Uniform(low=4, high=9)
    assert parse_lengths("lognormal:100:0.8") == LogNormal(median=100, sigma=0.8, cap=800)
    assert parse_lengths("lognormal:100:0.8:300") == LogNormal(median=100, sigma=0.8, cap=300)


@pytest.mark.parametrize(
    "bad", ["0", "x", "uniform:9:4", "lognormal:100:0", "lognormal:100:1:50", "zipf:3", ""]
)
def test_bad_lengths_are_refused_with_the_text(bad: str) -> None:
    with pytest.raises(ConfigError, match="length"):
        parse_lengths(bad)


@pytest.mark.parametrize(
    ("given", "base"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000"),
        ("http://h:1/v1", "http://h:1"),
        ("https://r.example/api/v1/chat/completions", "https://r.example/api"),
    ],
)
def test_url_becomes_the_base(given: str, base: str) -> None:
    assert LoadConfig(url=given).url == base


def test_config_refusals() -> None:
    with pytest.raises(ValidationError, match="http"):
        LoadConfig(url="127.0.0.1:8000")
    with pytest.raises(ValidationError, match="extra_body may not set"):
        LoadConfig(url="http://h", extra_body={"stream": False})
    with pytest.raises(ValidationError):
        LoadConfig(url="http://h", max_requests=0)
    with pytest.raises(ValidationError, match="levels"):
        Sweep(levels=(0, 2))
    with pytest.raises(ValidationError, match="fractions"):
        Sweep(rate_fractions=(0.5, 1.5))
    with pytest.raises(ValidationError, match="does not exist"):
        JsonlWorkload(path=Path("/nonexistent/p.jsonl"))


def test_api_key_never_in_the_report() -> None:
    cfg = LoadConfig(url="http://h", api_key="secret-key-0123456789")
    assert "secret" not in json.dumps(cfg.redacted()) and "secret" not in repr(cfg)
    assert cfg.redacted()["api_key"] == "(set)"


def test_ignore_eos_defaults_by_workload() -> None:
    assert LoadConfig(url="http://h").eos_ignored is True
    assert LoadConfig(url="http://h", workload=LabWorkload()).eos_ignored is False
    assert LoadConfig(url="http://h", ignore_eos=False).eos_ignored is False


def test_length_distributions() -> None:
    rng = np.random.default_rng(0)
    u = sample_lengths(Uniform(low=3, high=7), 5000, rng)
    assert min(u) == 3 and max(u) == 7
    ln = np.array(sample_lengths(LogNormal(median=100, sigma=1.0, cap=2000), 20000, rng))
    assert 90 <= np.median(ln) <= 110  # the lognormal's median
    assert ln.max() <= 2000 and np.mean(ln) > 1.3 * np.median(ln)  # long tail: mean well above the median
    assert (ln == 2000).any()


def test_synthetic_prompts_reproducible_distinct_and_sized() -> None:
    w = SyntheticWorkload(input_len=Fixed(value=12), output_len=Uniform(low=5, high=9), seed=3)
    a, b = synthetic_prompts(w, 50), synthetic_prompts(w, 50)
    assert a == b
    texts = [p.messages[0]["content"] for p in a]
    assert len(set(texts)) == 50 and len({t.split()[0] for t in texts}) > 10  # no shared prefix
    assert all(len(t.split()) == 12 for t in texts)
    assert {p.max_tokens for p in a} <= set(range(5, 10))
    assert synthetic_prompts(w.model_copy(update={"seed": 4}), 50) != a


def test_synthetic_prompts_exact_tokens_with_a_tokenizer() -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(MINI / "tokenizer.json"))
    w = SyntheticWorkload(input_len=Uniform(low=5, high=60), seed=1, tokenizer=MINI)
    for p in synthetic_prompts(w, 30):
        n = len(tok.encode(p.messages[0]["content"], add_special_tokens=False).ids)
        assert n == len(p.messages[0]["content"])  # the lab's tokenizer: one token per character
        assert 5 <= n <= 60


def test_jsonl_prompts(tmp_path: Path) -> None:
    f = tmp_path / "p.jsonl"
    f.write_text(
        '{"prompt": "hi", "max_tokens": 7}\n\n'
        '{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}], "expected": 5}\n'
        '{"prompt": "x", "output_tokens": 3}\n'
    )
    ps = jsonl_prompts(JsonlWorkload(path=f, output_len=11))
    assert [p.max_tokens for p in ps] == [7, 11, 3]
    assert ps[1].messages[0]["role"] == "system" and ps[1].expected == "5"
    f.write_text('{"prompt": "ok"}\n{"text": "no"}\n')
    with pytest.raises(ConfigError, match=r"p.jsonl:2:"):
        jsonl_prompts(JsonlWorkload(path=f))


def test_lab_prompts_carry_their_answers() -> None:
    ps = lab_prompts(LabWorkload(n=20))
    for p in ps:
        a, b = (int(x) for x in p.messages[0]["content"].removeprefix("What is ").rstrip("?").split("+"))
        assert p.expected == str(a + b)
    assert answer_of("<think>\n7+8=15\n</think>\n\n75") == "75" and answer_of(" 75 ") == "75"


def test_sharegpt_export_for_vllm_bench(tmp_path: Path) -> None:
    ps = synthetic_prompts(SyntheticWorkload(input_len=Fixed(value=4)), 3)
    write_sharegpt(ps, tmp_path / "d.json")
    rows = json.loads((tmp_path / "d.json").read_text())
    assert [r["conversations"][0]["value"] for r in rows] == [p.messages[0]["content"] for p in ps]
    assert all(len(r["conversations"]) == 2 for r in rows)
