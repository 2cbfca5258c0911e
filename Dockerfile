# Component image for Kubeflow Pipelines / Vertex AI Pipelines: TFX 1.16 + headswap.
#   docker build -t REGION-docker.pkg.dev/PROJECT/REPO/headswap:TAG .
#   headswap compile --target vertex --image REGION-docker.pkg.dev/PROJECT/REPO/headswap:TAG ...
FROM tensorflow/tfx:1.16.0

WORKDIR /headswap
COPY requirements.lock .
# The same pins as the local environment, so a pipeline behaves the same everywhere.
RUN python -m pip install --no-cache-dir "$(grep '^uv==' requirements.lock)" \
 && python -m uv pip install --system --no-cache -r requirements.lock
COPY setup.py README.md ./
COPY components components
COPY pipeline pipeline
COPY trainer trainer
COPY tuning tuning
COPY evaluation evaluation
COPY serving serving
RUN python -m pip install --no-cache-dir --no-deps .
