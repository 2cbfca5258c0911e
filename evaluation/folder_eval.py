"""`headswap evaluate`: any exported model on any labelled image folder, as JSON."""

from typing import Any, Dict, Optional

import numpy as np

from headswap.components import features
from headswap.components.image_example_gen import decode, sources
from headswap.evaluation.metrics import classification_report
from headswap.trainer import export


def evaluate_folder(model_path: str, data: str, labels_csv: Optional[str] = None,
                    max_pixels: int = sources.DEFAULT_MAX_PIXELS) -> Dict[str, Any]:
  classifier = export.ExportedModel(export.resolve_saved_model(model_path))
  listing = sources.list_images(data, labels_csv)
  unknown = sorted(set(listing.class_names) - set(classifier.class_names))
  if unknown:
    raise sources.IngestError(f"class {unknown[0]!r} of {data!r} is not one the model knows "
                              f"({', '.join(classifier.class_names)})")
  skipped = list(listing.skipped)
  encoded, labels = [], []
  for candidate in listing.candidates:
    try:
      # The ingest decoder: same checks and RGB conversion as the training images had.
      example = decode.to_example(decode.read_bytes(candidate.path), candidate.source, 0,
                                  candidate.label_name, max_pixels)
    except decode.SkipImage as reason:
      skipped.append((candidate.source, str(reason)))
      continue
    encoded.append(example.features.feature[features.IMAGE].bytes_list.value[0])
    labels.append(classifier.class_names.index(candidate.label_name))
  predicted = classifier.probabilities(encoded).argmax(axis=-1)
  report = classification_report(np.array(labels, dtype=int), predicted, classifier.class_names)
  report.update(model=classifier.path, data=data,
                skipped=[{"file": source, "reason": reason} for source, reason in skipped])
  return report
