"""mini-tools without the engine: tool tokens, the tool chat template, training rows, vLLM's parsers on the format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from merge.lab.evaluate_tools import Parsed, arguments_match, score, server_parser
from merge.lab.model import export_config, make_dims
from merge.lab.task import Problem, answer_text
from merge.lab.tokenizer import (
    BOS,
    EOS,
    TOOL_TOKENS,
    build_tokenizer,
    save_tokenizer,
    vocab_size,
)
from merge.lab.tools import (
    ADD_TOOL,
    SYSTEM_PROMPT,
    TOOL_VARIANTS,
    ToolEncoder,
    add_tool,
    call_messages,
    call_reply,
    followup_messages,
    followup_reply,
)

MODELS = Path(__file__).resolve().parents[2] / "merge" / "lab" / "models"
TOOLS_SECTION = (
    "## Tools\n\n### Function\n\nYou have the following functions available:\n\n\n```json\n"
    '{"type": "function", "function": {"name": "add", "description": "Add two integers.", "parameters": '
    '{"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}'
    "\n```\n"
)
CALL = (
    "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>add\n```json\n"
    '{"a": 27, "b": 48}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>'
)
PROBLEM = Problem(27, 48, "What is 27+48?")


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(MODELS / "mini-tools")


@pytest.fixture(scope="module")
def r1():
    return AutoTokenizer.from_pretrained(MODELS / "mini-r1")


def test_tool_tokens_are_single_non_special_ids_after_the_old_vocabulary(tok, r1) -> None:
    assert len(tok) == vocab_size(tools=True) == vocab_size() + 9
    assert {t: i for t, i in tok.get_vocab().items() if i < vocab_size()} == r1.get_vocab()  # old ids kept
    for i, t in enumerate(TOOL_TOKENS, start=vocab_size()):
        assert tok.encode(t, add_special_tokens=False) == [i], t
        assert t not in tok.all_special_tokens  # DeepSeek marks them non-special, like <think>
    # vLLM decodes with skip_special_tokens=True: the tool markup must survive it, the EOS must not
    ids = tok.encode(CALL + EOS, add_special_tokens=False)
    assert tok.decode(ids, skip_special_tokens=True) == CALL


def test_shipped_tokenizer_and_config_match_the_code(tmp_path: Path) -> None:
    save_tokenizer(tmp_path, 512, tools=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / name).read_bytes() == (MODELS / "mini-tools" / name).read_bytes(), name
    cfg = json.loads((MODELS / "mini-tools" / "config.json").read_text())
    assert cfg == export_config(make_dims(), tools=True)
    assert (cfg["vocab_size"], cfg["max_position_embeddings"]) == (113, 512)
    gen = json.loads((MODELS / "mini-tools" / "generation_config.json").read_text())
    assert gen["max_new_tokens"] >= 96  # a reasoned call is ~78 tokens; vLLM's own default is 16


def test_template_renders_a_tool_round_trip(tok) -> None:
    messages = [
        *followup_messages(PROBLEM),
        {"role": "assistant", "content": followup_reply("75")},
        {"role": "user", "content": "1+2"},
    ]
    text = tok.apply_chat_template(messages, tools=[ADD_TOOL], tokenize=False, add_generation_prompt=True)
    assert text == (
        f"{BOS}{TOOLS_SECTION}<｜User｜>What is 27+48?<｜Assistant｜>{CALL}{EOS}"
        "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>75<｜tool▁output▁end｜><｜tool▁outputs▁end｜>"
        f"75{EOS}<｜User｜>1+2<｜Assistant｜>"
    )
    # after a tool result the model writes straight on (DeepSeek-V3-0324): no <｜Assistant｜> is added
    prompt = tok.apply_chat_template(
        followup_messages(PROBLEM), tools=[ADD_TOOL], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("<｜tool▁output▁end｜><｜tool▁outputs▁end｜>")
    assert tok(prompt).input_ids.count(tok.bos_token_id) == 1


def test_arguments_print_as_given_and_mappings_as_json(tok) -> None:
    compact = followup_messages(PROBLEM)
    compact[1]["tool_calls"][0]["function"]["arguments"] = '{"a":27,"b":48}'
    text = tok.apply_chat_template(compact, tools=[ADD_TOOL], tokenize=False)
    assert '```json\n{"a":27,"b":48}\n```' in text  # a client's string is not re-serialised
    parsed = followup_messages(PROBLEM)
    parsed[1]["tool_calls"][0]["function"]["arguments"] = {"a": 27, "b": 48}  # what vLLM hands the template
    as_dict = tok.apply_chat_template(parsed, tools=[ADD_TOOL], tokenize=False)
    assert as_dict == tok.apply_chat_template(followup_messages(PROBLEM), tools=[ADD_TOOL], tokenize=False)


def test_tool_json_without_description_or_with_null_renders_alike(tok) -> None:
    bare = add_tool(None)
    nulled = {"type": "function", "function": {**bare["function"], "description": None, "strict": None}}
    render = lambda tools: tok.apply_chat_template(call_messages(PROBLEM), tools=tools, tokenize=False)  # noqa: E731
    assert render([nulled]) == render([bare]) != render([ADD_TOOL])
    assert '"description"' not in render([bare])


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "27+48"}],
        [
            {"role": "system", "content": "Add."},
            {"role": "user", "content": "1+2"},
            {"role": "assistant", "content": answer_text(1, 2, "think")},
            {"role": "user", "content": "3+4"},
        ],
    ],
)
def test_without_tools_the_template_is_mini_r1s(tok, r1, messages: list[dict]) -> None:
    for gen in (True, False):
        assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen) == (
            r1.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        )


def test_training_rows_are_the_template_plus_the_reply(tok) -> None:
    enc = ToolEncoder()
    cases = [
        ("call", call_messages(PROBLEM), [ADD_TOOL], call_reply(27, 48)),
        ("followup", followup_messages(PROBLEM), [ADD_TOOL], followup_reply("75")),
        ("plain", call_messages(PROBLEM), None, answer_text(27, 48, "think")),
    ]
    for kind, messages, tools, reply in cases:
        row = enc.example(PROBLEM, kind)
        prompt = tok.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
        assert tok.decode(row.ids) == prompt + reply + EOS, kind
        assert row.ids[: row.reply_start] == tok(prompt).input_ids


def test_vllm_parsers_read_the_trained_format(tok) -> None:
    parse = server_parser(tok, [ADD_TOOL])
    call = parse(tok.decode(tok.encode(call_reply(27, 48) + EOS), skip_special_tokens=True))
    assert call.calls == [("add", '{"a": 27, "b": 48}')] and call.content is None
    assert call.reasoning == "\ncall add with a=27, b=48\n"
    answer = parse(followup_reply("75"))
    assert answer.calls == [] and answer.content.strip() == "75"


def test_score_counts_calls_arguments_and_answers() -> None:
    problems = [PROBLEM, Problem(1, 2, "1+2")]
    call = [
        Parsed("", None, None, [("add", '{"a": 27, "b": 48}')]),
        Parsed("", None, None, [("add", '{"a": "1", "b": 2}')]),  # a string is not an integer argument
    ]
    followup = [Parsed("", None, "\n\n75", []), Parsed("", None, "3", [("add", "{}")])]
    plain = [Parsed(answer_text(27, 48, "think"), None, None, []), Parsed("4", None, None, [])]
    r = score(problems, call, followup, plain, "m")
    assert (r.call_rate, r.argument_accuracy, r.followup_accuracy, r.plain_accuracy) == (1.0, 0.5, 0.5, 0.5)
    assert r.plain_call_rate == 0.0
    assert not arguments_match("{bad", PROBLEM) and arguments_match('{"b": 48, "a": 27}', PROBLEM)


def test_layout_variants_change_the_prompt_not_the_reply() -> None:
    assert build_tokenizer(tools=True).get_vocab_size() == vocab_size(tools=True)
    enc = ToolEncoder()
    rows = [enc.example(PROBLEM, "call", tool) for tool in TOOL_VARIANTS]
    rows.append(enc.example(PROBLEM, "call", ADD_TOOL, SYSTEM_PROMPT))
    assert len({r.reply_start for r in rows}) == len(
        rows
    )  # the question sits at a different position in each
    assert len({tuple(r.ids[r.reply_start :]) for r in rows}) == 1
    plain = enc.example(PROBLEM, "plain", ADD_TOOL, SYSTEM_PROMPT)
    assert plain == enc.example(PROBLEM, "plain")  # requests without tools stay mini-r1's, no system prompt


def test_grown_vocabulary_keeps_old_rows() -> None:
    from merge.lab.train_tools import grow_vocab

    state = {
        "model.embed_tokens.weight": torch.randn(104, 8),
        "lm_head.weight": torch.randn(104, 8),
        "x": torch.ones(1),
    }
    grown = grow_vocab(state, 113, torch.Generator().manual_seed(0))
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        old, new = state[name], grown[name]
        assert new.shape == (113, 8) and torch.equal(new[:104], old)
        assert torch.allclose(new[104:], old.mean(0).expand(9, -1), atol=0.1 * old.std().item())
        assert len({tuple(r.tolist()) for r in new[104:]}) == 9  # distinct rows
    assert grown["x"] is state["x"]


def test_shared_prefix_loss_equals_whole_rows() -> None:
    from transformers import DeepseekV3ForCausalLM

    from merge.lab.model import hf_config
    from merge.lab.tokenizer import USER
    from merge.lab.train import batch_loss
    from merge.lab.train_tools import shared_prefix_loss

    torch.manual_seed(0)
    model = DeepseekV3ForCausalLM(hf_config(make_dims(), tools=True))
    enc = ToolEncoder()
    problems = [PROBLEM, Problem(3, 94, "3+94"), Problem(50, 5, "What is 50+5?")]
    rows = [enc.example(problems[0], "call"), enc.example(problems[1], "followup", TOOL_VARIANTS[1])]
    rows += [enc.example(problems[2], "plain"), enc.example(problems[2], "followup")]  # shares row 0's prefix

    def loss_and_grads(loss: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
        model.zero_grad()
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    whole, g_whole = loss_and_grads(batch_loss(model, rows, enc.pad_id, True, "cpu"))
    user = enc.tok.convert_tokens_to_ids(USER)
    shared, g_shared = loss_and_grads(shared_prefix_loss(model, rows, user, enc.pad_id, "cpu"))
    assert shared == pytest.approx(whole, rel=1e-5)
    assert g_whole.keys() == g_shared.keys()
    for name, g in g_whole.items():
        assert torch.allclose(g_shared[name], g, rtol=1e-3, atol=1e-6), name
