"""The ``[search]`` extra (pymoo for NSGA-II and the hypervolume, matplotlib for ``pareto.png``), checked
before a search or a report starts any work."""

from __future__ import annotations

import importlib.util

from toolkit.errors import UserError

SEARCH_EXTRA = "search"
SEARCH_MODULES = ("pymoo", "matplotlib")  # what the [search] extra installs, by import name


def require_search_extra(command: str = "search") -> None:
    """A one-line UserError naming the extra when a module of ``[search]`` is not installed (imports nothing)."""
    missing = [m for m in SEARCH_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        what = " and ".join(missing) + (" is" if len(missing) == 1 else " are")
        raise UserError(f"toolkit {command}: {what} not installed; the [{SEARCH_EXTRA}] extra brings "
                        f"{'it' if len(missing) == 1 else 'them'}: pip install 'llm-nas-toolkit[{SEARCH_EXTRA}]'")
