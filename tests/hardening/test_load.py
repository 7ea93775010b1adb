"""
Load from this host through the target's nginx (HTTPS): 64 connections for 30 s on an authenticated API
endpoint (wrk, the login cookie as a header) without a single error, and 10 kernels
executing code at once over websockets, all answering correctly.
"""

import concurrent.futures
import json
import re
import shutil
import subprocess
import time

from hardening.common import HTTPS_PORT

CONNECTIONS, SECONDS, KERNELS = 64, 30, 10

# Counts every answer that is not a 200 (wrk itself counts only >= 400), then prints
# the totals of all threads on one line.
WRK_SCRIPT = """
wrk.headers["Cookie"] = %s
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) non200 = 0 end
function response(status, headers, body) if status ~= 200 then non200 = non200 + 1 end end
function done(summary, latency, requests)
  local bad = 0
  for _, thread in ipairs(threads) do bad = bad + thread:get("non200") end
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%%d duration_us=%%d non200=%%d connect=%%d read=%%d write=%%d timeout=%%d p50_us=%%d p99_us=%%d\\n",
    summary.requests, summary.duration, bad, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def test_64_connections_for_30s_without_errors(deployed, figures, tmp_path):
    assert shutil.which("wrk"), "wrk is not installed (test.sh installs it)"
    client = deployed.login()
    script = tmp_path / "count.lua"  # the cookie stays off the command line
    script.write_text(WRK_SCRIPT % json.dumps(client.cookie_header()))
    script.chmod(0o600)
    proc = subprocess.run(
        ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{SECONDS}s", "--timeout", "10s", "-s", str(script),
         f"https://{deployed.target.address}:{HTTPS_PORT}/api/status"],
        capture_output=True, text=True, timeout=SECONDS + 60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    found = re.search(r"^RESULT (.*)$", proc.stdout, re.M)
    assert found, proc.stdout
    result = {key: int(value) for key, value in (item.split("=") for item in found.group(1).split())}
    rate = result["requests"] / (result["duration_us"] / 1e6)
    errors = {key: result[key] for key in ("non200", "connect", "read", "write", "timeout")}
    figures.append(
        f"{deployed.target.name}: wrk {CONNECTIONS} connections x {SECONDS} s on /api/status over HTTPS: {result['requests']} requests, "
        f"{rate:.0f} req/s, latency p50 {result['p50_us'] / 1000:.1f} ms, p99 {result['p99_us'] / 1000:.1f} ms, "
        f"errors {sum(errors.values())} {errors}"
    )
    assert result["requests"] > 1000
    assert errors == dict.fromkeys(errors, 0)


def test_10_kernels_execute_at_once(deployed, figures):
    client = deployed.login()
    kernels = []
    try:
        for _ in range(KERNELS):
            kernels.append(client.start_kernel())

        def run(index):
            code = f"import time; time.sleep(1); sum(range({index + 1} * 100000))"
            return client.execute(kernels[index], code, timeout=120)

        start = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(KERNELS) as pool:
            answers = list(pool.map(run, range(KERNELS)))
        took = time.monotonic() - start
    finally:
        for kernel in kernels:
            client.delete_kernel(kernel)
    assert answers == [str(sum(range((i + 1) * 100000))) for i in range(KERNELS)]
    # ten 1 s sleeps at once: concurrent, not one after the other
    assert took < KERNELS, took
    figures.append(f"{deployed.target.name}: {KERNELS} kernels executing at once over wss: all answered correctly in {took:.1f} s")
