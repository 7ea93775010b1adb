"""
A Jupyter client that talks to a deployed server from outside, as a browser does:
login form with the XSRF cookie, REST calls with the X-XSRFToken header, kernel code
over the websocket. Used by the end-to-end, lab and hardening tests and the benchmarks.
"""

import base64
import json
import ssl
import time
import uuid
from urllib.parse import urljoin, urlsplit

import requests
import websocket  # websocket-client


class JupyterClient:
    def __init__(self, base_url, verify=True, timeout=30):
        """base_url: where the site is served, e.g. http://127.0.0.1/ or https://host/nb/."""
        self.base = base_url if base_url.endswith("/") else base_url + "/"
        self.verify = verify
        self.timeout = timeout
        self.session = requests.Session()
        self.session.verify = verify
        # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override verify=False
        self.session.trust_env = bool(verify)

    def url(self, path):
        return urljoin(self.base, path.lstrip("/"))

    # --- login -----------------------------------------------------------

    def login(self, password):
        """Log in through the form. True when the server accepted the password."""
        page = self.session.get(self.url("login"), timeout=self.timeout)
        page.raise_for_status()
        xsrf = self.session.cookies.get("_xsrf")
        resp = self.session.post(
            self.url("login"),
            data={"_xsrf": xsrf, "password": password},
            allow_redirects=False,
            timeout=self.timeout,
        )
        self.last_login_status = resp.status_code
        return resp.status_code == 302 and "login" not in resp.headers.get("Location", "")

    def cookie_header(self):
        """The session's cookies as one Cookie header value (for websocket and wrk)."""
        return "; ".join(f"{c.name}={c.value}" for c in self.session.cookies)

    def xsrf_headers(self):
        return {"X-XSRFToken": self.session.cookies.get("_xsrf", "")}

    def api(self, method, path, **kwargs):
        kwargs.setdefault("timeout", self.timeout)
        headers = {**self.xsrf_headers(), **kwargs.pop("headers", {})}
        return self.session.request(method, self.url("api/" + path), headers=headers, **kwargs)

    # --- kernels ---------------------------------------------------------

    def start_kernel(self):
        resp = self.api("POST", "kernels", json={"name": "python3"})
        resp.raise_for_status()
        return resp.json()["id"]

    def delete_kernel(self, kernel_id):
        self.api("DELETE", f"kernels/{kernel_id}")

    def websocket_url(self, kernel_id, session_id):
        parts = urlsplit(self.url(f"api/kernels/{kernel_id}/channels"))
        scheme = "wss" if parts.scheme == "https" else "ws"
        return f"{scheme}://{parts.netloc}{parts.path}?session_id={session_id}"

    def open_channels(self, kernel_id):
        session_id = uuid.uuid4().hex
        parts = urlsplit(self.base)
        sslopt = {} if self.verify else {"cert_reqs": ssl.CERT_NONE, "check_hostname": False}
        conn = websocket.create_connection(
            self.websocket_url(kernel_id, session_id),
            cookie=self.cookie_header(),
            origin=f"{parts.scheme}://{parts.netloc}",
            header=self.xsrf_headers(),
            timeout=self.timeout,
            sslopt=sslopt,
        )
        return conn, session_id

    def execute(self, kernel_id, code, timeout=60, conn=None):
        """Run code on the kernel over its websocket; the text it printed or returned."""
        own = conn is None
        if own:
            conn, session_id = self.open_channels(kernel_id)
        else:
            session_id = uuid.uuid4().hex
        try:
            msg_id = uuid.uuid4().hex
            conn.send(json.dumps(execute_request(code, msg_id, session_id)))
            return read_reply(conn, msg_id, timeout)
        finally:
            if own:
                conn.close()

    # --- contents --------------------------------------------------------

    def serves(self, password, timeout=10):
        """Log in and run 6*7 in a new kernel: True, or False (never an exception) while
        the server cannot."""
        try:
            if not self.login(password):
                return False
            kernel = self.start_kernel()
            try:
                return self.execute(kernel, "6*7", timeout=timeout) == "42"
            finally:
                self.delete_kernel(kernel)
        except Exception:  # noqa: BLE001 - any failure means: not serving (yet)
            return False

    def save_notebook(self, path, payload_bytes=0):
        """PUT a notebook whose one cell carries payload_bytes of output data."""
        blob = base64.b64encode(b"\0" * (payload_bytes * 3 // 4)).decode() if payload_bytes else ""
        notebook = {
            "cells": [
                {
                    "cell_type": "code",
                    "execution_count": 1,
                    "id": "c1",
                    "metadata": {},
                    "source": "6*7",
                    "outputs": (
                        [{"output_type": "display_data", "metadata": {}, "data": {"image/png": blob}}]
                        if blob
                        else []
                    ),
                }
            ],
            "metadata": {},
            "nbformat": 4,
            "nbformat_minor": 5,
        }
        return self.api(
            "PUT", f"contents/{path}", json={"type": "notebook", "content": notebook}, timeout=120
        )


class NamedClient(JupyterClient):
    """A JupyterClient for a name-based site reached at an address: every request, the
    websocket included, carries Host: <name> (and a matching Origin), as a browser that
    resolved the name would send."""

    def __init__(self, ip, name, base_url="/", timeout=60):
        super().__init__(f"http://{ip}{base_url}", timeout=timeout)
        self.host = name
        self.session.headers["Host"] = name
        self.session.trust_env = False  # straight to the address

    def open_channels(self, kernel_id):
        session_id = uuid.uuid4().hex
        conn = websocket.create_connection(
            self.websocket_url(kernel_id, session_id), cookie=self.cookie_header(), host=self.host,
            origin=f"http://{self.host}", header=self.xsrf_headers(), timeout=self.timeout)
        return conn, session_id


def execute_request(code, msg_id, session_id):
    return {
        "header": {
            "msg_id": msg_id,
            "username": "test",
            "session": session_id,
            "msg_type": "execute_request",
            "version": "5.3",
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "parent_header": {},
        "metadata": {},
        "content": {
            "code": code,
            "silent": False,
            "store_history": False,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": True,
        },
        "channel": "shell",
        "buffers": [],
    }


def read_reply(conn, msg_id, timeout):
    """Collect stdout and results of msg_id until its execute_reply and idle status."""
    deadline = time.monotonic() + timeout
    out, replied, idle = [], False, False
    while not (replied and idle):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no reply to {msg_id} within {timeout}s")
        msg = json.loads(conn.recv())
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            out.append(content["text"])
        elif kind in ("execute_result", "display_data"):
            out.append(content["data"].get("text/plain", ""))
        elif kind == "error":
            out.append(f"{content['ename']}: {content['evalue']}")
        elif kind == "execute_reply":
            replied = True
        elif kind == "status" and content.get("execution_state") == "idle":
            idle = True
    return "".join(out).strip()
