"""Structured outputs that leave the reasoning free: JSON mode, JSON schemas and forced tool calls.

A grammar applied from the first generated token would also constrain a thinking model's
``<think>...</think>`` block (the JSON lands in the reasoning, or the model cannot think). So the constraint
depends on how the request's output may start (``ThinkMode``, from the rendered prompt):

* ``closed``: no reasoning can come (the template closed the block, or thinking is off): the plain JSON
  constraint, exactly what vLLM gets without reasoning (non-thinking models are unchanged);
* ``open``: the template opened ``<think>`` in the prompt (R1-0528 style): any text up to the first
  ``</think>``, then the JSON;
* ``optional``: the model decides (it may open ``<think>`` itself, as mini-r1 and the original R1 do): an
  optional ``<think>...</think>`` block, then the JSON.

"Any text up to the first ``</think>``" is the regular language of strings that do not contain the tag. Its
characters are all distinct, so after each ``<`` it is enough to forbid the rest of the tag as a prefix of
the ``<``-free run that follows; ``THINK_EBNF`` spells that without recursion on the text's length. The JSON
part comes from xgrammar (vLLM's structured-output backend), so schemas mean the same as in vLLM, and the two
are joined with xgrammar's ``Grammar.concat`` / ``union`` into one EBNF grammar for the engine.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from chimera_serve.reasoning import THINK_CLOSE, prompt_opens_think

ThinkMode = Literal["closed", "open", "optional"]

# Text without "</think>"; the rules below then add the tag and the blank lines models put after it.
THINK_BODY_EBNF = r"""
think_text ::= [^<]* ("<" think_seg)*
think_seg ::= ([^/<] [^<]* | "/" think_seg1)?
think_seg1 ::= ([^t<] [^<]* | "t" think_seg2)?
think_seg2 ::= ([^h<] [^<]* | "h" think_seg3)?
think_seg3 ::= ([^i<] [^<]* | "i" think_seg4)?
think_seg4 ::= ([^n<] [^<]* | "n" think_seg5)?
think_seg5 ::= ([^k<] [^<]* | "k" think_seg6)?
think_seg6 ::= ([^><] [^<]*)?
"""
# At most two newlines around the block: a model that wants to answer "75" after "</think>\\n\\n" would
# otherwise pick the one token the grammar still allows there, another newline, forever.
OPEN_EBNF = 'root ::= think_text "</think>" "\\n"{0,2}' + THINK_BODY_EBNF
OPTIONAL_EBNF = 'root ::= "\\n"{0,2} "<think>" think_text "</think>" "\\n"{0,2}' + THINK_BODY_EBNF


@dataclass(frozen=True)
class Constraint:
    """One structured-output constraint for the engine: exactly one field is set."""

    json: dict[str, Any] | None = None
    json_object: bool | None = None
    grammar: str | None = None


def think_mode(prompt: str, thinking_off: bool) -> ThinkMode:
    """How the answer may start, from the template-rendered prompt and the request's thinking switch."""
    if thinking_off or prompt.rstrip().endswith(THINK_CLOSE):
        return "closed"
    return "open" if prompt_opens_think(prompt) else "optional"


def json_constraint(schema: dict[str, Any] | None, mode: ThinkMode) -> Constraint:
    """The constraint of a JSON answer (`schema` None: any JSON object) after the reasoning `mode` allows.

    Raises ValueError for a schema xgrammar cannot compile (the route answers 400).
    """
    if mode == "closed":
        if schema is None:
            return Constraint(json_object=True)
        _schema_grammar(json.dumps(schema, sort_keys=True))  # refused here, before a stream's 200 is sent
        return Constraint(json=schema)
    key = json.dumps(schema if schema is not None else OBJECT_SCHEMA, sort_keys=True)
    return Constraint(grammar=_think_then_json(key, mode))


OBJECT_SCHEMA = {"type": "object"}  # what vLLM compiles for json_object


@functools.lru_cache(maxsize=256)
def _schema_grammar(schema_json: str) -> Any:
    """xgrammar's grammar of a JSON schema, compact (no free whitespace, for the same reason as the newlines
    above); ValueError with xgrammar's reason for a schema it cannot compile."""
    import xgrammar as xgr

    try:
        return xgr.Grammar.from_json_schema(schema_json, any_whitespace=False)
    except Exception as e:  # xgrammar raises RuntimeError/ValueError, its reason after "[time] file:line: "
        reason = re.sub(r"^\[[^]]*\]\s*\S+:\d+:\s*", "", str(e).strip().splitlines()[0])
        raise ValueError(f"the JSON schema cannot be compiled: {reason}") from None


@functools.lru_cache(maxsize=256)
def _think_then_json(schema_json: str, mode: ThinkMode) -> str:
    import xgrammar as xgr

    body = _schema_grammar(schema_json)
    if mode == "open":
        return str(xgr.Grammar.concat(xgr.Grammar.from_ebnf(OPEN_EBNF), body))
    think = xgr.Grammar.concat(xgr.Grammar.from_ebnf(OPTIONAL_EBNF), body)
    return str(xgr.Grammar.union(think, body))
