#!/usr/bin/env python3
"""Container HEALTHCHECK of chimera-serve: GET /health, the liveness endpoint, on the server's own port.

/health answers 200 while the process and its engine live, loading included, and stops once the engine died
(the server then exits non-zero), so "unhealthy" means a container to restart, never one that is still loading.
Readiness (/ready) is the load balancer's business: Kubernetes probes it, Envoy health-checks it.
"""

import os
import sys
import urllib.request

port = os.environ.get("CHIMERA_PORT", "8000")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=4) as r:
        sys.exit(0 if r.status == 200 else 1)
except OSError:  # refused, timed out, or an HTTP error status
    sys.exit(1)
