"""The monitor in a real browser: headless Chromium (Debian's chromium + chromium-driver, installed by
`make test` when missing) driven by Selenium over a running system with real jobs. Screenshots of each page
go to the test's tmp folder."""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_until
from observed_system import RunningSystem, _job, running_system

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not (shutil.which("chromedriver") and shutil.which("chromium")),
    reason="needs chromium and chromedriver: `make test` installs Debian's chromium and chromium-driver")]

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1600,1000")


@pytest.fixture(scope="module")
def system(tmp_path_factory) -> Iterator[RunningSystem]:
    yield from running_system(tmp_path_factory)


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    driver = webdriver.Chrome(options=opts, service=service)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _ids(browser, table: str, attr: str = "data-pandaid") -> list[str]:
    return [tr.get_attribute(attr) for tr in browser.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr")]


def test_jobs_list_filters(system: RunningSystem, browser, shots: Path):
    browser.get(f"{system.monitor}/jobs")
    assert sorted(map(int, _ids(browser, "jobs"))) == sorted(system.ids)
    browser.save_screenshot(str(shots / "jobs.png"))
    browser.find_element(By.CSS_SELECTOR, '#f-status option[value="finished"]').click()
    browser.find_element(By.ID, "apply").click()
    wait_until(lambda: "status=finished" in browser.current_url, 10, 0.1, "the filter in the URL")
    finished = sorted(p for p, s in system.states().items() if s == "finished")
    assert sorted(map(int, _ids(browser, "jobs"))) == finished
    browser.save_screenshot(str(shots / "jobs-finished.png"))
    # the URL is the view: opened again, it shows the same jobs
    shared = browser.current_url
    for name, path in (("queues", "/queues"), ("queue", "/queue/LOCAL?hours=1"), ("tasks", "/tasks"),
                       ("task", "/task/4242")):
        browser.get(f"{system.monitor}{path}")
        assert browser.find_elements(By.TAG_NAME, "h1"), name
        browser.save_screenshot(str(shots / f"{name}.png"))
    assert browser.find_elements(By.CSS_SELECTOR, '.count[data-state="finished"]')
    browser.get(shared)
    assert sorted(map(int, _ids(browser, "jobs"))) == finished
    browser.find_element(By.ID, "f-owner").send_keys("nobody-owns-this")
    browser.find_element(By.ID, "apply").click()
    wait_until(lambda: browser.find_elements(By.ID, "nojobs"), 10, 0.1, "no jobs for an unknown owner")


def test_job_timeline_matches_history(system: RunningSystem, browser, shots: Path):
    pid = system.ids[0]
    history = json.loads(system.cli("history", "--json", str(pid)).stdout)
    browser.get(f"{system.monitor}/job/{pid}")
    rows = browser.find_elements(By.CSS_SELECTOR, "#timeline tbody tr")
    seen = [(int(r.get_attribute("data-seq")), r.find_elements(By.TAG_NAME, "td")[5].text) for r in rows]
    assert seen == [(e["seq"], f'{e["from_state"]} → {e["to_state"]}') for e in history]
    assert [r.find_elements(By.TAG_NAME, "td")[2].text for r in rows] == [e["actor"] for e in history]
    lfns = sorted(r.find_elements(By.TAG_NAME, "td")[1].text for r in browser.find_elements(
        By.CSS_SELECTOR, "#files tbody tr"))
    assert lfns == ["log.obs-a", "out.obs-a"]
    browser.save_screenshot(str(shots / "job.png"))


def test_time_travel_shows_an_earlier_state(system: RunningSystem, browser, shots: Path):
    pid = system.ids[0]
    browser.get(f"{system.monitor}/job/{pid}")
    assert "finished" in browser.find_element(By.ID, "job-state").text
    slider = browser.find_element(By.ID, "at")
    slider.send_keys(Keys.HOME)           # the first event: input + change → the page of seq 1
    wait_until(lambda: "at=1" in browser.current_url, 10, 0.1, "time travel to seq 1")
    state = browser.find_element(By.ID, "job-state").text
    assert "defined" in state and "seq 1" in state
    assert browser.find_element(By.CSS_SELECTOR, "#timeline tr.current").get_attribute("data-seq") == "1"
    spec = browser.find_element(By.ID, "spec").text
    assert "jobStatus defined" in spec
    browser.save_screenshot(str(shots / "job-at-seq-1.png"))


def test_live_event_appears_without_reload(system: RunningSystem, browser, shots: Path):
    browser.get(f"{system.monitor}/live?task=4242")
    wait_until(lambda: browser.find_element(By.ID, "live-status").text.startswith("live"), 20, 0.1,
               "the live feed connected")
    marker = browser.execute_script("window.__same_page = 1; return window.__same_page;")
    target = system.ids[2]
    out = system.cli("kill", str(target))
    assert out.returncode == 0, out.stdout + out.stderr
    wait_until(lambda: any("cancelled" in tr.text for tr in browser.find_elements(
        By.CSS_SELECTOR, f'#live tr.new[data-pandaid="{target}"]')), 30, 0.2, "the kill event on the live page")
    assert browser.execute_script("return window.__same_page;") == marker   # no reload happened
    browser.save_screenshot(str(shots / "live.png"))


def _submit_as(system: RunningSystem, tmp: Path, user: str, name: str, jediTaskID: int | None = 4343,
               log: str | None = None) -> int:
    job = {**_job(name, "user"), "jediTaskID": jediTaskID}
    if log:
        job["Files"] = [f if f["type"] != "log" else {**f, "lfn": log} for f in job["Files"]]
    jobs = tmp / f"{name}.json"
    jobs.write_text(json.dumps([job]))
    out = system.cli("submit", "--user", user, str(jobs))
    assert out.returncode == 0, out.stdout + out.stderr
    pid = int(out.stdout.split()[0])
    wait_until(lambda: json.loads(system.cli("status", "--json", str(pid)).stdout)[0]["status"] == "activated",
               60, 0.3, f"job {pid} activated")
    return pid


def _token(system: RunningSystem, identity: str, roles: str) -> str:
    out = system.cli("token", "--identity", identity, "--roles", roles)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.strip()


def _status(system: RunningSystem, pid: int) -> str:
    return json.loads(system.cli("status", "--json", str(pid)).stdout)[0]["status"]


def _sign_in(browser, token: str) -> None:
    if browser.find_element(By.ID, "signed-in").is_displayed():
        browser.find_element(By.ID, "sign-out").click()
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.ID, "sign-in").click()


