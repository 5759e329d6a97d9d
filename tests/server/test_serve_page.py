"""The page in a real browser (headless Chromium through selenium): load it, pick a database,
browse its schema, ask, see the result table (a cell holding <script> shown as text), edit the
SQL and run it again, the tab's history; a screenshot is saved."""

from __future__ import annotations

import os

import pytest
from serverkit import REPLY, SCRIPT_CELL

import browser

pytestmark = pytest.mark.skipif(browser.missing() is not None, reason=str(browser.missing()))


def cells(driver) -> list[str]:
    """The result table's cells, read in one go (the table may be re-rendered meanwhile)."""
    return driver.execute_script("return Array.from(document.querySelectorAll('#result td'), td => td.textContent)")


@pytest.fixture
def driver():
    d = browser.start()
    yield d
    d.quit()


def test_ask_in_the_page(serve, programmed_service, music_db, other_db, driver, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    s = serve(programmed_service, [("shop", other_db), music_db])
    driver.get(s.url + "/")
    browser.wait_ready(driver)
    options = [o.text for o in driver.find_elements(By.CSS_SELECTOR, "#database option")]
    assert options == ["shop", "music"]
    assert "item" in driver.find_element(By.ID, "schema").text

    browser.ask(driver, "which singers are older than 30?", "music")
    schema = driver.find_element(By.ID, "schema").text
    assert "singer" in schema and "4 rows" in schema and "concert" in schema and "PK" in schema
    assert "singer \u2192 singer.name" in schema  # the foreign key
    assert driver.find_element(By.ID, "sql").get_attribute("value") == REPLY
    assert cells(driver) == ["Art Long", SCRIPT_CELL, "Mike", "<b>bold</b> & <i>more</i>", "Zed", "NULL"]
    # shown as text, never run or parsed
    assert driver.title == "mlx-text2sql"
    assert driver.execute_script("return document.querySelectorAll('#result script, #result b').length") == 0
    assert "&lt;script&gt;" in driver.find_element(By.ID, "result").get_attribute("innerHTML")
    timings = driver.find_element(By.ID, "timings").text
    assert all(w in timings for w in ("queue", "prompt", "decode", "execute", "total"))
    assert "3 rows" in driver.find_element(By.ID, "status").text
    shot = tmp_path / "serve.png"
    driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("MLX_TEXT2SQL_SCREENSHOT"):
        driver.save_screenshot(os.environ["MLX_TEXT2SQL_SCREENSHOT"])

    # edit the SQL and run it again (read-only); a write is refused with the executor's message
    sql = driver.find_element(By.ID, "sql")
    sql.clear()
    sql.send_keys("SELECT name FROM singer WHERE age < 30")
    driver.find_element(By.ID, "run").click()
    WebDriverWait(driver, 30).until(lambda d: cells(d) == ["Butler"])
    sql.clear()
    sql.send_keys("DELETE FROM singer")
    driver.find_element(By.ID, "run").click()
    WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "error").is_displayed())
    assert driver.find_element(By.ID, "error").text.startswith("refused:")

    # the history of this tab: one entry, which restores the question and its SQL
    items = driver.find_elements(By.CSS_SELECTOR, "#history li")
    assert len(items) == 1 and "which singers are older than 30?" in items[0].text and "[music]" in items[0].text
    driver.find_element(By.ID, "question").clear()
    items[0].click()
    assert driver.find_element(By.ID, "question").get_attribute("value") == "which singers are older than 30?"
    assert driver.find_element(By.ID, "sql").get_attribute("value") == REPLY


def test_the_page_asks_for_the_key_when_the_server_has_one(serve, programmed_service, music_db, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    s = serve(programmed_service, [music_db], api_key="page-key")
    driver.get(s.url + "/")
    browser.wait_ready(driver)
    assert driver.find_element(By.ID, "key-box").is_displayed()
    assert "API key" in driver.find_element(By.ID, "error").text
    key = driver.find_element(By.ID, "api-key")
    key.send_keys("page-key")
    driver.execute_script("arguments[0].dispatchEvent(new Event('change'))", key)
    WebDriverWait(driver, 30).until(lambda d: d.execute_script(
        "return Array.from(document.querySelectorAll('#database option'), o => o.textContent)") == ["music"])
    browser.ask(driver, "who?")
    assert len(cells(driver)) == 6


def test_the_page_shows_what_name_repair_changed(serve, music_db, driver, tmp_path):
    from selenium.webdriver.common.by import By
    from tinymodels import make_programmed_model

    from mlx_text2sql.api import Text2SQL

    path = make_programmed_model(tmp_path / "misnaming", "SELECT names FROM singer")
    s = serve(Text2SQL.load(str(path)), [music_db])
    driver.get(s.url + "/")
    browser.wait_ready(driver)
    browser.ask(driver, "the names of the singers", "music")
    assert not driver.find_element(By.ID, "repairs").is_displayed()
    assert "no such column: names" in driver.find_element(By.ID, "error").text
    driver.find_element(By.ID, "opt-fix-names").click()
    browser.ask(driver, "the names of the singers", "music")
    assert driver.find_element(By.ID, "repairs").text == "name repair: column names \u2192 name"
    assert driver.find_element(By.ID, "sql").get_attribute("value") == 'SELECT "name" FROM singer'
    assert len(cells(driver)) == 4
