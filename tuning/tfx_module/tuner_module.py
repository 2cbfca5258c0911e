"""The TFX Tuner's module file; alone in its folder for the same reason as the Trainer's
(trainer/tfx_module/trainer_module.py): TFX fingerprints every .py file beside it."""

from headswap.tuning.component import tuner_fn  # pylint: disable=unused-import
