# Quick start: `make demo` (train + evaluate a LORS detector on CPU), `make test`.
PYTHON ?= python
export PYTHON

.PHONY: install demo test

install:
	bash tools/install.sh

demo: install
	bash tools/demo.sh

test: install
	$(PYTHON) -m pytest tests -q
