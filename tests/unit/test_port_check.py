"""The embedded server's port check (issue 17): a port that only has TIME_WAIT sockets left,
as after `make demo` ran a moment ago, is free; a port with a listener is not."""

from __future__ import annotations

import socket
import time

from agent.cli.embedded import port_is_free


def _time_wait_port() -> int:
    """A port whose last connection was closed by the server side first: the accepted
    socket on that port stays in TIME_WAIT after the listener is gone (a server that just
    stopped leaves these behind)."""
    listener = socket.socket()
    # as uvicorn (the Prefect server) does; its accepted sockets inherit it
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = int(listener.getsockname()[1])
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()  # the server closes first: its end goes to TIME_WAIT
    time.sleep(0.05)
    client.close()
    listener.close()
    return port


def test_time_wait_sockets_do_not_make_a_port_busy() -> None:
    port = _time_wait_port()
    with socket.socket() as plain:  # the old check: a bind without SO_REUSEADDR
        try:
            plain.bind(("127.0.0.1", port))
            old_check_free = True
        except OSError:
            old_check_free = False
    assert not old_check_free, "no TIME_WAIT socket was left: the test proves nothing"
    assert port_is_free(port)


def test_a_listening_port_is_busy() -> None:
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert not port_is_free(int(listener.getsockname()[1]))
