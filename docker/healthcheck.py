"""Container health check: exit 0 when the local server answers 200 on /readyz, else 1.

Standard library only, so the image needs no curl. Reads the same EFFNET_* variables as the server.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def readyz_url(environ: dict[str, str]) -> str:
    host = environ.get("EFFNET_HOST", "0.0.0.0")
    # A wildcard bind is reachable on loopback; a specific address must be used as it is.
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    port = environ.get("EFFNET_HTTP_PORT", "8000")
    return f"http://{host}:{port}/readyz"


def main() -> int:
    try:
        with urllib.request.urlopen(readyz_url(dict(os.environ)), timeout=3) as response:
            return 0 if response.status == 200 else 1
    except (OSError, urllib.error.URLError):  # 503 (HTTPError), refused, timed out
        return 1


if __name__ == "__main__":
    sys.exit(main())
