"""``lliejax crosscheck anlightendiff`` against the official code, and ``lliejax convert --to-torch OUT.ckpt`` loaded
strictly by the official Lightning module.

The official code is executed from the copy tests/torch_anlightendiff_nets.py finds
(``$LLIEJAX_ANLIGHTENDIFF_OFFICIAL``, a checkout or bare git mirror, else the mirror of allanchan339/AnlightenDiff,
by :func:`lliejax.interop.crosscheck_anlightendiff.import_official`); skipped when there is none, or without
torch. Every check runs with the small networks (``unet_dim`` 8, two levels); the two slowest ones are restricted
(the loss to DFPL with the encoder's anchor; both samplers run). A perturbed lliejax value makes rows fail.
"""
import json
import os
import sys

import numpy as np
import pytest

from lliejax import checkpoint, cli
from lliejax import config_utils as cu
from lliejax.diffusion import anlightendiff as ad
from lliejax.interop import anlightendiff as ia
from lliejax.interop import crosscheck_anlightendiff as ca
from lliejax.interop import crosscheck_reddit as cr

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_anlightendiff_nets as tn  # noqa: E402


@pytest.fixture(scope="module")
def official() -> str:
  root = tn.official_root()
  if root is None:
    pytest.skip(f"no official AnlightenDiff copy ({tn.OFFICIAL_ENV}, {tn.DEFAULT_MIRROR})")
  return root


def _check(official, only, expected, **kwargs):
  """Every row passes and the rows are ``expected`` (name prefixes, in order)."""
  rows = ca.run_checks(official, only=only, threads=1, log=lambda s: None, **kwargs)
  table = ca.format_table(rows)
  assert rows and all(r.status == "PASS" for r in rows), table
  names = [r.component for r in rows]
  assert len(names) == len(expected) and all(n.startswith(e) for n, e in zip(names, expected)), table
  return rows, table


def test_schedule_condition_q_sample_drds(official):
  expected = ["schedule FS buffer names/order", "schedule FS T=100 buffers (14)", "schedule TS buffer names/order",
              "schedule TS T=100 buffers (14)", "schedule FS T=8 buffers", "schedule TS T=8 buffers",
              "schedule FS T=20 buffers", "schedule TS T=20 buffers"]
  for f in ca.FOLDERS:
    expected += [f"condition {f} cond_data_transforms [LQ, HE, CM, GM] 3x37x53", f"condition {f} HE channels 3..5"]
  for f in ca.FOLDERS:
    expected += [f"q_sample {f} x_t, t=[0, 1, 50, 99]", f"q_sample {f} eps* vs the official noise after the in-place"]
  for f in ca.FOLDERS:
    expected += [f"drds {f} p_sample x_{{t-1}}, t in [99, 50, 1, 0]", f"drds {f} p_sample x0_hat, t in [99, 50, 1, 0]"]
  rows, _ = _check(official, ["schedule", "condition", "q_sample", "drds"], expected)
  he = [r for r in rows if "HE channels" in r.component]
  assert all(r.max_abs == 0 for r in he)  # torchvision's equalize, bit for bit


def test_networks_and_strict_export(official):
  expected = ["small FS LitDiffusion state_dict keys/order/shapes",
              "small FS Unet (stronger_cond, official encoder features) forward 32x48 t=[0, 99]",
              "small FS Unet_cond (conv + HE) forward 32x48", "small FS Unet_cond features (3 maps) 32x48",
              "small FS export (+ buffers) -> LitDiffusion.load_state_dict(strict)",
              "small TS LitDiffusion state_dict keys/order/shapes", "small TS Unet forward 32x48 t=[0, 99]",
              "small TS Unet_cond (sigmoid) forward 32x48", "small TS Unet_cond features (3 maps) 32x48",
              "small TS Unet_he forward on [HE(LQ), img_c] 32x48", "small TS anchor (1 - zeta) img_c + zeta 32x48",
              "small TS export (+ buffers) -> LitDiffusion.load_state_dict(strict)"]
  rows, _ = _check(official, ["nets"], expected)
  assert "196 tensors" in rows[0].note and "366 tensors" in rows[5].note


def test_sampler(official):
  expected = ["sampler FS DRDS T=100, official networks as eps_fn 16x24",
              "sampler FS anlightendiff_fs.sample end to end T=100 (small) 16x24"]
  rows, _ = _check(official, ["sampler"], expected, sampler_folders=("FS",))  # TS: the CLI's default run
  assert all("100 noise draws" in r.note for r in rows)


