"""Loading expert weights from storage: honest paced reads and zero-copy parsing."""

from coserve.loader.safetensors_view import (
    DTYPES,
    expected_file_bytes,
    parse_safetensors,
    read_header,
)
from coserve.loader.storage import (
    STORAGE_PROFILES,
    ReadMode,
    Storage,
    StorageProfile,
    StorageStats,
    measure_raw_bandwidth,
    storage_profile,
)

__all__ = [
    "DTYPES",
    "STORAGE_PROFILES",
    "ReadMode",
    "Storage",
    "StorageProfile",
    "StorageStats",
    "expected_file_bytes",
    "measure_raw_bandwidth",
    "parse_safetensors",
    "read_header",
    "storage_profile",
]
