"""Progress bars for the trainers (tqdm, off when ``enabled`` is false: the bar then only counts)."""

from __future__ import annotations

from typing import Any


def progress_bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True)
