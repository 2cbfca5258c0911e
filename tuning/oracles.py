"""The oracles that hand out each stage's trials, and how a tuner finds them.

Each stage draws its trials from a StageOracle. In one process (the TFX Tuner, `headswap
tune`) both oracles are local; in a distributed search (tuning/jobs.py) they live in
the chief and every worker runs the same TransferTuner (tuning/trials.py) against them over
gRPC, the depth stage's oracle on the port next to the head stage's.
"""

import contextlib
import logging
import os
import time
from typing import Dict, Iterator, Optional, Tuple

import keras_tuner
from keras_tuner.src.engine import trial as trial_module

from headswap.components.progress import ignore, progress
from headswap.tuning.space import OBJECTIVE, SearchSpace

log = logging.getLogger("headswap")

HEADS, DEPTH = "heads", "depth"
PORT_VARIABLE = "KERASTUNER_ORACLE_PORT"
DEPTH_PORT_OFFSET = 1  # the depth stage's oracle listens next to the head stage's
LONG_POLL_SECONDS = 20  # a tuner held back gets IDLE after this and asks again
POLL_SECONDS = 0.1
Status = trial_module.TrialStatus


class StageOracle(keras_tuner.oracles.RandomSearchOracle):
  """Random search for one stage that can hold its trials back until the stage may start
  (enough tuners arrived, the stage before finished), stops handing out trials at a deadline
  and remembers which tuner ran each trial."""

  def __init__(self, name: str, objective, hyperparameters, max_trials: int, seed: int,
               deadline: Optional[float] = None, min_trials: int = 0,
               tuners_to_wait_for: int = 1, after: Optional["StageOracle"] = None):
    super().__init__(objective=objective, max_trials=max_trials,
                     hyperparameters=hyperparameters, seed=seed)
    self.name = name
    self.deadline = deadline
    self.min_trials = min_trials
    self.tuners_to_wait_for = tuners_to_wait_for
    self.after = after
    self.arrived = set()
    self.workers: Dict[str, str] = {}  # trial id -> tuner id
    self.stopped = False
    self.first_started: Optional[float] = None
    self.last_ended: Optional[float] = None
    self.verbose = 0  # end_trial logs one line per trial instead of KerasTuner's tables
    self.trial_ended = ignore  # advances the trials' progress while it is shown

  @property
  def finished(self) -> bool:
    return self.stopped and not self.ongoing_trials

  @property
  def seconds(self) -> Optional[float]:
    """From the first trial's start to the last one's end, on whichever tuners."""
    if self.first_started and self.last_ended:
      return round(self.last_ended - self.first_started, 1)
    return None

  @contextlib.contextmanager
  def trials_shown(self, description: str) -> Iterator[None]:
    """The stage's progress while the block runs, a trial at a time as they end."""
    with progress(description, self.max_trials, "trials") as advance:
      self.trial_ended = advance
      try:
        yield
      finally:
        self.trial_ended = ignore

  def _may_start(self) -> bool:
    return (len(self.arrived) >= self.tuners_to_wait_for
            and (self.after is None or self.after.finished))

  def create_trial(self, tuner_id):
    # Waits outside the oracle's lock (taken by super()), so the awaited tuners can arrive.
    self.arrived.add(tuner_id)
    waited = 0.0
    while not self._may_start():
      if waited >= LONG_POLL_SECONDS:
        return trial_module.Trial(self.get_space(), trial_id="waiting", status=Status.IDLE)
      time.sleep(POLL_SECONDS)
      waited += POLL_SECONDS
    trial = super().create_trial(tuner_id)
    if trial.status == Status.RUNNING:
      self.workers[trial.trial_id] = tuner_id
      self.first_started = self.first_started or time.time()
    elif trial.status == Status.STOPPED:
      self.stopped = True
    return trial

  def populate_space(self, trial_id):
    if self.deadline and time.time() > self.deadline:
      if len(self.trials) >= self.min_trials:
        return {"status": Status.STOPPED, "values": None}
      # Over budget but a result is needed: the first listed (default) values.
      return {"status": Status.RUNNING,
              "values": {hp.name: hp.default for hp in self.hyperparameters.space}}
    return super().populate_space(trial_id)

  def end_trial(self, trial):
    super().end_trial(trial)
    self.last_ended = time.time()
    ended = self.trials[trial.trial_id]
    log.info("%s trial %s (%s): %s, %s %s", self.name, ended.trial_id,
             self.workers.get(ended.trial_id), ended.status, self.objective.name, ended.score)
    self.trial_ended()


def stage_oracles(space: SearchSpace, seed: int,
                  tuners_to_wait_for: int = 1) -> Tuple[StageOracle, StageOracle]:
  """The head stage's oracle and the depth stage's, which waits for the head stage. Only
  the head stage must run a trial whatever the time budget: it alone makes a result."""
  deadline = time.time() + space.seconds if space.seconds else None
  seed += 1  # KerasTuner draws a random seed for 0
  heads = StageOracle(HEADS, OBJECTIVE, space.head_hyperparameters(), space.head_trials,
                      seed, deadline, min_trials=1, tuners_to_wait_for=tuners_to_wait_for)
  depth = StageOracle(DEPTH, OBJECTIVE, space.depth_hyperparameters(), space.depth_trials, seed,
                      deadline, after=heads)
  return heads, depth


@contextlib.contextmanager
def oracle_port(offset: int):
  """KerasTuner's OracleClient reads the chief's port from the environment when a tuner is
  built (workers only): point it at the stage's oracle while building."""
  port = os.environ.get(PORT_VARIABLE)
  if port is None or not offset:
    yield
    return
  os.environ[PORT_VARIABLE] = str(int(port) + offset)
  try:
    yield
  finally:
    os.environ[PORT_VARIABLE] = port
