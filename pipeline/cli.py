"""`headswap`: a thin command-line shell over the pipeline stages.

Heavy imports (TensorFlow, TFX) happen inside the commands, so `headswap --help` is instant.
"""

import argparse
import os
import re
import sys

from components.image_example_gen import sources
from evaluation import cli as evaluation_cli
from pipeline import remote_cli
from serving import cli as serving_cli
from trainer.backbones import cli as backbones_cli
from tuning import cli as tuning_cli

DEFAULT_OUTPUT = "output"


def _add_data_arguments(parser):
  parser.add_argument("--data", required=True,
                      help="image folder, local or gs:// (root/<class>/*, "
                           "root/train|test/<class>/*, or images with --labels) or tfds:<name> "
                           "for a TensorFlow Datasets dataset")
  parser.add_argument("--labels",
                      help="CSV of filename,label for the images in --data, local or gs://")
  parser.add_argument("--file-column",
                      help="the --labels column of file names (default: one named "
                           f"{'/'.join(sources.FILENAME_COLUMNS)}, or the first of two)")
  parser.add_argument("--label-column",
                      help="the --labels column of labels (default: one named "
                           f"{'/'.join(sources.LABEL_COLUMNS)}, or the other of two)")
  parser.add_argument("--allow-outside-root", action="store_true",
                      help="read symlinks and --labels rows that lead outside --data "
                           "(skipped by default)")
  parser.add_argument("--output", default=DEFAULT_OUTPUT,
                      help="folder for artifacts, metadata, served models and the report, "
                           "local or gs://")
  parser.add_argument("--metadata",
                      help="ML Metadata's SQLite file, on this machine (default: "
                           "OUTPUT/metadata.sqlite; required when --output is gs://)")
  parser.add_argument("--name", help="pipeline name (default: from the data folder)")
  parser.add_argument("--eval-percent", type=int, default=sources.DEFAULT_EVAL_PERCENT,
                      help="share of the training images held out for evaluation, by hash")
  parser.add_argument("--max-pixels", type=int, default=sources.DEFAULT_MAX_PIXELS,
                      help="images with more pixels are skipped as decompression bombs")
  parser.add_argument("--max-file-bytes", type=int, default=sources.DEFAULT_MAX_FILE_BYTES,
                      help="larger files are skipped without being read")
  parser.add_argument("--tfds-data-dir", help="TensorFlow Datasets data dir for tfds:<name>")
  parser.add_argument("--allow-anomalies", action="store_true",
                      help="go on when the ExampleValidator finds anomalies in the data (a class "
                           "missing from a split, ...); by default they stop the run")
  parser.add_argument("--beam-args", default="",
                      help='Beam pipeline args, e.g. "--direct_num_workers=2 '
                           '--direct_running_mode=multi_processing"')


def _add_training_arguments(parser):
  """One flag per trainer.hparams.HParams field; only flags given reach the Trainer."""
  import dataclasses

  from trainer.hparams import HParams

  group = parser.add_argument_group("training (defaults in trainer/hparams.py)")
  for field in dataclasses.fields(HParams):
    flag = "--" + field.name.replace("_", "-")
    if field.type is bool or isinstance(field.default, bool):
      group.add_argument(flag, dest=f"hp_{field.name}", action=argparse.BooleanOptionalAction,
                         default=None)
    else:
      group.add_argument(flag, dest=f"hp_{field.name}", type=type(field.default), default=None,
                         help=f"default: {field.default!r}")


def _given_hparams(args):
  return {key[3:]: value for key, value in vars(args).items()
          if key.startswith("hp_") and value is not None}


def _given_search_space(args):
  names = {"max_trials": "head_trials", "depth_trials": "depth_trials",
           "tune_seconds": "seconds"}
  return {field: getattr(args, flag) for flag, field in names.items()
          if getattr(args, flag, None) is not None}


def pipeline_name(args) -> str:
  """Kubeflow needs [a-z0-9][a-z0-9-]*; the same name everywhere keeps caches shared."""
  raw = args.name or os.path.basename(os.path.normpath(args.data.replace(":", "-"))) or "images"
  return re.sub(r"[^a-z0-9-]+", "-", raw.lower()).strip("-") or "images"


def _config(args, stages):
  from pipeline.pipeline import PipelineConfig

  listing_options = dict(file_column=args.file_column, label_column=args.label_column,
                         allow_outside_root=args.allow_outside_root)
  found = sources.preflight(args.data, args.labels, args.tfds_data_dir, **listing_options)
  name = pipeline_name(args)
  return PipelineConfig(
      name=name, root=os.path.join(args.output, "tfx"), data=args.data,
      labels_csv=args.labels, tfds_data_dir=args.tfds_data_dir, **listing_options,
      eval_percent=args.eval_percent, max_pixels=args.max_pixels,
      max_file_bytes=args.max_file_bytes,
      num_classes=len(found.class_names), num_images=found.images,
      has_test_split=found.has_test_split, stages=stages,
      hparams=_given_hparams(args), serving_dir=os.path.join(args.output, "serving", name),
      accuracy_threshold=getattr(args, "accuracy_threshold", None),
      max_accuracy_drop=getattr(args, "max_accuracy_drop", 0.01),
      allow_anomalies=args.allow_anomalies,
      tune=getattr(args, "tune", False), search_space=_given_search_space(args))