def _sign_in_and_kill(browser, token: str, button: str = "kill") -> str:
    _sign_in(browser, token)
    browser.find_element(By.ID, button).click()
    result = browser.find_element(By.ID, "action-result")
    wait_until(lambda: result.get_attribute("class") in ("refused", "accepted"), 30, 0.1, "the gateway's answer")
    return result.get_attribute("class") + ": " + result.text


def test_kill_button_refused_for_others_and_done_for_owner_and_production(system: RunningSystem, browser,
                                                                          shots: Path, tmp_path: Path):
    mine, theirs = _submit_as(system, tmp_path, "alice", "kill-a"), _submit_as(system, tmp_path, "alice", "kill-b")
    # a user who does not own the job: the gateway refuses, says why, and the job stays as it was
    browser.get(f"{system.monitor}/job/{mine}")
    answer = _sign_in_and_kill(browser, _token(system, "mallory", "user"))
    assert answer.startswith("refused") and "HTTP 403" in answer and "belongs to alice" in answer, answer
    assert browser.execute_script("return sessionStorage.getItem('pandaes.token')")   # kept in the browser only
    browser.save_screenshot(str(shots / "job-kill-refused.png"))
    assert _status(system, mine) == "activated"
    # the owner: the kill goes through and the job is cancelled
    answer = _sign_in_and_kill(browser, _token(system, "alice", "user"))
    assert answer.startswith("accepted"), answer
    wait_until(lambda: _status(system, mine) in ("cancelled", "closed"), 30, 0.3, f"job {mine} killed")
    browser.save_screenshot(str(shots / "job-kill-accepted.png"))
    browser.refresh()
    assert "cancelled" in browser.find_element(By.ID, "job-state").text or "closed" in browser.find_element(
        By.ID, "job-state").text
    assert not browser.find_elements(By.ID, "kill")        # no kill button on a job that is over
    # production kills any job of its VO
    browser.get(f"{system.monitor}/job/{theirs}")
    answer = _sign_in_and_kill(browser, _token(system, "prod-manager", "user,production"))
    assert answer.startswith("accepted"), answer
    wait_until(lambda: _status(system, theirs) in ("cancelled", "closed"), 30, 0.3, f"job {theirs} killed")


