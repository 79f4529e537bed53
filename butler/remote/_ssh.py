"""Repositories over ssh: ``ssh://[user@]host[:port]/absolute/path`` runs ``butler serve --stdio PATH``
on the host through the system OpenSSH client and speaks the stdio protocol (``_stdio.py``) with it.

Authentication is ssh's own (keys, the agent, ``~/.ssh/config``), never a password prompt: the client
runs with ``BatchMode=yes``. Environment variables adjust the command:

* ``BUTLER_SSH``: the ssh program (default ``ssh``), split as a shell would;
* ``BUTLER_SSH_OPTIONS``: more ssh options, split as a shell would (``-i ~/.ssh/id_work -J bastion``);
  they come first, so they win over this module's defaults (ssh keeps the first value of an option);
* ``BUTLER_SSH_REMOTE_BUTLER``: how the remote shell starts the butler (default ``butler``), as shell
  text: ``/opt/venv/bin/butler`` or ``env PYTHONPATH=/src /opt/venv/bin/python -m butler.cli``.

The remote path is quoted for the remote shell; the user and host are validated (a host starting
with ``-`` would be an ssh option).
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from ..errors import RemoteAuthError, RemoteError, RemoteUnavailableError
from ._stdio import StdioTransport

__all__ = ["SshTarget", "parse_ssh_url", "ssh_command", "ssh_transport"]

_EXAMPLE = "ssh://alice@login.example.org/data/repo (or ssh://alice@login.example.org:2222/data/repo)"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*|\[[0-9A-Fa-f:.%A-Za-z]+\]")


@dataclass(frozen=True, slots=True, kw_only=True)
class SshTarget:
    """Where an ``ssh://`` URL points."""

    user: str | None
    host: str
    port: int | None
    path: str


def parse_ssh_url(url: str) -> SshTarget:
    """The parts of ``ssh://[user@]host[:port]/absolute/path``; any other form is refused with an example."""
    def bad(why: str) -> RemoteError:
        return RemoteError(f"{url!r} is not a repository URL over ssh: {why}; write it as {_EXAMPLE}")

    if not url.lower().startswith("ssh://"):
        raise bad("it does not start with ssh://")
    parts = urlsplit(url)
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise bad("it has a query or fragment (?... or #...)")
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    user = None
    if at:
        if ":" in userinfo:
            raise bad("it holds a password; ssh authenticates with a key or the agent (ssh-add), never one in a URL")
        user = unquote(userinfo)
        if not _NAME.fullmatch(user):
            raise bad(f"the user {user!r} is not a user name")
    host, port_text = hostport, ""
    if hostport.startswith("["):
        end = hostport.find("]")
        host, port_text = hostport[:end + 1], hostport[end + 1:].removeprefix(":") if end > 0 else ""
        if end < 0 or (hostport[end + 1:] and not hostport[end + 1:].startswith(":")):
            raise bad(f"the host {hostport!r} is not a bracketed IPv6 address")
    elif ":" in hostport:
        host, _, port_text = hostport.partition(":")
    if not host or not _HOST.fullmatch(host):
        raise bad(f"the host {host!r} is not a host name or address" if host else "it names no host")
    port = None
    if port_text or hostport.endswith(":"):
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise bad(f"the port {port_text!r} is not a number from 1 to 65535")
        port = int(port_text)
    path = unquote(parts.path)
    if not path.startswith("/") or path.rstrip("/") == "":
        raise bad("the repository's path on the host must be absolute and follow the host (host/data/repo)")
    if "\x00" in path or "\n" in path:
        raise bad("the path holds a NUL or a newline")
    return SshTarget(user=user, host=host.strip("[]"), port=port, path=path.rstrip("/") or "/")


def ssh_command(target: SshTarget, env: Mapping[str, str] | None = None) -> list[str]:
    """The ssh command line that runs the butler server of ``target`` (see the module docstring)."""
    env = os.environ if env is None else env
    program = shlex.split(env.get("BUTLER_SSH") or "ssh")
    options = shlex.split(env.get("BUTLER_SSH_OPTIONS") or "")
    remote_butler = (env.get("BUTLER_SSH_REMOTE_BUTLER") or "butler").strip()
    command = [*program, *options, "-T", "-e", "none", "-o", "BatchMode=yes", "-o", "ConnectTimeout=20",
               "-o", "ServerAliveInterval=30"]
    if target.port is not None:
        command += ["-p", str(target.port)]
    if target.user is not None:
        command += ["-l", target.user]
    return [*command, "--", target.host, f"{remote_butler} serve --stdio {shlex.quote(target.path)}"]


def ssh_transport(url: str, *, env: Mapping[str, str] | None = None, timeout: float = 60.0) -> StdioTransport:
    """A transport to the repository at ``url`` (``ssh://...``), started on its first request."""
    target = parse_ssh_url(url)
    command = ssh_command(target, env)
    shown = f"{target.user + '@' if target.user else ''}{target.host}"

    def diagnose(stderr: str, status: int | None, what: str) -> RemoteError | None:
        return _diagnose(url, shown, stderr, status, what)

    return StdioTransport(command, url, timeout=timeout, diagnose=diagnose)


_AUTH = ("Permission denied", "Too many authentication failures", "no matching host key type",
         "Host key verification failed", "REMOTE HOST IDENTIFICATION HAS CHANGED")
_REACH = ("Connection refused", "Could not resolve hostname", "Connection timed out", "No route to host",
          "Network is unreachable", "Connection closed by", "Connection reset", "Operation timed out")


def _diagnose(url: str, shown: str, stderr: str, status: int | None, what: str) -> RemoteError | None:
    """A specific error for what ssh (exit status 255) or the remote shell (127) said went wrong
    (``what``: the connection's failure as the transport saw it)."""
    said = _last_lines(stderr) + (f"; {what}" if what else "")
    if any(marker in stderr for marker in _AUTH[3:]):
        return RemoteAuthError(f"{url}: ssh does not trust the host key of {shown} ({said}); check it, then "
                               f"accept it once with `ssh {shown}` (or fix ~/.ssh/known_hosts)")
    if any(marker in stderr for marker in _AUTH[:3]):
        return RemoteAuthError(f"{url}: {shown} refused the ssh login ({said}); load a key the host accepts "
                               "into the agent (ssh-add) or name it in $BUTLER_SSH_OPTIONS (-i KEY); passwords "
                               "are not asked for")
    if status == 255 and any(marker in stderr for marker in _REACH):
        return RemoteUnavailableError(f"cannot reach {url}: {said}; check the host name, the port and that "
                                      "its ssh server runs")
    if status == 127 or "command not found" in stderr:
        return RemoteUnavailableError(f"{url}: the host has no `butler` on the PATH of non-interactive shells "
                                      f"({said}); install it there or set $BUTLER_SSH_REMOTE_BUTLER (for "
                                      "example /opt/venv/bin/butler)")
    return None


def _last_lines(text: str, n: int = 3) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " / ".join(lines[-n:]) if lines else "nothing on stderr"
