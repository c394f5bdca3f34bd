"""Writing files so that readers never see half of one."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import IO

# Set to 1 (or ``varirm --trust-checkpoints``) to load checkpoints that need arbitrary unpickling.
TRUST_ENV = "VARIRM_TRUST_CHECKPOINTS"


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a uniquely named temporary file beside ``path``; on success it replaces ``path``
    (``os.replace``), on error it is removed and ``path`` is left as it was. Concurrent writers
    each get their own temporary file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(path: str) -> Iterator[str]:
    """A uniquely named temporary directory beside ``path`` to write into; on success it replaces
    ``path`` (an existing directory there is removed first), on error it is removed and ``path``
    is left as it was. A directory at ``path`` is therefore always complete."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", dir=parent)
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def path_fingerprint(path: str, content: bool = False) -> str:
    """sha256 of a file's bytes (``content=True``), or of the names, sizes and modification times
    of a file or of every file in a directory (cheap, for model checkpoints)."""
    h = hashlib.sha256()
    if content:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(d, f) for d, _, names in os.walk(path) for f in names)
    for file in files:
        st = os.stat(file)
        h.update(f"{os.path.relpath(file, path)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def labeler_fingerprint(spec: str) -> str:
    """Identity of a labeler for cache keys: its files (an RM directory or checkpoint) or the
    source code of a callable, so retraining or editing it invalidates labelled data."""
    if os.path.exists(spec):
        return path_fingerprint(spec)
    import importlib
    import inspect

    module_name, _, attr = spec.replace(":", ".").rpartition(".")
    try:
        return hashlib.sha256(
            inspect.getsource(getattr(importlib.import_module(module_name), attr)).encode()).hexdigest()
    except (ImportError, AttributeError, ValueError, OSError, TypeError):
        return spec  # a Hub id: its revision is not known offline


def source_fingerprint(source: str, split: str) -> str:
    """Content identity of a data source: the bytes of a local file; for a Hub id or a local
    dataset folder, the fingerprint ``datasets`` gives the loaded split (it changes with the
    revision or the files), so an updated dataset is tokenized again."""
    import datasets

    from varirm.errors import DataError
    from varirm.formats import LOCAL_SUFFIXES

    if os.path.isfile(source):
        try:
            return path_fingerprint(source, content=True)
        except OSError as e:
            raise DataError(source, None, None, f"cannot read the file ({e.strerror or e})") from None
    if source.endswith(LOCAL_SUFFIXES):
        raise DataError(source, None, None, "is a directory, not a file" if os.path.isdir(source) else "no such file")
    try:
        return f"datasets:{datasets.load_dataset(source, split=split)._fingerprint}"
    except Exception as e:  # noqa: BLE001 - any loading failure is the user's source, not a bug here
        raise DataError(source, None, None, f"cannot load split {split!r}: {type(e).__name__}: {e}") from None
