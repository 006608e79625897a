# Production image: `python -m leaddist.serve` (uvicorn, one worker per core, DEBUG off, and a
# background worker beside it: BACKGROUND_WORKERS=0 for none), the server `make serve` runs. A
# worker-only container runs `python -m leaddist.background --concurrency 1` (drains) and
# `python manage.py deliver_leads` (deliveries). Configure it with environment
# variables (docs/OPERATIONS.md, Configuration);
# it refuses to start without SECRET_KEY, WEBHOOK_SECRET and DELIVERY_SECRET_KEYS. Run
# `python manage.py migrate` once per release, before starting the new containers.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DEBUG=false \
    HOST=0.0.0.0 \
    PORT=8000

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
# WEB_CONCURRENCY worker processes (default: the container's cores); more than one needs
# REDIS_URL.
CMD ["python", "-m", "leaddist.serve"]
