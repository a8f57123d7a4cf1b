# repro — the degradation experiment of He et al. 2015. `make help` lists the targets.
# Every target sets up the environment first (make install), so a fresh clone needs nothing else.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# CIFAR10: the folder holding cifar-10-batches-py, e.g. make demo CIFAR10=../shared/data/cifar10
CIFAR10 ?= data/cifar10
# IMAGENET: an ImageFolder root for make bench's ImageNet rows (e.g. ../shared/data/imagenette); empty = tensors
IMAGENET ?=
# JOBS: runs of a sweep at once (on 2 CPU cores, 2 runs x 1 thread beat one run on 2 threads: make bench's
# "concurrent" rows, docs/performance.md)
JOBS ?= 2
THREADS ?= $(shell echo $$(( $$(nproc) / $(JOBS) > 0 ? $$(nproc) / $(JOBS) : 1 )))
# LAUNCHER: how a sweep's runs share the machine. pack (on CUDA): several runs in one process, each its own
# CUDA graph on its own stream (repro/train/pack.py); parallel (CPU): JOBS processes of THREADS threads each
LAUNCHER ?= $(shell $(PY) -c "import torch; print('pack' if torch.cuda.is_available() else 'parallel')" 2>/dev/null)
LAUNCH = $(if $(filter pack,$(LAUNCHER)),hydra/launcher=pack,hydra/launcher=parallel hydra.launcher.n_jobs=$(JOBS) threads=$(THREADS))
STAMP := $(VENV)/.installed

.PHONY: help install lock test test-all demo data imagenette cifar reference diagnose convergence fig4-short figures report bench bench-gpu gpu-wheels gpu-check clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(STAMP)  ## create .venv from nothing with the locked versions (uv.lock; INSTALLER=pip: requirements.lock)

# INSTALLER: uv (default; uv from PATH, else installed into .venv from the registry) or pip (requirements.lock, the
# same versions exported from uv.lock). EXTRAS: the extras make installs (trackers: tensorboard is in the dev group)
INSTALLER ?= uv
EXTRAS ?= launchers decode
UV := $(or $(shell command -v uv 2>/dev/null),$(VENV)/bin/uv)
# uv itself when absent: the locked release, into .venv, from the registry
UV_BOOTSTRAP = test -x $(UV) || { test -x $(PY) || $(PYTHON) -m venv $(VENV); \
  $(PY) -m pip install --quiet "$$(grep -oE '^uv==[^ ]+' requirements.lock)"; }
$(STAMP): uv.lock requirements.lock pyproject.toml
ifeq ($(INSTALLER),pip)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
else
	$(UV_BOOTSTRAP)
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --locked --quiet --compile-bytecode $(addprefix --extra ,$(EXTRAS))
endif
	touch $(STAMP)

lock:  ## regenerate uv.lock from pyproject.toml (its [tool.uv] date and torch pin), and requirements.lock from it
	$(UV_BOOTSTRAP)
	$(UV) lock
	$(UV) export --frozen --quiet --no-emit-project $(addprefix --extra ,$(EXTRAS)) -o requirements.lock

