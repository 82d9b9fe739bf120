# musicsae: `make demo` runs the whole pipeline on the bundled demo; `make test` passes the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
CONFIG ?= params/demo.yaml
RUN = $(basename $(notdir $(CONFIG)))
# Stages run by `make demo` / `make reproduce`, in order (each issue adds its notebook).
STAGES ?= 00_core 01_data 02_model_hooks 03_activations 04_train_sae 05_features 06_labeling 07_layer_probe 08_steering 09_human_study
# the demo also runs 02a: the demo MusicGen's own checks (feed comparison, codec, gates); other models skip it
DEMO_STAGES ?= 00_core 01_data 02_model_hooks 02a_demo_model 03_activations 04_train_sae 05_features 06_labeling 07_layer_probe 08_steering 09_human_study
export PYTHONUNBUFFERED := 1
# scripts draw off-screen; the kernels that execute notebooks (tools/reproduce.py, tools/build_docs.py) draw inline
export MPLBACKEND := Agg
export TOKENIZERS_PARALLELISM := false

.PHONY: install bench-deps sysdeps demo demo-model demo-model-bench reproduce smoke test export clean-nbs check-sync pytest nbtest docs bench lab

install: $(VENV)/.installed
$(VENV)/.installed: settings.ini setup.py requirements/audiocraft.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: this CPU wheel lies on disk; an unpinned torch would pull a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	# tinysoundfont's only dependency, pyaudio, is for live playback (we render offline) and needs portaudio.
	$(PY) -m pip install -q --no-deps tinysoundfont==0.3.7
	# dev + the labelers' extras, so the tests cover the Gemini client and the Essentia graph path
	$(PY) -m pip install -q -e ".[dev,gemini,essentia,saelens]"
	# the [audiocraft] extra: audiocraft pins torch 2.1, so it and the modules it imports go in --no-deps from a
	# pinned list (torchaudio stays out; musicsae.audiocraft_backend.import_audiocraft stands in for it). Never run pip check.
	$(PY) -m pip install -q --no-deps -r requirements/audiocraft.txt
	touch $@

demo: install
	$(MAKE) reproduce CONFIG=params/demo.yaml STAGES="$(DEMO_STAGES)"

# Run every stage notebook with papermill on a parameter file; executed copies go to runs/<name>/. A stage reruns
# exactly when what it is made from changed (its notebook, the library, the parameters it declares, the files they
# name, the stage before it): tools/reproduce.py compares stamps, never file times. FORCE=1 reruns every stage;
# a failed stage leaves runs/<name>/<stage>.failed.ipynb and its log, and stops the run.
reproduce: install
	$(PY) tools/reproduce.py $(CONFIG) --stages $(STAGES) $(if $(FORCE),--force)

export: install
	$(BIN)/nbdev_export

clean-nbs: install
	$(BIN)/nbdev_clean

# The library must be what the notebooks export (never edited by hand).
check-sync: install
	$(BIN)/nbdev_export
	git diff --exit-code -- musicsae/
	test -z "$$(git status --porcelain -- musicsae/)" || { git status --porcelain -- musicsae/; echo "musicsae/ has files nbdev_export made that are not committed"; exit 1; }

pytest: install
	$(BIN)/pytest tests/ -q

nbtest: install
	$(BIN)/nbdev_test --n_workers 1 --timing

# Debian's Chromium for the study page's browser test (skipped, with a message, where it cannot be installed).
sysdeps:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } ; } || \
	  echo "sysdeps: chromium not installed; the browser test will be skipped"

# The paper's code path at smoke size (tiny transformers MusicGen from a folder, MusicSet layout, Essentia graphs,
# Gemini through a local server speaking its REST API, a tiny ClapModel): tools/paper_smoke.py prepares the assets,
# starts the server and runs `make reproduce CONFIG=params/paper_smoke.yaml`.
smoke: install
	$(PY) tools/paper_smoke.py run

test: install sysdeps check-sync pytest nbtest smoke

# the SAE benchmark's baselines: EleutherAI sparsify (--no-deps: it would pull its own torch) and SAELens
bench-deps: install
	$(PY) -m pip install -q --no-deps eai-sparsify==1.3.3
	$(PY) -m pip install -q -e ".[bench,saelens]"

# Retrain the demo MusicGen from its seed (params/demo_model.yaml: ≤ 90 min on 2 cores, resumable, prints the gates)
demo-model: install
	mkdir -p runs/demo_model
	$(BIN)/papermill nbs/02a_demo_model.ipynb runs/demo_model/02a_demo_model.ipynb -f params/demo_model.yaml -p config demo_model

# The benchmark on whatever data/models/demo/ holds (after demo-model: the conditioned 16-block model): its SAEs at
# the paper's five depths (params/demo_cond.yaml), then musicbench with the demo's settings, into runs/demo_cond/musicbench/
demo-model-bench: install
	$(PY) tools/reproduce.py params/demo_cond.yaml --stages 00_core 01_data 03_activations 04_train_sae
	$(PY) -m musicsae.musicbench --model demo --sae runs/demo_cond/sae --out runs/demo_cond/musicbench --max-frames 10000 --seeds 5 --epochs 3
	$(PY) -m musicsae.musicbench --summary --out runs/demo_cond/musicbench

# JupyterLab on the notebooks, with the project's venv as the kernel
lab: install
	cd nbs && ../$(BIN)/jupyter lab

docs: install
	$(PY) tools/build_docs.py --run runs/$(RUN) --out _docs $(if $(FORCE),--no-cache)
