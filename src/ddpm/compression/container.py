"""The compressed file: a fixed little-endian header, the ANS words, and a CRC-32 of both.

    magic "DDPZ" · format version · model hash (16 bytes) · image count · channels · height · width ·
    levels · chain steps · chains per batch · grid exponent · window · threads · clip flag ·
    initial words · trimmed words · payload words · [version 2: reverse variance · Γ hash (16 bytes)] ·
    payload (32-bit words) · CRC-32

Version 1 (ddpm 0.1) had no variance fields: its files were coded with the model's own variance, and still decode.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import get_args

import numpy as np

from ..config import MAX_T
from ..sampling.analytic import VarianceChoice
from .errors import CompressionError

MAGIC = b"DDPZ"
FORMAT_VERSION = 2
_HEADERS = {1: struct.Struct("<4sB16sIBHHHIHbBHBIII"), 2: struct.Struct("<4sB16sIBHHHIHbBHBIIIB16s")}
_HEADER = _HEADERS[FORMAT_VERSION]
VARIANCES: tuple[str, ...] = get_args(VarianceChoice)  # a chain's reverse variance; the header stores its index
NO_GAMMA = bytes(16)               # the Γ hash of a file coded with the model's own variance
_CRC = struct.Struct("<I")

# What a header may say (issue 13): each field is checked against these before anything is decoded or
# allocated, so that a crafted file cannot loop (batch = 0), spawn threads (threads = 65535) or allocate
# (count = 2³² − 1 images) without bound. The sender's options have the same ranges (``codec``).
MAX_BATCH = 4096
MAX_THREADS = 1024
GRID_LOG2_RANGE = (-8, 4)          # δ_t of 1/256 to 16 standard deviations
WINDOW_RANGE = (1, 255)            # coding windows of ± window standard deviations
MAX_DECODED_BYTES = 1 << 31        # count·C·H·W, the uint8 images the decoder allocates
BITS_PER_IMAGE = 1                 # every file holds at least this many payload bits per image (``codec.compress``)


@dataclass(frozen=True)
class Header:
    """What a decoder must know besides the model (which it checks by ``model_hash``)."""

    model_hash: bytes      # 16 bytes, see ``codec.model_hash``
    count: int             # images
    channels: int
    height: int
    width: int
    levels: int            # pixel levels (Eq. 13's decoder)
    steps: int             # length of the coded chain (T, or fewer when respaced)
    batch: int             # images coded side by side (one chain each)
    grid_log2: int         # δ_t = 2^grid_log2 × the narrowest std that codes x_t
    window: int            # coding windows span ± window standard deviations
    threads: int           # torch threads of the sender (the receiver uses the same)
    clip_denoised: bool
    initial_words: int     # random words the stack started with (seeded, so the receiver can check them)
    trimmed_words: int     # of those, bottom words never touched, left out of the file
    payload_words: int
    variance: int = 0      # index in VARIANCES: 0 the model's Σ, 1 Analytic-DPM's σ*² from a Γ estimate
    gamma_hash: bytes = NO_GAMMA  # 16 bytes identifying that Γ estimate (``codec.gamma_hash``)


_PAYLOAD_FIELD = list(Header.__dataclass_fields__).index("payload_words")  # after signature and version


def pack(header: Header, payload: np.ndarray) -> bytes:
    """The file's bytes."""
    if payload.size != header.payload_words:
        raise ValueError("payload size does not match the header")
    fields = astuple(header)
    body = _HEADER.pack(MAGIC, FORMAT_VERSION, *fields[:11], int(fields[11]), *fields[12:]) + \
        payload.astype("<u4").tobytes()
    return body + _CRC.pack(zlib.crc32(body))


