"""Search jobs on already ingested examples: in one process, or a chief and workers.

Workers are ordinary KerasTuner workers (KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP and
KERASTUNER_ORACLE_PORT in their environment) running trials.TransferTuner. KerasTuner's own
chief is a tuner whose search() serves one oracle and never returns; a headswap search has two
stages, so the chief here is two gRPC servers in the supervising process, one per stage's
oracle (heads on PORT, depth on PORT+1), and the depth oracle holds its trials back until the
last head trial has ended. The supervisor starts the workers, watches them, stops the servers
once they have exited and writes the summary from the oracles, which got every trial's score,
time and worker from the workers.
"""

import logging
import os
import subprocess
import time
from concurrent import futures
from typing import Any, Callable, Dict, List, Tuple

import grpc
import tensorflow as tf
from keras_tuner.src import protos
from keras_tuner.src.distribute import oracle_chief

from headswap.components import features
from headswap.components.progress import progress
from headswap.trainer import data
from headswap.trainer.hparams import HParams
from headswap.tuning.oracles import DEPTH_PORT_OFFSET, PORT_VARIABLE, stage_oracles
from headswap.tuning.space import SearchSpace
from headswap.tuning.summary import summarize, summarize_tuner
from headswap.tuning.trials import TransferTuner, precompute

log = logging.getLogger("headswap")
story = logging.getLogger("headswap.console")  # on the console too (pipeline/console.py)

TUNING_DIR = "tuning"  # under --output: the trials' checkpoints and the workers' logs
LOOPBACK = "127.0.0.1"
SERVER_THREADS = 16  # a tuner held back by a stage keeps one thread while it waits
PORT_ATTEMPTS = 20
SUPERVISOR_POLL_SECONDS = 0.5


class TuneError(Exception):
  """Bad --examples or distributed settings, or a worker that failed."""


def split_files(examples: str) -> Tuple[List[str], List[str]]:
  """The train and eval file patterns of an Examples artifact folder."""
  patterns = []
  for split in (features.TRAIN, features.EVAL):
    pattern = features.split_pattern(examples, split)
    if not tf.io.gfile.glob(pattern):
      raise TuneError(f"{os.path.dirname(pattern)}: no examples; --examples takes the examples "
                      f"folder that `headswap ingest` prints (with Split-train/ and Split-eval/ "
                      f"inside)")
    patterns.append([pattern])
  if not tf.io.gfile.exists(os.path.join(examples, features.CLASS_NAMES_FILE)):
    raise TuneError(f"{examples}: no {features.CLASS_NAMES_FILE}; is it an ImageExampleGen "
                    f"output?")
  return patterns[0], patterns[1]


def _tuner(examples: str, hp: HParams, space: SearchSpace, cache_dir: str,
           output: str, overwrite: bool) -> TransferTuner:
  train_files, eval_files = split_files(examples)
  return TransferTuner(train_files, eval_files, len(data.class_names_of(train_files)), hp, space,
                       cache_dir, directory=os.path.join(output, TUNING_DIR), overwrite=overwrite)


def search_in_process(examples: str, hp: HParams, space: SearchSpace, cache_dir: str,
                      output: str) -> Dict[str, Any]:
  tuner = _tuner(examples, hp, space, cache_dir, output, overwrite=True)
  tuner.search()
  return summarize_tuner(tuner)


def run_worker(address: str, worker_id: str, examples: str, hp: HParams,
               space: SearchSpace, cache_dir: str, output: str) -> None:
  """One worker: head trials, then depth trials, from the chief at address (HOST:PORT)."""
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit():
    raise TuneError(f"--oracle {address!r}: expected HOST:PORT")
  if "chief" in worker_id:  # KerasTuner would take the worker for a chief
    raise TuneError(f"--worker-id {worker_id!r}: a worker's id must not contain 'chief'")
  os.environ.update({"KERASTUNER_TUNER_ID": worker_id, "KERASTUNER_ORACLE_IP": host,
                     PORT_VARIABLE: port})
  # The supervisor emptied the tuning folder; other workers' trials are in it now.
  _tuner(examples, hp, space, cache_dir, output, overwrite=False).search()
  log.info("worker %s: no trials left", worker_id)


class Chief:
  """Both stages' oracles, each served on its own port (depth on the head stage's + 1)."""

  def __init__(self, space: SearchSpace, seed: int, directory: str, host: str,
               port: int, workers: int):
    self.heads, self.depth = stage_oracles(space, seed, tuners_to_wait_for=workers)
    for oracle in (self.heads, self.depth):
      oracle._set_project_dir(directory, oracle.name)  # pylint: disable=protected-access
    self.servers, self.port = _start_servers((self.heads, self.depth), host, port)

  def stop(self):
    for server in self.servers:
      server.stop(grace=None)


