"""vLLM's async engine behind the small interface the routes use.

The routes never touch vLLM objects: they render a prompt to token ids here, build sampling parameters here,
call `generate`, and read `Delta`s. Token ids go to the engine as a token prompt, so the tokenizer's automatic
BOS is never added on top of the one the chat template writes (DeepSeek's double-BOS pitfall). `defaults`
holds the model's generation_config.json values the way vLLM's own server applies them (its bare
`SamplingParams.max_tokens` default of 16 would cut every answer). What differs between vLLM releases lives
in `vllm_compat`; `features` says what this engine can do, so a request for something it cannot is a 400.
The engine's Prometheus metrics (`vllm:*`) live in the default registry of this process.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from chimera_serve import vllm_compat as compat
from chimera_serve.config import ServeSettings
from chimera_serve.errors import BadRequestError, first_line
from chimera_serve.reasoning import THINK_OPEN
from chimera_serve.tools import TOOL_CALLS_BEGIN, ToolCall, ToolExtraction, new_call_id

log = logging.getLogger("chimera_serve.engine")


# Questions the start-up probe asks (one is the mini models' own task, so the lab models answer in form).
PROBE_PROMPTS = ("What is 2+2?", "Hi", "Why is the sky blue?")


class EngineConfigError(ValueError):
    """A setting this vLLM release does not accept (one line, with the values it does accept)."""


@dataclass(frozen=True)
class TokenLogprob:
    """One sampled token with its logprob and the top alternatives (token text, logprob)."""

    token: str
    logprob: float
    top: list[tuple[str, float]]


@dataclass(slots=True)  # one per token: frozen=True would triple its construction cost (~0.7 us)
class Delta:
    """What one engine step added to one choice: new text and tokens, and how it finished."""

    index: int
    text: str
    num_tokens: int
    finish_reason: str | None = None  # "stop" | "length" | "abort" | None while running
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass(frozen=True)
class EngineLimits:
    max_model_len: int
    max_num_seqs: int


@dataclass(frozen=True)
class EngineFeatures:
    """What this engine and model can do; requests needing more get a 400 naming what is missing."""

    vllm_version: str
    thinking_budget: bool  # SamplingParams.thinking_token_budget (vLLM forces </think> past it)
    tools: bool  # vLLM's deepseek_v3 tool parser, its tokens in the vocabulary, a template that renders tools
    tool_tokens_special: bool  # the tool markers are special tokens: decode them (skip_special_tokens=False)


def engine_args(settings: ServeSettings) -> dict[str, Any]:
    """AsyncEngineArgs keywords for `settings`, checked against what this vLLM release accepts."""
    fields = compat.engine_arg_fields()
    args: dict[str, Any] = {
        "model": str(settings.model),
        "served_model_name": [settings.model_name],
        "tensor_parallel_size": settings.tensor_parallel_size,
        "pipeline_parallel_size": settings.pipeline_parallel_size,
        "data_parallel_size": settings.data_parallel_size,
        "distributed_executor_backend": settings.distributed_executor_backend,
        "enable_expert_parallel": settings.enable_expert_parallel,
        "max_model_len": settings.max_model_len,
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        "max_num_seqs": settings.max_num_seqs,
        "max_num_batched_tokens": settings.max_num_batched_tokens,
        "dtype": settings.dtype,
        "kv_cache_dtype": settings.kv_cache_dtype,
        "load_format": settings.load_format,
        "enforce_eager": settings.enforce_eager,
        "trust_remote_code": settings.trust_remote_code,
        "generation_config": "auto",
    }
    for name in ("linear_backend", "moe_backend"):  # kernel choices: absent from some releases
        value = getattr(settings, name)
        if value != "auto" or name in fields:
            args[name] = value
    if settings.num_speculative_tokens:
        args["speculative_config"] = compat.speculative_config(settings.num_speculative_tokens)
    # Lets requests cap their reasoning (`reasoning.max_tokens` -> thinking_token_budget): past the budget vLLM
    # forces `</think>`. vLLM's own server builds the same config whenever it has a reasoning parser; with no
    # budget in the batch its per-step work returns early (no throughput cost: benchmarks/results/serve-vs-vllm.md).
    args.update(compat.reasoning_engine_args())
    for name, value in args.items():
        if name not in fields:
            raise EngineConfigError(
                f"vLLM {compat.version()} has no engine argument {name!r}; drop that setting"
            )
        choices = compat.literal_choices(name)
        if choices is not None and value is not None and str(value) not in choices:
            raise EngineConfigError(
                f"vLLM {compat.version()} does not accept {name}={value!r}; choose one of: {', '.join(choices)}"
            )
    return args


class Engine:
    """An `AsyncLLM` plus its tokenizer; create with `Engine.start(settings)` (blocking: run it in a thread)."""

    def __init__(self, llm: Any, settings: ServeSettings) -> None:
        self._llm = llm
        self.settings = settings
        self.tokenizer = llm.get_tokenizer()
        cfg = llm.vllm_config
        self.limits = EngineLimits(
            max_model_len=cfg.model_config.max_model_len, max_num_seqs=cfg.scheduler_config.max_num_seqs
        )
        self.defaults: dict[str, Any] = dict(cfg.model_config.get_diff_sampling_param())
        self._tool_parser_cls = compat.tool_parser_class("deepseek_v3")
        self.features = EngineFeatures(
            vllm_version=compat.version(),
            thinking_budget=compat.thinking_budget_supported(),
            tools=self._tools_work(),
            tool_tokens_special=TOOL_CALLS_BEGIN in set(getattr(self.tokenizer, "all_special_tokens", ())),
        )
        self._client_errors = compat.client_error_types()
        self._legacy_errors = compat.legacy_value_errors()
        self.thinks = settings.model_thinks == "yes"  # `probe_thinks` decides "auto" once the engine runs

    @classmethod
    def start(cls, settings: ServeSettings) -> Engine:
        """Load the model (tens of seconds on a CPU, minutes for a 671B child on 8 GPUs)."""
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(**engine_args(settings))
        return cls(AsyncLLM.from_engine_args(args, usage_context=compat.usage_context()), settings)

    def _tools_work(self) -> bool:
        template = getattr(self.tokenizer, "chat_template", None) or ""
        vocab = self.tokenizer.get_vocab()
        return self._tool_parser_cls is not None and TOOL_CALLS_BEGIN in vocab and "tool" in str(template)

    # Prompts -------------------------------------------------------------------------------------

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        template_kwargs: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """The chat template applied to `messages`, ending with the assistant turn's opening."""
        kwargs = dict(template_kwargs or {})
        if tools:
            kwargs["tools"] = tools
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **kwargs
        )

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`; chat prompts already hold their BOS, so no special tokens by default."""
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def sampling_params(self, values: dict[str, Any], constraint: Any = None) -> Any:
        """vLLM SamplingParams from plain values and an optional `constrain.Constraint`; a BadRequestError
        (400) when vLLM refuses the combination."""
        from vllm import SamplingParams

        try:
            if constraint is not None:
                c = constraint
                values = {**values, **compat.structured_outputs_kwargs(c.json, c.json_object, c.grammar)}
            return SamplingParams(**values)
        except (ValueError, *self._client_errors) as e:  # older releases raise a plain ValueError
            raise BadRequestError(first_line(e, "invalid sampling values")) from None

    def tool_extractor(self, request_body: dict[str, Any]) -> Any:
        """`text -> ToolExtraction` through vLLM's own deepseek_v3 parser; `request_body` becomes vLLM's own
        request model, which the parser reads (for `tools`)."""
        parser = self._tool_parser_cls(self.tokenizer)
        vllm_request = compat.chat_request_cls().model_validate(request_body)

        def extract(text: str) -> ToolExtraction:
            found = parser.extract_tool_calls(text, vllm_request)
            if not found.tools_called:
                return ToolExtraction(content=text, calls=[])
            calls = [
                ToolCall(
                    id=getattr(c, "id", None) or new_call_id(),
                    name=c.function.name,
                    arguments=c.function.arguments,
                )
                for c in found.tool_calls
            ]
            return ToolExtraction(content=found.content, calls=calls)

        return extract

    async def probe_thinks(self) -> bool:
        """Whether the model opens <think> by itself: greedy first tokens of a few short prompts."""
        for i, question in enumerate(PROBE_PROMPTS):
            prompt = self.render_chat([{"role": "user", "content": question}])
            text = ""
            params = self.sampling_params({"max_tokens": 4, "temperature": 0.0})
            async for d in self.generate(f"probe-thinks-{i}", self.encode(prompt), params):
                text += d.text
            if text.lstrip().startswith(THINK_OPEN):
                return True
        return False

    # Generation ----------------------------------------------------------------------------------

    async def generate(self, request_id: str, prompt_ids: list[int], params: Any) -> AsyncIterator[Delta]:
        """Stream `Delta`s of every choice; closing or cancelling the iterator aborts the request."""
        from vllm.sampling_params import RequestOutputKind

        params.output_kind = RequestOutputKind.DELTA
        started = False
        outputs = self._llm.generate(compat.tokens_prompt(prompt_ids), params, request_id)
        try:
            async with aclosing(outputs):  # closed here, not at garbage collection: vLLM aborts it then
                async for out in outputs:
                    started = True
                    for c in out.outputs:
                        lps = self._logprobs(c.token_ids, c.logprobs) if c.logprobs else []
                        yield Delta(c.index, c.text, len(c.token_ids), c.finish_reason, lps)
        except (ValueError, TypeError, OverflowError) as e:
            if started or not self._legacy_errors or isinstance(e, self._client_errors):
                raise
            raise BadRequestError(first_line(e, "invalid request")) from None

    def _logprobs(self, token_ids: Sequence[int], positions: Any) -> list[TokenLogprob]:
        if not positions:
            return []
        result = []
        for tid, pos in zip(token_ids, positions, strict=False):
            chosen = pos.get(tid)
            top = sorted(((self._tok_text(lp, t), lp.logprob) for t, lp in pos.items()), key=lambda x: -x[1])
            lp = chosen.logprob if chosen is not None else float("-inf")
            result.append(TokenLogprob(token=self._tok_text(chosen, tid), logprob=lp, top=top))
        return result

    def _tok_text(self, lp: Any, tid: int) -> str:
        if lp is not None and lp.decoded_token is not None:
            return lp.decoded_token
        return self.tokenizer.decode([tid])

    async def log_stats(self) -> None:
        """Have vLLM's stat loggers log and reset what they gathered since the last call."""
        await self._llm.do_log_stats()

    async def abort(self, request_id: str) -> None:
        await self._llm.abort(request_id)

    # State ---------------------------------------------------------------------------------------

    @property
    def num_unfinished(self) -> int:
        """Requests the engine holds (running or waiting in its scheduler)."""
        return compat.num_unfinished(self._llm)

    @property
    def healthy(self) -> bool:
        """False once the engine's processes died (vLLM's monitor notices within a fraction of a second)."""
        return not self._llm.errored

    def shutdown(self) -> None:
        self._llm.shutdown()
