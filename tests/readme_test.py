"""The README's Python example runs as written."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_python_example_runs():
  text = open(os.path.join(ROOT, "README.md")).read()
  blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
  assert blocks, "README.md has no python example"
  scope = {}
  for block in blocks:
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102
  outputs, hidden = scope["outputs"], scope["hidden"]
  assert hidden.shape == (2, 64, 128)
  assert outputs["ad_id"].shape == (2, 64, 128) and outputs["event_type"].shape[:2] == (2, 64)
