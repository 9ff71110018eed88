"""t2t.images: every image a user may bring opens as RGB or fails with a specific message."""

from __future__ import annotations

import io
import math
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, features

from t2t.images import (
    ASSETS,
    ImageError,
    denormalize,
    imagenet_class_names,
    open_image,
    preprocess,
    preprocess_steps,
    sample_images,
    tensor_to_pil,
    to_rgb,
)

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
RED, BLUE, GREEN, WHITE = (255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 255)


def quadrants(w: int = 64, h: int = 48) -> Image.Image:
    """Red / green on top, blue / white below: shows both colour and orientation."""
    img = Image.new("RGB", (w, h), WHITE)
    img.paste(RED, (0, 0, w // 2, h // 2))
    img.paste(GREEN, (w // 2, 0, w, h // 2))
    img.paste(BLUE, (0, h // 2, w // 2, h))
    return img


def pixel(img: Image.Image, x: int, y: int) -> np.ndarray:
    return np.asarray(img, dtype=np.int32)[y, x]


def assert_close(actual: np.ndarray, expected: tuple[int, ...], tol: int) -> None:
    assert np.abs(np.asarray(actual) - np.asarray(expected)).max() <= tol, (actual, expected)


def png_declaring(width: int, height: int) -> bytes:
    """A valid ~100-byte PNG whose header claims ``width`` x ``height``: a decompression bomb."""
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # after the signature and the IHDR chunk's length + type
    data[ihdr : ihdr + 8] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))  # chunk type + 13 data bytes
    data[ihdr + 13 : ihdr + 17] = crc.to_bytes(4, "big")
    return bytes(data)


# ---------------------------------------------------------------------------------------------
# Formats and colour modes
# ---------------------------------------------------------------------------------------------

FORMATS = [
    ("png", {}, 0),
    ("jpg", {"quality": 95}, 12),
    pytest.param(
        "webp",
        {"quality": 95},
        12,
        marks=pytest.mark.skipif(not features.check("webp"), reason="no WebP in this Pillow"),
    ),
    ("bmp", {}, 0),
    ("gif", {}, 0),
    ("tiff", {}, 0),
]


@pytest.mark.parametrize(("ext", "options", "tol"), FORMATS)
def test_formats_open_as_rgb(tmp_path: Path, ext: str, options: dict, tol: int) -> None:
    path = tmp_path / f"img.{ext}"
    quadrants().save(path, **options)
    img = open_image(path)
    assert img.mode == "RGB" and img.size == (64, 48)
    assert_close(pixel(img, 8, 8), RED, tol)
    assert_close(pixel(img, 56, 8), GREEN, tol)
    assert_close(pixel(img, 8, 40), BLUE, tol)
    assert_close(pixel(img, 56, 40), WHITE, tol)


def test_sources_path_str_bytes_and_file_objects(tmp_path: Path) -> None:
    path = tmp_path / "img.png"
    quadrants().save(path)
    raw = path.read_bytes()
    with open(path, "rb") as f:
        from_file = open_image(f)
    for img in (open_image(path), open_image(str(path)), open_image(raw), open_image(io.BytesIO(raw)), from_file):
        assert img.mode == "RGB" and img.size == (64, 48)
        assert_close(pixel(img, 8, 8), RED, 0)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(path, quality=95)  # pure red in CMYK
    assert Image.open(path).mode == "CMYK"
    img = open_image(path)
    assert img.mode == "RGB"
    assert_close(pixel(img, 16, 16), RED, 10)


def test_16bit_png_is_rescaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 65535, 256).round().astype(np.uint16), (16, 1))
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I;16")
    img = open_image(path)
    assert img.mode == "RGB" and img.size == (256, 16)
    grey = np.asarray(img)[0, :, 0].astype(int)
    expected = np.rint(ramp[0] / 65535 * 255).astype(int)
    assert np.array_equal(grey, expected)  # clipping would make everything above 255 white
    assert len(np.unique(grey)) > 200


@pytest.mark.parametrize(
    ("values", "mode", "expected"),
    [
        (np.array([0, 32768, 65535]), "I", [0, 128, 255]),  # fits 16 bits: scaled as 16-bit
        (np.array([0, 100, 255]), "I", [0, 100, 255]),  # fits 8 bits: kept as is
        (np.array([0.0, 0.5, 1.0]), "F", [0, 128, 255]),  # unit floats
        (np.array([-1.0, 0.0, 1.0]), "F", [0, 128, 255]),  # no standard range: min..max
    ],
)
def test_32bit_and_float_modes(values: np.ndarray, mode: str, expected: list[int]) -> None:
    arr = np.tile(values, (8, 3)).astype(np.int32 if mode == "I" else np.float32)
    src = Image.fromarray(arr, mode) if mode == "I" else Image.fromarray(arr)
    assert src.mode == mode
    img = to_rgb(src)
    assert img.mode == "RGB"
    assert np.asarray(img)[0, :3, 0].tolist() == expected


def test_palette_with_transparency_goes_on_white(tmp_path: Path) -> None:
    pal = Image.new("P", (16, 16), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # index 0 black (transparent), 1 red
    pal.paste(1, (8, 0, 16, 16))
    path = tmp_path / "pal.png"
    pal.save(path, transparency=0)
    img = open_image(path)
    assert img.mode == "RGB"
    assert_close(pixel(img, 2, 2), WHITE, 0)  # transparent black shows the white background
    assert_close(pixel(img, 12, 2), RED, 0)


def test_rgba_and_la_composited_on_white(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 0))  # invisible red
    rgba.paste((0, 0, 0, 128), (8, 0, 16, 16))  # half-transparent black
    rgba.save(tmp_path / "rgba.png")
    img = open_image(tmp_path / "rgba.png")
    assert img.mode == "RGB"
    assert_close(pixel(img, 2, 2), WHITE, 0)
    assert_close(pixel(img, 12, 2), (127, 127, 127), 1)

    Image.new("LA", (16, 16), (0, 0)).save(tmp_path / "la.png")
    assert_close(pixel(open_image(tmp_path / "la.png"), 4, 4), WHITE, 0)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    src = Image.new("RGB", (40, 20), BLUE)
    src.paste(RED, (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / "rotated.jpg"
    src.save(path, quality=95, exif=exif.tobytes())
    img = open_image(path)
    assert img.size == (20, 40)  # portrait now
    assert_close(pixel(img, 10, 5), RED, 12)  # the left half ends up on top
    assert_close(pixel(img, 10, 35), BLUE, 12)


def test_animated_gif_gives_first_frame(tmp_path: Path) -> None:
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (16, 16), RED), Image.new("RGB", (16, 16), BLUE)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(path).n_frames == 2
    img = open_image(path)
    assert img.mode == "RGB" and img.size == (16, 16)
    assert_close(pixel(img, 8, 8), RED, 0)


def test_large_images_are_shrunk(tmp_path: Path) -> None:
    Image.new("RGB", (3000, 2000), RED).save(tmp_path / "big.jpg")
    assert open_image(tmp_path / "big.jpg").size == (2048, 1365)  # JPEG: via draft + thumbnail
    Image.new("L", (2500, 500), 80).save(tmp_path / "wide.png")
    img = open_image(tmp_path / "wide.png", max_side=1000)
    assert img.size == (1000, 200) and img.mode == "RGB"


def test_small_images_open_and_upscale() -> None:
    img = open_image(_png_bytes(Image.new("RGB", (16, 12), GREEN)))
    assert img.size == (16, 12)
    assert preprocess(img, MEAN, STD).shape == (1, 3, 224, 224)


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Bad input: each gets its own message
# ---------------------------------------------------------------------------------------------


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    for source in (tmp_path / "empty.png", b"", io.BytesIO()):
        with pytest.raises(ImageError, match="The file is empty"):
            open_image(source)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="File not found"):
        open_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="is a folder"):
        open_image(tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"just some notes\nnot a picture\n", r"Not an image file \(it looks like a text file\)"),
        (b"BMW service log\n", r"Not an image file \(it looks like a text file\)"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", r"Not an image file \(it looks like a PDF document\)"),
        (b"<?xml version='1.0'?><svg xmlns='http://www.w3.org/2000/svg'/>", r"Not an image file \(.*SVG"),
        (b"<!DOCTYPE html><html></html>", r"Not an image file \(.*HTML"),
        (bytes(range(256)) * 4, r"Not an image file \(the format is not recognised\)"),
    ],
)
def test_not_an_image(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "upload.png"  # the extension lies, as uploads' do
    path.write_bytes(content)
    with pytest.raises(ImageError, match=message):
        open_image(path)


def test_unsupported_image_format() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, "ICO")
    with pytest.raises(ImageError, match="ICO icon, which is not supported"):
        open_image(buf.getvalue())


