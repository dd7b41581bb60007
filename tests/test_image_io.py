"""Tests for lliejax.image_io with real PNG/JPEG/TIFF/BMP/WebP files of each mode."""
import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from lliejax.data import image_io as iio
from lliejax.metrics import to_uint8


def _rgb8(h=20, w=28, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _smooth_rgb8(h=32, w=48):
  y, x = np.mgrid[0:h, 0:w]
  return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (h + w - 2)], -1).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- test-side PNG encoder


def _paeth(a, b, c):
  p = a + b - c
  pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
  return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _png16_bytes(arr, color_type, filters):
  """A 16-bit PNG with the given per-row filter types (forward filtering written independently here)."""
  h, w = arr.shape[:2]
  bpp = 2 * arr.shape[2]
  rows = arr.astype(">u2").reshape(h, -1).view(np.uint8).astype(np.int32)
  out = []
  prev = np.zeros(rows.shape[1], np.int32)
  for y in range(h):
    x = rows[y]
    a = np.concatenate([np.zeros(bpp, np.int32), x[:-bpp]])
    c = np.concatenate([np.zeros(bpp, np.int32), prev[:-bpp]])
    ft = filters[y % len(filters)]
    pred = [np.zeros_like(x), a, prev, (a + prev) // 2, _paeth(a, prev, c)][ft]
    out.append(bytes([ft]) + ((x - pred) % 256).astype(np.uint8).tobytes())
    prev = x
  raw = b"".join(out)

  def chunk(t, p):
    return struct.pack(">I", len(p)) + t + p + struct.pack(">I", zlib.crc32(t + p) & 0xFFFFFFFF)

  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
          + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


# ---------------------------------------------------------------------------------------------- reading, per mode


def test_rgb8_png_round_trip(tmp_path):
  rng = np.random.default_rng(1)
  f = rng.random((21, 30, 3)).astype(np.float32)
  p = iio.write_png(tmp_path / "sub" / "dir" / "x.png", f)
  assert p.exists()
  img, notes = iio.read_image(p)
  assert img.dtype == np.float32 and img.shape == (21, 30, 3) and notes == []
  np.testing.assert_array_equal(to_uint8(img), to_uint8(f))
  np.testing.assert_array_equal(img, to_uint8(f).astype(np.float32) / 255.0)
  assert np.asarray(Image.open(p)).dtype == np.uint8


def test_jpeg_and_exif_orientation(tmp_path):
  arr = _smooth_rgb8(32, 48)
  Image.fromarray(arr).save(tmp_path / "a.jpg", quality=95)
  img, notes = iio.read_image(tmp_path / "a.jpg")
  assert notes == [] and img.shape == (32, 48, 3)
  np.testing.assert_array_equal(to_uint8(img), np.asarray(Image.open(tmp_path / "a.jpg").convert("RGB")))
  assert np.abs(img - arr / 255.0).mean() < 0.02
  # Orientation 6 (rotate 90 deg clockwise for display) -> 48x32.
  exif = Image.Exif()
  exif[0x0112] = 6
  Image.fromarray(arr).save(tmp_path / "rot.jpeg", quality=95, exif=exif)
  img, notes = iio.read_image(tmp_path / "rot.jpeg")
  assert img.shape == (48, 32, 3)
  assert any("EXIF orientation 6" in n for n in notes)
  expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "rot.jpeg")).convert("RGB"))
  np.testing.assert_array_equal(to_uint8(img), expected)


def test_grayscale_L_and_1bit(tmp_path):
  g = _rgb8()[..., 0]
  Image.fromarray(g, "L").save(tmp_path / "g.png")
  img, notes = iio.read_image(tmp_path / "g.png")
  assert img.shape == (20, 28, 3) and any("replicated" in n for n in notes)
  for c in range(3):
    np.testing.assert_array_equal(img[..., c], g / np.float32(255))
  Image.fromarray(g > 128).save(tmp_path / "b.png")
  img, notes = iio.read_image(tmp_path / "b.png")
  np.testing.assert_array_equal(img[..., 1], (g > 128).astype(np.float32))
  assert any("1-bit" in n for n in notes)


