# Stock TF Serving with an exported rl_optimizer policy baked in. Serves gRPC on 8500 and REST on
# 8501: the `serving_default` step signature and TF-Agents' `action` signature (see README).
#
#   rl-optimizer export --policy default --model-dir models     # writes models/rl_optimizer/1/
#   docker build -t rl-optimizer-serving .                       # or --build-arg MODEL_DIR=...
#   docker run --rm -p 127.0.0.1:8500:8500 -p 127.0.0.1:8501:8501 rl-optimizer-serving
#
# Pinned: there is no stable 2.15.0 tag of this image; 2.15.1 matches tensorflow==2.15.1.
FROM tensorflow/serving:2.15.1

# A model base directory as `rl-optimizer export --model-dir` writes it:
# MODEL_DIR/rl_optimizer/<version>/.
ARG MODEL_DIR=models
ENV MODEL_NAME=rl_optimizer
COPY ${MODEL_DIR}/rl_optimizer /models/rl_optimizer
COPY serving/models.config serving/batching.config /etc/rl_optimizer/

EXPOSE 8500 8501

# The image's entrypoint runs tensorflow_model_server with --port=8500 --rest_api_port=8501 and
# appends these flags; the model config (name, base path, version policy) takes precedence over
# its --model_name/--model_base_path. New version directories are picked up every second.
CMD ["--model_config_file=/etc/rl_optimizer/models.config", \
     "--enable_batching=true", \
     "--batching_parameters_file=/etc/rl_optimizer/batching.config", \
     "--file_system_poll_wait_seconds=1"]
