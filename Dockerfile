# harvest-async: a slim, non-root image. The virtualenv lives at the same path as on a VPS
# (/opt/harvest-async/.venv), built in a throwaway stage and copied over.
#
#   make wheelhouse && docker build -t harvest-async:local .
#   docker build --build-arg BASE_IMAGE=harvest-local/python:... .   # deploy/local-images.sh
#
# Dependencies come from requirements/lock.txt, hash-checked. With wheels in ./wheelhouse
# (`make wheelhouse`, built on the host from the lock plus this project's wheel) the build
# installs only those, with --no-index: no network inside the build. Without a wheelhouse it
# downloads the same pinned, hash-checked files from the index.
#
# BASE_IMAGE: any Debian-like image with python3 (3.11+) and its venv module, e.g. the
# official image below (exact version) or the local one deploy/local-images.sh builds.
ARG BASE_IMAGE=python:3.11.13-slim-bookworm

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY requirements/lock.txt requirements/lock.txt
COPY wheelhouse ./wheelhouse
COPY pyproject.toml README.md ./
COPY harvest_async ./harvest_async
RUN python3 -m venv /opt/harvest-async/.venv \
    && pip=/opt/harvest-async/.venv/bin/pip \
    && if ls wheelhouse/harvest_async-*.whl >/dev/null 2>&1; then \
           "$pip" install --no-cache-dir --no-index --find-links wheelhouse \
               --require-hashes -r requirements/lock.txt \
           && "$pip" install --no-cache-dir --no-index --no-deps wheelhouse/harvest_async-*.whl; \
       else \
           "$pip" install --no-cache-dir --require-hashes -r requirements/lock.txt \
           && "$pip" install --no-cache-dir --no-deps .; \
       fi \
    && "$pip" uninstall --yes pip setuptools >/dev/null \
    && /opt/harvest-async/.venv/bin/harvest-async --version

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="harvest-async" \
      org.opencontainers.image.description="Profit-harvest proposal publisher (proposes only, never trades)"
RUN groupadd --system --gid 10001 harvest \
    && useradd --system --uid 10001 --gid harvest --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin harvest
COPY --from=build /opt/harvest-async/.venv /opt/harvest-async/.venv
ENV PATH=/opt/harvest-async/.venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /opt/harvest-async
# the same checks an operator runs; exit 1 (a check failed) or 3 (no Redis) = unhealthy
HEALTHCHECK --interval=10s --timeout=10s --start-period=30s --retries=3 \
    CMD ["harvest-async", "doctor", "--only", "redis,notifications,publisher"]
ENTRYPOINT ["harvest-async"]
CMD ["run"]
