# The README's two commands: `make demo` (runtime install, then the demo run) and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEMO_DIR ?= runs/demo

PORT ?= 8000

.PHONY: install demo serve test browser wheels bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Stamp files: reinstall only when the dependency list changes. The demo needs only the runtime
# dependencies (PyTorch and FAISS, test and benchmark references, take minutes to install).
$(VENV)/.installed-runtime: pyproject.toml | $(PY)
	$(PY) -m pip install -qq -e .
	touch $@

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install -qq -e ".[test,bench]"
	touch $@ $(VENV)/.installed-runtime

install: $(VENV)/.installed

# Train, evaluate the test split (its retrieval gallery), and draw the report.
demo: $(VENV)/.installed-runtime
	$(VENV)/bin/rsjax train --config configs/smoke.py --workdir $(DEMO_DIR)
	$(VENV)/bin/rsjax eval --config configs/smoke.py --workdir $(DEMO_DIR) --splits test
	$(VENV)/bin/rsjax report $(DEMO_DIR)
	@echo "make demo: the report, with the retrieval gallery: $(abspath $(DEMO_DIR))/report/report.html"
	@echo "make demo: next, \`make serve\` searches the test split in a browser"

# The demo's RS-Synth test split as PNG files (+ captions.jsonl with made-up positions), its
# index (rebuilt when the demo has newer checkpoints), and the search page on 127.0.0.1:$(PORT).
$(DEMO_DIR)/archive/captions.jsonl: | $(VENV)/.installed-runtime
	$(PY) -m rsjax.serve.synth_archive --config configs/smoke.py --split test --out $(DEMO_DIR)/archive

$(DEMO_DIR)/index/index.json: $(DEMO_DIR)/archive/captions.jsonl $(DEMO_DIR)/checkpoints
	rm -rf $(DEMO_DIR)/index
	$(VENV)/bin/rsjax index --config configs/smoke.py --checkpoint $(DEMO_DIR) \
	  --images $(DEMO_DIR)/archive --out $(DEMO_DIR)/index

$(DEMO_DIR)/checkpoints:
	@echo "make serve: no demo run in $(DEMO_DIR); run \`make demo\` first" >&2; exit 2

serve: $(DEMO_DIR)/index/index.json
	$(VENV)/bin/rsjax serve $(DEMO_DIR)/index --port $(PORT)

# tests/test_report.py opens the HTML report in headless Chromium: installed here from Debian's
# packages when missing and running as root (CI), else named so that the user can install it.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "make: headless Chromium is missing (apt-get install chromium); tests/test_report.py needs it"

# benchmarks/accelerator_check.sh on a bare accelerator machine (JAX but no grain, ml-collections
# or sentencepiece): those packages as wheels, to carry along in .wheels/ (24 MB).
wheels: | $(PY)
	$(PY) -m pip download -q -d .wheels grain==0.2.18 ml-collections==1.1.0 sentencepiece==0.2.3

test: install browser
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) runs
