"""The reward server's FastAPI app: `create_app(engine, settings) -> FastAPI`.

    engine = ServeEngine.load("out/scorer.pt2", backend="runtime", settings=settings, max_delay_ms=2)
    app = create_app(engine, settings)      # serve with uvicorn (`jrm serve`) or Ray Serve (ray_serve.py)

Endpoints: POST /v1/score, POST /v1/score_group (JSON with base64 PNG/JPEG, or the binary format of
`payload.py`), GET /v1/info, /healthz, /readyz (engine loaded and warmed), /metrics (Prometheus), /docs (OpenAPI).
Every error is JSON `{"error": {"field", "message", "status"}}`: 401 bad or missing token, 413 body too large, 422
bad input, 503 + Retry-After runtime queue full or shutting down, 504 request timeout, 500 engine failure.

Adding an endpoint (issue 15's RL-protocol endpoint does this): write a factory
`make_router(engine: ServeEngine, settings: ServeSettings) -> fastapi.APIRouter` and list it in ROUTERS below
(or pass it in `create_app(..., routers=[...])`). Its routes get the same guard as these: the body-size limit and
bearer auth run before the route sees the request (`await request.body()` is already bounded). Raise
`jrm_engine.serve.errors` exceptions for bad input, or catch them to answer in your protocol's shape; score with
`await engine.score_group(source, instruction, candidates)` / `await engine.score(items)` (arrays or PIL
images), and run CPU-heavy parsing with `await engine.offload(fn, *args)` so the event loop stays free. Check
`settings.max_pixels` / `settings.max_candidates` (`payload.decode_image` checks pixels before decoding).
"""
from __future__ import annotations

import hmac
import json
from contextlib import asynccontextmanager
from typing import Callable, Sequence

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from . import payload
from .engine import ServeEngine
from .errors import BadInput, BodyTooLarge, RequestError, Unauthorized
from .metrics import ServeMetrics
from .settings import ServeSettings

RouterFactory = Callable[[ServeEngine, ServeSettings], APIRouter]
ROUTERS: list[RouterFactory] = []

# Liveness and readiness probes answer without a token: orchestrators probe without one.
_OPEN_PATHS = ("/healthz", "/readyz")


def create_app(engine: ServeEngine, settings: ServeSettings | None = None, *,
               routers: Sequence[RouterFactory] = (), warmup: bool = True) -> FastAPI:
    """The app over a loaded engine. Its lifespan warms the engine up on start (then /readyz is 200) and closes it
    on shutdown (every request the runtime holds is answered first)."""
    settings = settings or engine.settings

    @asynccontextmanager
    async def lifespan(_app):
        if warmup:
            await engine.warmup()
        else:
            engine.ready = True
        try:
            yield
        finally:
            engine.close()

    app = FastAPI(title="jrm reward server", version="1", lifespan=lifespan,
                  description="Rewards for (source image, instruction, edited image) from a Joint Reward Model.")
    metrics = ServeMetrics(engine)
    app.state.engine, app.state.settings, app.state.metrics = engine, settings, metrics
    app.add_middleware(_Guard, settings=settings, metrics=metrics)

    @app.exception_handler(RequestError)
    async def request_error(_request, e: RequestError):
        metrics.rejected(e.status)
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request, e: RequestValidationError):
        first = e.errors()[0]
        error = BadInput(".".join(str(p) for p in first["loc"]), first["msg"])
        metrics.rejected(error.status)
        return JSONResponse(error.body(), status_code=error.status)

    async def answer(endpoint: str, request: Request, decode, score) -> dict:
        body = await request.body()
        kind = request.headers.get("content-type", "")
        fmt = "binary" if kind.startswith(payload.BINARY) else "json"
        try:
            with metrics.timed(metrics.latency, endpoint):
                with metrics.timed(metrics.decode, endpoint, fmt):
                    decoded = await engine.offload(decode, body, kind, settings)
                rewards = await score(decoded)
        except RequestError as e:
            metrics.requests.labels(endpoint, str(e.status)).inc()
            raise
        metrics.requests.labels(endpoint, "200").inc()
        metrics.candidates.labels(endpoint).inc(len(rewards))
        return {"rewards": rewards.tolist(), "model": engine.model}

    @app.post("/v1/score", response_model=payload.ScoreResponse, openapi_extra=_body_doc("ScoreRequest", "score"))
    async def score(request: Request):
        """Rewards for a list of (source, instruction, edited) items, in order."""
        return await answer("score", request, payload.decode_score, engine.score)

    @app.post("/v1/score_group", response_model=payload.ScoreResponse,
              openapi_extra=_body_doc("GroupRequest", "score_group"))
    async def score_group(request: Request):
        """Rewards for G candidates of one source and instruction (the source is encoded once), in order."""
        return await answer("score_group", request, payload.decode_group, lambda d: engine.score_group(*d))

    @app.get("/v1/info")
    async def info():
        return {"model": engine.model, "image_size": engine.image_size, "max_candidates": settings.max_candidates,
                "max_pixels": settings.max_pixels, "max_body_bytes": settings.max_body_bytes,
                "formats": ["application/json", payload.BINARY], "batching": engine.asynchronous}

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        if not engine.ready:
            return JSONResponse({"status": "starting" if not engine._closed else "closing"}, status_code=503)
        return {"status": "ready", "model": engine.model}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    for factory in [*ROUTERS, *routers]:
        app.include_router(factory(engine, settings))
    _document_bodies(app)
    return app


class _Guard:
    """ASGI middleware before every route: bearer auth (constant-time compare) and the body-size limit, checked
    on Content-Length before reading and on the bytes as they arrive (chunked bodies have no length)."""

    def __init__(self, app, settings: ServeSettings, metrics: ServeMetrics):
        self.app, self.settings, self.metrics = app, settings, metrics
        self.token = settings.api_key.encode() if settings.api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        try:
            self._authorize(scope)
            body = await self._read_body(scope, receive)
        except RequestError as e:
            self.metrics.rejected(e.status)
            return await _send_json(send, e.status, e.body(), e.headers)
        if body is None:  # the client went away before sending its body: nobody to answer
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # afterwards: the real channel, so disconnects are still seen

        await self.app(scope, replay, send)

    def _authorize(self, scope) -> None:
        if self.token is None or scope["path"] in _OPEN_PATHS:
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = given.partition(b" ")
        if not given:
            raise Unauthorized("missing bearer token (Authorization: Bearer <key>)")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.token):
            raise Unauthorized("wrong bearer token")

    async def _read_body(self, scope, receive) -> bytes | None:
        limit = self.settings.max_body_bytes
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise BodyTooLarge("body", f"Content-Length {int(length)} exceeds the limit of {limit} bytes")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge("body", f"more than the limit of {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


async def _send_json(send, status: int, body: dict, headers: dict[str, str]) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


def _body_doc(model: str, endpoint: str) -> dict:
    """OpenAPI request bodies for a route that reads its body itself (two formats, so no pydantic parameter)."""
    binary = ("4-byte little-endian header length, JSON header with the arrays' shapes, raw uint8 RGB arrays; "
              f"see jrm_engine/serve/payload.py ({endpoint})")
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}},
        payload.BINARY: {"schema": {"type": "string", "format": "binary", "description": binary}}}}}


def _document_bodies(app: FastAPI) -> None:
    """Add the request models `_body_doc` refers to under the OpenAPI document's components."""
    default = app.openapi

    def openapi():
        if app.openapi_schema is None:
            schema = default()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (payload.ScoreRequest, payload.GroupRequest):
                doc = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(doc.pop("$defs", {}))
                components[model.__name__] = doc
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
