"""Dynamic batching for mtft-serve: the requests that arrive within `max_wait` seconds of the first one (up to
`max_batch` of them) are answered by one `model.generate` call, the same left-padded, KV-cached call that
mtft-generate makes, so a greedy answer does not depend on how it was batched.

Why not transformers' continuous batching: it packs every request's tokens into one row, while a MoR1E prior
(the adapter runtime's `before_generate`) is set per row of a batch; here each request keeps its row, and the
adapter sees the batch's prompts before it generates, as in mtft-generate.

Each request keeps its own settings inside the shared call: a logits processor picks each row's token (greedy, or
sampled at its own temperature and top-p from its own seeded generator), and a stopping criterion ends each row
on its own (a stop token, a stop string, its max_tokens, or its client gone). A row that ends sends its answer at
once; its slot is free when the batch ends. Text reaches each request as events on its own asyncio queue.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from mtft.adapters import runtime_of


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class Request:
    """One prompt's generation, filled in by the batcher's thread; `events` carries ("delta", text) and then one
    ("done", finish_reason) to the asyncio side."""

    prompt_ids: list[int]
    sampling: Sampling
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)  # the client left
    tokens: list[int] = field(default_factory=list)
    text: str = ""  # the answer so far, cut at a stop string
    sent: int = 0  # characters of `text` already sent
    finish_reason: str | None = None

    def emit(self, *event: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class Batcher:
    """One thread that owns the model: it forms batches from the queue and generates them, one at a time."""

    def __init__(self, model, tokenizer, stop_ids: set[int], max_batch: int = 8, max_wait: float = 0.01):
        self.model, self.tokenizer, self.stop_ids = model, tokenizer, stop_ids
        self.max_batch, self.max_wait = max_batch, max_wait
        self.pending: queue.Queue[Request | None] = queue.Queue()
        self.batch_sizes: Counter[int] = Counter()  # how many requests each batch held: /metrics shows it
        self.finished: Counter[str] = Counter()  # requests by how they ended (stop, length, cancelled, error)
        self.thread = threading.Thread(target=self._serve, name="mtft-serve-batcher", daemon=True)
        self.thread.start()

    def submit(self, request: Request) -> None:
        self.pending.put(request)

    def close(self) -> None:
        """Finish what is queued, then stop the thread."""
        self.pending.put(None)
        self.thread.join()

    def _serve(self) -> None:
        while (first := self.pending.get()) is not None:
            batch, closing = self._gather(first)
            batch = [r for r in batch if not self._left(r)]
            if batch:
                self.batch_sizes[len(batch)] += 1
                self._generate(batch)
                self.finished.update(r.finish_reason for r in batch)
            if closing:
                return

    def _gather(self, first: Request) -> tuple[list[Request], bool]:
        """The first request and those that arrive within max_wait of it, up to max_batch; whether close came."""
        batch, deadline = [first], time.monotonic() + self.max_wait
        while len(batch) < self.max_batch and (left := deadline - time.monotonic()) > 0:
            try:
                request = self.pending.get(timeout=left)
            except queue.Empty:
                break
            if request is None:
                return batch, True
            batch.append(request)
        return batch, False

    def _left(self, request: Request) -> bool:
        if request.cancelled.is_set():
            request.finish_reason = "cancelled"
            request.emit("done", "cancelled")
            self.finished["cancelled"] += 1
            return True
        return False

    @torch.no_grad()
    def _generate(self, batch: list[Request]) -> None:
        device = next(self.model.parameters()).device
        width = max(len(r.prompt_ids) for r in batch)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in batch], device=device)
        attention_mask = torch.tensor(
            [[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in batch], device=device
        )
        runtime_of(self.model).before_generate({"input_ids": input_ids, "attention_mask": attention_mask})
        rows = RowDecoding(batch, self.tokenizer, self.stop_ids)
        try:
            self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=max(r.sampling.max_tokens for r in batch),
                do_sample=False,  # each row's own choice is made by RowDecoding's processor
                logits_processor=LogitsProcessorList([rows.processor]),
                stopping_criteria=StoppingCriteriaList([rows.criterion]),
                eos_token_id=sorted(self.stop_ids),
                pad_token_id=pad,
                use_cache=True,
            )
        except Exception as err:  # noqa: BLE001 - the requests get the error; the server goes on
            for request in batch:
                if request.finish_reason is None:
                    request.finish_reason = "error"
                    request.emit("error", f"generation failed: {type(err).__name__}: {err}")
            return
        for request in batch:
            if request.finish_reason is None:  # the batch ended at its longest max_tokens
                rows.finish(request, "length")


class RowDecoding:
    """Per row of one generate call: the token choice (`choose`, through a logits processor) and the end (`ends`,
    through a stopping criterion), over the batch's requests."""

    def __init__(self, batch: list[Request], tokenizer, stop_ids: set[int]):
        self.batch, self.tokenizer, self.stop_ids = batch, tokenizer, stop_ids
        self.generators = [seeded(r.sampling.seed) for r in batch]
        self.processor, self.criterion = _Choose(self), _Ends(self)

    def choose(self, scores: torch.Tensor) -> torch.Tensor:
        """Each row's next token: greedy, or sampled at its temperature and top-p; every other logit -inf."""
        chosen = scores.argmax(dim=-1)
        for row, request in enumerate(self.batch):
            s = request.sampling
            if s.temperature > 0 and request.finish_reason is None:
                chosen[row] = sample(scores[row], s.temperature, s.top_p, self.generators[row])
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(len(chosen)), chosen] = 0.0
        return out

    def ends(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Append each live row's newest token to its request, send the new text, and say which rows ended."""
        done = torch.zeros(len(self.batch), dtype=torch.bool, device=input_ids.device)
        for row, request in enumerate(self.batch):
            if request.finish_reason is None:
                self._advance(request, int(input_ids[row, -1]))
            done[row] = request.finish_reason is not None
        return done

    def _advance(self, request: Request, token: int) -> None:
        if request.cancelled.is_set():
            return self.finish(request, "cancelled")
        if token in self.stop_ids:
            return self.finish(request, "stop")
        request.tokens.append(token)
        text = self.tokenizer.decode(request.tokens, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in request.sampling.stop) if i >= 0), default=-1)
        if cut >= 0:
            request.text = text[:cut]
            return self.finish(request, "stop")
        request.text = text
        if len(request.tokens) >= request.sampling.max_tokens:
            return self.finish(request, "length")
        # hold back what may be the start of a stop string, or half a character
        held = max((len(s) - 1 for s in request.sampling.stop), default=0)
        end = len(text) - held
        while end > request.sent and text[end - 1] == "\ufffd":
            end -= 1
        self._send(request, end)

    def finish(self, request: Request, reason: str) -> None:
        request.finish_reason = reason
        self._send(request, len(request.text))
        request.emit("done", reason)

    @staticmethod
    def _send(request: Request, end: int) -> None:
        if end > request.sent:
            request.emit("delta", request.text[request.sent : end])
            request.sent = end


class _Choose(LogitsProcessor):
    def __init__(self, decoding: RowDecoding):
        self.decoding = decoding

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return self.decoding.choose(scores)


class _Ends(StoppingCriteria):
    def __init__(self, decoding: RowDecoding):
        self.decoding = decoding

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.decoding.ends(input_ids)


def seeded(seed: int | None) -> torch.Generator:
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """One token from softmax(logits / temperature), within the smallest set whose probability reaches top_p."""
    probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)
    if top_p < 1.0:
        ordered, order = probs.sort(descending=True)
        keep = ordered.cumsum(-1) - ordered < top_p  # the first token always stays
        probs = torch.zeros_like(probs).scatter(0, order[keep], ordered[keep])
    return int(torch.multinomial(probs, 1, generator=generator))
