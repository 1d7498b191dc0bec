# syntax=docker/dockerfile:1
# effnet-serve images: one build stage, two bases, and one runtime tail that serves both.
#   docker build -t effnet-serve:cpu .                          (FLAVOR=cpu, the default)
#   docker build --build-arg FLAVOR=gpu -t effnet-serve:gpu .   (CUDA 13 + cuDNN 9, onnxruntime-gpu)
# Build arguments: FLAVOR (cpu or gpu: the base and what is installed on it), VARIANTS (comma list of
# b0..b7, lite0-lite2, or "all"), WEIGHTS (passed to the exporter), TORCH_INDEX_URL (where the build stage gets
# torch; default the PyTorch CPU index. Where that index is out of reach, pass https://pypi.org/simple:
# its CUDA wheel is larger but exports just the same).

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
ARG FLAVOR=cpu

# ---------------------------------------------------------------------------------------------------
# build: export the model repository (torch lives only here), generate the gRPC code, build the wheel.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# CPU-only torch wheels first, in their own layer: the CUDA build is ~5 GB and export needs no GPU.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" \
        torch==2.14.1 torchvision==0.29.1
COPY . .
# Everything else at the versions the export lock (requirements/, `make lock`) pins, with --no-deps as
# make installs it: a release of today cannot change the exported graphs. The lock's torch family is
# left out (torch and torchvision are the wheels above; their CUDA libraries the CPU wheels do not need),
# and pip check proves the result whole. The serving locks go to the runtime stage.
RUN grep -vE '^(torch|torchvision|nvidia-|cuda-)' requirements/export.txt > /tmp/export-lock.txt \
    && pip install --no-cache-dir --no-deps -r /tmp/export-lock.txt grpcio-tools==1.81.1 \
    && pip install --no-cache-dir --no-deps /src \
    && pip check \
    && python -m service.protogen \
    && pip wheel --no-cache-dir --no-deps --wheel-dir /out/wheels . \
    && cp requirements/serve.txt /out/requirements-cpu.txt \
    && cp requirements/serve-gpu.txt /out/requirements-gpu.txt
ARG VARIANTS=b0,lite0
ARG WEIGHTS=default
RUN IFS=','; for variant in ${VARIANTS}; do \
        python -m models.export --variant "${variant}" --repository /out/models-cpu --weights "${WEIGHTS}" \
        || exit 1; \
    done \
    && chmod -R a+rX,go-w /out/models-cpu
# The GPU image also gets an fp16 graph of every variant (`b0` then means `b0-fp16` on CUDA), each
# checked against its fp32 model on real photos at export. The CPU image keeps fp32 only.
RUN cp -a /out/models-cpu /out/models-gpu \
    && IFS=','; for variant in ${VARIANTS}; do \
        python -m models.export --variant "${variant}" --precision fp16 --repository /out/models-gpu \
            --weights "${WEIGHTS}" || exit 1; \
    done \
    && chmod -R a+rX,go-w /out/models-gpu

# ---------------------------------------------------------------------------------------------------
# The two bases: what differs between the images, and nothing else.
# base-cpu: slim Python with the plain onnxruntime wheel (requirements/serve.txt); no CUDA libraries.
FROM ${PYTHON_IMAGE} AS base-cpu
ENV EFFNET_DEVICE=cpu

# base-gpu: NVIDIA CUDA 13 + cuDNN 9 runtime, the distribution's Python in a venv, onnxruntime-gpu.
# The service user has no home: CuPy's kernel cache goes to a writable folder of its own.
FROM ${CUDA_IMAGE} AS base-gpu
ENV DEBIAN_FRONTEND=noninteractive \
    PATH=/opt/venv/bin:$PATH \
    EFFNET_DEVICE=cuda \
    CUPY_CACHE_DIR=/tmp/cupy
# DL3008: apt versions are not pinned on purpose; the base image tag pins the distribution release,
# and exact Ubuntu package versions vanish from the archive within weeks, breaking rebuilds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

# ---------------------------------------------------------------------------------------------------
# runtime (the default target): the one tail both images share, on the base FLAVOR names.
# DL3006: base-${FLAVOR} is one of the two stages above, not an image from a registry.
# hadolint ignore=DL3006
FROM base-${FLAVOR} AS runtime
ARG FLAVOR
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 effnet \
    && useradd --system --uid 10001 --gid effnet --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin effnet
COPY --from=build /out/requirements-${FLAVOR}.txt /out/wheels/ /tmp/install/
# The flavor's serving lock (requirements/serve.txt, or serve-gpu.txt with onnxruntime-gpu), exactly.
RUN pip install --no-cache-dir --no-deps -r /tmp/install/requirements-${FLAVOR}.txt \
    && pip install --no-cache-dir --no-deps /tmp/install/*.whl \
    && pip check \
    && rm -rf /tmp/install
# Owned by root and not writable by the service user: the model directory is read-only at run time.
# The gpu image's repository also holds an fp16 graph of every variant.
COPY --from=build /out/models-${FLAVOR} /models
COPY docker/healthcheck.py /usr/local/lib/effnet/healthcheck.py
ENV EFFNET_REPOSITORY=/models \
    EFFNET_HOST=0.0.0.0 \
    EFFNET_HTTP_PORT=8000 \
    EFFNET_GRPC_PORT=8001
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/usr/local/lib/effnet/healthcheck.py"]
# Exec form: the server is PID 1 and receives SIGTERM itself (graceful drain, exit 0).
ENTRYPOINT ["python", "-m", "service"]
CMD ["serve"]
