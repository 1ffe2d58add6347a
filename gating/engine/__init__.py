"""The inference build: a trained (gated) model as registered-op calls with folded and fused epilogues.

* :func:`build`: trace, fold every BatchNorm into its convolution, fuse the
  residual add and ReLU into the conv epilogue, pack weights once and run
  through ``gating::conv2d`` / ``gating::gated_conv2d`` /
  ``gating::channel_sparse_conv2d`` (``docs/engine.md``).
* :class:`InferenceModel`: the result; checks its input and keeps the gated
  layers' ``last_decisions``.
* :class:`DenseConvInference`, :func:`fold_conv_batchnorm`: the dense
  convolution's inference module and its exact BatchNorm folding.
"""

from .build import BUILD_DTYPES, build
from .dense import DENSE_BACKENDS, DenseConvInference, fold_conv_batchnorm
from .inference import InferenceModel

__all__ = ["BUILD_DTYPES", "DENSE_BACKENDS", "DenseConvInference", "InferenceModel", "build", "fold_conv_batchnorm"]
