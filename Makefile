# Two commands for a new machine: `make demo` (install + run the demo pipeline) and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)

.PHONY: install demo bakeoff vqa-finetune pretrain pretrain-update test lint clean-outputs

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-compile -c constraints.txt -e '.[dev]'
	@# pip compiles the 25,000 modules to bytecode on one core (half of the install's time); compileall uses
	@# every core. Like pip, it skips files written for newer Pythons (torch ships a few), hence the || true.
	$(BIN)/python -m compileall -q -q -j 0 $(VENV)/lib || true
	touch $@

# The default demo restores the pretrained foundation CLIP + tokenizer and aligned base from data/pretrained
# (params foundation/align.backend: restore) and runs every other stage up to chat_eval: sample ... select,
# curate, export (the release of top40), tune top vs random x 3 seeds, evaluate, chat_eval. LLaVA-Med's VQA
# fine-tuning protocol (9 fine-tunes + evaluate_finetuned) is `make vqa-finetune`; the bake-off's own tunes
# are `make bakeoff`.
# A bare `dvc repro` runs every stage of dvc.yaml; `dvc repro -P` also runs bakeoff/dvc.yaml.
DEMO_TARGETS ?= fetch chat_eval bakeoff export

demo: install
	dvc pull --quiet data.dvc
	dvc repro $(DEMO_TARGETS)
	vital report

bakeoff: install          # the selection bake-off's downstream tunes (one per method and seed; slow)
	dvc pull --quiet data.dvc
	dvc repro bakeoff/dvc.yaml

vqa-finetune: install
	dvc pull --quiet data.dvc
	dvc repro evaluate_finetuned

# retrain foundation + base from scratch (backend demo, ~8 CPU-minutes: foundation ~3, align 3000 steps ~5) and check the bytes equal data/pretrained
pretrain: install
	dvc pull --quiet data.dvc
	OMP_NUM_THREADS=1 vital pretrain

# retrain them and store them as the new data/pretrained (in data.dvc, pushed to the in-repo remote dvcstore/)
pretrain-update: install
	dvc pull --quiet data.dvc
	OMP_NUM_THREADS=1 vital pretrain --write
	dvc add data
	dvc push data.dvc

# Two workers (pytest-xdist), one per core of the 2-core machine the suite is sized for; --dist loadfile keeps
# each test file on one worker, so its module fixtures (tiny worlds, models) are built once, as in one process.
# --no-loadscope-reorder hands files out in the order tests/conftest.py gives them: the slowest first, and last
# the ones that use the tiny pipeline, which is built once per run in the background (tests/tiny_pipeline.py).
# --durations lists the slowest tests, to see what to share next.
test: install              # the demo data too: some tests read data/ (the in-repo remote, no network)
	dvc pull --quiet data.dvc
	pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15

lint: install
	ruff check vital stages tests bench
	ruff format --check vital stages tests bench
	vital dag --check
