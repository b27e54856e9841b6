"""The mini models' tokenizer: character level, DeepSeek's special tokens, DeepSeek's chat template.

Every printable ASCII character is one token, so any prompt tokenizes (nothing maps to `<unk>` except
non-ASCII text). The DeepSeek markers are single tokens. `<think>` and `</think>` are added as *non-special*
tokens, as in DeepSeek-R1: decoding with `skip_special_tokens=True` (vLLM's default) keeps them in the text,
which is what a think-tag metric and vLLM's `deepseek_r1` reasoning parser read.

BOS: the chat template writes `<｜begin▁of▁sentence｜>` itself, and the tokenizer adds nothing (no post-processor,
`add_bos_token: false`), so a templated prompt carries exactly one BOS whether or not the caller asks the
tokenizer to add special tokens.

The template does not prefill `<think>` (R1-0528 style): a reasoning model opens the block itself.

The tool flavour (`tools=True`, mini-tools) appends DeepSeek-V3's nine tool tokens after the characters (ids
104..112, so every earlier id keeps its meaning and a parent's embedding rows carry over). DeepSeek marks them
non-special, like the think tags, so vLLM's default `skip_special_tokens=True` keeps them in the output text
that its `deepseek_v3` tool parser reads. Its template is `TOOL_CHAT_TEMPLATE` (below).
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
PAD = "<｜▁pad▁｜>"
UNK = "<unk>"
TOOL_CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
TOOL_CALLS_END = "<｜tool▁calls▁end｜>"
TOOL_CALL_BEGIN = "<｜tool▁call▁begin｜>"
TOOL_CALL_END = "<｜tool▁call▁end｜>"
TOOL_SEP = "<｜tool▁sep｜>"
TOOL_OUTPUTS_BEGIN = "<｜tool▁outputs▁begin｜>"
TOOL_OUTPUTS_END = "<｜tool▁outputs▁end｜>"
TOOL_OUTPUT_BEGIN = "<｜tool▁output▁begin｜>"
TOOL_OUTPUT_END = "<｜tool▁output▁end｜>"

# Order fixes the ids: BOS=0, EOS=1 (transformers' DeepseekV3Config defaults), then the rest.
SPECIAL_TOKENS = [BOS, EOS, PAD, UNK, USER, ASSISTANT]
THINK_TOKENS = [THINK_OPEN, THINK_CLOSE]
CHARACTERS = ["\n", *[chr(c) for c in range(32, 127)]]
TOOL_TOKENS = [
    TOOL_CALLS_BEGIN,
    TOOL_CALLS_END,
    TOOL_CALL_BEGIN,
    TOOL_CALL_END,
    TOOL_SEP,
    TOOL_OUTPUTS_BEGIN,
    TOOL_OUTPUTS_END,
    TOOL_OUTPUT_BEGIN,
    TOOL_OUTPUT_END,
]

# DeepSeek-R1's template, reduced to what the mini models use: an optional system prompt after BOS, turns as
# <｜User｜>q<｜Assistant｜>a<｜end▁of▁sentence｜>, earlier answers stripped of their reasoning, no tool calls.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}{{ message['content'] }}{%- endif %}"
    "{%- endfor %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
    "{%- elif message['role'] == 'assistant' %}"
    "{%- set content = message['content'] %}"
    "{%- if '</think>' in content %}{%- set content = content.split('</think>')[-1].lstrip() %}{%- endif %}"
    "{{ '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<｜Assistant｜>' }}{%- endif %}"
)

# mini-tools' template: DeepSeek-V3-0324's conversation layout (tool calls after <｜Assistant｜>, tool results in
# <｜tool▁outputs▁begin｜>…<｜tool▁outputs▁end｜>, the follow-up written straight after them) plus the `## Tools`
# system section of R1-0528's template (0324's own template ignores `tools`). Reductions, each for a reason:
# - without `tools` it renders what CHAT_TEMPLATE renders (mini-r1's prompts, reasoning stripped alike); only a
#   second system message differs: joined by a blank line, as 0324 joins them;
# - R1-0528's English preamble ("You are a helpful assistant with tool calling capabilities...") is left out:
#   a character-level model of this size learns the format from training, not from instructions;
# - each tool prints as {"type": "function", "function": {name, description, parameters}}, which is `tool | tojson`
#   for the usual client JSON, but omits a null/empty description (vLLM's server fills absent ones with null);
# - `arguments` prints as given when it is a string (OpenAI clients send JSON strings); a mapping (vLLM parses
#   the string before rendering) prints through `tojson`, as R1-0528 does, instead of failing on str + dict.
TOOL_CHAT_TEMPLATE = r"""
{%- set ns = namespace(system_prompt='', is_first_sp=true, is_tool=false, is_output_first=true) %}
{%- for message in messages %}
    {%- if message['role'] == 'system' %}
        {%- if ns.is_first_sp %}
            {%- set ns.system_prompt = ns.system_prompt + message['content'] %}
            {%- set ns.is_first_sp = false %}
        {%- else %}
            {%- set ns.system_prompt = ns.system_prompt + '\n\n' + message['content'] %}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if tools %}
    {%- set tool_ns = namespace(text='## Tools\n\n### Function\n\nYou have the following functions available:\n\n') %}
    {%- for tool in tools %}
        {%- set fn = tool['function'] if tool['function'] is defined else tool %}
        {%- set spec = '{"name": ' + (fn['name'] | tojson) %}
        {%- if fn['description'] %}
            {%- set spec = spec + ', "description": ' + (fn['description'] | tojson) %}
        {%- endif %}
        {%- if fn['parameters'] is mapping %}
            {%- set spec = spec + ', "parameters": ' + (fn['parameters'] | tojson) %}
        {%- endif %}
        {%- set tool_ns.text = tool_ns.text + '\n```json\n{"type": "function", "function": ' + spec + '}' + '}\n```\n' %}
    {%- endfor %}
    {%- if ns.system_prompt %}
        {%- set ns.system_prompt = ns.system_prompt + '\n\n' + tool_ns.text %}
    {%- else %}
        {%- set ns.system_prompt = tool_ns.text %}
    {%- endif %}
{%- endif %}
{{- bos_token }}
{{- ns.system_prompt }}
{%- for message in messages %}
    {%- set content = message['content'] if message['content'] is string else '' %}
    {%- if message['role'] == 'user' %}
        {%- set ns.is_tool = false %}
        {{- '<｜User｜>' + content }}
    {%- elif message['role'] == 'assistant' %}
        {%- if '</think>' in content %}
            {%- set content = content.split('</think>')[-1].lstrip() %}
        {%- endif %}
        {{- '<｜tool▁outputs▁end｜>' if ns.is_tool else '<｜Assistant｜>' }}
        {%- set ns.is_tool = false %}
        {%- set ns.is_output_first = true %}
        {%- if message['tool_calls'] %}
            {{- content + '<｜tool▁calls▁begin｜>' }}
            {%- for call in message['tool_calls'] %}
                {%- set arguments = call['function']['arguments'] %}
                {%- if arguments is not string %}
                    {%- set arguments = arguments | tojson %}
                {%- endif %}
                {{- '' if loop.first else '\n' }}
                {{- '<｜tool▁call▁begin｜>' + (call['type'] | default('function', true)) + '<｜tool▁sep｜>' }}
                {{- call['function']['name'] + '\n```json\n' + arguments + '\n```<｜tool▁call▁end｜>' }}
            {%- endfor %}
            {{- '<｜tool▁calls▁end｜><｜end▁of▁sentence｜>' }}
        {%- else %}
            {{- content + '<｜end▁of▁sentence｜>' }}
        {%- endif %}
    {%- elif message['role'] == 'tool' %}
        {{- '<｜tool▁outputs▁begin｜>' if ns.is_output_first else '\n' }}
        {{- '<｜tool▁output▁begin｜>' + content + '<｜tool▁output▁end｜>' }}
        {%- set ns.is_tool = true %}
        {%- set ns.is_output_first = false %}
    {%- endif %}
{%- endfor %}
{%- if ns.is_tool %}
    {{- '<｜tool▁outputs▁end｜>' }}
{%- endif %}
{%- if add_generation_prompt and not ns.is_tool %}
    {{- '<｜Assistant｜>' }}
{%- endif %}
""".strip()


def _added_tokens(tools: bool) -> list[str]:
    """Tokens matched before the character model, in id order: specials, think tags, tool tokens if asked."""
    return [*SPECIAL_TOKENS, *THINK_TOKENS, *(TOOL_TOKENS if tools else [])]


def build_tokenizer(tools: bool = False) -> Tokenizer:
    """The tokenizer object: ids 0..5 special tokens, 6..7 think tags, one id per ASCII character, then (with
    `tools`) the nine tool tokens."""
    vocab: dict[str, int] = {}
    for token in [*SPECIAL_TOKENS, *THINK_TOKENS, *CHARACTERS, *(TOOL_TOKENS if tools else [])]:
        vocab[token] = len(vocab)
    # BPE with no merges is a character-level model with an `<unk>` fallback; Fuse joins characters on decode.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    non_special = [*THINK_TOKENS, *(TOOL_TOKENS if tools else [])]
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in non_special])
    return tok


def vocab_size(tools: bool = False) -> int:
    """Number of ids the model's embedding must hold."""
    return len(SPECIAL_TOKENS) + len(THINK_TOKENS) + len(CHARACTERS) + (len(TOOL_TOKENS) if tools else 0)


def save_tokenizer(out_dir: Path, model_max_length: int, tools: bool = False) -> None:
    """Write tokenizer.json, tokenizer_config.json (with the chat template) and special_tokens_map.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    build_tokenizer(tools).save(str(out_dir / "tokenizer.json"))
    ids = build_tokenizer(tools).get_vocab()
    added = {
        str(ids[t]): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": t in SPECIAL_TOKENS,
        }
        for t in _added_tokens(tools)
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": UNK,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "legacy": False,
        "model_max_length": model_max_length,
        "added_tokens_decoder": added,
        "chat_template": TOOL_CHAT_TEMPLATE if tools else CHAT_TEMPLATE,
    }
    special_map = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": UNK}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    (out_dir / "special_tokens_map.json").write_text(
        json.dumps(special_map, indent=2, ensure_ascii=False) + "\n"
    )
