"""mtft.data.sources: every kind of source yields records with their Location; unparseable records come back as
DataError items (for the bad-record policy); unresolvable paths raise a DataError naming the path."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mtft.data.sources import Location, read_records, resolve
from mtft.errors import DataError, UserError

A = {"text": "a"}
B = {"text": "b"}
C = {"text": "c"}


def write_jsonl(path: Path, items: list) -> Path:
    """Records (dicts) and raw lines (str, or bytes written verbatim) to a JSONL file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    chunks = []
    for item in items:
        raw = item if isinstance(item, bytes) else (json.dumps(item) if isinstance(item, dict) else item).encode()
        chunks.append(raw + b"\n")
    path.write_bytes(b"".join(chunks))
    return path


def records_of(spec: str | Path) -> list[dict]:
    return [record for _, record in read_records(str(spec))]


def raised(spec: str | Path) -> DataError:
    with pytest.raises(DataError) as info:
        list(read_records(str(spec)))
    return info.value


def quiet_save(dataset, path: Path) -> None:
    datasets.disable_progress_bars()
    try:
        dataset.save_to_disk(str(path))
    finally:
        datasets.enable_progress_bars()


@pytest.fixture
def no_hub(monkeypatch) -> list:
    """Replace datasets.load_dataset with a recorder that fails the test's expectations if it is ever called."""
    calls = []

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        raise AssertionError("datasets.load_dataset must not be called for a local path")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


# ---- Location and DataError -----------------------------------------------------------------------------------------


def test_location_error_formats_line_and_row_units():
    err = Location("f.jsonl", 3).error("messages[1].role", "is bad", "unknown_role")
    assert isinstance(err, UserError)
    assert err.reason == "unknown_role"
    assert str(err) == "f.jsonl:3: field 'messages[1].role' is bad"
    row = Location("d.parquet", 7, "row").error(None, "is bad")
    assert str(row) == "d.parquet row 7: is bad"
    assert row.reason == "invalid"


# ---- JSONL ----------------------------------------------------------------------------------------------------------


def test_jsonl_locations_are_physical_lines_and_blank_lines_are_skipped(tmp_path):
    path = write_jsonl(tmp_path / "f.jsonl", [A, "", "   ", B, "\t", C])
    items = list(read_records(str(path)))
    assert items == [
        (Location(str(path), 1), A),
        (Location(str(path), 4), B),
        (Location(str(path), 6), C),
    ]
    assert all(where.unit == "line" for where, _ in items)


