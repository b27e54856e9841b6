"""`chimera-serve --model DIR [...]`: check the checkpoint, bind the port, load the engine, serve, drain.

Every setting of `ServeSettings` is a flag with vLLM's spelling (`--tensor-parallel-size`, `--max-model-len`,
`--api-key`, ...), also settable as `CHIMERA_<NAME>` or in the YAML of `--config`. Failures a user can fix
(bad value, broken checkpoint, port in use) print one line and exit non-zero, without a traceback.
SIGTERM drains: /ready turns false, new requests get 503, in-flight requests finish within
`--drain-grace-s`, then the process exits 0.
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
    if ns.price_prompt is not None or ns.price_completion is not None:
        values["pricing"] = {"prompt": ns.price_prompt or "0", "completion": ns.price_completion or "0"}
    try:
        return load_settings(values, ns.config)
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


def _serve(app: Any, settings: ServeSettings, sock: socket.socket) -> None:
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn whose SIGTERM drains first: 503 for new requests, in-flight ones finish, then exit."""

        deadline: float | None = None

        def handle_exit(self, sig: int, frame: Any) -> None:
            server = getattr(app.state, "server", None)
            if sig == signal.SIGTERM and server is not None and self.deadline is None:
                server.admission.draining = True
                self.deadline = time.monotonic() + settings.drain_grace_s
                log.info(
                    "SIGTERM: draining %d in-flight request(s), grace %.0f s",
                    server.admission.in_flight,
                    settings.drain_grace_s,
                )
                return
            super().handle_exit(sig, frame)

        async def on_tick(self, counter: int) -> bool:
            if self.deadline is not None and not self.should_exit:
                idle = app.state.server.admission.in_flight == 0
                if idle or time.monotonic() > self.deadline:
                    log.info("drained" if idle else "drain grace over: exiting with requests in flight")
                    self.should_exit = True
            return await super().on_tick(counter)

    config = uvicorn.Config(
        app, log_config=None, access_log=False, timeout_graceful_shutdown=5, timeout_keep_alive=5
    )
    DrainingServer(config).run(sockets=[sock])


def main(argv: list[str] | None = None) -> None:
    ns = build_parser().parse_args(argv)
    settings = _settings(ns)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("chimera_serve.access").propagate = False
    access = logging.StreamHandler(sys.stderr)
    access.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger("chimera_serve.access").addHandler(access)
    _verify(settings.model)
    sock = _bind(
        settings.host, settings.port
    )  # before the engine: a busy port fails in a second, not a minute
    from chimera_serve.app import create_app

    log.info(
        "serving %s as %r on http://%s:%d", settings.model, settings.model_name, settings.host, settings.port
    )
    _serve(create_app(settings), settings, sock)


if __name__ == "__main__":
    main()
