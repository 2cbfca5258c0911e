"""The console: headswap's own story on screen, every library line in OUTPUT/logs/*.log."""

import glob
import io
import logging
import os
import subprocess
import sys

from headswap.components import progress
from headswap.pipeline import console
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
  done = subprocess.run([sys.executable, "-m", "headswap.pipeline.cli", "ingest", "--data", data,
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


def _progress_lines(text, description):
  return [line for line in text.splitlines() if f"  {description}: " in line]


def test_plain_progress_is_a_few_lines_whatever_the_steps_and_nested_steps_write_none(
    tmp_path, capfd, monkeypatch):
  monkeypatch.setattr(progress, "PLAIN_SECONDS", float("inf"))  # the tenths alone: no clock
  with console.session(str(tmp_path), False, "test"):  # pytest's capture: not a terminal
    with progress.progress("outer step", total=1000, unit="images") as advance:
      for _ in range(1000):
        with progress.progress("inner step", total=3) as advance_inner:
          advance_inner(3)
        advance()
  screen = "".join(capfd.readouterr())
  _, log = _one_log(tmp_path)
  for text in (screen, log):
    lines = _progress_lines(text, "outer step")
    assert len(lines) == 1 + (progress.PLAIN_STEPS - 1) + 1, lines  # start, tenths, end
    assert lines[0].endswith("outer step: 0/1000 images")
    assert "outer step: 500/1000 images (50%), " in lines[5]
    assert "outer step: done, 1000/1000 images in " in lines[-1]
    assert not _progress_lines(text, "inner step")


def test_progress_outside_a_session_prints_nothing(capfd):
  with progress.progress("a step", total=2) as advance:
    advance(2)
  with progress.progress("a step of unknown length") as advance:
    advance()
  with progress.progress("an empty step", total=0) as advance:
    advance()
  assert not "".join(capfd.readouterr())


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_on_a_terminal_a_bar_is_drawn_and_the_log_gets_start_and_end(caplog):
  terminal = _Terminal()
  caplog.set_level(logging.INFO, logger="headswap")
  with progress.bars_on(terminal):
    with progress.progress("drawn step", total=4, unit="epochs") as advance:
      for _ in range(4):
        advance()
  assert "drawn step" in terminal.getvalue()
  lines = [(record.name, record.getMessage()) for record in caplog.records]
  assert lines[0] == ("headswap.progress", "  drawn step: 0/4 epochs")
  assert lines[-1][1].startswith("  drawn step: done, 4/4 epochs in ")
  assert "headswap.console" not in {name for name, _ in lines}  # the bar shows it on screen