def test_alpha_is_dropped_not_composited(tmp_path):
  rgb = _rgb8()
  alpha = np.full(rgb.shape[:2], 255, np.uint8)
  alpha[:5] = 0
  alpha[5:10] = 77
  Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "rgba.png")
  img, notes = iio.read_image(tmp_path / "rgba.png")
  np.testing.assert_array_equal(to_uint8(img), rgb)
  assert any("alpha channel dropped" in n and "min alpha 0/255" in n for n in notes)
  # LA
  Image.fromarray(np.dstack([rgb[..., 0], alpha]), "LA").save(tmp_path / "la.png")
  img, notes = iio.read_image(tmp_path / "la.png")
  np.testing.assert_array_equal(to_uint8(img), np.repeat(rgb[..., :1], 3, axis=2))
  assert any("alpha" in n for n in notes) and any("replicated" in n for n in notes)
  # Fully opaque alpha still noted as dropped.
  Image.fromarray(np.dstack([rgb, np.full_like(alpha, 255)]), "RGBA").save(tmp_path / "opaque.png")
  assert "alpha channel dropped (fully opaque)" in iio.read_image(tmp_path / "opaque.png")[1]


def test_palette_images(tmp_path):
  im = Image.fromarray(_smooth_rgb8()).quantize(colors=16)
  assert im.mode == "P"
  im.save(tmp_path / "p.png")
  img, notes = iio.read_image(tmp_path / "p.png")
  np.testing.assert_array_equal(to_uint8(img), np.asarray(Image.open(tmp_path / "p.png").convert("RGB")))
  assert any("palette" in n for n in notes)
  im.save(tmp_path / "pt.png", transparency=0)
  img, notes = iio.read_image(tmp_path / "pt.png")
  np.testing.assert_array_equal(to_uint8(img), np.asarray(Image.open(tmp_path / "pt.png").convert("RGB")))
  assert any("palette transparency" in n for n in notes)
  im.save(tmp_path / "p.gif")
  img, notes = iio.read_image(tmp_path / "p.gif")
  assert img.shape == (32, 48, 3)


def test_16bit_grayscale_I16(tmp_path):
  g = np.random.default_rng(2).integers(0, 65536, (19, 23), dtype=np.uint16)
  Image.fromarray(g).save(tmp_path / "g16.png")
  assert Image.open(tmp_path / "g16.png").mode == "I;16"
  img, notes = iio.read_image(tmp_path / "g16.png")
  np.testing.assert_array_equal(img[..., 2], g.astype(np.float32) / 65535)
  assert any("16-bit grayscale" in n for n in notes)
  # via write_png(bit_depth=16) from float, and a 16-bit TIFF
  f = g.astype(np.float64) / 65535
  iio.write_png(tmp_path / "w16.png", f, bit_depth=16)
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "w16.png")), g)
  Image.fromarray(g).save(tmp_path / "g16.tif")
  img, _ = iio.read_image(tmp_path / "g16.tif")
  np.testing.assert_array_equal(np.round(img[..., 0].astype(np.float64) * 65535), g)


def test_16bit_rgb_round_trip(tmp_path):
  a = np.random.default_rng(3).integers(0, 65536, (17, 26, 3), dtype=np.uint16)
  iio.write_png(tmp_path / "rgb16.png", a, bit_depth=16)
  img, notes = iio.read_image(tmp_path / "rgb16.png")
  np.testing.assert_array_equal(np.round(img.astype(np.float64) * 65535).astype(np.uint16), a)
  assert any("16-bit RGB" in n for n in notes)
  # PIL itself only sees the 8-bit high bytes of such a file.
  pil8 = np.asarray(Image.open(tmp_path / "rgb16.png").convert("RGB"))
  np.testing.assert_array_equal(pil8, (a >> 8).astype(np.uint8))
  # float input rounds half to even on the 16-bit grid
  iio.write_png(tmp_path / "f16.png", np.full((2, 2, 3), 0.5), bit_depth=16)
  img, _ = iio.read_image(tmp_path / "f16.png")
  assert round(float(img[0, 0, 0]) * 65535) == 32768  # 0.5*65535 = 32767.5 -> even 32768


@pytest.mark.parametrize("color_type,filters", [(2, [0, 1, 2, 3, 4]), (4, [4, 3]), (6, [0, 1, 2, 3, 4]),
                                               (2, [0, 1, 2])])
def test_16bit_png_all_filter_types(tmp_path, color_type, filters):
  ch = {2: 3, 4: 2, 6: 4}[color_type]
  a = np.random.default_rng(color_type).integers(0, 65536, (15, 13, ch), dtype=np.uint16)
  a[3:6] = 65535  # some flat rows
  (tmp_path / "f.png").write_bytes(_png16_bytes(a, color_type, filters=filters))
  img, notes = iio.read_image(tmp_path / "f.png")
  got = np.round(img.astype(np.float64) * 65535).astype(np.uint16)
  expected = np.repeat(a[..., :1], 3, axis=2) if color_type == 4 else a[..., :3]
  np.testing.assert_array_equal(got, expected)
  if color_type in (4, 6):
    assert any("alpha channel dropped" in n for n in notes)


