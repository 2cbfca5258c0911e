"""Progress of headswap's long steps: a live bar on the terminal, or a few plain lines.

    with progress("frozen epochs", total=20, unit="epochs") as advance:
      ...
      advance()  # or advance(k)

During a console session on a terminal (pipeline/console.py calls bars_on) each step draws a
rich bar, removed when it ends, and the log file gets the plain lines. Elsewhere (not a
terminal, --verbose, library use, tests) the step tells the story in plain lines through the
"headswap.console" logger: its start, each tenth of the way or every PLAIN_SECONDS, and its end.
A step inside another (a trial's epochs) draws its own bar but writes no lines, so the lines
stay a handful per step, thousands of trial epochs or not. A leaf module: trainer/ and tuning/
import it.
"""

import contextlib
import logging
import threading
import time
from typing import Callable, Iterator, Optional, TextIO

from rich import console as rich_console
from rich import progress as rich_progress

story = logging.getLogger("headswap.console")
to_log_only = logging.getLogger("headswap.progress")  # "headswap.*": the log file, not the screen
PLAIN_SECONDS = 10.0
PLAIN_STEPS = 10  # a plain line each tenth of the way

Advance = Callable[..., None]

_lock = threading.Lock()  # the Tuner's chief ends trials on gRPC threads
_terminal: Optional[TextIO] = None
_bars: Optional[rich_progress.Progress] = None  # live while a step runs on the terminal
_running = 0  # steps in progress, nested ones included


def ignore(count: int = 1) -> None:  # pylint: disable=unused-argument
  """An Advance that shows nothing: for callers that report no progress."""


@contextlib.contextmanager
def bars_on(terminal: TextIO) -> Iterator[None]:
  """While the block runs, steps draw bars on terminal (a TTY) instead of plain lines."""
  global _terminal  # pylint: disable=global-statement
  _terminal = terminal
  try:
    yield
  finally:
    _terminal = None


@contextlib.contextmanager
def progress(description: str, total: Optional[int] = None,
             unit: str = "steps") -> Iterator[Advance]:
  """Shows the block's progress; yields advance(count=1), called as work gets done."""
  if total == 0:  # nothing to do: nothing to show
    yield ignore
    return
  with shown_elsewhere() as outermost:
    if _terminal:
      show = _bar(description, total, unit, to_log_only if outermost else None)
    else:
      show = _PlainLines(description, total, unit, story if outermost else None)
    try:
      yield show.advance
    finally:
      show.end()


@contextlib.contextmanager
def shown_elsewhere() -> Iterator[bool]:
  """A step whose progress another process shows: the steps inside it write no lines here.
  Yields whether it is the outermost step (progress() counts its steps with it too)."""
  global _running  # pylint: disable=global-statement
  with _lock:
    outermost = not _running
    _running += 1
  try:
    yield outermost
  finally:
    with _lock:
      _running -= 1


class _PlainLines:
  """Start, each tenth of the way or every PLAIN_SECONDS, end: to `logger`, or nowhere."""

  def __init__(self, description: str, total: Optional[int], unit: str,
               logger: Optional[logging.Logger]):
    self._description, self._total, self._unit, self._logger = description, total, unit, logger
    self._done = 0
    self._started = self._last_line = time.monotonic()
    self._next_step = 1
    self._say(self._count())

  def advance(self, count: int = 1) -> None:
    with _lock:
      self._done += count
      now = time.monotonic()
      steps = self._done * PLAIN_STEPS // self._total if self._total else 0
      due = steps >= self._next_step or now - self._last_line >= PLAIN_SECONDS
      if due and self._done != self._total:  # the end line says it
        self._next_step = steps + 1
        self._last_line = now
        share = f" ({100 * self._done // self._total}%)" if self._total else ""
        self._say(f"{self._count()}{share}, {now - self._started:.1f} s")

  def end(self) -> None:
    self._say(f"done, {self._count()} in {time.monotonic() - self._started:.1f} s")

  def _count(self) -> str:
    return f"{self._done}{f'/{self._total}' if self._total else ''} {self._unit}"

  def _say(self, text: str) -> None:
    if self._logger:
      self._logger.info("  %s: %s", self._description, text)


class _Bar:
  """One task of the shared rich Progress; its plain lines go to the log file."""

  def __init__(self, bars: rich_progress.Progress, description: str, total: Optional[int],
               unit: str, log: Optional[logging.Logger]):
    self._bars = bars
    self._task = bars.add_task(description, total=total, unit=unit)
    self._log = _PlainLines(description, total, unit, log)
    self._ended = False

  def advance(self, count: int = 1) -> None:
    with _lock:
      if self._ended:  # a trial a failed distributed search's worker ends after the step
        return
      self._bars.advance(self._task, count)
    self._log.advance(count)

  def end(self) -> None:
    global _bars  # pylint: disable=global-statement
    self._log.end()
    with _lock:
      self._ended = True
      self._bars.remove_task(self._task)
      if not self._bars.tasks:
        self._bars.stop()
        _bars = None


def _bar(description: str, total: Optional[int], unit: str,
         log: Optional[logging.Logger]) -> _Bar:
  global _bars  # pylint: disable=global-statement
  with _lock:
    if _bars is None:
      _bars = rich_progress.Progress(
          rich_progress.TextColumn("  {task.description}"), rich_progress.BarColumn(),
          rich_progress.MofNCompleteColumn(), rich_progress.TextColumn("{task.fields[unit]}"),
          rich_progress.TimeElapsedColumn(),
          console=rich_console.Console(file=_terminal), transient=True)
      _bars.start()
    bars = _bars
  return _Bar(bars, description, total, unit, log)
