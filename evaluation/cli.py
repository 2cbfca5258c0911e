"""`headswap evaluate` flags; the work is in folder_eval.py, imported only when it runs."""

import json

from headswap.components.image_example_gen.sources import DEFAULT_MAX_PIXELS


def register(commands):
  parser = commands.add_parser(
      "evaluate", help="evaluate an exported model on a labelled image folder (JSON)")
  parser.add_argument("--model", required=True,
                      help="a SavedModel, or a serving folder of numbered versions (newest used)")
  parser.add_argument("--data", required=True, help="labelled image folder (any ingest layout)")
  parser.add_argument("--labels", help="CSV of filename,label for the images in --data")
  parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
  parser.set_defaults(func=main)


def main(args):
  from headswap.evaluation.folder_eval import evaluate_folder

  print(json.dumps(evaluate_folder(args.model, args.data, args.labels, args.max_pixels),
                   indent=2))
