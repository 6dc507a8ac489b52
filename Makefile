# Set-up and entry points. `make test` and `make study` work on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; GPU users: `make setup TORCH="torch"` (or install torch into $(VENV) first).
TORCH ?= torch==2.13.0

.PHONY: setup test lint docs study smoke

$(VENV)/.installed: pyproject.toml reports/constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]" -c reports/constraints.txt
	touch $@

setup: $(VENV)/.installed

test: setup  # two workers: most tests wait on subprocesses (Hydra jobs), and CI has two cores
	$(PY) -m pytest -n 2 --dist worksteal

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

docs: setup  # the documentation site into site/; --strict: a dead link or a page outside the nav fails
	$(PY) -m normbench.docs --check
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet -d site

# e.g. make study STUDY_ARGS="--out /tmp/fresh_study" to train every run anew elsewhere, or
# STUDY_ARGS="--study conf/study/sequence_gan.yaml" for the recurrent and GAN study
STUDY_ARGS ?=

study: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/small_batch_study.sh $(STUDY_ARGS)

smoke: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/small_batch_study.sh --smoke
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/small_batch_study.sh --smoke --study conf/study/sequence_gan.yaml