def test_dfpl_loss_and_gradients(official):
  rows, table = _check(official, ["loss"], ["loss FS dfpl phi=encoder t="] * 3, loss_cases=(("dfpl", "pred"),))
  assert [r.component.rsplit(": ", 1)[1] for r in rows] == ["value", "d loss / d unet", "d loss / d encoder"], table
  assert "choice calls" not in rows[0].note, table  # random.choice(['pred', 'ref']) was asked once


def test_detection_cli_and_perturbed_values_fail(official, tmp_path, monkeypatch, capsys):
  assert cr.detect_method(official) == "anlightendiff"
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="allanchan339/AnlightenDiff"):
    cr.detect_method(str(tmp_path / "empty"))
  out = tmp_path / "rows.json"
  assert cli.main(["crosscheck", "--official", official, "--only", "schedule", "--json", str(out)]) == 0
  assert "schedule TS T=100 buffers (14)" in capsys.readouterr().out
  assert {r["status"] for r in json.loads(out.read_text())} == {"PASS"}
  assert cli.main(["crosscheck", "anlightendiff", "--official", official, "--only", "unet"]) == 2

  # A wrong DRDS coefficient (c2 0.1 % too large): the schedule rows and the DRDS step fail, exit status 1.
  real = ad.make_schedule

  def perturbed(T=100, **kw):
    s = real(T, **kw)
    buffers = dict(s.buffers, extra_term_coef2=s.buffers["extra_term_coef2"] * np.float32(1.001))
    return ad.Schedule(T=s.T, betas=s.betas, alphas_cumprod=s.alphas_cumprod, buffers=buffers)

  monkeypatch.setattr(ad, "make_schedule", perturbed)
  assert cli.main(["crosscheck", "anlightendiff", "--official", official, "--only", "schedule,drds"]) == 1
  text = capsys.readouterr().out
  failed = {line.split("  ")[0] for line in text.splitlines() if " FAIL" in line}
  assert "schedule FS T=100 buffers (14)" in failed and "drds FS p_sample x_{t-1}, t in [99, 50, 1, 0]" in failed
  assert "drds FS p_sample x0_hat, t in [99, 50, 1, 0]" not in failed  # c2 does not enter x0_hat
  monkeypatch.undo()

  # The colour map 2e-5 off: the condition rows fail (max-abs tolerance 1e-5), the bitwise HE rows still pass.
  from lliejax.data import condition
  real_cm = condition.color_map
  monkeypatch.setattr(condition, "color_map", lambda img: real_cm(img) + 2e-5)
  rows = ca.run_checks(official, only=["condition"], threads=1, log=lambda s: None)
  assert [r.status for r in rows] == ["FAIL", "PASS", "FAIL", "PASS"], ca.format_table(rows)


# ------------------------------------------------------------------------------------------------ export to .ckpt
def _official_ckpt(code, folder, path, seed):
  """A random official-layout Lightning checkpoint of the tiny networks (T = 8), from the official module."""
  cfg = ca.official_config(code, folder, timesteps=8, **ca.SMALL)
  lit = ca.official_lightning(code, folder, cfg, seed=seed)
  sd = {k: v.clone() for k, v in lit.state_dict().items()}
  torch.save({"epoch": 3, "global_step": 99, "state_dict": sd}, path)
  return cfg, sd


def _load_strictly(code, folder, cfg, path):
  """What FS/test.py / TS/test.py do, with ``strict=True``: ``LitDiffusion.load_from_checkpoint(path, ...)``."""
  with code.active(folder) as ns:
    unet = ns.model.Unet(cfg, in_dim=cfg.in_dim)
    unet_cond = ns.cond.Unet_cond(cfg, cfg.cond_in_dim, True)
    diffusion = ns.diffusion.EnlightDiffusion(unet, cfg)
    if folder == "FS":
      return ns.diffusion.LitDiffusion.load_from_checkpoint(path, diffusion_model=diffusion, encoder=unet_cond,
                                                            config=cfg, strict=True)
    cfg = type(cfg)(**dict(vars(cfg), diffusion_path=str(path)))  # LitHE.load_from_checkpoint(path) inside
    return ns.diffusion.LitDiffusion.load_from_checkpoint(path, diffusion_model=diffusion,
                                                          encoder=ns.cond.LitCond(unet_cond, cfg), config=cfg,
                                                          strict=True)


