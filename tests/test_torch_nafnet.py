"""lliejax.interop.torch_nafnet: the library's PyTorch ConditionalNAFNet and the checks that run without a checkout."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lliejax.interop import crosscheck, torch_nafnet  # noqa: E402
from lliejax.interop.nafnet import KEYMAP  # noqa: E402
from lliejax.models.nafnet import ConditionalNAFNet  # noqa: E402


TINY = {"img_channel": 3, "width": 8, "enc_blk_nums": [1, 1], "middle_blk_num": 1, "dec_blk_nums": [1, 1]}


def test_state_dict_layout_is_official():
  for model in (TINY, crosscheck.SMALL_MODEL):
    sd = torch_nafnet.build(model).state_dict()
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == list(KEYMAP.state_dict_shapes(model).items())


def test_random_network_randomises_every_branch():
  net = torch_nafnet.random_network(torch_nafnet.build, TINY, seed=0)
  assert not net.training
  sd = net.state_dict()
  assert float(sd["encoders.0.0.beta"].abs().max()) > 0 and float(sd["decoders.1.0.gamma"].abs().max()) > 0
  again = torch_nafnet.random_network(torch_nafnet.build, TINY, seed=0).state_dict()
  assert all(torch.equal(sd[k], again[k]) for k in sd)  # seeded


def test_compare_forward_agrees_after_conversion():
  net = torch_nafnet.random_network(torch_nafnet.build, TINY, seed=1)
  params = KEYMAP.import_state_dict({k: v.numpy() for k, v in net.state_dict().items()}, TINY).params
  model = ConditionalNAFNet(img_channel=3, width=8, enc_blk_nums=(1, 1), middle_blk_num=1, dec_blk_nums=(1, 1))
  make_noise_fn = lambda p: (lambda x, mu, t: model.apply({"params": p}, x, mu, t))
  rng = np.random.default_rng(2)
  mu = rng.uniform(size=(11, 17, 3)).astype(np.float32)
  x = mu + 0.2 * rng.standard_normal(mu.shape).astype(np.float32)
  out = torch_nafnet.compare_forward(net, make_noise_fn, params, x, mu, 40)
  assert out["torch"].shape == out["lliejax"].shape == (11, 17, 3)
  assert np.abs(out["torch"]).max() > 0.05
  np.testing.assert_allclose(out["lliejax"], out["torch"], rtol=0, atol=1e-5)
  batch = torch_nafnet.compare_forward(net, make_noise_fn, params, np.stack([x, x]), np.stack([mu, mu]), [40, 3])
  np.testing.assert_allclose(batch["torch"][0], out["torch"], rtol=0, atol=1e-6)
  assert np.abs(batch["lliejax"][1] - batch["lliejax"][0]).max() > 1e-4  # the per-image timestep is used


def test_reference_builder_selects_the_transcription_without_a_checkout(tmp_path):
  assert torch_nafnet.reference_builder(None) == (torch_nafnet.build, torch_nafnet.TRANSCRIPTION)
  assert torch_nafnet.reference_builder(str(tmp_path / "missing"))[0] is torch_nafnet.build
  with pytest.raises(FileNotFoundError, match="DenoisingNAFNet_arch.py"):
    torch_nafnet.reference_builder(str(tmp_path))  # exists, but is no checkout


def test_run_available_checks_without_checkout():
  lines = []
  rows = torch_nafnet.run_available_checks(None, model=TINY, sizes=[(21, 13)], timesteps=[3, 100],
                                           log=lines.append)
  assert [r.status for r in rows] == ["PASS"] * 5 + ["SKIP"] * 2, crosscheck.format_table(rows)
  assert rows[0].component.startswith("nafnet (transcription)") and lines
  assert "official checkout" in rows[-1].note
