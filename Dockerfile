# opensesame-predictor: a capped Ray head (2 CPUs, 4 GB) running the Serve app on :8000.
#   docker build -t opensesame .
#   docker run --cpus 2 --memory 4g -p 8000:8000 opensesame
FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml ./
COPY core ./core
COPY deployments ./deployments
COPY ranker ./ranker
COPY tools ./tools
COPY graph.py ./
RUN pip install --no-cache-dir .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 opensesame
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY graph.py serve_config.yaml ./
COPY configs ./configs
# Token auth on by default, both tokens from secrets (mounted files, never baked in):
#   /run/secrets/ray_auth_token        Ray's cluster token (`ray get-auth-token --generate`)
#   /run/secrets/opensesame_api_keys   API keys, lines `tenant sha256-of-token`
#                                      (`python -m deployments.serving.identity TENANT TOKEN`)
#   docker run --secret/-v ... ; a missing key file stops the Ingress (it never runs open).
ENV PATH=/opt/venv/bin:$PATH \
    RAY_AUTH_MODE=token \
    RAY_AUTH_TOKEN_PATH=/run/secrets/ray_auth_token \
    OPENSESAME_API_KEYS_FILE=/run/secrets/opensesame_api_keys \
    RAY_SERVE_THROUGHPUT_OPTIMIZED=1 \
    RAY_SERVE_ENABLE_HA_PROXY=1 \
    RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0 \
    RAY_worker_niceness=0 \
    RAY_USAGE_STATS_ENABLED=0 \
    OPENSESAME_DATA_DIR=/app/var
# /app is root's; the service writes only its data dir (spec cache, feedback).
RUN mkdir -p /app/var && chown opensesame /app/var
USER opensesame
EXPOSE 8000
# HAProxy answers /-/healthz itself (200 while an Ingress replica is up), outside the backend's
# admission rule: a container that is merely busy (503s to excess requests) is not restarted.
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/-/healthz', timeout=2).status != 200)"
# The head's caps come from deployments/serving/resources.py and HAProxy's admission control from
# deployments/serving/admission.py (a multi-line value, hence set here rather than with ENV), as for `make run`.
CMD ["sh", "-c", "RAY_SERVE_HAPROXY_HEALTH_CHECK_INTER=\"$(python -m deployments.serving.admission)\" ray start --head $(python -m deployments.serving.resources) && exec serve run --address auto serve_config.yaml"]
