"""Safe writes for code that may use only the data contracts (the trainer): see `pipeline.core.files`."""

from pipeline.core.files import (
    DiskFull,
    append_line,
    atomic_dir,
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    is_disk_full,
    read_jsonl,
    sweep_beside,
)

__all__ = ["DiskFull", "append_line", "atomic_dir", "atomic_write", "atomic_write_bytes", "atomic_write_text",
           "is_disk_full", "read_jsonl", "sweep_beside"]
