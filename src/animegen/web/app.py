"""The HTTP side of `animegen serve`: a Starlette app over a `Studio`.

Starlette rather than FastAPI: the app is a dozen routes whose inputs the Studio validates
itself (with the same limits as the CLI), so FastAPI's pydantic layer would add a
dependency and a second set of rules. uvicorn serves it.

Security (security.py): by default only loopback; the Host header must name the bound address
(so a page on another site cannot reach the server by DNS rebinding); with a token (required
for any other bind) every request must carry it, as a header, a query parameter or the cookie
the page receives; requests from other web pages are refused. The page and its two files are
held in memory: no request path reaches the filesystem. Errors are JSON {"error": one line}
with a 4xx code; never a stack trace.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import re
import secrets
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from animegen.errors import UserError
from animegen.web.security import COOKIE, DIGITS, Gate, error, json_body, upload_body
from animegen.web.studio import MAX_UPLOAD, Studio

QUEUE = 32  # requests waiting for the renderer; more get a 503
JOBS_WAITING, MAX_JOBS = 2, 64  # projections waiting or running; finished ones kept for polling
JOB_ID = re.compile(r"^[0-9a-f]{16}$")
VIEW = re.compile(r"^[a-z0-9-]{1,32}$")
STATIC = {"app.js": "text/javascript", "style.css": "text/css"}


class Renderer:
    """One thread renders, so the event loop stays free; at most QUEUE requests wait, and for
    each view only the newest request is rendered (older ones answer {"stale": true}), so
    dragging a slider never builds a backlog."""

    def __init__(self, limit: int = QUEUE):
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="animegen-render")
        self.limit, self.waiting = limit, 0
        self.latest: dict[str, int] = {}
        self.counter = itertools.count()
        self.lock = threading.Lock()

    async def run(self, view: str | None, work, *args):
        with self.lock:
            if self.waiting >= self.limit:
                raise HTTPException(503, "the server is busy; try again.")
            self.waiting += 1
            ticket = next(self.counter)
            if view:
                if len(self.latest) > 1000:
                    self.latest.clear()
                self.latest[view] = ticket

        def job():
            try:
                if view and self.latest.get(view) != ticket:
                    return {"stale": True}
                return work(*args)
            finally:
                with self.lock:
                    self.waiting -= 1

        return await asyncio.get_running_loop().run_in_executor(self.executor, job)


class Jobs:
    """Projections run one at a time on their own thread (so they never hold up the images);
    at most JOBS_WAITING wait. A job is known by a random id and polled for its progress."""

    def __init__(self):
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="animegen-project")
        self.jobs: dict[str, dict] = {}
        self.lock = threading.Lock()

    def start(self, work, *args) -> str:
        with self.lock:
            if sum(not j["done"] for j in self.jobs.values()) >= JOBS_WAITING:
                raise HTTPException(503, "projections are busy; try again when one has finished.")
            for old in [k for k, j in self.jobs.items() if j["done"]][: max(0, len(self.jobs) - MAX_JOBS)]:
                del self.jobs[old]
            key = secrets.token_hex(8)
            job = self.jobs[key] = {"done": False, "progress": 0.0}

        def run():
            try:
                job["result"] = work(*args, progress=lambda fraction: job.update(progress=round(fraction, 3)))
            except UserError as e:
                job["error"] = str(e)
            except Exception as e:  # noqa: BLE001 - reported as one line, like every request
                print(f"animegen serve: internal error in a projection: {type(e).__name__}: {e}", file=sys.stderr)
                job["error"] = "internal error"
            job["done"] = True

        self.executor.submit(run)
        return key

    def status(self, key: str) -> dict:
        job = self.jobs.get(key) if isinstance(key, str) and JOB_ID.match(key) else None
        if job is None:
            raise HTTPException(404, "not found")
        return {k: v for k, v in job.items() if k != "result"} | (
            {"result": encoded(job["result"])} if "result" in job else {})


def encoded(result: dict) -> dict:
    """`result` with its bytes values as base64 text, for JSON."""
    return {k: base64.b64encode(v).decode() if isinstance(v, bytes) else v for k, v in result.items()}


class BackgroundServer:
    """The app on uvicorn in a thread of this process, for notebooks, tests and benchmarks:
    `with BackgroundServer(app) as url: ...` (http://127.0.0.1:PORT, a free port)."""

    def __init__(self, app, port: int = 0):
        self.port = port or _free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"the studio did not start on port {self.port}")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create_app(studio: Studio, token: str | None = None, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> Starlette:
    renderer, jobs = Renderer(), Jobs()
    page = {name: resources.files("animegen.web").joinpath("static", name).read_bytes() for name in
            ("index.html", *STATIC)}

    async def index(request: Request) -> Response:
        response = Response(page["index.html"], media_type="text/html")
        if token:
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return response

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            raise HTTPException(404, "not found")
        return Response(page[name], media_type=STATIC[name])

    async def runs(request: Request) -> Response:
        return JSONResponse(studio.describe())

    async def generate(request: Request) -> Response:
        body = await json_body(request)
        view = body.pop("view", None)
        if view is not None and not (isinstance(view, str) and VIEW.match(view)):
            raise UserError("view must be 1-32 characters a-z, 0-9 or '-'.")
        result = await renderer.run(view, studio.generate, body)
        if "images" in result:
            result["images"] = [encoded(image) for image in result["images"]]
        return JSONResponse(result)

    async def interpolate(request: Request) -> Response:
        result = await renderer.run("interpolate", studio.interpolate, await json_body(request))
        return JSONResponse(encoded(result))

    async def project(request: Request) -> Response:
        index = request.query_params.get("run", "")
        if not DIGITS.fullmatch(index):
            raise UserError("give the run as ?run=N.")
        studio.run(int(index))  # refused before the upload is read
        data = await upload_body(request, MAX_UPLOAD)
        return JSONResponse({"job": jobs.start(studio.project, int(index), data)})

    async def job(request: Request) -> Response:
        return JSONResponse(jobs.status(request.path_params["key"]))

    async def fit(request: Request) -> Response:
        return JSONResponse(await renderer.run(None, studio.fit, await json_body(request)))

    async def directions_file(request: Request) -> Response:
        run = studio.run(request.path_params["index"])
        if not run.directions:
            raise HTTPException(404, "not found")
        return Response(run.work.inside(run.directions_file).read_bytes(), media_type="application/octet-stream",
                        headers={"content-disposition": f'attachment; filename="{run.index}-directions.safetensors"'})

    routes = [Route("/", guarded(index)), Route("/static/{name}", guarded(static)), Route("/api/runs", guarded(runs)),
              Route("/api/generate", guarded(generate), methods=["POST"]),
              Route("/api/interpolate", guarded(interpolate), methods=["POST"]),
              Route("/api/directions/fit", guarded(fit), methods=["POST"]),
              Route("/api/project", guarded(project), methods=["POST"]),
              Route("/api/jobs/{key}", guarded(job)),
              Route("/api/runs/{index:int}/directions.safetensors", guarded(directions_file))]
    handlers = {HTTPException: http_error}
    middleware = [Middleware(Gate, token=token, hosts=hosts)]
    return Starlette(routes=routes, exception_handlers=handlers, middleware=middleware)


def guarded(endpoint):
    """`endpoint` answering a UserError with a 400 and anything unexpected with a 500, one
    line each (the server's console gets one line too, not a traceback)."""

    async def answer(request: Request) -> Response:
        try:
            return await endpoint(request)
        except UserError as e:
            return error(400, str(e))
        except HTTPException as e:
            return error(e.status_code, e.detail)
        except Exception as e:  # noqa: BLE001 - the boundary: nothing unexpected reaches the client
            print(f"animegen serve: internal error on {request.url.path}: {type(e).__name__}: {e}", file=sys.stderr)
            return error(500, "internal error")

    return answer


async def http_error(request: Request, exc: HTTPException) -> Response:
    return error(exc.status_code, "not found" if exc.status_code == 404 else
                 "method not allowed" if exc.status_code == 405 else exc.detail)
