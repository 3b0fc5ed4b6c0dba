"""The artifact store: files and Parquet tables under one root; `storage/layout.py` names the paths.

The root is a local path or any fsspec URL (``s3://bucket/prefix``).

Writes are atomic (temp file + rename locally; a single PUT on object stores), so a
reader never sees half a file. Only validated partition keys and fixed names become
paths: nothing from an upload's name ever does.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dagster_deepfake.storage import layout
from dagster_deepfake.storage.schemas import TableSpec, get_table_spec


def s3_storage_options(url: str, endpoint_url: str | None, region: str | None) -> dict[str, Any]:
    """fsspec options for an s3:// URL (endpoint for MinIO/moto, region); {} for anything else."""
    if not url.startswith("s3://"):
        return {}
    client = {k: v for k, v in {"endpoint_url": endpoint_url, "region_name": region}.items() if v}
    return {"client_kwargs": client} if client else {}


def _check_relpath(relpath: str) -> str:
    parts = relpath.replace("\\", "/").split("/")
    if relpath.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"unsafe artifact path: {relpath!r}")
    return "/".join(parts)


class ArtifactStore:
    """Files and Parquet tables under one root (local folder or fsspec URL)."""

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = root.rstrip("/")
        self.storage_options: dict[str, Any] = dict(storage_options or {})
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        self.root = self.root.rstrip("/")
        self.is_local = self.fs.protocol in ("file", "local") or "file" in tuple(self.fs.protocol)

    # -- paths -------------------------------------------------------------------------------
    def path(self, relpath: str) -> str:
        """Absolute path inside the store's filesystem."""
        return posixpath.join(self.root, _check_relpath(relpath))

    def full_url(self, relpath: str) -> str:
        return self.fs.unstrip_protocol(self.path(relpath)) if not self.is_local else self.path(relpath)

    def url_for(self, relpath: str, expires: int = 3600) -> str | None:
        """A presigned GET URL valid for `expires` seconds on an object store; None for a local root.

        Local artifacts are served by the API instead. The URL embeds a signature made from
        the resource's credentials, so it works for a browser that has none of its own.
        """
        if self.is_local or not hasattr(self.fs, "url"):
            return None
        return self.fs.url(self.path(relpath), expires=expires)

    @staticmethod
    def table_rel(spec: TableSpec, video_id: str) -> str:
        return layout.table_rel(spec.name, spec.version, video_id)

    # -- bytes -------------------------------------------------------------------------------
    def exists(self, relpath: str) -> bool:
        return self.fs.exists(self.path(relpath))

    def read_bytes(self, relpath: str) -> bytes:
        return self.fs.cat_file(self.path(relpath))

    def write_bytes(self, relpath: str, data: bytes) -> str:
        target = self.path(relpath)
        if self.is_local:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
            try:
                with open(tmp, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        else:
            self.fs.pipe_file(target, data)
        return target

    def put_file(self, local_path: str, relpath: str) -> str:
        target = self.path(relpath)
        if self.is_local:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
            try:
                self.fs.cp_file(local_path, tmp)
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        else:
            self.fs.put_file(local_path, target)
        return target

    def get_file(self, relpath: str, local_path: str) -> str:
        """Download `relpath` to the local file `local_path` (FileNotFoundError when it is missing)."""
        self.fs.get_file(self.path(relpath), local_path)
        return local_path

    def remove(self, relpath: str, recursive: bool = True) -> None:
        target = self.path(relpath)
        if self.fs.exists(target):
            self.fs.rm(target, recursive=recursive)

    def list(self, relpath: str) -> list[str]:
        target = self.path(relpath)
        self.fs.invalidate_cache(target)  # object-store listings are cached per process; others write too
        if not self.fs.exists(target):
            return []
        return sorted(posixpath.basename(p) for p in self.fs.ls(target, detail=False))

    @contextlib.contextmanager
    def local_path(self, relpath: str) -> Iterator[str]:
        """A local filesystem path for `relpath` (a temporary download when the store is remote)."""
        if self.is_local:
            yield self.path(relpath)
            return
        suffix = posixpath.splitext(relpath)[1]
        with tempfile.TemporaryDirectory(prefix="ddf-") as tmp:
            local = os.path.join(tmp, "artifact" + suffix)
            self.fs.get_file(self.path(relpath), local)
            yield local

    def write_array(self, relpath: str, array: np.ndarray) -> str:
        """One array as .npy (no pickle), atomically."""
        buf = io.BytesIO()
        np.save(buf, array, allow_pickle=False)
        return self.write_bytes(relpath, buf.getvalue())

    def read_array(self, relpath: str) -> np.ndarray:
        return np.load(io.BytesIO(self.read_bytes(relpath)), allow_pickle=False)

    # -- tables ------------------------------------------------------------------------------
    def write_table(self, table: str, video_id: str, frame: pd.DataFrame) -> str:
        """Replace this video's rows of `table` (idempotent: a re-run overwrites, never appends)."""
        spec = get_table_spec(table)
        arrow = spec.to_arrow(frame)
        buf = io.BytesIO()
        pq.write_table(arrow, buf, compression="zstd")
        return self.write_bytes(self.table_rel(spec, video_id), buf.getvalue())

    def read_table(self, table: str, video_id: str) -> pd.DataFrame:
        spec = get_table_spec(table)
        data = self.read_bytes(self.table_rel(spec, video_id))
        return pq.read_table(io.BytesIO(data), schema=spec.schema).to_pandas()

    def has_table(self, table: str, video_id: str) -> bool:
        return self.exists(self.table_rel(get_table_spec(table), video_id))

    def remove_table(self, table: str, video_id: str) -> None:
        """Drop this video's rows of `table` (a stage about to replace its files does this first)."""
        self.remove(self.table_rel(get_table_spec(table), video_id))

    def read_all(self, table: str) -> pd.DataFrame:
        """Every partition's rows of `table` (current schema version) as one frame."""
        spec = get_table_spec(table)
        folder = self.path(layout.table_folder(spec.name, spec.version))
        self.fs.invalidate_cache(folder)
        if not self.fs.exists(folder):
            return spec.schema.empty_table().to_pandas()
        files = sorted(p for p in self.fs.ls(folder, detail=False) if p.endswith(".parquet"))
        tables = [pq.read_table(io.BytesIO(self.fs.cat_file(p)), schema=spec.schema) for p in files]
        return pa.concat_tables(tables).to_pandas() if tables else spec.schema.empty_table().to_pandas()
