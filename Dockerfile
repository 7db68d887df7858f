# One image recipe for every service, built from the repository root with the service's name:
#   docker build --build-arg SERVICE=progress -t lessonstream-progress .
#   docker build --build-arg SERVICE=certificates \
#       --build-arg "SYSTEM_PACKAGES=libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0" .
# The image carries only shared/ and that service's code, installs only that service's
# dependencies (the pyproject extra of the same name), and runs its composition root
# (services.<SERVICE>.app:build_app); the certificate worker's container overrides the command.
FROM python:3.11-slim

ARG SERVICE
# Libraries the service loads at run time (WeasyPrint's for certificates; see the Makefile).
ARG SYSTEM_PACKAGES=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SERVICE=${SERVICE}

RUN test -n "$SERVICE" || { echo "build with --build-arg SERVICE=<progress|enrollment|certificates|notifications>"; exit 1; } \
    && if [ -n "$SYSTEM_PACKAGES" ]; then \
         apt-get update && apt-get install -y --no-install-recommends $SYSTEM_PACKAGES \
         && rm -rf /var/lib/apt/lists/*; \
       fi
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services/__init__.py ./services/__init__.py
COPY services/${SERVICE} ./services/${SERVICE}
RUN pip install --no-cache-dir ".[${SERVICE}]" \
    && useradd --system --uid 10001 --no-create-home lessonstream

USER lessonstream
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status != 200)"]
# exec: uvicorn replaces the shell and receives the container's SIGTERM itself. Keep-alive:
# longer than the gateway keeps an idle connection (gateway/Caddyfile).
CMD ["sh", "-c", "exec python -m shared.serve --factory \"services.${SERVICE}.app:build_app\" --host 0.0.0.0 --port 8000 --no-access-log --timeout-keep-alive 75"]