def test_jsonl_crlf_and_missing_final_newline(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_bytes(b'{"text": "a"}\r\n\r\n{"text": "b"}')
    assert [(w.line, r) for w, r in read_records(str(path))] == [(1, A), (3, B)]


@pytest.mark.parametrize(
    ("raw", "reason", "problem"),
    [
        (b'{"text": ', "malformed_json", "malformed JSON"),
        (b"{not json}", "malformed_json", "malformed JSON"),
        (b"[1, 2]", "not_an_object", "expected a JSON object, got list"),
        (b'"just text"', "not_an_object", "expected a JSON object, got str"),
        (b"42", "not_an_object", "expected a JSON object, got int"),
        (b"null", "not_an_object", "expected a JSON object, got NoneType"),
        (b'{"text": "\xff\xfe"}', "not_utf8", "is not valid UTF-8"),
    ],
)
def test_jsonl_bad_lines_are_yielded_as_errors_and_reading_continues(tmp_path, raw, reason, problem):
    path = write_jsonl(tmp_path / "f.jsonl", [A, "", raw, B])
    items = list(read_records(str(path)))
    assert [where.line for where, _ in items] == [1, 3, 4]
    assert items[0][1] == A and items[2][1] == B  # the reader went on past the bad line
    where, err = items[1]
    assert where == Location(str(path), 3)
    assert isinstance(err, DataError)
    assert err.reason == reason
    assert str(err).startswith(f"{path}:3: ")
    assert problem in str(err)


def test_jsonl_not_utf8_names_the_byte_offset_within_the_line(tmp_path):
    path = write_jsonl(tmp_path / "f.jsonl", [A, b'{"text": "\xff"}'])
    (_, _), (_, err) = read_records(str(path))
    assert err.reason == "not_utf8"
    assert "at byte 10" in str(err)


def test_jsonl_errors_are_yielded_lazily_in_order(tmp_path):
    path = write_jsonl(tmp_path / "f.jsonl", ["{bad", A, "[]"])
    items = read_records(str(path))
    first = next(items)
    assert isinstance(first[1], DataError) and first[0].line == 1
    assert next(items) == (Location(str(path), 2), A)
    third = next(items)
    assert isinstance(third[1], DataError) and third[1].reason == "not_an_object"
    assert next(items, None) is None


@pytest.mark.parametrize("content", [b"", b"\n", b"\n  \n\t\n"])
def test_empty_jsonl_raises_naming_the_file(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    err = raised(path)
    assert str(err).startswith(f"{path}:")
    assert "the file is empty" in str(err)


def test_jsonl_of_only_bad_lines_is_not_empty(tmp_path):
    path = write_jsonl(tmp_path / "f.jsonl", ["{bad"])
    ((where, err),) = list(read_records(str(path)))
    assert isinstance(err, DataError) and err.reason == "malformed_json"


# ---- JSON array files -----------------------------------------------------------------------------------------------


def test_json_array_records_use_the_record_unit(tmp_path):
    path = tmp_path / "f.json"
    path.write_text(json.dumps([A, B, C], indent=2))
    items = list(read_records(str(path)))
    assert items == [
        (Location(str(path), 1, "record"), A),
        (Location(str(path), 2, "record"), B),
        (Location(str(path), 3, "record"), C),
    ]


def test_json_array_non_object_item_is_yielded_as_error_naming_the_record(tmp_path):
    path = tmp_path / "f.json"
    path.write_text(json.dumps([A, "oops", B]))
    items = list(read_records(str(path)))
    assert items[0][1] == A and items[2][1] == B
    where, err = items[1]
    assert where == Location(str(path), 2, "record")
    assert isinstance(err, DataError) and err.reason == "not_an_object"
    assert str(err).startswith(f"{path} record 2: ")


def test_json_data_wrapper(tmp_path):
    path = tmp_path / "f.json"
    path.write_text(json.dumps({"version": 1, "data": [A, B]}))
    assert records_of(path) == [A, B]


def test_malformed_json_file_raises_naming_the_line(tmp_path):
    path = tmp_path / "f.json"
    path.write_text('[\n  {"text": "a"},\n  {"text": \n]\n')
    err = raised(path)
    assert str(err).startswith(f"{path}:4: ")
    assert "malformed JSON" in str(err)


@pytest.mark.parametrize("data", [{"text": "a"}, {"data": "not a list"}, 42, "text"])
def test_json_file_that_is_not_an_array_raises(tmp_path, data):
    path = tmp_path / "f.json"
    path.write_text(json.dumps(data))
    err = raised(path)
    assert str(err).startswith(f"{path}: ")
    assert "expected a JSON array" in str(err)


def test_json_file_not_utf8_raises_naming_the_line(tmp_path):
    path = tmp_path / "f.json"
    path.write_bytes(b'[\n{"text": "a"},\n{"text": "\xff"}\n]')
    err = raised(path)
    assert err.reason == "not_utf8"
    assert str(err).startswith(f"{path}:3: ")


def test_empty_json_array_is_an_empty_file(tmp_path):
    path = tmp_path / "f.json"
    path.write_text("[]")
    assert "the file is empty" in str(raised(path))


# ---- CSV ------------------------------------------------------------------------------------------------------------


def test_csv_rows_carry_their_physical_line(tmp_path):
    path = tmp_path / "f.csv"
    # line 1 header; line 2 a row; lines 3-4 one row with a quoted two-line cell; line 5 blank; line 6 a row
    path.write_text('prompt,response\np0,r0\np1,"two\nlines"\n\np2,r2\n', newline="")
    items = list(read_records(str(path)))
    assert [record for _, record in items] == [
        {"prompt": "p0", "response": "r0"},
        {"prompt": "p1", "response": "two\nlines"},
        {"prompt": "p2", "response": "r2"},
    ]
    assert items[0][0] == Location(str(path), 2)
    assert items[1][0] == Location(str(path), 3)  # a multi-line row is named by its first line
    assert items[2][0] == Location(str(path), 6)  # not row 3, nor line 4: the multi-line cell and the blank line count
    assert all(where.unit == "line" for where, _ in items)


def test_csv_header_only_is_empty(tmp_path):
    path = tmp_path / "f.csv"
    path.write_text("prompt,response\n")
    assert "the file is empty" in str(raised(path))


# ---- Parquet --------------------------------------------------------------------------------------------------------


def test_parquet_rows_use_the_row_unit_across_row_groups(tmp_path):
    path = tmp_path / "f.parquet"
    rows = [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=2)
    items = list(read_records(str(path)))
    assert [record for _, record in items] == rows
    assert [where for where, _ in items] == [Location(str(path), i, "row") for i in range(1, 6)]


def test_empty_parquet_is_empty(tmp_path):
    path = tmp_path / "f.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), path)
    assert "the file is empty" in str(raised(path))


# ---- datasets saved to disk -----------------------------------------------------------------------------------------


def test_dataset_saved_to_disk(tmp_path, no_hub):
    path = tmp_path / "saved"
    quiet_save(datasets.Dataset.from_list([A, B, C]), path)
    items = list(read_records(str(path)))
    assert [record for _, record in items] == [A, B, C]
    assert [where for where, _ in items] == [Location(str(path), i, "row") for i in (1, 2, 3)]
    assert no_hub == []


def test_resolve_a_saved_dataset_gives_the_dataset_not_its_files(tmp_path):
    path = tmp_path / "saved"
    quiet_save(datasets.Dataset.from_list([A, B]), path)
    (source,) = resolve(str(path))
    assert isinstance(source, datasets.Dataset)
    assert len(source) == 2


def test_empty_dataset_is_an_error(tmp_path, monkeypatch):
    # (an empty Dataset cannot round-trip through save_to_disk in this `datasets` version, so it comes from the hub)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "load_dataset", lambda name, **kwargs: datasets.Dataset.from_dict({"text": []}))
    err = raised("org/empty")
    assert str(err) == "org/empty: the dataset is empty: a task needs at least one sample"


# ---- directories and globs ------------------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path) -> Path:
    """root/{a.jsonl, b/c.jsonl, b/d.csv, b/e/f.parquet, z.json, notes.txt, b/README.md}."""
    root = tmp_path / "root"
    write_jsonl(root / "a.jsonl", [{"text": "a"}])
    write_jsonl(root / "b" / "c.jsonl", [{"text": "c"}])
    (root / "b" / "d.csv").write_text("text\nd\n")
    (root / "b" / "e").mkdir()
    pq.write_table(pa.Table.from_pylist([{"text": "f"}]), root / "b" / "e" / "f.parquet")
    (root / "z.json").write_text(json.dumps([{"text": "z"}]))
    (root / "notes.txt").write_text("not data")
    (root / "b" / "README.md").write_text("# not data")
    return root


def test_directory_is_searched_recursively_in_sorted_order_for_data_files_only(tree):
    expected = [tree / "a.jsonl", tree / "b/c.jsonl", tree / "b/d.csv", tree / "b/e/f.parquet", tree / "z.json"]
    assert resolve(str(tree)) == expected
    items = list(read_records(str(tree)))
    assert [r["text"] for _, r in items] == ["a", "c", "d", "f", "z"]
    assert [w.path for w, _ in items] == [str(p) for p in expected]


def test_glob_matches_files_in_sorted_order(tree):
    assert resolve(str(tree / "*.jsonl")) == [tree / "a.jsonl"]
    assert records_of(tree / "b" / "*.*s*") == [{"text": "c"}, {"text": "d"}]  # c.jsonl, d.csv; not README.md


def test_double_star_glob_is_recursive(tree):
    assert resolve(str(tree / "**" / "*.jsonl")) == [tree / "a.jsonl", tree / "b/c.jsonl"]
    assert records_of(tree / "**" / "*.parquet") == [{"text": "f"}]


def test_glob_matching_nothing_names_the_glob(tree, no_hub):
    spec = str(tree / "**" / "*.nothing")
    with pytest.raises(DataError) as info:
        resolve(spec)
    assert str(info.value) == f"{spec}: the glob matches no .jsonl/.json/.parquet/.csv files"
    assert no_hub == []


def test_glob_matching_only_directories_matches_no_files(tree):
    with pytest.raises(DataError, match="the glob matches no .jsonl/.json/.parquet/.csv files"):
        resolve(str(tree / "b*"))


def test_empty_directory_names_the_directory(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "notes.txt").write_text("x")
    with pytest.raises(DataError) as info:
        resolve(str(tmp_path / "empty"))
    assert str(info.value).startswith(f"{tmp_path / 'empty'}: directory holds no")
    assert ".jsonl/.json/.parquet/.csv" in str(info.value)


@pytest.mark.parametrize("name", ["data.txt", "data.tsv", "data.JSONL", "data"])
def test_unsupported_file_type_names_the_file(tmp_path, name, no_hub):
    path = tmp_path / name
    path.write_text('{"text": "a"}\n')
    with pytest.raises(DataError) as info:
        resolve(str(path))
    assert str(info.value).startswith(f"{path}: unsupported file type")
    assert no_hub == []


# ---- missing local paths and hub ids --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec", ["data/train.jsonl", "org/name.json", "./org/name", "~/nope-mtft-test/x", "/abs/org", "a/b/c", "plain"]
)
def test_missing_local_path_is_no_such_file_without_a_hub_attempt(tmp_path, monkeypatch, no_hub, spec):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as info:
        list(read_records(spec))
    assert str(info.value) == f"{spec}: no such file, directory or glob"
    assert no_hub == []


def test_hub_id_loads_the_train_split(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = []

    def load_dataset(name, **kwargs):
        calls.append((name, kwargs))
        return datasets.Dataset.from_list([A, B])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    items = list(read_records("org/name"))
    assert calls == [("org/name", {"split": "train"})]
    assert items == [(Location("org/name", 1, "row"), A), (Location("org/name", 2, "row"), B)]


def test_hub_id_with_a_split(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = []

    def load_dataset(name, **kwargs):
        calls.append((name, kwargs))
        return datasets.Dataset.from_list([C])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    assert records_of("org/name:validation") == [C]
    assert calls == [("org/name", {"split": "validation"})]


def test_failing_hub_load_names_the_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def load_dataset(name, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    with pytest.raises(DataError) as info:
        resolve("org/name")
    message = str(info.value)
    assert message.startswith("org/name: no such local path, and loading it from the hub failed")
    assert "offline" in message


def test_a_local_directory_shaped_like_a_hub_id_wins(tmp_path, monkeypatch, no_hub):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "org" / "name" / "x.jsonl", [A])
    assert records_of("org/name") == [A]
    assert no_hub == []


def test_glob_skips_files_that_are_not_data(tmp_path):
    (tmp_path / "README.md").write_text("# notes\n")
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
    items = list(read_records(str(tmp_path / "*")))
    assert [where.path for where, _ in items] == [str(tmp_path / "a.jsonl")]


def test_saved_dataset_dict_uses_its_train_split(tmp_path):
    import datasets

    splits = {"train": [{"text": "a"}, {"text": "b"}], "test": [{"text": "c"}]}
    datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(tmp_path / "dd")
    assert [record["text"] for _, record in read_records(str(tmp_path / "dd"))] == ["a", "b"]
    datasets.DatasetDict({"test": datasets.Dataset.from_list(splits["test"])}).save_to_disk(tmp_path / "no_train")
    with pytest.raises(DataError, match="without a 'train' split"):
        list(read_records(str(tmp_path / "no_train")))
