"""The page end to end in headless Chromium (Debian's chromium and chromium-driver, driven by Selenium; nothing
downloaded), against the quick start's library served by uvicorn on 127.0.0.1. What the page shows is checked
against what Reader.search returns for the same query.

Without /usr/bin/chromium or /usr/bin/chromedriver these tests are skipped, and fail when CI is set
(.ci/run installs both). CLIPSEARCH_WRITE_SCREENSHOT=PATH also saves the result grid there (docs/screenshot.png).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from test_server_common import SAMPLES, quickstart_library  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 60  # seconds an explicit wait may take on a busy machine; never a timing assertion


def _require_browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if missing:
        reason = f"{', '.join(missing)} missing: apt-get install -y chromium chromium-driver; pip install selenium"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason, allow_module_level=True)


_require_browser()

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from clipsearch import Query, Term  # noqa: E402
from clipsearch.cli_serve import open_reader  # noqa: E402
from clipsearch.server import create_app  # noqa: E402
from clipsearch.server.runner import ServerThread  # noqa: E402


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    r = open_reader(quickstart_library(tmp_path_factory))  # as `clipsearch serve` opens it
    yield r
    r.close()


@pytest.fixture(scope="module")
def server(reader, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser-server")
    app = create_app(reader, thumbs_dir=tmp / "thumbs", upload_dir=tmp / "uploads")
    with ServerThread(app) as s:
        yield s


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    home = tmp_path_factory.mktemp("browser-home")  # chromium writes its profile and caches here, not in ~
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / "config"),
           "XDG_CACHE_HOME": str(home / "cache"), "SE_OFFLINE": "true"}
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,900",
                f"--user-data-dir={home / 'profile'}", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--disable-sync", "--disable-component-update"):
        opts.add_argument(arg)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SE_OFFLINE", "true")  # Selenium Manager must not look for or fetch drivers
        driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER, env=env))
    driver.set_window_size(1280, 900)
    yield driver
    driver.quit()


def wait_for(driver, condition, what: str):
    return WebDriverWait(driver, WAIT).until(lambda d: condition(d), message=f"waiting for {what}")


def ready(driver) -> None:
    wait_for(driver, lambda d: d.execute_script("return document.body.dataset.state") == "ready", "results")
    # every tile in view has its thumbnail decoded (a search may find nothing: then there are none)
    wait_for(driver, lambda d: d.execute_script(
        "const t = [...document.querySelectorAll('#grid .tile img')];"
        "return t.filter(i => i.getBoundingClientRect().top < innerHeight)"
        ".every(i => i.complete && i.naturalWidth > 0)"), "thumbnails")


def tile_ids(driver) -> list[int]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#grid .tile')].sort((a, b) => a.dataset.index - b.dataset.index)"
        ".map(t => Number(t.dataset.id))")


def expected_ids(reader, query: Query) -> list[int]:
    return [r.embedding_id for r in reader.search(query)]


def new_search_done(driver, before: list[int]):
    """Wait until the grid shows something other than `before` and has settled."""
    wait_for(driver, lambda d: tile_ids(d) and tile_ids(d) != before, "new results")
    ready(driver)


def test_typing_a_query_shows_the_expected_thumbnails_first(browser, server, reader, tmp_path):
    browser.get(server.url + "/")
    wait_for(browser, lambda d: "images" in d.find_element(By.ID, "library-info").text, "the header")
    assert browser.find_element(By.ID, "library-info").text == "shapes · 36 images · 128-d vectors"
    box = browser.find_element(By.ID, "q")
    box.send_keys("a red circle", Keys.ENTER)
    ready(browser)
    shown = tile_ids(browser)
    expected = expected_ids(reader, Query.parse("a red circle", k=36))  # the default cut-off, as the page's
    assert shown[:12] == expected[:12] and len(shown) >= 5
    red_circles = {"sample_00003.jpg", "sample_00006.png", "sample_00010.jpg", "sample_00023.jpg",
                   "sample_00050.jpg", "sample_00059.jpg"}
    titles = browser.execute_script("return [...document.querySelectorAll('#grid .tile')]"
                                    ".sort((a, b) => a.dataset.index - b.dataset.index).slice(0, 6).map(t => t.title)")
    assert {os.path.basename(t) for t in titles} <= red_circles  # the first results are the red circles
    first = reader.search(Query.parse("a red circle", k=1))[0]
    assert browser.find_element(By.CSS_SELECTOR, '#grid .tile[data-index="0"] .score').text == f"{first.score:.3f}"
    assert "q=a+red+circle" in browser.current_url
    browser.save_screenshot(str(tmp_path / "grid.png"))  # the test's artifact
    target = os.environ.get("CLIPSEARCH_WRITE_SCREENSHOT")
    if target:
        shutil.copyfile(tmp_path / "grid.png", target)
    assert (tmp_path / "grid.png").stat().st_size > 10_000


def test_a_result_opens_and_more_or_less_like_it_searches_by_it(browser, server, reader):
    browser.get(server.url + "/?q=a+blue+square")
    ready(browser)
    assert tile_ids(browser)[:8] == expected_ids(reader, Query.parse("a blue square", k=8))
    first = tile_ids(browser)[0]
    browser.find_element(By.CSS_SELECTOR, '#grid .tile[data-index="0"]').click()
    detail = browser.find_element(By.ID, "detail")
    wait_for(browser, lambda d: detail.is_displayed() and "taken" in detail.text, "the detail view")
    hit = reader.search(Query.parse("a blue square", k=1))[0]
    assert hit.path in detail.text and f"{hit.score:.4f}" in detail.text and "224 × 224 px" in detail.text
    wait_for(browser, lambda d: d.execute_script("const i = document.getElementById('detail-img');"
                                                 "return i.complete && i.naturalWidth > 0"), "the larger image")
    before = tile_ids(browser)
    browser.find_element(By.ID, "more-like").click()
    new_search_done(browser, before)
    assert not detail.is_displayed()
    assert f"like={first}" in browser.current_url and "q=" not in browser.current_url
    similar = expected_ids(reader, Query(terms=(Term.like(first),), k=12))
    assert tile_ids(browser)[:12] == similar
    assert first not in tile_ids(browser)  # the image itself is not among its look-alikes
    # less like the second look-alike: the query becomes like first, unlike second
    second = tile_ids(browser)[0]
    browser.find_element(By.CSS_SELECTOR, '#grid .tile[data-index="0"]').click()
    wait_for(browser, lambda d: detail.is_displayed(), "the detail view")
    before = tile_ids(browser)
    browser.find_element(By.ID, "less-like").click()
    new_search_done(browser, before)
    assert f"like={first}" in browser.current_url and f"unlike={second}" in browser.current_url
    assert tile_ids(browser)[:12] == expected_ids(reader, Query(terms=(Term.like(first), Term.like(second, -1.0)),
                                                                k=12))
    browser.back()  # the Back button restores the previous search
    wait_for(browser, lambda d: "unlike" not in d.current_url, "the previous URL")
    wait_for(browser, lambda d: tile_ids(d)[:12] == similar, "the previous results")


def test_choosing_an_image_file_searches_by_it(browser, server, reader, tmp_path):
    from PIL import Image

    example = tmp_path / "example.png"
    Image.open(SAMPLES / "images" / "sample_00010.jpg").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(example)
    browser.get(server.url + "/?q=a+purple+triangle")
    ready(browser)
    before = tile_ids(browser)
    browser.find_element(By.ID, "file").send_keys(str(example))
    new_search_done(browser, before)
    assert "upload=" in browser.current_url and "q=" not in browser.current_url
    assert tile_ids(browser)[:12] == expected_ids(reader, Query.image(example, k=12))
    assert "example: example.png" in browser.find_element(By.ID, "terms").text


def test_dropping_an_image_on_the_page_searches_by_it(browser, server, reader, tmp_path):
    source = SAMPLES / "images" / "sample_00006.png"
    copy = tmp_path / "dropped.png"
    copy.write_bytes(source.read_bytes())  # the same bytes, outside the library: not left out of its results
    image_id = reader.catalog.file_embedding_id(os.fsencode(source))
    browser.get(server.url + "/?q=a+purple+triangle")
    ready(browser)
    before = tile_ids(browser)
    # a drag from the desktop, as the page sees it: dragenter, then drop, with a File in the DataTransfer
    shown = browser.execute_async_script("""
        const [id, done] = arguments;
        fetch('/api/images/' + id + '/original').then(r => r.blob()).then(blob => {
          const dt = new DataTransfer();
          dt.items.add(new File([blob], 'dropped.png', {type: 'image/png'}));
          document.dispatchEvent(new DragEvent('dragenter', {dataTransfer: dt, bubbles: true}));
          const overlay = !document.getElementById('drop').hidden;
          document.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
          done(overlay);
        });""", image_id)
    assert shown is True  # the page said "drop an image" while it was dragged over
    new_search_done(browser, before)
    assert browser.find_element(By.ID, "drop").is_displayed() is False
    assert "upload=" in browser.current_url
    assert tile_ids(browser)[:12] == expected_ids(reader, Query.image(copy, k=12))
    assert tile_ids(browser)[0] == image_id  # the dropped picture itself is its best match


def test_filters_sort_and_cutoff_go_into_the_url_and_come_back_from_it(browser, server):
    browser.get(server.url + "/?q=a+green+star")
    ready(browser)
    browser.find_element(By.ID, "filters-button").click()
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.ID, "format")).select_by_value("png")
    wait_for(browser, lambda d: "format=png" in d.current_url, "the format in the URL")
    Select(browser.find_element(By.ID, "sort")).select_by_value("date")
    other = "none" if Query.parse("x").cutoff == "auto" else "auto"  # not the default: so it goes into the URL
    Select(browser.find_element(By.ID, "cutoff")).select_by_value(other)
    folder = browser.find_element(By.ID, "folder")
    folder.send_keys(str(SAMPLES / "images"), Keys.ENTER)
    wait_for(browser, lambda d: "folder=" in d.current_url, "the folder in the URL")
    url = browser.current_url
    for part in ("q=a+green+star", "format=png", "sort=date", f"cutoff={other}", "folder=%2F"):
        assert part in url
    browser.get(url)  # a bookmark: the page comes back with its filters
    ready(browser)
    assert Select(browser.find_element(By.ID, "format")).first_selected_option.get_attribute("value") == "png"
    assert Select(browser.find_element(By.ID, "sort")).first_selected_option.get_attribute("value") == "date"
    assert Select(browser.find_element(By.ID, "cutoff")).first_selected_option.get_attribute("value") == other
    assert browser.find_element(By.ID, "folder").get_attribute("value") == str(SAMPLES / "images")
    assert browser.find_element(By.ID, "filters").is_displayed()


def test_keyboard(browser, server, reader):
    browser.get(server.url + "/?cutoff=none")  # every image a result: rows to move through
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys("/")
    assert browser.switch_to.active_element.get_attribute("id") == "q"
    browser.switch_to.active_element.send_keys("a yellow star", Keys.ENTER)
    ready(browser)
    ids = tile_ids(browser)
    active = lambda d: d.execute_script("const a = document.querySelector('#grid .tile.active');"  # noqa: E731
                                        "return a ? Number(a.dataset.index) : -1")
    browser.switch_to.active_element.send_keys(Keys.ARROW_DOWN)  # from the box into the grid
    assert active(browser) == 0
    browser.switch_to.active_element.send_keys(Keys.ARROW_RIGHT)
    assert active(browser) == 1
    cols = browser.execute_script("return Math.round(document.getElementById('grid').clientWidth / "
                                  "document.querySelector('#grid .tile').offsetWidth)")
    browser.switch_to.active_element.send_keys(Keys.ARROW_DOWN)
    assert active(browser) == 1 + cols
    browser.switch_to.active_element.send_keys(Keys.ARROW_LEFT)
    assert active(browser) == cols
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    detail = browser.find_element(By.ID, "detail")
    wait_for(browser, lambda d: detail.is_displayed(), "the detail view")
    assert browser.execute_script("return document.getElementById('detail').dataset.id") == str(ids[cols])
    browser.switch_to.active_element.send_keys(Keys.ARROW_RIGHT)  # next result, in the detail view
    wait_for(browser, lambda d: d.execute_script("return document.getElementById('detail').dataset.id")
             == str(ids[cols + 1]), "the next result")
    browser.switch_to.active_element.send_keys(Keys.ESCAPE)
    assert not detail.is_displayed()
    browser.find_element(By.TAG_NAME, "body").send_keys("?")
    assert browser.find_element(By.ID, "help").is_displayed()
    browser.switch_to.active_element.send_keys(Keys.ESCAPE)
    assert not browser.find_element(By.ID, "help").is_displayed()


def test_phone_width(browser, server, reader, tmp_path):
    browser.set_window_size(390, 844)
    try:
        browser.get(server.url + "/?q=a+red+circle")
        ready(browser)
        width = browser.execute_script("return document.documentElement.clientWidth")
        assert browser.execute_script("return document.documentElement.scrollWidth") <= width  # no sideways scroll
        tiles = browser.find_elements(By.CSS_SELECTOR, "#grid .tile")
        rights = [t.rect["x"] + t.rect["width"] for t in tiles]
        assert max(rights) <= width and len({t.rect["x"] for t in tiles}) >= 3  # three or more columns
        assert tile_ids(browser)[:6] == expected_ids(reader, Query.parse("a red circle", k=6))
        tiles[0].click()
        detail = browser.find_element(By.ID, "detail")
        wait_for(browser, lambda d: detail.is_displayed(), "the detail view")
        more = browser.find_element(By.ID, "more-like")
        assert more.rect["x"] + more.rect["width"] <= width
        browser.save_screenshot(str(tmp_path / "phone.png"))
    finally:
        browser.set_window_size(1280, 900)


def test_a_thousand_results_keep_only_the_visible_tiles_in_the_page(browser, server, reader):
    """The grid's windowing, with the page's search answered by a stand-in that has 1,000 results."""
    ids = [r.embedding_id for r in reader.search(Query.parse("a shape", k=36, cutoff="none"))]
    browser.get(server.url + "/")
    browser.execute_script("""
        const ids = arguments[0];
        window.__pages = 0;
        const real = window.fetch;
        window.fetch = (url, opts) => {
          if (!String(url).startsWith('/api/search?')) return real(url, opts);
          const p = new URLSearchParams(String(url).split('?')[1]);
          const offset = Number(p.get('offset')), limit = Number(p.get('limit'));
          const results = [];
          for (let i = offset; i < Math.min(1000, offset + limit); i++) {
            const id = ids[i % ids.length];
            results.push({rank: i + 1, score: 1 - i / 1000, path: '/photos/' + i + '.png', id,
                          thumb: '/api/images/' + id + '/thumb'});
          }
          window.__pages++;
          return Promise.resolve(new Response(JSON.stringify({results, offset, limit, more: offset + limit < 1000,
            upload: null, query: {}, elapsed_ms: 1}), {status: 200, headers: {'Content-Type': 'application/json'}}));
        };""", ids)
    browser.find_element(By.ID, "q").send_keys("a shape", Keys.ENTER)
    ready(browser)
    in_page = lambda d: d.execute_script("return document.querySelectorAll('#grid .tile').length")  # noqa: E731
    assert 0 < in_page(browser) < 120
    for _ in range(200):  # scroll down page by page until the last result is on screen
        if browser.execute_script("return !!document.querySelector('#grid .tile[data-index=\"999\"]')"):
            break
        browser.execute_script("window.scrollBy(0, window.innerHeight)")
        wait_for(browser, lambda d: d.execute_script("return document.body.dataset.state") == "ready", "a page")
    assert browser.execute_script("return !!document.querySelector('#grid .tile[data-index=\"999\"]')")
    assert in_page(browser) < 120  # the first rows left the page as the last came in
    assert not browser.execute_script("return !!document.querySelector('#grid .tile[data-index=\"0\"]')")
    assert browser.execute_script("return window.__pages") == 17  # 1,000 results in pages of 60
    assert "Results" in browser.find_element(By.ID, "grid").get_attribute("aria-label")

