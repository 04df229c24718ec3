"""The service's errors: one JSON shape, one status per kind of failure, never a traceback.

Every error answer is ``{"error": {"status": <int>, "message": <str>}}`` with the same HTTP
status (the WebSocket sends the same object with ``"type": "error"``). The kinds:

=====  ==============================================================================
400    the request lacks what it must hold (no ``video`` field, no ``uri``, bad JSON)
401    the token is missing or wrong (``--token-file``)
403    ``uri`` is not under an allowed prefix (``--allow-uri-prefix``; none by default)
404    no such route
405    the route exists but not for this method
413    the upload (or the object behind ``uri``) is over ``--max-bytes``, or the video's
       frame size or duration is over the model's caps (``max_pixels``, ``max_duration_s``)
415    the request is neither multipart, JSON nor raw video bytes; or the bytes start like
       no video container (:mod:`raydf.serve.media`)
422    the bytes start like a video container but are not a decodable video (empty,
       truncated, garbled), or faces/features failed on it
503    no model to score with (none trained yet, or the path does not exist yet), or the
       model's extractors cannot be rebuilt here
500    anything else: a bug; the message says so, the log has the traceback
=====  ==============================================================================
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["ServiceError", "error_body", "status_of"]



class ServiceError(Exception):
    """A failure with its HTTP status and a message safe to show the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = int(status)
        self.message = message

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message)


def error_body(status: int, message: str) -> dict[str, Any]:
    """The JSON error object."""
    return {"error": {"status": int(status), "message": message}}


def status_of(exc: BaseException) -> ServiceError:
    """The :class:`ServiceError` a library exception stands for (500 for what no client can cause)."""
    from raydf.bundle import BundleError, NoModelError
    from raydf.extract import ExtractError
    from raydf.video import VideoDecodeError, VideoTooLarge

    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, NoModelError):
        return ServiceError(503, f"no model to score with: {exc}")
    if isinstance(exc, BundleError):  # ExtractorMismatch included: the model cannot be applied here
        return ServiceError(503, f"the model cannot be used: {exc}")
    if isinstance(exc, VideoTooLarge):
        return ServiceError(413, str(exc))
    if isinstance(exc, VideoDecodeError):
        return ServiceError(422, str(exc))
    if isinstance(exc, ExtractError):
        return ServiceError(422, f"the video decoded but could not be scored: {exc}")
    log.error("unexpected error in the detection service", exc_info=exc)
    return ServiceError(500, f"internal error ({type(exc).__name__}); see the service log")
