"""The Evaluator's gate defaults, in one module light enough for the CLI's help to state them
(pipeline/pipeline.py applies them, pipeline/flags.py describes them)."""

# The default accuracy floor lies this share of the way from chance (1/classes) to 1: 0.75 for two
# classes, 0.55 for ten, 0.505 for a hundred. A fixed floor is near chance for few classes (0.6
# for two) and out of reach for many.
FLOOR_ABOVE_CHANCE = 0.5
# A blessed model may be this much less accurate than the most accurate blessed one.
MAX_ACCURACY_DROP = 0.01


def default_accuracy_floor(num_classes: int) -> float:
  chance = 1 / num_classes
  return chance + FLOOR_ABOVE_CHANCE * (1 - chance)
