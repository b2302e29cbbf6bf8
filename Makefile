# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv on demand.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/graylb demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/hot_path.py
	$(PY) benchmarks/http_overhead.py
	$(PY) benchmarks/consul_latency.py
	$(PY) benchmarks/consul_scale.py
	$(PY) benchmarks/nacos_latency.py

clean:
	rm -rf $(VENV) build *.egg-info
