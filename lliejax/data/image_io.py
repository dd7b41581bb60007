"""Image files: the one place that knows extensions, listing, decoding and writing (CLIs and datasets alike).

Reading to float RGB [0,1] (:func:`read_image`) or to 8-bit RGB for dataset records (:func:`read_image_uint8`),
atomic PNG writing (:func:`write_png`), listing (:func:`list_images`, :data:`IMAGE_EXTENSIONS`) and comparison
pictures (:func:`side_by_side`, :func:`stack_rows`).

Reading conventions (:func:`read_image`):

* result: float32, HxWx3, RGB order, values in [0, 1]; 8-bit data is divided by 255 (so ``to_uint8`` of the
  result gives the file's bytes back exactly), 16-bit data by 65535;
* grayscale (L, 1-bit, 16-bit 'I;16') is replicated to three channels;
* alpha (RGBA, LA, PA, palette transparency, 16-bit RGBA/LA) is **dropped, not composited** (the RGB values
  are kept as stored). This is what both reference readers do: OpenCV ``imread(IMREAD_COLOR)`` (IR-SDE /
  Entropy-SDE) and PIL ``convert('RGB')`` (AnlightenDiff, ReDDiT);
* palette and other modes (CMYK, YCbCr, ...) are converted to RGB by PIL;
* the EXIF orientation tag is applied (any format, in practice JPEG), as OpenCV's ``imread`` does by default;
  PIL's ``Image.open`` alone would not;
* 16-bit RGB / RGBA / gray+alpha PNGs: PIL decodes these to 8 bits only, so they are decoded by a small PNG
  reader in this module (numpy + zlib, non-interlaced files only; ~0.1 s for 400x600 with Paeth filtering).
  Interlaced ones fall back to PIL at 8-bit precision, with a note;
* for multi-frame files (GIF, TIFF) the first frame is used.

Every deviation from a plain 8-bit RGB file is reported in the returned ``notes`` list. Missing, empty,
truncated or corrupt files raise :class:`ImageReadError` (a ``ValueError``) naming the file. (If some other
code sets ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True`` globally, PIL silently pads truncated 8-bit files.)
"""
from __future__ import annotations

import errno
import io
import os
import pathlib
import struct
import tempfile
import zlib
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from lliejax import fileutil
from lliejax.metrics import to_uint8

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_EXIF_ORIENTATION = 0x0112
# Errors PIL (and its decoders) raise for unreadable data.
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, zlib.error, struct.error,
                  IndexError, TypeError, Image.DecompressionBombError)


class ImageReadError(ValueError):
  """An image file could not be read; ``path`` and ``reason`` are attributes and both are in the message."""

  def __init__(self, path, reason: str):
    self.path = os.fspath(path)
    self.reason = reason
    super().__init__(f"cannot read image {self.path!r}: {reason}")


# ---------------------------------------------------------------------------------------------------------
# Minimal 16-bit PNG codec (what PIL cannot do: 16-bit colour / gray+alpha).


def _png_chunks(data: bytes, path, notes: list[str] | None = None) -> list[tuple[bytes, bytes]]:
  """Splits a PNG byte string into (type, payload) chunks up to IEND, checking lengths and CRCs.

  As libpng does, a CRC error in a critical chunk is fatal while an ancillary chunk with a bad CRC is
  dropped (and noted in ``notes``).
  """
  chunks = []
  pos = len(_PNG_SIGNATURE)
  while True:
    if pos + 8 > len(data):
      raise ImageReadError(path, "truncated PNG (no IEND chunk)")
    (length,) = struct.unpack(">I", data[pos:pos + 4])
    ctype = data[pos + 4:pos + 8]
    end = pos + 8 + length + 4
    if end > len(data):
      raise ImageReadError(path, f"truncated PNG (chunk {ctype!r} cut off)")
    payload = data[pos + 8:pos + 8 + length]
    (crc,) = struct.unpack(">I", data[end - 4:end])
    pos = end
    if zlib.crc32(ctype + payload) & 0xFFFFFFFF != crc:
      if not ctype[:1].islower():  # critical chunk (IHDR, PLTE, IDAT, IEND)
        raise ImageReadError(path, f"corrupt PNG (CRC mismatch in chunk {ctype!r})")
      if notes is not None:
        notes.append(f"ancillary PNG chunk {ctype.decode('latin-1')} with bad CRC ignored")
      continue
    chunks.append((ctype, payload))
    if ctype == b"IEND":
      return chunks


