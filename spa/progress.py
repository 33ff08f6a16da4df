"""Progress bars for the long passes (calibration, pruning with data, correction).

tqdm draws them on stderr, and only when stderr is a terminal: a pipeline's logs stay
clean. A pass shows its bar once it has run for `DELAY` seconds, so quick passes print
nothing, and the bar is cleared when the pass ends."""
from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
DELAY = 1.0  # seconds a pass runs before its bar appears


def progress(items: Iterable[T], label: str, total: int | None = None, delay: float = DELAY) -> Iterator[T]:
    """Yield `items`, with a bar on stderr if it is a terminal."""
    stream = sys.stderr
    quiet = not (hasattr(stream, "isatty") and stream.isatty())
    yield from tqdm(items, desc=label, total=total, file=stream, disable=quiet, delay=delay, leave=False,
                    dynamic_ncols=True, unit="step")
