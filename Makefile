# The two commands of the README. Both create .venv when it is absent and (re)install the package
# when pyproject.toml, setup.py or constraints.txt changed since the last install. The install uses
# constraints.txt: the exact versions the tests passed with (pyproject.toml declares ranges).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.jmsnas-installed

.PHONY: setup quickstart test lint

$(STAMP): pyproject.toml setup.py constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/jmsnas search experiments/quickstart.yaml

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check jmsnas tests benchmarks