def test_truncated_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "cut.jpg"
    Image.effect_noise((256, 256), 60).convert("RGB").save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated"):
        open_image(path)


def test_corrupt_header() -> None:
    data = bytearray(_png_bytes(quadrants()))
    data[12:29] = b"\x00" * 17  # wipe the IHDR chunk
    with pytest.raises(ImageError, match="looks like a PNG image but is truncated or corrupt"):
        open_image(bytes(data))


def test_corrupt_pixel_data() -> None:
    buf = io.BytesIO()
    Image.effect_noise((128, 128), 60).convert("RGB").save(buf, "JPEG")
    data = buf.getvalue()
    with pytest.raises(ImageError, match="corrupt|truncated"):
        open_image(data[:300] + b"\x13" * (len(data) - 300))


@pytest.mark.parametrize(
    ("width", "height", "message"),
    [
        (20000, 20000, r"Image is 400 MP, more than the limit of 64 MP"),  # PIL refuses first
        (12000, 10000, r"Image is 120 MP, more than the limit of 64 MP"),  # PIL only warns
        (9000, 9000, r"Image is 9000x9000 = 81 MP, more than the limit of 64 MP"),  # our own check
    ],
)
def test_decompression_bomb(tmp_path: Path, width: int, height: int, message: str) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_declaring(width, height))
    assert path.stat().st_size < 200
    limit_before, filters_before = Image.MAX_IMAGE_PIXELS, list(warnings.filters)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may leak out as a warning either
        with pytest.raises(ImageError, match=message):
            open_image(path)
    assert Image.MAX_IMAGE_PIXELS == limit_before  # PIL's global limit untouched
    assert warnings.filters == filters_before


