"""The package's house rules, checked on its source (no jax needed): sizes, entries, imports, dependency direction.

Run alone: python -m pytest -q tests/layout_test.py
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "gpt_ads")
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 100
MAX_ENTRIES = 10  # modules and packages directly under gpt_ads/ (its __init__.py is the package itself)

# What each part of gpt_ads may import (besides itself). The direction: features <- model <- objective <-
# training <- {scaling, api, downstream} <- cli; data <- training; config_lib (which imports only features and
# model.config) is read by everything above the model.
ALLOWED = {
    "__init__": set(),
    "features": set(),
    "config_lib": {"features", "model"},  # model.config's fields are the model's config keys
    "model": {"features"},
    "objective": {"features", "model"},
    "data": {"features"},
    "training": {"features", "config_lib", "model", "objective", "data"},
    "api": {"features", "config_lib", "model", "objective", "training"},
    "scaling": {"features", "config_lib", "model", "data", "training", "downstream"},  # a sweep trains, then tasks
    "downstream": {"features", "config_lib", "model", "objective", "data", "training", "api"},
    "cli": {"features", "config_lib", "model", "objective", "data", "training", "api", "scaling", "downstream"},
}


def _sources():
  for d, _, files in os.walk(PACKAGE):
    for f in sorted(files):
      if f.endswith(".py"):
        path = os.path.join(d, f)
        yield os.path.relpath(path, ROOT), open(path).read()


def _part(rel: str) -> str:
  """gpt_ads/training/train.py -> training; gpt_ads/api.py -> api."""
  parts = rel.removesuffix(".py").split(os.sep)
  return parts[1]


def _module(rel: str) -> str:
  return rel.removesuffix(".py").removesuffix(os.sep + "__init__").replace(os.sep, ".")


def _gpt_ads_imports(tree):
  """(node, imported module, [names]) for every import of a gpt_ads module."""
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "gpt_ads":
      yield node, node.module, [a.name for a in node.names]
    elif isinstance(node, ast.Import):
      for a in node.names:
        if a.name.split(".")[0] == "gpt_ads":
          yield node, a.name, []


SOURCES = dict(_sources())


def test_no_file_over_the_limit():
  long = {rel: text.count("\n") for rel, text in SOURCES.items() if text.count("\n") > MAX_FILE_LINES}
  assert not long, f"files over {MAX_FILE_LINES} lines: {long}"


def test_no_function_over_the_limit():
  long = {}
  for rel, text in SOURCES.items():
    for node in ast.walk(ast.parse(text)):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        n = node.end_lineno - node.lineno + 1
        if n > MAX_FUNCTION_LINES:
          long[f"{rel}:{node.name}"] = n
  assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_few_entries_at_the_top():
  entries = sorted(e for e in os.listdir(PACKAGE) if e not in ("__init__.py", "__pycache__"))
  assert len(entries) <= MAX_ENTRIES, entries


def test_no_private_name_across_modules():
  bad = []
  for rel, text in SOURCES.items():
    tree = ast.parse(text)
    aliases = {}  # local name -> imported gpt_ads module
    for node, module, names in _gpt_ads_imports(tree):
      bad += [f"{rel}:{node.lineno} imports {module}.{n}" for n in names if n.startswith("_")]
      if isinstance(node, ast.ImportFrom):
        aliases.update({(a.asname or a.name): f"{module}.{a.name}" for a in node.names})
    for node in ast.walk(tree):  # a library's internals too (e.g. jax._src)
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        bad += [f"{rel}:{node.lineno} imports {m}" for m in modules
                if any(part.startswith("_") and not part.startswith("__") for part in m.split("."))]
      if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
          and node.attr.startswith("_") and not node.attr.startswith("__")):
        bad.append(f"{rel}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
  assert not bad, bad


def test_function_local_imports_say_why():
  bad = []
  for rel, text in SOURCES.items():
    lines = text.splitlines()
    tree = ast.parse(text)
    for fn in ast.walk(tree):
      if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
        continue
      for node, module, _ in _gpt_ads_imports(fn):
        here, above = lines[node.lineno - 1], lines[node.lineno - 2].strip()
        if "#" not in here and not above.startswith("#"):
          bad.append(f"{rel}:{node.lineno} imports {module} inside {fn.name}() without a comment saying why")
  assert not bad, bad


@pytest.mark.parametrize("rel", sorted(SOURCES))
def test_dependency_direction(rel):
  part = _part(rel)
  allowed = ALLOWED[part] | {part}
  wrong = []
  for node, module, names in _gpt_ads_imports(ast.parse(SOURCES[rel])):
    targets = [module + "." + n for n in names] if module == "gpt_ads" else [module]
    for target in targets:
      to = target.split(".")[1]
      if to not in allowed:
        wrong.append(f"line {node.lineno}: {_module(rel)} imports {target}")
  assert not wrong, f"{part} may import only {sorted(allowed)}: {wrong}"


def test_nothing_imports_cli():
  bad = [f"{rel}:{node.lineno}" for rel, text in SOURCES.items() if _part(rel) != "cli"
         for node, module, names in _gpt_ads_imports(ast.parse(text))
         if module.startswith("gpt_ads.cli") or (module == "gpt_ads" and "cli" in names)]
  assert not bad, bad


def test_scripts_load_configs_by_path_not_through_sys_path():
  """benchmarks/ and launch/ read configs/ with config_lib.from_file (the checkout need not be importable)."""
  bad = []
  for folder in ("benchmarks", "launch"):
    for d, _, files in os.walk(os.path.join(ROOT, folder)):
      for f in files:
        if f.endswith(".py"):
          text = open(os.path.join(d, f)).read()
          if "sys.path" in text or "from configs" in text or "import configs" in text:
            bad.append(os.path.relpath(os.path.join(d, f), ROOT))
  assert not bad, bad
