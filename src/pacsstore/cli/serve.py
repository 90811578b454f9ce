"""``pacsstore serve``: run the DICOM node until SIGINT or SIGTERM.

The node's AE title, address and peers come from ``--config`` (see
:mod:`pacsstore.net.config`); ``--ae-title``, ``--port`` and ``--host``
given on the command line override the file's values.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click
from click.core import ParameterSource

from pacsstore.cli.app import (_errors_as_messages, _open_archive,
                               _stop_on_signals, main)
from pacsstore.errors import PacsstoreError
from pacsstore.wording import counted

if TYPE_CHECKING:
    from pacsstore.net.config import NodeConfig

logger = logging.getLogger(__name__)

# How often serve looks at its stop flag; signals interrupt the wait
# anyway, the timeout only bounds the worst case.
SIGNAL_POLL_SECONDS = 0.5


def _ae_title(ctx: click.Context, param: click.Parameter,
              value: str) -> str:
    """Check --ae-title before anything is opened or bound."""
    from pacsstore.net.node import check_ae_title

    try:
        check_ae_title(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from error
    return value


@main.command()
@click.option("--config", "config_path", default=None,
              type=click.Path(dir_okay=False, path_type=Path),
              help="Node configuration file (TOML): AE title, address, "
                   "peers and their permissions, move destinations.")


@click.option("--ae-title", default="PACSSTORE", show_default=True,
              callback=_ae_title,
              help="1-16 characters, no backslash, not all spaces.")


@click.option("--port", type=click.IntRange(0, 65535), default=11112,
              show_default=True, help="TCP port; 0 picks a free one.")


@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; 0.0.0.0 for every interface.")


@click.option("--on-conflict",
              type=click.Choice(["reject", "replace", "keep-first"]),
              default="reject", show_default=True)


@click.pass_context
def serve(ctx: click.Context, config_path: Path | None, ae_title: str,
          port: int, host: str, on_conflict: str) -> None:
    """Run the DICOM node (C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET)
    until SIGINT or SIGTERM."""
    from pacsstore.net import Node

    store: Path = ctx.obj
    config = _node_config(ctx, config_path)
    stop = threading.Event()
    with _errors_as_messages(), _removed_if_left_empty(store), \
            _open_archive(store, readonly=False,
                          on_conflict=on_conflict) as archive:
        node = Node(archive, ae_title=config.ae_title, port=config.port,
                    host=config.host, peers=config.peers)
        with _stop_on_signals(stop):
            with _bind_errors(config.host, config.port):
                node.start()
            try:
                click.echo(f"pacsstore: listening on {config.host}:"
                           f"{node.port} as {config.ae_title}, store "
                           f"{store}{_peers_note(config)}")
                sys.stdout.flush()
                while not stop.wait(SIGNAL_POLL_SECONDS):
                    pass
            finally:
                node.stop()
    statuses, received = node.counters.snapshot()
    outcomes = ", ".join(f"{status} {count}"
                         for status, count in sorted(statuses.items()))
    click.echo(f"pacsstore: stopped; received "
               f"{counted(sum(statuses.values()), 'instance')} "
               f"({received / 1e6:,.1f} MB)"
               + (f": {outcomes}" if outcomes else ""))


def _node_config(ctx: click.Context,
                 config_path: Path | None) -> NodeConfig:
    """The configuration file's settings (or the defaults), with the
    options given on the command line in their place."""
    from pacsstore.net.config import NodeConfig, NodeConfigError, load_config

    try:
        config = load_config(config_path) if config_path else NodeConfig()
    except NodeConfigError as error:
        raise click.ClickException(str(error)) from error
    given = {name: ctx.params[name] for name in ("ae_title", "port", "host")
             if ctx.get_parameter_source(name)
             is not ParameterSource.DEFAULT}
    return dataclasses.replace(config, **given)


def _peers_note(config: NodeConfig) -> str:
    peers = config.peers
    if not len(peers) and not peers.refuse_unknown:
        return ""
    rule = "others refused" if peers.refuse_unknown else "others admitted"
    return f", {counted(len(peers), 'peer')} ({rule})"


@contextlib.contextmanager
def _removed_if_left_empty(store: Path) -> Iterator[None]:
    """Remove the store again when the block fails, if the block created
    it and it holds no instance: a serve that cannot listen must not
    leave an empty store behind for the next command to trip on."""
    existed = store.exists()
    try:
        yield
    except (click.ClickException, PacsstoreError):
        if not existed and _holds_nothing(store):
            shutil.rmtree(store, ignore_errors=True)
        raise


def _holds_nothing(store: Path) -> bool:
    from pacsstore import Archive

    try:
        with Archive(store, readonly=True) as archive:
            return archive.stats().instances == 0
    except (PacsstoreError, OSError):
        return False


@contextlib.contextmanager
def _bind_errors(host: str, port: int) -> Iterator[None]:
    try:
        yield
    except OSError as error:
        raise click.ClickException(
            f"cannot listen on {host}:{port}: {error.strerror}") from error
