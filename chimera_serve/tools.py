"""Tool calls: the constraint a request puts on the answer, and the calls found in what the model wrote.

How a call comes out depends on OpenAI's `tool_choice`:

* ``auto``: the model decides. DeepSeek-V3-family models write
  ``<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\\n```json\\nARGS\\n```<｜tool▁call▁end｜>...``;
  vLLM's own ``deepseek_v3`` tool parser extracts the calls (the engine adapter hands it to us as an
  ``extract(text) -> ToolExtraction`` function). Content before the marker streams as it comes; from the
  marker on, the text is held and parsed when the choice finishes (one delta per call: arguments arrive
  whole, which every OpenAI client accumulates the same way).
* ``required`` / named: the answer is constrained (structured outputs) to JSON: an array of
  ``{"name", "parameters"}`` (the schema vLLM's server uses) or the named function's parameters; it is parsed
  here into calls.
* ``none``: tools are shown to the model and never extracted.

Everything here is pure: no engine, no HTTP.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from chimera_serve.reasoning import partial_tag_len

TOOL_CALLS_BEGIN = "<｜tool▁calls▁begin｜>"  # DeepSeek-V3's marker; the parser needs it in the vocabulary

ToolMode = Literal["off", "none", "auto", "required", "named"]


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text


@dataclass(frozen=True)
class ToolExtraction:
    """What a tool parser found: the content before the calls (None if none) and the calls."""

    content: str | None
    calls: list[ToolCall]


Extractor = Callable[[str], ToolExtraction]


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def required_schema(tools: list[dict[str, Any]], parallel: bool | None) -> dict[str, Any]:
    """JSON schema of `tool_choice: required`: one or more {"name", "parameters"} objects (vLLM's shape)."""
    variants = [
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "enum": [t["function"]["name"]]},
                "parameters": t["function"].get("parameters") or {"type": "object", "properties": {}},
            },
            "required": ["name", "parameters"],
        }
        for t in tools
    ]
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": variants}}
    if parallel is False:
        schema["maxItems"] = 1
    return schema


def named_schema(tool: dict[str, Any]) -> dict[str, Any]:
    """JSON schema of a named tool_choice: the function's parameters."""
    return tool["function"].get("parameters") or {"type": "object", "properties": {}}


def calls_from_json(text: str, mode: ToolMode, named: str | None = None) -> list[ToolCall]:
    """Calls from a constrained answer; [] when it is not complete JSON (cut by max_tokens)."""
    try:
        value = json.loads(text)
    except ValueError:
        return []
    if mode == "named" and named is not None:
        return [ToolCall(new_call_id(), named, json.dumps(value, ensure_ascii=False))]
    if mode == "required" and isinstance(value, list):
        return [
            ToolCall(new_call_id(), str(v["name"]), json.dumps(v.get("parameters", {}), ensure_ascii=False))
            for v in value
            if isinstance(v, dict) and "name" in v
        ]
    return []


@dataclass
class ToolCallCollector:
    """One choice's content stream: passes content through and keeps back what may be tool calls.

    `feed` returns the content to send now; `finish` returns (content tail, calls). In `auto` mode content
    streams up to the DeepSeek marker (a partial marker at the end of a chunk is held until it resolves);
    in the forced modes all of it is held, since it is the call.
    """

    mode: ToolMode
    extract: Extractor | None = None  # auto mode: the engine's tool parser
    named: str | None = None
    _held: str = ""
    _sent: list[str] = field(default_factory=list)  # content passed on, in parts (joined once, at finish)
    _in_calls: bool = False
    calls: list[ToolCall] = field(default_factory=list)

    @property
    def passthrough(self) -> bool:
        return self.mode in ("off", "none")

    def feed(self, content: str) -> str:
        if self.passthrough or not content:
            return content
        self._held += content
        if self.mode != "auto" or self._in_calls:
            return ""
        idx = self._held.find(TOOL_CALLS_BEGIN)
        if idx >= 0:
            out, self._held, self._in_calls = self._held[:idx], self._held[idx:], True
        else:
            keep = partial_tag_len(self._held, TOOL_CALLS_BEGIN)
            out, self._held = self._held[: len(self._held) - keep], self._held[len(self._held) - keep :]
        self._sent.append(out)
        return out

    def finish(self) -> str:
        """Parse what was held; returns content not yet sent (sets `calls`)."""
        if self.passthrough:
            return ""
        held, self._held = self._held, ""
        if self.mode in ("required", "named"):
            self.calls = calls_from_json(held, self.mode, self.named)
            return "" if self.calls else held
        if not self._in_calls or self.extract is None:
            return held
        sent = "".join(self._sent)
        found = self.extract(sent + held)
        self.calls = list(found.calls)
        if not self.calls:  # a marker with nothing parseable after it: the text is content after all
            return held
        return (found.content or "")[len(sent) :]


def tool_call_dicts(calls: list[ToolCall]) -> list[dict[str, Any]]:
    """Calls as stream `delta.tool_calls` entries (index, id, type, function)."""
    return [
        {
            "index": i,
            "id": c.id,
            "type": "function",
            "function": {"name": c.name, "arguments": c.arguments},
        }
        for i, c in enumerate(calls)
    ]
