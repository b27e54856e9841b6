"""Server configuration: one frozen pydantic-settings model, validated once at start.

Sources, highest priority first: CLI flags (passed as keyword arguments), environment variables
`CHIMERA_<FIELD>` (e.g. `CHIMERA_TENSOR_PARALLEL_SIZE=8`, `CHIMERA_API_KEYS=k1,k2`), the optional YAML
file given by `--config`, then the defaults below. Field names follow vLLM's engine arguments, so the
CLI flags are vLLM's (`--tensor-parallel-size`, `--max-model-len`, ...). Defaults suit one CPU or GPU;
`chimera_serve/production.yaml` holds the 8-GPU production values.
"""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

MIN_API_KEY_CHARS = 16


class Pricing(BaseModel):
    """USD per token, as decimal strings (OpenRouter's `pricing` object)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: str = "0"
    completion: str = "0"

    @field_validator("prompt", "completion", mode="before")
    @classmethod
    def _decimal(cls, v: Any) -> str:
        try:
            d = Decimal(str(v))
        except InvalidOperation:
            raise ValueError(f"price {v!r} is not a number; give USD per token, e.g. '0.0000005'") from None
        if not d.is_finite() or d < 0:
            raise ValueError(f"price {v!r} must be a non-negative USD amount per token")
        return format(d, "f")


class ServeSettings(BaseSettings):
    """Everything `chimera-serve` needs; see the module docstring for where values come from."""

    model_config = SettingsConfigDict(env_prefix="CHIMERA_", frozen=True, extra="forbid")

    # Model and engine (vLLM's names).
    model: Path
    served_model_name: str | None = None
    hugging_face_id: str | None = None
    tensor_parallel_size: int = Field(1, ge=1, le=64)
    pipeline_parallel_size: int = Field(1, ge=1, le=64)
    distributed_executor_backend: Literal["mp", "ray"] | None = None
    enable_expert_parallel: bool = False
    data_parallel_size: int = Field(1, ge=1, le=64)
    max_model_len: int | None = Field(None, ge=16)
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=0.98)
    max_num_seqs: int | None = Field(None, ge=1, le=4096)
    max_num_batched_tokens: int | None = Field(None, ge=16)
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    kv_cache_dtype: str = "auto"  # vLLM's choices differ by release: checked against the engine at start
    # Kernel choices, e.g. linear_backend=cutlass, moe_backend=triton on an H200 with vLLM 0.25.
    linear_backend: str = "auto"
    moe_backend: str = "auto"
    num_speculative_tokens: int | None = Field(None, ge=1, le=8)  # MTP speculative decoding (DeepSeek-V3)
    load_format: str = "auto"  # "dummy": random weights of the checkpoint's shapes (throughput runs)
    enforce_eager: bool = False
    trust_remote_code: bool = False
    # Whether the model reasons in <think> when its template leaves that to it (R1 style). auto: its greedy
    # answers to a few probe prompts at start-up decide. Decides whether JSON mode allows a think block first
    # and whether /v1/models advertises reasoning.
    model_thinks: Literal["auto", "yes", "no"] = "auto"

    # HTTP server.
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # Requests waiting beyond max_num_seqs, then 429; default: as many as max_num_seqs (sized by vLLM per device).
    max_queued: int | None = Field(None, ge=0, le=100_000)
    request_timeout_s: float = Field(600.0, gt=0, le=86_400)
    max_body_bytes: int = Field(1 << 20, ge=1024, le=64 << 20)
    drain_grace_s: float = Field(30.0, ge=0, le=3600)
    keepalive_interval_s: float = Field(5.0, gt=0, le=60)  # `: PROCESSING` comments while queued
    think_window_s: float = Field(300.0, gt=0, le=86_400)

    # Router-facing description.
    pricing: Pricing = Pricing()
    max_output_length: int | None = Field(None, ge=1)

    # Safety.
    api_keys: Annotated[tuple[str, ...], NoDecode] = Field((), repr=False)
    api_key_file: Path | None = None
    log_prompts: bool = False

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, v: Any) -> Any:
        if isinstance(v, str):
            return tuple(k.strip() for k in v.split(",") if k.strip())
        return v

    @field_validator("api_keys")
    @classmethod
    def _long_keys(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if any(len(k) < MIN_API_KEY_CHARS for k in v):
            raise ValueError(
                f"API keys must have at least {MIN_API_KEY_CHARS} characters; generate one with "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        return v

    @field_validator("model")
    @classmethod
    def _model_dir(cls, v: Path) -> Path:
        if not (v / "config.json").is_file():
            raise ValueError(
                f"{v} is not a model directory (no config.json); pass --model DIR of a checkpoint"
            )
        return v

    @model_validator(mode="after")
    def _keys_from_file(self) -> ServeSettings:
        if self.api_key_file is not None:
            try:
                lines = self.api_key_file.read_text().splitlines()
            except OSError as e:
                raise ValueError(f"cannot read --api-key-file {self.api_key_file}: {e.strerror}") from None
            keys = tuple(k.strip() for k in lines if k.strip() and not k.lstrip().startswith("#"))
            if not keys:
                raise ValueError(f"--api-key-file {self.api_key_file} holds no key (one key per line)")
            object.__setattr__(self, "api_keys", self._long_keys((*self.api_keys, *keys)))
        return self

    @property
    def model_name(self) -> str:
        """The id clients send as `model`."""
        return self.served_model_name or self.model.name

    def model_hf_config(self) -> dict[str, Any]:
        return json.loads((self.model / "config.json").read_text())

    def quantization(self) -> str:
        """Label for `/v1/models`: `fp8` for block-FP8 checkpoints, else the weights' dtype."""
        cfg = self.model_hf_config()
        quant = (cfg.get("quantization_config") or {}).get("quant_method")
        if quant:
            return str(quant)
        dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16")
        return {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(dtype, dtype)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls))


def load_settings(overrides: dict[str, Any], config_file: Path | None = None) -> ServeSettings:
    """Build the settings from CLI overrides (None values dropped), env, and an optional YAML file.

    Raises pydantic's ValidationError (the CLI prints it on one line) for unsafe or invalid values.
    """
    values = {k: v for k, v in overrides.items() if v is not None}
    if config_file is None:
        settings = ServeSettings(**values)
    else:
        if not config_file.is_file():
            raise ValueError(f"--config {config_file} does not exist")
        cls = type(
            "ServeSettings",
            (ServeSettings,),
            {
                "model_config": SettingsConfigDict(
                    **{**ServeSettings.model_config, "yaml_file": str(config_file)}
                )
            },
        )
        settings = cls(**values)
    return settings
