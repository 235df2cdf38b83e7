"""gunicorn settings for dpflows, from dpflows.settings (each a DPFLOWS_* environment variable).

Sync workers: a query is CPU-bound (aggregation, noise) and short; the ledger serializes
charges, so more threads per worker would only queue on its lock.
"""

from dpflows.settings import load_settings

_settings = load_settings()

bind = _settings.bind
workers = _settings.workers
worker_class = "sync"
timeout = _settings.timeout
graceful_timeout = _settings.graceful_timeout
keepalive = 5
max_requests = _settings.max_requests
accesslog = None  # dpflows writes its own structured request log (api/logs.py)
errorlog = "-"
loglevel = _settings.log_level
# gunicorn 27 opens a control socket at one fixed default path (~/.gunicorn/gunicorn.ctl) shared by
# every gunicorn of the user: a second instance on the same host takes it over, and a `gunicornc
# shutdown` meant for one instance stops another (seen in the end-to-end tests). Off unless a path
# of this instance's own is given.
if _settings.control_socket:
    control_socket = _settings.control_socket
else:
    control_socket_disable = True
# Load the app (and each dataset's aggregates) once per worker, after fork.
preload_app = False
