# A Ray node with CUDA: runs trials (distillation training) and teacher training on its GPUs.
# Build from the repository root:  docker build -f docker/worker.Dockerfile -t esnac-worker .
# Run it with the NVIDIA container toolkit (compose reserves the GPUs; `docker run --gpus all`).
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim-bookworm

ARG RAY_VERSION=2.60.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility

# PyPI's Linux torch wheels carry the CUDA 12 runtime, cuDNN and NCCL as pip packages; the host
# only needs the NVIDIA driver.
RUN pip install "torch>=2.4,<2.15" "torchvision>=0.19,<0.30" \
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
# Ray GCS, object manager / node manager ports are chosen by Ray; 6379 and 8265 on the head.
EXPOSE 6379 8265
ENTRYPOINT ["/opt/esnac/docker/entrypoint-ray.sh"]
CMD ["worker"]
