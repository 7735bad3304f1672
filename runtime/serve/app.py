"""The HTTP side of ``gamma-rt serve``: a FastAPI app with OpenAI's chat-completions endpoint and the rest.

    POST /v1/chat/completions   text + input_audio (base64) or audio_url (file://) parts; stream: SSE
    GET  /v1/models             the one model served
    GET  /health                {"status": "ok", ...}
    GET  /metrics               Prometheus text

Everything a client sends is checked before it reaches the model (protocol.py); a refusal is OpenAI's error
JSON with its status: 400 for a bad field, bad base64, audio that does not decode; 404 for an unknown model
or path; 413 for a body or audio past the limits; 429 with Retry-After when the queue is full. The audio's
header is read here (off the event loop), so a bad file is refused before anything is queued, and so is a
request whose grammar llama.cpp refuses (the scheduler's submit builds it, on a worker thread); a streamed
answer's headers are sent with its first token, so an error found while encoding still gets its status.
A client that goes away mid-answer cancels it, and the scheduler frees its sequence.
"""

from __future__ import annotations

import asyncio
import json
import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from gamma_rt import __version__
from gamma_rt.errors import GammaError

from .request_audio import open_request_audio
from .protocol import ChatRequest, RequestError, chunk, completion, completion_id, error_body, parse_chat_request, usage
from ..engine.events import Done, Failed, Piece, QueueFull
from .chat_job import ChatJob
from .service import Service

log = logging.getLogger("gamma_rt.serve")
ENDPOINTS = ("/v1/chat/completions", "/v1/models", "/health", "/metrics")


def create_app(service: Service) -> FastAPI:
    app = FastAPI(title="gamma-rt serve", version=__version__, docs_url=None, redoc_url=None)
    app.add_middleware(_CountRequests, metrics=service.metrics)

    @app.exception_handler(RequestError)
    async def refused(request: Request, e: RequestError) -> JSONResponse:
        return JSONResponse(error_body(e.status, e.message, e.param, e.code), e.status, headers=e.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        return JSONResponse(error_body(e.status_code, f"{request.method} {request.url.path}: {e.detail}"),
                            e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def bug(request: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return JSONResponse(error_body(500, f"internal error ({type(e).__name__}); see the server log"), 500)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": service.model, "in_flight": service.scheduler.in_flight}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": service.model, "object": "model", "created": 0,
                                            "owned_by": "gamma-rt"}]}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.exposition(), media_type=service.metrics.CONTENT_TYPE)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = await _read_body(request, service.options.max_body_bytes)
        chat, audio = await run_in_threadpool(_read_request, body, service)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def emit(event) -> None:  # on the scheduler thread
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the event loop has closed: the server is going down
                pass

        job = ChatJob(chat, audio, emit, service.limits)
        try:  # submit tokenizes the prompt and builds the sampler: a grammar may take a while, so off the loop
            await run_in_threadpool(service.scheduler.submit, job)
        except asyncio.CancelledError:
            job.cancel()  # submitted or not, the scheduler (or the failed submit) frees it
            raise
        except GammaError as e:  # llama.cpp refused the grammar, or the job cannot fit: nothing was taken
            raise RequestError(400, str(e)) from None
        except QueueFull:
            retry = str(service.scheduler.retry_after_s)
            raise RequestError(429, f"the server is busy: {service.scheduler.lanes} requests decoding and "
                               f"{service.options.max_queue} waiting (--max-queue); retry after {retry} s",
                               code="queue_full", headers={"Retry-After": retry}) from None
        return _Answer(job, events, chat, service.model)

    return app


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (by its Content-Length or as it arrives)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body of {int(declared)} bytes is larger than this server's limit of "
                           f"{limit} bytes (--max-body-mb)")
    parts, size = [], 0
    try:
        async for part in request.stream():
            size += len(part)
            if size > limit:
                raise RequestError(413, f"request body larger than this server's limit of {limit} bytes "
                                   "(--max-body-mb)")
            parts.append(part)
    except ClientDisconnect:  # gone, or cut off by --body-timeout (connections.py): nobody reads the answer
        raise RequestError(408, "the client went away before its request body was in") from None
    return b"".join(parts)


