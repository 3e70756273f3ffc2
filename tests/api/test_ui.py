"""The dashboard's files as the API serves them and as the wheel ships them (api/ui).

The browser tests (a real Chromium against a real API and worker) are tests/e2e/test_dashboard.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.ui import STATIC_DIR
from store.settings import Settings
from tests.support.packaging import build_wheel

IMPORT = re.compile(r"""^\s*import\s.*?from\s+["'](\.{1,2}/[^"']+)["'];""", re.MULTILINE | re.DOTALL)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    # no `with`: the lifespan (the schema check) does not run; these routes never reach the database
    root = tmp_path_factory.mktemp("ui")
    return TestClient(create_app(Settings(database_url=f"sqlite:///{root / 'ui.db'}", storage_url=str(root / "a"))))


def static_files() -> list[str]:
    return sorted(str(p.relative_to(STATIC_DIR)) for p in STATIC_DIR.rglob("*") if p.is_file())


def test_ui_is_served_without_a_key_outside_v1_with_a_strict_content_security_policy(client):
    redirect = client.get("/ui", follow_redirects=False)
    assert redirect.status_code == 307 and redirect.headers["location"] == "/ui/"
    page = client.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="js/app.js"></script>' in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy and "form-action 'none'" in policy
    assert "unsafe-inline" not in policy and "http" not in policy  # nothing from another origin, no CDN
    assert page.headers["x-content-type-options"] == "nosniff" and page.headers["referrer-policy"] == "no-referrer"
    assert client.head("/ui", follow_redirects=False).status_code == 307
    assert client.get("/v1/ui/").status_code == 401  # the API itself still needs a key
    assert client.get("/ui/%2e%2e/__init__.py").status_code == 404  # the package's code is not static content


def test_the_bare_address_leads_to_the_dashboard_whose_sign_in_says_where_the_demo_key_is(client):
    from dora_cli.worker_commands import DEMO_KEY_FILE

    for method in ("GET", "HEAD"):
        redirect = client.request(method, "/", follow_redirects=False)
        assert redirect.status_code == 307 and redirect.headers["location"] == "/ui/"
    assert "/" not in client.get("/openapi.json").json()["paths"]  # a browser's convenience, not an operation
    sign_in = client.get("/ui/js/app.js").text  # the sign-in form is built by this module
    assert "dora keys create --tenant NAME" in sign_in and "make run" in sign_in
    assert f'h("code", {{}}, "{DEMO_KEY_FILE}")' in sign_in  # where `dora up --demo` writes it


def test_every_file_and_module_the_page_loads_is_served_with_its_type(client):
    page = client.get("/ui/").text
    referenced = re.findall(r'(?:src|href)="([^"#:]+)"', page)
    assert {"js/app.js", "style.css", "favicon.svg"} <= set(referenced)
    types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".html": "text/html"}
    for name in static_files():
        response = client.get(f"/ui/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"].split(";")[0] in {types[Path(name).suffix], "application/javascript"}
    # each relative ES-module import names a file that is there (a typo would break the page at once)
    for script in STATIC_DIR.rglob("*.js"):
        for target in IMPORT.findall(script.read_text()):
            assert (script.parent / target).resolve().is_file(), f"{script.name} imports missing {target}"
    # no external resource: every URL in the files is relative or our own /v1/ and /openapi.json
    for script in [*STATIC_DIR.rglob("*.js"), *STATIC_DIR.rglob("*.css"), *STATIC_DIR.rglob("*.html")]:
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", script.read_text()), script.name


def test_the_wheel_ships_every_dashboard_file_and_serves_them_when_installed(tmp_path):
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [name for name in static_files() if f"api/ui/static/{name}" not in names]
    assert not missing, f"pyproject's package-data leaves these out of the wheel: {missing}"
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    code = ("import sys; from fastapi.testclient import TestClient; from api.app import create_app; "
            "import api.ui; from store.settings import Settings; "
            "c = TestClient(create_app(Settings(database_url='sqlite://', storage_url=sys.argv[1]))); "
            "r = c.get('/ui/js/app.js'); print(api.ui.STATIC_DIR, r.status_code)")
    env = os.environ | {"PYTHONPATH": str(tmp_path / "site")}
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    where, status = result.stdout.split()
    assert Path(where) == (tmp_path / "site" / "api" / "ui" / "static").resolve() and status == "200"


def test_the_playgrounds_temperature_bound_is_the_contracts():
    """The page's number field stops at the bound the API enforces (one value, read from the contract)."""
    from dora_contract.serving import MAX_TEMPERATURE

    script = (STATIC_DIR / "js" / "pages" / "playground.js").read_text()
    bound = re.search(r"^const MAX_TEMPERATURE = ([\d.]+);", script, re.MULTILINE)
    assert bound and float(bound.group(1)) == MAX_TEMPERATURE
