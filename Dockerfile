# Production image: daphne serving leaddist over ASGI. Configure it with environment
# variables (README, Configuration); the image refuses to start without its secrets.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DEBUG=false \
    PORT=8000 \
    WEB_CONCURRENCY=1

WORKDIR /app
RUN useradd --create-home --uid 1000 leaddist

COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY . .
# Static files are collected at build time; the dummy values never reach the running app.
RUN DEBUG=true SECRET_KEY=build DATABASE_URL=postgres://build@localhost/build \
    WEBHOOK_SECRET=whsec_YnVpbGQ= python manage.py collectstatic --no-input --verbosity 0

USER leaddist
EXPOSE 8000
# Run `python manage.py migrate` once per release before starting new containers.
# WEB_CONCURRENCY daphne processes share the port (one per core); more than one needs REDIS_URL.
CMD ["sh", "-c", "python -m leaddist.serve --host 0.0.0.0 --port ${PORT}"]
