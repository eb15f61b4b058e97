"""Helpers shared by every stage: the :class:`Registry`, atomic files and folders, the cache
root, option checks, text for terminals and spreadsheets, C-kernel compilation.

Imports nothing of discover but :mod:`discover.errors`. The parts: :mod:`.registry`,
:mod:`.files` (atomic writes, JSON read back), :mod:`.cache`, :mod:`.checks`, :mod:`.text`
and :mod:`.ckernel`.
"""

from __future__ import annotations

from discover._utils.cache import CacheWarning, cache_root, cache_warning
from discover._utils.checks import (
    EXTRAS,
    check_options,
    check_writable,
    dataclass_from_dict,
    import_extra,
    require_int,
    resolve_device,
)
from discover._utils.ckernel import (
    C_FLAGS,
    C_FLAGS_ENV,
    LINK_FLAGS,
    CKernel,
    c_flags,
    load_c_library,
)
from discover._utils.files import (
    Writer,
    atomic_path,
    read_json,
    read_saved_result,
    replace_dir,
    require_file,
    staged_dir,
    write_atomic,
    write_files,
)
from discover._utils.registry import Registry
from discover._utils.text import FORMULA_STARTS, csv_text, printable, spreadsheet_safe

__all__ = [
    "C_FLAGS",
    "C_FLAGS_ENV",
    "LINK_FLAGS",
    "c_flags",
    "CKernel",
    "dataclass_from_dict",
    "load_c_library",
    "CacheWarning",
    "Registry",
    "csv_text",
    "printable",
    "spreadsheet_safe",
    "FORMULA_STARTS",
    "atomic_path",
    "cache_root",
    "cache_warning",
    "check_options",
    "check_writable",
    "EXTRAS",
    "import_extra",
    "require_int",
    "require_file",
    "read_json",
    "read_saved_result",
    "resolve_device",
    "replace_dir",
    "staged_dir",
    "write_atomic",
    "write_files",
    "Writer",
]
