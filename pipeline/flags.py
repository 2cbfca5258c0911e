"""The flags several commands share, each declared once, and the readers of their values.

A leaf: the command modules (pipeline/local_cli.py, pipeline/remote_cli.py, tuning/cli.py)
import it, and it imports none of them. Heavy imports happen inside the functions, so
`headswap --help` stays instant.
"""

import argparse
import os
import re

from headswap.components.image_example_gen import sources
from headswap.pipeline import gate

DEFAULT_OUTPUT = "output"
# The search flags, by dest, and the tuning.space.SearchSpace field each sets.
SEARCH_SPACE_FIELDS = {"max_trials": "head_trials", "depth_trials": "depth_trials",
                       "tune_seconds": "seconds",
                       "always_train_depth_trials": "always_train_depth_trials"}


def add_data_arguments(parser, output=True):
  """The flags of the data to ingest; output=False leaves --output to the command."""
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
  if output:
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


def add_training_arguments(parser):
  """One flag per trainer.hparams.HParams field; only flags given reach the Trainer."""
  import dataclasses  # pylint: disable=import-outside-toplevel

  from headswap.trainer.hparams import HParams  # pylint: disable=import-outside-toplevel

  group = parser.add_argument_group("training (defaults in trainer/hparams.py)")
  for field in dataclasses.fields(HParams):
    flag = "--" + field.name.replace("_", "-")
    if field.type is bool or isinstance(field.default, bool):
      group.add_argument(flag, dest=f"hp_{field.name}", action=argparse.BooleanOptionalAction,
                         default=None)
    else:
      group.add_argument(flag, dest=f"hp_{field.name}", type=type(field.default), default=None,
                         help=f"default: {field.default!r}")


def add_search_arguments(group):
  """The search's budget, into the command's own argument group (defaults in tuning/space.py)."""
  group.add_argument("--max-trials", type=int, help="head trials on cached features")
  group.add_argument("--depth-trials", type=int, help="fine-tune depth trials")
  group.add_argument("--tune-seconds", type=float, help="time budget of the search")
  group.add_argument("--always-train-depth-trials", action=argparse.BooleanOptionalAction,
                     default=None,
                     help="train the depth trials even when the head's eval accuracy leaves "
                          "fine-tuning no room to be kept (by default they train nothing then)")


def add_pipeline_arguments(parser, output=True):
  """Every flag of the whole pipeline: `headswap run`'s, and `headswap compile`'s with its own
  --output (output=False)."""
  add_data_arguments(parser, output)
  add_training_arguments(parser)
  tune = parser.add_argument_group("tuning (KerasTuner; ranges in tuning/space.py)")
  tune.add_argument("--tune", action=argparse.BooleanOptionalAction, default=True,
                    help="search head and fine-tune depth before training (--no-tune skips it)")
  add_search_arguments(tune)
  parser.add_argument("--accuracy-threshold", type=float,
                      help="the Evaluator blesses (and the Pusher ships) only models at least "
                           "this accurate on the gate's split, test/ if given, else eval "
                           "(default: halfway from chance, 1/classes, to 1: "
                           f"{gate.default_accuracy_floor(2):g} for two classes, "
                           f"{gate.default_accuracy_floor(10):g} for ten)")
  parser.add_argument("--max-accuracy-drop", type=float, default=gate.MAX_ACCURACY_DROP,
                      help="... and no more than this below the most accurate blessed model")
  parser.add_argument("--tflite", action=argparse.BooleanOptionalAction, default=False,
                      help="also write model.tflite (float16) and model_int8.tflite (int8) "
                           "beside the SavedModel, pushed with it, and score them in the "
                           "report (README: what they cost)")


def given_hparams(args):
  """{HParams field: value} of the training flags given."""
  return {key[3:]: value for key, value in vars(args).items()
          if key.startswith("hp_") and value is not None}


def given_search_space(args):
  """{SearchSpace field: value} of the search flags given."""
  return {field: getattr(args, flag) for flag, field in SEARCH_SPACE_FIELDS.items()
          if getattr(args, flag, None) is not None}


def pipeline_name(args) -> str:
  """Kubeflow needs [a-z0-9][a-z0-9-]*; the same name everywhere keeps caches shared."""
  raw = args.name or os.path.basename(os.path.normpath(args.data.replace(":", "-"))) or "images"
  return re.sub(r"[^a-z0-9-]+", "-", raw.lower()).strip("-") or "images"


def pipeline_config(args, stages):
  """The PipelineConfig of the flags add_data_arguments (and add_pipeline_arguments) declare,
  after listing --data for its classes and layout."""
  from headswap.pipeline.pipeline import PipelineConfig  # pylint: disable=import-outside-toplevel

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
      hparams=given_hparams(args), serving_dir=os.path.join(args.output, "serving", name),
      # `ingest` has no gate or tuning flags: the config's defaults stand.
      accuracy_threshold=getattr(args, "accuracy_threshold", None),
      max_accuracy_drop=getattr(args, "max_accuracy_drop", gate.MAX_ACCURACY_DROP),
      allow_anomalies=args.allow_anomalies, tflite=getattr(args, "tflite", False),
      tune=getattr(args, "tune", False), search_space=given_search_space(args))