def _serve(oracle, host: str, port: int) -> Tuple[grpc.Server, int]:
  # No SO_REUSEPORT: a port in use must fail to bind, not be shared with its owner.
  server = grpc.server(futures.ThreadPoolExecutor(max_workers=SERVER_THREADS),
                       options=[("grpc.so_reuseport", 0)])
  protos.get_service_grpc().add_OracleServicer_to_server(oracle_chief.OracleServicer(oracle),
                                                         server)
  try:
    bound = server.add_insecure_port(f"{host}:{port}")
  except RuntimeError as error:
    raise TuneError(f"cannot listen on {host}:{port} ({error})") from error
  server.start()
  return server, bound


def _start_servers(oracles, host: str, port: int) -> Tuple[List[grpc.Server], int]:
  """Port 0: a free pair of neighbouring ports."""
  for _ in range(PORT_ATTEMPTS):
    heads_server, heads_port = _serve(oracles[0], host, port)
    try:
      depth_server, _ = _serve(oracles[1], host, heads_port + DEPTH_PORT_OFFSET)
      return [heads_server, depth_server], heads_port
    except TuneError:
      heads_server.stop(grace=None)
      if port:
        raise
  raise TuneError(f"no two free neighbouring ports on {host} in {PORT_ATTEMPTS} attempts")


def supervise(worker_command: Callable[[str, str], List[str]], examples: str, hp: HParams,
              space: SearchSpace, cache_dir: str, output: str, workers: int,
              host: str = LOOPBACK, port: int = 0) -> Dict[str, Any]:
  """A chief here and `workers` worker processes (worker_command(address, id) starts one);
  other machines' workers may join when host is not loopback. Returns the summary."""
  directory = os.path.join(output, TUNING_DIR)
  if tf.io.gfile.exists(directory):  # an earlier search's checkpoints must not be loaded
    tf.io.gfile.rmtree(directory)
  logs = os.path.join(directory, "logs")
  tf.io.gfile.makedirs(logs)
  train_files, eval_files = split_files(examples)
  computed = precompute(train_files, eval_files, hp, space, cache_dir)
  chief = Chief(space, hp.seed, directory, host, port, workers)
  address = f"{LOOPBACK if host in ('0.0.0.0', '') else host}:{chief.port}"
  story.info("chief oracles on %s:%d (heads) and :%d (depth)", host, chief.port,
           chief.port + DEPTH_PORT_OFFSET)
  processes: Dict[str, subprocess.Popen] = {}
  log_files = {f"tuner{k}": os.path.join(logs, f"tuner{k}.log") for k in range(workers)}
  try:
    for worker_id, log_file in log_files.items():
      with open(log_file, "w") as stream:
        processes[worker_id] = subprocess.Popen(worker_command(address, worker_id),
                                                stdout=stream, stderr=subprocess.STDOUT)
    with progress("head and depth trials", chief.heads.max_trials + chief.depth.max_trials,
                  "trials") as done:
      chief.heads.trial_ended = chief.depth.trial_ended = done  # the oracles end them here
      _wait(chief, processes, log_files, others_may_join=host != LOOPBACK)
  finally:
    for process in processes.values():
      if process.poll() is None:
        process.terminate()
        process.wait()
    chief.stop()
  summary = summarize(chief.heads, chief.depth, computed)
  rows = [row for stage in summary["stages"].values() for row in stage["trials"]]
  summary["chief"] = {"host": host, "port": chief.port}
  summary["workers"] = {
      worker_id: {"exit_code": processes[worker_id].returncode, "log": log_file,
                  "trials": sum(row["worker"] == worker_id for row in rows)}
      for worker_id, log_file in log_files.items()}
  return summary


def _wait(chief: Chief, processes: Dict[str, subprocess.Popen], log_files: Dict[str, str],
          others_may_join: bool) -> None:
  """Until every worker here has exited and, if others may have joined, the search is over.
  A failed worker ends the search: its trial would never end."""
  while True:
    for worker_id, process in processes.items():
      if process.poll():
        raise TuneError(f"worker {worker_id} failed (exit code {process.returncode}); "
                        f"its log: {log_files[worker_id]}")
    if all(process.poll() == 0 for process in processes.values()):
      if chief.depth.finished or not others_may_join:
        return
    time.sleep(SUPERVISOR_POLL_SECONDS)
