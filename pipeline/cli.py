"""`headswap`: a thin command-line shell over the pipeline stages.

Heavy imports (TensorFlow, TFX) happen inside the commands, so `headswap --help` is instant.
"""

import argparse
import sys

from headswap.components.image_example_gen import sources
from headswap.evaluation import cli as evaluation_cli
from headswap.pipeline import local_cli, remote_cli
from headswap.serving import cli as serving_cli
from headswap.trainer.backbones import cli as backbones_cli
from headswap.tuning import cli as tuning_cli


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="headswap", description="Folders of labelled photos to a served image classifier.")
  parser.add_argument("-v", "--verbose", action="store_true",
                      help="show every library log and warning too (TensorFlow, TFX, Beam); "
                           "they always go to the log file, OUTPUT/logs/headswap-*.log")
  commands = parser.add_subparsers(dest="command", required=True)

  # Each command module registers its own flags, in the order `headswap --help` lists them.
  local_cli.register(commands)
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
  from headswap.pipeline import console  # pylint: disable=import-outside-toplevel

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
