"""The console: headswap's own story on screen, every library line in OUTPUT/logs/*.log."""

import glob
import os
import subprocess
import sys

from pipeline import console
from tests.conftest import write_class_folders

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOISE = ("FutureWarning", "oneDNN", "cuda", "absl", "Component ImageExampleGen is running")


def _one_log(folder):
  logs = glob.glob(os.path.join(folder, "headswap-*.log"))
  assert len(logs) == 1, logs
  with open(logs[0]) as f:
    return logs[0], f.read()


def test_ingest_prints_its_stages_and_sends_library_logs_to_the_log_file(tmp_path):
  data, output = write_class_folders(str(tmp_path / "data"), per_class=8), tmp_path / "out"
  done = subprocess.run([sys.executable, "-m", "pipeline.cli", "ingest", "--data", data,
                         "--output", str(output)], cwd=REPO, capture_output=True, text=True,
                        check=False)
  screen = done.stdout + done.stderr
  assert done.returncode == 0, screen[-5000:]
  path, log = _one_log(output / "logs")
  assert not [word for word in NOISE if word in screen], screen
  assert f"full log: {path}" in screen
  stages = [line.split()[0] for line in done.stderr.splitlines() if line.endswith(" s")]
  assert stages[:2] == ["ImageExampleGen", "StatisticsGen"], done.stderr
  assert "examples: " in done.stdout  # the closing lines, on stdout for scripts
  for word in ("FutureWarning", "oneDNN", "Component ImageExampleGen is running",
               "examples: ", "ImageExampleGen "):
    assert word in log, word


def test_subprocess_output_goes_to_the_log_and_to_the_screen_only_when_verbose(tmp_path, capfd):
  noise = [sys.executable, "-c", "import sys; print('child out'); print('child err', "
                                 "file=sys.stderr)"]
  for verbose in (False, True):
    folder = tmp_path / str(verbose)
    with console.session(str(folder), verbose, "test"):
      subprocess.run(noise, check=True)
      print("our story")
    screen = "".join(capfd.readouterr())
    _, log = _one_log(folder)
    for line in ("child out", "child err", "our story"):
      assert line in log
      assert (line in screen) == (verbose or line == "our story"), (verbose, line, screen)
