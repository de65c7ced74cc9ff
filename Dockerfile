# syntax=docker/dockerfile:1
# harvest-async: a slim, non-root image. The virtualenv lives at the same path as on a VPS
# (/opt/harvest-async/.venv), built in a throwaway stage and copied over.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY harvest_async ./harvest_async
RUN python -m venv /opt/harvest-async/.venv \
    && /opt/harvest-async/.venv/bin/pip install --no-cache-dir . \
    && /opt/harvest-async/.venv/bin/harvest-async --version

FROM ${PYTHON_IMAGE}
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
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["harvest-async", "doctor", "--only", "redis,notifications,publisher"]
ENTRYPOINT ["harvest-async"]
CMD ["run"]