def unpack(data: bytes, name: str = "the file") -> tuple[Header, np.ndarray]:
    """Header and payload of a file's bytes; a CompressionError says what is wrong with a bad one."""
    _check_prefix(data, name)
    layout = _HEADERS[data[len(MAGIC)]]
    if len(data) < layout.size + _CRC.size:
        raise CompressionError(f"{name} is truncated: {len(data)} bytes, shorter than the header")
    magic, version, *fields = layout.unpack_from(data)
    if fields[11] not in (0, 1):
        raise CompressionError(f"{name} has header field clip_denoised={fields[11]}; expected 0 or 1")
    fields[11] = bool(fields[11])
    header = Header(*fields)
    expected = layout.size + 4 * header.payload_words + _CRC.size
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise CompressionError(f"{name} is {what}: {len(data)} bytes, the header describes {expected}")
    body = data[:-_CRC.size]
    if zlib.crc32(body) != _CRC.unpack_from(data, len(body))[0]:
        raise CompressionError(f"{name} is corrupted: its CRC-32 checksum does not match its contents")
    check_header(header, name)
    payload = np.frombuffer(body, dtype="<u4", offset=layout.size).astype(np.uint32)
    return header, payload


def read_file(path: str | Path) -> bytes:
    """A compressed file's bytes, refused on its first bytes and its size before the rest is read.

    A file that is not one (a PNG, a disk image given by mistake) or whose size disagrees with its header is
    refused without being read into memory; ``unpack`` then checks everything else.
    """
    name = str(path)
    with open(path, "rb") as f:
        head = f.read(max(layout.size for layout in _HEADERS.values()))
        _check_prefix(head, name)  # signature and version
        layout = _HEADERS[head[len(MAGIC)]]
        if len(head) >= layout.size:
            payload_words = layout.unpack_from(head)[2 + _PAYLOAD_FIELD]
            expected = layout.size + 4 * payload_words + _CRC.size
            size = os.fstat(f.fileno()).st_size
            if size != expected:
                what = "truncated" if size < expected else "longer than its header says"
                raise CompressionError(f"{name} is {what}: {size} bytes, the header describes {expected}")
        f.seek(0)
        return f.read()


def _check_prefix(data: bytes, name: str) -> None:
    """Refuse bytes that do not start with the signature and a format version this ddpm reads."""
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise CompressionError(f"{name} is not a ddpm compressed file (no 'DDPZ' signature)")
    if len(data) <= len(MAGIC):
        raise CompressionError(f"{name} is truncated: {len(data)} bytes, shorter than the header")
    version = data[len(MAGIC)]
    if version not in _HEADERS:
        raise CompressionError(f"{name} has format version {version}; this ddpm reads versions "
                               f"{', '.join(map(str, _HEADERS))}")


def check_header(h: Header, name: str = "the file") -> None:
    """Every field within its range and consistent with the payload's size, else a CompressionError naming it."""
    ranges = {
        "count": (1, None), "channels": (1, 3), "height": (1, None), "width": (1, None), "levels": (2, 256),
        "steps": (1, MAX_T), "batch": (1, MAX_BATCH), "grid_log2": GRID_LOG2_RANGE, "window": WINDOW_RANGE,
        "threads": (1, MAX_THREADS), "initial_words": (1, None), "variance": (0, len(VARIANCES) - 1),
    }
    for field, (lo, hi) in ranges.items():
        value = getattr(h, field)
        if value < lo or (hi is not None and value > hi):
            expected = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise CompressionError(f"{name} has header field {field}={value}; expected {expected}")
    if (h.variance == 0) != (h.gamma_hash == NO_GAMMA):
        raise CompressionError(f"{name} has header field variance={h.variance} with "
                               f"{'no' if h.gamma_hash == NO_GAMMA else 'a'} Γ hash; a file coded with "
                               "Analytic-DPM's variance (1) names its estimate, one with the model's (0) none")
    if h.channels not in (1, 3):
        raise CompressionError(f"{name} has header field channels={h.channels}; expected 1 (grey) or 3 (RGB)")
    decoded = h.count * h.channels * h.height * h.width
    if decoded > MAX_DECODED_BYTES:
        raise CompressionError(f"{name} has header field count={h.count}: {h.count} images of {h.channels}×"
                               f"{h.height}×{h.width} are {decoded} bytes, more than the {MAX_DECODED_BYTES} a "
                               "decoder allocates")
    if h.count > 32 * h.payload_words // BITS_PER_IMAGE:
        raise CompressionError(f"{name} has header field count={h.count}, but its payload of {h.payload_words} "
                               f"words cannot hold that many images (each costs at least {BITS_PER_IMAGE} bit)")
    if h.trimmed_words > h.initial_words:
        raise CompressionError(f"{name} has header field trimmed_words={h.trimmed_words}, more than its "
                               f"initial_words={h.initial_words}")
