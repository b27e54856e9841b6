#!/usr/bin/env python3
"""preStop of the gateway pod: drain Envoy, then wait until its requests in flight (long streams) have finished.

Envoy exits at once on SIGTERM, cutting every stream. Kubernetes runs this hook first: it starts Envoy's
graceful drain (HTTP/1 responses say `Connection: close`, HTTP/2 connections get GOAWAY; listeners close after
--drain-time-s) and returns when no downstream request is active, or after the limit given as the argument
(seconds; keep it under terminationGracePeriodSeconds). Only then does the kubelet send SIGTERM.
"""

import json
import os
import sys
import time
import urllib.parse
import urllib.request

ADMIN = os.environ.get("ENVOY_ADMIN", "http://127.0.0.1:9901")
ACTIVE = "http.chimera.downstream_rq_active"  # the API listener's stat_prefix is "chimera"


def active_requests() -> int:
    query = urllib.parse.urlencode({"format": "json", "filter": f"^{ACTIVE.replace('.', '[.]')}$"})
    url = f"{ADMIN}/stats?{query}"
    with urllib.request.urlopen(url, timeout=5) as r:
        return int(sum(s.get("value", 0) for s in json.load(r)["stats"]))


def main() -> int:
    limit_s = float(sys.argv[1]) if len(sys.argv) > 1 else 1800.0
    req = urllib.request.Request(f"{ADMIN}/drain_listeners?graceful", method="POST")
    urllib.request.urlopen(req, timeout=5).close()
    deadline = time.monotonic() + limit_s
    while (n := active_requests()) > 0 and time.monotonic() < deadline:
        time.sleep(1)
    if n:
        print(f"chimera-gateway-drain: {n} request(s) still active after {limit_s:g} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