def _upload(system: RunningSystem, token: str, name: str, content: bytes) -> None:
    """The owner puts the job's log in the gateway's file cache (panda-client's putFile call)."""
    boundary = "pandaes-test-boundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: text/plain\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(f"{system.url}/api/v1/file_server/upload_cache_file", data=body, method="POST",
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert json.loads(resp.read())["success"] is True


def test_retry_button_refused_for_others_and_done_for_the_owner_and_log_links(system: RunningSystem, browser,
                                                                            shots: Path, tmp_path: Path):
    # a job of no JEDI task and no attempt left: the retrier leaves it failed, a person may still retry it
    log_name = "log.retry-a.txt"
    pid = _submit_as(system, tmp_path, "alice", "retry-a", jediTaskID=None, log=log_name)
    failed = system.cli("send", "-", timeout=60, stdin=json.dumps(
        {"type": "transition", "PandaID": pid, "action": "fail", "actor": "service:test",
         "attrs": {"pilotErrorCode": 1305, "pilotErrorDiag": "payload exited with 1"}}))
    assert failed.returncode == 0, failed.stdout + failed.stderr
    wait_until(lambda: _status(system, pid) == "failed", 30, 0.3, f"job {pid} failed")
    alice = _token(system, "alice", "user")
    browser.get(f"{system.monitor}/job/{pid}")
    assert browser.find_elements(By.ID, "nologs")            # nothing uploaded yet: no link
    _upload(system, alice, log_name, b"pilot log of the first attempt\npayload exited with 1\n")
    browser.refresh()
    (link,) = browser.find_elements(By.CSS_SELECTOR, "#logs a.log")
    assert link.text == log_name and link.get_attribute("href") == f"{system.url}/cache/{log_name}"
    # another user: the retry is refused with the gateway's reason and nothing happens to the job
    answer = _sign_in_and_kill(browser, _token(system, "mallory", "user"), button="retry")
    assert answer.startswith("refused") and "HTTP 403" in answer and "belongs to alice" in answer, answer
    browser.save_screenshot(str(shots / "job-retry-refused.png"))
    assert _status(system, pid) == "failed" and "retried as" not in browser.find_element(By.ID, "job-state").text
    # the owner reads the log through the link (with the token) and retries the job
    _sign_in(browser, alice)
    link.click()
    view = browser.find_element(By.ID, "log-view")
    wait_until(lambda: "first attempt" in view.text, 20, 0.1, "the log shown on the page")
    browser.save_screenshot(str(shots / "job-retry-and-logs.png"))   # the README's picture of the job page
    browser.find_element(By.ID, "retry").click()
    result = browser.find_element(By.ID, "action-result")
    wait_until(lambda: result.get_attribute("class") in ("refused", "accepted"), 30, 0.1, "the gateway's answer")
    assert result.get_attribute("class") == "accepted", result.text
    new = int(browser.find_element(By.ID, "retry-link").text.split()[-1])
    assert new != pid
    wait_until(lambda: _status(system, new) in ("defined", "assigned", "activated"), 30, 0.3, f"retry {new}")
    history = json.loads(system.cli("history", "--json", str(pid)).stdout)
    assert (history[-1]["action"], history[-1]["actor"]) == ("mark_retried", "user:alice")
    browser.refresh()
    assert browser.find_element(By.ID, "retried-as").text == str(new) and not browser.find_elements(By.ID, "retry")
    browser.save_screenshot(str(shots / "job-retried.png"))
