"""
nginx files of the jupyter formula, changed as one transaction inside the live
configuration: nothing broken goes live.

``replace_files`` puts the new sites (and TLS files, links, removals) in place, runs
``nginx -t`` on the real, full configuration, and puts every file back as it was when
nginx rejects it. The running nginx is never touched here (the formula reloads it
afterwards, only when something changed), so a rejected change leaves the previous
sites serving and the files on disk as they were.

Written by hand: Salt's ``file.managed`` can test a candidate alone (``check_cmd``), not
a set of files within the whole configuration, and has no rollback.
"""

import difflib
import logging
import os
import subprocess
import tempfile

from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "jupyter_nginx"

NGINX = "nginx"


def __virtual__():
    return __virtualname__


def config_test(nginx=NGINX):
    """
    Run ``nginx -t`` on the live configuration. Returns ``{"ok": bool, "message": str}``
    with nginx's own words.

    CLI Example:

    .. code-block:: bash

        salt '*' jupyter_nginx.config_test
    """
    try:
        proc = subprocess.run([nginx, "-t"], capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError:
        return {"ok": False, "message": f"{nginx} is not installed"}
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    # the lines that say why, without the "test failed" trailer
    why = [line for line in lines if "test failed" not in line and "syntax is ok" not in line]
    return {"ok": proc.returncode == 0, "message": "\n".join(why or lines)}


def render(source, context, saltenv="base"):
    """
    Render a Jinja template of the formula (``salt://...``) with ``context``, as
    ``file.managed`` would. Returns the text.

    CLI Example:

    .. code-block:: bash

        salt '*' jupyter_nginx.render salt://jupyter/files/nginx-site.conf.jinja '{"site": {...}}'
    """
    text = __salt__["cp.get_file_str"](source, saltenv=saltenv)
    if text is None:
        raise CommandExecutionError(f"{source} not found in saltenv '{saltenv}'")
    return __salt__["file.apply_template_on_contents"](
        contents=text, template="jinja", context=context, defaults=None, saltenv=saltenv
    )


def _current(path):
    """What is at path now: None (nothing), {"link": target} or {"contents", "mode", "uid", "gid"}."""
    if os.path.islink(path):
        return {"link": os.readlink(path)}
    if not os.path.exists(path):
        return None
    stat = os.stat(path)
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        return {"contents": handle.read(), "mode": stat.st_mode & 0o7777, "uid": stat.st_uid, "gid": stat.st_gid}


def _same(current, wanted):
    if wanted is None or current is None:
        return wanted is current
    if "link" in wanted:
        return current.get("link") == wanted["link"]
    return (
        current.get("contents") == wanted["contents"]
        and current.get("mode") == wanted.get("mode", 0o644)
        and (current.get("uid"), current.get("gid")) == (0, 0)
    )


def _put(path, what):
    """Write what (None removes) at path atomically: a new file or link renamed over it."""
    if what is None:
        if os.path.lexists(path):
            os.unlink(path)
        return
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    if "link" in what:
        tmp = os.path.join(directory, f".jupyter-formula.{os.getpid()}.{os.path.basename(path)}")
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(what["link"], tmp)
        os.replace(tmp, path)
        return
    handle, tmp = tempfile.mkstemp(dir=directory, prefix=".jupyter-formula.")
    try:
        # permissions before contents: a key is never readable by others, not even briefly
        os.fchmod(handle, what.get("mode", 0o644))
        os.fchown(handle, what.get("uid", 0), what.get("gid", 0))
        with os.fdopen(handle, "w", encoding="utf-8", errors="surrogateescape") as out:
            out.write(what["contents"])
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def diff(path, wanted):
    """A unified diff of path's text against wanted (None: removal); '' for links."""
    current = _current(path)
    old = (current or {}).get("contents", "")
    new = (wanted or {}).get("contents", "")
    return "".join(difflib.unified_diff(
        old.splitlines(True), new.splitlines(True), fromfile=path, tofile=path
    ))


def pending(files):
    """
    Of ``files`` (``{path: wanted}``, wanted as for :py:func:`replace_files`), those
    that differ from what is on disk: ``{path: "create" | "update" | "remove"}``.

    CLI Example:

    .. code-block:: bash

        salt '*' jupyter_nginx.pending '{"/etc/nginx/sites-enabled/default": null}'
    """
    out = {}
    for path, wanted in sorted(files.items()):
        current = _current(path)
        if _same(current, wanted):
            continue
        out[path] = "remove" if wanted is None else "create" if current is None else "update"
    return out


def replace_files(files, nginx=NGINX):
    """
    Put ``files`` in place and keep them only if nginx accepts the whole configuration.

    files
        ``{path: wanted}``; wanted is ``{"contents": text, "mode": 0o644}`` (owner root),
        ``{"link": target}`` for a symlink, or None to remove the path.

    Returns ``{"changed": {path: action}, "ok": bool, "message": nginx's words}``. When
    ``nginx -t`` fails, every file is restored as it was before the call (removed files
    come back, new ones go) and ``changed`` is empty.

    CLI Example:

    .. code-block:: bash

        salt '*' jupyter_nginx.replace_files '{"/etc/nginx/sites-enabled/old.conf": null}'
    """
    changed = pending(files)
    backup = {path: _current(path) for path in changed}
    try:
        for path in changed:
            _put(path, files[path])
        result = config_test(nginx)
    except (OSError, CommandExecutionError) as exc:
        result = {"ok": False, "message": f"cannot write the nginx files: {exc}"}
    if result["ok"]:
        return {"changed": changed, **result}
    for path, before in backup.items():
        try:
            _put(path, before)
        except OSError as exc:  # pragma: no cover - the disk went away
            log.error("jupyter_nginx: could not restore %s: %s", path, exc)
            result["message"] += f"\n(could not restore {path}: {exc})"
    return {"changed": {}, **result}
