# Component image for Vertex AI Pipelines / Kubeflow Pipelines (and Dataflow's Beam workers):
# TFX 1.16 + the pinned environment + headswap.
#   docker build -t REGION-docker.pkg.dev/PROJECT/REPO/headswap:TAG .
#   headswap compile --target vertex --image REGION-docker.pkg.dev/PROJECT/REPO/headswap:TAG ...
FROM tensorflow/tfx:1.16.0

WORKDIR /headswap
COPY requirements.lock .
# The same pins as the local environment, so a pipeline behaves the same everywhere.
# Each file is checked against the lock's sha256, uv's too (cut out of the lock as in the Makefile).
RUN sed -n '/^uv==/,/[^\\]$/p' requirements.lock \
      | python -m pip install --no-cache-dir --require-hashes -r /dev/stdin \
 && python -m uv pip install --system --no-cache --require-hashes -r requirements.lock

# Beam's worker boot: the same image can be Dataflow's --sdk_container_image.
COPY --from=apache/beam_python3.10_sdk:2.59.0 /opt/apache/beam /opt/apache/beam

COPY setup.py README.md ./
COPY components components
COPY pipeline pipeline
COPY trainer trainer
COPY tuning tuning
COPY evaluation evaluation
COPY serving serving
RUN python -m pip install --no-cache-dir --no-deps .

# EfficientNet-Lite ImageNet weights converted once, here, not in every pipeline step.
ENV HEADSWAP_CACHE_DIR=/opt/headswap-cache
RUN python -c "from headswap.trainer.backbones import efficientnet_lite as lite; \
[lite.imagenet_weights_file(name) for name in ('efficientnet_lite0', 'efficientnet_lite1', \
'efficientnet_lite2')]"

# Pipeline steps and Vertex training jobs name their own command; Dataflow starts this.
ENTRYPOINT ["/opt/apache/beam/boot"]
