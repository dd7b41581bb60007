"""The PyTorch restatement of the official ConditionalNAFNet used by the tests: the library's transcription
(:mod:`lliejax.interop.torch_nafnet`, written from REFERENCE.md section 1.8 with the official ``state_dict`` key names
and registration order), plus :func:`randomise_`."""
from __future__ import annotations

import torch
from torch import nn

from lliejax.interop.torch_nafnet import Block, ChannelNorm, Gate, TimeEmbedding, TorchConditionalNAFNet  # noqa: F401


def randomise_(model: nn.Module, seed: int = 0, scale: float = 0.5) -> nn.Module:
  """Give ``beta``/``gamma``/``g`` non-default values so every path contributes to the output."""
  from lliejax.interop.crosscheck import randomise_norm_params  # pylint: disable=import-outside-toplevel
  randomise_norm_params(model, seed, scale)
  return model