def _read_request(body: bytes, service: Service):
    """(ChatRequest, opened audio) of a body: JSON, the fields, the audio's header. Runs off the event loop."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise RequestError(400, f"request body is not valid JSON ({str(e).splitlines()[0][:200]})") from None
    chat = parse_chat_request(payload, service.model, service.limits)
    try:
        audio = open_request_audio(chat.audio, service.sample_rate, service.limits)
    except GammaError as e:
        raise RequestError(400, str(e), chat.audio.where) from None
    return chat, audio


class _Answer(Response):
    """The answer to one request, sent as its events arrive: one JSON object, or SSE chunks when streamed.
    Watches the connection all along: a client that goes away cancels the job."""

    def __init__(self, job: ChatJob, events: asyncio.Queue, chat: ChatRequest, model: str):
        self.job, self.events, self.chat, self.model = job, events, chat, model
        self.id = completion_id()
        self.background = None
        self.status_code = 200
        self.finished = False

    async def __call__(self, scope, receive, send) -> None:
        gone = asyncio.ensure_future(_disconnect(receive))
        try:
            if self.chat.stream:
                await self._stream(send, gone)
            else:
                await self._whole(send, gone)
        except OSError:  # the connection broke while sending
            pass
        finally:
            gone.cancel()
            if not self.finished:
                self.job.cancel()

    async def _next(self, gone: asyncio.Future):
        """The job's next event, or None when the client has gone."""
        if not self.events.empty():
            return self.events.get_nowait()
        get = asyncio.ensure_future(self.events.get())
        await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
        if get.done():
            return get.result()
        get.cancel()
        return None

    async def _whole(self, send, gone) -> None:
        text, logprobs = [], ([] if self.chat.logprobs else None)
        while True:
            event = await self._next(gone)
            if event is None:
                return
            if isinstance(event, Piece):
                text.append(event.text)
                if event.logprob is not None:
                    logprobs.append(event.logprob)
                continue
            self.finished = True
            if isinstance(event, Failed):
                await _send_json(send, event.status, error_body(event.status, event.message))
            else:
                await _send_json(send, 200, completion(self.id, self.model, "".join(text), event.finish_reason,
                                                       event.prompt_tokens, event.completion_tokens, logprobs))
            return

    async def _stream(self, send, gone) -> None:
        event = await self._next(gone)
        if event is None:
            return
        if isinstance(event, Failed):  # nothing sent yet: the error keeps its status
            self.finished = True
            await _send_json(send, event.status, error_body(event.status, event.message))
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8"),
                                (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]})
        await self._sse(send, chunk(self.id, self.model, {"role": "assistant", "content": ""}))
        while event is not None:
            if isinstance(event, Piece):
                if event.logprob is not None:  # every token, its text held back or not
                    await self._sse(send, chunk(self.id, self.model, {"content": event.text},
                                                logprobs=[event.logprob]))
                elif event.text:
                    await self._sse(send, chunk(self.id, self.model, {"content": event.text}))
            elif isinstance(event, Failed):
                self.finished = True
                await self._sse(send, error_body(event.status, event.message))
                break
            else:
                self.finished = True
                await self._done(send, event)
                break
            event = await self._next(gone)
        if self.finished:
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

    async def _done(self, send, event: Done) -> None:
        await self._sse(send, chunk(self.id, self.model, {}, event.finish_reason))
        if self.chat.include_usage:
            await self._sse(send, chunk(self.id, self.model, {}, usage_=usage(event.prompt_tokens,
                                                                               event.completion_tokens)))

    @staticmethod
    async def _sse(send, obj: dict) -> None:
        data = b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"
        await send({"type": "http.response.body", "body": data, "more_body": True})


async def _disconnect(receive) -> None:
    """Returns when the client disconnects (the body has been read, so nothing else arrives)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _send_json(send, status: int, obj: dict) -> None:
    body = json.dumps(obj, ensure_ascii=False).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class _CountRequests:
    """ASGI middleware: counts every HTTP response by endpoint and status code (streamed ones included)."""

    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [499]  # nothing sent and no error: the client went away first (nginx's code for it)

        async def counted_send(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counted_send)
        except Exception:
            status[0] = 500
            raise
        finally:
            path = scope.get("path", "")
            self.metrics.answered_http(path if path in ENDPOINTS else "other", status[0])
