"""The README's Python example runs as written, on a tiny trained run in place of the demo's workdir."""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("run", ["chain_run", "trained_run"])  # the default factorization, and the study's
def test_readme_python_example_runs(run, request):
  text = open(os.path.join(ROOT, "README.md")).read()
  blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
  assert blocks, "README.md has no python example"
  workdir = request.getfixturevalue(run)
  scope = {}
  for block in blocks:
    assert "/tmp/gpt_ads_demo" in block
    exec(compile(block.replace("/tmp/gpt_ads_demo", workdir), "README.md", "exec"), scope)  # noqa: S102
  d = scope["config"].model.d_model
  assert scope["hidden"].shape == (1, scope["config"].model.max_len, d) and scope["users"].shape == (1, d)
  assert scope["logp_ads"].shape == (1, 1000) and scope["evidence"]["num_predicted"].shape == (1,)
  assert int(scope["future"]["segment_ids"].sum()) == 3 + 5
  assert scope["clicks"].shape == (1, 8)
