"""The policy as a service, over TF Serving's gRPC API.

  server.py  `rl-optimizer serve`: Predict / GetModelMetadata / GetModelStatus for exported
             policies (models.py loads and polls versions, tensors.py packs arrays,
             limits.py bounds what a request may cost, memory.py gives the heap back,
             tls.py checks certificates and keys)
  client.py  `PolicyClient`: steps from that server or from stock TF Serving
  remote.py  `RemoteOptimizer`: a numpy-dict optimizer keeping the state on the client
"""

from rl_optimizer.serving.client import PolicyClient, ServerUnavailableError
from rl_optimizer.serving.remote import RemoteOptimizer
from rl_optimizer.serving.server import PolicyServer

__all__ = ["PolicyClient", "PolicyServer", "RemoteOptimizer", "ServerUnavailableError"]
