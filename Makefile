# Every target sets up what it needs: the virtualenv (.venv) and the generated code.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTOS := $(shell find protos -name '*.proto')

.PHONY: demo test bench lint protos serve check-protos tools clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# Regenerates godel_grpc/_proto from protos/ (committed, so a plain install needs no compiler).
protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

demo: $(STAMP)
	$(BIN)/python -m godel_grpc.cli demo

serve: $(STAMP)
	$(BIN)/godel serve

test: $(STAMP)
	bash scripts/ensure_tools.sh
	$(BIN)/python scripts/gen_protos.py --check
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	bash scripts/ensure_tools.sh
	$(BIN)/python scripts/gen_protos.py --check
	$(BIN)/ruff check godel_grpc sidecars tests examples bench scripts
	$(BIN)/ruff format --check godel_grpc sidecars tests examples bench scripts
	$(BIN)/mypy godel_grpc sidecars
	.tools/node_modules/.bin/buf lint

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .tools .godel