def _run_pipeline(args, stages):
  cpu_replicas = _given_hparams(args).get("cpu_replicas", 1)
  if cpu_replicas > 1:
    from trainer.strategy import configure_cpu_devices
    configure_cpu_devices(cpu_replicas)  # before anything initialises TensorFlow
  metadata_file = _metadata_file(args)  # before the slow imports and listing the data
  from components import features, filesystem
  from components.image_example_gen.executor import summarize
  from pipeline import local_runner

  artifacts = local_runner.run(_config(args, stages), metadata_file, args.beam_args.split())
  examples = artifacts["ImageExampleGen.examples"]
  print(summarize(filesystem.read_json(os.path.join(examples, features.REPORT_FILE))))
  print(f"examples: {examples}")
  return artifacts


def _metadata_file(args) -> str:
  from components import filesystem

  if args.metadata:
    return args.metadata
  if filesystem.is_remote(args.output):
    sys.exit(f"headswap: --output {args.output} is not on this machine, and ML Metadata is a "
             "local SQLite file: give --metadata PATH")
  from pipeline import local_runner
  return local_runner.metadata_path(args.output)


def cmd_ingest(args):
  _run_pipeline(args, "ingest")


def cmd_run(args):
  from evaluation.report import write_report
  from evaluation.tfma_results import blessed
  from pipeline.baseline import evaluated_accuracies

  artifacts = _run_pipeline(args, "all")
  if "Evaluator.evaluation" in artifacts:  # the closing summary: what the gate measured
    accuracy = evaluated_accuracies(artifacts["Evaluator.evaluation"])["candidate"]
    verdict = ("blessed and pushed" if blessed(artifacts["Evaluator.blessing"])
               else "not blessed, not pushed")
    print(f"accuracy {accuracy:.4f} on the gate's split: {verdict}")
  print(f"report: {write_report(os.path.join(args.output, 'report'), artifacts)}")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="headswap", description="Folders of labelled photos to a served image classifier.")
  parser.add_argument("-v", "--verbose", action="store_true",
                      help="show every library log and warning too (TensorFlow, TFX, Beam); "
                           "they always go to the log file, OUTPUT/logs/headswap-*.log")
  commands = parser.add_subparsers(dest="command", required=True)

  ingest = commands.add_parser("ingest", help="ingest images into TFRecords and validate them")
  _add_data_arguments(ingest)
  ingest.set_defaults(func=cmd_ingest)

  run = commands.add_parser("run", help="run the whole pipeline locally")
  _add_data_arguments(run)
  _add_training_arguments(run)
  tune = run.add_argument_group("tuning (KerasTuner; ranges in tuning/space.py)")
  tune.add_argument("--tune", action=argparse.BooleanOptionalAction, default=True,
                    help="search head and fine-tune depth before training (--no-tune skips it)")
  tune.add_argument("--max-trials", type=int, help="head trials on cached features")
  tune.add_argument("--depth-trials", type=int, help="fine-tune depth trials")
  tune.add_argument("--tune-seconds", type=float, help="time budget of the search")
  run.add_argument("--accuracy-threshold", type=float,
                   help="the Evaluator blesses (and the Pusher ships) only models at least this "
                        "accurate on the gate's split, test/ if given, else eval (default: "
                        "halfway from chance, 1/classes, "
                        "to 1: 0.75 for two classes, 0.55 for ten)")
  run.add_argument("--max-accuracy-drop", type=float, default=0.01,
                   help="... and no more than this below the most accurate blessed model")
  run.set_defaults(func=cmd_run)
  # The other commands live with their stage; each module registers its own flags.
  evaluation_cli.register(commands)
  remote_cli.register(commands)
  tuning_cli.register(commands)
  backbones_cli.register(commands)
  serving_cli.register(commands)
  return parser


# Commands whose --output is a folder: their logs go in OUTPUT/logs.
OUTPUT_FOLDER_COMMANDS = ("ingest", "run", "tune")


def main(argv=None):
  args = build_parser().parse_args(argv)
  from pipeline import console  # pylint: disable=import-outside-toplevel

  output = getattr(args, "output", None) if args.command in OUTPUT_FOLDER_COMMANDS else None
  # A server's request and error logs belong on its console: containers collect them there.
  verbose = args.verbose or args.command == "serve"
  with console.session(console.log_dir(output), verbose, args.command):
    try:
      args.func(args)
    except sources.IngestError as error:
      sys.exit(f"headswap: {error}")


if __name__ == "__main__":
  main()
