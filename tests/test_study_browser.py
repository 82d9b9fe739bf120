"""The study page in a real browser: Debian's headless Chromium, driven by Selenium through Debian's
chromedriver (no browser download). It opens a participant's link, checks the three clips load as audio,
answers items, resumes after a reload, and the test reads the answers back from SQLite."""
import json
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest

from musicsae import study as S
from musicsae import study_server as SV

pytestmark = pytest.mark.timeout(180)  # a hung server or browser fails the test instead of the whole run

# MUSICSAE_CHROMIUM / MUSICSAE_CHROMEDRIVER override where the browser and its driver are looked for
CHROMIUM = os.environ.get("MUSICSAE_CHROMIUM") or next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()), None)
DRIVER = os.environ.get("MUSICSAE_CHROMEDRIVER") or shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
if not (CHROMIUM and Path(CHROMIUM).exists() and DRIVER and Path(DRIVER).exists()):
    pytest.skip(f"Chromium ({CHROMIUM}) or chromedriver ({DRIVER}) not found: apt-get install -y chromium chromium-driver",
                allow_module_level=True)

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

AUDIO_READY = """
const done = arguments[arguments.length - 1];
const audios = [...document.querySelectorAll('#clips audio')];
const ready = () => audios.every(a => a.readyState >= 1 && a.duration > 0);
const t0 = Date.now();
(function poll() {
  if (ready() || Date.now() - t0 > 15000)
    done({n: audios.length, ready: ready(), durations: audios.map(a => a.duration), errors: audios.map(a => a.error && a.error.code),
          labels: audios.map(a => a.getAttribute('aria-label')),
          net: performance.getEntriesByType('resource').filter(e => e.name.includes('/audio/'))
                 .map(e => ({name: e.name, status: e.responseStatus}))});
  else setTimeout(poll, 50);
})();
"""


@pytest.fixture(scope="module")
def browser():
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not try to download anything
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", "--autoplay-policy=no-user-gesture-required",
                 f"--user-data-dir={profile}"]:
        opts.add_argument(flag)
    drv = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=DRIVER))
    drv.set_script_timeout(30)
    yield drv
    drv.quit(); shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture()
def served(tmp_path):
    items = S.synthetic_items(tmp_path / "clips", n_features=8, methods=("essentia",), seed=0)
    items.loc[3, "label"] = "<b>bold</b> & co"  # shown as text, never as markup
    st = S.build_study(items, out_dir=tmp_path / "study", n_per_participant=4, seed=0)
    srv, url = SV.start_server(tmp_path / "study")
    yield st, tmp_path / "study", url
    srv.shutdown(); srv.server_close()


def wait_text(drv, css, text, timeout=15):
    # the page re-renders an item in place: an element found just before that goes stale, so look again
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    WebDriverWait(drv, timeout, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)).until(
        lambda d: text in d.find_element(By.CSS_SELECTOR, css).text)


def answer(drv, choice, confidence, text):
    drv.find_element(By.CSS_SELECTOR, f"label[for='choice-{choice}']").click()
    drv.find_element(By.CSS_SELECTOR, f"label[for='confidence-{confidence}']").click()
    box = drv.find_element(By.ID, "text"); box.clear(); box.send_keys(text)
    drv.find_element(By.ID, "submit").click()


def test_page_in_chromium(browser, served):
    st, d, url = served
    pid, p = next(iter(st["participants"].items()))
    items = {it["id"]: it for it in st["items"]}
    drv = browser
    # the landing page: Appendix D's study details and a form for the participant id
    drv.get(url)
    assert S.INSTRUCTIONS in drv.find_element(By.ID, "intro").text
    drv.find_element(By.ID, "pid").send_keys(pid + "\n")
    wait_text(drv, "#progress", f"Item 1 of {len(p['items'])}")
    assert drv.current_url.endswith(f"?p={pid}")
    assert S.CHOICE_PROMPT in drv.page_source and S.CONFIDENCE_PROMPT in drv.find_element(By.ID, "item").text

    # the three clips load: metadata read, positive duration, fetched with 200/206
    info = drv.execute_async_script(AUDIO_READY)
    print("audio:", json.dumps(info))
    assert info["n"] == 3 and info["ready"], info
    assert all(abs(x - 0.5) < 0.01 for x in info["durations"]) and info["labels"] == ["Audio 1", "Audio 2", "Audio 3"]
    assert info["net"] and all(e["status"] in (200, 206) for e in info["net"]), info["net"]
    first = items[p["items"][0]]
    shown = [e.text for e in drv.find_elements(By.CSS_SELECTOR, "#choices label")]
    assert shown == first["options"]
    assert [e.text for e in drv.find_elements(By.CSS_SELECTOR, "#scale label")] == [t for _, t in S.CONFIDENCE_SCALE]

    # submitting without a choice is stopped by the form; nothing is stored
    drv.find_element(By.ID, "submit").click()
    assert "Item 1 of" in drv.find_element(By.ID, "progress").text and not S.read_responses(d).shape[0]

    # answer two items, reload: the page resumes at the third
    plan = [(2, 5, "warm piano"), (0, 3, "bright <i>brass</i>"), (4, 1, ""), (1, 4, "drone")]
    for k in range(2):
        answer(drv, *plan[k])
        wait_text(drv, "#progress", f"Item {k + 2} of")
        wait_text(drv, "#status", "Saved.")
    drv.refresh()
    wait_text(drv, "#progress", f"Item 3 of {len(p['items'])}")
    for k in range(2, 4):
        answer(drv, *plan[k])
        if k < 3: wait_text(drv, "#progress", f"Item {k + 2} of")
    WebDriverWait(drv, 15).until(lambda d: d.find_element(By.ID, "done").is_displayed())
    assert not drv.find_element(By.ID, "item").is_displayed()

    # the answers, read back from SQLite, are what was clicked and typed
    with sqlite3.connect(d / "responses.sqlite") as con:
        rows = con.execute("SELECT participant, item, choice, choice_label, confidence, free_text, correct, simulated FROM responses ORDER BY id").fetchall()
    assert [r[1] for r in rows] == p["items"]
    for r, (c, conf, text), iid in zip(rows, plan, p["items"]):
        assert r[0] == pid and (r[2], r[4], r[5]) == (c, conf, text) and r[3] == items[iid]["options"][c]
        assert r[6] == int(items[iid]["answer"] == c) and r[7] == 0

    # a label with markup characters is shown literally (inserted as text, not HTML)
    other = next(q for q, v in st["participants"].items() if q != pid and any("<b>bold</b> & co" in items[i]["options"] for i in v["items"]))
    drv.get(url + f"?p={other}")
    wait_text(drv, "#progress", "Item 1 of")
    found = False
    for k in range(len(st["participants"][other]["items"])):
        labels = [e.text for e in drv.find_elements(By.CSS_SELECTOR, "#choices label")]
        found |= "<b>bold</b> & co" in labels
        assert not drv.find_elements(By.CSS_SELECTOR, "#choices b")
        if found: break
        answer(drv, 0, 3, "")
        wait_text(drv, "#progress", f"Item {k + 2} of")
    assert found


def test_unknown_participant_sees_the_error(browser, served):
    st, d, url = served
    browser.get(url + "?p=nobody")
    wait_text(browser, "#status", "unknown participant 'nobody'")
    assert browser.find_element(By.ID, "start").is_displayed() and not browser.find_element(By.ID, "item").is_displayed()
