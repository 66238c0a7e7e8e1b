"""Delimited files: CSV, TSV and JSON lines, with a column mapping; and the CS224N minBERT files as a
preset of the same reader.

Files are UTF-8 (a byte-order mark is accepted; any other encoding is a clear error, not mojibake),
with LF or CRLF line ends. CSV/TSV need a header row; `quoting = "csv"` (the default) follows the
usual double-quote rules, `"none"` takes every character literally (pandas' `quoting=3`, as seed
001 reads its TSVs). For token tasks a CSV/TSV cell holds whitespace-separated words / tags, a
JSON line a list.
"""

from __future__ import annotations

import csv
import io
import json
import stat
from collections import Counter
from pathlib import Path

from mtlbench.tasks.errors import UserError, nearest
from mtlbench.tasks.reading import RawSplit

FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".txt": "tsv"}
QUOTING = ("csv", "none")


# The most a file a user gives may hold: more is refused before it is read (a file that never
# ends, /dev/zero, would otherwise fill the memory).
MAX_FILE_BYTES = 2 << 30


def read_user_file(path: Path, limit: int | None = None) -> bytes:
    """The bytes of a file a user named, or one line saying why not: it must be a regular file (a
    FIFO would block, a device never end) of at most `limit` bytes (default MAX_FILE_BYTES), and
    readable. Every read of a user's file goes through here."""
    limit = MAX_FILE_BYTES if limit is None else limit
    try:
        info = path.stat()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except OSError as error:
        raise UserError(f"{path}: cannot read ({error.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise UserError(f"{path}: is a folder, expected a file")
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{path}: not a regular file (a FIFO, a device or a socket); give a file")
    if info.st_size > limit:
        raise UserError(f"{path}: {info.st_size:,} bytes, more than the {limit:,} a file may hold here")
    chunks, size = [], 0
    try:
        with open(path, "rb") as handle:  # in pieces: read(n) sets n bytes aside before it reads one
            while chunk := handle.read(min(1 << 24, limit + 1 - size, max(info.st_size - size, 0) + 1)):
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:  # it grew after the stat
                    raise UserError(f"{path}: more than the {limit:,} bytes a file may hold here")
    except OSError as error:
        raise UserError(f"{path}: cannot read ({error.strerror})") from None
    return b"".join(chunks)


def decode(path: Path) -> str:
    data = read_user_file(Path(path))
    if b"\x00" in data:  # text never holds NUL; a binary file or a broken export does
        line = data[:data.index(b"\x00")].count(b"\n") + 1
        raise UserError(f"{path}:{line}: a NUL byte: not a text file (binary data or a broken export)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 (byte 0x{data[error.start]:02x}); re-save the file as UTF-8") \
            from None


def _columns(spec, options: dict) -> dict[str, str]:
    """mtlbench field -> column name, the identity by default (token tasks: tokens / tags)."""
    fields = ("id",) + spec.kind.info.fields
    return {name: options.get("columns", {}).get(name, name) for name in fields}


def _rows_delimited(path: Path, text: str, delimiter: str, quoting: str):
    """(line number, {column: value}) per data row, and the header. A malformed row is blamed on the
    line where it starts: an unclosed quote runs on to a later line or the end of the file."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter,
                        quoting=csv.QUOTE_NONE if quoting != "csv" else csv.QUOTE_MINIMAL, strict=quoting == "csv")
    ended = 0  # the last line of the last row read
    try:
        header = next(reader, None)
        if header is None:
            raise UserError(f"{path}: empty file, expected a header row")
        header = [h.strip() for h in header]
        rows, ended = [], reader.line_num
        for fields in reader:
            if any(f.strip() for f in fields):
                rows.append((ended + 1, fields))
            ended = reader.line_num
    except csv.Error as error:
        start = ended + 1
        spans = f"{start}" if reader.line_num <= start else f"{start} (the row runs on to line {reader.line_num})"
        lines = text.split("\n")
        hint = " - a quote opened here is never closed" if start <= len(lines) and '"' in lines[start - 1] else ""
        raise UserError(f"{path}:{spans}: {error}{hint}") from None
    return header, rows


def _field_count_problem(fields: list[str], header: list[str]) -> str | None:
    """Why a row's fields do not line up with the header, or None. Empty fields after the last
    column (a trailing delimiter) carry nothing and are allowed."""
    if len(fields) < len(header):
        return "too few fields"
    if any(f.strip() for f in fields[len(header):]):
        return "too many fields"
    return None


def read_file(path: Path, spec, options: dict, labelled: bool, quoting: str = "csv",
              unquote=None) -> tuple[list[tuple[str, dict]], Counter]:
    """Raw examples of one file: (\"path:line\", fields under mtlbench's names)."""
    fmt = options.get("format") or FORMATS.get(path.suffix.lower())
    if fmt not in ("csv", "tsv", "jsonl"):
        raise UserError(f"{path}: cannot tell the format from the extension; set format = \"csv\", \"tsv\" or \"jsonl\"")
    columns = _columns(spec, options)
    needed = [f for f in spec.kind.info.fields if labelled or f not in ("label", "tags")]
    text = decode(path)
    examples, skipped = [], Counter()
    if fmt == "jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise UserError(f"{path}:{number}: expected a JSON object per line")
            for name in needed:
                if columns[name] not in record:
                    raise UserError(f"{path}:{number}: missing key '{columns[name]}' (columns.{name})"
                                    f"{nearest(columns[name], record)}")
            examples.append((f"{path}:{number}", {n: record.get(c) for n, c in columns.items() if c in record}))
        return examples, skipped
    header, rows = _rows_delimited(path, text, "\t" if fmt == "tsv" else ",", quoting)
    if unquote is not None:
        header = [unquote(h) for h in header]
    for name in needed:
        if columns[name] not in header:
            raise UserError(f"{path}: missing column '{columns[name]}' (columns.{name}){nearest(columns[name], header)}; "
                            f"header: {header}")
    position = {name: header.index(c) for name, c in columns.items() if c in header}
    for line, fields in rows:
        if problem := _field_count_problem(fields, header):
            if options.get("on_bad_row") == "skip":
                skipped[problem] += 1
                continue
            hint = (" (a delimiter inside a text: quote the field, or write the file as TSV or JSON lines)"
                    if problem == "too many fields" else "")
            raise UserError(f"{path}:{line}: {len(fields)} fields, the header has {len(header)}{hint}")
        values = {name: fields[i] for name, i in position.items()}
        if unquote is not None:
            values = {name: unquote(v) for name, v in values.items()}
        examples.append((f"{path}:{line}", values))
    return examples, skipped


def read(spec, options: dict, context):
    quoting = options.get("quoting", "csv")
    if quoting not in QUOTING:
        raise UserError(f"{spec.origin}.sources.files.quoting: '{quoting}'; choose from {', '.join(QUOTING)}")
    if options.get("on_bad_row", "error") not in ("error", "skip"):
        raise UserError(f"{spec.origin}.sources.files.on_bad_row: 'error' or 'skip'")
    raw = {}
    for split in ("train", "dev", "test"):
        if split not in options:
            if split != "test":
                raise UserError(f"{spec.origin}.sources.files: missing key '{split}' (the {split} file)")
            continue
        path = context.path(options[split], options)
        examples, skipped = read_file(path, spec, options, labelled=True, quoting=quoting)
        raw[split] = RawSplit(examples, skipped)
    return raw, None


# --- the CS224N minBERT files ---------------------------------------------------------------------

def unquote_cs224n(field: str) -> str:
    """The published files wrap some fields in double or tripled double quotes."""
    field = field.strip()
    for quote in ('"""', '"'):
        if len(field) >= 2 * len(quote) and field.startswith(quote) and field.endswith(quote):
            return field[len(quote):-len(quote)].strip()
    return field


CS224N_SPLITS = {"train": "train", "dev": "dev", "test": "test-student"}


def read_cs224n(spec, options: dict, context):
    """Tab-separated, a header whose first column is an unnamed index, inconsistent quoting (read
    literally, then unquoted), and a few unparsable labels that are skipped and counted. The test
    file ('test-student') has no labels: its rows are for predictions only."""
    if context.data_dir is None:
        raise UserError("the cs224n source needs --data-dir DIR holding the CS224N csv files")
    pattern = options["file"]
    preset = {**options, "format": "tsv", "on_bad_row": "skip"}  # skip short rows too
    raw = {}
    for split, file_split in CS224N_SPLITS.items():
        path = context.data_dir / pattern.format(split=file_split)
        if not path.exists():
            if split == "test":
                continue  # the unlabelled test file is optional
            raise UserError(f"{path}: file not found (cs224n source needs {pattern.format(split=file_split)})")
        examples, skipped = read_file(path, spec, preset, labelled=split != "test", quoting="none",
                                      unquote=unquote_cs224n)
        raw[split] = RawSplit(examples, skipped, labelled=split != "test", skip_bad=True)
    return raw, None