def test_custom_pixel_limit() -> None:
    with pytest.raises(ImageError, match=r"Image is 64x48 = 3,072 pixels, more than the limit of 1,000 pixels"):
        open_image(_png_bytes(quadrants()), max_pixels=1000)


def test_a_size_check_is_reported_as_itself_not_as_corruption() -> None:
    # a caller's own minimum: the message names it, and never calls a good file corrupt or truncated
    with pytest.raises(ImageError, match=r"^Image is only 4x20 pixels; it needs at least 8 pixels on each side\.$"):
        open_image(_png_bytes(Image.new("RGB", (4, 20))), min_side=8)
    with pytest.raises(ImageError) as err:
        open_image(_png_bytes(quadrants()), max_pixels=1000)
    assert "corrupt" not in str(err.value) and "truncated" not in str(err.value)


@pytest.mark.parametrize("size", [(1, 1), (1, 7), (7, 1), (1, 256), (3, 5), (4, 20)])
def test_any_image_of_at_least_one_pixel_opens_and_is_upsampled(size: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(size))
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    img = open_image(_png_bytes(Image.fromarray(arr)))
    assert img.size == size and np.array_equal(np.asarray(img), arr)  # decoded as it is
    steps = preprocess_steps(img, MEAN, STD)  # 224 px, crop 0.9: the shorter side becomes 248
    assert steps.tensor.shape == (1, 3, 224, 224) and torch.isfinite(steps.tensor).all()
    assert steps.resize_factor == pytest.approx(248 / min(size)) and steps.upsampled
    assert f"upsampled {248 / min(size):.3g}x" in "\n".join(steps.description)


def test_a_one_pixel_image_becomes_its_colour() -> None:
    img = open_image(_png_bytes(Image.new("RGB", (1, 1), (100, 150, 200))))
    steps = preprocess_steps(img, MEAN, STD)
    assert steps.resize_factor == 248.0 and steps.resized.size == (248, 248)
    want = torch.tensor([(v / 255 - m) / s for v, m, s in zip((100, 150, 200), MEAN, STD, strict=True)])
    torch.testing.assert_close(steps.tensor[0], want[:, None, None].expand(3, 224, 224), atol=1e-5, rtol=0)


