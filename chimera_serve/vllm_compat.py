"""Every place where vLLM releases differ, in one module: the server runs on vLLM 0.25 through 0.33.

The rest of the server calls these functions and never imports vLLM paths that moved between releases.
Features are detected by what the installed vLLM has (an import, a field), not by its version number.
What differs across 0.25 / 0.32 / 0.33 for what we call (read from the three releases' sources):

| what                                 | 0.25                                       | 0.32 / 0.33                          |
|--------------------------------------|--------------------------------------------|--------------------------------------|
| unfinished requests                  | only ``output_processor.get_num_...()``    | also ``AsyncLLM.get_num_...()``      |
| the engine refusing a request        | ``VLLMValidationError`` / ``VLLMUnproces-  | ``vllm.exceptions.VLLMClientError``  |
|                                      | sableEntityError`` / plain ``ValueError``  | (and its subclasses)                 |
| accepted kernel / KV-cache values    | fewer (the ``Literal`` of the release)     | more                                 |
| deepseek_v3 tool-call arguments      | one line of JSON                           | any JSON                             |

Everything else we use (``tokens_input``, ``ReasoningConfig``, ``thinking_token_budget``, ``StructuredOutputsParams``,
the engine arguments, ``ToolParserManager``, ``UsageContext``) is the same in all three.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import typing
from typing import Any

from chimera_serve.reasoning import THINK_CLOSE, THINK_OPEN


@functools.cache
def version() -> str:
    import vllm

    return str(getattr(vllm, "__version__", "unknown"))


def _first_import(*paths: str) -> Any:
    """The first of `module:attr` paths that imports, or None."""
    for path in paths:
        module, _, attr = path.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
    return None


# -- engine arguments ---------------------------------------------------------------------------------


@functools.cache
def engine_arg_fields() -> dict[str, Any]:
    """AsyncEngineArgs' fields: name -> annotation (a Literal lists the values this release accepts)."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    # Field types as written (not get_type_hints: some refer to names the module does not bind at runtime).
    return {f.name: f.type for f in dataclasses.fields(AsyncEngineArgs)}


def literal_choices(field: str) -> list[str] | None:
    """The values this release accepts for engine argument `field` when it is a Literal, else None."""
    annotation = engine_arg_fields().get(field)
    if str in typing.get_args(annotation):  # any string goes (e.g. `str | Literal[...]`): vLLM decides
        return None
    for arg in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(arg) is typing.Literal:
            return [str(v) for v in typing.get_args(arg)]
    return None


def reasoning_engine_args() -> dict[str, Any]:
    """`reasoning_config` marking <think>/</think>, where the release can enforce a reasoning budget."""
    config_cls = _first_import("vllm.config.reasoning:ReasoningConfig", "vllm.config:ReasoningConfig")
    if config_cls is None or "reasoning_config" not in engine_arg_fields():
        return {}
    return {"reasoning_config": config_cls(reasoning_start_str=THINK_OPEN, reasoning_end_str=THINK_CLOSE)}


def speculative_config(num_tokens: int) -> dict[str, Any]:
    """MTP speculative decoding with DeepSeek-V3's own next-token layer."""
    from vllm.config import speculative as spec

    methods = typing.get_args(getattr(spec, "SpeculativeMethod", None)) or ()
    flat = {str(m) for a in methods for m in (typing.get_args(a) or (a,))}
    method = "mtp" if "mtp" in flat or not flat else "deepseek_mtp"
    return {"method": method, "num_speculative_tokens": num_tokens}


def log_stats_interval_s() -> float:
    """How often vLLM's own server has the engine log its stats (`VLLM_LOG_STATS_INTERVAL`, 10 s)."""
    envs = _first_import("vllm:envs")
    return float(getattr(envs, "VLLM_LOG_STATS_INTERVAL", 10.0))


def usage_context() -> Any:
    """The OpenAI-server usage context: vLLM then sizes batches as its own server does (per GPU model)."""
    from vllm.usage.usage_lib import UsageContext

    return UsageContext.OPENAI_API_SERVER


# -- requests -----------------------------------------------------------------------------------------


def tokens_prompt(ids: list[int]) -> Any:
    """A prompt of token ids, in this release's form (never re-tokenized, so no BOS is added)."""
    make = _first_import("vllm.inputs.engine:tokens_input")
    if make is not None:
        return make(ids)
    tokens_prompt_cls = _first_import("vllm.inputs:TokensPrompt", "vllm.inputs.data:TokensPrompt")
    return tokens_prompt_cls(prompt_token_ids=ids)


@functools.cache
def sampling_params_fields() -> frozenset[str]:
    from vllm import SamplingParams

    if dataclasses.is_dataclass(SamplingParams):
        return frozenset(f.name for f in dataclasses.fields(SamplingParams))
    return frozenset(getattr(SamplingParams, "__struct_fields__", ()))  # a msgspec Struct


def thinking_budget_supported() -> bool:
    return "thinking_token_budget" in sampling_params_fields() and bool(reasoning_engine_args())


def structured_outputs_kwargs(
    json: Any = None, json_object: bool | None = None, grammar: str | None = None
) -> dict:
    """SamplingParams keyword for a structured-output constraint: `structured_outputs` or `guided_decoding`."""
    values = {
        k: v
        for k, v in {"json": json, "json_object": json_object, "grammar": grammar}.items()
        if v is not None
    }
    if "structured_outputs" in sampling_params_fields():
        from vllm.sampling_params import StructuredOutputsParams

        return {"structured_outputs": StructuredOutputsParams(**values)}
    from vllm.sampling_params import GuidedDecodingParams  # releases before the rename

    return {"guided_decoding": GuidedDecodingParams(**values)}


# -- engine state and errors --------------------------------------------------------------------------


def num_unfinished(llm: Any) -> int:
    """Requests the engine holds (running or waiting in its scheduler); 0.25 has no AsyncLLM method for it."""
    return int(llm.output_processor.get_num_unfinished_requests())


@functools.cache
def client_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions by which the engine refuses a request's values (a 400, not a 500)."""
    base = _first_import("vllm.exceptions:VLLMClientError")
    if base is not None:
        return (base,)
    return tuple(
        t
        for t in (
            _first_import("vllm.exceptions:VLLMValidationError"),
            _first_import("vllm.exceptions:VLLMUnprocessableEntityError"),
        )
        if t is not None
    )


def legacy_value_errors() -> bool:
    """True on releases (0.25) whose engine refuses some requests with a plain ValueError/TypeError from
    `generate()` before any output; their own server answers those with 400, and so do we."""
    return _first_import("vllm.exceptions:VLLMClientError") is None


@functools.cache
def engine_dead_type() -> type[BaseException] | None:
    return _first_import("vllm.v1.engine.exceptions:EngineDeadError", "vllm.engine.protocol:EngineDeadError")


# -- tool calls ---------------------------------------------------------------------------------------


def tool_parser_class(name: str) -> Any:
    """vLLM's tool parser class registered as `name`, or None when this release has none."""
    manager = _first_import(
        "vllm.tool_parsers:ToolParserManager",
        "vllm.tool_parsers.abstract_tool_parser:ToolParserManager",
        "vllm.entrypoints.openai.tool_parsers:ToolParserManager",
    )
    if manager is None:
        return None
    try:
        return manager.get_tool_parser(name)
    except KeyError:
        return None


def chat_request_cls() -> Any:
    """vLLM's ChatCompletionRequest model (tool parsers take one)."""
    return _first_import(
        "vllm.entrypoints.openai.chat_completion.protocol:ChatCompletionRequest",
        "vllm.entrypoints.openai.protocol:ChatCompletionRequest",
    )
