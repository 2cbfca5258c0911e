"""`headswap ingest` and `headswap run`: the pipeline on this machine (work in
pipeline/local_runner.py)."""

import os
import sys

from headswap.pipeline import flags


def register(commands):
  ingest = commands.add_parser("ingest", help="ingest images into TFRecords and validate them")
  flags.add_data_arguments(ingest)
  ingest.set_defaults(func=cmd_ingest)

  run = commands.add_parser("run", help="run the whole pipeline locally")
  flags.add_pipeline_arguments(run)
  run.set_defaults(func=cmd_run)


def cmd_ingest(args):
  _run_pipeline(args, "ingest")


def cmd_run(args):
  from headswap.evaluation.report import write_report
  from headswap.pipeline import local_runner

  artifacts = _run_pipeline(args, "all")
  report = write_report(os.path.join(args.output, "report"), artifacts)
  if "Evaluator.blessing" in artifacts:  # the closing summary: each phase, then the gate's verdict
    scores = [f"{accuracy:.4f} after phase {phase}" for phase, accuracy in
              sorted(report.accuracy.items())]
    if report.phase_2_trained and 2 not in report.accuracy:
      scores.append("phase 2 not kept")
    print(f"{report.split} accuracy: {', '.join(scores)}")
    pushed = local_runner.pushed_destination(_metadata_file(args))
    print(f"gate: blessed, pushed to {pushed}" if pushed
          else "gate: not blessed, not pushed (the report's Gate section says why)")
  print(f"report: {report.path}")


def _run_pipeline(args, stages):
  cpu_replicas = flags.given_hparams(args).get("cpu_replicas", 1)
  if cpu_replicas > 1:
    from headswap.trainer.strategy import configure_cpu_devices
    configure_cpu_devices(cpu_replicas)  # before anything initialises TensorFlow
  metadata_file = _metadata_file(args)  # before the slow imports and listing the data

  from headswap.components import features, filesystem
  from headswap.components.image_example_gen.executor import summarize
  from headswap.pipeline import local_runner

  artifacts = local_runner.run(flags.pipeline_config(args, stages), metadata_file,
                               args.beam_args.split())
  examples = artifacts["ImageExampleGen.examples"]
  print(summarize(filesystem.read_json(os.path.join(examples, features.REPORT_FILE))))
  print(f"examples: {examples}")
  return artifacts


def _metadata_file(args) -> str:
  from headswap.components import filesystem

  if args.metadata:
    return args.metadata
  if filesystem.is_remote(args.output):
    sys.exit(f"headswap: --output {args.output} is not on this machine, and ML Metadata is a "
             "local SQLite file: give --metadata PATH")
  from headswap.pipeline import local_runner
  return local_runner.metadata_path(args.output)
