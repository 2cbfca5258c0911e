"""`headswap imagenet-predict` and `headswap layers`: look inside a backbone before using it."""

from components import features
from components.image_example_gen.sources import DEFAULT_MAX_PIXELS


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


def imagenet_predict_main(args):
  import numpy as np  # pylint: disable=import-outside-toplevel

  from components.image_example_gen import decode  # pylint: disable=import-outside-toplevel
  from trainer import preprocessing  # pylint: disable=import-outside-toplevel
  from trainer.backbones import imagenet  # pylint: disable=import-outside-toplevel

  model = imagenet.classifier(args.backbone)
  size = model.input_shape[1]
  for path in args.images:
    try:
      example = decode.to_example(decode.read_bytes(path), path, 0, "", DEFAULT_MAX_PIXELS)
    except decode.SkipImage as reason:
      print(f"{path}: skipped ({reason})")
      continue
    pixels = preprocessing.decode_image(example.features.feature[features.IMAGE].bytes_list.value[0],
                                        size)
    probabilities = model.predict(pixels[None], verbose=0)[0]
    print(path)
    for index in np.argsort(-probabilities)[:args.top]:
      print(f"  {probabilities[index]:.4f}  {imagenet.label(index)}")


def layers_main(args):
  from trainer.backbones import registry  # pylint: disable=import-outside-toplevel

  model = registry.build_base(args.backbone, args.weights)
  if args.fine_tune_blocks:
    registry.unfreeze_top_blocks(model, args.fine_tune_blocks)
  else:
    model.trainable = False
  block_of = {id(layer): index for index, block in enumerate(registry.blocks(model))
              for layer in block}
  print(f"{'index':>5}  {'name':40s} {'type':24s} {'block':>5}  trainable")
  for index, layer in enumerate(model.layers):
    block = block_of.get(id(layer), "-")
    print(f"{index:5d}  {layer.name:40s} {type(layer).__name__:24s} {block!s:>5}  "
          f"{layer.trainable}")
  trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
  frozen = sum(int(w.numpy().size) for w in model.non_trainable_weights)
  print(f"{len(registry.blocks(model))} blocks; trainable params {trainable:,}, "
        f"non-trainable params {frozen:,}")
