"""The ``pacsstore`` command: ingest files, serve the DICOM node, fetch,
find and count what a store holds. One module per command family; each
registers its commands on the group in ``app``."""

from pacsstore.cli import browse, ingest, maintain, serve  # noqa: F401
from pacsstore.cli.app import _configure_logging, main
from pacsstore.cli.ingest import looks_like_dicom

__all__ = ["_configure_logging", "looks_like_dicom", "main"]
