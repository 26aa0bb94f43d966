"""The OpenAI-compatible routing server: a FastAPI application around a :class:`~agents.serve.service.RoutingService`.

Endpoints:

- ``POST /v1/chat/completions`` — route a problem (see :mod:`agents.serve.service` for the fields);
  ``stream: true`` answers with server-sent events, one ``chat.completion.chunk`` per written step,
  then ``data: [DONE]``;
- ``GET /v1/models`` — one entry per served router; ``GET /health``; ``GET /metrics`` (Prometheus).

Errors are OpenAI-style JSON: 400 for a bad request, 502 (504 when it timed out) naming the
upstream that failed. An error after a stream has started is sent as a last ``data: {"error": ...}``
event. A client that goes away (a closed connection) cancels its request at once: its backend
calls are cancelled and their upstream slots freed. On shutdown uvicorn stops accepting
connections and finishes the requests in flight (up to ``graceful_shutdown_s``), then the backends'
connections are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from typing import Any, AsyncGenerator, AsyncIterator, Awaitable, TypeVar

import anyio
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from agents.serve.loop import UpstreamError
from agents.serve.service import RequestError, RoutingService, error_body

Result = TypeVar("Result")


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


async def _disconnected(request: Request) -> None:
    """Return when the client disconnects (the request body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(request: Request, work: Awaitable[Result]) -> Result:
    """Await ``work``; cancel it and raise :class:`ClientGone` if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, ClientGone):
        await task
    raise ClientGone


def _upstream_error(error: UpstreamError) -> JSONResponse:
    return JSONResponse(error_body(str(error), "upstream_error", code=f"upstream_{error.upstream}"), status_code=error.status)


async def _events(request: Request, chunks: AsyncGenerator[dict[str, Any], None]) -> AsyncIterator[str]:
    """Server-sent events of ``chunks``, stopped (and the routing cancelled) when the client disconnects."""
    watcher = asyncio.ensure_future(_disconnected(request))
    following: asyncio.Future[dict[str, Any]] | None = None
    try:
        while True:
            following = asyncio.ensure_future(chunks.__anext__())
            await asyncio.wait({following, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not following.done():
                return  # the client went away: the finally clause cancels the routing
            try:
                chunk = following.result()
            except StopAsyncIteration:
                break
            except UpstreamError as error:
                yield f"data: {json.dumps(error_body(str(error), 'upstream_error', code=f'upstream_{error.upstream}'))}\n\n"
                return
            yield f"data: {json.dumps(chunk)}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        watcher.cancel()
        # Shielded: Starlette cancels this stream when it sees the disconnect first, and the
        # routing must still be cancelled and closed (its upstream slots released).
        with anyio.CancelScope(shield=True):
            if following is not None and not following.done():
                following.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, UpstreamError):
                    await following
            await chunks.aclose()


def create_app(service: RoutingService) -> FastAPI:
    """The FastAPI application serving ``service`` (its backends are closed on shutdown)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await service.aclose()

    app = FastAPI(title="trim-serve", description="OpenAI-compatible step-level routing", lifespan=lifespan)
    app.state.service = service

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError as error:
            return JSONResponse(error_body(f"the request body is not valid JSON ({error})", "invalid_request_error"), 400)
        try:
            if isinstance(body, dict) and body.get("stream") is True:
                chunks = await _unless_disconnected(request, service.stream(body))
                return StreamingResponse(_events(request, chunks), media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache"})
            return JSONResponse(await _unless_disconnected(request, service.complete(body)))
        except RequestError as error:
            return JSONResponse(error_body(str(error), "invalid_request_error", error.param), status_code=400)
        except UpstreamError as error:
            return _upstream_error(error)
        except ClientGone:
            return Response(status_code=499)  # nobody reads it; the status marks the log line

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return service.models()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return service.health()

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


class BackgroundServer:
    """Run an application under uvicorn in a background thread, on a free loopback port, while a ``with`` block lasts.

    Leaving the block shuts the server down as a signal would: in-flight requests are finished
    first (up to ``graceful_shutdown_s``).

    :param app: the ASGI application.
    :param host: the address to bind (loopback).
    :param port: the port (0: a free one).
    :param graceful_shutdown_s: longest wait for in-flight requests on shutdown (``None``: no limit).
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, graceful_shutdown_s: int | None = 30) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((host, port))
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=graceful_shutdown_s, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, name="trim-serve", daemon=True)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``."""
        host, port = self.socket.getsockname()[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + 60.0
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("trim-serve did not start (see the log above)")
            time.sleep(0.01)
        return self

    def shutdown(self) -> None:
        """Stop accepting connections, finish in-flight requests, then stop (returns when stopped)."""
        self.server.should_exit = True
        self.thread.join()

    def __exit__(self, *exc_info: object) -> None:
        if self.thread.is_alive():
            self.shutdown()
        self.socket.close()