def _png_ihdr(data: bytes):
  """(width, height, bit_depth, color_type, interlace) from the first chunk, or None if not parseable."""
  if len(data) < 33 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
    return None
  w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
  return w, h, depth, ctype, interlace


def _unfilter_rows(raw: np.ndarray, height: int, stride: int, bpp: int, path) -> np.ndarray:
  """Undoes PNG scanline filtering; ``raw`` is the inflated (height, 1 + stride) uint8 buffer.

  ``bpp`` (bytes per pixel, >= 1) must divide ``stride``. Files using only the None/Sub/Up filters are
  decoded row by row; with Average/Paeth rows a pixel depends on its left, upper and upper-left neighbours,
  so pixels are decoded along anti-diagonals (H + W - 1 vectorised steps).
  """
  ftypes = raw[:, 0].astype(np.int64)
  if ftypes.size and ftypes.max() > 4:
    y = int(np.argmax(ftypes > 4))
    raise ImageReadError(path, f"corrupt PNG (unknown filter type {int(ftypes[y])} in row {y})")
  if not np.isin(ftypes, (3, 4)).any():
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.uint8)
    for y in range(height):
      row = raw[y, 1:]
      if ftypes[y] == 1:  # Sub: running sum per byte lane (uint8 wraps modulo 256).
        row = np.cumsum(row.reshape(-1, bpp), axis=0, dtype=np.uint8).reshape(-1)
      elif ftypes[y] == 2:  # Up
        row = row + prev
      out[y] = row
      prev = out[y]
    return out

  width = stride // bpp
  res = raw[:, 1:].reshape(height, width, bpp).astype(np.int32)
  # Decoded bytes with a zero row on top and a zero column on the left (the PNG boundary values).
  out = np.zeros((height + 1, width + 1, bpp), dtype=np.int32)
  for d in range(height + width - 1):
    ys = np.arange(max(0, d - width + 1), min(height, d + 1))
    xs = d - ys
    a = out[ys + 1, xs]      # left
    b = out[ys, xs + 1]      # up
    c = out[ys, xs]          # up-left
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    ft = ftypes[ys][:, None]
    pred = np.select([ft == 1, ft == 2, ft == 3, ft == 4], [a, b, (a + b) >> 1, paeth], 0)
    out[ys + 1, xs + 1] = (res[ys, xs] + pred) & 0xFF
  return out[1:, 1:].astype(np.uint8).reshape(height, stride)


def _decode_png16(data: bytes, path) -> tuple[np.ndarray, int]:
  """Decodes a non-interlaced 16-bit PNG of colour type 2, 4 or 6 to uint16 (H, W, C) and its colour type."""
  chunks = _png_chunks(data, path)
  w, h, depth, ctype, interlace = _png_ihdr(data)
  assert depth == 16 and ctype in (2, 4, 6) and interlace == 0
  channels = {2: 3, 4: 2, 6: 4}[ctype]
  bpp = 2 * channels
  stride = w * bpp
  try:
    raw = zlib.decompress(b"".join(p for t, p in chunks if t == b"IDAT"))
  except zlib.error as e:
    raise ImageReadError(path, f"corrupt PNG image data ({e})") from e
  if len(raw) < h * (1 + stride):
    raise ImageReadError(path, f"truncated PNG image data ({len(raw)} of {h * (1 + stride)} bytes)")
  raw = np.frombuffer(raw, dtype=np.uint8, count=h * (1 + stride)).reshape(h, 1 + stride)
  pix = _unfilter_rows(raw, h, stride, bpp, path)
  return pix.view(">u2").reshape(h, w, channels).astype(np.uint16), ctype


def _png_chunk(ctype: bytes, payload: bytes) -> bytes:
  crc = zlib.crc32(ctype + payload) & 0xFFFFFFFF
  return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", crc)


