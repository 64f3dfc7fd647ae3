"""One thread does all model work, so the model is never entered by two requests at once.

Questions go first. An ingest runs when no question waits, and lets the questions waiting at that moment run
between its chunks (its progress callback calls :meth:`Scheduler.serve_questions`), so a long video being
pre-filled does not hold up questions about videos that are ready. An ingest that has waited ``ingest_after_s``
goes next even while questions keep coming, so a steady stream of questions cannot starve a new video. The queue
is bounded: a full queue refuses new work at once.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections import deque
from typing import Callable

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The scheduler already holds as many jobs as it may."""


class Scheduler:
    """A bounded two-class job queue (questions before ingests) drained by one worker thread."""

    def __init__(self, max_queue: int, ingest_after_s: float = 1.0):
        self.max_queue, self.ingest_after_s = max_queue, ingest_after_s
        self._questions: deque = deque()
        self._ingests: deque = deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="videoxl-model", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        return len(self._questions) + len(self._ingests)

    def submit(self, fn: Callable[[], object], question: bool) -> concurrent.futures.Future:
        """Queue ``fn`` to run on the worker; raises QueueFull when the queue is at its bound."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cv:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if self.depth >= self.max_queue:
                raise QueueFull(f"{self.depth} requests are waiting for the model")
            if question:
                self._questions.append((fn, future))
            else:
                self._ingests.append((fn, future, time.monotonic()))
            self._cv.notify()
        return future

    def serve_questions(self) -> None:
        """Run the questions waiting now (called by an ingest between its chunks, on the worker thread)."""
        if threading.current_thread() is not self._thread:
            return
        with self._cv:
            waiting = len(self._questions)  # not those that come meanwhile: the ingest's next chunk is due
        for _ in range(waiting):
            with self._cv:
                if not self._questions:
                    return
                job = self._questions.popleft()
            self._run(*job)

    def call(self, fn: Callable[[], object]) -> object:
        """Run ``fn`` on the worker, bypassing the bound (for shutdown work), and wait for it."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cv:
            self._questions.appendleft((fn, future))
            self._cv.notify()
        return future.result()

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join()

    @staticmethod
    def _run(fn, future: concurrent.futures.Future) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as e:  # handed to the waiting request, which answers with it
            future.set_exception(e)

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._questions and not self._ingests and not self._stopping:
                    self._cv.wait()
                if self._stopping and not self._questions and not self._ingests:
                    return
                overdue = self._ingests and time.monotonic() - self._ingests[0][2] >= self.ingest_after_s
                job = self._ingests.popleft()[:2] if overdue or not self._questions else self._questions.popleft()
            self._run(*job)
