# ingestd container image. Build from the repository root:
#     docker build -t ingestd .
# Run (see deploy/README.md):
#     docker run -d --name ingestd -e INGESTD_DSN=postgresql://ingestd@db:5432/warehouse \
#         -v /srv/landing/inbox:/data/inbox -p 9108:9108 --stop-timeout 45 ingestd

# ---- builder: the wheel, built exactly as `make wheel` builds it ----------------------
FROM python:3.12-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ingestd/ ingestd/
RUN pip wheel --no-deps -w dist .

# ---- runtime: the wheel and its dependencies, nothing else -----------------------------
FROM python:3.12-slim AS runtime
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# A fixed uid/gid, so bind-mounted landing directories can be chowned to it on the host.
ARG INGESTD_UID=10001
RUN groupadd --system --gid ${INGESTD_UID} ingestd \
 && useradd --system --uid ${INGESTD_UID} --gid ingestd --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin ingestd
COPY --from=builder /src/dist/ /tmp/dist/
RUN pip install /tmp/dist/*.whl && rm -rf /tmp/dist
# The directories exist (owned by ingestd) before VOLUME, so fresh volumes inherit the owner.
RUN mkdir -p /data/inbox /data/done /data/failed /data/state /etc/ingestd \
 && chown -R ingestd:ingestd /data
COPY deploy/docker/ingestd.toml /etc/ingestd/ingestd.toml
USER ingestd:ingestd
WORKDIR /data
VOLUME ["/data/inbox", "/data/done", "/data/failed", "/data/state"]
EXPOSE 9108
# SIGTERM: stop discovery, let workers finish or roll back their batch (shutdown_grace_s,
# 30 s), exit. Give the container more than that: docker stop -t 45 / stop_grace_period: 45s.
STOPSIGNAL SIGTERM
# Liveness only (/healthz): a database outage makes /readyz fail, not the container sick.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["ingestd"]
CMD ["--config", "/etc/ingestd/ingestd.toml"]
