"""Progress bars on long work: tqdm's when it is installed (an optional dependency), else none."""
from __future__ import annotations


def progress_bar(total: int, desc: str | None, enabled: bool = True, initial: int = 0, unit: str = "ex"):
    """A tqdm bar counting `unit`s, or None (not enabled, or tqdm not installed)."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)
