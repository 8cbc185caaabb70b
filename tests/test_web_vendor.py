"""The web page's vendored libraries (scripts/vendor-web.sh): what is committed under
static/vendor/ is what its MANIFEST says, at the versions scripts/web-vendor pins, with a
licence for each package; and the page loads nothing it does not ship."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "src" / "modelfusion" / "server" / "static"
VENDOR = STATIC / "vendor"


def manifest() -> tuple[dict[str, str], dict[str, str]]:
    packages: dict[str, str] = {}
    files: dict[str, str] = {}
    for line in (VENDOR / "MANIFEST").read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        if re.fullmatch(r"[0-9a-f]{64}  \S+", line):
            digest, name = line.split("  ")
            files[name] = digest
        else:
            spec = line.split()[0]
            name, version = spec.rsplit("@", 1)
            packages[name] = version
    return packages, files


def test_the_vendored_files_are_the_manifests():
    _, files = manifest()
    present = {p.relative_to(VENDOR).as_posix() for p in VENDOR.rglob("*")
               if p.is_file() and p.name != "MANIFEST"}
    assert present == set(files)
    for name, digest in files.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name


def test_the_versions_are_the_pinned_ones_with_their_licences():
    packages, files = manifest()
    pinned = json.loads((ROOT / "scripts" / "web-vendor" / "package.json").read_text())
    lock = json.loads((ROOT / "scripts" / "web-vendor" / "package-lock.json").read_text())
    for name, version in pinned["dependencies"].items():
        assert packages[name] == version
        assert lock["packages"][f"node_modules/{name}"]["version"] == version
    for name, version in packages.items():  # markdown-it's bundled dependencies too
        assert lock["packages"][f"node_modules/{name}"]["version"] == version
        assert f"licenses/{name.lstrip('@').replace('/', '-')}.LICENSE" in files


def test_the_page_loads_only_what_it_ships_and_no_inline_script():
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    local = [r for r in refs if r.startswith("/static/")]
    assert local and all((STATIC / r.removeprefix("/static/")).is_file() for r in local)
    assert all(r.startswith(("/static/", "data:", "/")) and not r.startswith("//")
               for r in refs)
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)  # every script is a file
    assert " style=" not in html and "<style" not in html
    for js in STATIC.glob("*.js"):  # the page's own modules import only each other
        for target in re.findall(r'from "([^"]+)"', js.read_text(encoding="utf-8")):
            assert (STATIC / target.removeprefix("./")).is_file(), (js.name, target)
