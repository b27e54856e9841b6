"""`chimera-serve --model DIR [...]`: check the checkpoint, bind the port, load the engine, serve, drain.

Every setting of `ServeSettings` is a flag with vLLM's spelling (`--tensor-parallel-size`, `--max-model-len`,
`--api-key`, ...), also settable as `CHIMERA_<NAME>` or in the YAML of `--config`. Failures a user can fix
(bad value, broken checkpoint, port in use) print one line and exit non-zero, without a traceback.
SIGTERM drains: /ready turns false, new requests get 503, in-flight requests finish within
`--drain-grace-s` (what still runs then ends with a 503 error event), then the process exits 0. The port
answers while the model loads; if the engine fails to load or dies later, the process exits 1.
On a CPU, vLLM's memory and thread-binding settings get defaults sized from the machine (`hardware`).
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import time
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from chimera_serve.config import ServeSettings, load_settings

log = logging.getLogger("chimera_serve")
_SPECIAL = {"api_keys", "pricing", "model"}
ABORT_WAIT_S = 5.0  # after the drain grace: time for aborted streams to send their error frames


def _flag_type(annotation: Any) -> tuple[Any, list[Any] | None]:
    """argparse type and choices for a field annotation (Optional unwrapped)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) is typing.Literal:
        return str, list(typing.get_args(annotation))
    return (annotation if annotation in (int, float, str, Path) else str), None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chimera-serve", description="OpenAI-compatible server for a Chimera child."
    )
    p.add_argument(
        "--model", required=True, type=Path, help="checkpoint directory (config.json, safetensors)"
    )
    p.add_argument("--config", type=Path, help="YAML file of settings (flags and CHIMERA_* env win)")
    p.add_argument("--api-key", dest="api_keys", action="append", help="accepted API key (repeatable)")
    p.add_argument("--price-prompt", help="USD per prompt token, for /v1/models")
    p.add_argument("--price-completion", help="USD per completion token, for /v1/models")
    for name, f in ServeSettings.model_fields.items():
        if name in _SPECIAL:
            continue
        flag = "--" + name.replace("_", "-")
        if f.annotation is bool:
            p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS)
            continue
        kind, choices = _flag_type(f.annotation)
        p.add_argument(
            flag,
            dest=name,
            type=kind,
            choices=choices,
            default=argparse.SUPPRESS,
            help=f"(default: {f.default})",
        )
    return p


def _fail(message: str, code: int = 2) -> typing.NoReturn:
    print(f"chimera-serve: error: {message}", file=sys.stderr)
    sys.exit(code)


def _settings(ns: argparse.Namespace) -> ServeSettings:
    values = {k: v for k, v in vars(ns).items() if k not in ("config", "price_prompt", "price_completion")}
    try:
        settings = load_settings(values, ns.config)
        prices = {"prompt": ns.price_prompt, "completion": ns.price_completion}
        if any(v is not None for v in prices.values()):  # a flag overrides its own price only
            merged = {**settings.pricing.model_dump(), **{k: v for k, v in prices.items() if v is not None}}
            settings = load_settings({**values, "pricing": merged}, ns.config)
            unset = [k for k, v in prices.items() if v is None and getattr(settings.pricing, k) == "0"]
            if unset:
                given = "prompt" if unset == ["completion"] else "completion"
                _fail(
                    f"--price-{given} without --price-{unset[0]}: routers would read a {unset[0]} price of 0 "
                    f"as free; give --price-{unset[0]} too (0 if it really is free)"
                )
        return settings
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "settings"
        _fail(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    except ValueError as e:
        _fail(str(e))


def _verify(model: Path) -> None:
    """Refuse a checkpoint vLLM would load wrongly (e.g. an FP8 child with a bf16 linear and no scale)."""
    from merge.errors import MergeError
    from merge.verify import verify_checkpoint

    try:
        verify_checkpoint(model, headers_only=True)
    except MergeError as e:
        _fail(f"{model} is not servable: {e}")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        _fail(f"cannot listen on {host}:{port}: {e.strerror}; pick another with --port", code=1)
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _engine_setup(settings: ServeSettings) -> None:
    """CPU defaults for vLLM's environment and a check of the engine arguments, before the model loads."""
    from chimera_serve.engine import EngineConfigError, engine_args
    from chimera_serve.hardware import HardwareError, apply_engine_env

    try:
        ranks = settings.tensor_parallel_size * settings.pipeline_parallel_size * settings.data_parallel_size
        added = apply_engine_env(ranks)
        engine_args(settings)
    except (EngineConfigError, HardwareError) as e:
        _fail(str(e))
    if added:
        log.info("engine environment defaults: %s", " ".join(f"{k}={v}" for k, v in sorted(added.items())))


def _serve(settings: ServeSettings, sock: socket.socket) -> int:
    """Run until stopped; the exit code: 0 after a drain or Ctrl-C, 1 when the engine failed or died."""
    import uvicorn

    from chimera_serve.app import create_app

    exit_code = 0

    def on_fatal(code: int) -> None:
        nonlocal exit_code
        exit_code = code
        server.should_exit = True

    app = create_app(settings, on_fatal=on_fatal)

    class DrainingServer(uvicorn.Server):
        """uvicorn whose SIGTERM drains first: 503 for new requests, in-flight ones finish within the grace;
        what is still running then is aborted with a clean 503 error frame, and the process exits."""

        deadline: float | None = None
        aborted: float | None = None

        def handle_exit(self, sig: int, frame: Any) -> None:
            srv = app.state.host.server if hasattr(app.state, "host") else None
            if sig == signal.SIGTERM and srv is not None and self.deadline is None:
                srv.admission.draining = True
                self.deadline = time.monotonic() + settings.drain_grace_s
                log.info(
                    "SIGTERM: draining %d in-flight request(s), grace %.0f s",
                    srv.admission.in_flight,
                    settings.drain_grace_s,
                )
                return
            super().handle_exit(sig, frame)

        async def on_tick(self, counter: int) -> bool:
            if self.deadline is not None and not self.should_exit:
                srv = app.state.host.server
                now = time.monotonic()
                if srv.admission.in_flight == 0:
                    log.info("drained")
                    self.should_exit = True
                elif now > self.deadline and self.aborted is None:
                    n = await srv.shut_down_in_flight()
                    log.info("drain grace over: ended %d request(s) with a 503 error", n)
                    self.aborted = now
                elif self.aborted is not None and now > self.aborted + ABORT_WAIT_S:
                    self.should_exit = True
            return await super().on_tick(counter)

    config = uvicorn.Config(
        app, log_config=None, access_log=False, timeout_graceful_shutdown=5, timeout_keep_alive=5
    )
    server = DrainingServer(config)
    server.run(sockets=[sock])
    return exit_code


def main(argv: list[str] | None = None) -> None:
    ns = build_parser().parse_args(argv)
    settings = _settings(ns)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("chimera_serve.access").propagate = False
    access = logging.StreamHandler(sys.stderr)
    access.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger("chimera_serve.access").addHandler(access)
    if settings.load_format != "dummy":  # dummy weights: a config.json alone, nothing to verify
        _verify(settings.model)
    # The port first: a busy port fails in a second, not after the engine's arguments and model load.
    sock = _bind(settings.host, settings.port)
    _engine_setup(settings)
    log.info(
        "serving %s as %r on http://%s:%d", settings.model, settings.model_name, settings.host, settings.port
    )
    sys.exit(_serve(settings, sock))


if __name__ == "__main__":
    main()
