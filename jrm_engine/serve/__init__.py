"""`jrm serve`: an HTTP reward server on the C++ batching runtime (FastAPI + uvicorn), and Ray Serve replicas.

    from jrm_engine.serve import ServeEngine, ServeSettings, create_app
    settings = ServeSettings(api_key="...")
    app = create_app(ServeEngine.load("out/scorer.pt2", backend="runtime", settings=settings), settings)
"""
from .app import ROUTERS, create_app
from .engine import ServeEngine
from .errors import BadInput, Overloaded, RequestError, TimedOut
from .settings import ServeSettings

__all__ = ["ROUTERS", "create_app", "ServeEngine", "ServeSettings", "RequestError", "BadInput", "Overloaded",
           "TimedOut"]
