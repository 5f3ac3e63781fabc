"""The one policy for bad input at the command line: one line on stderr naming what to fix, exit status 2."""

import contextlib
import sys
from typing import NoReturn


def fail(tool: str, message: str) -> NoReturn:
  """Prints `<tool>: error: <message>` (whitespace collapsed to one line) and exits with status 2."""
  print(f"{tool}: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
  sys.exit(2)


@contextlib.contextmanager
def one_line_errors(tool: str, *kinds: type[BaseException]):
  """Turns an exception of `kinds` raised inside the block into `fail(tool, ...)`."""
  try:
    yield
  except kinds as e:
    fail(tool, str(e))
