"""Which repository locations are remote, and how their URLs are split (no imports: the Butler
checks every root it opens)."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["REMOTE_SCHEMES", "is_remote_url"]

REMOTE_SCHEMES = ("http://", "https://", "ssh://")


def is_remote_url(root: Any) -> bool:
    """Whether ``root`` names a remote repository (``http(s)://`` or ``ssh://``) rather than a directory."""
    if isinstance(root, os.PathLike):
        return False
    return isinstance(root, str) and root.lower().startswith(REMOTE_SCHEMES)
