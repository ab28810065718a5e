# Two entry points for a newcomer: `make demo` (main job) and `make test`.
# Both create or reuse .venv, install torch (pinned CPU wheel by default;
# override e.g. `make demo TORCH=torch` or `TORCH="torch==2.5.1"`), then the package.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
DEMO_ARGS ?=
TEST_ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.boxdepth-installed

.PHONY: demo test install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-install when the package metadata or the torch request changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev,depth,lite0,tflite]"
	echo "$(TORCH)" > $(STAMP)

install: $(STAMP)
	@grep -qxF "$(TORCH)" $(STAMP) || { $(BIN)/python -m pip install -q "$(TORCH)" && echo "$(TORCH)" > $(STAMP); }

demo: install
	$(BIN)/boxdepth demo $(DEMO_ARGS)

test: install
	$(BIN)/python -m pytest -q $(TEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
