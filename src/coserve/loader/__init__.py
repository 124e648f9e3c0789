"""Loading expert weights from storage: honest paced reads and zero-copy parsing. Names
are imported on first use: `storage` (profiles, reads) needs no torch."""

from __future__ import annotations

from coserve._lazy import lazy_getattr

_EXPORTS = {
    **{name: "coserve.loader.safetensors_view"
       for name in ("DTYPES", "expected_file_bytes", "parse_safetensors", "read_header")},
    **{name: "coserve.loader.storage"
       for name in ("STORAGE_PROFILES", "ReadMode", "Storage", "StorageProfile", "StorageStats",
                    "measure_raw_bandwidth", "storage_profile")},
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr("coserve.loader", _EXPORTS)
