"""Micro-batching: images (or tf.Examples) from all concurrent requests share one model call.

One thread makes every model call. While a call runs, new images queue up, and the next call
takes all of them (up to max_batch_size), so batches grow with the load by themselves. When
the model is idle, the first image waits at most batch_timeout for company.
"""

import asyncio
import dataclasses
import itertools
import logging
import queue
import threading
import time
from typing import List, Optional, Sequence

from headswap.serving.errors import RequestError
from headswap.serving.models import LoadedModel, Outcome

log = logging.getLogger("headswap")


@dataclasses.dataclass
class _Pending:
  model: LoadedModel  # chosen when the request arrived, so a version swap never splits it
  signature: str
  value: bytes  # an encoded image or a serialized tf.Example, as the signature takes
  future: asyncio.Future


class MicroBatcher:

  def __init__(self, max_batch_size: int, batch_timeout_s: float):
    self.max_batch_size = max_batch_size
    self.batch_timeout_s = batch_timeout_s
    self.batches = 0  # the metric that shows batching at work
    self.images = 0
    self._queue: "queue.Queue[Optional[_Pending]]" = queue.Queue()
    self._thread = threading.Thread(target=self._run, name="micro-batcher", daemon=True)

  def start(self) -> None:
    self._thread.start()

  def stop(self) -> None:
    self._queue.put(None)
    self._thread.join()

  async def predict(self, model: LoadedModel, signature: str,
                    values: Sequence[bytes]) -> List[Outcome]:
    """Outcomes in the order of `values`; they may ride in different batches."""
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in values]
    for value, future in zip(values, futures):
      self._queue.put(_Pending(model, signature, value, future))
    outcomes = await asyncio.gather(*futures, return_exceptions=True)  # no orphaned errors
    for outcome in outcomes:
      if isinstance(outcome, BaseException) and not isinstance(outcome, RequestError):
        raise outcome
    return outcomes

  def _run(self) -> None:
    while True:
      batch = self._next_batch()
      if batch is None:
        return
      for (model, signature), group in itertools.groupby(
          batch, key=lambda pending: (pending.model, pending.signature)):
        self._call(model, signature, list(group))

  def _next_batch(self) -> Optional[List[_Pending]]:
    first = self._queue.get()
    if first is None:
      return None
    batch = [first]
    deadline = time.monotonic() + self.batch_timeout_s
    while len(batch) < self.max_batch_size:
      try:
        pending = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
      except queue.Empty:
        break
      if pending is None:
        self._queue.put(None)  # finish this batch, stop on the next
        break
      batch.append(pending)
    return batch

  def _call(self, model: LoadedModel, signature: str, group: List[_Pending]) -> None:
    self.batches += 1
    self.images += len(group)
    try:
      outcomes = model.predict([pending.value for pending in group], signature)
    except Exception as error:  # e.g. out of memory: fail these requests, keep serving
      log.exception("model call on %d images failed", len(group))
      for pending in group:
        _resolve(pending.future, error=error)
      return
    for pending, outcome in zip(group, outcomes):
      _resolve(pending.future, result=outcome)


def _resolve(future: asyncio.Future, result=None, error: Optional[Exception] = None) -> None:
  """Hands a result to the event loop that awaits it (futures are not thread-safe)."""
  def settle():
    if future.done():  # the request was cancelled, e.g. its client went away
      return
    if error is None:
      future.set_result(result)
    else:
      future.set_exception(error)
  future.get_loop().call_soon_threadsafe(settle)
