"""Bad and unusual inputs at the Scorer's boundary, on every backend available here (torch, compiled, onnx,
runtime): each gets a documented conversion or a ValueError / TypeError naming the argument and the item index,
never a crash or a hang; the runtime keeps serving after every one.

The image rules themselves (jrm_engine.images.to_rgb) are fuzzed with hypothesis without a model; the backends
share the session fixtures of test_export / test_scoring / test_scoring_runtime (nothing is compiled here).
"""
from __future__ import annotations

import io
from concurrent.futures import Future

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from jrm_engine.images import DEFAULT_MAX_PIXELS, to_rgb
from jrm_engine.scoring import Scorer
from jrm_engine.vision import load_image

from test_export import SETTINGS, aoti_package, checkpoint, onnx_model, small_model  # noqa: F401  (fixtures)
from test_scoring import images, torch_scorer  # noqa: F401  (fixture)
from test_scoring_runtime import TEXTS, runtime_package  # noqa: F401  (fixture)

SIZE = 56  # the session model's image size


def png_bytes(im: Image.Image, **save) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", **save)
    return buf.getvalue()


# ---- the image rules, without a model --------------------------------------------------------------------------
IMAGE_DTYPES = st.sampled_from([np.uint8, np.uint16, np.int8, np.int16, np.int32, np.int64, np.uint64, np.float16,
                                np.float32, np.float64, np.bool_, np.complex64])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hnp.arrays(IMAGE_DTYPES, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)))
def test_any_array_is_an_image_or_a_named_error(arr):
    try:
        out = load_image(arr, 7, name="edited[4]")
    except (ValueError, TypeError) as e:
        assert str(e).startswith("edited[4]: "), e
        return
    assert out.shape == (7, 7, 3) and out.dtype == np.uint8


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBP", b"BM"]),
       st.binary(max_size=256), st.integers(0, 400))
def test_any_bytes_are_an_image_or_a_named_error(magic, tail, cut):
    """Random bytes behind real magic numbers, and real PNGs cut short, reach each decoder's error paths."""
    real = png_bytes(Image.new("RGB", (9, 5), (10, 20, 30)))
    for data in (magic + tail, real[:cut]):
        try:
            out = load_image(data, 7, name="sources[2]")
        except ValueError as e:
            assert str(e).startswith("sources[2]: "), e
            continue
        assert out.shape == (7, 7, 3) and out.dtype == np.uint8


