#!/usr/bin/env python3
"""Exit 0 when an HTTP URL answers 2xx, else 1: a probe for `docker run --health-cmd`.

Usage: healthcheck [URL]   (default: $UNISON_HEALTH_URL or http://127.0.0.1:8001/healthz)
Standard library only, so it works in any container built from this image.
"""

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    url = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "UNISON_HEALTH_URL", "http://127.0.0.1:8001/healthz"
    )
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return 0 if 200 <= resp.status < 300 else 1
    except (urllib.error.URLError, OSError) as e:
        print(f"healthcheck: {url}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
