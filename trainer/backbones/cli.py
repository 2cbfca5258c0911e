"""`headswap imagenet-predict` and `headswap layers`: look inside a backbone before using it."""

import sys

from headswap.components import features
from headswap.components.image_example_gen.sources import DEFAULT_MAX_PIXELS


def register(commands):
  predict = commands.add_parser("imagenet-predict",
                                help="top-5 ImageNet labels of images, by a backbone's own head")
  predict.add_argument("images", nargs="+", metavar="IMG")
  predict.add_argument("--backbone", default="efficientnet_lite0")
  predict.add_argument("--top", type=int, default=5)
  predict.set_defaults(func=imagenet_predict_main)

  layers = commands.add_parser("layers", help="a backbone's layers, blocks and trainable flags")
  layers.add_argument("--backbone", default="efficientnet_lite0")
  layers.add_argument("--weights", default="none",
                      help='"imagenet", a weights file, or "none" (the structure is the same)')
  layers.add_argument("--fine-tune-blocks", type=int, default=0,
                      help="show the flags as fine-tuning the top K blocks would set them")
  layers.set_defaults(func=layers_main)


def _or_exit(command, action):
  """action(), or an exit with the reason (weights missing or changed, unknown backbone, too
  many blocks) instead of a traceback."""
  try:
    return action()
  except (FileNotFoundError, ValueError) as error:  # WeightsUnavailable/MismatchError too
    sys.exit(f"headswap {command}: {error}")


PREDICT_BATCH = 32


def imagenet_predict_main(args):
  import numpy as np  # pylint: disable=import-outside-toplevel

  from headswap.components.image_example_gen import decode  # pylint: disable=import-outside-toplevel
  from headswap.trainer import preprocessing  # pylint: disable=import-outside-toplevel
  from headswap.trainer.backbones import imagenet  # pylint: disable=import-outside-toplevel

  model = _or_exit("imagenet-predict", lambda: imagenet.classifier(args.backbone))
  for start in range(0, len(args.images), PREDICT_BATCH):
    paths = args.images[start:start + PREDICT_BATCH]
    pixels, skipped = {}, {}
    for path in paths:  # decoded as the pipeline decodes its images
      try:
        example = decode.to_example(decode.read_bytes(path), path, 0, "", DEFAULT_MAX_PIXELS)
      except decode.SkipImage as reason:
        skipped[path] = reason
        continue
      image = example.features.feature[features.IMAGE].bytes_list.value[0]
      pixels[path] = preprocessing.decode_image(image, model.input_shape[1])
    # An eager call: tracing model.predict costs more than running a few images.
    probabilities = dict(zip(pixels, np.asarray(
        model(np.stack(list(pixels.values())), training=False)))) if pixels else {}
    for path in paths:
      if path in skipped:
        print(f"{path}: skipped ({skipped[path]})")
        continue
      print(path)
      for index in np.argsort(-probabilities[path])[:args.top]:
        print(f"  {probabilities[path][index]:.4f}  {imagenet.label(index)}")


def layers_main(args):
  import math  # pylint: disable=import-outside-toplevel

  from headswap.trainer.backbones import registry  # pylint: disable=import-outside-toplevel

  model = _or_exit("layers", lambda: registry.build_base(args.backbone, args.weights))
  if args.fine_tune_blocks:
    _or_exit("layers", lambda: registry.unfreeze_top_blocks(model, args.fine_tune_blocks))
  else:
    model.trainable = False
  block_of = {id(layer): f"{index} {name}"
              for index, (name, members) in enumerate(registry.named_blocks(model).items())
              for layer in members}
  print(f"{'index':>5}  {'name':40s} {'type':24s} {'block':18s} trainable")
  for index, layer in enumerate(model.layers):
    print(f"{index:5d}  {layer.name:40s} {type(layer).__name__:24s} "
          f"{block_of.get(id(layer), '-'):18s} {layer.trainable}")
  count = lambda weights: sum(math.prod(w.shape) for w in weights)
  print(f"{len(set(block_of.values()))} blocks; trainable params "
        f"{count(model.trainable_weights):,}, non-trainable params "
        f"{count(model.non_trainable_weights):,}")
