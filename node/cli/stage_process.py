"""Run one stage server in this process until SIGTERM: `python -m node.cli.stage_process --model-dir DIR`.

The local pipeline starts its child stages with it. The signing key comes from the environment
(STAGEWISE_STAGE_KEY, hex), never from the command line, where `ps` would show it. Prints
`listening URL` on stdout once the server accepts connections. Production workers use `stagewise worker`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from types import SimpleNamespace

import click

from node import settings
from node.cli.options import CONTEXT_SETTINGS
from node.pipeline.server import StageServer
from node.protocol.signing import SigningKey


@click.command("python -m node.cli.stage_process", context_settings=CONTEXT_SETTINGS, help=__doc__)
@click.option("--model-dir", multiple=True, required=True, help="a model directory this stage may load (repeatable)")
@click.option("--host", default="127.0.0.1", help="listen address")
@click.option("--port", type=int, default=0, help="listen port, 0 picks a free one")
@click.option("--threads", type=int, default=None, help="torch threads for this stage")
@click.option("--micro-batches", type=int, default=None, help="micro-batches in flight (default: the server's)")
@click.option("--stall-timeout-s", type=float, default=120.0, help="seconds a sequence may wait on a peer")
@click.option("--attn-impl", type=click.Choice(("eager", "sdpa")), default="sdpa", help="attention implementation")
@click.option("--device", default="cpu", help="torch device")
@click.option("--controller", multiple=True,
              help="an orchestrator address whose signed requests may assign this stage and start jobs (repeatable)")
def _command(**params) -> None:
    args = SimpleNamespace(**params)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s stage: %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    asyncio.run(serve(args))


async def serve(args: SimpleNamespace) -> None:
    secret = settings.STAGE_KEY.get()
    if not secret:
        raise SystemExit(f"set {settings.STAGE_KEY.name} to the stage's private key (hex)")
    server = StageServer(
        SigningKey.from_hex(secret), host=args.host, port=args.port, model_dirs=list(args.model_dir), device=args.device,
        attn_impl=args.attn_impl, micro_batches=args.micro_batches, stall_timeout_s=args.stall_timeout_s,
        controllers=list(args.controller),
    )
    await server.start()
    print(f"listening {server.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace_s=0)


def main(argv=None) -> None:
    _command.main(args=argv, prog_name="python -m node.cli.stage_process")


if __name__ == "__main__":
    main()
