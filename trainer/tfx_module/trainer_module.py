"""The TFX Trainer's module file.

It sits alone in its folder because TFX fingerprints every .py file beside a module file:
unrelated edits elsewhere must not re-run training. The pipeline adds a fingerprint of the
trainer/ code to custom_config, so real changes to training still do.
"""

from headswap.trainer.task import run_fn  # pylint: disable=unused-import
