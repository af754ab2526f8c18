import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_api_picture_lists_the_import_contract_layers_in_order():
    contract = (ROOT / "pyproject.toml").read_text()
    layers = re.findall(r'"([^"]+)"', re.search(r"^layers = \[(.*?)^\]", contract, re.M | re.S).group(1))
    picture = (ROOT / "docs" / "api.md").read_text().split("## The package at a glance", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    drawn = [re.split(r"\s{2,}", line)[0] for line in picture.splitlines() if line and not line.startswith(" ")]
    assert layers[0] == "cli : demo" and layers[-1].startswith("errors : io")
    assert drawn == layers
