# The two Quickstart commands. Both install into .venv first (idempotent, fast when done).
.PHONY: install demo test lint

install:
	./scripts/bootstrap.sh

demo: install
	.venv/bin/safety-lora demo --out out/demo

lint: install
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	./scripts/typecheck.sh

test: lint
	.venv/bin/python -m pytest -q
