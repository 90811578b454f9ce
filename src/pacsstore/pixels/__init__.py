"""Pixel data: decoding stored frames to arrays, and transcoding whole
instances for a peer that does not accept their stored syntax."""

from pacsstore.pixels.decode import decode_frame
from pacsstore.pixels.transcode import choose_syntax, transcode

__all__ = ["choose_syntax", "decode_frame", "transcode"]
