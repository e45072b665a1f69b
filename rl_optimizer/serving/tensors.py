"""Numpy arrays ↔ `TensorProto`s, the fast way: raw `tensor_content` bytes.

`tf.make_tensor_proto` walks the array in Python for some dtypes and `tf.make_ndarray` builds an
eager tensor on the way; packing the raw bytes is one copy each way, which is what a million
coordinates per request needs. A proto that carries its values in the typed `*_val` fields (as
stock TF Serving answers) falls back to `tf.make_ndarray`, so both servers read the same.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2


def dtype_name(dtype: int) -> str:
    """`DT_FLOAT` for the enum value of float32: the name TF Serving's messages use."""
    return types_pb2.DataType.Name(dtype) if dtype in types_pb2.DataType.values() else str(dtype)


def shape_of(proto: tensor_pb2.TensorProto) -> tuple[int, ...]:
    return tuple(d.size for d in proto.tensor_shape.dim)


def fill(proto: tensor_pb2.TensorProto, array: np.ndarray) -> tensor_pb2.TensorProto:
    """Writes a numeric `array` into `proto` (dtype, shape, raw bytes) and returns `proto`."""
    array = np.ascontiguousarray(array)
    proto.dtype = tf.as_dtype(array.dtype).as_datatype_enum
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    proto.tensor_content = array.tobytes()
    return proto


def to_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """A new `TensorProto` holding a numeric `array`."""
    return fill(tensor_pb2.TensorProto(), array)


def to_ndarray(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """The array in `proto`; a read-only view of its bytes when it carries `tensor_content`.

    Raises:
      ValueError: the content does not fit the shape, or a dimension is negative.
    """
    shape = shape_of(proto)
    if any(size < 0 for size in shape):
        raise ValueError(f"negative dimension in shape {list(shape)}")
    if proto.tensor_content and proto.dtype != types_pb2.DT_STRING:
        dtype = np.dtype(tf.as_dtype(proto.dtype).as_numpy_dtype)
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if len(proto.tensor_content) != expected:
            raise ValueError(f"tensor_content has {len(proto.tensor_content)} bytes, shape "
                             f"{list(shape)} of {dtype.name} needs {expected}")
        return np.frombuffer(proto.tensor_content, dtype).reshape(shape)
    return tf.make_ndarray(proto)
