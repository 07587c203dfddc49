"""Reading an image file as the RGB picture a person would see.

Every package decodes through ``load_rgb`` so that EXIF orientation, transparency, palettes,
CMYK and 16-bit data are handled once, the same way, everywhere.

A truncated or unreadable file is an error (``UnreadableImageError``, naming the file), never a
silently grey-padded picture: this module does not set ``ImageFile.LOAD_TRUNCATED_IMAGES``, and
refuses to decode while someone else has set it.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

__all__ = ["IMAGE_EXTENSIONS", "UnreadableImageError", "load_rgb", "to_rgb"]

# File suffixes (lower case, with the dot, as ``Path.suffix.lower()`` gives them).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

# Transparent pixels are composited on this colour, like a browser on a white page.
BACKGROUND = (255, 255, 255)


class UnreadableImageError(OSError):
    """An image file could not be decoded (missing, not an image, truncated, corrupt)."""


def load_rgb(path: str | os.PathLike, *, draft_size: int | None = None) -> Image.Image:
    """Decode ``path`` fully and return an RGB image with EXIF orientation applied.

    ``draft_size`` lets the JPEG decoder scale down by 1/2, 1/4 or 1/8 in the DCT domain while
    keeping both sides at least ``draft_size`` pixels: much faster when the picture is only
    going to be resized down to that size anyway. Other formats ignore it.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True: truncated files would be padded silently; "
            "herostack needs it False"
        )
    path = Path(path)
    try:
        with Image.open(path) as im:
            if draft_size is not None and im.format == "JPEG":
                im.draft(None, (int(draft_size), int(draft_size)))
            im.load()  # decode now, inside the try: truncation surfaces here
            im = _exif_transpose(im, path)
            return to_rgb(im)
    except UnreadableImageError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, EOFError) as exc:
        raise UnreadableImageError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc


def _exif_transpose(im: Image.Image, path: Path) -> Image.Image:
    try:
        out = ImageOps.exif_transpose(im)
    except Exception as exc:  # a corrupt EXIF block must not lose an otherwise good picture
        warnings.warn(f"{path}: EXIF orientation ignored ({type(exc).__name__}: {exc})", stacklevel=3)
        return im
    return im if out is None else out


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, compositing transparency on white."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P" or mode == "PA":
        # A palette with a transparent index (GIF, PNG) must go through RGBA or the
        # transparent colour shows as whatever the palette holds there (often black).
        has_alpha = mode == "PA" or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
        mode = im.mode
        if mode == "RGB":
            return im
    if mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = im.convert("RGBA")
        page = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(page, rgba).convert("RGB")
    if mode == "CMYK":
        return _cmyk_to_rgb(im)
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        return _high_depth_to_rgb(im)
    if mode == "1":
        return im.convert("L").convert("RGB")
    return im.convert("RGB")  # L, YCbCr, HSV, ...


def _cmyk_to_rgb(im: Image.Image) -> Image.Image:
    """Use the embedded ICC profile when there is one (print CMYK differs a lot from naive)."""
    icc = im.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception as exc:  # a broken profile: the naive conversion still gives a usable picture
            warnings.warn(f"CMYK ICC profile ignored ({type(exc).__name__}: {exc})", stacklevel=3)
    return im.convert("RGB")


def _high_depth_to_rgb(im: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float grayscale to 8 bits by scaling, not clipping.

    PIL's own conversion clips at 255, which turns most 16-bit pictures white. The range is
    read from the data: [0, 1] floats, 8-bit values, 16-bit values, else min-max.
    """
    a = np.asarray(im, dtype=np.float64)
    finite = a[np.isfinite(a)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if im.mode.startswith("I;16"):
        a = a / 257.0
    elif im.mode == "F" and lo >= 0.0 and hi <= 1.0:
        a = a * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        pass
    elif lo >= 0.0 and hi <= 65535.0:
        a = a / 257.0
    else:
        a = (a - lo) * (255.0 / max(hi - lo, 1e-12))
    a = np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0)
    g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(g[..., None], 3, axis=2), "RGB")
