"""The compressed file: a fixed little-endian header, the ANS words, and a CRC-32 of both.

    magic "DDPZ" · format version · model hash (16 bytes) · image count · channels · height · width ·
    levels · chain steps · chains per batch · grid exponent · window · threads · clip flag ·
    initial words · trimmed words · payload words · payload (32-bit words) · CRC-32
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import astuple, dataclass

import numpy as np

from .errors import CompressionError

MAGIC = b"DDPZ"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<4sB16sIBHHHIHbBHBIII")
_CRC = struct.Struct("<I")


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
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise CompressionError(f"{name} is not a ddpm compressed file (no 'DDPZ' signature)")
    if len(data) < _HEADER.size + _CRC.size:
        raise CompressionError(f"{name} is truncated: {len(data)} bytes, shorter than the header")
    magic, version, *fields = _HEADER.unpack_from(data)
    if version != FORMAT_VERSION:
        raise CompressionError(f"{name} has format version {version}; this ddpm reads version {FORMAT_VERSION}")
    fields[11] = bool(fields[11])
    header = Header(*fields)
    expected = _HEADER.size + 4 * header.payload_words + _CRC.size
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise CompressionError(f"{name} is {what}: {len(data)} bytes, the header describes {expected}")
    body = data[:-_CRC.size]
    if zlib.crc32(body) != _CRC.unpack_from(data, len(body))[0]:
        raise CompressionError(f"{name} is corrupted: its CRC-32 checksum does not match its contents")
    payload = np.frombuffer(body, dtype="<u4", offset=_HEADER.size).astype(np.uint32)
    return header, payload
