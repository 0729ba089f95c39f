"""Where a task's records come from: a JSONL/JSON/Parquet/CSV file, a glob, a directory (searched recursively),
a `datasets` dataset saved to disk, or a hub dataset id (for users with a network).

Every record comes with its Location (file and line, or row for columnar sources), so any later error can
name it. A record that cannot even be parsed is yielded as a DataError, for the caller's bad-record policy.
"""

from __future__ import annotations

import csv
import glob
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mtft.errors import DataError

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


@dataclass(frozen=True)
class Location:
    path: str
    line: int
    unit: str = "line"  # "line" for text files, "row" for columnar sources

    def error(self, field: str | None, problem: str, reason: str = "invalid") -> DataError:
        return DataError(self.path, self.line, field, problem, reason, self.unit)


Item = tuple[Location, "dict | DataError"]


def read_records(spec_path: str, sources: list | None = None) -> Iterator[Item]:
    """All records under `spec_path` (already `resolve`d into `sources`, if given), file by file in sorted order."""
    for source in resolve(spec_path) if sources is None else sources:
        if isinstance(source, Path):
            yield from _read_file(source)
        else:  # a datasets.Dataset
            yield from _read_dataset(source, spec_path)


def resolve(spec_path: str) -> list:
    """The files (or one loaded Dataset) that `spec_path` names."""
    path = Path(spec_path).expanduser()
    saved_markers = ("dataset_info.json", "state.json", "dataset_dict.json")
    if path.is_dir() and any((path / marker).is_file() for marker in saved_markers):
        return [_load_from_disk(path)]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
        if not files:
            raise DataError(spec_path, None, None, f"directory holds no {'/'.join(SUFFIXES)} files")
        return files
    if glob.has_magic(spec_path):
        matches = [Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file()]
        files = sorted(p for p in matches if p.suffix in SUFFIXES)  # like a directory: other files are not data
        if not files:
            raise DataError(spec_path, None, None, f"the glob matches no {'/'.join(SUFFIXES)} files")
        return files
    if path.is_file():
        if path.suffix not in SUFFIXES:
            raise DataError(spec_path, None, None, f"unsupported file type; expected one of {', '.join(SUFFIXES)}")
        return [path]
    return [_load_from_hub(spec_path)]


def _read_file(path: Path) -> Iterator[Item]:
    reader = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet, ".csv": _read_csv}[path.suffix]
    seen = False
    for item in reader(path):
        seen = True
        yield item
    if not seen:
        raise DataError(str(path), None, None, "the file is empty: a task needs at least one sample")


def _read_jsonl(path: Path) -> Iterator[Item]:
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            where = Location(str(path), line_no)
            try:
                text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")  # tolerate a byte-order mark
            except UnicodeDecodeError as err:
                yield where, where.error(None, f"is not valid UTF-8 ({err.reason} at byte {err.start})", "not_utf8")
                continue
            if text.strip():
                yield where, _parse_object(text, where)


def _parse_object(text: str, where: Location) -> dict | DataError:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        return where.error(None, f"malformed JSON: {err.msg} at column {err.colno}", "malformed_json")
    if not isinstance(record, dict):
        return where.error(None, f"expected a JSON object, got {type(record).__name__}", "not_an_object")
    return record


def _read_json(path: Path) -> Iterator[Item]:
    """A JSON array of objects (or one object holding such an array under "data")."""
    text = _decode_whole(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(str(path), err.lineno, None, f"malformed JSON: {err.msg} at column {err.colno}") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(str(path), None, None, "expected a JSON array of records (or JSON Lines in a .jsonl file)")
    for index, record in enumerate(data, start=1):
        where = Location(str(path), index, "record")
        yield where, record if isinstance(record, dict) else where.error(None, "is not a JSON object", "not_an_object")


def _read_csv(path: Path) -> Iterator[Item]:
    reader = csv.DictReader(io.StringIO(_decode_whole(path), newline=""))
    for row in reader:
        # a quoted cell may span lines: name the row by its first line (line_num is the last one read)
        first_line = reader.line_num - sum(v.count("\n") for v in row.values() if isinstance(v, str))
        yield Location(str(path), first_line), {k: v for k, v in row.items() if k is not None}


def _read_parquet(path: Path) -> Iterator[Item]:
    import pyarrow.parquet as pq

    row = 0
    for batch in pq.ParquetFile(path).iter_batches():
        for record in batch.to_pylist():
            row += 1
            yield Location(str(path), row, "row"), record


def _read_dataset(dataset, name: str) -> Iterator[Item]:
    if len(dataset) == 0:
        raise DataError(name, None, None, "the dataset is empty: a task needs at least one sample")
    for row, record in enumerate(dataset, start=1):
        yield Location(name, row, "row"), record


def _decode_whole(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(str(path), line, None, f"is not valid UTF-8 ({err.reason})", "not_utf8") from None


def _load_from_disk(path: Path):
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as err:  # a corrupt or empty save; datasets raises several kinds
        raise DataError(str(path), None, None, f"cannot load this saved dataset: {err!r}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise DataError(str(path), None, None, f"a DatasetDict without a 'train' split (has {list(loaded)})")
        loaded = loaded["train"]
    return loaded


def _load_from_hub(spec_path: str):
    """Not a local path: try it as a hub dataset id (`org/name`, optionally `org/name:split`)."""
    looks_local = spec_path.startswith((".", "/", "~")) or Path(spec_path).suffix in SUFFIXES
    if looks_local or spec_path.count("/") != 1:
        raise DataError(spec_path, None, None, "no such file, directory or glob")
    import datasets

    name, _, split = spec_path.partition(":")
    try:
        return datasets.load_dataset(name, split=split or "train")
    except Exception as err:  # network, auth, or no such dataset: all the same to the user
        raise DataError(
            spec_path, None, None, f"no such local path, and loading it from the hub failed: {err}"
        ) from None
