"""chimera-load's configuration: a few frozen pydantic models, validated once at the boundary.

The CLI builds a `LoadConfig` from its flags; a library caller builds one directly (`LoadConfig(url=...,
shape=Concurrency(concurrency=32))`) and passes it to `run_load`. Nothing below reads the environment.

Lengths are in tokens when a tokenizer is given (`SyntheticWorkload.tokenizer`), otherwise in words of a
vocabulary whose words are single tokens in common BPE tokenizers; the report shows the measured token counts
either way (from the server's `usage`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from benchmarks.load.errors import ConfigError


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# -- length distributions --------------------------------------------------------------------------------


class Fixed(_Frozen):
    kind: Literal["fixed"] = "fixed"
    value: int = Field(ge=1, le=1_000_000)


class Uniform(_Frozen):
    kind: Literal["uniform"] = "uniform"
    low: int = Field(ge=1, le=1_000_000)
    high: int = Field(ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        if self.low > self.high:
            raise ValueError(f"uniform:{self.low}:{self.high}: low must be <= high")
        return self


class LogNormal(_Frozen):
    """Long-tailed like chat traffic: median `median`, log-space spread `sigma`, clipped to [1, cap]."""

    kind: Literal["lognormal"] = "lognormal"
    median: int = Field(ge=1, le=1_000_000)
    sigma: float = Field(gt=0, le=3)
    cap: int = Field(ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _cap(self) -> LogNormal:
        if self.cap < self.median:
            raise ValueError(f"lognormal cap {self.cap} is below its median {self.median}")
        return self


Lengths = Annotated[Fixed | Uniform | LogNormal, Field(discriminator="kind")]


def parse_lengths(text: str) -> Fixed | Uniform | LogNormal:
    """'128' | 'uniform:64:256' | 'lognormal:MEDIAN:SIGMA[:CAP]' (cap defaults to 8 x median)."""
    parts = text.strip().split(":")
    try:
        if len(parts) == 1:
            return Fixed(value=int(parts[0]))
        if parts[0] == "uniform" and len(parts) == 3:
            return Uniform(low=int(parts[1]), high=int(parts[2]))
        if parts[0] == "lognormal" and len(parts) in (3, 4):
            median = int(parts[1])
            cap = int(parts[3]) if len(parts) == 4 else 8 * median
            return LogNormal(median=median, sigma=float(parts[2]), cap=cap)
    except ValueError as e:  # int() of a non-number, or a bound violated
        raise ConfigError(f"length {text!r}: {_first_line(e)}") from None
    raise ConfigError(f"length {text!r}: write N, uniform:LOW:HIGH or lognormal:MEDIAN:SIGMA[:CAP]")


def _first_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


# -- workloads -------------------------------------------------------------------------------------------


class SyntheticWorkload(_Frozen):
    """Seeded random prompts; `tokenizer` (a tokenizer.json or a model directory) makes lengths exact."""

    kind: Literal["synthetic"] = "synthetic"
    input_len: Lengths = Fixed(value=128)
    output_len: Lengths = Fixed(value=128)
    seed: int = 0
    tokenizer: Path | None = None


class JsonlWorkload(_Frozen):
    """One request per line: {"prompt": str} or {"messages": [...]}, optional "max_tokens" / "output_tokens"."""

    kind: Literal["jsonl"] = "jsonl"
    path: Path
    output_len: int = Field(256, ge=1, le=1_000_000)  # for lines that give none

    @field_validator("path")
    @classmethod
    def _exists(cls, v: Path) -> Path:
        if not v.is_file():
            raise ValueError(f"prompt file {v} does not exist")
        return v


class LabWorkload(_Frozen):
    """The mini-Chimera lab's held-out additions (merge/lab/task.py), with their answers for accuracy."""

    kind: Literal["lab"] = "lab"
    n: int = Field(200, ge=1, le=1000)
    seed: int = 1234
    max_tokens: int = Field(64, ge=1, le=4096)


Workload = Annotated[SyntheticWorkload | JsonlWorkload | LabWorkload, Field(discriminator="kind")]


# -- load shapes -----------------------------------------------------------------------------------------


class Concurrency(_Frozen):
    """A fixed number of streams, each sending its next request as soon as the last one ends."""

    kind: Literal["concurrency"] = "concurrency"
    concurrency: int = Field(ge=1, le=100_000)


class Rate(_Frozen):
    """Requests arriving at `rate` per second, evenly spaced or as a Poisson process (seeded)."""

    kind: Literal["rate"] = "rate"
    rate: float = Field(gt=0, le=1_000_000)
    arrivals: Literal["constant", "poisson"] = "poisson"
    max_in_flight: int = Field(4096, ge=1, le=100_000)  # client-side cap; arrivals it delays are counted
    seed: int = 0


