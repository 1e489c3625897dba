"""What keeps other web pages, other machines and malformed requests from doing anything
through the studio (docs/web.md, Security).

Any page the user visits can make the browser send requests to 127.0.0.1: it cannot read the
answers, but a "simple" request (GET, HEAD, or a POST of text/plain, form data or a
url-encoded form, with no header of its own) still arrives and would start work or change
files. Anything else needs the browser to ask first (a CORS preflight, OPTIONS), which this
server never approves. So:

- JSON routes take only Content-Type: application/json (`json_body`) and uploads only with the
  header X-Animegen-Request (`upload_body`): a page elsewhere can send neither unasked.
- The `Gate` refuses every request the browser says comes from elsewhere (an Origin other than
  the server's own, Sec-Fetch-Site other than same-origin or none), except a GET of the page
  itself, which a link on another site may open.
- Every response, refusals and errors included, carries the security headers, and nothing
  unexpected reaches the client or the console as more than one line.
"""

from __future__ import annotations

import hmac
import json
import re
import sys

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from animegen.errors import UserError

MAX_JSON = 64 * 1024
MAX_DEPTH = 8  # JSON nesting; the studio's requests nest 3 deep
UPLOAD_HEADER = "X-Animegen-Request"
COOKIE = "animegen_token"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
       "form-action 'none'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = [(name.encode(), value.encode()) for name, value in {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    "cross-origin-resource-policy": "same-origin",  # no <img>/<script> elsewhere may load an answer
    "cross-origin-opener-policy": "same-origin",
    "x-frame-options": "DENY",  # frame-ancestors for browsers that predate it
}.items()]
SAME_ORIGIN = ("same-origin", "none")  # Sec-Fetch-Site of the page's own requests, and of a typed URL
DIGITS = re.compile(r"[0-9]{1,12}")  # ASCII only: str.isdigit() takes '²', which int() refuses


class Gate:
    """ASGI middleware: the Host check, the token check and the cross-site check, then the
    security headers on whatever answers (the app, a refusal, or the 500 of a failure)."""

    def __init__(self, app, token: str | None, hosts: tuple[str, ...]):
        self.app, self.token, self.hosts = app, token, hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def with_headers(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        try:
            refused = self.refusal(Request(scope))
            await (error(*refused) if refused else self.app)(scope, receive, with_headers)
        except Exception as e:  # noqa: BLE001 - the last boundary: one line, and never uvicorn's traceback
            print(f"animegen serve: internal error on {scope.get('path')!r}: {type(e).__name__}: {e}", file=sys.stderr)
            if not started:
                await error(500, "internal error")(scope, receive, with_headers)

    def refusal(self, request: Request) -> tuple[int, str] | None:
        host = (request.headers.get("host") or "").rsplit(":", 1)[0].strip("[]")
        if self.hosts and host not in self.hosts:  # DNS rebinding: another site's name for this address
            return 403, f"host {host!r} is not served here."
        if self.token and not self._authorized(request):
            return 401, "a valid token is required (start the page from the URL `serve` printed)."
        if request.method in ("GET", "HEAD") and request.url.path == "/":
            return None
        if from_elsewhere(request):
            return 403, "requests from other web pages are refused (open the studio's own page)."
        return None

    def _authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        given = [header.removeprefix("Bearer "), request.query_params.get("token", ""), request.cookies.get(COOKIE, "")]
        return any(g and hmac.compare_digest(g.encode(), self.token.encode()) for g in given)


def from_elsewhere(request: Request) -> bool:
    """Whether the browser says a page of another origin sent `request` (other programs send neither
    header). Another port of 127.0.0.1 is another origin though the same site, so only
    same-origin passes."""
    origin = request.headers.get("origin")
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    return (origin is not None and origin.lower() != own.lower()
            or request.headers.get("sec-fetch-site", "none") not in SAME_ORIGIN)


async def json_body(request: Request) -> dict:
    """The request's JSON object. Only Content-Type application/json (parameters such as charset
    aside) is read: a page elsewhere cannot send that type without a preflight."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise HTTPException(415, "send the body as JSON, with Content-Type: application/json.")
    value = parse_json(await read_limited(request, MAX_JSON))
    if not isinstance(value, dict):
        raise UserError("the request body must be a JSON object.")
    return value


async def upload_body(request: Request, limit: int) -> bytes:
    """An upload's bytes, read only when the request carries UPLOAD_HEADER: a page elsewhere
    cannot add a header of its own without a preflight (the page's upload() does)."""
    if UPLOAD_HEADER.lower() not in request.headers:
        raise HTTPException(403, f"an upload needs the header {UPLOAD_HEADER}: 1 (sent by the studio's page).")
    return await read_limited(request, limit)


def parse_json(body: bytes):
    """`body` as JSON, or a UserError: not UTF-8, not JSON, nested deeper than MAX_DEPTH (30,000
    brackets make json.loads itself overflow), or with a lone surrogate ("\\ud800": valid JSON,
    but no answer that echoes it could be written as UTF-8)."""
    try:
        value = json.loads(body.decode("utf-8"))
    except RecursionError:
        raise UserError(f"the request body is nested more than {MAX_DEPTH} deep.") from None
    except ValueError:  # UnicodeDecodeError included
        raise UserError("the request body is not JSON.") from None
    pending = [(value, 0)]  # a loop, not recursion: the walk itself must not overflow
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str) and not item.isascii():
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise UserError("the request body holds a lone surrogate (an unpaired \\ud800-\\udfff).") from None
        elif isinstance(item, (list, dict)):
            if depth == MAX_DEPTH:
                raise UserError(f"the request body is nested more than {MAX_DEPTH} deep.")
            children = [*item, *item.values()] if isinstance(item, dict) else item
            pending += [(child, depth + 1) for child in children]
    return value


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, refused with a 413 as soon as it passes `limit` bytes (whatever Content-Length says)."""
    too_large = HTTPException(413, f"the request is larger than {_size(limit)}.")
    declared = request.headers.get("content-length")
    if declared is not None and (not DIGITS.fullmatch(declared) or int(declared) > limit):
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _size(limit: int) -> str:
    return f"{limit // 2**20} MB" if limit >= 2**20 else f"{limit // 1024} KB"


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)
