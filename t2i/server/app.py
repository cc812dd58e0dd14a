"""The HTTP side: A1111's `/sdapi/v1` routes and the web page on one FastAPI app.

Every error answers in A1111's JSON error shape (`error`, `detail`, `body`, `errors`) with a
message naming the request field; none shows a traceback, and the server keeps serving.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import secrets
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from t2i.errors import InvalidInput, NotFound, T2IError, first_line
from t2i.sampling.hires import LATENT_MODES, PIXEL_UPSCALERS
from t2i.server.controlnet_routes import add_routes as add_controlnet_routes
from t2i.server.jobs import QueueFull, Stopped
from t2i.server.schemas import EditRequest, Img2ImgRequest, PngInfoRequest, TaskRequest, Txt2ImgRequest
from t2i.server.service import Service
from t2i.server.settings import ServerSettings
from t2i.server.translate import api_field

log = logging.getLogger("t2i")
STATIC = resources.files("t2i.server") / "static"
PAGE_FILES = {"app.js": "text/javascript", "controlnet.js": "text/javascript", "style.css": "text/css"}
RETRY_AFTER_S = 5  # a 429's hint: about one small job on a CPU; clients with a backoff of their own keep it


def error_body(status: int, error: str, detail: str, errors: Any = "") -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail, "body": "", "errors": errors or detail}, status_code=status)


def _status(exc: T2IError) -> int:
    return 404 if isinstance(exc, NotFound) else 422 if isinstance(exc, InvalidInput) else 500


class Guard:
    """ASGI middleware run before any route: HTTP Basic auth (constant-time compare) and the body
    size limit, from Content-Length when sent and from the bytes as they arrive otherwise."""

    def __init__(self, app, settings: ServerSettings):
        self.app, self.settings = app, settings
        self.credentials = settings.api_auth.encode() if settings.api_auth else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.credentials is not None and not self._authorised(headers.get(b"authorization", b"")):
            response = error_body(401, "Unauthorized", "this server needs HTTP Basic auth (--api-auth USER:PASS)")
            response.headers["WWW-Authenticate"] = 'Basic realm="t2i"'
            return await response(scope, receive, send)
        limit = self.settings.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await self._too_large(scope, receive, send)
        # the body is read here, whole, before any route sees it: a chunked body has no length to
        # check up front, and an error raised inside FastAPI's body parsing becomes its 400
        parts, seen, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            parts.append(message.get("body", b""))
            seen += len(parts[-1])
            if seen > limit:
                return await self._too_large(scope, receive, send)
            more = message.get("more_body", False)
        body, delivered = b"".join(parts), False

        async def replay():
            nonlocal delivered
            if delivered:  # the app waits for a disconnect after the body: pass the real stream on
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def _authorised(self, header: bytes) -> bool:
        scheme, _, encoded = header.partition(b" ")
        try:
            given = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return False
        return scheme.lower() == b"basic" and secrets.compare_digest(given, self.credentials or b"")

    async def _too_large(self, scope, receive, send):
        response = error_body(413, "PayloadTooLarge", f"request body: over this server's limit of "
                              f"{self.settings.max_body_mb:g} MB (--max-body-mb)")
        await response(scope, receive, send)


def create_app(settings: ServerSettings, service: Service | None = None) -> Guard:
    service = service or Service(settings)
    # no /docs: FastAPI's Swagger page loads its scripts from a CDN, which an offline server cannot
    # reach; the schema itself stays at /openapi.json
    app = FastAPI(title="t2i", version="1", docs_url=None, redoc_url=None)
    app.state.service = service

    @app.exception_handler(T2IError)
    async def library_error(_request, exc: T2IError):
        details = exc.to_dict()  # the request's own names, as the message uses them
        details["field"] = api_field(exc.field) if exc.field else None
        return error_body(_status(exc), type(exc).__name__, exc.render(api_field), details)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request, exc: RequestValidationError):
        problems = [f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in exc.errors()]
        return error_body(422, "RequestValidationError", "; ".join(problems), problems)

    @app.exception_handler(HTTPException)
    async def http_error(_request, exc: HTTPException):
        return error_body(exc.status_code, "HTTPException", str(exc.detail))

    @app.exception_handler(QueueFull)
    async def queue_full(_request, exc: QueueFull):
        response = error_body(429, "QueueFull", f"the server is busy: {exc}; try again later")
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
        return response

    @app.exception_handler(Exception)
    async def unexpected(_request, exc: Exception):
        log.exception("request failed")
        return error_body(500, type(exc).__name__, first_line(exc))

    api = "/sdapi/v1"

    async def run(request: Request, body, kind: str):
        try:
            return await service.generate(body, kind, request.is_disconnected)
        except Stopped:  # the client went away: nobody reads this answer
            return error_body(499, "ClientClosedRequest", "the client disconnected")

    @app.post(f"{api}/txt2img")
    async def txt2img(request: Request, body: Txt2ImgRequest):
        return await run(request, body, "txt2img")

    @app.post(f"{api}/img2img")
    async def img2img(request: Request, body: Img2ImgRequest):
        return await run(request, body, "img2img")

    @app.post("/t2i/v1/edit")
    async def edit(request: Request, body: EditRequest):
        """LEDITS++ on an image (t2i's own, beside A1111's routes): A1111's img2img answer."""
        return await run(request, body, "edit")

    @app.get(f"{api}/options")
    async def get_options():
        return service.get_options()

    @app.post(f"{api}/options")
    async def set_options(request: Request):
        options = await _json_object(request, "options")
        await service.set_options(options)
        return None

    @app.get(f"{api}/progress")
    async def progress(skip_current_image: bool = False):
        return service.queue.progress(skip_current_image)

    @app.post(f"{api}/interrupt")
    async def interrupt(request: Request):
        """A1111's interrupt (no body: whatever runs); with {"id_task": ...}, only that job, running or waiting."""
        task = await _json_object(request, "id_task")
        task_id = task.get("id_task")
        if task_id is not None and not isinstance(task_id, str):
            raise InvalidInput("must be a string", field="id_task", value=task_id)
        service.queue.interrupt(task_id)
        return None

    @app.post("/internal/progress")
    async def task_progress(body: TaskRequest):
        """A1111's page polls its own job here by the `force_task_id` it sent."""
        if not body.id_task:
            raise InvalidInput("names no task", field="id_task", hint="send the force_task_id of your request")
        return service.queue.task_progress(body.id_task)

    @app.get("/internal/queue")
    async def queue():
        return service.queue.jobs()

    @app.post("/internal/token-count")
    async def token_count(request: Request):
        prompt = (await _json_object(request, "prompt")).get("prompt", "")
        if not isinstance(prompt, str) or len(prompt) > 20_000:
            raise InvalidInput("must be a string of at most 20,000 characters", field="prompt")
        return service.token_count(prompt)

    @app.post(f"{api}/skip")
    async def skip():
        service.queue.skip()
        return None

    @app.post(f"{api}/png-info")
    async def png_info(body: PngInfoRequest):
        return service.png_info(body.image)

    listings = {"sd-models": service.sd_models, "samplers": service.samplers, "schedulers": service.schedulers,
                "sd-vae": service.sd_vaes, "loras": service.loras,
                # what hires fix really has: the model-free pixel upscalers and A1111's latent modes
                "upscalers": lambda: [{"name": name, "model_name": None, "model_path": None, "model_url": None,
                                       "scale": 4} for name in PIXEL_UPSCALERS],
                "latent-upscale-modes": lambda: [{"name": name} for name in LATENT_MODES],
                "scripts": lambda: {"txt2img": [], "img2img": ["poor man's outpainting", "outpainting mk2",
                                                                  "img2img alternative test"]},
                "embeddings": service.embeddings, "prompt-styles": lambda: [],
                "face-restorers": lambda: [], "hypernetworks": lambda: []}
    for path, answer in listings.items():
        app.add_api_route(f"{api}/{path}", _listing(answer), methods=["GET"], name=path)
    for path in ("refresh-checkpoints", "refresh-loras", "refresh-vae"):  # listings are read afresh each time
        app.add_api_route(f"{api}/{path}", _listing(lambda: None), methods=["POST"], name=path)

    add_controlnet_routes(app, service)  # A1111's ControlNet extension: /controlnet/*

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/page/{name}")
    async def page_file(name: str):
        if name not in PAGE_FILES:
            raise HTTPException(404, f"no page file {name!r}")
        return Response((STATIC / name).read_text(encoding="utf-8"), media_type=PAGE_FILES[name])

    return Guard(app, settings)


def _listing(answer):
    async def route():
        return answer()

    return route


async def _json_object(request: Request, field: str) -> dict:
    try:
        data = json.loads(await request.body() or b"{}")
    except ValueError as exc:
        raise InvalidInput(f"the body is not valid JSON ({exc})", field=field) from exc
    if not isinstance(data, dict):
        raise InvalidInput("must be a JSON object of option names and values", field=field)
    return data
