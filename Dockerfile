# Image of the engine and CLI. The service issue adds the API and worker entry points.
FROM python:3.11-slim
WORKDIR /srv/lineage
COPY pyproject.toml constraints-cpu.txt README.md ./
COPY app ./app
COPY worker ./worker
# PyPI's Linux torch wheel carries CUDA libraries: a large image that also runs on GPUs.
RUN pip install --no-cache-dir -c constraints-cpu.txt .
ENTRYPOINT ["lineage"]
CMD ["demo"]
