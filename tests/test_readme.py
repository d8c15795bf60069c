"""README examples are run, so they stay true."""

import re
import warnings
from pathlib import Path

import mulo

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    for code in blocks:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", mulo.PlaceholderMetaWeightsWarning)
            namespace: dict = {}
            exec(compile(code, str(README), "exec"), namespace)


def test_readme_shows_the_three_commands_first():
    text = README.read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1)
    assert [line.split()[1] for line in first_block.strip().splitlines()] == ["install", "demo", "test"]
