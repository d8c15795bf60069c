"""The README's "Celo2" example runs as tests/test_readme.py runs it (placeholder warning ignored, MuPWarning an
error) and learns; docs/CELO2.md exists and the README links it."""

import math
import re
import warnings
from pathlib import Path

import mulo

ROOT = Path(__file__).resolve().parents[2]


def test_readme_celo2_example_runs_and_learns():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Celo2\n", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mulo.PlaceholderMetaWeightsWarning)
        warnings.simplefilter("error", mulo.MuPWarning)
        exec(compile(code, "README.md#Celo2", "exec"), namespace)
    assert namespace["celo2_loss"] < 0.5 * math.log(5), namespace["celo2_loss"]
    assert "docs/CELO2.md" in section and (ROOT / "docs" / "CELO2.md").is_file()
