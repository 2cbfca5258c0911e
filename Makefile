# The two commands of the README:
#   make run DATA=../shared/datasets/cats_vs_dogs   creates .venv if needed, runs the pipeline
#   make test                                       creates .venv if needed, runs the tests
DATA ?= ../shared/datasets/cats_vs_dogs
OUTPUT ?= output
ARGS ?=
VENV := .venv
# TFX 1.16 needs Python 3.9-3.10: the first python3.10 that runs (PATH, then pyenv's versions;
# pyenv's shim exists even when 3.10 is not selected, so each candidate is tried).
PYTHON310 ?= $(shell for p in python3.10 $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.10*/bin/python3.10; do \
	$$p -c '' 2>/dev/null && { echo $$p; break; }; done)

.PHONY: run test lock

run: $(VENV)/.installed
	$(VENV)/bin/headswap run --data $(DATA) --output $(OUTPUT) $(ARGS)

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest tests $(ARGS)

# Pins every dependency of requirements.in with the sha256 of each file PyPI serves for it, so
# the install refuses a file that changed; pip's resolver takes many minutes on this set.
lock: $(VENV)/.installed
	$(VENV)/bin/python -m uv pip compile --python-version 3.10 --generate-hashes requirements.in \
		-o requirements.lock

# Every file is checked against the lock's hashes, uv itself too: sed cuts uv's entry out of the
# lock (its pin, then hash lines up to the first line not ending in a backslash).
$(VENV)/.installed: requirements.lock setup.py
	@test -n "$(PYTHON310)" || { echo "headswap needs Python 3.10 (TFX 1.16): install it or set PYTHON310=/path/to/python3.10"; exit 1; }
	test -x $(VENV)/bin/python || $(PYTHON310) -m venv $(VENV)
	sed -n '/^uv==/,/[^\\]$$/p' requirements.lock | \
		$(VENV)/bin/python -m pip install -q --require-hashes -r /dev/stdin
	@echo "installing requirements.lock into $(VENV) (about a minute)"
	$(VENV)/bin/python -m uv pip sync -q --require-hashes --python $(VENV)/bin/python requirements.lock
	$(VENV)/bin/python -m uv pip install -q --python $(VENV)/bin/python --no-deps -e .
	touch $@
