"""The one cache and downloader: pretrained weights, benchmark sets and zoo models all come
through here (after timm's ``_hub``).

* **Cache**: ``$PERCEPKIT_CACHE`` (default ``~/.cache/percepkit``), one subfolder per kind
  (``models``, ``datasets``); torchvision's ImageNet weights keep torch's own cache
  (``$TORCH_HOME/hub/checkpoints``), which torchvision shares.
* **Checksums**: a download is checked against the SHA-256 its caller knows (a manifest's full
  digest, a checksum list), else against the hex prefix in its file name (``vgg16-397923af.pth``:
  a dash and 8 to 64 lowercase hex digits, :func:`hash_prefix`); a name without one
  (``my-style.safetensors``) carries no hash. Bytes that do not match are never kept.
* **Offline**: ``PERCEPKIT_OFFLINE=1`` refuses every download (:func:`offline`).
* **Atomic**: a download goes to a temporary file beside its destination and is renamed into
  place only once complete and checked (:func:`percepkit.runtime.files.atomic_write`).
* **Errors**: a failed or refused download raises :class:`DownloadError`, whose ``reason`` is a
  clause ("downloads are disabled (PERCEPKIT_OFFLINE=1)", "the download from URL failed (...)");
  :func:`missing` makes the one sentence a user sees: what is missing, where it was looked for,
  why it was not downloaded, and how to provide it.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from ..errors import PercepkitError
from ..runtime.files import atomic_write, cache_root, sha256_file

#: seconds without data before a download gives up (an unreachable host must fail, not hang)
TIMEOUT = 60

#: a SHA-256 prefix at the end of a file's stem, as torchvision and timm name their files
#: (``vgg16-397923af.pth``): a dash and 8 to 64 lowercase hex digits
HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})$")

OFFLINE_REASON = "downloads are disabled (PERCEPKIT_OFFLINE=1)"


class DownloadError(PercepkitError):
    """A download that was refused (offline), failed (network, HTTP) or gave other bytes
    (checksum mismatch; nothing is kept). ``reason`` is a clause for :func:`missing`."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}: {reason}" if url not in reason else reason)
        self.url = url
        self.reason = reason


def offline() -> bool:
    """True when ``PERCEPKIT_OFFLINE`` forbids downloads."""
    return os.environ.get("PERCEPKIT_OFFLINE", "").lower() in ("1", "true", "yes")


def cache_dir(kind: str) -> Path:
    """The cache folder of one kind of download: ``$PERCEPKIT_CACHE/<kind>``."""
    return cache_root(kind)


def hash_prefix(name: str) -> str | None:
    """The SHA-256 prefix a file name carries (``vgg16-397923af.pth`` -> ``397923af``), or None
    when it carries none (``my-style.safetensors``: "style" is a word, not a hash)."""
    match = HASH_IN_NAME.search(name.split(".")[0])
    return match.group(1) if match else None


def expected_hash(dest: Path, sha256: str | None) -> str | None:
    """What a download to ``dest`` is checked against: ``sha256`` (lowercased) when given, else
    the hash prefix in ``dest``'s name, else None (not checked)."""
    return sha256.lower() if sha256 else hash_prefix(dest.name)


def download(url: str, dest: str | Path, sha256: str | None = None, announce: bool = True
             ) -> Path:
    """Download ``url`` (``https://``, ``http://`` or ``file://``) to ``dest`` atomically, checked
    against :func:`expected_hash`; returns ``dest``.

    Raises :class:`DownloadError` when offline, when the transfer fails, or when the bytes do not
    match (the old ``dest``, if any, is left as it was); a failed write of ``dest`` (disk full,
    permission) is a :class:`~percepkit.errors.WriteError`. ``announce``: say on stderr what
    is downloaded where (one line).
    """
    dest = Path(dest)
    if offline():
        raise DownloadError(url, OFFLINE_REASON)
    want = expected_hash(dest, sha256)

    def copy(out: BinaryIO, resp: BinaryIO) -> None:
        for block in iter(lambda: resp.read(1 << 20), b""):
            out.write(block)

    def check(tmp: Path) -> None:
        got = _sha256(tmp)
        if want is not None and not got.startswith(want):
            raise DownloadError(url, f"the download from {url} failed (checksum mismatch: "
                                     f"SHA-256 {got[:12]}…, expected {want[:12]}…; the file was "
                                     f"not kept)")

    if announce:
        print(f"downloading {url} to {dest}", file=sys.stderr)
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
            atomic_write(dest, lambda out: copy(out, resp), verify=check)
    except PercepkitError:
        raise
    except Exception as e:  # no network, DNS, HTTP error, timeout
        raise DownloadError(url, f"the download from {url} failed "
                                 f"({type(e).__name__}: {e})") from None
    return dest


def fetch(url: str, dest: str | Path, sha256: str | None = None, announce: bool = True
          ) -> Path:
    """``dest`` if it is already there and matches :func:`expected_hash` (a cache hit), else
    :func:`download`."""
    dest = Path(dest)
    want = expected_hash(dest, sha256)
    if dest.is_file() and (want is None or sha256_file(dest).startswith(want)):
        return dest
    return download(url, dest, sha256, announce)


def missing(what: str, looked_in: Sequence[str], reason: str, provide: str) -> str:
    """The one sentence for a file that is neither found nor downloaded: ``what`` is not in
    ``looked_in``, ``reason`` (a :class:`DownloadError`'s), and how to ``provide`` it."""
    places = ", ".join(looked_in) or "no folder"
    return f"{what}: not found in {places}, and {reason}; {provide}."


def _sha256(path: Path) -> str:
    """SHA-256 of a fresh temporary file (not remembered: its name is never seen again)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
