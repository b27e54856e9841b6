# syntax=docker/dockerfile:1
# chimera-merge: builds a child checkpoint from parents on disk or on the Hugging Face Hub (the k8s merge Job).
#
#   docker build -f docker/merge.Dockerfile -t chimera/merge:0.1.0 .
#   docker run --rm -v "$PWD/out:/models" -v hf-cache:/cache -e HF_TOKEN chimera/merge:0.1.0 \
#     build /opt/chimera/recipes/r1t2.yaml --out /models/r1t2 --resume --cache-dir /cache --no-progress
#
# CPU only: the merge is bound by reading the parents (README: a CUDA build took the same time on an H200 host).
# No vLLM: `pip install .` without extras is the merge stage and the library.
ARG PYTHON_IMAGE=python:3.11.15-slim-bookworm@sha256:d29f48a31a8b408ed19272ca1e7b10ebae13b240a27e862d3d4217c528e2e0c3

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONSTRAINT=/tmp/constraints.txt \
    PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY docker/constraints-cpu.txt /tmp/constraints.txt
RUN python -m venv /opt/venv \
    && pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0+cpu
COPY pyproject.toml README.md ./
COPY merge merge
COPY chimera_serve chimera_serve
COPY benchmarks benchmarks
RUN pip install .

FROM ${PYTHON_IMAGE}
RUN useradd --uid 10001 --create-home --home-dir /home/chimera --shell /usr/sbin/nologin chimera
COPY --from=build /opt/venv /opt/venv
COPY merge/recipes /opt/chimera/recipes
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_DISABLE_TELEMETRY=1
USER 10001
WORKDIR /home/chimera
# A batch job, not a service: progress is its log, failure its exit code (the Job retries with --resume).
HEALTHCHECK NONE
ENTRYPOINT ["chimera-merge"]
CMD ["--help"]
