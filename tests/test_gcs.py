"""headswap with its data, artifacts and served models on gs://, in a local Cloud Storage
emulator (tests/gcs.py); only ML Metadata's SQLite file stays on this machine.

Each command runs in a subprocess: TensorFlow reads the emulator's settings when imported.
"""

import os
import subprocess
import sys

from tests.conftest import write_class_folders

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def headswap(gcs, *args) -> str:
  """`headswap ARGS` against the emulator; its stdout."""
  done = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, env=gcs.env,
                        capture_output=True, text=True, check=False)
  assert done.returncode == 0, done.stderr[-5000:]
  return done.stdout


def test_ingest_reads_images_and_labels_csv_from_gs(gcs, tmp_path):
  folders = write_class_folders(str(tmp_path / "folders"), per_class=6)
  flat = tmp_path / "flat"
  flat.mkdir()
  rows = ["file,label"]
  for class_name in sorted(os.listdir(folders)):
    for name in sorted(os.listdir(os.path.join(folders, class_name))):
      os.rename(os.path.join(folders, class_name, name), flat / name)
      rows.append(f"{name},{class_name}")
  (flat / ".hidden.jpg").write_bytes(b"not read")
  data = gcs.upload(str(flat), "photos")
  gcs.write("labels.csv", "\n".join(rows).encode())

  printed = headswap(gcs, "ingest", "--data", data, "--labels", gcs.gs("labels.csv"),
                     "--output", gcs.gs("out"), "--metadata", str(tmp_path / "metadata.sqlite"))

  assert "12 examples, 2 classes (csv layout)" in printed
  assert ".hidden.jpg: not in the labels CSV" in printed
  written = gcs.names("out/tfx/ImageExampleGen/examples/")
  assert any("/Split-train/" in name for name in written)
  assert any(name.endswith("/ingest_report.json") for name in written)
