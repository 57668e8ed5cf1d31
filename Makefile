# Two commands for a new machine: `make demo` (install + run the demo pipeline) and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)

.PHONY: install demo bakeoff test lint clean-outputs

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: install
	dvc pull --quiet data.dvc
	dvc repro dvc.yaml    # not a bare `dvc repro`: that would also run bakeoff/dvc.yaml's tunes
	vital report

bakeoff: install          # the selection bake-off's downstream tunes (one per method and seed; slow)
	dvc pull --quiet data.dvc
	dvc repro bakeoff/dvc.yaml
	vital report

test: install
	pytest -q

lint: install
	ruff check vital stages tests bench
	ruff format --check vital stages tests bench
	vital dag --check
