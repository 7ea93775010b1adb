"""
A local wheelhouse for venv upgrade tests: pip installs from it with no network.

Two folders of distributions, each also served as a PEP 503 "simple" index over
``file://`` (what pip's ``--index-url`` / ``--extra-index-url`` read):

``base/`` (index ``base/simple``)
    jupyterlab==4.6.6 with every dependency, plus setuptools and wheel (pip's build
    isolation needs them for an sdist). Filled ONCE by ``pip download`` with the
    machine's own pip configuration and cached (``WHEELHOUSE_CACHE`` or
    ``/var/cache/jupyter-formula-tests``); every later run reads only the folder.

``test/`` (index ``test/simple``; also a bare folder of files for ``--find-links``)
    Built here, offline, on every call (a second or two):

    - ``jfv-good-ext`` 1.0: a server extension that loads and serves
      ``<base_url>jfv-good-ext`` ("jfv-good-ext 1.0");
    - ``jfv-bad-ext`` 1.0: a server extension whose ``_load_jupyter_server_extension``
      raises; jupyter_server logs the failure and serves on without it;
    - ``jfv-broken`` 1.0: an sdist whose ``setup.py`` fails, so pip fails.

Both extensions enable themselves as pip-installed extensions do, with a
``etc/jupyter/jupyter_server_config.d/<module>.json`` data file.
"""

import fcntl
import hashlib
import html
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
from pathlib import Path

JUPYTERLAB = "jupyterlab==4.6.6"
BASE_REQUIREMENTS = (JUPYTERLAB, "setuptools", "wheel")

GOOD_EXT = "jfv_good_ext"
BAD_EXT = "jfv_bad_ext"
BROKEN = "jfv-broken"
BAD_EXT_ERROR = "jfv_bad_ext refuses to load: simulated broken upgrade"
BROKEN_ERROR = "jfv-broken cannot be built: simulated build failure"


def cache_root():
    wanted = Path(os.environ.get("WHEELHOUSE_CACHE", "/var/cache/jupyter-formula-tests"))
    wanted.mkdir(parents=True, exist_ok=True)
    return wanted


def _normalize(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _project_of(filename):
    """The project name of a wheel or sdist file name, PEP 503-normalized."""
    if filename.endswith(".whl"):
        return _normalize(filename.split("-")[0])
    stem = re.sub(r"\.(tar\.gz|zip)$", "", filename)
    return _normalize(stem.rsplit("-", 1)[0])


def write_simple_index(folder):
    """A PEP 503 index at folder/simple over the distributions in folder."""
    folder = Path(folder)
    simple = folder / "simple"
    shutil.rmtree(simple, ignore_errors=True)
    projects = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name.endswith((".whl", ".tar.gz", ".zip")):
            projects.setdefault(_project_of(path.name), []).append(path)
    for project, files in projects.items():
        page = simple / project
        page.mkdir(parents=True)
        links = []
        for path in files:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            links.append(
                f'<a href="../../{html.escape(path.name)}#sha256={digest}">{html.escape(path.name)}</a><br>'
            )
        (page / "index.html").write_text(
            "<!DOCTYPE html><html><body>\n" + "\n".join(links) + "\n</body></html>\n"
        )
    (simple / "index.html").write_text(
        "<!DOCTYPE html><html><body>\n"
        + "\n".join(f'<a href="{p}/">{p}</a><br>' for p in sorted(projects))
        + "\n</body></html>\n"
    )
    return simple


def base_folder():
    """The cached folder of jupyterlab's wheels (pip download on first use only)."""
    root = cache_root() / ("wheelhouse-" + JUPYTERLAB.replace("==", "-"))
    stamp = root / ".complete"
    with open(str(root) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stamp.exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            # wheels only: nothing gets built from source while filling the cache
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
                 "--python-version", "{}.{}".format(*sys.version_info[:2]),
                 "--dest", str(root), *BASE_REQUIREMENTS],
                check=True,
            )
            write_simple_index(root)
            stamp.write_text("\n".join(BASE_REQUIREMENTS) + "\n")
    return root


# --- the test packages ---------------------------------------------------------

_GOOD_MODULE = '''
"""A server extension that loads: it serves <base_url>jfv-good-ext."""
import tornado.web

__version__ = "1.0"


class _Ping(tornado.web.RequestHandler):
    def get(self):
        self.finish("jfv-good-ext " + __version__)


def _jupyter_server_extension_points():
    return [{"module": "jfv_good_ext"}]


def _load_jupyter_server_extension(serverapp):
    base = serverapp.web_app.settings["base_url"]
    serverapp.web_app.add_handlers(".*$", [(base + "jfv-good-ext", _Ping)])
    serverapp.log.info("jfv_good_ext ready")
'''

_BAD_MODULE = f'''
"""A server extension that raises while jupyter_server loads it."""


def _jupyter_server_extension_points():
    return [{{"module": "jfv_bad_ext"}}]


def _load_jupyter_server_extension(serverapp):
    raise RuntimeError("{BAD_EXT_ERROR}")
'''

_SETUP = '''
from setuptools import setup

setup(
    name="{dist}",
    version="1.0",
    py_modules=["{module}"],
    data_files=[("etc/jupyter/jupyter_server_config.d", ["{module}.json"])],
)
'''


def _build_extension_wheel(module, code, dest, base):
    src = Path(tempfile.mkdtemp(prefix="jfv-src-"))
    try:
        (src / f"{module}.py").write_text(textwrap.dedent(code))
        (src / f"{module}.json").write_text(
            '{"ServerApp": {"jpserver_extensions": {"%s": true}}}\n' % module
        )
        (src / "setup.py").write_text(_SETUP.format(dist=module.replace("_", "-"), module=module))
        # pip's build isolation takes setuptools and wheel from the base folder; no index
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index",
             "--find-links", str(base), "--wheel-dir", str(dest), str(src)],
            check=True,
            cwd=src,
        )
    finally:
        shutil.rmtree(src, ignore_errors=True)


def _build_broken_sdist(dest):
    """jfv-broken-1.0.tar.gz: setup.py exits with an error, as a package that fails to build."""
    files = {
        "jfv-broken-1.0/PKG-INFO": "Metadata-Version: 2.1\nName: jfv-broken\nVersion: 1.0\n",
        "jfv-broken-1.0/setup.py": f'raise SystemExit("{BROKEN_ERROR}")\n',
    }
    path = Path(dest) / "jfv-broken-1.0.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


def test_folder(dest, base):
    """Build the three test packages into dest (a bare folder) and index it."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    _build_extension_wheel(GOOD_EXT, _GOOD_MODULE, dest, base)
    _build_extension_wheel(BAD_EXT, _BAD_MODULE, dest, base)
    _build_broken_sdist(dest)
    write_simple_index(dest)
    return dest


def build(dest):
    """
    The wheelhouse: ``{"base": <folder>, "test": <folder>, "index_url": file URL of
    base's index, "extra_index_url": file URL of test's index, "find_links": test folder}``.
    """
    base = base_folder()
    test = test_folder(Path(dest) / "test", base)
    return {
        "base": base,
        "test": test,
        "index_url": (base / "simple").as_uri() + "/",
        "extra_index_url": (test / "simple").as_uri() + "/",
        "find_links": str(test),
    }


if __name__ == "__main__":
    print(build(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="wheelhouse-")))
