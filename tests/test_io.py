from cxrclf.io import markdown_table


def test_markdown_table_writes_header_rule_and_rows():
    lines = markdown_table(("", "normal", "covid19"), [("normal", 3, 0), ("covid19", 1, 4)])
    assert lines == ["| | normal | covid19 |", "|---|---|---|", "| normal | 3 | 0 |", "| covid19 | 1 | 4 |"]


def test_markdown_table_aligns_right_where_asked_and_keeps_empty_cells():
    lines = markdown_table(("metric", "value", "note"), [("accuracy", 0.5, ""), ("AUC", None, "n/a")], align="lrl")
    assert lines == ["| metric | value | note |", "|---|---:|---|", "| accuracy | 0.5 |  |", "| AUC | None | n/a |"]
    assert markdown_table(("a", "b"), []) == ["| a | b |", "|---|---|"]
