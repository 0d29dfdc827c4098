# One image for every aigw service; the container's command picks the service (aigw-edge, aigw-router…).
FROM python:3.11-slim AS build
RUN pip install --no-cache-dir uv
WORKDIR /app
COPY pyproject.toml uv.lock ./
COPY libs libs
COPY services services
COPY tools tools
RUN uv sync --frozen --no-dev --no-editable

FROM python:3.11-slim
RUN useradd --system --uid 10001 aigw && mkdir /knowledge && chown aigw /knowledge  # retrieval's embedded store
COPY --from=build /app/.venv /app/.venv
ENV PATH="/app/.venv/bin:$PATH" PYTHONUNBUFFERED=1
USER aigw
CMD ["aigw-edge"]
