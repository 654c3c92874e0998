"""The GUI in a real browser (Debian's headless Chromium driven by Selenium) against a real CP with two real agents:
what an operator sees matches the CLI, a page follows the store without a reload, a CA switch is seen through, and
a stopped proxy turns offline. Every page is screenshotted (pytest's tmp dir, `gui-shots*`) and the browser's
console must stay free of errors (a CSP violation, a failed asset or a script error would show there)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from e2e.meshlib import dataplane, deny_web, outbound, rotation_mesh, start_dataplanes, url
from testlib import PY, ControlPlaneProc, clean_env, free_port, wait_for

from dpagent.controlplane.ca import generate_root_ca
from dpagent.controlplane.kinds import kind_of
from dpagent.controlplane.policies.registry import POLICY_KINDS

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
LIFETIME = "30s"  # the shortest Kuma allows: leaves renew at ~24 s, so a CA switch completes in ~25 s
PORTS = {k: free_port() for k in ("b_in", "w_in", "w_out")}


@pytest.fixture(scope="module")
def ca2(tmp_path_factory) -> dict[str, str]:
    """A provided backend `ca-2`, in the mesh from the start (the switch test only enables it)."""
    tmp = tmp_path_factory.mktemp("ca2")
    cert, key = generate_root_ca("default", "ca-2")
    (tmp / "ca2.pem").write_text(cert)
    (tmp / "ca2-key.pem").write_text(key)
    backend = (f"  - name: ca-2\n    type: provided\n    dpCert: {{rotation: {{expiration: {LIFETIME}}}}}\n"
               f"    conf:\n      cert: {{file: {tmp / 'ca2.pem'}}}\n      key: {{file: {tmp / 'ca2-key.pem'}}}\n")
    return {"cert": cert, "backend": backend}


@pytest.fixture(scope="module")
def mesh(cp, agents, apps, ca2) -> dict[str, Any]:
    cp.cli("apply", "-f", "-", input=rotation_mesh("ca-1", ca2["backend"]))
    backend, web = start_dataplanes(agents, {
        "backend-1": dataplane("backend-1", "backend", PORTS["b_in"], apps["backend"].port),
        "web-1": dataplane("web-1", "web", PORTS["w_in"], 1, outbound=outbound(backend=PORTS["w_out"]))})
    wait_for(lambda: httpx.get(url(PORTS["w_out"], "/gui"), timeout=3).status_code == 200, 20,
             what="web -> backend through the mesh")
    return {"backend": backend, "web": web}


class Browser:
    """One headless Chromium for the module; `show` opens a page by its hash route and waits for it to render."""

    def __init__(self, base: str, shots: Path) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM or ""
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,800", "--no-first-run", "--disable-extensions"):
            opts.add_argument(arg)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(DRIVER or ""), options=opts)
        self.base, self.shots = base, shots
        self.log: list[dict[str, Any]] = []

    def show(self, route: str) -> None:
        self.driver.get(f"{self.base}/gui/#/{route}")
        self.wait(lambda: self.js("return document.body.getAttribute('data-rendered')") is not None, 10,
                  f"page {route} rendered")

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def text(self, css: str) -> str:
        return str(self.js("const e = document.querySelector(arguments[0]); return e ? e.textContent : null", css))

    def wait(self, fn: Callable[[], Any], timeout: float, what: str) -> Any:
        return wait_for(fn, timeout, interval=0.05, what=what)

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        assert path.stat().st_size > 5000, f"screenshot {path} is empty"
        return path

    def errors(self) -> list[dict[str, Any]]:
        self.log += self.driver.get_log("browser")
        return [e for e in self.log if e.get("level") == "SEVERE"]


@pytest.fixture(scope="module")
def browser(cp, tmp_path_factory) -> Iterator[Browser]:
    if not (CHROMIUM and DRIVER):
        pytest.skip("Debian packages `chromium` and `chromium-driver` are not installed")
    os.environ.setdefault("SE_AVOID_STATS", "true")
    b = Browser(cp.api, tmp_path_factory.mktemp("gui-shots"))
    yield b
    b.driver.quit()


def cli_total(cp, plural: str) -> int:
    return int(json.loads(cp.cli("get", plural, "-o", "json").stdout)["total"])


def test_overview_counts_match_the_cli(mesh, cp, browser):
    browser.show("overview")
    card = ".mesh-card[data-mesh=default] "
    browser.wait(lambda: browser.text(card + "[data-k=count-online] b") == "2", 10, what="both proxies online")
    assert browser.text(card + "[data-k=count-dataplanes] b") == str(cli_total(cp, "dataplanes")) == "2"
    online = sum(cp.inspect(n)["xds"]["connected"] for n in ("web-1", "backend-1"))
    assert browser.text(card + "[data-k=count-online] b") == str(online)
    assert browser.text(card + "[data-k=count-offline] b") == "0"
    assert browser.text(card + "[data-k=count-nacking] b") == "0"
    assert browser.text(card + "[data-k=count-services]") == "2"
    shown = dict(browser.js("return [...document.querySelectorAll(arguments[0])].map(li => "
                            "[li.dataset.kind, li.querySelector('b').textContent])", card + ".policy-counts li"))
    assert shown["MeshTrafficPermission"] == str(cli_total(cp, "meshtrafficpermissions")) == "1"
    for kind in POLICY_KINDS:  # the rest through the listing `dpagent get` reads (one CLI start per kind is slow)
        plural = kind_of(kind).plural
        total = httpx.get(f"{cp.api}/meshes/default/{plural}", timeout=5).json()["total"]
        assert int(shown.get(kind, 0)) == total, kind
    assert browser.text("#cp-card [data-k=leader]") == "single replica"
    assert browser.text("#cp-card [data-k=store]").startswith("sqlite")
    browser.shot("overview")
    browser.driver.set_window_size(390, 844)  # phone width: the page itself must not scroll sideways
    try:
        for route in ("overview", "dataplanes", "dataplane/default/web-1", "services/default", "policies",
                      "certificates", "audit"):
            browser.show(route)
            time.sleep(0.3)
            assert browser.js("return document.documentElement.scrollWidth <= window.innerWidth + 1"), route
            browser.shot(route.split("/")[0] + "-phone")
    finally:
        browser.driver.set_window_size(1280, 800)
    assert browser.errors() == []


def test_dataplanes_table_and_a_dataplane_page_with_its_permission(mesh, browser):
    browser.show("dataplanes")
    browser.wait(lambda: browser.js("return document.querySelectorAll('#dp-table tbody tr[data-status=online]')"
                                    ".length") == 2, 10, what="two online rows")
    rows = browser.js("return [...document.querySelectorAll('#dp-table tbody tr')].map(r => r.dataset.name)")
    assert rows == ["backend-1", "web-1"]
    assert browser.js("return document.querySelectorAll('#dp-table [data-k=cert-bar]').length") == 2
    browser.js("document.querySelector('th[data-sort=name]').click()")  # descending
    assert browser.js("return [...document.querySelectorAll('#dp-table tbody tr')].map(r => r.dataset.name)") == [
        "web-1", "backend-1"]
    # Typed in one step: the live refresh rebuilds the table and its filter box (focus is kept), so a WebDriver
    # element found before a refresh goes stale half-way through send_keys.
    browser.js("const f = document.getElementById('dp-filter'); f.focus(); f.value = 'web'; "
               "f.dispatchEvent(new Event('input'))")
    browser.wait(lambda: browser.js("return [...document.querySelectorAll('#dp-table tbody tr')]"
                                    ".map(r => r.dataset.name).join()") == "web-1", 3, what="filtered to web-1")
    browser.shot("dataplanes")
    browser.js("document.getElementById('dp-filter').value = ''; "
               "document.getElementById('dp-filter').dispatchEvent(new Event('input'))")

    browser.show("dataplane/default/backend-1")
    browser.wait(lambda: browser.text("#dataplane .kind[data-kind=MeshTrafficPermission] a[data-policy]")
                 == "allow-all", 10, what="the matched MeshTrafficPermission")
    inbound = browser.text("#dataplane .kind[data-kind=MeshTrafficPermission] td")
    assert inbound == f"127.0.0.1:{PORTS['b_in']}"
    assert browser.js("return [...document.querySelectorAll('#config > details')].map(d => d.dataset.type)") == [
        "listeners", "clusters", "routes", "endpoints", "secrets"]
    assert "connected" in browser.text("#history")
    browser.js("document.querySelector('#config > details[data-type=listeners]').open = true")
    browser.shot("dataplane")
    assert browser.errors() == []


def test_a_deny_applied_by_the_cli_shows_in_the_matrix_within_two_seconds_without_reload(mesh, cp, browser):
    browser.show("services/default")
    cell = "#matrix td[data-caller=web][data-callee=backend]"
    browser.wait(lambda: browser.js("const c = document.querySelector(arguments[0]); return c && c.dataset.decision",
                                    cell) == "allow", 10, what="web may call backend")
    browser.js("window.__sameDocument = true")
    started = time.monotonic()
    cp.cli("apply", "-f", "-", input=deny_web())  # a CLI start is most of a second: the deny lands during it
    applied = time.monotonic()
    browser.wait(lambda: browser.js("return document.querySelector(arguments[0]).dataset.decision", cell) == "deny",
                 2, what="the matrix shows the deny")
    took = time.monotonic() - started
    assert browser.js("return window.__sameDocument === true"), "the page must update in place, not reload"
    assert browser.js("return document.querySelector('#matrix td[data-caller=backend][data-callee=web]')"
                      ".dataset.decision") == "allow"
    assert httpx.get(url(PORTS["w_out"], "/denied"), timeout=3).status_code == 403, "and the mesh agrees"
    browser.shot("services")
    print(f"matrix updated {took:.2f} s after the CLI started, {time.monotonic() - applied:.2f} s after it returned")

    browser.show("policies")
    browser.wait(lambda: "deny-web" in browser.text("#policies [data-kind=MeshTrafficPermission]"), 5,
                 what="deny-web listed")
    browser.shot("policies")
    browser.show("policy/default/MeshTrafficPermission/deny-web")
    browser.wait(lambda: browser.js("return [...document.querySelectorAll('#policy tr[data-name]')]"
                                    ".map(r => r.dataset.name).join()") == "backend-1", 5, what="affected: backend-1")
    assert "action: Deny" in browser.text("#policy-yaml")
    browser.shot("policy")
    cp.cli("delete", "mtp", "deny-web")
    assert browser.errors() == []


def test_ca_switch_progress_reaches_100_percent(mesh, cp, browser, ca2):
    browser.show("certificates")
    wait_for(lambda: "CA switch to ca-1" in browser.text(".mesh-certs[data-mesh=default]"), 5, what="ca-1 enabled")
    cp.cli("apply", "-f", "-", input=rotation_mesh("ca-2", ca2["backend"]))
    seen: list[tuple[str, str]] = []
    progress = ".mesh-certs[data-mesh=default] [data-k={}-text]"

    def complete() -> bool:
        if "CA switch to ca-2" not in browser.text(".mesh-certs[data-mesh=default]"):
            return False  # the page has not heard of the switch yet (it still shows ca-1's finished state)
        now = (browser.text(progress.format("bundle-acked")), browser.text(progress.format("leaves-new")))
        if not seen or seen[-1] != now:
            seen.append(now)
        return now == ("2/2 (100 %)", "2/2 (100 %)")

    browser.wait(complete, 45, what="the CA switch at 100 %")
    assert any(leaves != "2/2 (100 %)" for _, leaves in seen), f"progress was seen moving: {seen}"
    print(f"CA switch progress seen: {seen}")
    assert browser.js("return [...document.querySelectorAll('.mesh-certs tr[data-backend]')].map(r => "
                      "r.dataset.backend).join()") == "ca-1,ca-2"
    browser.shot("certificates")
    counts = httpx.get(f"{cp.api}/meshes/default/certificates", timeout=5).json()
    assert counts["byBackend"].get("ca-2", 0) >= 2
    assert browser.errors() == []


def test_a_stopped_agent_turns_offline(mesh, cp, browser):
    browser.show("dataplanes")
    row = "#dp-table tr[data-name=web-1]"
    browser.wait(lambda: browser.js("const r = document.querySelector(arguments[0]); return r && r.dataset.status",
                                    row) == "online", 10, what="web-1 online")
    # Stopped hard (Envoy with it): a graceful stop of an agent that registered its own Dataplane deregisters it,
    # and then there is no row left to turn offline. The agent goes first: an agent that outlives its Envoy even
    # briefly leaves the mesh gracefully, which is that same deregistration.
    agent = mesh["web"]
    envoys = agent.envoy_pids()
    agent.proc.kill()
    for pid in envoys:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).send_signal(signal.SIGKILL)
    agent.proc.wait(10)
    browser.wait(lambda: browser.js("return document.querySelector(arguments[0]).dataset.status", row) == "offline",
                 15, what="web-1 offline without a reload")
    browser.show("overview")
    browser.wait(lambda: browser.text(".mesh-card[data-mesh=default] [data-k=count-offline] b") == "1", 5,
                 what="one offline in the overview")
    browser.shot("offline")
    assert cp.inspect("web-1")["xds"]["connected"] is False
    assert browser.errors() == []
    print(f"screenshots: {browser.shots}")


def outside_address() -> str | None:
    """This host's address on its default route (not loopback), or None on a host with loopback only."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET: nothing is sent, the kernel only picks the source address
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


