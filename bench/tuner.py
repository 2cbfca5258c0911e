"""Tuner benchmark: head trials per minute on cached features, and the depth stage's time.

  .venv/bin/python bench/tuner.py [--examples DIR] [--head-trials 20] [--depth-trials 2]

Runs `headswap tune`'s in-process search (tuning/jobs.py) on cats_vs_dogs with the default
backbone, ImageNet weights and native size. --examples takes an ingested Examples folder;
without it the newest one under --ingest-output is used, ingested first if there is none
(`headswap ingest --data ../shared/datasets/cats_vs_dogs --output <tmp>/tune_bench`). The
feature cache starts empty, so computing the pooled features is measured, and reported
apart from the head stage. Prints one JSON object. Target: >= 10 head trials per minute on 2
cores. The load average is printed with it: other work on the machine slows every number.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "datasets", "cats_vs_dogs")
TARGET_HEAD_TRIALS_PER_MINUTE = 10


def examples_folder(args) -> str:
  from headswap.pipeline import local_runner

  if args.examples:
    return args.examples
  if not os.path.exists(local_runner.metadata_path(args.ingest_output)):
    subprocess.run([sys.executable, "-m", "headswap.pipeline.cli", "ingest", "--data", args.data,
                    "--output", args.ingest_output], check=True)
  return local_runner.last_run_artifacts(
      local_runner.metadata_path(args.ingest_output))["ImageExampleGen.examples"]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--examples", help="an ingested Examples folder (Split-train, Split-eval)")
  parser.add_argument("--data", default=DEFAULT_DATA, help="what to ingest without --examples")
  parser.add_argument("--ingest-output", default=os.path.join(tempfile.gettempdir(), "tune_bench"))
  parser.add_argument("--head-trials", type=int, default=20)
  parser.add_argument("--depth-trials", type=int, default=2)
  parser.add_argument("--depth-epochs", type=int, default=2)
  args = parser.parse_args()
  examples = examples_folder(args)
  load_before = os.getloadavg()

  from headswap.trainer.hparams import HParams
  from headswap.tuning import jobs
  from headswap.tuning.space import SearchSpace

  space = SearchSpace(head_trials=args.head_trials, depth_trials=args.depth_trials,
                      depth_epochs=args.depth_epochs)
  with tempfile.TemporaryDirectory(prefix="tuner_bench_") as output:
    summary = jobs.search_in_process(examples, HParams(), space,
                                     os.path.join(output, "feature_cache"), output)
  heads, depth = summary["stages"]["heads"], summary["stages"]["depth"]
  per_minute = 60 * len(heads["trials"]) / heads["seconds"]
  print(json.dumps({
      "examples": examples,
      "backbone": HParams().backbone,
      "feature_files_computed": heads["feature_files_computed"],
      "feature_seconds": heads["feature_seconds"],
      "head_trials": len(heads["trials"]),
      "head_stage_seconds": heads["seconds"],
      "head_trials_per_minute": round(per_minute, 1),
      "head_trial_seconds_median": statistics.median(row["seconds"] for row in heads["trials"]),
      "target_head_trials_per_minute": TARGET_HEAD_TRIALS_PER_MINUTE,
      "meets_target": per_minute >= TARGET_HEAD_TRIALS_PER_MINUTE,
      "depth_trials": [{"fine_tune_blocks": row["hyperparameters"]["fine_tune_blocks"],
                        "seconds": row["seconds"]} for row in depth["trials"]],
      "depth_epochs": args.depth_epochs,
      "depth_stage_seconds": depth["seconds"],
      "feature_extraction": summary["feature_extraction"],
      "best_fine_tune": summary["best_fine_tune"],
      "fine_tuning_paid_off": summary["fine_tuning_paid_off"],
      "cpu_count": os.cpu_count(),
      "load_average_before_after": [round(load_before[0], 1), round(os.getloadavg()[0], 1)],
  }, indent=2))


if __name__ == "__main__":
  main()
