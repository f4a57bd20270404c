# flow-agent image: the agent alone by default; backend extras by build argument.
#
#   docker build -t flow-agent .                          # process backend, no Prefect
#   docker build --build-arg EXTRAS=server -t flow-agent .  # + prefect: runs process flows
#
# Process runs execute in this container with `python -m prefect.engine`, so an image that
# runs them needs Prefect and the flows' own dependencies: build with EXTRAS=server, or
# `FROM flow-agent` and pip install your project. Settings come from the environment
# (README "Configuration"); the health server listens on FLOW_AGENT_HEALTH_PORT (8080).

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/flow-agent
COPY pyproject.toml README.md ./
COPY agent ./agent
# "." or ".[server]" / ".[ecs,kubernetes]": the extras named by EXTRAS (comma-separated)
RUN /opt/flow-agent/bin/pip install --no-cache-dir ".${EXTRAS:+[${EXTRAS}]}" \
    && /opt/flow-agent/bin/flow-agent --help > /dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="flow-agent" \
      org.opencontainers.image.description="A lean, crash-safe agent for Prefect work pools" \
      org.opencontainers.image.licenses="Apache-2.0"
# a fixed numeric uid so Kubernetes can check runAsNonRoot
RUN groupadd --system --gid 10001 flow-agent \
    && useradd --system --no-log-init --uid 10001 --gid flow-agent \
       --home-dir /var/lib/flow-agent --create-home --shell /usr/sbin/nologin flow-agent
COPY --from=build /opt/flow-agent /opt/flow-agent
ENV PATH=/opt/flow-agent/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/flow-agent \
    PREFECT_HOME=/var/lib/flow-agent/prefect \
    FLOW_AGENT_HEALTH_PORT=8080 \
    FLOW_AGENT_LOG_FORMAT=json
USER 10001:10001
WORKDIR /var/lib/flow-agent
EXPOSE 8080
# the first SIGTERM drains (FLOW_AGENT_SHUTDOWN_GRACE, then FLOW_AGENT_KILL_GRACE): give
# `docker stop -t 120` / terminationGracePeriodSeconds: 120
STOPSIGNAL SIGTERM
# no curl in slim images: ask /healthz with the agent's own Python (non-2xx raises)
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('FLOW_AGENT_HEALTH_PORT', '8080') + '/healthz', timeout=4)"]
ENTRYPOINT ["flow-agent"]
CMD ["start"]