def test_documented_conversions():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    as_rgb = np.repeat(gray[..., None], 3, axis=-1)
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., :3] = (200, 100, 0)
    rgba[0, 0, 3], rgba[0, 1, 3], rgba[0, 2, 3] = 255, 0, 128  # opaque, transparent, half
    over_white = np.asarray(to_rgb(rgba))
    assert tuple(over_white[0, 0]) == (200, 100, 0) and tuple(over_white[0, 1]) == (255, 255, 255)
    assert tuple(over_white[0, 2]) == (227, 177, 127)  # (c * 128 + 255 * 127) / 255
    palette = Image.fromarray(as_rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    sixteen = (gray.astype(np.uint16) * 257)  # 8-bit value v stored as 16 bits
    cases = {
        "grayscale array": (gray, as_rgb),
        "grayscale [H, W, 1]": (gray[..., None], as_rgb),
        "PIL L": (Image.fromarray(gray), as_rgb),
        "palette": (palette, np.asarray(palette.convert("RGB"))),
        "RGBA PIL = RGBA array": (Image.fromarray(rgba), over_white),
        "LA over white": (Image.fromarray(rgba[..., [0, 3]].copy()).convert("LA"),
                          np.asarray(to_rgb(np.stack([rgba[..., 0]] * 3 + [rgba[..., 3]], axis=-1)))),
        "16-bit array": (sixteen, as_rgb),
        "16-bit PNG (I;16)": (png_bytes(Image.fromarray(sixteen)), as_rgb),
        "float in [0, 1]": (gray.astype(np.float32) / 255, as_rgb),
        "float in [0, 255]": (gray.astype(np.float64), as_rgb),
        "bool": (gray > 100, np.repeat(((gray > 100) * 255).astype(np.uint8)[..., None], 3, axis=-1)),
        "int64 in [0, 255]": (gray.astype(np.int64), as_rgb),
        "non-contiguous": (np.ascontiguousarray(as_rgb[:, ::-1])[:, ::-1], as_rgb),
    }
    for name, (given_image, want) in cases.items():
        got = np.asarray(to_rgb(given_image, name=name))
        np.testing.assert_array_equal(got, want, err_msg=name)
    assert load_image(np.full((1, 1, 3), 77, np.uint8), 28).shape == (28, 28, 3)  # 1x1 is resized like any other


def test_pixel_limit_is_checked_from_the_header_and_configurable():
    # 9000 x 9000 = 81 Mpixel: over our default (64 Mpixel), under PIL's own hard limit. A 1-bit PNG of it is
    # ~10 KB; decoding it as RGB would need 243 MB.
    bomb = png_bytes(Image.new("1", (9000, 9000)))
    assert len(bomb) < 100_000 and 9000 * 9000 > DEFAULT_MAX_PIXELS
    with pytest.raises(ValueError, match=r"^edited\[0\]: 9000 x 9000 = 81000000 pixels exceeds the limit of "
                                         r"67108864 \(max_image_pixels"):
        load_image(bomb, 28, name="edited[0]")
    huge = png_bytes(Image.new("1", (20000, 20000)))  # over PIL's own limit too: still our error type and name
    with pytest.raises(ValueError, match=r"^edited\[0\]: .*decompression bomb"):
        load_image(huge, 28, name="edited[0]")
    small = np.zeros((100, 100, 3), np.uint8)
    with pytest.raises(ValueError, match=r"10000 pixels exceeds the limit of 9999"):
        load_image(small, 28, max_pixels=9999)
    assert load_image(small, 28, max_pixels=10_000).shape == (28, 28, 3)


def test_an_rgb_array_already_at_the_size_skips_pil_with_the_same_result_and_limit():
    arr = np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    out = load_image(arr, 28)
    assert out.dtype == np.uint8 and np.array_equal(out, np.asarray(to_rgb(arr))) and out is not arr
    with pytest.raises(ValueError, match=r"^edited\[1\]: 28 x 28 = 784 pixels exceeds the limit of 783"):
        load_image(arr, 28, name="edited[1]", max_pixels=783)


# ---- every backend ---------------------------------------------------------------------------------------------
BACKENDS = ["torch", "compiled", "onnx", "runtime"]


@pytest.fixture(scope="module")
def scorers(checkpoint, aoti_package, onnx_model, runtime_package, small_model):  # noqa: F811
    """One Scorer per backend, on the session's checkpoint and packages."""
    from jrm_engine.export.cli import save_tokenizer
    from jrm_engine.export.manifest import build_manifest, manifest_path, write_json_atomic

    onnx_path = onnx_model[0]
    write_json_atomic(manifest_path(onnx_path), build_manifest(onnx_model[1], SETTINGS, backend="onnx", device="cpu",
                                                               package=onnx_path, checkpoint_hash=None))
    save_tokenizer(small_model.tokenizer, onnx_path)
    made = {"torch": Scorer.load(checkpoint, backend="torch", device="cpu", max_batch=3),
            "compiled": Scorer.load(runtime_package, backend="compiled"),
            "onnx": Scorer.load(onnx_path, backend="onnx"),
            "runtime": Scorer.load(runtime_package, backend="runtime", max_batch=4, max_delay_ms=5, max_queue=64)}
    yield made
    made["runtime"].close()


def bad_files(tmp_path) -> dict:
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(png_bytes(Image.fromarray(images(1, 40, 0)[0]))[:300])
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bytes(Image.new("1", (9000, 9000))))
    return {"missing file": (tmp_path / "gone.png", r"no such file .*gone\.png"),
            "a folder": (tmp_path, r".* is not a file"),
            "non-image file": (text, r"cannot read image \(not a format PIL can identify\)"),
            "truncated PNG": (truncated, r"cannot read image"),
            "decompression bomb": (bomb, r"9000 x 9000 = 81000000 pixels exceeds the limit"),
            "empty bytes": (b"", r"empty bytes"),
            "garbage bytes": (b"\x89PNG\r\n\x1a\n garbage", r"cannot read image"),
            "zero-size array": (np.zeros((0, 5, 3), np.uint8), r"empty image \(5 x 0 pixels\)"),
            "NaN": (np.full((8, 8, 3), np.nan, np.float32), r"the array holds NaN or infinite values"),
            "inf": (np.full((8, 8, 3), np.inf, np.float64), r"the array holds NaN or infinite values"),
            "negative floats": (np.full((8, 8, 3), -0.5, np.float32), r"float values span \[-0.5, -0.5\]"),
            "int out of range": (np.full((8, 8, 3), 256, np.int32), r"int32 values span \[256, 256\]"),
            "rank 1": (np.zeros(8, np.uint8), r"expected an image array of shape .* got \(8,\)"),
            "rank 4": (np.zeros((1, 8, 8, 3), np.uint8), r"expected an image array .* got \(1, 8, 8, 3\)"),
            "2 channels": (np.zeros((8, 8, 2), np.uint8), r"expected an image array .* got \(8, 8, 2\)"),
            "complex dtype": (np.zeros((8, 8, 3), np.complex64), r"array dtype complex64 is not an image dtype"),
            "object dtype": (np.empty((8, 8, 3), object), r"array dtype object"),
            "None": (None, r"unsupported image type NoneType"),
            "a number": (3.5, r"unsupported image type float")}


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_images_name_the_argument_and_index(backend, scorers, tmp_path):
    scorer = scorers[backend]
    good = images(5, SIZE, 1)
    texts = [TEXTS[i % len(TEXTS)] for i in range(5)]
    for case, (bad, message) in bad_files(tmp_path).items():
        # index 4 lies in the second chunk of the torch scorer's max_batch=3: the index is the caller's
        with pytest.raises((ValueError, TypeError), match=rf"^edited\[4\]: {message}"):
            scorer.score(good, texts, good[:4] + [bad])
        with pytest.raises((ValueError, TypeError), match=rf"^sources\[1\]: {message}"):
            scorer.score([good[0], bad], texts[:2], good[:2])
        with pytest.raises((ValueError, TypeError), match=rf"^edited\[1\]: {message}"):
            scorer.score_group(good[0], texts[0], [good[1], bad])
        with pytest.raises((ValueError, TypeError), match=rf"^source: {message}"):
            scorer.score_group(bad, texts[0], good[:2])
    assert scorer.score(good[:2], texts[:2], good[2:4]).shape == (2,), f"{backend} stopped serving"


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_text_and_lists_name_the_argument(backend, scorers):
    scorer = scorers[backend]
    good = images(3, SIZE, 2)
    cases = [
        (lambda: scorer.score(good, ["make it red", "", "bigger"], good), ValueError, r"^instructions\[1\]: empty"),
        (lambda: scorer.score(good, ["red", "red", " \n\t"], good), ValueError, r"^instructions\[2\]: empty"),
        (lambda: scorer.score(good, ["red", None, "red"], good), TypeError, r"^instructions\[1\]: expected a str, got NoneType"),
        (lambda: scorer.score(good, ["red", "red", 7], good), TypeError, r"^instructions\[2\]: expected a str, got int"),
        (lambda: scorer.score(good, ["red", " ".join(["red"] * 10_000), "red"], good), ValueError,
         r"^instructions\[1\]: 10000 tokens exceeds the largest text bucket"),
        (lambda: scorer.score(good, ["red", "red"], good), ValueError,
         r"same length, got 3, 2, 3"),
        (lambda: scorer.score(good[:2], ["red"] * 2, good), ValueError, r"same length, got 2, 2, 3"),
        (lambda: scorer.score([], [], []), ValueError, r"^sources: empty batch"),
        (lambda: scorer.score(good, "red", good), TypeError, r"^instructions: expected a list, got a single str"),
        (lambda: scorer.score(good[0], ["red"] * SIZE, good), TypeError,
         r"^sources: expected a list, got a single ndarray of shape \(56, 56, 3\)"),
        (lambda: scorer.score(good, ["red"] * 3, Image.fromarray(good[0])), TypeError, r"^edited: expected a list"),
        (lambda: scorer.score(good, ["red"] * 3, 5), TypeError, r"^edited: expected a list, got int"),
        (lambda: scorer.score_group(good[0], "", good), ValueError, r"^instruction: empty"),
        (lambda: scorer.score_group(good[0], ["red"], good), TypeError, r"^instruction: expected a str, got list"),
        (lambda: scorer.score_group(good[0], "red", []), ValueError, r"^edited: empty list of candidates"),
        (lambda: scorer.score_group(good[0], "red", good[1]), TypeError, r"^edited: expected a list"),
        (lambda: scorer.score_group(good, "red", good), TypeError, r"^source: unsupported image type list"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
    # a stacked [B, S, S, 3] array is a list of B images
    np.testing.assert_array_equal(scorer.score(np.stack(good), ["red"] * 3, np.stack(good)),
                                  scorer.score(good, ["red"] * 3, good))


@pytest.mark.parametrize("backend", BACKENDS)
def test_converted_inputs_score_as_their_rgb_equivalents(backend, scorers):
    """Grayscale, RGBA, palette, 16-bit, float, 1x1 and off-size inputs score exactly as the RGB uint8 image the
    documented conversion makes of them."""
    scorer = scorers[backend]
    rng = np.random.default_rng(3)
    gray = rng.integers(0, 256, (30, 45), dtype=np.uint8)
    rgba = rng.integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8)
    odd = [gray, rgba, Image.fromarray(images(1, 20, 4)[0]).convert("P"), gray.astype(np.uint16) * 257,
           rng.random((SIZE, SIZE, 3)), np.full((1, 1, 3), 90, np.uint8)]
    plain = [np.asarray(to_rgb(im)) for im in odd]
    sources = images(len(odd), SIZE, 5)
    texts = [TEXTS[i % len(TEXTS)] for i in range(len(odd))]
    np.testing.assert_array_equal(scorer.score(sources, texts, odd), scorer.score(sources, texts, plain))
    np.testing.assert_array_equal(scorer.score_group(gray, texts[0], odd[:4]),
                                  scorer.score_group(plain[0], texts[0], plain[:4]))


def test_runtime_submit_fails_only_the_bad_future(scorers, tmp_path):
    scorer = scorers["runtime"]
    good = images(2, SIZE, 6)
    before = scorer.engine.stats()["completed"]
    futures: list[tuple[str | None, Future]] = []
    for case, (bad, message) in bad_files(tmp_path).items():
        futures.append((None, scorer.submit(good[0], TEXTS[0], good[1])))
        futures.append((rf"^edited: {message}", scorer.submit(good[0], TEXTS[0], bad)))
    futures.append((r"^instruction: expected a str", scorer.submit(good[0], None, good[1])))
    futures.append((r"^instruction: \d+ tokens exceeds", scorer.submit(good[0], "red " * 10_000, good[1])))
    want = scorer.score(good[:1], TEXTS[:1], good[1:])[0]
    for message, future in futures:
        if message is None:
            assert future.result(timeout=60) == pytest.approx(want, abs=1e-5)
        else:
            with pytest.raises((ValueError, TypeError), match=message):
                future.result(timeout=60)
    assert scorer.engine.stats()["completed"] - before == len(bad_files(tmp_path)) + 1  # the good ones, and `want`