# TEST_WORKERS: pytest-xdist processes (auto = one per core). Every quick test must finish within its budget
# (tests/budget.py; enforced in CI), so a new slow test is marked @pytest.mark.slow and runs in make test-all
# (CI) instead. The slow tests run after the quick ones, so that they never share the cores with a timed test
TEST_WORKERS ?= auto
PYTEST = $(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal -q

test: install  ## the quick test suite (CPU, about 5 minutes on 2 cores; not the tests marked slow)
	$(PYTEST) -m "not slow" --durations=15

test-all: test  ## every test: the quick suite, then the slow tests (what CI runs: .ci/run)
	$(PYTEST) -m slow --durations=15

demo: install  ## the degradation problem on CPU in minutes: CIFAR-10 if found at $(CIFAR10), else the embedded task
	$(PY) -m repro.demo --cifar10 $(CIFAR10)

data: install  ## download CIFAR-10 (md5-checked) into $(CIFAR10)
	$(PY) -m repro.fetch cifar10 --root $(CIFAR10)

# IMAGENETTE: where `make imagenette` puts fast.ai's Imagenette (SIZE=160px or 320px); it prints the data.root
IMAGENETTE ?= data
SIZE ?= 160px
imagenette: install  ## download fast.ai's Imagenette (md5-checked, ImageFolder layout) into $(IMAGENETTE) (SIZE=160px|320px)
	$(PY) -m repro.fetch imagenette --root $(IMAGENETTE) --size $(SIZE)

cifar: install  ## the full CIFAR-10 sweeps of Fig. 6 and Table 6 (paper protocol: a GPU job; packed on CUDA)
	for e in fig6_plain fig6_resnet table6; do \
	  $(PY) -m repro.train -m exp=$$e data.root=$(CIFAR10) $(LAUNCH) || exit 1; done

reference: install  ## the reference result set (exp=fig6_short: Fig. 6's nets at 1/8 of the schedule) -> plots/fig6_short
	$(PY) -m repro.train -m exp=fig6_short data.root=$(CIFAR10) $(LAUNCH)
	$(PY) -m repro.plots report --results results/fig6_short --out plots/fig6_short --ylim auto

# the reference nets' diagnostics at initialisation (5 seeds, beside the reference runs), and Table 1's counts
REF_NETS ?= plain-20,plain-32,plain-44,plain-56,resnet-20,resnet-32,resnet-44,resnet-56,resnet-110
diagnose: install  ## why plain nets degrade: gradient/signal diagnostics of the reference nets + Table 1 -> results/
	$(PY) -m repro.diagnose --nets $(REF_NETS) --seeds 0-4 --root $(CIFAR10) --out results/fig6_short/diagnostics.csv
	$(PY) -m repro.diagnose --architectures results/architectures/architectures.csv

# SEEDS: the convergence runs' seeds, e.g. 1,2 (exp=convergence: the reference protocol's first lr phase, a row every
# 50 iterations, diagnostics every 500; about 4.5 hours of 2 cores per seed on the machine of results/convergence)
SEEDS ?= 1
convergence: install  ## why, on trained nets: convergence rate and diagnostics through the first lr phase -> plots/convergence
	$(PY) -m repro.train -m exp=convergence seed=$(SEEDS) data.root=$(CIFAR10) $(LAUNCH)
	$(PY) -m repro.plots report --results results/convergence --out plots/convergence --ylim auto

# IMAGENETTE_ROOT: an ImageFolder Imagenette (make imagenette prints it; ../shared/data/imagenette-4k here)
IMAGENETTE_ROOT ?= $(IMAGENETTE)/imagenette2-160
fig4-short: install  ## Fig. 4 / Table 2 on a 2-core CPU (exp=fig4_short, about an hour) -> plots/fig4_short
	$(PY) -m repro.train -m exp=fig4_short data.root=$(IMAGENETTE_ROOT)
	$(PY) -m repro.plots report --results results/fig4_short --out plots/fig4_short --ylim auto

bench: install  ## throughput of our pipeline vs the standard one on this device -> plots/bench.json
	$(PY) -m repro.bench --cifar10 $(CIFAR10) $(if $(IMAGENET),--imagenet $(IMAGENET),)

bench-gpu: install  ## one GPU: eager vs CUDA-graphed vs packed steps, Fig. 6 / CIFAR projections -> plots/bench_<gpu>.json
	$(PY) -m repro.bench.gpu

# what a lent GPU machine lacks (it has torch, pandas, matplotlib; no internet): the locked versions as wheels in
# .whl/ (antlr4 4.9.3 exists only as a source distribution: pip builds its wheel here). Carry .whl to the machine.
GPU_WHEELS = antlr4-python3-runtime hydra-core omegaconf hydra-joblib-launcher joblib pyyaml
gpu-wheels: install  ## the wheels a lent GPU machine lacks, at the locked versions, into .whl/ (.ci/gpu-check)
	$(PY) -m pip wheel -q --no-deps -w .whl $(foreach p,$(GPU_WHEELS),$$(grep -oiE '^$(p)==[^ ]+' requirements.lock))

gpu-check: install  ## the prepared GPU session: tests/test_cuda.py (graph tests first), bench-gpu (FULL=1: 64k ResNet-20/56)
	OUT=$${OUT:-plots/gpu-check} PY=$(PY) bash .ci/gpu-check

figures: install  ## every figure and table from results/ into plots/ (and the report)
	$(PY) -m repro.plots all

report: install  ## every figure and table plus plots/report.md and plots/report.html
	$(PY) -m repro.plots report

clean:  ## remove Hydra's logs and caches (never results/ or plots/)
	rm -rf .hydra_runs .pytest_cache