class Sweep(_Frozen):
    """Rising load until throughput saturates; reports the highest load that met the SLO.

    over="concurrency": `levels` (default 1, 2, 4, ... up to `max_concurrency`), stopping once throughput has
    stopped rising. over="rate": a throughput probe at `max_concurrency` gives the saturating request rate;
    then `rate_fractions` of it, ascending, with `arrivals`.
    """

    kind: Literal["sweep"] = "sweep"
    over: Literal["concurrency", "rate"] = "concurrency"
    levels: tuple[int, ...] | None = None
    max_concurrency: int = Field(256, ge=1, le=100_000)
    rate_fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9, 1.0)
    arrivals: Literal["constant", "poisson"] = "poisson"
    saturation_gain: float = Field(0.1, ge=0, le=1)  # less growth than this when load doubles = saturated
    run_all_levels: bool = False  # run every level even past saturation or overload (fixed comparison grids)

    @field_validator("levels")
    @classmethod
    def _levels(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is not None and (not v or any(x < 1 for x in v)):
            raise ValueError("sweep levels must be concurrencies >= 1, e.g. 1,2,4,8")
        return tuple(sorted(set(v))) if v else v

    @field_validator("rate_fractions")
    @classmethod
    def _fractions(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v or any(not 0 < f <= 1 for f in v):
            raise ValueError("rate fractions must lie in (0, 1], e.g. 0.25,0.5,0.75,1")
        return tuple(sorted(set(v)))


Shape = Annotated[Concurrency | Rate | Sweep, Field(discriminator="kind")]


class Slo(_Frozen):
    """Service-level objectives: a load meets them when p99 TTFT, p99 TPOT and the error rate are in bounds.
    The same TTFT and TPOT bounds decide, per request, what counts toward goodput."""

    ttft_p99_s: float = Field(2.0, gt=0)
    tpot_p99_s: float = Field(0.1, gt=0)
    max_error_rate: float = Field(0.0, ge=0, le=1)


# -- the whole run ---------------------------------------------------------------------------------------


class LoadConfig(_Frozen):
    """Everything one chimera-load run needs. Bounds (`max_requests`, `max_duration_s`) hold per load level."""

    url: str
    api_key: SecretStr | None = None
    model: str | None = None  # None: the first id of GET /v1/models
    workload: Workload = SyntheticWorkload()
    shape: Shape = Concurrency(concurrency=8)
    slo: Slo = Slo()
    max_requests: int = Field(200, ge=1, le=10_000_000)
    max_duration_s: float = Field(120.0, gt=0, le=7 * 86400)
    drain_s: float = Field(60.0, ge=0, le=3600)  # after the duration bound, for requests in flight
    warmup_requests: int = Field(2, ge=0, le=10_000)
    request_timeout_s: float = Field(600.0, gt=0, le=86400)
    temperature: float = Field(0.0, ge=0, le=2)
    ignore_eos: bool | None = None  # None: on for synthetic prompts (exact output lengths), off otherwise
    extra_body: dict[str, Any] = Field(default_factory=dict)
    crosscheck: bool = True  # compare the server's /metrics token counters with the client's counts
    target_tokens_per_day: float | None = Field(None, gt=0)
    keep_text: bool = False  # keep each answer's text (accuracy needs it)
    abort_after_failures: int = Field(10, ge=1, le=100_000)  # consecutive connection failures: server gone
    event_loop: Literal["auto", "asyncio", "uvloop"] = (
        "auto"  # auto: uvloop where installed (less CPU per token)
    )
    label: str = ""

    @field_validator("url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"{v!r} is not an http(s) URL; e.g. http://127.0.0.1:8000")
        for suffix in ("/chat/completions", "/v1"):
            v = v.removesuffix(suffix)
        return v

    @field_validator("extra_body")
    @classmethod
    def _extra(cls, v: dict[str, Any]) -> dict[str, Any]:
        reserved = {"model", "messages", "stream", "stream_options"} & set(v)
        if reserved:
            raise ValueError(f"extra_body may not set {sorted(reserved)}: chimera-load sets them")
        return v

    @property
    def eos_ignored(self) -> bool:
        if self.ignore_eos is not None:
            return self.ignore_eos
        return isinstance(self.workload, SyntheticWorkload)

    def redacted(self) -> dict[str, Any]:
        """The configuration as JSON-able data, with the API key hidden."""
        data = self.model_dump(mode="json")
        data["api_key"] = "(set)" if self.api_key else None
        data["ignore_eos"] = self.eos_ignored
        return data
