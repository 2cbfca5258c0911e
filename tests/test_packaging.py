"""The installed package: the design card's folders under one `headswap` name in site-packages."""

import json
import os
import shutil
import subprocess
import sys
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDERS = ("components", "pipeline", "trainer", "tuning", "serving", "evaluation")

# Imports every module of the installed copy, outside the checkout, and reports what it loaded.
IMPORT_ALL = """
import importlib, json, pkgutil, sys
import headswap
names = [module.name for module in pkgutil.walk_packages(headswap.__path__, "headswap.")]
for name in names:
  importlib.import_module(name)
print(json.dumps({"names": names, "files": [sys.modules[name].__file__ for name in names],
                  "bare": sorted(set(sys.modules) & set(%r))}))
"""


def test_the_wheel_installs_only_headswap_and_imports_without_the_checkout(tmp_path):
  source, wheels, target = tmp_path / "source", tmp_path / "wheels", tmp_path / "site"
  # A copy: setuptools writes build/ and *.egg-info beside setup.py.
  for folder in FOLDERS:
    shutil.copytree(os.path.join(REPO, folder), source / folder,
                    ignore=shutil.ignore_patterns("__pycache__"))
  shutil.copy(os.path.join(REPO, "setup.py"), source)
  subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                  "-w", str(wheels), str(source)], check=True, capture_output=True)
  wheel, = wheels.iterdir()
  with zipfile.ZipFile(wheel) as archive:
    entries = archive.namelist()
    entry_points, = [name for name in entries if name.endswith("entry_points.txt")]
    assert "headswap = headswap.pipeline.cli:main" in archive.read(entry_points).decode()
  assert {name.split("/")[0] for name in entries if ".dist-info/" not in name} == {"headswap"}
  assert "headswap/trainer/backbones/efficientnet_lite.py" in entries

  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                  str(target), str(wheel)], check=True, capture_output=True)
  done = subprocess.run([sys.executable, "-c", IMPORT_ALL % (FOLDERS,)], cwd=str(tmp_path),
                        env={**os.environ, "PYTHONPATH": str(target)}, capture_output=True,
                        text=True, check=False)
  assert done.returncode == 0, done.stderr[-5000:]
  loaded = json.loads(done.stdout.splitlines()[-1])
  assert {f"headswap.{folder}" for folder in FOLDERS} <= set(loaded["names"])
  assert all(path.startswith(str(target)) for path in loaded["files"]), loaded["files"]
  assert loaded["bare"] == []  # no module imports `pipeline` or `trainer` by its bare name
