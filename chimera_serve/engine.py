"""vLLM's async engine behind the small interface the routes use.

The routes never touch vLLM objects except `SamplingParams`: they render a prompt to token ids here,
call `generate`, and read `Delta`s. Token ids go to the engine as a rendered `TokensInput`, so the
tokenizer's automatic BOS is never added on top of the one the chat template writes (DeepSeek's
double-BOS pitfall). `defaults` holds the model's generation_config.json values the way vLLM's own
server applies them (its bare `SamplingParams.max_tokens` default of 16 would cut every answer).
The engine's Prometheus metrics (`vllm:*`) live in the default registry of this process.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from chimera_serve.config import ServeSettings

log = logging.getLogger("chimera_serve.engine")


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


class Engine:
    """An `AsyncLLM` plus its tokenizer; create with `Engine.start(settings)` inside the event loop."""

    def __init__(self, llm: Any, settings: ServeSettings) -> None:
        self._llm = llm
        self.settings = settings
        self.tokenizer = llm.get_tokenizer()
        cfg = llm.vllm_config
        self.limits = EngineLimits(
            max_model_len=cfg.model_config.max_model_len, max_num_seqs=cfg.scheduler_config.max_num_seqs
        )
        self.defaults: dict[str, Any] = dict(cfg.model_config.get_diff_sampling_param())

    @classmethod
    def start(cls, settings: ServeSettings) -> Engine:
        """Load the model (tens of seconds on a CPU, minutes for a 671B child on 8 GPUs)."""
        from vllm.config.reasoning import ReasoningConfig
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(
            model=str(settings.model),
            served_model_name=[settings.model_name],
            tensor_parallel_size=settings.tensor_parallel_size,
            pipeline_parallel_size=settings.pipeline_parallel_size,
            distributed_executor_backend=settings.distributed_executor_backend,
            enable_expert_parallel=settings.enable_expert_parallel,
            max_model_len=settings.max_model_len,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            max_num_seqs=settings.max_num_seqs,
            dtype=settings.dtype,
            enforce_eager=settings.enforce_eager,
            trust_remote_code=settings.trust_remote_code,
            generation_config="auto",
            # Lets requests cap their reasoning (`reasoning.max_tokens` -> thinking_token_budget): past the
            # budget vLLM forces `</think>`. Always on: vLLM's own server builds the same config whenever it
            # has a reasoning parser, and with no budget in the batch its per-step work returns early (no
            # throughput cost measured: `--ab-reasoning-config` in benchmarks/results/serve-vs-vllm.md).
            reasoning_config=ReasoningConfig(reasoning_start_str="<think>", reasoning_end_str="</think>"),
        )
        return cls(AsyncLLM.from_engine_args(args), settings)

    # Prompts -------------------------------------------------------------------------------------

    def render_chat(
        self, messages: list[dict[str, Any]], template_kwargs: dict[str, Any] | None = None
    ) -> str:
        """The chat template applied to `messages`, ending with the assistant turn's opening."""
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **(template_kwargs or {})
        )

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`; chat prompts already hold their BOS, so no special tokens by default."""
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    # Generation ----------------------------------------------------------------------------------

    async def generate(self, request_id: str, prompt_ids: list[int], params: Any) -> AsyncIterator[Delta]:
        """Stream `Delta`s of every choice; closing or cancelling the iterator aborts the request."""
        from vllm.inputs.engine import tokens_input
        from vllm.sampling_params import RequestOutputKind

        params.output_kind = RequestOutputKind.DELTA
        async for out in self._llm.generate(tokens_input(prompt_ids), params, request_id):
            for c in out.outputs:
                lps = self._logprobs(c.token_ids, c.logprobs) if c.logprobs else []
                yield Delta(c.index, c.text, len(c.token_ids), c.finish_reason, lps)

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

    async def abort(self, request_id: str) -> None:
        await self._llm.abort(request_id)

    # State ---------------------------------------------------------------------------------------

    @property
    def num_unfinished(self) -> int:
        """Requests the engine holds (running or waiting in its scheduler)."""
        return int(self._llm.get_num_unfinished_requests())

    @property
    def healthy(self) -> bool:
        return not self._llm.errored

    def shutdown(self) -> None:
        self._llm.shutdown()
