# One image for the API and the workers: `lineage serve` or `lineage worker`.
FROM python:3.11-slim
WORKDIR /srv/lineage
COPY pyproject.toml constraints-cpu.txt README.md ./
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations
# Editable, so Alembic finds ./migrations beside the package. PyPI's Linux torch wheel carries
# CUDA libraries: a large image that also runs on GPUs.
RUN pip install --no-cache-dir -c constraints-cpu.txt -e .
ENV STORAGE_DIR=/data/storage
EXPOSE 8000
ENTRYPOINT ["lineage"]
CMD ["serve", "--host", "0.0.0.0"]
