# mailcrm: one gateway node (SMTP relay, IMAP poller, spool worker, HTTP status and metrics).
# Build: docker build -t mailcrm .    Run: see docker-compose.yml (two nodes + PostgreSQL).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md LICENSE cli.py ./
COPY crm ./crm
COPY proxy ./proxy
RUN pip install . \
    && useradd --system --create-home --home-dir /var/lib/mailcrm --shell /usr/sbin/nologin mailcrm \
    && rm -rf /src

# The data directory holds the local file spool (B1: mail accepted while the database is away)
# and, without MAILCRM_SECRET_KEY, the key file; mount a volume here.
ENV XDG_DATA_HOME=/var/lib/mailcrm
WORKDIR /var/lib/mailcrm
USER mailcrm

# 2587: SMTP submission relay; 8025: /healthz, /metrics and the status page.
# Both listen on loopback unless the config file says otherwise (deploy/compose.toml does).
EXPOSE 2587 8025
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8025/healthz', timeout=4)"]

ENTRYPOINT ["mailcrm"]
CMD ["serve"]
