"""Reading delimited text (``::``, tab, pipe or comma separated) into an Arrow table.

The happy path is one vectorised pyarrow parse. Whenever that parse or the validation after it
fails, a line-by-line scan re-reads the text: it is the authority on what a malformed row is, so
it names the file, the 1-based line and the text of the first bad row, or skips and counts every
bad row when asked to. Both paths accept exactly the same rows (the same integer pattern, the same
field count, empty lines ignored), so the fast path is an optimisation, never a different answer.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from data_pipeline.ingest.locate import SourceFile
from data_pipeline.records import BadInputError

# Column kinds. "intlike" also accepts integral decimals such as RecBole's "881250949.0".
INT = "int"
INTLIKE = "intlike"
_PATTERNS = {INT: r"-?[0-9]+", INTLIKE: r"-?[0-9]+(\.0*)?"}
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# Stands in for a multi-character separator so pyarrow (single-character delimiters) can parse.
_UNIT_SEPARATOR = "\x1f"


@dataclass(frozen=True)
class Layout:
    sep: str
    encoding: str = "utf-8"              # "latin-1" never fails to decode
    names: tuple[str, ...] | None = None  # None: the first line is a header naming the columns
    kinds: dict[str, str] = field(default_factory=dict)  # column -> INT / INTLIKE; others stay str
    quoted: bool = False                 # '"'-quoted CSV fields (may hold the separator)


@dataclass
class Parsed:
    table: pa.Table   # the columns (str, or int64 for integer kinds) plus int64 "source_row"
    skipped: int      # malformed rows skipped (only with skip_bad_rows)


def decode(source: SourceFile, encoding: str) -> str:
    """The file as text; invalid UTF-8 is a :class:`BadInputError` naming its line."""
    data = source.read_bytes()
    try:
        return data.decode("utf-8-sig" if encoding == "utf-8" else encoding)
    except UnicodeDecodeError as exc:
        line_no = data.count(b"\n", 0, exc.start) + 1
        line = data.split(b"\n")[line_no - 1].decode(encoding, errors="replace")
        problem = f"not valid {encoding} (byte 0x{data[exc.start]:02x})"
        raise BadInputError(source.display, line_no, problem, line) from None


def header_names(source: SourceFile, text: str, layout: Layout) -> tuple[str, ...]:
    """Column names from the first non-empty line of a file with a header."""
    for line in io.StringIO(text):  # lazy: stops at the header, however large the file
        line = line.rstrip("\r\n")
        if line.strip():
            fields = next(csv.reader([line], delimiter=layout.sep)) if layout.quoted else line.split(layout.sep)
            return tuple(f.strip() for f in fields)
    raise BadInputError(source.display, 1, "empty file: expected a header line")


def read_delimited(source: SourceFile, layout: Layout, skip_bad_rows: bool = False, text: str | None = None) -> Parsed:
    """Parse ``source`` per ``layout``; see the module docstring for bad-row handling."""
    text = decode(source, layout.encoding) if text is None else text
    names = layout.names or header_names(source, text, layout)
    missing = [name for name in layout.kinds if name not in names]
    if missing:
        raise BadInputError(source.display, 1, f"missing column(s) {missing}; the header has {list(names)}")
    table = _fast_parse(text, layout, names)
    if table is not None:
        return Parsed(table, 0)
    return _scan(source, text, layout, names, skip_bad_rows)


def _fast_parse(text: str, layout: Layout, names: tuple[str, ...]) -> pa.Table | None:
    """One vectorised parse, or None when anything is off (the scan then decides)."""
    has_header = layout.names is None
    if has_header and not text.split("\n", 1)[0].strip():
        return None  # leading blank lines: let the scan find the header
    sep = layout.sep
    if len(sep) > 1:
        if _UNIT_SEPARATOR in text:
            return None
        text, sep = text.replace(layout.sep, _UNIT_SEPARATOR), _UNIT_SEPARATOR
    try:
        table = pacsv.read_csv(
            io.BytesIO(text.encode("utf-8")),
            read_options=pacsv.ReadOptions(column_names=list(names), skip_rows=int(has_header)),
            parse_options=pacsv.ParseOptions(
                delimiter=sep, quote_char='"' if layout.quoted else False, newlines_in_values=layout.quoted
            ),
            convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names}),
        )
        columns = {}
        for name in names:
            column = table.column(name)
            kind = layout.kinds.get(name)
            if kind is not None:
                matches = pc.match_substring_regex(column, f"^{_PATTERNS[kind]}$")
                if pc.all(matches).as_py() is False:
                    return None
                if kind == INTLIKE:
                    column = pc.replace_substring_regex(column, r"\.0*$", "")
                column = pc.cast(column, pa.int64())
            columns[name] = column
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    columns["source_row"] = pa.array(range(table.num_rows), pa.int64())
    return pa.table(columns)


def _scan(source: SourceFile, text: str, layout: Layout, names: tuple[str, ...], skip_bad_rows: bool) -> Parsed:
    """Row by row: the reference for which rows are malformed."""
    values: dict[str, list] = {name: [] for name in names}
    patterns = {name: re.compile(_PATTERNS[kind]) for name, kind in layout.kinds.items()}
    source_rows: list[int] = []
    skipped = 0
    data_row = 0
    header_pending = layout.names is None
    for line_no, fields, raw in _rows(source, text, layout):
        if header_pending:
            header_pending = False
            continue
        problem = _problem(fields, names, patterns, layout.sep)
        if problem is not None:
            if not skip_bad_rows:
                raise BadInputError(source.display, line_no, problem, raw)
            skipped += 1
        else:
            for name, value in zip(names, fields):
                values[name].append(_to_int(value) if name in patterns else value)
            source_rows.append(data_row)
        data_row += 1
    columns = {
        name: pa.array(column, pa.int64() if name in patterns else pa.string()) for name, column in values.items()
    }
    columns["source_row"] = pa.array(source_rows, pa.int64())
    return Parsed(pa.table(columns), skipped)


def _rows(source: SourceFile, text: str, layout: Layout):
    """(1-based line of the row's start, fields, raw text) for every non-empty row."""
    if not layout.quoted:
        for line_no, line in enumerate(text.split("\n"), start=1):
            line = line.removesuffix("\r")
            if line:
                yield line_no, line.split(layout.sep), line
        return
    lines = text.split("\n")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=layout.sep)
    start = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise BadInputError(source.display, start, f"unreadable CSV: {exc}") from None
        if fields:  # a quoted field may span lines: show all of them
            yield start, fields, "\n".join(lines[start - 1 : reader.line_num]).replace("\r", "")
        start = reader.line_num + 1


def _problem(fields: list[str], names: tuple[str, ...], patterns: dict[str, re.Pattern], sep: str) -> str | None:
    if len(fields) != len(names):
        return f"expected {len(names)} fields separated by {sep!r}, found {len(fields)}"
    for name, value in zip(names, fields):
        pattern = patterns.get(name)
        if pattern is None:
            continue
        if not pattern.fullmatch(value):
            return f"field {name!r} is not an integer: {value!r}"
        if not _INT64_MIN <= _to_int(value) <= _INT64_MAX:
            return f"field {name!r} is out of the int64 range: {value!r}"
    return None


def _to_int(value: str) -> int:
    """An INT or INTLIKE field (already matched) as an exact int: "881250949.0" -> 881250949."""
    return int(value.split(".", 1)[0])
