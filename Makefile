# The two commands: `make run` (set up, score a generated sample clip, then serve the gateway on the
# embedded defaults)
# and `make test` (set up, then lint, type-check and run every test). Both are idempotent.
SAMPLE := .cache/sample.mp4
SWAP_SAMPLE := .cache/sample-swap.mp4
VENV := .venv/bin

.PHONY: setup run test lint bench format

setup:
	@bash scripts/setup.sh

$(SAMPLE): | setup
	@mkdir -p .cache
	$(VENV)/python -m devtools.media_factory sample $(SAMPLE)

$(SWAP_SAMPLE): | setup
	@mkdir -p .cache
	$(VENV)/python -m devtools.media_factory sample --swap $(SWAP_SAMPLE)

# Two generated samples: a real face (astronaut) and a face swap (Grace Hopper's face on the astronaut).
run: setup $(SAMPLE) $(SWAP_SAMPLE)
	@echo "--- a real face:"; $(VENV)/dfguard score $(SAMPLE)
	@echo "--- a face swap:"; $(VENV)/dfguard score $(SWAP_SAMPLE)
	$(VENV)/dfguard score --json $(SAMPLE)
	$(VENV)/dfguard serve --host 127.0.0.1 --port 8080

lint: setup
	$(VENV)/ruff check service bench tests scripts loadtest training devtools clients
	$(VENV)/ruff format --check service bench tests scripts loadtest training devtools clients
	$(VENV)/mypy

format: setup
	$(VENV)/ruff format service bench tests scripts loadtest training devtools clients
	$(VENV)/ruff check --fix service bench tests scripts loadtest training devtools clients

# pytest exits 5 when it collected no test; that is not a failure of the suite itself.
test: setup lint
	@$(VENV)/python -m pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc

bench: setup $(SAMPLE)
	$(VENV)/python -m bench all --video $(SAMPLE)
	$(VENV)/python -m bench compare
