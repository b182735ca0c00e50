"""Run one stage server in this process until SIGTERM: `python -m node.pipeline.stage_process --model-dir DIR`.

The local pipeline starts its child stages with it. The signing key comes from the environment
(STAGEWISE_STAGE_KEY, hex), never from the command line, where `ps` would show it. Prints
`listening URL` on stdout once the server accepts connections. Production workers use `stagewise worker`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal

from node.pipeline.local import KEY_ENV
from node.pipeline.server import StageServer
from node.protocol.signing import SigningKey


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m node.pipeline.stage_process", description=__doc__)
    parser.add_argument("--model-dir", action="append", required=True, help="a model directory this stage may load (repeatable)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for this stage")
    parser.add_argument("--micro-batches", type=int, default=None)
    parser.add_argument("--stall-timeout-s", type=float, default=120.0)
    parser.add_argument("--attn-impl", choices=("eager", "sdpa"), default="sdpa")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--controller", action="append", default=[],
                        help="an orchestrator address whose signed requests may assign this stage and start jobs (repeatable)")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    secret = os.environ.get(KEY_ENV)
    if not secret:
        raise SystemExit(f"set {KEY_ENV} to the stage's private key (hex)")
    server = StageServer(
        SigningKey.from_hex(secret), host=args.host, port=args.port, model_dirs=args.model_dir, device=args.device,
        attn_impl=args.attn_impl, micro_batches=args.micro_batches, stall_timeout_s=args.stall_timeout_s,
        controllers=args.controller,
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
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s stage: %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
