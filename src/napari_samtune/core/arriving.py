"""A download's answer and body as they arrive, each awaited on a thread of its own so that
the one downloading can stop it while no data comes (:func:`answered`, :func:`arriving`)."""

from __future__ import annotations

import http.client
import os
import queue
import socket
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

WAIT_CHECK_SECONDS = 0.25  # how often a download waiting for data calls its progress callback

Answer = TypeVar("Answer")


def answered(
    request: Callable[[], Answer],
    waiting: Callable[[], None],
    discard: Callable[[Answer], None],
) -> Answer:
    """``request()`` (connecting, sending the request, reading the server's answer) run on a
    thread of its own, calling ``waiting`` every :data:`WAIT_CHECK_SECONDS` until it returns:
    a server that took the connection but did not answer held a widget's Cancel (raised by
    ``waiting``) for the whole socket timeout, a minute, and failed the cancelled load as
    "offline". Where ``waiting`` raises (or Ctrl+C comes), the request is left to end on its
    thread (its socket timeout at the latest), and an answer it gets then is given to
    ``discard`` (to close its connection). Its errors are raised here as they were."""
    arrived: queue.Queue = queue.Queue(maxsize=1)
    lock, given_up = threading.Lock(), []

    def run() -> None:
        try:
            answer = request()
        except BaseException as err:  # raised in the downloading thread
            answer = err
        with lock:
            if given_up and not isinstance(answer, BaseException):
                discard(answer)
            elif not given_up:
                arrived.put(answer)

    threading.Thread(target=run, name="samtune-download-request", daemon=True).start()
    try:
        return _awaited(arrived, waiting)
    except BaseException:
        with lock:
            given_up.append(True)
            late = None if arrived.empty() else arrived.get_nowait()
        if late is not None and not isinstance(late, BaseException):
            discard(late)
        raise


def arriving(
    response: http.client.HTTPResponse, chunk_size: int, waiting: Callable[[], None]
) -> Iterator[bytes]:
    """The body of ``response`` as it arrives (up to ``chunk_size`` bytes at a time), read
    on a thread of its own, calling ``waiting`` every :data:`WAIT_CHECK_SECONDS` while
    nothing does: a server that stopped sending held a widget's Cancel (raised by the
    progress callback) and Ctrl+C for the whole socket timeout, a minute, which then failed
    the cancelled load as "offline". The reader's errors (that timeout, a dropped
    connection) are raised here as they were."""
    arrived: queue.Queue = queue.Queue(maxsize=4)

    def read() -> None:
        try:
            # read1: what has arrived, up to a chunk; read() waited for a whole MB, so a slow
            # link showed no progress, and a stop or timeout lost what had arrived of it
            while chunk := response.read1(chunk_size):
                arrived.put(chunk)
            arrived.put(b"")
        except BaseException as err:  # raised in the downloading thread
            arrived.put(err)

    reader = threading.Thread(target=read, name="samtune-download", daemon=True)
    reader.start()
    try:
        while item := _awaited(arrived, waiting):
            yield item
    finally:
        _end_reading(response, reader, arrived)


def _awaited(arrived: queue.Queue, waiting: Callable[[], None]):
    """The next item of ``arrived``, calling ``waiting`` every :data:`WAIT_CHECK_SECONDS`
    until it comes; an exception put there (the other thread's) is raised here."""
    while True:
        try:
            item = arrived.get(timeout=WAIT_CHECK_SECONDS)
        except queue.Empty:
            waiting()
            continue
        if isinstance(item, BaseException):
            raise item
        return item


def _end_reading(
    response: http.client.HTTPResponse, reader: threading.Thread, arrived: queue.Queue
) -> None:
    """Stop a reader that is still waiting for data (a cancel, Ctrl+C, a failed write): the
    connection is shut down, which ends its read, and what it read meanwhile is dropped."""
    if reader.is_alive():
        try:  # a duplicate of the socket's descriptor: shutting it down ends the connection
            with socket.socket(fileno=os.dup(response.fileno())) as connection:
                connection.shutdown(socket.SHUT_RDWR)
        except (OSError, ValueError, AttributeError):  # closed: the read ends on its own
            pass
    while reader.is_alive():
        try:  # a reader blocked on a full queue goes on to its end
            arrived.get(timeout=WAIT_CHECK_SECONDS)
        except queue.Empty:
            pass
    reader.join()
