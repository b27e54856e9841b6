"""Pure pieces of the server: token budget, key comparison, request validation, the error shape."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from chimera_serve.auth import key_matches
from chimera_serve.errors import ContextLengthError, OverloadedError, error_body
from chimera_serve.protocol import ChatCompletionRequest
from chimera_serve.sampling import token_budget
from chimera_serve.serving import Admission

MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("requested", "prompt", "ctx", "default", "expected"),
    [
        (None, 10, 100, None, 90),  # no request, no model default: the context left (vLLM's server does so)
        (None, 10, 100, 24, 24),  # the model's generation_config default
        (50, 10, 100, 24, 50),  # the request wins
        (500, 10, 100, 24, 90),  # capped to the context left
        (None, 99, 100, 24, 1),
    ],
)
def test_token_budget(
    requested: int | None, prompt: int, ctx: int, default: int | None, expected: int
) -> None:
    assert token_budget(requested, prompt, ctx, default) == expected


def test_prompt_filling_context_is_400_with_numbers() -> None:
    with pytest.raises(ContextLengthError, match=r"prompt has 100 tokens .* context is 100 tokens") as e:
        token_budget(None, 100, 100, None)
    assert e.value.status == 400


def test_key_matches() -> None:
    keys = ("a" * 20, "b" * 20)
    assert key_matches("b" * 20, keys)
    assert not key_matches("b" * 19, keys) and not key_matches("", keys) and not key_matches("x", ())


def test_reasoning_options() -> None:
    def show(**kw: object) -> bool:
        return ChatCompletionRequest(model="m", messages=MSG, **kw).show_reasoning

    assert show() and show(reasoning={"effort": "high"})
    assert not show(include_reasoning=False)
    assert not show(reasoning={"exclude": True}) and not show(reasoning={"enabled": False})


def test_request_validation() -> None:
    r = ChatCompletionRequest(model="m", messages=MSG, max_completion_tokens=7, max_tokens=9, unknown_field=1)
    assert r.token_limit == 7
    parts = ChatCompletionRequest(
        model="m", messages=[{"role": "user", "content": [{"type": "text", "text": "a"}]}]
    )
    assert parts.template_messages() == [{"role": "user", "content": "a"}]
    for bad in (
        {"temperature": -1},
        {"top_logprobs": 3},
        {"stop": ["x"] * 17},
        {"response_format": {"type": "json_schema"}},
    ):
        with pytest.raises(ValidationError):
            ChatCompletionRequest(model="m", messages=MSG, **bad)


def test_admission_and_error_shape() -> None:
    adm = Admission(capacity=1)
    adm.enter()
    with pytest.raises(OverloadedError) as e:
        adm.enter()
    assert e.value.headers() == {"Retry-After": "1"}
    assert error_body(e.value) == {
        "error": {"message": e.value.message, "type": "rate_limit_error", "param": None, "code": "queue_full"}
    }
    adm.leave()
    adm.draining = True
    with pytest.raises(Exception, match="shutting down"):
        adm.enter()


def test_call_hint_names_the_loopback_url_model_and_key(tmp_path) -> None:
    from chimera_serve.config import load_settings
    from chimera_serve.lifecycle import call_hint

    (tmp_path / "config.json").write_text("{}")

    open_hint = call_hint(
        load_settings({"model": str(tmp_path), "served_model_name": "kid", "host": "0.0.0.0", "port": 9001})
    )
    assert "curl -s http://127.0.0.1:9001/v1/chat/completions" in open_hint and '"model": "kid"' in open_hint
    assert "Authorization" not in open_hint and "OpenAI(base_url='http://127.0.0.1:9001/v1'" in open_hint
    keyed = call_hint(load_settings({"model": str(tmp_path), "api_keys": ("k" * 20,)}))
    assert "Bearer $CHIMERA_API_KEY" in keyed and "k" * 20 not in keyed


@pytest.mark.parametrize(
    ("reasoning", "expected"),
    [
        (None, None),
        ({"max_tokens": 10}, 10),
        ({"max_tokens": 500}, 100),  # never more than the request's max_tokens
        ({"effort": "high"}, 80),
        ({"effort": "low"}, 20),
        ({"effort": "high", "max_tokens": 7}, 7),  # an explicit budget wins
        ({"enabled": False, "max_tokens": 7}, None),
    ],
)
def test_thinking_budget(reasoning: dict | None, expected: int | None) -> None:
    from chimera_serve.sampling import thinking_budget

    req = ChatCompletionRequest(model="m", messages=MSG, reasoning=reasoning)
    assert thinking_budget(req, 100) == expected
