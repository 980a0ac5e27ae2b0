"""Batched generation for a local model under concurrent graph runs.

The review graph's report node sends one prompt at a time. With ``--concurrency N`` threads each
running cases, :class:`BatchingBackend` gathers the prompts that arrive together into one
``generate`` call of up to ``batch_size`` prompts (one padded forward pass on the GPU) and hands
each thread its own text back. One worker thread owns the model, so it never runs twice at once.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future

from casereview.tools.precomputed import Delegating
from casereview.tools.reporter.backends import Generation, ReporterBackend
from casereview.tools.reporter.prompts import RenderedPrompt


class BatchingBackend(Delegating):
    """A reporter backend whose concurrent ``generate`` calls are served in batches."""

    def __init__(self, inner: ReporterBackend, batch_size: int, wait_s: float = 0.05):
        super().__init__(inner)
        self.batch_size, self.wait_s = max(1, batch_size), wait_s
        self._queue: queue.Queue[tuple[RenderedPrompt, Future]] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._start = threading.Lock()

    def generate(self, prompts: Sequence[RenderedPrompt]) -> list[Generation]:
        with self._start:
            if self._worker is None:
                self._worker = threading.Thread(target=self._serve, name="batching-backend", daemon=True)
                self._worker.start()
        futures = []
        for prompt in prompts:
            future: Future = Future()
            self._queue.put((prompt, future))
            futures.append(future)
        return [f.result() for f in futures]

    def _serve(self) -> None:
        while True:
            batch = [self._queue.get()]
            # Wait briefly for the other threads' prompts: they arrive within moments of each other.
            while len(batch) < self.batch_size:
                try:
                    batch.append(self._queue.get(timeout=self.wait_s))
                except queue.Empty:
                    break
            try:
                generations = self.inner.generate([p for p, _ in batch])
            except BaseException as exc:  # noqa: BLE001  every waiting thread gets the failure
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for (_, future), gen in zip(batch, generations, strict=True):
                future.set_result(gen)
