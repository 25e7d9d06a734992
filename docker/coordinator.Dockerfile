# The coordinator: REST API, scheduler, dashboard and the `esnac` CLI (CPU only).
# Build from the repository root:  docker build -f docker/coordinator.Dockerfile -t esnac .
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim-bookworm

# Ray joins a cluster only when driver and nodes run the same Ray and Python versions: the
# worker image pins the same two.
ARG RAY_VERSION=2.60.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1

# CPU wheels of torch: the coordinator runs the BO model, never a trial.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.4,<2.15" \
        "torchvision>=0.19,<0.30" \
    && pip install "ray[tune]==${RAY_VERSION}"

WORKDIR /opt/esnac
COPY pyproject.toml README.md ./
COPY embedding ./embedding
COPY workers ./workers
COPY service ./service
COPY migrations ./migrations
COPY docker/*.sh ./docker/
RUN pip install . && chmod +x docker/*.sh

RUN useradd --create-home --uid 1000 esnac \
    && mkdir -p /var/lib/esnac/artifacts /var/lib/esnac/data \
    && chown -R esnac /var/lib/esnac
USER esnac
WORKDIR /var/lib/esnac
EXPOSE 8000
ENTRYPOINT ["/opt/esnac/docker/entrypoint-coordinator.sh"]
CMD ["esnac", "serve", "--host", "0.0.0.0", "--port", "8000"]
