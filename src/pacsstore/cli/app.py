"""The ``pacsstore`` command group and what its commands share: the
store option, logging, and errors reported as one line.

Every command works on one store, ``--store`` or ``$PACSSTORE_PATH`` or
``./pacsstore-data``. Commands that only read open the store read-only, so
that they run beside a ``pacsstore serve`` writing to the same store.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from pacsstore.errors import PacsstoreError, StoreLockedError

logger = logging.getLogger(__name__)

DEFAULT_STORE = "pacsstore-data"
STORE_ENV = "PACSSTORE_PATH"


def _open_archive(store: Path, *, readonly: bool, **options: Any) -> Any:
    from pacsstore import Archive

    if readonly and not store.exists():
        raise click.ClickException(
            f"no store at {store} (set --store or ${STORE_ENV})")
    if store.exists() and not store.is_dir():
        raise click.ClickException(
            f"{store} is not a directory; --store names a store folder")
    try:
        return Archive(store, readonly=readonly, **options)
    except StoreLockedError as error:
        raise click.ClickException(
            f"{store} is being written by another pacsstore process (such "
            f"as `pacsstore serve` or `pacsstore ingest`); get, find, "
            f"stats and verify work beside it") from error
    except OSError as error:
        raise click.ClickException(
            f"cannot open the store {store}: {error.strerror or error}"
        ) from error


@contextlib.contextmanager
def _errors_as_messages() -> Iterator[None]:
    """Report pacsstore errors as one line and exit status 1."""
    try:
        yield
    except PacsstoreError as error:
        raise click.ClickException(str(error)) from error


class WarningsOnce:
    """Show each of pydicom's complaints once, through logging.

    pydicom reports a problem twice: it logs the message (logger
    ``pydicom``) and then warns with the same text. As a filter on the log
    handler this remembers, per thread, the last message pydicom logged;
    as ``warnings.showwarning`` it logs a warning unless it repeats that
    message, so warnings of other origin are still shown, once, in the
    format of the log.
    """

    def __init__(self) -> None:
        self._last = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.partition(".")[0] == "pydicom":
            self._last.message = record.getMessage()
        return True

    def showwarning(self, message: Warning | str, category: type[Warning],
                    filename: str, lineno: int, file: Any = None,
                    line: str | None = None) -> None:
        text = str(message)
        if getattr(self._last, "message", None) == text:
            self._last.message = None
            return
        logging.getLogger("py.warnings").warning(
            "%s: %s", category.__name__, text)


_WARNINGS_ONCE = WarningsOnce()


def _configure_logging(verbose: int, level: str | None) -> None:
    if level is None:
        level = ("WARNING", "INFO", "DEBUG")[min(verbose, 2)]
    logging.basicConfig(
        level=level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WARNINGS_ONCE)
    warnings.showwarning = _WARNINGS_ONCE.showwarning


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--store", type=click.Path(path_type=Path),
              envvar=STORE_ENV, default=DEFAULT_STORE, show_default=True,
              help=f"Store folder (also ${STORE_ENV}).")


@click.option("-v", "--verbose", count=True,
              help="More log output (-v info, -vv debug).")


@click.option("--log-level",
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"],
                                case_sensitive=False),
              help="Log level; overrides -v.")


@click.version_option(package_name="pacsstore")
@click.pass_context
def main(ctx: click.Context, store: Path, verbose: int,
         log_level: str | None) -> None:
    """pacsstore: a DICOM archive."""
    _configure_logging(verbose, log_level)
    ctx.obj = store


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event,
                     received: list[int] | None = None) -> Iterator[None]:
    """Set ``stop`` on SIGINT and SIGTERM while inside the block, and
    append the signal numbers to ``received``."""
    def handler(signum: int, frame: object) -> None:
        logger.info("received signal %d, stopping", signum)
        if received is not None:
            received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, handler)
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
