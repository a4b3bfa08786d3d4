# The two commands of README.md (demo, test). Each creates (or reuses) a
# virtual environment and installs what it needs, so a fresh machine with any
# supported Python (3.11, 3.12, 3.13) and make needs nothing else.
#
# PYTHON: the interpreter for .venv (demo, lint, types, docs): by default the
# newest supported one that runs here (.ci/pythons). `make test` runs pytest on
# every supported version found (PYTHONS), each in its own .venv-X.Y; passing
# PYTHON=... alone narrows the test run to that interpreter.
#   make test PYTHON=/usr/bin/python3.11     (a name on PATH that runs, or a path)
#   make test PYTHONS="python3.11 python3.13"
FOUND := $(shell sh .ci/pythons)
ifeq ($(origin PYTHON),undefined)
PYTHON := $(firstword $(FOUND))
PYTHONS ?= $(FOUND)
else
PYTHONS ?= $(PYTHON)
endif
VENV ?= .venv
PY := $(VENV)/bin/python
# What `make test` needs; `make demo` needs only the demo extra.
DEV_INSTALL := -e '.[all]' --group dev --group bench
DEMO_INSTALL := -e '.[demo]'
NO_PYTHON := echo "No supported Python (3.11, 3.12, 3.13) runs here: install one, or name it with PYTHON=/path/to/python3.X" >&2; exit 1
# The docs build that README names; --strict fails on every warning.
MKDOCS := NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

.PHONY: demo test lint typecheck docs pytest bench venv demo-venv clean

venv:
	@test -n "$(PYTHON)" || { $(NO_PYTHON); }
	@sh .ci/venv "$(PYTHON)" $(VENV) dev $(DEV_INSTALL)

demo-venv:
	@test -n "$(PYTHON)" || { $(NO_PYTHON); }
	@sh .ci/venv "$(PYTHON)" $(VENV) demo $(DEMO_INSTALL)

## The main job: the fault-scenario demo and its HTML report.
demo: demo-venv
	$(PY) -m resilient demo $(ARGS)

## The whole test suite: lint, format, types and docs once (on PYTHON), then
## pytest on every Python in PYTHONS. .ci/run calls this.
test: lint typecheck docs pytest

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) scripts/unasync.py --check

typecheck: venv
	$(PY) -m mypy --strict resilient

# After the build: no docstring's Sphinx role may reach a page raw.
docs: venv
	$(MKDOCS)
	@! grep -rlE ':(py:)?(class|meth|func|attr|exc|mod|data|obj|const):(<code>|`)' site \
	  || { echo "raw Sphinx roles in the pages above (docs/sphinx_roles.py did not rewrite them)"; exit 1; }

# pytest exits 5 when it collected nothing: that is a failure here.
pytest: venv
	@test -n "$(PYTHONS)" || { $(NO_PYTHON); }
	@main=$$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])'); failed=""; \
	for py in $(PYTHONS); do \
	  ver=$$("$$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])') || { failed="$$failed $$py"; continue; }; \
	  if [ "$$ver" = "$$main" ]; then dir=$(VENV); else dir=.venv-$$ver; sh .ci/venv "$$py" "$$dir" dev $(DEV_INSTALL) || { failed="$$failed $$ver"; continue; }; fi; \
	  echo "== pytest on Python $$ver ($$dir)"; \
	  $$dir/bin/python -m pytest -q -p no:cacheprovider; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests on Python $$ver: failing"; fi; \
	  if [ $$rc -ne 0 ]; then failed="$$failed $$ver"; fi; \
	done; \
	if [ -n "$$failed" ]; then echo "pytest failed on Python:$$failed"; exit 1; fi

bench: venv
	$(PY) benchmarks/overhead.py

clean:
	rm -rf $(VENV) .venv-3.* site .pytest_cache .mypy_cache .ruff_cache
