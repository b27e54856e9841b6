"""The engine adapter's branches for vLLM 0.25 (the GPU machine's release) exercised on this machine's 0.32.

Where 0.25 differs (no `VLLMClientError`, no `AsyncLLM.get_num_unfinished_requests`, plain `ValueError`s for
refused requests) its shape is put in place of 0.32's modules; the real 0.25 engine runs in
benchmarks/gpu/serve_check.py on the GPU machine.
"""

from __future__ import annotations

import asyncio
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest

from chimera_serve import vllm_compat as compat
from chimera_serve.config import ServeSettings
from chimera_serve.engine import Engine
from chimera_serve.errors import BadRequestError


@pytest.fixture
def vllm_025_exceptions(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[type, type]]:
    """vllm.exceptions as 0.25 has it: two ValueError subclasses, no VLLMClientError tree."""

    class VLLMValidationError(ValueError):
        pass

    class VLLMUnprocessableEntityError(ValueError):
        pass

    fake = types.ModuleType("vllm.exceptions")
    fake.VLLMValidationError = VLLMValidationError
    fake.VLLMUnprocessableEntityError = VLLMUnprocessableEntityError
    monkeypatch.setitem(sys.modules, "vllm.exceptions", fake)
    compat.client_error_types.cache_clear()
    yield VLLMValidationError, VLLMUnprocessableEntityError
    compat.client_error_types.cache_clear()


def test_client_errors_by_release(vllm_025_exceptions: tuple[type, type]) -> None:
    assert compat.client_error_types() == vllm_025_exceptions
    assert compat.legacy_value_errors()


def test_client_errors_on_this_release() -> None:
    from vllm.exceptions import VLLMClientError

    assert compat.client_error_types() == (VLLMClientError,) and not compat.legacy_value_errors()


def test_unfinished_requests_through_the_output_processor() -> None:
    """0.25's AsyncLLM has no get_num_unfinished_requests(); its output processor has, in every release."""
    llm = types.SimpleNamespace(output_processor=types.SimpleNamespace(get_num_unfinished_requests=lambda: 3))
    assert compat.num_unfinished(llm) == 3


def test_a_string_in_the_union_accepts_any_value(monkeypatch: pytest.MonkeyPatch) -> None:
    fields = {
        "backend": str | typing.Literal["mp", "ray"] | None,
        "kind": typing.Literal["a", "b"] | None,
    }
    monkeypatch.setattr(compat, "engine_arg_fields", lambda: fields)
    assert compat.literal_choices("backend") is None  # vLLM takes any string (e.g. a class path) here
    assert compat.literal_choices("kind") == ["a", "b"]


def test_engine_argument_values_come_from_the_release() -> None:
    assert "cutlass" in compat.literal_choices("linear_backend")
    assert "fp8" in compat.literal_choices("kv_cache_dtype")
    assert compat.literal_choices("max_num_seqs") is None  # not a Literal
    assert compat.speculative_config(2) == {"method": "mtp", "num_speculative_tokens": 2}


class _Tokenizer:
    all_special_tokens = ()
    chat_template = ""

    def get_vocab(self) -> dict[str, int]:
        return {}


class _LLM:
    """Just enough of AsyncLLM for Engine: its generate refuses the request before any output, as 0.25 does."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.vllm_config = types.SimpleNamespace(
            model_config=types.SimpleNamespace(max_model_len=64, get_diff_sampling_param=dict),
            scheduler_config=types.SimpleNamespace(max_num_seqs=4),
        )

    def get_tokenizer(self) -> _Tokenizer:
        return _Tokenizer()

    async def generate(self, *args: object):
        raise self.error
        yield  # an async generator, like AsyncLLM.generate


# Validation would need a model directory; these tests read only the settings Engine keeps.
_SETTINGS = ServeSettings.model_construct(model=Path("unused"), model_thinks="auto")


def _first(engine: Engine) -> None:
    from vllm import SamplingParams

    async def run() -> None:
        async for _ in engine.generate("r", [1, 2], SamplingParams(max_tokens=1)):
            pass

    asyncio.run(run())


def test_a_plain_value_error_before_output_is_a_400_on_0_25(vllm_025_exceptions: tuple[type, type]) -> None:
    engine = Engine(
        _LLM(ValueError("thinking_token_budget is not supported with the V2 model runner")), _SETTINGS
    )
    with pytest.raises(BadRequestError, match="V2 model runner"):
        _first(engine)


def test_a_plain_value_error_is_not_a_client_error_on_later_releases() -> None:
    engine = Engine(_LLM(ValueError("a bug")), _SETTINGS)
    with pytest.raises(ValueError, match="a bug"):
        _first(engine)
