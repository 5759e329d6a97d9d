"""A headless Chromium driven by selenium, for the page test and for taking the README
screenshot (``python tests/server/browser.py URL OUT.png [QUESTION]`` against a running server)."""

from __future__ import annotations

import shutil
import sys

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
DRIVER = ("chromedriver", "chromium-driver")


def missing() -> str | None:
    """Why a browser test cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (scripts/setup.sh test installs it)"
    if not any(shutil.which(b) for b in CHROMIUM):
        return "no chromium browser (scripts/setup.sh test installs Debian's chromium)"
    if not any(shutil.which(d) for d in DRIVER):
        return "no chromedriver (scripts/setup.sh test installs Debian's chromium-driver)"
    return None


def start(width: int = 1280, height: int = 860):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = next(shutil.which(b) for b in CHROMIUM if shutil.which(b))
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    service = Service(executable_path=next(shutil.which(d) for d in DRIVER if shutil.which(d)))
    return webdriver.Chrome(service=service, options=opts)


def wait_ready(driver, timeout: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))


def ask(driver, question: str, database: str | None = None, timeout: float = 120):
    """Pick ``database``, type ``question``, press Ask, wait for the answer."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    if database is not None:
        Select(driver.find_element(By.ID, "database")).select_by_visible_text(database)
    box = driver.find_element(By.ID, "question")
    box.clear()
    box.send_keys(question)
    driver.find_element(By.ID, "ask").click()
    WebDriverWait(driver, timeout).until(
        lambda d: d.find_element(By.ID, "timings").text.startswith("queue")
        and not d.find_element(By.ID, "ask").get_attribute("disabled"))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        print("usage: python tests/server/browser.py URL OUT.png [QUESTION] [DATABASE]", file=sys.stderr)
        return 2
    url, out = argv[0], argv[1]
    driver = start()
    try:
        driver.get(url)
        wait_ready(driver)
        if len(argv) > 2:
            ask(driver, argv[2], argv[3] if len(argv) > 3 else None)
        driver.save_screenshot(out)
    finally:
        driver.quit()
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
