FROM python:3.11-slim
WORKDIR /srv/abtest
COPY pyproject.toml constraints.txt README.md ./
COPY abtest abtest
COPY engines engines
COPY workers workers
COPY benchmarks benchmarks
COPY migrations migrations
RUN pip install --no-cache-dir -c constraints.txt '.[server]'
EXPOSE 8000
CMD ["abtest", "serve", "--host", "0.0.0.0", "--port", "8000"]
