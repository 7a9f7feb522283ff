# syntax=docker/dockerfile:1
# Multi-arch: `docker buildx build --platform linux/amd64,linux/arm64 -t nfs-watcher-uploader .`
# or a plain `docker build` on the Jetson itself.
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# --- build: a venv from the lock file, then the project itself ---------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# `strip`: the wheels' extension modules carry about 30 MB of symbols nothing reads at run time.
RUN apt-get update \
 && apt-get install -y --no-install-recommends binutils \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /build
# A venv without pip: the base image's pip installs into it (`--python`), so the runtime image
# carries no installer (16 MB).
RUN python -m venv --without-pip /opt/venv
COPY requirements.lock ./
RUN pip --python /opt/venv/bin/python install --require-hashes --only-binary=:all: \
      -r requirements.lock \
 && find /opt/venv -name '*.so' -exec strip --strip-unneeded {} +
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip --python /opt/venv/bin/python install --no-deps .

# --- runtime: the venv only (no pip, no compilers, no caches), a fixed non-root user -----
FROM ${PYTHON_IMAGE}
# The UID/GID must be allowed to create, rename and delete files on the NFS export
# (see README "Deploy"): 10001:10001 unless you rebuild with other values.
ARG APP_UID=10001
ARG APP_GID=10001
RUN groupadd --system --gid "${APP_GID}" uploader \
 && useradd --system --uid "${APP_UID}" --gid "${APP_GID}" --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin uploader
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    APP_HOST=0.0.0.0 \
    APP_PORT=8000
USER ${APP_UID}:${APP_GID}
WORKDIR /tmp
EXPOSE 8000
CMD ["nfs-watcher-uploader"]
