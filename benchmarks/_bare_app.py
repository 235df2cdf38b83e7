"""Baseline for bench_api: a bare Flask endpoint returning a JSON body of a given size."""

import json
import os

from flask import Flask, Response

app = Flask(__name__)
_BODY = json.dumps({"values": "x" * max(int(os.environ.get("BARE_BODY_BYTES", "1000")) - 14, 0)})


@app.get("/healthz")
def healthz() -> Response:
    return Response('{"status":"ok"}', mimetype="application/json")


@app.post("/bare")
def bare() -> Response:
    return Response(_BODY, mimetype="application/json")
