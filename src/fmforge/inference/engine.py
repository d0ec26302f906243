"""The generation engine: KV-cache decoding of many sequences at once.

Each sequence is prefilled (its whole prompt in one forward pass, keys and values
stored in the ``KVCache``), then decoded one token per step, each step one forward
pass of one position per sequence that reuses the cached keys/values.

Batching uses **per-sequence positions, not left padding**: a sequence owns one
row of the cache and its tokens sit at positions 0, 1, 2, ... of that row, whatever
the other sequences' lengths. A decode step feeds each sequence's last token at
its own position (rotary angles taken per sequence) with an attention mask that
lets a query at position p see keys 0..p of its own row. Prompts of different
lengths are prefilled together right-padded (the pads' keys land past a row's
length and are overwritten before anything reads them). So a sequence's tokens,
positions and attention are exactly what they would be alone, and a sequence can
join or leave the batch between any two steps (continuous batching) without
moving the others.

The API:

- ``Engine(trained)``: over a ``TrainedModel`` (``load_trained``).
- ``generate(requests) -> list[GenerationResult]``: run requests to completion.
- ``stream(request) -> Iterator[str]``: one request's text, piece by piece.
- ``add(request) -> seq_id``, ``step() -> list[StepOutput]``, ``cancel(seq_id)``:
  what a server's loop calls; ``step`` admits waiting requests (up to
  ``max_batch`` in flight), then advances every sequence in flight by one token.

``generate`` and ``stream`` drive the engine themselves, so they refuse to run
while a caller of ``add``/``step`` has sequences in flight: one loop owns an engine.
``add`` and ``cancel`` are safe to call from other threads than the loop's (a lock
serialises them with ``step``).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch

from fmforge.errors import UserError
from fmforge.inference.decode import forward_cached
from fmforge.inference.detokenize import IncrementalDecoder
from fmforge.inference.kv_cache import KVCache
from fmforge.inference.loading import TrainedModel
from fmforge.inference.packed_weights import PackedWeights
from fmforge.inference.sampling import sample_token

FinishReason = Literal["stop", "length"]
CONTEXT_IDS = 4  # prompt ids given to the incremental decoder as context


class RequestError(UserError, ValueError):
    """A generation request the model cannot serve as given (a sampling setting out of
    range, a prompt too long for the context): the message says what to change."""


@dataclass
class GenerationRequest:
    """One completion to produce. Give ``prompt`` (text) or ``prompt_ids``.

    temperature 0 is greedy; top_k / top_p (None: off) filter before sampling;
    ``seed`` makes sampling reproducible (None: a fresh random seed). Generation
    ends at ``max_new_tokens`` (finish_reason "length"), at a token of
    ``stop_token_ids`` (None: the tokenizer's end-of-text), or when the text
    contains one of ``stop`` (finish_reason "stop"; the stop string and anything
    after it is not returned). A prompt longer than the context minus
    ``max_new_tokens`` is refused, or with ``truncate="left"`` loses its oldest tokens."""

    prompt: str | None = None
    prompt_ids: list[int] | None = None
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] | None = None
    truncate: Literal["error", "left"] = "error"

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.prompt_ids is None):
            raise ValueError("give exactly one of prompt (text) and prompt_ids")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        checks = [
            (self.max_new_tokens >= 0, f"max_new_tokens must be >= 0, got {self.max_new_tokens}"),
            (self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}"),
            (self.top_k is None or self.top_k > 0, f"top_k must be positive, got {self.top_k}"),
            (self.top_p is None or 0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (all(self.stop), "a stop string must not be empty"),
            (self.truncate in ("error", "left"), f"truncate must be 'error' or 'left', got {self.truncate!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise RequestError(message)


@dataclass
class GenerationResult:
    """``token_ids``: the generated ids (a stop token id is not included; for a
    stop string, the ids that spelled it are). ``completion_tokens`` counts every
    token the model generated, a stop token included."""

    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


@dataclass
class StepOutput:
    """What one ``step`` produced for one sequence: ``text`` is the new piece
    (may be "" while a character or a possible stop string is incomplete);
    ``result`` is set on the step that finishes it."""

    seq_id: int
    text: str
    finished: bool
    finish_reason: FinishReason | None = None
    result: GenerationResult | None = None


class _Sequence:
    """A request in flight: its ids, text, and where it sits in the cache."""

    def __init__(self, seq_id: int, request: GenerationRequest, prompt_ids: list[int],
                 start_id: int, stop_ids: set[int], decoder: IncrementalDecoder):
        self.id, self.request, self.prompt_ids = seq_id, request, prompt_ids
        # An empty prompt starts from end-of-text, as a document does.
        self.fed = prompt_ids or [start_id]
        self.stop_ids = stop_ids
        self.decoder = decoder
        self.generator = torch.Generator()
        if request.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(request.seed)
        self.new_ids: list[int] = []
        self.n_generated = 0
        self.text = ""
        self.sent = 0  # characters of text already returned by step()
        self.row = -1
        self.length = 0  # positions stored in the cache
        self.finish_reason: FinishReason | None = None

    @property
    def last_token(self) -> int:
        return self.new_ids[-1]

    def accept(self, token: int) -> None:
        """Take one generated token: stop id, text and stop strings, length."""
        req = self.request
        self.n_generated += 1
        if token in self.stop_ids:
            self.finish_reason = "stop"
        else:
            self.new_ids.append(token)
            self.text += self.decoder.push(token)
            if self.n_generated >= req.max_new_tokens:
                self.finish_reason = "length"
        if self.finish_reason is not None:
            self.text += self.decoder.flush()
        self._cut_at_stop_string()

    def _cut_at_stop_string(self) -> None:
        stops = self.request.stop
        if not stops:
            return
        # Only text after what was returned can hold a new match (stop strings
        # that could start there were held back).
        hits = [i for i in (self.text.find(s, self.sent) for s in stops) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.finish_reason = "stop"

    def take_piece(self) -> str:
        """The text not returned yet, less a tail that might begin a stop string."""
        end, unsent = len(self.text), len(self.text) - self.sent
        if self.finish_reason is None:
            for s in self.request.stop:
                for k in range(min(len(s) - 1, unsent), 0, -1):
                    if self.text.endswith(s[:k]):
                        end = min(end, len(self.text) - k)
                        break
        piece = self.text[self.sent:end]
        self.sent = end
        return piece

    def result(self) -> GenerationResult:
        return GenerationResult(text=self.text, token_ids=list(self.new_ids),
                                finish_reason=self.finish_reason, prompt_tokens=len(self.prompt_ids),
                                completion_tokens=self.n_generated)


class Engine:
    """Generation over one trained model; see the module docstring.

    ``max_batch``: sequences decoded together; more requests wait their turn. The
    cache grows to what the sequences in flight need (at most ``max_batch`` rows
    of ``model.cfg.seq_len`` positions). ``pack_weights``: keep MKL-packed copies
    of the weights for the decode steps of a single sequence (``PackedWeights``:
    faster matrix-vector products on CPU, one more copy of the weights in memory);
    None: when the model is float32 on a CPU whose torch has working MKL packing,
    else the plain products."""

    def __init__(self, trained: TrainedModel, max_batch: int = 16,
                 pack_weights: bool | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model = trained.model.eval()
        unavailable = PackedWeights.unavailable(self.model) if pack_weights is not False else None
        if pack_weights is None:
            pack_weights = unavailable is None
        elif pack_weights and unavailable is not None:
            raise ValueError(f"pack_weights=True cannot be honoured: {unavailable}; "
                             "leave pack_weights unset to use the plain products")
        self.packed = PackedWeights(self.model) if pack_weights else None
        self.tokenizer = trained.tokenizer
        self.eos_id = trained.eos_id
        self.max_batch = max_batch
        self.device = next(self.model.parameters()).device
        self.context = self.model.cfg.seq_len
        self.cache: KVCache | None = None
        self.waiting: list[_Sequence] = []
        self.running: dict[int, _Sequence] = {}
        self._ids = itertools.count()
        # add/cancel may come from other threads (a server's handlers) than step's loop.
        self._lock = threading.RLock()

    # ------------------------------------------------------------ requests

    def prepare_prompt(self, request: GenerationRequest) -> list[int]:
        """The prompt's ids, checked against the context (or truncated from the left)."""
        if request.prompt_ids is not None:
            ids = list(request.prompt_ids)
        else:
            ids = self.tokenizer.encode(request.prompt, add_special_tokens=False).ids
        room = self.context - request.max_new_tokens
        if room < 1:
            raise RequestError(
                f"max_new_tokens={request.max_new_tokens} leaves no room for a prompt in the "
                f"model's context of {self.context} tokens: ask for at most {self.context - 1}")
        if len(ids) > room:
            if request.truncate != "left":
                raise RequestError(
                    f"the prompt is {len(ids)} tokens; with max_new_tokens={request.max_new_tokens} "
                    f"the model's context of {self.context} tokens leaves room for {room}: shorten "
                    f"the prompt, lower max_new_tokens, or truncate from the left (truncate='left')")
            ids = ids[-room:]
        return ids

    def add(self, request: GenerationRequest) -> int:
        """Queue a request; returns its seq_id. Raises ValueError for a prompt that
        does not fit (see GenerationRequest)."""
        ids = self.prepare_prompt(request)
        stop_ids = request.stop_token_ids
        if stop_ids is None:
            stop_ids = [] if self.eos_id is None else [self.eos_id]
        start_id = self.eos_id if self.eos_id is not None else 0
        with self._lock:
            seq = _Sequence(next(self._ids), request, ids, start_id, set(stop_ids),
                            IncrementalDecoder(self.tokenizer, ids[-CONTEXT_IDS:]))
            self.waiting.append(seq)
            return seq.id

    def cancel(self, seq_id: int) -> bool:
        """Drop a sequence (waiting or in flight) and free its cache row; False if unknown."""
        with self._lock:
            if self.running.pop(seq_id, None) is not None:
                return True
            for i, seq in enumerate(self.waiting):
                if seq.id == seq_id:
                    del self.waiting[i]
                    return True
            return False

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # ------------------------------------------------------------ decoding

    def _free_rows(self) -> list[int]:
        used = {seq.row for seq in self.running.values()}
        return [r for r in range(self.max_batch) if r not in used]

    def _ensure_cache(self, rows: int, length: int) -> None:
        """A cache of at least ``rows`` rows of ``length`` positions."""
        if self.cache is None:
            self.cache = KVCache(self.model.cfg, rows, length, self.device,
                                 self.model.embed.weight.dtype)
            return
        # Grow by doubling, so a stream of new requests does not copy at every step.
        if rows > self.cache.rows:
            rows = min(self.max_batch, max(rows, 2 * self.cache.rows))
        if length > self.cache.length:
            length = min(self.context, max(length, 2 * self.cache.length))
        self.cache.grow(rows, length)

    def _sample(self, seqs: list[_Sequence], logits: torch.Tensor) -> None:
        greedy = torch.argmax(logits, dim=-1).tolist()
        for i, seq in enumerate(seqs):
            req = seq.request
            token = greedy[i] if req.temperature == 0 else sample_token(
                logits[i], req.temperature, req.top_k, req.top_p, seq.generator)
            seq.accept(token)

    def _prefill(self, seqs: list[_Sequence]) -> None:
        for seq, row in zip(seqs, self._free_rows()):
            seq.row = row
            seq.length = len(seq.fed)
        # Room for each prompt and its new tokens (add() checked they fit the context).
        self._ensure_cache(max(s.row for s in seqs) + 1,
                           max(s.length + s.request.max_new_tokens for s in seqs))
        tokens = torch.zeros((len(seqs), max(s.length for s in seqs)), dtype=torch.long)
        for i, seq in enumerate(seqs):
            tokens[i, : seq.length] = torch.tensor(seq.fed)
        logits = forward_cached(
            self.model, tokens.to(self.device), self.cache, [s.row for s in seqs], [0] * len(seqs),
            last=[s.length - 1 for s in seqs])
        self._sample(seqs, logits.float())

    def _decode(self, seqs: list[_Sequence]) -> None:
        seqs = sorted(seqs, key=lambda s: s.row)  # neighbouring rows are read as a view
        tokens = torch.tensor([[s.last_token] for s in seqs], device=self.device)
        logits = forward_cached(self.model, tokens, self.cache, [s.row for s in seqs],
                                [s.length for s in seqs], packed=self.packed)
        for seq in seqs:
            seq.length += 1
        self._sample(seqs, logits.float())

    def step(self) -> list[StepOutput]:
        """Admit waiting requests while rows are free (their prompts prefilled
        together, giving each its first token), and decode one token for every
        sequence already in flight. Returns one StepOutput per sequence that made
        progress; a finished sequence leaves the engine."""
        with self._lock, torch.inference_mode():
            return self._step()

    def _step(self) -> list[StepOutput]:
        decoding = list(self.running.values())
        admitted: list[_Sequence] = []
        empty: list[_Sequence] = []  # max_new_tokens=0: finished without running
        while self.waiting and len(admitted) < self.max_batch - len(self.running):
            seq = self.waiting.pop(0)
            if seq.request.max_new_tokens == 0:
                seq.finish_reason = "length"
                empty.append(seq)
            else:
                admitted.append(seq)
        if decoding:
            self._decode(decoding)
        if admitted:
            self._prefill(admitted)
            for seq in admitted:
                self.running[seq.id] = seq
        outputs = []
        for seq in decoding + admitted + empty:
            done = seq.finish_reason is not None
            outputs.append(StepOutput(seq.id, seq.take_piece(), done, seq.finish_reason,
                                      seq.result() if done else None))
            if done:
                self.running.pop(seq.id, None)
        return outputs

    # ------------------------------------------------------------ convenience

    def _require_idle(self) -> None:
        if self.has_work():
            raise RuntimeError("the engine has sequences in flight from add(); drive it with "
                               "step() (generate and stream run their own loop)")

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Run the requests to completion together; results in the requests' order."""
        self._require_idle()
        try:
            ids = [self.add(r) for r in requests]
        except ValueError:
            self.waiting.clear()
            raise
        results: dict[int, GenerationResult] = {}
        while self.has_work():
            for out in self.step():
                if out.finished:
                    results[out.seq_id] = out.result
        return [results[i] for i in ids]

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        """Yield the completion's text piece by piece as it is produced (no empty
        pieces). Closing the iterator early cancels the sequence."""
        self._require_idle()
        seq_id = self.add(request)
        try:
            finished = False
            while not finished:
                for out in self.step():
                    if out.text:
                        yield out.text
                    finished = finished or out.finished
        finally:
            self.cancel(seq_id)
