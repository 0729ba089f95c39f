"""`mtft-serve checkpoint=DIR` (or `model=DIR_OR_ID [gguf_file=NAME] [adapter=DIR] [precision=P]`): an
OpenAI-compatible server for the model, at http://127.0.0.1:8000 unless `host=` and `port=` say otherwise.

Keys: config=RUN/config.yaml (for an exported adapter), host (127.0.0.1), port (8000; 0: a free one), model_name
(the id clients send; default: the checkpoint's or model's directory name), api_key (better: the MTFT_API_KEY
environment variable, which `ps` does not show), max_batch (8), max_wait_ms (10), max_body_bytes (1 MiB).
Needs the `serve` extra: pip install 'mtft[serve]'.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from mtft.cli.key_values import key_values
from mtft.errors import ConfigError, UserError
from mtft.logging.console import quiet_library_warnings, terminal_bars

USAGE = "mtft-serve (checkpoint=DIR [config=FILE] | model=DIR_OR_ID [gguf_file=NAME] [adapter=DIR]) [host=] [port=]"
API_KEY_ENV = "MTFT_API_KEY"


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str | None = None
    api_key: str | None = None
    max_batch: int = 8
    max_wait_ms: float = 10.0
    max_body_bytes: int = 1 << 20


def parse(argv: list[str]) -> tuple[dict[str, str], ServeOptions]:
    """key=value arguments; one without `=` is an error, never dropped."""
    from mtft.cli.eval import BASE_KEYS
    from mtft.config.convert import from_dict

    args = key_values(argv, USAGE)
    paths = {"checkpoint", "config"}
    unknown = sorted(set(args) - paths - BASE_KEYS - {f.name for f in dataclasses.fields(ServeOptions)})
    if unknown or ("checkpoint" in args) == ("model" in args):
        raise ConfigError("", f"usage: {USAGE} (unknown: {unknown})")
    options = from_dict(ServeOptions, {k: yaml.safe_load(v) for k, v in args.items() if k not in paths | BASE_KEYS})
    if options.api_key is None and os.environ.get(API_KEY_ENV):
        options.api_key = os.environ[API_KEY_ENV]
    return args, options


def main(argv: list[str] | None = None) -> None:
    quiet_library_warnings()
    try:
        args, options = parse(sys.argv[1:] if argv is None else argv)
        try:
            import uvicorn

            from mtft.serve.app import ServeSettings, build_app
        except ImportError as err:
            raise ConfigError("", f"mtft-serve needs the serve extra: pip install 'mtft[serve]' ({err})") from None
        from mtft.cli.eval import base_model
        from mtft.eval.generation import stop_ids
        from mtft.serve.batcher import Batcher
        from mtft.training.inference import load_base, load_trained

        terminal_bars("auto", rank=0)
        base = base_model(args)
        source = Path(args["checkpoint"] if "checkpoint" in args else args["model"])
        config = Path(args["config"]) if "config" in args else None
        trained = load_base(base) if base is not None else load_trained(source, config)
        name = options.model_name or (source.parent.name if source.name.startswith("checkpoint-") else source.name)
        model, tokenizer = trained.model, trained.tokenizer
        batcher = Batcher(model, tokenizer, stop_ids(model, tokenizer), options.max_batch, options.max_wait_ms / 1000)
        context = int(getattr(model.config, "max_position_embeddings", 2048))
        settings = ServeSettings(name, options.api_key, options.max_body_bytes, context)
        app = build_app(batcher, tokenizer, settings)
        run_server(uvicorn, app, options.host, options.port)  # until SIGTERM or SIGINT: in-flight requests finish
        batcher.close()
    except UserError as err:
        print(f"mtft-serve: error: {err}", file=sys.stderr)
        sys.exit(2)


def run_server(uvicorn, app, host: str, port: int) -> None:
    """uvicorn's server, which says where it listens once its socket is bound (port=0 picks a free one). On
    SIGTERM or SIGINT it stops accepting, lets the requests in flight finish, and returns."""

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            """Graceful shutdown on SIGTERM or SIGINT, then a normal exit (uvicorn's own re-raises the signal after
            the shutdown, so the process would end by it, not with 0)."""
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if self.started:
                bound_host, bound_port = self.servers[0].sockets[0].getsockname()[:2]
                print(f"mtft-serve: listening on http://{bound_host}:{bound_port}", flush=True)

    Server(uvicorn.Config(app, host=host, port=port, log_level="warning")).run()


if __name__ == "__main__":
    main()
