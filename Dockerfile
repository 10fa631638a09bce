# syntax=docker/dockerfile:1
# Build: docker build -t rpl-cds .   Run: docker run -p 8080:8080 -v rpl-cds-data:/data rpl-cds
# The base is pinned to an exact Python patch release and Debian release, so that a rebuild gives
# the image that was tested; move both stages together, deliberately, for security updates.
# tests/test_dockerfile.py builds the wheel from exactly the files copied below and starts CMD.
FROM python:3.11.13-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md openapi.yaml ./
COPY service ./service
COPY plandefinitions ./plandefinitions
COPY mappings ./mappings
# pyproject.toml packages the synthetic scenarios (rpl-cds load-scenarios) as rpl_cds_data.
COPY scenarios ./scenarios
RUN python -m venv /opt/rpl-cds \
    && /opt/rpl-cds/bin/pip install --no-cache-dir --upgrade pip \
    && /opt/rpl-cds/bin/pip install --no-cache-dir .

FROM python:3.11.13-slim-bookworm
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin rplcds \
    && mkdir -p /data && chown rplcds /data
COPY --from=build /opt/rpl-cds /opt/rpl-cds
ENV PATH=/opt/rpl-cds/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RPL_CDS_DATA_DIR=/data \
    RPL_CDS_WORKERS=2
USER rplcds
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"]
# The same command the tests run; workers come from RPL_CDS_WORKERS.
CMD ["rpl-cds", "serve", "--host", "0.0.0.0", "--port", "8080"]
