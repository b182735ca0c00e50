"""JSON errors: every failure the API returns is `{"error": {"code", "message"}}` with the right status.

Handlers raise `ApiError`; the middleware turns it, aiohttp's own HTTP errors (404, 405, 413 from the body
size limit) and anything unexpected (500, logged with its traceback, never its request body) into that
shape. A client can branch on `code`, a person reads `message`.
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from ledger.errors import StagewiseError

log = logging.getLogger(__name__)


class ApiError(StagewiseError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """Every error answer: a code to branch on and one readable line."""

    model_config = ConfigDict(title="Error")
    error: ErrorDetail


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
}


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as error:
        return error_response(error.status, error.code, error.message)
    except web.HTTPRequestEntityTooLarge:
        limit = getattr(request, "_client_max_size", None)
        return error_response(413, "body_too_large", f"the request body is larger than this node accepts ({limit} bytes)")
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return error_response(error.status, _CODES.get(error.status, "http_error"), error.reason)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal", "internal error; the request changed nothing it could not undo")
