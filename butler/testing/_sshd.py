"""A real OpenSSH server on 127.0.0.1 for tests of ``ssh://`` repositories: temporary host and client
keys, its own configuration, and the client options that trust exactly that server and key."""

from __future__ import annotations

import contextlib
import getpass
import os
import selectors
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

__all__ = ["SSHD", "SshServer", "remote_butler", "ssh_server"]

SSHD = "/usr/sbin/sshd"


@dataclass(frozen=True)
class SshServer:
    host: str
    port: int
    user: str
    key: str
    """The client's private key (authorized by the server)."""
    known_hosts: str
    """A known_hosts file holding the server's host key."""
    base: str

    def url(self, path: str) -> str:
        """The ``ssh://`` URL of ``path`` on this server."""
        from urllib.parse import quote

        return f"ssh://{self.user}@{self.host}:{self.port}{quote(path)}"

    def options(self, *, key: str | None = None, known_hosts: str | None = None) -> str:
        """``$BUTLER_SSH_OPTIONS`` for this server: its key trusted, no user config or agent involved."""
        return shlex.join(["-F", "none", "-i", key or self.key, "-o", "IdentitiesOnly=yes", "-o",
                           "IdentityAgent=none", "-o", f"UserKnownHostsFile={known_hosts or self.known_hosts}",
                           "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes"])

    def make_key(self, name: str) -> str:
        """A new client key the server does not authorize."""
        return _keygen(os.path.join(self.base, name))


def remote_butler() -> str:
    """``$BUTLER_SSH_REMOTE_BUTLER`` running this interpreter with this checkout (sshd passes no environment)."""
    checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return shlex.join(["env", f"PYTHONPATH={checkout}", "BUTLER_USER=tester", sys.executable, "-m", "butler.cli"])


def _keygen(path: str) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "butler-test", "-f", path], check=True)
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def ssh_server(base: str, *, timeout: float = 30.0) -> Iterator[SshServer]:
    """Run ``sshd -D -e`` on 127.0.0.1 (a free port) with keys made below ``base``, until exit; ready
    once it logs that it listens (read from its stderr as it comes: no polling)."""
    os.makedirs(base, exist_ok=True)
    host_key = _keygen(os.path.join(base, "host_ed25519"))
    client_key = _keygen(os.path.join(base, "client_ed25519"))
    authorized = os.path.join(base, "authorized_keys")
    with open(client_key + ".pub") as src, open(authorized, "w") as dst:
        dst.write(src.read())
    os.chmod(authorized, 0o600)
    port = _free_port()
    known_hosts = os.path.join(base, "known_hosts")
    with open(host_key + ".pub") as src, open(known_hosts, "w") as dst:
        dst.write(f"[127.0.0.1]:{port} {src.read()}")
    config = os.path.join(base, "sshd_config")
    user = getpass.getuser()
    with open(config, "w") as stream:
        stream.write("\n".join([
            "ListenAddress 127.0.0.1", f"Port {port}", f"HostKey {host_key}", f"AuthorizedKeysFile {authorized}",
            f"PidFile {os.path.join(base, 'sshd.pid')}", "UsePAM no", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "PubkeyAuthentication yes", "PermitRootLogin prohibit-password",
            "StrictModes no", f"AllowUsers {user}", "PrintMotd no", "LogLevel VERBOSE", "MaxStartups 64",
            "MaxSessions 64", "",
        ]))
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # its privilege-separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", config], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)  # its group holds the connections' processes too
    assert proc.stdout is not None
    try:
        seen = _wait_listening(proc.stdout, timeout, f"sshd on 127.0.0.1:{port}")
        drain = threading.Thread(target=_copy, args=(proc.stdout, os.path.join(base, "sshd.log"), seen), daemon=True)
        drain.start()  # sshd logs each connection: keep its pipe from filling
        yield SshServer("127.0.0.1", port, user, client_key, known_hosts, base)
    finally:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
        # The drain thread closes sshd's output when the last process holding it has gone.


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _wait_listening(stream: IO[bytes], timeout: float, what: str) -> bytes:
    """What sshd logged up to its "Server listening" line (read as it comes, with a deadline)."""
    selector = selectors.DefaultSelector()
    selector.register(stream, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    seen = b""
    try:
        while b"Server listening" not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise TimeoutError(f"{what} did not start listening within {timeout} s: {seen[-2000:]!r}")
            chunk = os.read(stream.fileno(), 4096)  # raw: nothing left in a buffer the selector cannot see
            if not chunk:
                raise RuntimeError(f"{what} exited before listening: {seen.decode(errors='replace')[-2000:]}")
            seen += chunk
    finally:
        selector.close()
    return seen


def _copy(stream: IO[bytes], path: str, seen: bytes) -> None:
    with stream, open(path, "wb") as log:
        log.write(seen)
        for line in stream:
            log.write(line)
            log.flush()
