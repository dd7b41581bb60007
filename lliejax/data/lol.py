"""TFDS builders for the LOL low-light benchmarks, read from a user-supplied ``manual_dir``.

The images are not downloaded: place the official archives, extracted, in a folder and pass it as
``manual_dir`` (see :func:`lliejax.data.registry.prepare`). Expected layouts (folder names are matched
case-insensitively; image files may be PNG, JPEG, BMP or TIFF):

``lol_v1`` (LOL, Wei et al. BMVC 2018), ``manual_dir`` is the folder holding ``our485`` and ``eval15``
(or its parent when it is called ``LOLdataset``)::

  our485/low/*.png   our485/high/*.png    -> split 'train' (485 pairs)
  eval15/low/*.png   eval15/high/*.png    -> split 'test'  (15 pairs)

``lol_v2_real`` / ``lol_v2_synthetic`` (LOL-v2, Yang et al. TIP 2021), ``manual_dir`` is either the LOL-v2 root
(holding ``Real_captured`` and ``Synthetic``) or the ``Real_captured`` / ``Synthetic`` folder itself::

  Real_captured/Train/{Low,Normal}/*.png  -> 'train' (689 pairs)   Real_captured/Test/{Low,Normal}  -> 'test' (100)
  Synthetic/Train/{Low,Normal}/*.png      -> 'train' (900 pairs)   Synthetic/Test/{Low,Normal}      -> 'test' (100)

Pairing: a low-light file and a reference file are paired when their file stems are equal (LOL-v1,
LOL-v2-synthetic); otherwise by the last run of digits in the stem (LOL-v2-real names them ``low00001.png`` /
``normal00001.png``; for the official files this equals the official pairing by position in each sorted folder).
Pairs are generated in the order of the sorted low-light file names, as in the official code. Different
counts, ids that do not match one to one, or pairs of different image sizes raise ``ValueError`` naming the
folders/files. The example ``name`` is the stem of the low-light file.

Pixels are stored as 8-bit RGB PNG: 8-bit RGB PNG files are copied byte for byte, everything else is read by
:func:`lliejax.data.image_io.read_image_uint8` (gray replicated, alpha dropped, EXIF orientation applied, 16-bit
rounded to 8 bits) and re-encoded.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Iterator

import tensorflow_datasets as tfds

from lliejax.data import common, image_io

_log = logging.getLogger(__name__)

_DIGITS = re.compile(r"(\d+)(?!.*\d)")


def child_dir(parent: str, name: str) -> str:
  """``parent/name``, matching ``name`` case-insensitively when the exact spelling does not exist."""
  exact = os.path.join(parent, name)
  if os.path.isdir(exact) or not os.path.isdir(parent):
    return exact
  for entry in os.listdir(parent):
    if entry.lower() == name.lower() and os.path.isdir(os.path.join(parent, entry)):
      return os.path.join(parent, entry)
  return exact


def pair_files(low_dir: str, high_dir: str, *, dataset: str) -> list[tuple[str, str, str]]:
  """Pairs the images of ``low_dir`` with those of ``high_dir``; returns ``(lq_path, gt_path, name)`` tuples.

  Pairs by identical file stem when both folders hold the same stems, else by the numeric id (last digit run)
  of the stems. Raises ``ValueError`` naming the folders when they are missing/empty, their counts differ or
  the names/ids do not match one to one.
  """
  for d in (low_dir, high_dir):
    if not os.path.isdir(d):
      raise ValueError(f"{dataset}: expected folder {d} does not exist")
  def listing(folder):
    try:
      return [str(p) for p in image_io.list_images(folder)]
    except FileNotFoundError as e:
      raise ValueError(f"{dataset}: {e.strerror}") from e

  lows, highs = listing(low_dir), listing(high_dir)
  if len(lows) != len(highs):
    raise ValueError(f"{dataset}: {low_dir} holds {len(lows)} images but {high_dir} holds {len(highs)}; "
                     "the low-light and reference folders must contain the same pairs")

  def stems(paths):
    out = {}
    for p in paths:
      s = os.path.splitext(os.path.basename(p))[0]
      if s in out:
        raise ValueError(f"{dataset}: duplicate image name {s!r} in {os.path.dirname(p)}")
      out[s] = p
    return out

  low_s, high_s = stems(lows), stems(highs)
  if set(low_s) == set(high_s):
    pairs = [(low_s[s], high_s[s], s) for s in low_s]
    return sorted(pairs, key=lambda t: os.path.basename(t[0]))

  def ids(by_stem, folder):
    out = {}
    for s, p in by_stem.items():
      m = _DIGITS.search(s)
      if m is None:
        return None
      i = int(m.group(1))
      if i in out:
        raise ValueError(f"{dataset}: files {os.path.basename(out[i][1])} and {os.path.basename(p)} in "
                         f"{folder} have the same numeric id {i}; cannot pair by id")
      out[i] = (s, p)
    return out

  low_i, high_i = ids(low_s, low_dir), ids(high_s, high_dir)
  if low_i is not None and high_i is not None and set(low_i) == set(high_i):
    pairs = [(low_i[i][1], high_i[i][1], low_i[i][0]) for i in low_i]
    return sorted(pairs, key=lambda t: os.path.basename(t[0]))
  if low_i is not None and high_i is not None:
    only_low = sorted(set(low_i) - set(high_i))[:5]
    only_high = sorted(set(high_i) - set(low_i))[:5]
    detail = f"ids only in {low_dir}: {only_low}; ids only in {high_dir}: {only_high}"
  else:
    detail = (f"names only in {low_dir}: {sorted(set(low_s) - set(high_s))[:5]}; "
              f"names only in {high_dir}: {sorted(set(high_s) - set(low_s))[:5]}")
  raise ValueError(f"{dataset}: cannot pair {low_dir} with {high_dir}: the file names and their numeric ids "
                   f"do not match one to one ({detail})")


class PairedFolderBuilder(common.LocalCodePath, tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base class: paired low/normal-light folders under ``manual_dir`` -> array_record splits.

  Subclasses set ``SUBSET`` (the folder inside the dataset root that holds the splits, or ``None``),
  ``ROOT_WRAPPERS`` (folder names that may wrap the root when ``manual_dir`` points one level higher),
  ``SPLIT_DIRS`` (split -> ``(low_dir, high_dir)`` relative to the subset folder, or a tuple of
  ``(tag, low_dir, high_dir)`` parts whose pairs are concatenated, the example names then prefixed ``tag/``; a
  folder may list alternative spellings separated by ``|``, the first that exists is taken) and
  ``OFFICIAL_COUNTS``.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release (PNG images, array_record)."}
  SUBSET: str | None = None
  ROOT_WRAPPERS: tuple[str, ...] = ()
  SPLIT_DIRS: dict[str, tuple[str, str]] = {}
  OFFICIAL_COUNTS: dict[str, int] = {}
  HOMEPAGE = ""
  DESCRIPTION = ""

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=self.DESCRIPTION, features=common.pair_features(),
                                 homepage=self.HOMEPAGE)

  @classmethod
  def split_parts(cls, split: str) -> tuple[tuple[str, str, str], ...]:
    """``((tag, low_dir, high_dir), ...)`` of ``split`` (one part with tag ``''`` for a plain ``(low, high)``)."""
    dirs = cls.SPLIT_DIRS[split]
    return (("",) + tuple(dirs),) if isinstance(dirs[0], str) else tuple(dirs)

  def _layout(self) -> str:
    def where(rel):
      return os.path.join(*(p for p in (self.SUBSET, rel) if p))
    return "; ".join(f"{split}: " + ", ".join(f"{where(lo)} + {where(hi)}" for _, lo, hi in self.split_parts(split))
                     for split in self.SPLIT_DIRS)

  @staticmethod
  def _find(base: str, rel: str) -> str:
    """``base/rel`` matched case-insensitively per component; ``rel`` may be ``a|b`` (the first that exists)."""
    found = []
    for option in rel.split("|"):
      d = base
      for part in option.split("/"):
        d = child_dir(d, part)
      if os.path.isdir(d):
        return d
      found.append(d)
    return found[0]

  def resolve_subset_dir(self, manual_dir: str) -> str:
    """The folder that holds the split folders, accepting ``manual_dir`` at a few levels (see module doc)."""
    manual_dir = os.path.abspath(os.path.expanduser(os.fspath(manual_dir)))
    if not os.path.isdir(manual_dir):
      raise ValueError(f"{self.name}: manual_dir {manual_dir} does not exist (expected layout: {self._layout()})")
    firsts = [rel.split("/")[0] for rel in self.split_parts(next(iter(self.SPLIT_DIRS)))[0][1].split("|")]
    roots = [manual_dir] + [child_dir(manual_dir, w) for w in self.ROOT_WRAPPERS]
    candidates = []
    for root in roots:
      if self.SUBSET:
        candidates.append(child_dir(root, self.SUBSET))
        if os.path.basename(root).lower() == self.SUBSET.lower():
          candidates.append(root)
      else:
        candidates.append(root)
    for c in candidates:
      if any(os.path.isdir(child_dir(c, first)) for first in firsts):
        return c
    expected = candidates[0]
    raise ValueError(f"{self.name}: could not find the dataset under manual_dir {manual_dir}: expected folder "
                     f"{' or '.join(child_dir(expected, first) for first in firsts)} (layout: {self._layout()}); "
                     f"found entries "
                     f"{sorted(os.listdir(manual_dir))[:10]}")

  def split_pairs(self, manual_dir: str, *, warn: bool = False) -> dict[str, list[tuple[str, str, str]]]:
    """``split -> [(lq_path, gt_path, name), ...]`` for the given ``manual_dir`` (validates the layout).

    With ``warn``, logs a warning for splits whose size differs from the official release.
    """
    base = self.resolve_subset_dir(manual_dir)
    out = {}
    for split in self.SPLIT_DIRS:
      pairs = []
      for tag, lo, hi in self.split_parts(split):
        dirs = []
        for rel in (lo, hi):
          d = self._find(base, rel)
          if not os.path.isdir(d):
            alternatives = f" (or {' or '.join(rel.split('|')[1:])})" if "|" in rel else ""
            raise ValueError(f"{self.name}: expected folder {d}{alternatives} (split {split!r}) does not exist; "
                             f"layout: {self._layout()}")
          dirs.append(d)
        pairs += [(lq, gt, f"{tag}/{name}" if tag else name)
                  for lq, gt, name in pair_files(dirs[0], dirs[1], dataset=self.name)]
      official = self.OFFICIAL_COUNTS.get(split)
      if warn and official is not None and len(pairs) != official:
        _log.warning("%s: split %r has %d pairs (the official release has %d)", self.name, split, len(pairs),
                     official)
      out[split] = pairs
    return out

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    return {split: self._generate_examples(pairs=pairs)
            for split, pairs in self.split_pairs(os.fspath(dl_manager.manual_dir), warn=True).items()}

  def _generate_examples(self, pairs: list[tuple[str, str, str]]) -> Iterator[tuple[str, dict]]:
    for lq_path, gt_path, name in pairs:
      lq, lq_png, lq_notes = image_io.read_image_uint8(lq_path)
      gt, gt_png, gt_notes = image_io.read_image_uint8(gt_path)
      for path, notes in ((lq_path, lq_notes), (gt_path, gt_notes)):
        if notes:
          _log.info("%s: %s", path, "; ".join(notes))
      if lq.shape != gt.shape:
        raise ValueError(f"{self.name}: paired images differ in size: {lq_path} is {lq.shape[:2]} but "
                         f"{gt_path} is {gt.shape[:2]}")
      yield name, {"lq": lq_png, "gt": gt_png, "name": name}


class LolV1(PairedFolderBuilder):
  """LOL (LOL-v1): 485 training and 15 test pairs of 400x600 real low/normal-light photos."""

  name = "lol_v1"
  SUBSET = None
  ROOT_WRAPPERS = ("LOLdataset", "LOL")
  SPLIT_DIRS = {"train": ("our485/low", "our485/high"), "test": ("eval15/low", "eval15/high")}
  OFFICIAL_COUNTS = {"train": 485, "test": 15}
  HOMEPAGE = "https://daooshee.github.io/BMVC2018website/"
  DESCRIPTION = "LOL-v1 low-light / normal-light pairs (our485 -> train, eval15 -> test)."
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Extract LOLdataset.zip and pass the folder holding our485/{low,high} and "
                                  "eval15/{low,high} as manual_dir.")


class LolV2Real(PairedFolderBuilder):
  """LOL-v2 real-captured subset: 689 training and 100 test pairs (400x600)."""

  name = "lol_v2_real"
  SUBSET = "Real_captured"
  ROOT_WRAPPERS = ("LOL-v2", "LOLv2", "LOL_v2")
  SPLIT_DIRS = {"train": ("Train/Low", "Train/Normal"), "test": ("Test/Low", "Test/Normal")}
  OFFICIAL_COUNTS = {"train": 689, "test": 100}
  HOMEPAGE = "https://github.com/flyywh/CVPR-2020-Semi-Low-Light"
  DESCRIPTION = "LOL-v2 Real_captured low-light / normal-light pairs (paired by numeric id)."
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Extract LOL-v2 and pass the LOL-v2 root (holding Real_captured/) or the "
                                  "Real_captured folder itself as manual_dir.")


class LolV2Synthetic(PairedFolderBuilder):
  """LOL-v2 synthetic subset: 900 training and 100 test pairs."""

  name = "lol_v2_synthetic"
  SUBSET = "Synthetic"
  ROOT_WRAPPERS = ("LOL-v2", "LOLv2", "LOL_v2")
  SPLIT_DIRS = {"train": ("Train/Low", "Train/Normal"), "test": ("Test/Low", "Test/Normal")}
  OFFICIAL_COUNTS = {"train": 900, "test": 100}
  HOMEPAGE = "https://github.com/flyywh/CVPR-2020-Semi-Low-Light"
  DESCRIPTION = "LOL-v2 Synthetic low-light / normal-light pairs."
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Extract LOL-v2 and pass the LOL-v2 root (holding Synthetic/) or the "
                                  "Synthetic folder itself as manual_dir.")


class VeLol(PairedFolderBuilder):
  """VE-LOL-L captured subset (Liu et al. IJCV 2021), ``VE-LOL-L-Cap-Full``: 400 training and 100 test pairs.

  The layout is the one AnlightenDiff's README asks for (``VE-LOL-L/VE-LOL-L-Cap-Full/{train,test}/{low,high}``).
  Its loader (``FS/dataset.py`` ``DatasetFromFolder``) lists ``high/`` and finds each low-light file by replacing
  ``normal`` with ``low`` in the path (``normal00001.png`` -> ``low00001.png``); for those names the pairing by
  numeric id of :func:`pair_files` gives the same pairs.
  """

  name = "velol"
  SUBSET = "VE-LOL-L-Cap-Full"
  ROOT_WRAPPERS = ("VE-LOL-L", "VE-LOL")
  SPLIT_DIRS = {"train": ("train/low", "train/high"), "test": ("test/low", "test/high")}
  OFFICIAL_COUNTS = {"train": 400, "test": 100}
  HOMEPAGE = "https://flyywh.github.io/IJCV2021LowLight_VELOL/"
  DESCRIPTION = "VE-LOL-L-Cap-Full low-light / normal-light pairs (paired by numeric id)."
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Extract VE-LOL-L.zip and pass VE-LOL-L (holding VE-LOL-L-Cap-Full/) or "
                                  "VE-LOL-L-Cap-Full itself as manual_dir.")


class LolV1V2Velol(PairedFolderBuilder):
  """AnlightenDiff's training union ``use_dataset: 'LOL+LOLv2+VELOL'`` (``FS/train.py``): LOL ``our485``, LOL-v2
  ``Real_captured/Train`` and VE-LOL-L-Cap-Full ``train`` in one ``train`` split of 485 + 689 + 400 = 1,574 pairs,
  named ``lol_v1/<stem>``, ``lol_v2_real/<stem>``, ``velol/<stem>``.

  ``manual_dir`` is the official ``data/`` folder (README "Dataset")::

    LOL/our485/{low,high}   LOL/eval15/{low,high}
    LOL-v2/Real_captured/{Train,Test}/{Low,Normal}   (or low/high, the folders renamed as the README suggests)
    VE-LOL-L/VE-LOL-L-Cap-Full/{train,test}/{low,high}

  ``LOLdataset`` for ``LOL`` and ``LOLv2/LOL-v2`` (TS ``two_step.yaml``) for ``LOL-v2`` are accepted too. Splits:
  ``train`` (the union), ``test`` = LOL ``eval15`` (15; ``train.yaml``'s ``test_folder``, the set the official
  training validates on), ``test_lol_v2_real`` (100) and ``test_velol`` (100), the sets of the official test
  yamls.
  """

  name = "lol_v1_v2_velol"
  SUBSET = None
  ROOT_WRAPPERS = ("data",)
  SPLIT_DIRS = {
      "train": (("lol_v1", "LOL/our485/low|LOLdataset/our485/low", "LOL/our485/high|LOLdataset/our485/high"),
                ("lol_v2_real", "LOL-v2/Real_captured/Train/Low|LOLv2/LOL-v2/Real_captured/Train/Low",
                 "LOL-v2/Real_captured/Train/Normal|LOL-v2/Real_captured/Train/high|"
                 "LOLv2/LOL-v2/Real_captured/Train/Normal|LOLv2/LOL-v2/Real_captured/Train/high"),
                ("velol", "VE-LOL-L/VE-LOL-L-Cap-Full/train/low", "VE-LOL-L/VE-LOL-L-Cap-Full/train/high")),
      "test": (("lol_v1", "LOL/eval15/low|LOLdataset/eval15/low", "LOL/eval15/high|LOLdataset/eval15/high"),),
      "test_lol_v2_real": (("lol_v2_real", "LOL-v2/Real_captured/Test/Low|LOLv2/LOL-v2/Real_captured/Test/Low",
                            "LOL-v2/Real_captured/Test/Normal|LOL-v2/Real_captured/Test/high|"
                            "LOLv2/LOL-v2/Real_captured/Test/Normal|LOLv2/LOL-v2/Real_captured/Test/high"),),
      "test_velol": (("velol", "VE-LOL-L/VE-LOL-L-Cap-Full/test/low", "VE-LOL-L/VE-LOL-L-Cap-Full/test/high"),),
  }
  OFFICIAL_COUNTS = {"train": 1574, "test": 15, "test_lol_v2_real": 100, "test_velol": 100}
  HOMEPAGE = "https://github.com/allanchan339/AnlightenDiff"
  DESCRIPTION = "LOL + LOL-v2 real + VE-LOL-L-Cap-Full training union of AnlightenDiff."
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Pass the folder holding LOL/, LOL-v2/ and VE-LOL-L/ (AnlightenDiff's data/) as "
                                  "manual_dir.")
