# One image for every process: web (default), worker, beat, flower and the migration.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin app

WORKDIR /app
COPY pyproject.toml README.md gunicorn.conf.py ./
COPY shared ./shared
COPY web ./web
COPY worker ./worker
COPY migrations ./migrations
COPY client ./client
# The client package serves `flask --app web connections call`.
RUN pip install . ./client \
    && mkdir -p /app/var \
    && chown app:app /app/var

USER app
ENV PORT=8000
EXPOSE 8000

# gunicorn reads ./gunicorn.conf.py: gthread workers, WEB_CONCURRENCY, WEB_THREADS, PORT.
CMD ["gunicorn", "web:create_app()"]
