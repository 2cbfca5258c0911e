"""Training settings: defaults, overridden by the CLI's flags, then by the Tuner's best values."""

import dataclasses
import json
from typing import Any, Dict, Optional

AUGMENTATIONS = ("flip", "crop")  # see trainer/data.py augment


@dataclasses.dataclass
class HParams:
  # Two bases side by side ("+"; trainer/backbones/registry.py build_base): their features
  # concatenated beat either alone. Frozen features, heads on 2 views (2 seeds; logistic
  # regression): cats_vs_dogs Lite0 98.7-99.0% (99.0), Lite0+Lite1 99.3% (99.4), Lite0+Lite2
  # 99.0-99.3% (99.2), Lite1+Lite2 99.1-99.3% (99.3); cat_breeds Lite0 64.8-67.8% (67.8),
  # Lite0+Lite1 67.3-69.9% (71.4), Lite0+Lite2 70.0-70.4% (70.9), Lite1+Lite2 71.9-73.9%
  # (71.4). The base's cost per image is ~3.8x Lite0's.
  backbone: str = "efficientnet_lite1+efficientnet_lite2"
  weights: str = "imagenet"  # "imagenet", a weights file, or "none" (random: tests only)
  # Larger than the backbones' native 240 and 260 px: features of a net trained on random
  # crops are better taken from larger images ("FixRes", Touvron et al. 2019). Frozen features,
  # project head on image + mirror: cat_breeds 71.4% native, 76.4% at 300, 76.9% at 330 (1.4x
  # and 1.7x the base's compute); cats_vs_dogs, whole pipeline: 99.0% native, 99.4% at 300.
  image_size: int = 300  # 0: the backbone's native size
  head_units: int = 0  # 0: no hidden dense layer, pooled features straight to the softmax
  dropout: float = 0.2
  learning_rate: float = 1e-3
  epochs: int = 20  # phase 1 at most (early stopping usually ends it sooner)
  # Phase 1 stops early on the eval split's val_loss; the Tuner turns this off and gives the
  # epoch count its cross-validation found, so the head trains on every training image.
  stop_early: bool = True
  # The eval split trains too, both phases for the Tuner's epoch counts with no early stopping:
  # set when the gate has the user's test split to score on and the Tuner chose on held-out
  # data, so every labelled training photo the gate does not need trains the shipped model.
  fit_eval_split: bool = False
  fine_tune_blocks: int = 2  # 0 skips phase 2
  fine_tune_learning_rate: float = 0.0  # 0: learning_rate / 10
  fine_tune_epochs: int = 5
  patience: int = 3
  batch_size: int = 32  # per replica
  # Phase 1 on cached pooled features: a head's step is tiny, so Keras's per-step overhead
  # would dominate small batches.
  feature_batch_size: int = 256  # per replica
  augment: str = ",".join(AUGMENTATIONS)  # comma list, or "" for none
  # The fast paths train on cached outputs of this many views of each training image: the
  # image, its mirror, then augmented views (data.views; one pass of the base each). Heads on
  # cat_breeds (Lite0, 199 test photos): 1 view 66.8-68.8%, 2 views 68.8-70.4%, 4 views
  # 71.9-72.4%, but 4 did not beat 2 on Lite2 or Lite0+Lite2; 4 views cost cats_vs_dogs 84 s
  # of base passes.
  views: int = 2
  fast_feature_extraction: bool = True  # phase 1 on cached pooled features
  # Phase 2 on cached activations of the frozen bottom blocks (of every view), ~10x faster.
  fast_fine_tuning: bool = True
  cpu_replicas: int = 1  # >1 mirrors over that many logical CPU devices (see trainer/strategy.py)
  seed: int = 0

  def __post_init__(self):
    unknown = set(self.augmentations) - set(AUGMENTATIONS)
    if unknown:
      raise ValueError(f"unknown augmentation {sorted(unknown)[0]!r}; "
                       f"choose from {', '.join(AUGMENTATIONS)}")
    if (self.fine_tune_blocks < 0 or self.head_units < 0 or not 0 <= self.dropout < 1
        or self.views < 1):
      raise ValueError(f"invalid hyperparameters: {self}")

  @property
  def augmentations(self):
    return [name.strip() for name in self.augment.split(",") if name.strip()]

  @property
  def cached_views(self) -> int:
    """Views of each training image on the fast paths: one when nothing augments them."""
    return self.views if self.augmentations else 1

  @property
  def phase2_learning_rate(self) -> float:
    return self.fine_tune_learning_rate or self.learning_rate / 10

  @classmethod
  def from_sources(cls, custom_config: Optional[Dict[str, Any]] = None,
                   tuned: Optional[Dict[str, Any]] = None) -> "HParams":
    """Flags from the pipeline's custom_config, then the Tuner's values on top."""
    fields = {f.name: f.type for f in dataclasses.fields(cls)}
    values = {}
    for source in (custom_config or {}, tuned or {}):
      values.update({k: v for k, v in source.items() if k in fields})
    return cls(**values)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), sort_keys=True)
