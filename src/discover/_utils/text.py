"""Text for terminals and spreadsheets: control characters escaped, formulas defused."""

from __future__ import annotations

from typing import Any

__all__ = ["FORMULA_STARTS", "csv_text", "printable", "spreadsheet_safe"]


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""A spreadsheet cell starting with one of these is read as a formula (OWASP, CSV injection)."""


def spreadsheet_safe(value: Any) -> Any:
    """``value`` for a CSV cell: a text that a spreadsheet would run as a formula gets a
    leading ``'`` (the OWASP rule); numbers, and texts that are numbers (``"-0.5"``), are
    kept as they are.

    Example:
        >>> spreadsheet_safe("=HYPERLINK(1)"), spreadsheet_safe("-0.5"), spreadsheet_safe(-1)
        ("'=HYPERLINK(1)", '-0.5', -1)
    """
    if not isinstance(value, str) or not value.startswith(FORMULA_STARTS):
        return value
    try:
        float(value)
    except ValueError:
        return "'" + value
    return value


def csv_text(rows: list[dict[str, Any]]) -> str:
    """Rows of one shape as CSV text with a header (``None`` becomes an empty cell; texts
    pass through :func:`spreadsheet_safe`).

    Example:
        >>> csv_text([{"unit": 0, "label": "circle"}]).splitlines()
        ['unit,label', '0,circle']
    """
    import csv
    import io

    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=[spreadsheet_safe(k) for k in rows[0]])
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {
                    spreadsheet_safe(k): "" if v is None else spreadsheet_safe(v)
                    for k, v in row.items()
                }
            )
    return buffer.getvalue()


def printable(text: str) -> str:
    """``text`` for a terminal: control characters other than newline and tab (an ANSI
    escape in a concept name, a bell) are shown as escapes instead of acting.

    Example:
        >>> print(printable("red\x1b[31m circle\x07"))
        red\\x1b[31m circle\\x07
    """
    import unicodedata

    return "".join(
        ch
        if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf")
        else ch.encode("unicode_escape").decode("ascii")
        for ch in text
    )
