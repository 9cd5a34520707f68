# Developer entry points; every target works from a fresh checkout (setup runs first where needed).
PY := .venv/bin/python
SRC := pycita services tools

.PHONY: setup demo test lint typecheck proto bench

setup:
	bash scripts/setup.sh

demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh

lint: setup
	.venv/bin/ruff check $(SRC) tests bench

typecheck: setup
	.venv/bin/mypy $(SRC) bench

proto:
	bash scripts/gen_proto.sh

bench: setup
	@set -e; found=0; for f in bench/*_bench.py; do [ -e "$$f" ] || continue; found=1; \
		echo "== $$f"; $(PY) "$$f"; done; \
	[ "$$found" = 1 ] || { echo "bench: no bench/*_bench.py" >&2; exit 1; }
