# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv on demand.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo lint test bench proto clean real-registries monitoring

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/graylb demo

# Lint and type-check (configured in pyproject.toml; a few seconds): ruff's rules and formatting
# on the whole tree, mypy --strict on graylb/. `make test` runs it first.
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

test: lint
	$(PY) -m pytest -q

# The real servers tests/contract, tests/monitoring and benchmarks/peer_gateway.py run against
# (besides the fakes): builds Consul 1.16.1 (the last MPL-2.0 release), Prometheus 3.16.0 and
# Jaeger 1.76.0 from source with the local Go toolchain and rnacos 0.8.8 (the Nacos-compatible
# server) from crates.io with cargo, unpacks Debian's Prometheus 2.42.0 and nginx 1.22.1, caches
# them outside the repo in ${GRAYLB_CACHE:-${XDG_CACHE_HOME:-~/.cache}/graylb}, and records each
# in its manifest.json (version, build time, or why it failed). Idempotent: once built, a run
# takes seconds. Standard library only: no venv needed (the venv's python is used when there is one).
real-registries:
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) scripts/real_registries.py

# The demo with a bad canary, a real Prometheus (monitoring/prometheus rules and alerts) and
# Jaeger on 127.0.0.1: prints URLs and live PromQL answers until Ctrl-C (README "Watching a canary").
monitoring: $(STAMP) real-registries
	$(PY) scripts/monitoring.py

bench: $(STAMP)
	$(PY) benchmarks/hot_path.py
	$(PY) benchmarks/own_cost.py
	$(PY) benchmarks/http_overhead.py
	$(PY) benchmarks/consul_latency.py
	$(PY) benchmarks/consul_scale.py
	$(PY) benchmarks/nacos_latency.py
	$(PY) benchmarks/peer_gateway.py
	$(PY) benchmarks/scale_of_change.py
	$(PY) benchmarks/grpc_overhead.py
	$(PY) benchmarks/guard_stats.py

# Python stubs for proto/ are committed under graylb/_proto, so a fresh clone needs no protoc;
# tests/integration/test_grpc_echo.py checks they match a fresh generation. protoc names the
# modules after the proto path (graylb.demo.v1) but the stubs live under graylb._proto, so the
# sed rewrites each `from graylb.<pkg> import` to `from graylb._proto.graylb.<pkg> import`.
PROTOS    := proto/graylb/demo/v1/echo.proto
PROTO_OUT := graylb/_proto

proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -I proto --python_out=$(PROTO_OUT) --pyi_out=$(PROTO_OUT) --grpc_python_out=$(PROTO_OUT) $(PROTOS)
	find $(PROTO_OUT)/graylb -name '*_pb2*.py*' -exec sed -i.bak -e 's/^from graylb\.\([a-z]\)/from graylb._proto.graylb.\1/' {} \; -exec rm -f {}.bak \;

clean:
	rm -rf $(VENV) build *.egg-info
