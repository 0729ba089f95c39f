"""mtft-serve on a tiny trained run, through the real `openai` client against a server started on a free local port:
chat, completions, streaming, models, health; greedy answers equal mtft-generate's alone and under 8 concurrent
clients, in batches the server reports; every bad input answered with a 4xx in OpenAI's shape, then a good request
that succeeds; the API key; SIGTERM with a request in flight."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import httpx
import openai
import pytest

from mtft.training.loop import train
from tests.helpers import LAUNCH_VARS, compose_config

pytestmark = pytest.mark.integration

PROMPTS = [f"add {i} {i + 3}" for i in range(8)]
TOKENS = 12
KEY = "test-key-123"


class Served:
    def __init__(self, checkpoint: Path, *extra: str, env: dict[str, str] | None = None):
        command = [sys.executable, "-m", "mtft.cli.serve", f"checkpoint={checkpoint}", "port=0", *extra]
        clean = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS} | (env or {})
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean
        )
        self.lines: list[str] = []
        for line in self.process.stdout:
            self.lines.append(line)
            if found := re.search(r"listening on (http://\S+)", line):
                self.url = found[1]
                break
        else:
            raise AssertionError("".join(self.lines))
        threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True).start()

    def client(self, key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=120)

    def get(self, path: str) -> dict:
        return json.loads(urllib.request.urlopen(f"{self.url}{path}", timeout=30).read())

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serve") / "run"
    train(compose_config(["trainer.max_steps=4", "trainer.eval_steps=4", "trainer.eval_generations=0",
                          f"trainer.output_dir={out}"]))  # fmt: skip
    return out


@pytest.fixture(scope="module")
def server(run):
    served = Served(run / "checkpoint-4", env={"MTFT_API_KEY": KEY})
    yield served
    assert served.stop() == 0


def _chat(client: openai.OpenAI, prompt: str, **extra) -> str:
    reply = client.chat.completions.create(
        model="run", messages=[{"role": "user", "content": prompt}], max_tokens=TOKENS, temperature=0, **extra
    )
    return reply.choices[0].message.content


def test_health_models_chat_completions_and_streams(server):
    client = server.client()
    assert server.get("/health") == {"status": "ok"}
    assert [m.id for m in client.models.list().data] == ["run"]
    reply = client.chat.completions.create(
        model="run", messages=[{"role": "user", "content": PROMPTS[0]}], max_tokens=TOKENS, temperature=0
    )
    assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens <= TOKENS
    assert reply.usage.prompt_tokens > 0
    chunks = list(
        client.chat.completions.create(
            model="run",
            messages=[{"role": "user", "content": PROMPTS[0]}],
            max_tokens=TOKENS,
            temperature=0,
            stream=True,
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == reply.choices[0].message.content
    counted = list(
        client.chat.completions.create(
            model="run", messages=[{"role": "user", "content": PROMPTS[0]}], max_tokens=TOKENS, temperature=0,
            stream=True, stream_options={"include_usage": True},
        )
    )  # fmt: skip
    assert counted[-1].choices == [] and counted[-1].usage.completion_tokens == reply.usage.completion_tokens
    text = client.completions.create(model="run", prompt="add 1 2", max_tokens=5, temperature=0)
    assert text.choices[0].finish_reason in ("stop", "length") and text.usage.completion_tokens <= 5


def test_greedy_answers_equal_mtft_generate_alone_and_under_eight_clients(server, run, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    out = tmp_path / "generated.jsonl"
    command = ["-m", "mtft.cli.generate", f"checkpoint={run / 'checkpoint-4'}", f"prompts={prompts}"]
    subprocess.run(
        [sys.executable, *command, f"out={out}", f"max_new_tokens={TOKENS}"], check=True, capture_output=True
    )
    generated = [json.loads(line)["output"] for line in out.read_text().splitlines()]
    client = server.client()
    before = server.get("/metrics")["batch_sizes"]
    alone = [_chat(client, p) for p in PROMPTS]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda p: _chat(client, p), PROMPTS))
    assert alone == together == generated
    after = server.get("/metrics")["batch_sizes"]
    assert any(int(size) > 1 and after[size] > before.get(size, 0) for size in after), after  # batches formed


BAD = {
    "unknown model": (dict(model="nope"), 404, "model"),
    "temperature out of range": (dict(temperature=3.0), 400, "temperature"),
    "top_p out of range": (dict(top_p=0.0), 400, "top_p"),
    "max_tokens zero": (dict(max_tokens=0), 400, "max_tokens"),
    "over the context": (dict(max_tokens=10**6), 400, "max_tokens"),
    "more than one choice": (dict(n=2), 400, "n"),
    "wrong type": (dict(messages="not a list"), 400, "messages"),
    "unknown role": (dict(messages=[{"role": "robot", "content": "x"}]), 400, "messages.0.role"),
    "an unsupported field": (dict(logprobs=True), 400, "logprobs"),  # refused, not silently ignored
}


@pytest.mark.parametrize("case", BAD)
def test_each_bad_request_gets_a_4xx_in_openais_shape_and_the_next_good_one_succeeds(server, case):
    fields, status, param = BAD[case]
    body = {"model": "run", "messages": [{"role": "user", "content": "add 1 2"}], "max_tokens": 4, **fields}
    got_status, error = _post(server, "/v1/chat/completions", json.dumps(body).encode())
    assert got_status == status and error["param"] == param and error["message"], error
    assert _chat(server.client(), "add 1 2")  # and the server goes on


def test_malformed_json_is_refused(server):
    status, error = _post(server, "/v1/chat/completions", b'{"model": "run", "messages": [')
    assert status == 400 and error["type"] == "invalid_request_error"
    assert _chat(server.client(), "add 1 2")


def test_a_body_over_the_limit_is_refused_by_its_length_or_as_its_chunks_arrive(server):
    """A declared length over the limit (1 MiB) is refused from the headers alone; a chunked body, which declares
    none, once the bytes read pass the limit. Each client sends no more than the server reads, so the answer is
    never lost to a reset. A chunked body within the limit is served."""
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {KEY}\r\n"
            "Content-Type: application/json\r\n")  # fmt: skip
    status, error = _raw(server, f"{head}Content-Length: {2 << 20}\r\n\r\n".encode())
    assert status == 413 and f"{2 << 20} bytes" in error["message"] and "limit" in error["message"]
    over = (1 << 20) + 1
    status, error = _raw(server, f"{head}Transfer-Encoding: chunked\r\n\r\n{over:x}\r\n".encode() + b"x" * over)
    assert status == 413 and "limit" in error["message"]
    body = json.dumps({"model": "run", "messages": [{"role": "user", "content": "add 1 2"}], "max_tokens": 4})
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    parts = iter([body[:10].encode(), body[10:].encode()])  # an iterator: httpx sends it chunked
    chunked = httpx.post(f"{server.url}/v1/chat/completions", content=parts, headers=headers, timeout=60)
    assert chunked.status_code == 200 and chunked.json()["choices"][0]["message"]["content"]


def test_the_api_key_is_required(server):
    with pytest.raises(openai.AuthenticationError) as refused:
        _chat(server.client(key="wrong"), "add 1 2")
    assert refused.value.status_code == 401
    status, _ = _post(server, "/v1/models", None, key=None)
    assert status == 401
    assert server.get("/health") == {"status": "ok"}  # health needs no key
    assert KEY not in "".join(server.lines)  # nor is the key, or a prompt, in the logs
    assert not any(prompt in "".join(server.lines) for prompt in PROMPTS)


def test_a_client_that_leaves_mid_stream_ends_its_generation(server):
    """The stream is closed after its first chunk: the server cancels the generation at its next step (it counts
    it under `finished.cancelled`), long before its 600 tokens, and goes on serving."""
    body = {"model": "run", "messages": [{"role": "user", "content": PROMPTS[2]}], "max_tokens": 600, "temperature": 0}
    headers = {"Authorization": f"Bearer {KEY}"}
    before = server.get("/metrics")["finished"].get("cancelled", 0)
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json={**body, "stream": True}, headers=headers,
                      timeout=60) as response:  # fmt: skip
        assert response.status_code == 200
        next(response.iter_lines())
    deadline = time.monotonic() + 30
    while server.get("/metrics")["finished"].get("cancelled", 0) == before:
        assert time.monotonic() < deadline, server.get("/metrics")
        time.sleep(0.05)
    assert _chat(server.client(), "add 1 2")


def test_sigterm_finishes_the_request_in_flight_then_exits_zero(run):
    served = Served(run / "checkpoint-4")
    client = served.client()
    long = dict(model="run", messages=[{"role": "user", "content": PROMPTS[1]}], max_tokens=400, temperature=0)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(client.chat.completions.create, **long)
        while not served.get("/metrics")["batch_sizes"]:  # the request is being generated
            time.sleep(0.01)
        code = served.stop()
        assert answer.result(timeout=60).choices[0].finish_reason in ("stop", "length")
    assert code == 0


def _post(server: Served, path: str, data: bytes | None, key: str | None = KEY) -> tuple[int, dict]:
    request = urllib.request.Request(f"{server.url}{path}", data=data, method="POST" if data is not None else "GET")
    request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())["error"]
    return 200, {}


def _raw(server: Served, request: bytes) -> tuple[int, dict]:
    """Sends these bytes as they are, then reads the one response."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=60) as connection:
        connection.sendall(request)
        response = http.client.HTTPResponse(connection)
        response.begin()
        return response.status, json.loads(response.read())["error"]
