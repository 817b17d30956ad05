# The README's two commands: `make demo` and `make test`. Both go through `make install`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEMO_DIR ?= runs/demo

.PHONY: install demo test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Stamp file: reinstall only when the dependency list changes.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install -qq -e ".[test,bench]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/rsjax train --config configs/smoke.py --workdir $(DEMO_DIR)

test: install
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) runs
