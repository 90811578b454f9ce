"""Pixel data: decoding stored frames to arrays."""

from pacsstore.pixels.decode import decode_frame

__all__ = ["decode_frame"]