def _per_network(code, folder, cfg, sd):
  """Each network prefix of ``sd`` into its own fresh official module, ``strict=True``."""
  with code.active(folder) as ns:
    nets = {"model.unet.": ns.model.Unet(cfg, in_dim=cfg.in_dim)}
    if folder == "FS":
      nets["encoder."] = ns.cond.Unet_cond(cfg, cfg.cond_in_dim, True)
    else:
      nets["encoder.model."] = ns.cond.Unet_cond(cfg, cfg.cond_in_dim, True)
      nets["histroEncoder.model."] = ns.cond.Unet_he(cfg, cfg.in_dim, True)
      nets[ia.TS_ENCODER_COPY] = ns.cond.Unet_cond(cfg, cfg.cond_in_dim, True)
  for prefix, net in nets.items():
    net.load_state_dict({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}, strict=True)
  return sorted(nets)


@pytest.mark.parametrize("folder", ["FS", "TS"])
def test_export_ckpt_loads_strictly_into_the_official_module(official, tmp_path, folder):
  """official .ckpt -> ``lliejax convert`` -> ``--to-torch x.ckpt``: the official ``LitDiffusion`` (test.py's
  ``load_from_checkpoint``) and each network load it with ``strict=True``; the networks come back bitwise and the
  buffers are the official schedule's. TS: from a ``diffusion``-stage export whose encoder and refiner are in
  ``frozen`` (the whole twostep_final.ckpt layout); an earlier stage's export cannot be written."""
  code = tn.official_code()
  spec = f"anlightendiff_{folder.lower()}:tiny"
  cfg, sd = _official_ckpt(code, folder, tmp_path / "official.ckpt", seed=11)
  export = tmp_path / "export"
  assert cli.main(["convert", str(tmp_path / "official.ckpt"), str(export), "--config", spec]) == 0
  if folder == "TS":  # the diffusion stage's export: its denoiser in params, the earlier stages' networks frozen
    exp = checkpoint.load_export(str(export))
    config = cu.load_config(f"{spec},stage=diffusion")
    checkpoint.export(str(tmp_path / "stage"), {"unet": exp.params["unet"]}, config=config, method=exp.method,
                      frozen={"encoder": exp.params["encoder"], "he": exp.params["he"]})
    export = tmp_path / "stage"
  out = tmp_path / "back.ckpt"
  assert cli.main(["convert", "--to-torch", str(export), str(out)]) == 0
  ckpt = torch.load(out, weights_only=True)
  assert {"epoch", "global_step", "pytorch-lightning_version", "state_dict"} <= set(ckpt)
  assert not any(k.startswith(ia.IGNORED_PREFIXES) for k in ckpt["state_dict"])
  assert list(ckpt["state_dict"]) == list(sd)  # every key, the official order
  lit = _load_strictly(code, folder, cfg, str(out))
  got = lit.state_dict()
  assert list(got) == list(sd) and all(torch.equal(got[k], v) for k, v in sd.items())
  with code.active(folder) as ns:
    fresh = ns.diffusion.EnlightDiffusion(None, cfg)
  for name in ia.BUFFER_NAMES:
    assert torch.equal(ckpt["state_dict"][ia.BUFFER_PREFIX + name], getattr(fresh, name)), name
  assert len(_per_network(code, folder, cfg, ckpt["state_dict"])) == (2 if folder == "FS" else 4)
  if folder == "TS":  # the .pth of the stage export: the same networks, no buffers
    assert cli.main(["convert", "--to-torch", str(export), str(tmp_path / "back.pth")]) == 0
    pth = torch.load(tmp_path / "back.pth", weights_only=True)
    assert list(pth) == [k for k in sd if not k.startswith(tuple(ia.BUFFER_PREFIX + n for n in ia.BUFFER_NAMES))]
    early = tmp_path / "encoder_stage"
    checkpoint.export(str(early), {"encoder": exp.params["encoder"]}, config=cu.load_config(f"{spec},stage=encoder"),
                      method=exp.method)
    assert cli.main(["convert", "--to-torch", str(early), str(tmp_path / "early.ckpt")]) == 1
    assert not (tmp_path / "early.ckpt").exists()
