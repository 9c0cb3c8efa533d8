# The two Quickstart commands (demo, test) and the docs. Each installs into .venv first
# (idempotent, fast when done).
.PHONY: install demo test test-fast lint docs docs-serve

install:
	./scripts/bootstrap.sh

demo: install
	.venv/bin/safety-lora demo --out out/demo

lint: install
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	./scripts/typecheck.sh

# Two workers (pytest-xdist): the suite is sized for a 2-core machine.
test: lint
	.venv/bin/python -m pytest -q -n 2

# Leaves out the end-to-end tests marked slow (trained models, Ray, the docs site, the wheel).
test-fast: install
	.venv/bin/python -m pytest -q -n 2 -m "not slow"

docs: install
	./scripts/package_tree.sh
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true .venv/bin/mkdocs build --strict

docs-serve: install
	./scripts/package_tree.sh
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true .venv/bin/mkdocs serve
