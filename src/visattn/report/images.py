"""Images as ``data:`` URIs, small enough for a one-file page.

A PNG up to ``KEEP_BYTES`` is inlined as it is. A larger one (a figure with a noisy panel,
such as the random baseline of the scorecard's maps) is flattened on white, shrunk to at most
``MAX_SIDE`` pixels and re-encoded as JPEG, whose size does not grow with the noise; the
smaller of the two encodings is kept.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image

KEEP_BYTES = 200_000
MAX_SIDE = 2000
JPEG_QUALITY = 85


def data_uri(data: bytes, mime: str) -> str:
    """``data:<mime>;base64,...`` of ``data``."""
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def file_uri(path: Path) -> tuple[str, tuple[int, int]]:
    """The image file at ``path`` as a data URI, re-encoded when large, and its shown size.

    Example:
        >>> uri, (w, h) = file_uri(Path("run/attention.png"))  # doctest: +SKIP
    """
    raw = Path(path).read_bytes()
    with Image.open(io.BytesIO(raw)) as image:
        image.load()
        fmt, size = image.format, image.size
        if fmt == "PNG" and len(raw) <= KEEP_BYTES and max(size) <= MAX_SIDE:
            return data_uri(raw, "image/png"), size
        if fmt not in ("PNG", "JPEG"):
            raise ValueError(f"{path.name} is a {fmt} image; the report inlines PNG and JPEG")
        flat = _on_white(image)
    if max(flat.size) > MAX_SIDE:
        scale = MAX_SIDE / max(flat.size)
        flat = flat.resize((round(flat.width * scale), round(flat.height * scale)), Image.LANCZOS)
    buffer = io.BytesIO()
    flat.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    jpeg = buffer.getvalue()
    if flat.size == size and len(raw) <= len(jpeg):
        return data_uri(raw, f"image/{fmt.lower()}"), size
    return data_uri(jpeg, "image/jpeg"), flat.size


def _on_white(image: Image.Image) -> Image.Image:
    """An RGB copy of ``image``, transparent parts over white."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return image.convert("RGB")