def test_unfilter_matches_pil_on_8bit_png():
  """The scanline unfiltering used for 16-bit PNGs agrees with PIL on a PIL-written (adaptive filter) PNG."""
  arr = np.clip(_smooth_rgb8(40, 50).astype(int) + np.random.default_rng(4).integers(-9, 9, (40, 50, 3)), 0, 255)
  arr = arr.astype(np.uint8)
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, format="PNG")
  data = buf.getvalue()
  chunks = iio._png_chunks(data, "mem")  # pylint: disable=protected-access
  raw = zlib.decompress(b"".join(p for t, p in chunks if t == b"IDAT"))
  raw = np.frombuffer(raw, np.uint8).reshape(40, 1 + 150)
  assert len(set(raw[:, 0].tolist())) > 1  # several filter types actually used
  out = iio._unfilter_rows(raw, 40, 150, 3, "mem")  # pylint: disable=protected-access
  np.testing.assert_array_equal(out.reshape(40, 50, 3), arr)


def test_other_formats(tmp_path):
  rgb = _rgb8()
  for name in ["a.bmp", "a.tif", "a.webp"]:
    kw = {"lossless": True} if name.endswith("webp") else {}
    Image.fromarray(rgb).save(tmp_path / name, **kw)
    img, notes = iio.read_image(tmp_path / name)
    np.testing.assert_array_equal(to_uint8(img), rgb, err_msg=name)
    assert notes == [], name
  Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
  img, notes = iio.read_image(tmp_path / "cmyk.jpg")
  assert img.shape == (20, 28, 3) and any("CMYK" in n for n in notes)


# ---------------------------------------------------------------------------------------------- read errors


def _expect_read_error(path, match=None):
  with pytest.raises(iio.ImageReadError, match=match) as ei:
    iio.read_image(path)
  assert isinstance(ei.value, ValueError)
  assert os.path.basename(str(path)) in str(ei.value) and ei.value.path == str(path)
  return ei.value


def test_read_errors_name_the_file(tmp_path):
  _expect_read_error(tmp_path / "missing.png", "does not exist")
  _expect_read_error(tmp_path, "not a regular file")
  (tmp_path / "empty.png").write_bytes(b"")
  _expect_read_error(tmp_path / "empty.png", "empty")
  (tmp_path / "garbage.png").write_bytes(b"this is not an image at all" * 10)
  _expect_read_error(tmp_path / "garbage.png")
  (tmp_path / "garbage.jpg").write_bytes(b"\xff\xd8\xff" + bytes(range(256)) * 4)
  _expect_read_error(tmp_path / "garbage.jpg")

  arr = _rgb8(64, 64)
  Image.fromarray(arr).save(tmp_path / "ok.png")
  data = (tmp_path / "ok.png").read_bytes()
  (tmp_path / "trunc.png").write_bytes(data[:len(data) // 2])
  _expect_read_error(tmp_path / "trunc.png", "truncated")
  bad = bytearray(data)
  bad[len(data) // 2] ^= 0xFF  # flip a byte of the image data: CRC mismatch
  (tmp_path / "crc.png").write_bytes(bytes(bad))
  _expect_read_error(tmp_path / "crc.png", "CRC")

  # A bad CRC in an ancillary chunk is tolerated (as libpng does), with a note.
  text = b"Comment\x00hello"
  bad_text = struct.pack(">I", len(text)) + b"tEXt" + text + struct.pack(">I", (zlib.crc32(b"tEXt" + text) ^ 1))
  (tmp_path / "badtext.png").write_bytes(data[:33] + bad_text + data[33:])
  img, notes = iio.read_image(tmp_path / "badtext.png")
  np.testing.assert_array_equal(to_uint8(img), arr)
  assert notes == ["ancillary PNG chunk tEXt with bad CRC ignored"]

  Image.fromarray(arr).save(tmp_path / "ok.jpg", quality=90)
  data = (tmp_path / "ok.jpg").read_bytes()
  (tmp_path / "trunc.jpg").write_bytes(data[:len(data) // 2])
  _expect_read_error(tmp_path / "trunc.jpg", "truncated")

  a16 = np.random.default_rng(5).integers(0, 65536, (30, 30, 3), dtype=np.uint16)
  data = _png16_bytes(a16, 2, [4])
  (tmp_path / "trunc16.png").write_bytes(data[:len(data) - 300])
  _expect_read_error(tmp_path / "trunc16.png", "truncated")


# ---------------------------------------------------------------------------------------------- writing


def test_write_png_overwrite_refusal_and_atomicity(tmp_path):
  p = tmp_path / "out.png"
  iio.write_png(p, np.zeros((4, 5, 3)))
  before = p.read_bytes()
  with pytest.raises(FileExistsError, match="out.png") as ei:
    iio.write_png(p, np.ones((4, 5, 3)))
  assert ei.value.filename == str(p)
  assert p.read_bytes() == before
  iio.write_png(p, np.ones((4, 5, 3)), overwrite=True)
  img, _ = iio.read_image(p)
  assert img.min() == 1.0
  assert sorted(os.listdir(tmp_path)) == ["out.png"]  # no temporary files left behind


def test_write_png_rounding_and_inputs(tmp_path):
  x = np.array([[[0.5, 0.5 / 255 * 3, -1.0], [2.0, 127.5 / 255, np.float32(1) / 255 * np.float32(2.5)]]],
               dtype=np.float32)
  iio.write_png(tmp_path / "r.png", x)
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "r.png")), to_uint8(x))
  assert np.asarray(Image.open(tmp_path / "r.png"))[0, 0, 0] == 128  # 127.5 -> 128 (even)
  u8 = _rgb8()
  iio.write_png(tmp_path / "u8.png", u8)
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "u8.png")), u8)
  iio.write_png(tmp_path / "g.png", np.full((3, 4, 1), 0.25))
  assert Image.open(tmp_path / "g.png").mode == "L"
  with pytest.raises(ValueError, match="shape"):
    iio.write_png(tmp_path / "bad.png", np.zeros((3, 4, 4)))
  with pytest.raises(ValueError, match="bit_depth"):
    iio.write_png(tmp_path / "bad.png", np.zeros((3, 4, 3)), bit_depth=12)
  with pytest.raises(TypeError):
    iio.write_png(tmp_path / "bad.png", np.zeros((3, 4, 3), np.int32))
  assert not (tmp_path / "bad.png").exists()


