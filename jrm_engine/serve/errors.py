"""The server's request errors: each carries its HTTP status and the field it is about, so every endpoint (this
package's and the RL-protocol one) answers bad input the same way and never with a traceback."""
from __future__ import annotations


class RequestError(Exception):
    """A request the server refuses or cannot answer; `field` names the part of the request at fault."""

    status = 400

    def __init__(self, field: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.headers = field, message, headers or {}

    def body(self) -> dict:
        return {"error": {"field": self.field, "message": self.message, "status": self.status}}


class BadInput(RequestError):
    """Malformed or out-of-limit input (422)."""

    status = 422


class BodyTooLarge(RequestError):
    status = 413


class Unauthorized(RequestError):
    status = 401

    def __init__(self, message: str):
        super().__init__("authorization", message, {"WWW-Authenticate": "Bearer"})


class Overloaded(RequestError):
    """The runtime's queue is full or it is shutting down (503 with Retry-After): the client should retry."""

    status = 503

    def __init__(self, message: str, retry_after_s: int):
        super().__init__("request", message, {"Retry-After": str(retry_after_s)})


class TimedOut(RequestError):
    status = 504


class EngineFailed(RequestError):
    """The engine failed on the batch this request was in; not the client's fault."""

    status = 500
