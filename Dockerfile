# syntax=docker/dockerfile:1
# The dfguard CPU image: one image, two entry points (`dfguard serve`, the gateway; `dfguard worker`, the
# Kafka consumer), plus `dfguard triton build-repo` for the Triton init container. No PyTorch, no CUDA: ONNX
# Runtime runs the models on CPU, and GPUs are Triton's (NVIDIA's image). Build: docker build -t dfguard .
#
# Stage 1 builds a wheel of dfguard and installs it with its dependencies into /opt/venv; stage 2 copies only
# that virtual environment onto a clean slim base and runs as an unprivileged user with no shell login.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
# Only what the wheel needs: the package (with its bundled detector and placeholder model) and its metadata.
COPY pyproject.toml README.md ./
COPY service ./service
RUN /opt/venv/bin/pip install --no-compile "pip==24.3.1" "setuptools==75.6.0" "wheel==0.45.1" \
    && /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
    && /opt/venv/bin/pip install --no-compile /wheels/dfguard-*.whl \
    && /opt/venv/bin/dfguard version

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="dfguard" \
      org.opencontainers.image.description="Deepfake moderation: gateway (dfguard serve) and Kafka worker (dfguard worker)"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp
# A fixed numeric uid/gid (10001) so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 dfguard \
    && useradd --system --uid 10001 --gid dfguard --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin dfguard
COPY --from=build /opt/venv /opt/venv
# The Triton Deployment's init container copies this next to the model repository for the TensorRT stage.
COPY scripts/build_trt_plans.sh /opt/dfguard/scripts/build_trt_plans.sh
WORKDIR /opt/dfguard
USER 10001:10001
EXPOSE 8080 9102
ENTRYPOINT ["dfguard"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
