"""Run localbucket (the S3-compatible folder server tansu stores through) tuned for loopback.

localbucket answers each request with separate header and body writes; with
Nagle's algorithm on, every small object read stalls on a delayed ACK (about 30
reads/s). Turning TCP_NODELAY on gives about 1,300 reads/s on the same machine.
Request logging is lowered to warnings: one line per S3 call is noise.
"""

from __future__ import annotations

import logging
import sys

import localbucket


def main(argv: list[str] | None = None) -> None:
    """Serve DATA_ROOT like the `localbucket` command, with TCP_NODELAY and quiet logs."""
    localbucket.S3Handler.disable_nagle_algorithm = True
    logging.getLogger(localbucket.__name__).setLevel(logging.WARNING)
    logging.getLogger("localbucket").setLevel(logging.WARNING)
    sys.argv = ["localbucket", *(argv if argv is not None else sys.argv[1:])]
    localbucket.main()


if __name__ == "__main__":
    main()
