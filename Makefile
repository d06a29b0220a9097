# divims: the two commands a newcomer needs are `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv system-deps demo test lint bench audit clean

$(BIN)/divims: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(BIN)/divims

venv: $(BIN)/divims

# Prometheus, Alertmanager, promtool, amtool and sshd from Debian's packages, when missing.
system-deps:
	@bash scripts/install-system-deps.sh

demo: venv system-deps
	$(BIN)/divims demo

test: venv system-deps
	$(BIN)/ruff check .
	$(BIN)/pytest -q
	bash scripts/audit.sh $(VENV)

# pip-audit of the venv (fails on a known vulnerability with a fix; says so when it cannot reach the service)
audit: venv
	bash scripts/audit.sh $(VENV)

lint: venv
	$(BIN)/ruff check .

bench: venv system-deps
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