def _encode_png(arr: np.ndarray) -> bytes:
  """PNG bytes for a uint8/uint16 (H, W) or (H, W, 3) array (filter type 0, zlib level 6)."""
  h, w = arr.shape[:2]
  channels = 1 if arr.ndim == 2 else arr.shape[2]
  depth = 16 if arr.dtype == np.uint16 else 8
  ctype = {1: 0, 3: 2}[channels]
  rows = np.ascontiguousarray(arr.astype(">u2" if depth == 16 else np.uint8)).reshape(h, -1).view(np.uint8)
  raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()
  ihdr = struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0)
  return (_PNG_SIGNATURE + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(raw, 6))
          + _png_chunk(b"IEND", b""))


# ---------------------------------------------------------------------------------------------------------
# Reading.


def _alpha_note(alpha: np.ndarray, maxval: int) -> str:
  amin = int(alpha.min()) if alpha.size else maxval
  if amin == maxval:
    return "alpha channel dropped (fully opaque)"
  return f"alpha channel dropped, not composited (min alpha {amin}/{maxval}; RGB kept as stored)"


def _pil_to_float(im: Image.Image, notes: list[str], path) -> np.ndarray:
  mode = im.mode
  if mode == "RGB":
    return np.asarray(im, dtype=np.uint8).astype(np.float32) / 255.0
  if mode in ("L", "1"):
    if mode == "1":
      notes.append("1-bit image converted to 8-bit grayscale")
      im = im.convert("L")
    notes.append("grayscale image replicated to 3 channels")
    g = np.asarray(im, dtype=np.uint8).astype(np.float32) / 255.0
    return np.repeat(g[:, :, None], 3, axis=2)
  if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
    notes.append(f"16-bit grayscale ({mode}) scaled by 1/65535 and replicated to 3 channels")
    g = np.asarray(im).astype(np.float32) / 65535.0
    return np.repeat(g[:, :, None], 3, axis=2)
  if mode == "I":
    g = np.asarray(im)
    if g.size and (g.min() < 0 or g.max() > 65535):
      raise ImageReadError(path, f"32-bit integer image with values outside [0, 65535] ({g.min()}..{g.max()})")
    notes.append("32-bit integer grayscale interpreted as 16-bit (scaled by 1/65535), replicated to 3 channels")
    return np.repeat((g.astype(np.float32) / 65535.0)[:, :, None], 3, axis=2)
  if mode == "F":
    g = np.asarray(im, dtype=np.float32)
    notes.append("32-bit float grayscale taken as [0,1] values (clipped), replicated to 3 channels")
    return np.repeat(np.clip(g, 0.0, 1.0)[:, :, None], 3, axis=2)
  if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
    if mode in ("La", "RGBa"):  # premultiplied alpha: let PIL un-premultiply
      im = im.convert("RGBA" if mode == "RGBa" else "LA")
      mode = im.mode
    a = np.asarray(im, dtype=np.uint8)
    if mode == "PA":
      notes.append("palette image converted to RGB")
      rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    elif mode == "LA":
      notes.append("grayscale image replicated to 3 channels")
      rgb = np.repeat(a[:, :, :1], 3, axis=2)
    else:
      rgb = a[:, :, :3]
    notes.append(_alpha_note(a[:, :, -1], 255))
    return rgb.astype(np.float32) / 255.0
  if mode == "P":
    if "transparency" in im.info:
      rgba = np.asarray(im.convert("RGBA"), dtype=np.uint8)
      notes.append("palette image converted to RGB")
      notes.append(_alpha_note(rgba[:, :, 3], 255) + " [palette transparency]")
      return rgba[:, :, :3].astype(np.float32) / 255.0
    notes.append("palette image converted to RGB")
    return np.asarray(im.convert("RGB"), dtype=np.uint8).astype(np.float32) / 255.0
  notes.append(f"mode {mode} converted to RGB by PIL")
  return np.asarray(im.convert("RGB"), dtype=np.uint8).astype(np.float32) / 255.0


