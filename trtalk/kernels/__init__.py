"""Custom CUDA kernels for the generator's modulated convolutions (csrc/), their PyTorch ops
and references. See `ops` (public functions), `reference`, `loader` and `build`."""

from trtalk.kernels.ops import (bias_act_noise, cuda_unavailable_reason, modulated_conv2d,
                                to_rgb)

__all__ = ["bias_act_noise", "cuda_unavailable_reason", "modulated_conv2d", "to_rgb"]
