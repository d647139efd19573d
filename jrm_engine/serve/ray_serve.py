"""The reward server as Ray Serve replicas: each replica loads its own engine (its own C++ runtime, and its own
GPU with `num_gpus=1` on CUDA) and serves the same FastAPI app; Serve's proxy spreads requests over them.

    jrm serve out/scorer.pt2 --ray --replicas 2                       # or autoscale: --min-replicas 1 --max-replicas 4
    serve run jrm_engine.serve.ray_serve:app_builder model=out/scorer.pt2 replicas=2   # Serve's own CLI / config
    jrm serve out/scorer.pt2 --ray --replicas 2 --rl-path /         # plus the Flow-GRPO / EditScore protocol at /

In a Serve config file: `import_path: jrm_engine.serve.ray_serve:app_builder` with `args: {model: ..., replicas:
2}` (every keyword of `deployment` below is an arg).
"""
from __future__ import annotations

from typing import Any

from ray import serve

from .app import create_app
from .engine import ServeEngine
from .rl_protocol import rl_router
from .settings import ServeSettings


@serve.deployment
@serve.ingress()
class RewardReplica:
    def __init__(self, model: str, backend: str, settings: ServeSettings, scorer_options: dict,
                 rl_path: str | None = None):
        self.settings, self.rl_path = settings, rl_path
        self.engine = ServeEngine.load(model, backend=backend, settings=settings, **scorer_options)

    def __serve_build_asgi_app__(self):
        # The app's lifespan warms the engine up (readiness) and closes it when Serve stops the replica. The
        # router is built here, not passed in: a factory closure would have to be pickled to reach the replica.
        routers = [rl_router(self.rl_path)] if self.rl_path else []
        return create_app(self.engine, self.settings, routers=routers)

    def __del__(self):
        self.engine.close()


def deployment(model: str, backend: str = "runtime", settings: ServeSettings | None = None,
               scorer_options: dict | None = None, *, replicas: int = 1, min_replicas: int | None = None,
               max_replicas: int | None = None, target_ongoing_requests: float = 8.0, cpus_per_replica: float = 1.0,
               max_ongoing_requests: int = 256, rl_path: str | None = None):
    """A bound Serve application. `max_ongoing_requests` is high on purpose: Serve's default (5) would hold
    requests in the proxy instead of letting the replica's runtime batch them together. `rl_path`: also answer
    the Flow-GRPO / EditScore protocol there on every replica (as `jrm serve --rl-path`)."""
    if rl_path:
        rl_router(rl_path)  # a bad path fails here, before any replica loads an engine
    scorer_options = dict(scorer_options or {})
    device = str(scorer_options.get("device") or "")
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": cpus_per_replica, "num_gpus": 1 if device.startswith("cuda") else 0},
        "max_ongoing_requests": max_ongoing_requests,
        "health_check_period_s": 2,
    }
    if min_replicas is not None or max_replicas is not None:
        low = min_replicas if min_replicas is not None else 1
        options["autoscaling_config"] = {"min_replicas": low, "max_replicas": max_replicas or max(low, replicas),
                                         "initial_replicas": max(low, min(replicas, max_replicas or replicas)),
                                         "target_ongoing_requests": target_ongoing_requests}
    else:
        options["num_replicas"] = replicas
    return RewardReplica.options(**options).bind(model, backend, settings or ServeSettings(), scorer_options,
                                                 rl_path)


def app_builder(args: dict):
    """For `serve run jrm_engine.serve.ray_serve:app_builder model=PATH [backend=...] [replicas=N] [rl_path=/]`."""
    args = dict(args)
    if "model" not in args:
        raise ValueError("app_builder: the 'model' arg (engine path) is required")
    numbers = {"replicas": int, "min_replicas": int, "max_replicas": int, "target_ongoing_requests": float,
               "cpus_per_replica": float, "max_ongoing_requests": int}
    options = {"max_batch": int, "max_delay_ms": float, "max_queue": int}  # the rest go to Scorer.load
    kwargs = {k: numbers[k](args.pop(k)) for k in list(args) if k in numbers}
    model, backend = args.pop("model"), args.pop("backend", "runtime")
    kwargs["rl_path"] = args.pop("rl_path", None)
    args = {k: options[k](v) if k in options else v for k, v in args.items()}
    settings = ServeSettings(api_key=ServeSettings.api_key_from_env())
    return deployment(model, backend, settings, args, **kwargs)


def run_replicas(model: str, backend: str, settings: ServeSettings, scorer_options: dict, *, host: str, port: int,
                 **kwargs) -> None:
    """Start (or join) a local Ray, deploy, and block until interrupted."""
    import ray
    ray.init(ignore_reinit_error=True)
    serve.start(http_options={"host": host, "port": port})
    serve.run(deployment(model, backend, settings, scorer_options, **kwargs), name="jrm", route_prefix="/",
              blocking=True)
