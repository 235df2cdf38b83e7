"""Zoning uploads through the deployment (deploy/nginx.conf in front of gunicorn): an admin's
GeoJSON polygons of a few MiB reach dpflows, every other route keeps nginx's 1 MiB limit."""

from __future__ import annotations

import shutil
from pathlib import Path

import requests

from tests.security.conftest import seeded_ledger
from tests.servers import GunicornServer, NginxServer
from tests.test_zoning_sources import WARDS


def test_an_admin_uploads_megabytes_of_polygons_through_nginx(data_root: Path, nginx_binary: str,
                                                               tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(data_root, root)
    keys = seeded_ledger(root, tmp_path / "ledger.db")
    pad = {"type": "Feature", "properties": {"WARD": "pad", "pad": "x" * 3_000_000},
           "geometry": WARDS["features"][2]["geometry"]}
    body = {"name": "wards", "geojson": {**WARDS, "features": [*WARDS["features"], pad]}, "id_field": "WARD"}
    with GunicornServer(root, f"sqlite:///{tmp_path / 'ledger.db'}", workers=1, log_path=tmp_path / "g.log") as g, \
            NginxServer(nginx_binary, f"127.0.0.1:{g.port}", tmp_path / "nginx") as nginx:
        url = nginx.url + "/v1/admin/datasets/small/zonings"
        r = requests.post(url, json=body, headers=keys.h("admin"), timeout=60)
        assert r.status_code == 201, r.text
        assert r.json()["zones"] == 2 and r.json()["empty_polygons"] == ["far", "pad"]
        # a planner passes nginx's limit for this route but is refused by dpflows before its body is read
        r = requests.post(url, json={**body, "name": "w2"}, headers=keys.h("planner"), timeout=60)
        assert r.status_code == 403
        # every other route: 1 MiB, refused by nginx in dpflows' error shape
        r = requests.post(nginx.url + "/v1/flows", data=b"x" * (2 * 1024 * 1024),
                          headers={"Content-Type": "application/json", **keys.h("admin")}, timeout=60)
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
