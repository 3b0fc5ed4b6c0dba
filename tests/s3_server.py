"""moto's S3 server for the tests that need a real S3 endpoint (DESIGN: S3 is moto's server in tests).

`moto_s3_server()` starts it on 127.0.0.1 and a free port with dummy AWS credentials in the
environment, and restores the environment when it stops.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator

# Not us-east-1: s3fs's bucket creation sends a LocationConstraint (docs/ARCHITECTURE.md §6).
REGION = "eu-west-1"
AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def moto_s3_server() -> Iterator[str]:
    """The endpoint URL of a running moto S3 server, credentials set in os.environ meanwhile."""
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in AWS_TEST_ENV}
    os.environ.update(AWS_TEST_ENV)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