def test_shrinking_and_same_size_are_said_too() -> None:
    big = preprocess_steps(Image.new("RGB", (496, 600)), MEAN, STD)
    assert big.resize_factor == 0.5 and not big.upsampled and "shrunk 0.5x" in big.description[1]
    same = preprocess_steps(Image.new("RGB", (248, 300)), MEAN, STD)
    assert same.resize_factor == 1 and "(same size)" in same.description[1]


def test_extreme_aspect_ratios_are_refused_with_the_reason(tmp_path: Path) -> None:
    strip = _png_bytes(Image.new("RGB", (1, 257)))
    with pytest.raises(ImageError, match=r"^Image is 1x257 pixels, an aspect ratio of 257:1; at most 256:1"):
        open_image(strip)
    path = tmp_path / "strip.png"
    path.write_bytes(png_declaring(3000, 2))  # refused from the header, before any pixel is decoded
    with pytest.raises(ImageError, match=r"aspect ratio of 1500:1"):
        open_image(path)
    with pytest.raises(ImageError, match=r"aspect ratio of 300:1"):
        preprocess_steps(Image.new("RGB", (300, 1)), MEAN, STD)


@pytest.mark.parametrize("size", [(1, 1), (1, 9)])
def test_a_truncated_small_png_is_still_called_truncated(size: tuple[int, int]) -> None:
    data = _png_bytes(Image.effect_noise(size, 60).convert("RGB"))
    idat = 8 + 25  # after the signature and the IHDR chunk
    assert data[idat + 4 : idat + 8] == b"IDAT"
    pixels = int.from_bytes(data[idat : idat + 4], "big")
    # inside the IHDR chunk, the IDAT chunk's header, and the compressed pixels
    for cut in (20, idat + 6, idat + 8 + pixels // 2):
        with pytest.raises(ImageError, match="truncated"):
            open_image(data[:cut])


# ---------------------------------------------------------------------------------------------
# Preprocessing
# ---------------------------------------------------------------------------------------------


def test_preprocess_constant_image_matches_hand_normalisation() -> None:
    colour = (100, 150, 200)
    x = preprocess(Image.new("RGB", (300, 200), colour), MEAN, STD)
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    for c in range(3):
        expected = (colour[c] / 255 - MEAN[c]) / STD[c]
        assert torch.allclose(x[0, c], torch.full((224, 224), expected), atol=1e-5)


@pytest.mark.parametrize(
    ("size", "crop_pct", "resized", "box"),
    [
        ((300, 200), 0.9, (372, 248), (74, 12, 298, 236)),  # floor(224 / 0.9) = 248, as timm
        ((200, 300), 0.9, (248, 372), (12, 74, 236, 298)),
        ((500, 500), 0.875, (256, 256), (16, 16, 240, 240)),  # DeiT's 256 -> 224
        ((100, 50), 1.0, (448, 224), (112, 0, 336, 224)),  # small images are upscaled
    ],
)
def test_resize_and_crop_geometry(size, crop_pct, resized, box) -> None:
    steps = preprocess_steps(Image.new("RGB", size), MEAN, STD, crop_pct=crop_pct)
    assert steps.resized.size == resized
    assert steps.crop_box == box
    assert steps.cropped.size == (224, 224)
    assert steps.tensor.shape == (1, 3, 224, 224)


def test_crop_takes_the_centre() -> None:
    """A 300x200 image whose x coordinate is encoded in red: the crop must start at resized x=74."""
    ramp = np.zeros((200, 300, 3), np.uint8)
    ramp[..., 0] = np.linspace(0, 255, 300)[None, :].round()
    steps = preprocess_steps(Image.fromarray(ramp), (0, 0, 0), (1, 1, 1))
    red = steps.tensor[0, 0, 112] * 255  # one row across the crop, back in 0..255
    # resized x = 74 .. 297 of 372 maps back to original x ~ (74 .. 297) * 300 / 372
    assert abs(red[0].item() - 74.5 * 300 / 372 * 255 / 299) < 3
    assert abs(red[-1].item() - 297.5 * 300 / 372 * 255 / 299) < 3
    left, top, right, bottom = steps.crop_box_original
    assert math.isclose(left, 74 * 300 / 372) and math.isclose(top, 12 * 200 / 248)
    assert math.isclose(right - left, 224 * 300 / 372)


def test_preprocess_matches_manual_pipeline() -> None:
    img = Image.effect_noise((320, 240), 40).convert("RGB")
    x = preprocess(img, MEAN, STD)
    manual = img.resize((330, 248), Image.Resampling.BICUBIC).crop((53, 12, 277, 236))
    arr = (np.asarray(manual, np.float32) / 255 - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    assert torch.allclose(x[0], torch.from_numpy(arr).permute(2, 0, 1), atol=1e-6)


def test_preprocess_steps_description_and_stats() -> None:
    steps = preprocess_steps(Image.new("RGB", (300, 200), (100, 150, 200)), MEAN, STD)
    text = "\n".join(steps.description)
    assert "300x200" in text and "372x248" in text and "248 = floor(224 / 0.9)" in text
    assert "bicubic" in text and "left=74, top=12" in text
    assert steps.stats["mean"] == pytest.approx(
        [(v / 255 - m) / s for v, m, s in zip((100, 150, 200), MEAN, STD, strict=True)], abs=1e-5
    )
    assert steps.stats["std"] == pytest.approx([0, 0, 0], abs=1e-5)


def test_preprocess_rejects_bad_arguments() -> None:
    img = Image.new("RGB", (64, 64))
    with pytest.raises(ValueError, match="crop_pct"):
        preprocess(img, MEAN, STD, crop_pct=1.5)
    with pytest.raises(ValueError, match="interpolation"):
        preprocess(img, MEAN, STD, interpolation="cubic-ish")


def test_preprocess_accepts_non_rgb() -> None:
    assert preprocess(Image.new("L", (64, 64), 7), MEAN, STD).shape == (1, 3, 224, 224)


def test_denormalize_round_trip() -> None:
    img = Image.effect_noise((256, 256), 40).convert("RGB")
    steps = preprocess_steps(img, MEAN, STD)
    expected = torch.from_numpy(np.asarray(steps.cropped, np.float32) / 255).permute(2, 0, 1)
    for t in (steps.tensor, steps.tensor[0]):
        back = denormalize(t, MEAN, STD)
        assert back.shape == (3, 224, 224)
        assert torch.allclose(back, expected, atol=1e-5)
        assert back.min() >= 0 and back.max() <= 1
    assert np.array_equal(np.asarray(tensor_to_pil(steps.tensor, MEAN, STD)), np.asarray(steps.cropped))
    with pytest.raises(ValueError):
        denormalize(torch.zeros(2, 3, 8, 8), MEAN, STD)


# ---------------------------------------------------------------------------------------------
# Bundled data
# ---------------------------------------------------------------------------------------------


def test_imagenet_class_names() -> None:
    names = imagenet_class_names()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert names[0] == "tench" and names[1] == "goldfish"
    assert names[207] == "golden retriever" and names[281] == "tabby cat"
    assert names[999] == "toilet tissue"
    assert all(n and n == n.strip() for n in names)
    names.append("mutating the copy")
    assert len(imagenet_class_names()) == 1000


def test_sample_images_ship_and_open() -> None:
    samples = sample_images()
    assert 2 <= len(samples) <= 4
    notice = (ASSETS / "NOTICE.md").read_text()
    assert set(samples) == {"grace_hopper", "cat", "coffee"}
    for path in samples.values():
        assert path.stat().st_size < 100_000
        img = open_image(path)
        assert max(img.size) <= 512 and min(img.size) >= 224
        assert path.name in notice, f"{path.name} has no source/licence entry in NOTICE.md"


@pytest.mark.parametrize("cut", [50, 100, 200])
def test_jpeg_cut_inside_its_header_is_an_image_error(cut):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buf, "JPEG")
    with pytest.raises(ImageError, match="truncated or corrupt"):
        open_image(buf.getvalue()[:cut])
