# The two commands of the README. Each one does its own set-up on a fresh machine.
#   make demo   - set up, then run the main job
#   make test   - set up, then run the whole test suite (pytest in 2 processes, then nbval on the
#                 notebooks; tests/test_docs.py builds the site and loads it in headless chromium)
#   make lint   - set up, then ruff (lint rules and formatting)
#   make docs   - set up, then build the documentation site into docs/_build/html (offline;
#                 warnings are errors)
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test setup lint docs docs-teacher docs-clean notebooks experiments

# dev: tests and notebooks; docs: Sphinx + myst-nb, so that `make test` also builds and checks the site.
setup:
	bash scripts/setup.sh dev,docs

demo: setup
	$(VENV)/bin/odistill demo

# The unit tests, then the notebooks, run in JOBS processes (pytest-xdist; --dist loadfile: a test file,
# or a notebook, stays in one process, so its module fixtures are built once and a notebook's cells run
# in order in one kernel). Each notebook computes on one thread, so two of them side by side on two
# cores do not slow each other's timed comparisons; the suite's own tests are done by then.
JOBS ?= 2
test: setup
	$(PY) -m pytest tests -n $(JOBS) --dist loadfile -p no:cacheprovider
	$(PY) -m pytest notebooks -n $(JOBS) --dist loadfile --nbval-lax --nbval-current-env \
	    --nbval-sanitize-with notebooks/sanitize.cfg -p no:cacheprovider

# Build the site from the committed notebook outputs (nothing is executed). -W: any warning fails the
# build; --keep-going: report them all first. Always from scratch (a few seconds more): an incremental
# build re-reports no warning of an unchanged page and keeps stale [source] pages. Open
# docs/_build/html/index.html, or serve the folder with `python -m http.server -d docs/_build/html`.
docs: setup
	@rm -rf docs/_build/html; start=$$(date +%s); \
	$(VENV)/bin/sphinx-build -W --keep-going -b html docs docs/_build/html && \
	echo "[docs] built docs/_build/html/index.html in $$(( $$(date +%s) - start )) s"

# The teacher's site: the exercise notebooks with their solutions and hidden tests, and the two
# teacher-only solutions notebooks.
docs-teacher: setup
	@rm -rf docs/_build/teacher; ODISTILL_DOCS_TEACHER=1 $(VENV)/bin/sphinx-build -W --keep-going -b html \
	    docs docs/_build/teacher && echo "[docs] built docs/_build/teacher/index.html (with solutions)"; \
	rm -rf docs/notebooks  # the next student build mirrors the learners' versions again

docs-clean:
	rm -rf docs/_build docs/cli.md docs/exercises.md docs/notebooks

# ruff: the lint rules and the formatting of pyproject.toml (line length 110); CI runs it before the tests.
lint: setup
	$(VENV)/bin/ruff check odistill tests benchmarks examples docs/_ext docs/conf.py scripts
	$(VENV)/bin/ruff format --check odistill tests benchmarks examples docs/_ext docs/conf.py scripts

# The lab-bench sweeps the notebooks load (notebooks/data/*.json): about 25 minutes on 2 CPU cores.
experiments: setup
	$(PY) scripts/run_experiments.py --workers 2

# Re-execute every notebook in place (tiny CPU profile) and store its outputs.
notebooks: setup
	$(PY) scripts/execute_notebooks.py notebooks/*.ipynb notebooks/exercises/*.ipynb
