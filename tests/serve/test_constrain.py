"""The answer's constraint leaves a think block free: checked on strings with xgrammar's own matcher."""

from __future__ import annotations

import random

import pytest
from xgrammar import Grammar
from xgrammar.testing import _is_grammar_accept_string as accepts

from chimera_serve.constrain import Constraint, json_constraint, think_mode

SCHEMA = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
ANSWER = '{"answer": 75}'


@pytest.mark.parametrize(
    ("prompt", "off", "mode"),
    [
        ("<｜Assistant｜><think>\n", False, "open"),
        ("<｜Assistant｜></think>", False, "closed"),
        ("<｜Assistant｜>", False, "optional"),
        ("<｜Assistant｜><think>\n", True, "closed"),
        ("<｜User｜><think> hi<｜Assistant｜>", False, "optional"),  # a user's tag is not the prompt's tail
    ],
)
def test_think_mode(prompt: str, off: bool, mode: str) -> None:
    assert think_mode(prompt, thinking_off=off) == mode


def test_closed_is_the_plain_json_constraint() -> None:
    """Models that cannot reason here get what vLLM gets without reasoning, as before."""
    assert json_constraint(SCHEMA, "closed") == Constraint(json=SCHEMA)
    assert json_constraint(None, "closed") == Constraint(json_object=True)


def grammar(schema: dict | None, mode: str) -> Grammar:
    return Grammar.from_ebnf(json_constraint(schema, mode).grammar)


def test_open_mode_reasons_freely_then_answers_json() -> None:
    g = grammar(SCHEMA, "open")
    assert accepts(g, "7+8=15\n2+4+1=7\n</think>\n\n" + ANSWER)
    assert accepts(g, "a < b, </thin k>, <think> inside\n</think>" + ANSWER)
    assert not accepts(g, ANSWER)  # the prompt opened the block: it must close before the answer
    assert not accepts(g, "x</think>\n\n75")  # the answer is constrained
    assert not accepts(g, "x</think>\n\n\n" + ANSWER)  # no endless blank lines


def test_optional_mode_allows_both_starts() -> None:
    g = grammar(None, "optional")
    assert accepts(g, '{"a": 1}')
    assert accepts(g, '<think>\nhmm\n</think>\n\n{"a": 1}')
    assert not accepts(g, "75")
    assert not accepts(g, '<think>x</think></think>{"a": 1}')  # the first </think> closes the block


def test_think_text_is_exactly_the_text_without_the_close_tag() -> None:
    """Random texts over the tag's own characters: accepted as reasoning iff they do not contain `</think>`."""
    g = grammar(SCHEMA, "open")
    rng = random.Random(0)
    alphabet = [*"</think>", "x", "\n"]
    for _ in range(400):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))
        assert accepts(g, text + "</think>" + ANSWER) == ("</think>" not in text), repr(text)


@pytest.mark.parametrize("mode", ["open", "optional", "closed"])
def test_uncompilable_schema_is_a_value_error(mode: str) -> None:
    """In every mode, "closed" included (vLLM compiles that schema itself, after a stream's 200 went out)."""
    with pytest.raises(ValueError, match=r"cannot be compiled: Cannot find field nope in #/nope$"):
        json_constraint({"type": "object", "properties": {"a": {"$ref": "#/nope"}}}, mode)  # type: ignore[arg-type]
