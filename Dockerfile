# ingestd container image. From the repository root, with podman or docker:
#     make image                    # downloads the locked wheels, then builds offline
#     docker build -t ingestd .     # the same, fetching the locked wheels during the build
# Run (see deploy/README.md):
#     docker run -d --name ingestd --read-only --cap-drop=all --stop-timeout 45 \
#         -e INGESTD_DSN=postgresql://ingestd@db:5432/warehouse \
#         -v /srv/landing/inbox:/data/inbox -p 9108:9108 ingestd
#
# BASE: any Debian-like image with python3 (3.11+) and its venv module. CI builds on a base
# made from Debian packages (make image-base), as no image registry is reachable there.
ARG BASE=python:3.11-slim

# ---- builder: the locked dependencies and the wheel, in a virtualenv ------------------
FROM ${BASE} AS builder
# PATH is spelled out: an imported base (podman import) carries no environment at all.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/ingestd/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# make image passes PIP_NO_INDEX=1 PIP_FIND_LINKS=/src/requirements/wheels: the wheels it
# downloaded (hash-checked) beforehand, so the build itself needs no network.
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
WORKDIR /src
COPY requirements/ requirements/
# Exactly the versions CI tests (requirements/image.txt, `make lock`), each hash-checked.
RUN python3 -m venv /opt/ingestd \
 && pip install --require-hashes --no-deps -r requirements/image.txt -r requirements/build.txt
COPY pyproject.toml README.md ./
COPY ingestd/ ingestd/
# No build isolation: the locked setuptools above builds it, not the newest from PyPI.
RUN pip wheel --no-deps --no-build-isolation -w dist .
# pip check: the lock holds everything the wheel requires. pip and setuptools leave with it,
# and so do the test suites and C++ headers and sources that wheels ship (pyarrow: 13 MB).
RUN pip install --no-deps dist/*.whl \
 && pip check \
 && pip uninstall --yes pip setuptools \
 && find /opt/ingestd -depth \( -type d -name tests -o -name conftest.py \) -exec rm -rf {} + \
 && rm -rf /opt/ingestd/lib/python3*/site-packages/pyarrow/include \
        /opt/ingestd/lib/python3*/site-packages/pyarrow/src

# ---- runtime: the virtualenv, nothing else ----------------------------------------------
FROM ${BASE} AS runtime
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/ingestd/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Arrow reads time zones from the system's tzdata: without it a timestamptz column fails
# at load time ("Cannot locate or parse timezone"), so a base without it fails here instead.
RUN test -f /usr/share/zoneinfo/UTC \
 || { echo "BASE has no tzdata (/usr/share/zoneinfo): install it in the base" >&2; exit 1; }
# A fixed uid/gid, so bind-mounted landing directories can be chowned to it on the host.
ARG INGESTD_UID=10001
RUN groupadd --system --gid ${INGESTD_UID} ingestd \
 && useradd --system --uid ${INGESTD_UID} --gid ingestd --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin ingestd
# The directories exist (owned by ingestd) before VOLUME, so fresh volumes inherit the owner.
RUN mkdir -p /data/inbox /data/done /data/failed /data/state /etc/ingestd \
 && chown -R ingestd:ingestd /data
COPY --from=builder /opt/ingestd/ /opt/ingestd/
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
