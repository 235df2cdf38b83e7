"""gunicorn settings for dpflows. Every value can be overridden by an environment variable.

Sync workers: a query is CPU-bound (aggregation, noise) and short; the ledger serializes
charges, so more threads per worker would only queue on its lock.
"""

import multiprocessing
import os

bind = os.environ.get("DPFLOWS_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("DPFLOWS_WORKERS", str(min(2 * multiprocessing.cpu_count() + 1, 9))))
worker_class = "sync"
timeout = int(os.environ.get("DPFLOWS_TIMEOUT", "60"))
graceful_timeout = int(os.environ.get("DPFLOWS_GRACEFUL_TIMEOUT", "30"))
keepalive = 5
max_requests = int(os.environ.get("DPFLOWS_MAX_REQUESTS", "0"))
accesslog = None  # dpflows writes its own structured request log (api/logs.py)
errorlog = "-"
loglevel = os.environ.get("DPFLOWS_LOG_LEVEL", "info")
# gunicorn 27 opens a control socket at one fixed default path (~/.gunicorn/gunicorn.ctl) shared by
# every gunicorn of the user: a second instance on the same host takes it over, and a `gunicornc
# shutdown` meant for one instance stops another (seen in the end-to-end tests). Off unless a path
# of this instance's own is given.
if os.environ.get("DPFLOWS_CONTROL_SOCKET"):
    control_socket = os.environ["DPFLOWS_CONTROL_SOCKET"]
else:
    control_socket_disable = True
# Load the app (and each dataset's aggregates) once per worker, after fork.
preload_app = False
