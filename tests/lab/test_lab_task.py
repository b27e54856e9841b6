"""The addition task: splits, reply formats and the answer checker."""

from __future__ import annotations

from merge.lab.task import (
    Problem,
    answer_text,
    heldout_problems,
    is_correct,
    pairs,
    parse_completion,
    think_trace,
)


def test_heldout_is_disjoint_and_fixed() -> None:
    train, held = set(pairs("train")), set(pairs("heldout"))
    assert not train & held
    assert len(train) + len(held) == 100 * 100
    assert 900 <= len(held) <= 1100
    a = heldout_problems(50)
    assert a == heldout_problems(50)
    assert all((p.a, p.b) in held for p in a)
    assert {p.prompt.startswith("What is") for p in a} == {True, False}


def test_think_trace_carries() -> None:
    assert think_trace(97, 48) == "7+8=15\n9+4+1=14"
    assert think_trace(3, 4) == "3+4=7\n0+0+0=0"
    assert answer_text(97, 48, "think") == "<think>\n7+8=15\n9+4+1=14\n</think>\n\n145"
    assert answer_text(97, 48, "direct") == "145"


def test_parse_completion() -> None:
    assert parse_completion("145") == parse_completion(" 145\n")
    assert parse_completion("145").think is False and parse_completion("145").answer == 145
    full = parse_completion(answer_text(97, 48, "think"))
    assert full.think and full.answer == 145
    assert parse_completion("<think>\n7+8=15").think is False  # never closed
    assert parse_completion("</think>145").think is False  # closed, never opened
    assert parse_completion("<think>x</think>abc").answer is None
    assert parse_completion("").answer is None


def test_is_correct() -> None:
    p = Problem(97, 48, "97+48")
    assert is_correct(p, "145")
    assert is_correct(p, answer_text(97, 48, "think"))
    assert not is_correct(p, "146")
    assert not is_correct(p, "<think>\n145</think>\n\n14")  # the final answer counts, not the trace


def test_score_counts_think_blocks_and_answers() -> None:
    from merge.lab.evaluate import score

    problems = [Problem(1, 2, "1+2"), Problem(97, 48, "97+48"), Problem(5, 5, "5+5")]
    texts = ["3", answer_text(97, 48, "think"), "<think>\n5+5=10"]
    r = score(problems, texts, [2, 22, 64], "m")
    assert r.n == 3 and r.think_rate == 1 / 3 and r.accuracy == 2 / 3
    assert r.mean_output_tokens == (2 + 22 + 64) / 3
    assert r.samples[0] == {"prompt": "1+2", "output": "3"}
