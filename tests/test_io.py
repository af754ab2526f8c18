from cxrclf.io import markdown_table


def test_markdown_table_writes_header_rule_and_rows():
    lines = markdown_table(("", "normal", "covid19"), [("normal", 3, 0), ("covid19", 1, 4)])
    assert lines == ["| | normal | covid19 |", "|---|---|---|", "| normal | 3 | 0 |", "| covid19 | 1 | 4 |"]


def test_markdown_table_aligns_right_where_asked_and_keeps_empty_cells():
    lines = markdown_table(("metric", "value", "note"), [("accuracy", 0.5, ""), ("AUC", None, "n/a")], align="lrl")
    assert lines == ["| metric | value | note |", "|---|---:|---|", "| accuracy | 0.5 |  |", "| AUC | None | n/a |"]
    assert markdown_table(("a", "b"), []) == ["| a | b |", "|---|---|"]


def test_write_new_writes_a_new_file_and_never_overwrites(tmp_path):
    import os

    import pytest

    from cxrclf import io

    target = tmp_path / "a.png"
    io.write_new(target, b"first")
    assert target.read_bytes() == b"first" and list(tmp_path.iterdir()) == [target]  # no temporary sibling left
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(FileExistsError):
        io.write_new(target, b"second")
    assert target.read_bytes() == b"first"
