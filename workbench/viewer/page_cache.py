"""Run pages already drawn, kept while the run's files are unchanged.

A heads page takes 0.7 s to draw on two cores (most of it plotly building its figures), and
nothing on it changes until the run's files do: twenty loads of it (a user's reloads, a foreign
page's `<img>` tags) cost one drawing, not twenty. A page is found by its run's name and the
fingerprint of that run's files (`RunStore.fingerprint`: inode, size and mtime of each), so an
evaluation or a rebuild that rewrites a file is drawn anew.
"""

from __future__ import annotations

import threading
from collections import OrderedDict


class PageCache:
    """The last `size` pages drawn, as (status, html), by run name and fingerprint; thread-safe."""

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._pages: OrderedDict[str, tuple[tuple, str]] = OrderedDict()  # name -> (fingerprint, html)

    def get(self, name: str, fingerprint: tuple) -> str | None:
        with self._lock:
            hit = self._pages.get(name)
            if hit is None or hit[0] != fingerprint:
                return None
            self._pages.move_to_end(name)
            return hit[1]

    def put(self, name: str, fingerprint: tuple, page: str) -> None:
        with self._lock:
            self._pages[name] = (fingerprint, page)
            self._pages.move_to_end(name)
            while len(self._pages) > self.size:
                self._pages.popitem(last=False)
