"""Train a small MLP on scikit-learn's digits with the learned optimizer, over gRPC.

The model and its gradients are plain numpy; every optimizer step is one request to a policy
server (`rl-optimizer serve` or stock TF Serving), and `RemoteOptimizer` keeps the optimizer
state here. Without `--target` the script exports the policy and starts a server on loopback.

    python examples/remote_training.py                          # local server, shipped policy
    python examples/remote_training.py --policy random --epochs 5
    python examples/remote_training.py --target 127.0.0.1:8500  # a running server
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

HIDDEN = 32


def load_data(seed: int = 0):
    """Digits (bundled with scikit-learn, no download): x in [0, 1], 80/20 split."""
    x, y = load_digits(return_X_y=True)
    return train_test_split((x / 16.0).astype(np.float32), y, test_size=0.2, random_state=seed)


def init_params(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w1": (rng.normal(size=(64, HIDDEN)) / 8.0).astype(np.float32),
            "b1": np.zeros(HIDDEN, np.float32),
            "w2": (rng.normal(size=(HIDDEN, 10)) / np.sqrt(HIDDEN)).astype(np.float32),
            "b2": np.zeros(10, np.float32)}


def forward(params, x):
    hidden = np.tanh(x @ params["w1"] + params["b1"])
    logits = hidden @ params["w2"] + params["b2"]
    logits = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    return hidden, probs / probs.sum(axis=1, keepdims=True)


def loss_and_grads(params, x, y) -> tuple[float, dict[str, np.ndarray]]:
    """Mean cross-entropy and its gradients (backpropagation by hand)."""
    hidden, probs = forward(params, x)
    loss = -np.mean(np.log(probs[np.arange(len(y)), y] + 1e-12))
    d_logits = probs.copy()
    d_logits[np.arange(len(y)), y] -= 1.0
    d_logits /= len(y)
    d_hidden = (d_logits @ params["w2"].T) * (1.0 - hidden**2)
    grads = {"w1": x.T @ d_hidden, "b1": d_hidden.sum(0),
             "w2": hidden.T @ d_logits, "b2": d_logits.sum(0)}
    return float(loss), {k: g.astype(np.float32) for k, g in grads.items()}


def train(optimizer, epochs: int = 10, batch_size: int = 128, seed: int = 0, log=print):
    """Minibatch training; `optimizer.apply(params, grads)` updates the params in place.

    Returns:
      (params, losses): the trained parameters and the mean training loss of each epoch.
    """
    x_train, x_test, y_train, y_test = load_data(seed)
    params = init_params(seed)
    rng = np.random.default_rng(seed)
    losses = []
    for epoch in range(epochs):
        order = rng.permutation(len(x_train))
        total = 0.0
        for i in range(0, len(order), batch_size):
            batch = order[i:i + batch_size]
            loss, grads = loss_and_grads(params, x_train[batch], y_train[batch])
            optimizer.apply(params, grads)
            total += loss * len(batch)
        losses.append(total / len(x_train))
        accuracy = np.mean(forward(params, x_test)[1].argmax(1) == y_test)
        log(f"epoch {epoch + 1:3d}  loss {losses[-1]:.4f}  test accuracy {accuracy:.3f}")
    return params, losses


@contextlib.contextmanager
def local_server(policy_name: str):
    """Exports the policy to a temporary directory and serves it on a free loopback port."""
    from rl_optimizer import LearnedPolicy, export_policy, load_policy
    from rl_optimizer.serving import PolicyServer

    policy = LearnedPolicy.random(seed=0) if policy_name == "random" else load_policy(policy_name)
    with tempfile.TemporaryDirectory() as model_dir:
        export_policy(policy, model_dir)
        with PolicyServer(model_dir, port=0) as server:
            yield server.target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", help="host:port of a running server (default: start one)")
    parser.add_argument("--policy", default="default",
                        help="without --target: 'default' (shipped), 'random' or an export path")
    parser.add_argument("--model-name", default="rl_optimizer")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args(argv)

    from rl_optimizer.serving import PolicyClient, RemoteOptimizer

    with contextlib.ExitStack() as stack:
        try:
            target = args.target or stack.enter_context(local_server(args.policy))
        except ValueError as e:  # e.g. no shipped default policy in this installation
            print(f"error: {e} (or try --policy random)", file=sys.stderr)
            return 2
        client = stack.enter_context(PolicyClient(target, args.model_name))
        version = client.wait_until_available(timeout=30)
        print(f"training over gRPC with {args.model_name} version {version} at {target}")
        train(RemoteOptimizer(client), args.epochs, args.batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
