"""`headswap tune`: the two-stage search on already ingested examples, outside the pipeline.

  headswap tune --examples DIR [--output DIR]         # in this process
  headswap tune --examples DIR --workers N            # a chief here and N worker processes
  headswap tune --examples DIR --oracle HOST:PORT --worker-id ID   # one worker of a chief

Heavy imports happen inside main, so `headswap --help` stays instant.
"""

import os
import sys

from headswap.pipeline import flags

DEFAULT_OUTPUT = os.path.join("output", "tune")


def register(commands):
  tune = commands.add_parser(
      "tune", help="search head and fine-tune depth on ingested examples (KerasTuner)",
      description=__doc__.split("\n\n")[0])
  tune.add_argument("--examples", required=True,
                    help="the examples folder `headswap ingest` printed (Split-train/, "
                         "Split-eval/ and class_names.json inside)")
  tune.add_argument("--output", default=DEFAULT_OUTPUT,
                    help="folder for tuning_summary.json/.txt, the trials and worker logs")
  tune.add_argument("--feature-cache",
                    help="pooled-feature cache (default: OUTPUT/feature_cache); the pipeline's "
                         "is OUTPUT/tfx/feature_cache")
  flags.add_search_arguments(tune.add_argument_group("search (ranges in tuning/space.py)"))
  distributed = tune.add_argument_group(
      "distributed (KerasTuner's chief and workers; every worker needs the same flags, "
      "--examples and a shared --output)")
  distributed.add_argument("--workers", type=int,
                           help="start a chief and this many worker processes here")
  distributed.add_argument("--host", default="127.0.0.1",
                           help="the chief listens here (with --workers); not loopback lets "
                                "other machines' workers join")
  distributed.add_argument("--port", type=int, default=0,
                           help="the chief's port (head stage; the depth stage uses PORT+1); "
                                "0 picks free ones")
  distributed.add_argument("--oracle", metavar="HOST:PORT",
                           help="run one worker against the chief listening there")
  distributed.add_argument("--worker-id", help="this worker's id, e.g. tuner7 (with --oracle)")
  flags.add_training_arguments(tune)
  tune.set_defaults(func=main)


def main(args):
  from headswap.trainer.hparams import HParams  # pylint: disable=import-outside-toplevel
  from headswap.tuning import jobs  # pylint: disable=import-outside-toplevel
  from headswap.tuning.space import SearchSpace  # pylint: disable=import-outside-toplevel
  from headswap.tuning.summary import summary_table, write_summary  # pylint: disable=import-outside-toplevel

  given_space = flags.given_search_space(args)
  try:
    _check(args, given_space)
    hp = HParams.from_sources(flags.given_hparams(args))
  except (jobs.TuneError, ValueError) as error:
    sys.exit(f"headswap tune: {error}")
  space = SearchSpace(**given_space)
  cache_dir = args.feature_cache or os.path.join(args.output, "feature_cache")
  try:
    if args.oracle:
      jobs.run_worker(args.oracle, args.worker_id, args.examples, hp, space, cache_dir,
                      args.output)
      return
    if args.workers:
      summary = jobs.supervise(_worker_command(args, cache_dir), args.examples, hp, space,
                               cache_dir, args.output, args.workers, args.host, args.port)
    else:
      summary = jobs.search_in_process(args.examples, hp, space, cache_dir, args.output)
  except jobs.TuneError as error:
    sys.exit(f"headswap tune: {error}")
  write_summary(summary, args.output)
  print(summary_table(summary))
  print(f"summary: {os.path.join(args.output, 'tuning_summary.json')}")


def _check(args, given_space):
  from headswap.tuning.jobs import TuneError  # pylint: disable=import-outside-toplevel

  for flag, value in (("--max-trials", args.max_trials), ("--depth-trials", args.depth_trials),
                      ("--workers", args.workers)):
    if value is not None and value < 1:
      raise TuneError(f"{flag} must be at least 1, got {value}")
  if bool(args.oracle) != bool(args.worker_id):
    raise TuneError("--oracle and --worker-id go together (one worker of a chief)")
  if args.oracle and args.workers:
    raise TuneError("--workers starts a chief; --oracle joins one: choose one")
  if given_space.get("seconds", 0) < 0:
    raise TuneError("--tune-seconds must not be negative")


def _worker_command(args, cache_dir):
  """`headswap tune` with this search's flags, for a worker at (address, id)."""
  worker_flags = ["--examples", args.examples, "--output", args.output,
                  "--feature-cache", cache_dir]
  given = {**flags.given_hparams(args),
           **{name: getattr(args, name) for name in flags.SEARCH_SPACE_FIELDS
              if getattr(args, name) is not None}}
  for name, value in given.items():
    flag = name.replace("_", "-")
    if isinstance(value, bool):
      worker_flags.append(f"--{flag}" if value else f"--no-{flag}")
    else:
      worker_flags += [f"--{flag}", str(value)]
  # -v: a worker's whole log goes to its stdout, the tuner<k>.log the chief keeps for it.
  return lambda address, worker_id: [sys.executable, "-m", "headswap.pipeline.cli", "-v", "tune",
                                     *worker_flags, "--oracle", address, "--worker-id", worker_id]
