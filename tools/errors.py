"""What every command line shares: an expected failure (bad input, or the file system refusing: OSError) is one
line on stderr naming the file and the problem, and exit code 2; anything else is a bug and keeps its traceback."""
from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

EXIT_BAD_INPUT = 2


def one_line(error: BaseException | str) -> str:
    """The message of an error on one line (pandas and tomllib messages can span several); an OSError as
    `<file>: <reason>`."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    text = str(error) if not isinstance(error, KeyError) else str(error.args[0] if error.args else error)
    return " ".join(text.split()) or type(error).__name__


def fail(error: BaseException | str) -> NoReturn:
    """Print `error: <message>` on stderr and exit with code 2."""
    print(f"error: {one_line(error)}", file=sys.stderr)
    raise SystemExit(EXIT_BAD_INPUT)


@contextmanager
def expected_errors(*kinds: type[BaseException]) -> Iterator[None]:
    """Turn the listed exception types into `fail(...)`; any other exception propagates with its traceback."""
    try:
        yield
    except kinds as e:
        fail(e)
