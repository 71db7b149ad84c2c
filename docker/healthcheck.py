"""The coordinator image's health check: exit 0 when `GET /api/v1/ready` answers 200, else 1.

    python docker/healthcheck.py                    # http(s)://127.0.0.1:$FEDDETOX_REST_PORT/api/v1/ready
    python docker/healthcheck.py http://host:8000/api/v1/ready

HTTPS is used when FEDDETOX_TLS_CERT is set (as the coordinator does); the certificate is not verified,
since the check talks to the container's own loopback. Only the standard library: the image needs no curl.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request

READY_PATH = "/api/v1/ready"


def ready_url(env: dict[str, str]) -> str:
    """The readiness URL of the coordinator that these environment settings describe."""
    scheme = "https" if env.get("FEDDETOX_TLS_CERT") else "http"
    port = env.get("FEDDETOX_REST_PORT") or "8000"
    return f"{scheme}://127.0.0.1:{port}{READY_PATH}"


def probe(url: str, timeout_s: float = 4.0) -> tuple[bool, str]:
    """(ready?, what was seen) for one GET of `url`."""
    context = ssl._create_unverified_context() if url.startswith("https") else None  # noqa: S323 (own loopback)
    try:
        with urllib.request.urlopen(url, timeout=timeout_s, context=context) as response:
            return response.status == 200, f"{response.status} from {url}"
    except urllib.error.HTTPError as exc:
        return False, f"{exc.code} from {url}"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"{url}: {getattr(exc, 'reason', exc)}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    url = argv[0] if argv else ready_url(dict(os.environ))
    ok, seen = probe(url)
    print(("ready: " if ok else "not ready: ") + seen)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
