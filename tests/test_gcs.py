"""headswap with its data, artifacts and served models on gs://, in a local Cloud Storage
emulator (tests/gcs.py); only ML Metadata's SQLite file stays on this machine.

Each command runs in a subprocess: TensorFlow reads the emulator's settings when imported.
"""

import os
import subprocess
import sys
import time

import httpx
import pytest

from headswap.pipeline import cli
from tests.conftest import write_class_folders

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def headswap(gcs, *args) -> str:
  """`headswap ARGS` against the emulator; its stdout."""
  done = subprocess.run([sys.executable, "-m", "headswap.pipeline.cli", *args], cwd=REPO,
                        env=gcs.env, capture_output=True, text=True, check=False)
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
  (flat / "huge.jpg").write_bytes(bytes(200_000))  # over --max-file-bytes: never read
  rows.append("huge.jpg,cats")
  data = gcs.upload(str(flat), "photos")
  gcs.write("labels.csv", "\n".join(rows).encode())

  printed = headswap(gcs, "ingest", "--data", data, "--labels", gcs.gs("labels.csv"),
                     "--output", gcs.gs("out"), "--metadata", str(tmp_path / "metadata.sqlite"),
                     "--max-file-bytes", "100000")

  assert "12 examples, 2 classes (csv layout)" in printed
  assert ".hidden.jpg: not in the labels CSV" in printed
  assert "huge.jpg: 200,000 bytes: larger than the file size limit" in printed
  written = gcs.names("out/tfx/ImageExampleGen/examples/")
  assert any("/Split-train/" in name for name in written)
  assert any(name.endswith("/ingest_report.json") for name in written)


def test_a_gs_output_needs_a_local_metadata_file(folders_dataset):
  with pytest.raises(SystemExit, match="give --metadata PATH"):
    cli.main(["ingest", "--data", folders_dataset, "--output", "gs://bucket/out"])


# Measured: 262,144 bytes read fine, 262,145 abort the process, whoever wrote the object.
def test_serving_lists_the_pushed_versions_on_gs(gcs):
  for name in ("1/saved_model.pb", "12/saved_model.pb", "12/variables/variables.index",
               ".staging-7-1/saved_model.pb", "notes.txt"):
    gcs.write(f"serving/pets/{name}", b"not read")
  script = ("import sys; from trainer import export; "
            "print(sorted(export.version_paths(sys.argv[1])), "
            "export.resolve_saved_model(sys.argv[1]), export.version_paths(sys.argv[2]))")
  done = subprocess.run([sys.executable, "-c", script, gcs.gs("serving/pets"),
                         gcs.gs("serving/none")], cwd=REPO, env=gcs.env, capture_output=True,
                        text=True, check=True)
  assert done.stdout.split("\n")[-2] == f"[1, 12] {gcs.gs('serving/pets/12')} {{}}"


def wait_until_serving(url, server, timeout_s=240):
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    if server.poll() is not None:
      raise AssertionError(server.stderr.read().decode()[-5000:])
    try:
      if httpx.get(url).status_code == 200:
        return
    except httpx.TransportError:
      pass
    time.sleep(1)
  raise AssertionError(f"{url} did not answer within {timeout_s} s")
