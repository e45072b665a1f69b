"""`OptimizerMonitor`: a Keras callback that shows the learned optimizer at work in TensorBoard.

    log_dir = "runs/digits"
    model.fit(..., callbacks=[tf.keras.callbacks.TensorBoard(log_dir), OptimizerMonitor(log_dir)])

The usual `TensorBoard` callback writes `log_dir/train` and `log_dir/validation`; this one writes
the `LearnedOptimizer`'s own statistics (`LearnedOptimizer.last_step_statistics`) to
`log_dir/optimizer`, as scalars `optimizer/<name>`.
"""

from __future__ import annotations

import os

import tensorflow as tf

from rl_optimizer.keras_optimizer import LearnedOptimizer

__all__ = ["OptimizerMonitor"]


class OptimizerMonitor(tf.keras.callbacks.Callback):
    """Writes the optimizer's update/gradient ratio, norms, mean log_lr and skipped steps.

    Args:
      log_dir: the `TensorBoard` callback's log directory; scalars go to its `optimizer` run.
      update_freq: "epoch" (step = epoch, like the TensorBoard callback's epoch scalars) or an
        int n: every n-th optimizer step (step = the optimizer's iterations).
    """

    def __init__(self, log_dir: str, update_freq: str | int = "epoch"):
        super().__init__()
        if update_freq != "epoch" and not (isinstance(update_freq, int) and update_freq > 0):
            raise ValueError(f"update_freq must be 'epoch' or an int > 0, got {update_freq!r}")
        self.log_dir = os.path.join(os.fspath(log_dir), "optimizer")
        self.update_freq = update_freq
        self._writer = None

    def _optimizer(self) -> LearnedOptimizer:
        # mixed_float16 wraps the optimizer in a LossScaleOptimizer.
        optimizer = getattr(self.model.optimizer, "inner_optimizer", self.model.optimizer)
        if not isinstance(optimizer, LearnedOptimizer):
            raise ValueError("OptimizerMonitor needs a model compiled with a LearnedOptimizer, "
                             f"got {type(optimizer).__name__}")
        return optimizer

    def on_train_begin(self, logs=None):
        self._optimizer()
        self._writer = tf.summary.create_file_writer(self.log_dir)

    def _implements_train_batch_hooks(self):
        # Keras syncs on every batch while any callback has batch hooks (as ModelCheckpoint).
        return self.update_freq != "epoch"

    def on_train_batch_end(self, batch, logs=None):
        step = int(self._optimizer().iterations.numpy())
        if self.update_freq != "epoch" and step % self.update_freq == 0:
            self._write(step)

    def on_epoch_end(self, epoch, logs=None):
        if self.update_freq == "epoch":
            self._write(epoch)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _write(self, step: int):
        with self._writer.as_default(step=step):
            for name, value in self._optimizer().last_step_statistics().items():
                tf.summary.scalar(f"optimizer/{name}", value)
        self._writer.flush()