def read_image(path) -> tuple[np.ndarray, list[str]]:
  """Reads an image file as float32 HxWx3 RGB in [0, 1].

  See the module docstring for the conventions (grayscale replication, alpha dropped, EXIF orientation,
  16-bit handling).

  Returns:
    ``(image, notes)``; ``notes`` lists every conversion applied (empty for a plain 8-bit RGB file).

  Raises:
    ImageReadError: the file is missing, not a regular file, empty, truncated, corrupt or of an
      unsupported kind (the message names the file).
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise ImageReadError(path, "file does not exist")
  if not path.is_file():
    raise ImageReadError(path, "not a regular file")
  try:
    data = path.read_bytes()
  except OSError as e:
    raise ImageReadError(path, f"cannot open file ({e})") from e
  if not data:
    raise ImageReadError(path, "file is empty")
  notes: list[str] = []

  if data.startswith(_PNG_SIGNATURE):
    n_notes = len(notes)
    chunks = _png_chunks(data, path, notes)  # structure and CRCs (PIL does not check image-data CRCs)
    if len(notes) > n_notes:  # ancillary chunks dropped: hand PIL the file without them
      data = _PNG_SIGNATURE + b"".join(_png_chunk(t, p) for t, p in chunks)
  ihdr = _png_ihdr(data)
  if ihdr is not None and ihdr[2] == 16 and ihdr[3] in (2, 4, 6):
    kind = {2: "RGB", 4: "gray+alpha", 6: "RGBA"}[ihdr[3]]
    if ihdr[4] == 0:
      pix, ctype = _decode_png16(data, path)
      img = pix.astype(np.float32) / 65535.0
      notes.append(f"16-bit {kind} PNG decoded by lliejax (scaled by 1/65535)")
      if ctype in (4, 6):
        notes.append(_alpha_note(pix[:, :, -1], 65535))
      if ctype == 4:
        notes.append("grayscale image replicated to 3 channels")
        img = np.repeat(img[:, :, :1], 3, axis=2)
      return np.ascontiguousarray(img[:, :, :3], dtype=np.float32), notes
    notes.append(f"interlaced 16-bit {kind} PNG: read by PIL at 8-bit precision")

  try:
    with Image.open(io.BytesIO(data)) as im:
      im.load()
      n_frames = getattr(im, "n_frames", 1)
      if n_frames > 1:
        notes.append(f"multi-frame file ({n_frames} frames): first frame used")
      orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
      if orientation not in (None, 1):
        im = ImageOps.exif_transpose(im)
        notes.append(f"EXIF orientation {orientation} applied")
      img = _pil_to_float(im, notes, path)
  except ImageReadError:
    raise
  except _DECODE_ERRORS as e:
    raise ImageReadError(path, f"corrupt, truncated or unsupported image ({type(e).__name__}: {e})") from e
  if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] == 0 or img.shape[1] == 0:
    raise ImageReadError(path, f"unexpected decoded shape {img.shape}")
  return np.ascontiguousarray(img, dtype=np.float32), notes


def read_image_uint8(path) -> tuple[np.ndarray, bytes, list[str]]:
  """Reads an image file as uint8 HxWx3 RGB for a dataset record: ``(pixels, png_bytes, notes)``.

  An 8-bit RGB PNG is passed through byte for byte (its bytes decode to exactly ``pixels``); anything else is read
  by :func:`read_image` (same conventions and notes), rounded to 8 bits (``to_uint8``: exact for 8-bit sources) and
  PNG-encoded.

  Raises:
    ImageReadError: as :func:`read_image`.
  """
  image, notes = read_image(path)
  pixels = to_uint8(image, rounding="round")
  data = pathlib.Path(path).read_bytes()
  if not notes and data.startswith(_PNG_SIGNATURE):
    ihdr = _png_ihdr(data)
    if ihdr is not None and ihdr[2] == 8 and ihdr[3] == 2:  # 8-bit truecolour, no alpha
      return pixels, data, notes
  return pixels, encode_png(pixels), notes


def encode_png(image: np.ndarray) -> bytes:
  """PNG bytes of a uint8 ``(H, W, 3)`` array (PIL, zlib level 1: fast and lossless)."""
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG", compress_level=1)
  return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
  """uint8 ``(H, W, 3)`` RGB pixels of encoded image bytes (PIL)."""
  with Image.open(io.BytesIO(data)) as im:
    return np.asarray(im.convert("RGB"))


def to_float(image: np.ndarray) -> np.ndarray:
  """uint8 pixels -> float32 in [0, 1] (``/ 255``); float input is returned as float32."""
  if image.dtype == np.uint8:
    return image.astype(np.float32) / np.float32(255)
  return image.astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------------------
# Writing.


def _quantize(img, bit_depth: int) -> np.ndarray:
  x = np.asarray(img)
  if bit_depth == 8:
    if x.dtype == np.uint8:
      return x
    if not np.issubdtype(x.dtype, np.floating):
      raise TypeError(f"write_png(bit_depth=8) takes float [0,1] or uint8 images, got {x.dtype}")
    return to_uint8(x, rounding="round")
  if bit_depth == 16:
    if x.dtype == np.uint16:
      return x
    if not np.issubdtype(x.dtype, np.floating):
      raise TypeError(f"write_png(bit_depth=16) takes float [0,1] or uint16 images, got {x.dtype}")
    x = x.astype(np.float64)
    if np.isnan(x).any():
      raise ValueError("write_png: image contains NaN values")
    return np.round(np.clip(x, 0.0, 1.0) * 65535.0).astype(np.uint16)
  raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")


def _atomic_write(path: pathlib.Path, payload: bytes, overwrite: bool) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  if not overwrite and path.exists():
    raise FileExistsError(errno.EEXIST, f"refusing to overwrite existing file {str(path)!r} "
                          "(pass overwrite=True)", str(path))
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  try:
    fileutil.make_public(tmp)  # mkstemp makes 0600; the result follows the umask
    with os.fdopen(fd, "wb") as f:
      f.write(payload)
      f.flush()
      os.fsync(f.fileno())
    if overwrite:
      os.replace(tmp, path)
    else:
      # link() fails if the target appeared meanwhile: no-clobber and atomic.
      try:
        os.link(tmp, path)
      except FileExistsError:
        raise FileExistsError(errno.EEXIST, f"refusing to overwrite existing file {str(path)!r} "
                              "(pass overwrite=True)", str(path)) from None
      except OSError:  # file systems without hard links
        if path.exists():
          raise FileExistsError(errno.EEXIST, f"refusing to overwrite existing file {str(path)!r} "
                                "(pass overwrite=True)", str(path)) from None
        os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def write_png(path, img, *, overwrite: bool = False, bit_depth: int = 8) -> pathlib.Path:
  """Writes an image as PNG, atomically (temporary file in the same folder, then link/``os.replace``).

  Args:
    path: destination (always PNG-encoded, whatever the suffix). Parent folders are created.
    img: float HxWx3 / HxW / HxWx1 image in [0, 1] (clamped, x255 or x65535, rounded half to even, as
      :func:`lliejax.metrics.to_uint8`); a uint8 (bit_depth 8) or uint16 (bit_depth 16) array is written
      unchanged.
    overwrite: replace an existing file; otherwise an existing file raises ``FileExistsError``.
    bit_depth: 8 or 16 bits per channel.

  Returns:
    The path written.
  """
  path = pathlib.Path(path)
  x = _quantize(img, bit_depth)
  if x.ndim == 3 and x.shape[2] == 1:
    x = x[:, :, 0]
  if not (x.ndim == 2 or (x.ndim == 3 and x.shape[2] == 3)) or x.shape[0] == 0 or x.shape[1] == 0:
    raise ValueError(f"write_png expects an HxW, HxWx1 or HxWx3 image, got shape {np.shape(img)}")
  if x.dtype == np.uint8 or x.ndim == 2:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(x)).save(buf, format="PNG")
    payload = buf.getvalue()
  else:  # 16-bit RGB: PIL cannot write it.
    payload = _encode_png(x)
  _atomic_write(path, payload, overwrite)
  return path


# ---------------------------------------------------------------------------------------------------------
# Listing and visualisation.


def list_images(path_or_dir, *, recursive: bool = False) -> list[pathlib.Path]:
  """Image files (by extension, case-insensitive: png jpg jpeg bmp tif tiff webp), sorted by path.

  A file argument is returned as a one-element list (it must have an image extension). Hidden files
  (name starting with '.') are skipped.

  Raises:
    FileNotFoundError: the path does not exist or holds no image files.
  """
  p = pathlib.Path(path_or_dir)
  if not p.exists():
    raise FileNotFoundError(errno.ENOENT, f"no such file or directory {str(p)!r}", str(p))
  if p.is_file():
    if p.suffix.lower() not in IMAGE_EXTENSIONS:
      raise FileNotFoundError(errno.ENOENT, f"{str(p)!r} does not have an image extension {IMAGE_EXTENSIONS}",
                              str(p))
    return [p]
  it = p.rglob("*") if recursive else p.iterdir()
  files = sorted((f for f in it if f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".")
                  and f.is_file()), key=str)
  if not files:
    where = "under" if recursive else "in"
    raise FileNotFoundError(errno.ENOENT, f"no image files ({', '.join(IMAGE_EXTENSIONS)}) {where} {str(p)!r}",
                            str(p))
  return files


def side_by_side(images: Sequence, *, labels: Sequence[str] | None = None, pad: int = 4,
                 background: float = 1.0) -> np.ndarray:
  """Concatenates images horizontally (e.g. LQ | output | GT) into one float32 HxW'x3 array in [0, 1].

  Args:
    images: HxWx3 (or HxW / HxWx1) float images in [0, 1]; different heights are top-aligned.
    labels: optional captions, one per image, drawn in black with PIL's default font in a strip above.
    pad: background pixels between and around the images.
    background: gray level of the padding.

  Image pixels are copied unchanged (clamped to [0, 1]); only the label strip is rendered at 8 bits.
  """
  if not images:
    raise ValueError("side_by_side needs at least one image")
  if labels is not None and len(labels) != len(images):
    raise ValueError(f"got {len(labels)} labels for {len(images)} images")
  ims = []
  for im in images:
    a = np.asarray(im, dtype=np.float32)
    if a.ndim == 3 and a.shape[2] == 1:
      a = a[:, :, 0]
    if a.ndim == 2:
      a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3:
      raise ValueError(f"side_by_side expects HxWx3 images, got shape {np.shape(im)}")
    ims.append(np.clip(a, 0.0, 1.0))
  h = max(a.shape[0] for a in ims)
  total_w = sum(a.shape[1] for a in ims) + pad * (len(ims) + 1)
  label_h = 0
  font = None
  if labels is not None:
    font = ImageFont.load_default()
    boxes = [ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), str(t), font=font) for t in labels]
    label_h = max(b[3] for b in boxes) + pad
  out = np.full((h + 2 * pad + label_h, total_w, 3), background, dtype=np.float32)
  x = pad
  for i, a in enumerate(ims):
    if labels is not None:
      strip = Image.new("L", (a.shape[1], label_h), color=int(round(background * 255)))
      ImageDraw.Draw(strip).text((0, 0), str(labels[i]), fill=0, font=font)
      out[pad:pad + label_h, x:x + a.shape[1], :] = (np.asarray(strip, np.float32) / 255.0)[:, :, None]
    out[pad + label_h:pad + label_h + a.shape[0], x:x + a.shape[1]] = a
    x += a.shape[1] + pad
  return out


def stack_rows(rows: Sequence[np.ndarray], pad: int = 4) -> np.ndarray:
  """Stacks (H, W, 3) images vertically, right-padding narrower ones with white (rows of :func:`side_by_side`)."""
  width = max(r.shape[1] for r in rows)
  out = []
  for r in rows:
    canvas = np.ones((r.shape[0] + pad, width, 3), np.float32)
    canvas[: r.shape[0], : r.shape[1]] = r
    out.append(canvas)
  return np.concatenate(out, axis=0)


__all__ = ["IMAGE_EXTENSIONS", "ImageReadError", "decode_png", "encode_png", "list_images", "read_image",
           "read_image_uint8", "side_by_side", "stack_rows", "to_float", "write_png"]
