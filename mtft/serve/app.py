"""The OpenAI-compatible HTTP edge of mtft-serve (FastAPI): chat and text completions, streamed or not, the model
list, health and batching metrics, over one Batcher. Every bad request gets a 4xx in OpenAI's error shape and the
server goes on; no prompt text and no key is logged.

`/v1/chat/completions` builds the prompt with the tokenizer's chat template, as training built it;
`/v1/completions` takes the prompt as raw text, with no template.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from mtft.serve.batcher import Batcher, Sampling
from mtft.serve.batcher import Request as Generation
from mtft.training.inference import chat_prompt_ids


@dataclass(frozen=True)
class ServeSettings:
    model_name: str
    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    context: int = 2048  # the model's context: prompt + max_tokens must fit


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class Common(BaseModel):
    """The fields mtft-serve honours; any other is refused (400), not silently ignored."""

    model_config = ConfigDict(extra="forbid")
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    n: int = Field(1, ge=1, le=1)  # one choice a request
    stream_options: StreamOptions | None = None
    user: str | None = None  # accepted, unused


class ChatRequest(Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(Common):
    prompt: str


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        self.status, self.message, self.param, self.code = status, message, param, code


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = "authentication_error" if status == 401 else "invalid_request_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


class BodyLimit:
    """A request body over `limit` bytes gets a 413, whether it declares its length or comes in chunks (which
    declare none: those are read here, up to the limit, then handed on whole). Memory stays bounded either way."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"").decode("latin-1") or None
        if length is not None:
            if not length.isdigit():  # uvicorn refuses these itself; another ASGI server may not
                refusal = error_response(400, f"Content-Length is not a number: {length[:40]!r}")
            elif int(length) > self.limit:
                refusal = self.too_large(f"{int(length)} bytes")
            else:
                return await self.app(scope, receive, send)
            return await refusal(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before its body ended
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self.too_large(f"over {self.limit} bytes")(scope, receive, send)
            if not message.get("more_body", False):
                break
        whole = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def replay():
            nonlocal whole
            if whole is None:
                return await receive()  # later reads wait for the client to leave, as the app expects
            message, whole = whole, None
            return message

        await self.app(scope, replay, send)

    def too_large(self, size: str) -> JSONResponse:
        return error_response(413, f"request body of {size}; the limit is {self.limit}")


def build_app(batcher: Batcher, tokenizer, settings: ServeSettings) -> FastAPI:
    app = FastAPI(title="mtft-serve", docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())

    @app.exception_handler(ApiError)
    async def api_error(_: Request, err: ApiError) -> JSONResponse:
        return error_response(err.status, err.message, err.param, err.code)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0]
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return error_response(400, f"{param or 'body'}: {first.get('msg')}", param)

    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)  # inside `guard`, which is added after it

    @app.middleware("http")
    async def guard(request: Request, call_next):
        """The API key, before anything reads the request (the body limit comes next: BodyLimit)."""
        if settings.api_key is not None and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            expected = f"Bearer {settings.api_key}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return error_response(401, "missing or wrong API key (Authorization: Bearer ...)")
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> dict[str, Any]:
        """The batch sizes formed so far ({size: batches}), and how the requests ended ({reason: requests})."""
        sizes = {str(k): v for k, v in sorted(batcher.batch_sizes.items())}
        return {"batch_sizes": sizes, "finished": dict(batcher.finished)}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        model = {"id": settings.model_name, "object": "model", "created": created, "owned_by": "mtft"}
        return {"object": "list", "data": [model]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest):
        conversation = [m.model_dump() for m in body.messages]
        prompt = chat_prompt_ids(tokenizer, conversation)
        return await _complete(body, prompt, body.max_completion_tokens or body.max_tokens, chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        prompt = tokenizer(body.prompt, add_special_tokens=False)["input_ids"]
        return await _complete(body, prompt, body.max_tokens or 16, chat=False)

    async def _complete(body: Common, prompt: list[int], max_tokens: int | None, chat: bool):
        if body.model != settings.model_name:
            raise ApiError(404, f"the model '{body.model}' does not exist; this server has '{settings.model_name}'",
                           "model", "model_not_found")  # fmt: skip
        max_tokens = max_tokens or settings.context - len(prompt)
        if len(prompt) + max_tokens > settings.context:
            raise ApiError(
                400,
                f"the prompt's {len(prompt)} tokens plus max_tokens {max_tokens} exceed the model's context of"
                f" {settings.context} tokens",
                "max_tokens",
                "context_length_exceeded",
            )
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        sampling = Sampling(max_tokens, body.temperature, body.top_p, body.seed, stop)
        generation = Generation(prompt, sampling, asyncio.get_running_loop())
        batcher.submit(generation)
        usage = bool(body.stream_options and body.stream_options.include_usage)
        reply = Reply(generation, settings.model_name, chat, len(prompt), usage)
        if body.stream:
            return StreamingResponse(reply.stream(), media_type="text/event-stream")
        try:
            text, finish = await reply.whole()
        except asyncio.CancelledError:
            generation.cancelled.set()
            raise
        return reply.body(text, finish)

    return app


class Reply:
    """One request's answer in OpenAI's shapes, from its generation's events."""

    def __init__(self, generation: Generation, model: str, chat: bool, prompt_tokens: int, stream_usage: bool):
        self.generation, self.model, self.chat, self.prompt_tokens = generation, model, chat, prompt_tokens
        self.stream_usage = stream_usage  # stream_options.include_usage: a last chunk with the usage
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    async def events(self) -> AsyncIterator[tuple]:
        while True:
            event = await self.generation.events.get()
            if event[0] == "error":
                raise ApiError(500, event[1])
            yield event
            if event[0] == "done":
                return

    async def whole(self) -> tuple[str, str]:
        parts, finish = [], "stop"
        async for event in self.events():
            if event[0] == "delta":
                parts.append(event[1])
            else:
                finish = event[1]
        return "".join(parts), finish

    def usage(self) -> dict[str, int]:
        completion = len(self.generation.tokens)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}  # fmt: skip

    def body(self, text: str, finish: str) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text}
            choice["logprobs"] = None
        else:
            choice["text"] = text
            choice["logprobs"] = None
        kind = "chat.completion" if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "choices": [choice], "usage": self.usage()}  # fmt: skip

    def chunk(self, text: str | None, finish: str | None, first: bool = False) -> str:
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if text is not None:
                delta["content"] = text
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
            kind = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
            kind = "text_completion"
        payload = {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": [choice]}
        return f"data: {json.dumps(payload)}\n\n"

    async def stream(self) -> AsyncIterator[str]:
        """Server-sent events in OpenAI's chunk format, then `data: [DONE]`. A client that leaves cancels the
        generation: its row ends at the next step. A failure after the first event is an error event."""
        try:
            if self.chat:
                yield self.chunk(None, None, first=True)
            async for event in self.events():
                if event[0] == "delta":
                    yield self.chunk(event[1], None)
                else:
                    yield self.chunk(None if self.chat else "", event[1])
            if self.stream_usage:
                kind = "chat.completion.chunk" if self.chat else "text_completion"
                usage = {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                         "choices": [], "usage": self.usage()}  # fmt: skip
                yield f"data: {json.dumps(usage)}\n\n"
        except ApiError as err:
            yield f"data: {json.dumps({'error': {'message': err.message, 'type': 'server_error'}})}\n\n"
        finally:
            if self.generation.finish_reason is None:
                self.generation.cancelled.set()
        yield "data: [DONE]\n\n"
