"""Whether the detection stack (mmcv with its compiled ops, mmengine, mmdet) imports, and the one line that says
how to install it when it does not. Imports nothing from that stack itself, so it can run first."""
from __future__ import annotations

import importlib
import sys
from typing import Optional

INSTALL_HINT = "bash scripts/setup_mmdet.sh .venv (or: make setup-detection; builds mmcv once, about 12 minutes)"
_MODULES = ("mmengine", "mmcv.ops", "mmdet")


def missing_stack() -> Optional[str]:
    """None when the stack imports; otherwise one line naming what failed and how to install it."""
    for name in _MODULES:
        try:
            importlib.import_module(name)
        except (ImportError, OSError) as e:  # OSError: mmcv's compiled ops built for another torch
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            return f"the detection stack is not installed ({name}: {reason}); install it with: {INSTALL_HINT}"
    return None


def exit_if_missing() -> None:
    """For the detection commands: print the one-line hint on stderr and exit with status 2."""
    message = missing_stack()
    if message is not None:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
