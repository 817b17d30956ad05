# The README's two commands: `make demo` (runtime install, then the demo run) and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEMO_DIR ?= runs/demo

.PHONY: install demo test browser bench clean

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

demo: $(VENV)/.installed-runtime
	$(VENV)/bin/rsjax train --config configs/smoke.py --workdir $(DEMO_DIR)

# tests/test_report.py opens the HTML report in headless Chromium: installed here from Debian's
# packages when missing and running as root (CI), else named so that the user can install it.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "make: headless Chromium is missing (apt-get install chromium); tests/test_report.py needs it"

test: install browser
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) runs
