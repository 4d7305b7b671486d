"""Lossless, progressively decodable compression with a trained model (Sec. 4.3, Algorithms 3-4)."""

from .codec import CodecOptions, Compressed, Decompressed, compress, decompress, model_hash
from .errors import CompressionError

__all__ = ["CodecOptions", "Compressed", "CompressionError", "Decompressed", "compress", "decompress",
           "model_hash"]