class WideControlPlane(ControlPlaneProc):
    """A second CP whose API listens on every address, so a browser can reach it from off loopback."""

    def start(self) -> None:
        with open(self.log, "a") as logf:
            # The test reads the CP from loopback without a token too: keep that door open explicitly (with a
            # non-loopback bind address it closes by default).
            self.proc = subprocess.Popen(self.command(PY, "--api-bind-address", "0.0.0.0", "--api-loopback-admin",
                                                      "true"), stdout=logf,
                                         stderr=subprocess.STDOUT, text=True, env=clean_env())
        wait_for(lambda: httpx.get(self.api, timeout=1).status_code == 200, 20, what="control plane API")


def test_off_loopback_the_browser_logs_in_with_the_admin_token_and_gets_a_read_only_cookie(browser, tmp_path):
    ip = outside_address()
    if ip is None:
        pytest.skip("this host has no address besides loopback")
    wide = WideControlPlane(tmp_path / "data")
    wide.start()
    try:
        base = f"http://{ip}:{wide.api_port}"
        assert httpx.get(f"{base}/gui/api/overview", timeout=5).status_code == 401
        d = browser.driver
        d.get(f"{base}/gui/")
        browser.wait(lambda: d.current_url == f"{base}/gui/login", 5, what="sent to the login page")
        d.find_element("id", "token").send_keys("not-the-token\n")
        browser.wait(lambda: browser.text("#login-error") not in ("None", ""), 5, what="a wrong token refused")
        browser.shot("login")
        token = (tmp_path / "data" / "admin-token").read_text().strip()
        d.find_element("id", "token").send_keys(token + "\n")
        browser.wait(lambda: browser.text(".mesh-card[data-mesh=default] [data-k=count-dataplanes] b") == "0", 10,
                     what="the overview after logging in")
        (cookie,) = d.get_cookies()
        assert (cookie["name"], cookie["path"], cookie["httpOnly"], cookie["sameSite"]) == (
            "dpagent_gui", "/gui", True, "Strict")
        assert cookie["value"] != token, "the token itself never sits in the browser"
        assert browser.js("return document.cookie") == "", "HttpOnly: page scripts cannot read the session"
        assert browser.errors() == []
        # The cookie opens GUI reads only: the page's own fetch of an API write is refused.
        status = browser.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch('/meshes/default/meshtrafficpermissions/x', {method: 'PUT', credentials: 'same-origin',"
            " headers: {'content-type': 'application/json'}, body: JSON.stringify({type: 'MeshTrafficPermission',"
            " mesh: 'default', name: 'x', spec: {targetRef: {kind: 'Mesh'}, from: [{targetRef: {kind: 'Mesh'},"
            " default: {action: 'Deny'}}]}})}).then(r => done(r.status));")
        assert status == 401
        assert httpx.get(f"{wide.api}/meshes/default/meshtrafficpermissions/x", timeout=5).status_code == 404
        probe = browser.errors()  # the refused write is the one error the browser may report here
        assert all("meshtrafficpermissions/x" in e["message"] and "401" in e["message"] for e in probe), probe
        browser.log.clear()
        d.find_element("css selector", ".logout button").click()
        browser.wait(lambda: d.current_url == f"{base}/gui/login", 5, what="logged out")
        assert d.get_cookies() == []
        d.get(f"{base}/gui/")
        browser.wait(lambda: d.current_url == f"{base}/gui/login", 5, what="the GUI asks again")
        assert browser.errors() == []
    finally:
        wide.stop()
