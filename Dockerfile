# One image for every Unison program: `docker run IMAGE node -config F replicator|relayer`,
# `... client`, `... operator`. Installs only from a wheelhouse built on the host
# (scripts/container/wheelhouse.sh -> build/wheels/{deps,unison}), so the build needs no
# package index:
#
#   bash scripts/container/wheelhouse.sh
#   docker build -t unison:0.1.0 .                                   # public python base
#   docker build --network host --build-arg BASE_IMAGE=unison-base:bookworm -t unison:0.1.0 .
#
# BASE_IMAGE must provide python3 (3.11, the wheelhouse's version) with the venv module.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
LABEL org.unison.stage=build
# Dependencies first: this layer stays cached while only the project's code changes.
COPY build/wheels/deps /wheels/deps
RUN python3 -m venv /opt/unison \
 && /opt/unison/bin/pip install --no-cache-dir --no-index --find-links /wheels/deps /wheels/deps/*.whl
COPY build/wheels/unison /wheels/unison
# With the `operator` extra (kopf, kubernetes): the image also runs `unison operator`.
RUN whl="$(ls /wheels/unison/*.whl)" \
 && /opt/unison/bin/pip install --no-cache-dir --no-index --find-links /wheels/deps "$whl[operator]" \
 && /opt/unison/bin/pip check \
 && /opt/unison/bin/pip uninstall --yes --quiet setuptools pip

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="unison" \
      org.opencontainers.image.description="Multi-datacenter CRDT database, its client and its Kubernetes operator" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric uid/gid so Kubernetes runAsUser/fsGroup and host volume owners match.
RUN echo 'unison:x:10001:10001:unison:/data:/usr/sbin/nologin' >>/etc/passwd \
 && echo 'unison:x:10001:' >>/etc/group \
 && mkdir -p /data /etc/unison \
 && chown 10001:10001 /data
COPY --from=build /opt/unison /opt/unison
COPY scripts/container/healthcheck.py /usr/local/bin/healthcheck
ENV PATH=/opt/unison/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
# Nodes listen on 8000+i (HTTP) and 4000+i (gRPC), the relayer's notifiers from 5555;
# probe any of them with e.g. --health-cmd 'healthcheck http://127.0.0.1:8001/healthz'.
ENTRYPOINT ["unison"]
CMD ["--help"]
