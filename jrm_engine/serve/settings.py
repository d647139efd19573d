"""ServeSettings: the server's limits and options, one dataclass shared by the HTTP app, the CLI and Ray Serve."""
from __future__ import annotations

import os
from dataclasses import dataclass

API_KEY_ENV = "JRM_API_KEY"


@dataclass(frozen=True)
class ServeSettings:
    """Limits are checked before the expensive step they guard: the body size before it is read in full, an
    image's pixel count from its header before it is decoded, the candidate count before any image is decoded."""

    max_body_bytes: int = 64 << 20       # one request body; 413 past it
    max_pixels: int = 4096 * 4096        # one image (width x height), from its header; 422 past it
    max_candidates: int = 576            # items of /v1/score or candidates of /v1/score_group; 422 past it
    timeout_s: float = 120.0             # one request, from decoded to answered; 504 past it
    retry_after_s: int = 1               # the Retry-After a 503 (runtime queue full) carries
    api_key: str | None = None           # bearer token; None: no auth
    decode_threads: int = 4              # image decoding and preprocessing, off the event loop

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_pixels", "max_candidates", "decode_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.retry_after_s < 0:
            raise ValueError(f"retry_after_s must be >= 0, got {self.retry_after_s}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key is empty; leave it unset to serve without auth")

    @staticmethod
    def api_key_from_env() -> str | None:
        """The token from $JRM_API_KEY (a key on the command line shows up in `ps`; the environment does not)."""
        return os.environ.get(API_KEY_ENV) or None
