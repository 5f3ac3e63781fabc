"""The one policy for bad input at the command line: one line on stderr naming what to fix, exit status 2."""

import contextlib
import sys
from typing import NoReturn


def report(tool: str, message: str) -> None:
  """Prints `<tool>: error: <message>` on stderr, whitespace collapsed to one line."""
  print(f"{tool}: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


def fail(tool: str, message: str) -> NoReturn:
  """`report`s the message and exits with status 2."""
  report(tool, message)
  sys.exit(2)


@contextlib.contextmanager
def one_line_errors(tool: str, *kinds: type[BaseException]):
  """Turns an exception of `kinds` raised inside the block into `fail(tool, ...)`."""
  try:
    yield
  except kinds as e:
    fail(tool, str(e))
