"""`jrm serve MODEL` / `python -m jrm_engine.serve MODEL`: the reward server (uvicorn, or Ray Serve replicas)."""
from __future__ import annotations

import argparse
import sys

from .settings import API_KEY_ENV, ServeSettings

EPILOG = f"""\
MODEL is an engine from `jrm-export` (the AOTInductor .pt2 for --backend runtime|compiled) or a checkpoint
folder (--backend torch). The runtime backend batches the candidates of concurrent requests together in the
C++ runtime; compiled and torch score one request at a time.

Endpoints: POST /v1/score, POST /v1/score_group (JSON with base64 PNG/JPEG images, or the binary
application/x-jrm-arrays format RewardClient sends), GET /v1/info, /healthz, /readyz, /metrics, /docs.
Auth: --api-key or ${API_KEY_ENV} (prefer the variable: a command line is visible to every user in `ps`);
clients send `Authorization: Bearer KEY`. SIGTERM or Ctrl-C stops accepting, answers every request in flight
(up to --graceful-timeout seconds), then closes the runtime.

Ray Serve (--ray): N replicas behind Serve's own proxy on --host:--port, each loading its own engine
(num_gpus=1 each with --device cuda); --min-replicas/--max-replicas turn on Serve's autoscaling.
Example: jrm serve out/scorer.pt2 --port 8000 --max-delay-ms 2
"""


def parser() -> argparse.ArgumentParser:
    d = ServeSettings()
    p = argparse.ArgumentParser(prog="jrm serve", description="HTTP reward server for RL trainers.", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="engine file (.pt2 from jrm-export) or checkpoint folder")
    p.add_argument("--backend", default="runtime", choices=["runtime", "compiled", "torch"])
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: the engine's)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1, loopback; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--rl-path", default=None, metavar="PATH",
                   help="also answer the Flow-GRPO / EditScore pickled reward-server protocol at PATH (their "
                        "clients POST to /); see jrm_engine/serve/rl_protocol.py")
    g = p.add_argument_group("runtime batching (--backend runtime)")
    g.add_argument("--max-batch", type=int, default=None, help="candidates per batch (default: the engine's)")
    g.add_argument("--max-delay-ms", type=float, default=2.0, help="how long a batch waits to fill")
    g.add_argument("--max-queue", type=int, default=1024, help="queued candidates before 503s")
    g = p.add_argument_group("limits")
    g.add_argument("--max-body-mb", type=float, default=d.max_body_bytes / 2**20)
    g.add_argument("--max-pixels", type=int, default=d.max_pixels, help="per image, read from its header")
    g.add_argument("--max-candidates", type=int, default=d.max_candidates, help="per request")
    g.add_argument("--timeout", type=float, default=d.timeout_s, help="seconds per request before a 504")
    g.add_argument("--retry-after", type=int, default=d.retry_after_s, help="Retry-After seconds of a 503")
    g.add_argument("--api-key", default=None, help=f"bearer token (default ${API_KEY_ENV}; unset: no auth)")
    g.add_argument("--decode-threads", type=int, default=d.decode_threads)
    g.add_argument("--graceful-timeout", type=float, default=30.0, help="seconds to drain on SIGTERM")
    g = p.add_argument_group("Ray Serve")
    g.add_argument("--ray", action="store_true", help="deploy as Ray Serve replicas instead of one uvicorn")
    g.add_argument("--replicas", type=int, default=1)
    g.add_argument("--min-replicas", type=int, default=None, help="with --max-replicas: autoscale")
    g.add_argument("--max-replicas", type=int, default=None)
    g.add_argument("--target-ongoing-requests", type=float, default=8.0, help="autoscaling target per replica")
    g.add_argument("--cpus-per-replica", type=float, default=1.0)
    return p


def settings_from(args) -> ServeSettings:
    return ServeSettings(max_body_bytes=int(args.max_body_mb * 2**20), max_pixels=args.max_pixels,
                         max_candidates=args.max_candidates, timeout_s=args.timeout, retry_after_s=args.retry_after,
                         api_key=args.api_key or ServeSettings.api_key_from_env(), decode_threads=args.decode_threads)


def scorer_options(args) -> dict:
    options = {"device": args.device} if args.device else {}
    if args.backend == "runtime":
        options.update(max_batch=args.max_batch, max_delay_ms=args.max_delay_ms, max_queue=args.max_queue)
    return options


def run(args) -> None:
    settings = settings_from(args)
    if args.ray:
        from .ray_serve import run_replicas
        run_replicas(args.model, args.backend, settings, scorer_options(args), host=args.host, port=args.port,
                     replicas=args.replicas, min_replicas=args.min_replicas, max_replicas=args.max_replicas,
                     target_ongoing_requests=args.target_ongoing_requests, cpus_per_replica=args.cpus_per_replica,
                     rl_path=args.rl_path)
        return
    import uvicorn

    from .app import create_app
    from .engine import ServeEngine
    from .rl_protocol import rl_router
    routers = [rl_router(args.rl_path)] if args.rl_path else []  # a bad path fails before the engine loads
    engine = ServeEngine.load(args.model, backend=args.backend, settings=settings, **scorer_options(args))
    # uvicorn's SIGTERM handling is the drain: stop accepting, let in-flight requests finish, then the app's
    # lifespan shutdown closes the engine (the runtime answers what it still holds).
    config = uvicorn.Config(create_app(engine, settings, routers=routers), host=args.host, port=args.port,
                            log_level="info", timeout_graceful_shutdown=args.graceful_timeout, access_log=False)
    try:
        uvicorn.Server(config).run()
    finally:
        engine.close()


def main(argv: list[str] | None = None) -> int:
    from jrm_engine.cli import exit_status
    args = parser().parse_args(argv)
    return exit_status(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
