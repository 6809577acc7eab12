"""``python -m jepsen_style run …``: see :mod:`jepsen_style.runner`."""

from __future__ import annotations

import signal
import sys
from types import FrameType


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM unwinds like Ctrl-C, so every `finally` kills the nodes and heals the network.
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    from jepsen_style.runner import main as run_main

    signal.signal(signal.SIGTERM, _terminate)
    return run_main()


if __name__ == "__main__":
    sys.exit(main())