# ---------------------------------------------------------------------------------------------- listing, strips


def test_list_images(tmp_path):
  for name in ["b.png", "a.JPG", "c.jpeg", "d.tiff", "e.webp", "notes.txt", ".hidden.png"]:
    (tmp_path / name).write_bytes(b"x")
  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "f.bmp").write_bytes(b"x")
  names = [p.name for p in iio.list_images(tmp_path)]
  assert names == ["a.JPG", "b.png", "c.jpeg", "d.tiff", "e.webp"]
  rec = iio.list_images(tmp_path, recursive=True)
  assert [str(p.relative_to(tmp_path)) for p in rec] == ["a.JPG", "b.png", "c.jpeg", "d.tiff", "e.webp",
                                                          os.path.join("sub", "f.bmp")]
  assert iio.list_images(tmp_path / "b.png") == [tmp_path / "b.png"]
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no image files"):
    iio.list_images(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match="nope"):
    iio.list_images(tmp_path / "nope")
  with pytest.raises(FileNotFoundError, match="extension"):
    iio.list_images(tmp_path / "notes.txt")


def test_side_by_side():
  a = np.random.default_rng(6).random((10, 12, 3)).astype(np.float32)
  b = np.zeros((8, 7, 3), np.float32)
  out = iio.side_by_side([a, b, a], pad=2)
  assert out.shape == (10 + 4, 12 + 7 + 12 + 4 * 2, 3) and out.dtype == np.float32
  np.testing.assert_array_equal(out[2:12, 2:14], a)
  np.testing.assert_array_equal(out[2:10, 16:23], b)
  assert out[0, 0, 0] == 1.0 and out[11, 18, 0] == 1.0  # padding and below the shorter image
  lab = iio.side_by_side([a, a], labels=["LQ", "GT"], pad=3)
  assert lab.shape[0] > a.shape[0] + 6 and lab.shape[1] == 2 * 12 + 3 * 3
  np.testing.assert_array_equal(lab[-3 - 10:-3, 3:15], a)
  strip = lab[3:-13, 3:15]
  assert strip.min() < 0.5  # text drawn
  g = iio.side_by_side([a[..., 0]])  # grayscale accepted
  assert g.shape == (18, 20, 3)
  with pytest.raises(ValueError, match="labels"):
    iio.side_by_side([a, a], labels=["x"])
