# The two commands of the README. Each one does its own set-up on a fresh machine.
#   make demo   - set up, then run the main job
#   make test   - set up, then run the whole test suite (pytest + nbval on the notebooks)
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test setup lint docs notebooks

setup:
	bash scripts/setup.sh dev

demo: setup
	$(VENV)/bin/odistill demo

test: setup
	$(PY) -m pytest tests notebooks --nbval-lax --nbval-current-env \
	    --nbval-sanitize-with notebooks/sanitize.cfg -p no:cacheprovider

lint: setup
	$(VENV)/bin/ruff check odistill tests benchmarks

# Re-execute every notebook in place (tiny CPU profile) and store its outputs.
notebooks: setup
	$(PY) scripts/execute_notebooks.py notebooks/*.ipynb
