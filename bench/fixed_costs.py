"""Fixed-cost benchmark: `headswap run` with the defaults on a tiny set, where compute is
negligible and what remains is what headswap costs beyond it (start-up, imports, Beam and TFX
per component, trials' overheads, the report).

  .venv/bin/python bench/fixed_costs.py [--per-class 20] [headswap run flags...]

Writes 2 classes x --per-class training photos and 5 test photos per class (random 320x240
JPEGs, one tint per class) to a temporary folder, then runs bench/e2e.py on it without the
probe and prints its JSON: wall seconds per component, in total and before the first
component. Target (issue 16): <= 30 s wall.
"""

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

E2E = os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2e.py")
TINTS = {"red": (1.0, 0.6, 0.6), "blue": (0.6, 0.6, 1.0)}


def write_photos(root: str, per_class: int, seed: int = 0) -> None:
  rng = np.random.default_rng(seed)
  for split, count in (("train", per_class), ("test", 5)):
    for name, tint in TINTS.items():
      folder = os.path.join(root, split, name)
      os.makedirs(folder)
      for i in range(count):
        pixels = rng.uniform(0, 255, (240, 320, 3)) * np.array(tint)
        Image.fromarray(pixels.astype(np.uint8)).save(os.path.join(folder, f"{i}.jpg"))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
  parser.add_argument("--per-class", type=int, default=20, help="training photos per class")
  args, headswap_flags = parser.parse_known_args()
  with tempfile.TemporaryDirectory(prefix="headswap-fixed-costs-") as data:
    write_photos(data, args.per_class)
    sys.exit(subprocess.run([sys.executable, E2E, "--data", data, "--no-probe",
                             *headswap_flags]).returncode)


if __name__ == "__main__":
  main()
