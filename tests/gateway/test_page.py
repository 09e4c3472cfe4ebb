"""The web page in a real headless Chromium: upload a photo, see cards; a hostile title stays text."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.server import RunningGateway
from tests.gateway.conftest import XSS_TITLE, World
from tests.support.browser import NEEDS_CHROMIUM, headless_chrome

pytest.importorskip("selenium.webdriver", reason="selenium is not installed (dev extra)")
pytestmark = NEEDS_CHROMIUM


def test_upload_shows_cards_and_escapes_titles(gateway: RunningGateway, world: World, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver = headless_chrome(tmp_path)
    try:
        driver.set_page_load_timeout(30)
        driver.get(gateway.http_url + "/")
        upload = driver.find_element(By.ID, "photo")
        assert upload.get_attribute("accept") == "image/*" and upload.get_attribute("capture") is not None
        # The catalogue photo of recipe 0, whose title is a script tag.
        upload.send_keys(str(world.images / "r000.jpg"))
        WebDriverWait(driver, 30).until(ec.presence_of_element_located((By.CSS_SELECTOR, "#results .card")))
        cards = driver.find_elements(By.CSS_SELECTOR, "#results .card")
        assert len(cards) == 6
        first_title = cards[0].find_element(By.CSS_SELECTOR, ".card-title")
        assert first_title.text == XSS_TITLE  # shown as text ...
        assert driver.find_elements(By.CSS_SELECTOR, "#results script") == []  # ... never parsed as markup
        assert cards[0].find_element(By.CSS_SELECTOR, ".card-score").text
        assert cards[0].find_elements(By.CSS_SELECTOR, ".card-ingredients li")
        img = cards[0].find_element(By.CSS_SELECTOR, ".card-image")
        assert img.get_attribute("src").endswith("/images/r000.jpg")
        assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)
        details = cards[0].find_element(By.CSS_SELECTOR, "details")
        details.find_element(By.TAG_NAME, "summary").click()
        instructions = cards[0].find_element(By.CSS_SELECTOR, ".card-instructions")
        assert "Step one for recipe 0" in instructions.text and "<b>bold?</b>" in instructions.text
        # No alert was raised by the payload (an open alert would make this call fail).
        assert driver.execute_script("return document.title").startswith("recipelens")
        assert "searching" not in driver.find_element(By.ID, "status").text.lower()
    finally:
        driver.quit()


def test_filters_on_the_page_and_the_matched_photo(
    gateway: RunningGateway, world: World, tmp_path: Path
) -> None:
    """Category and "without ingredient" reach the search; cards name their matched photo; warnings show."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver = headless_chrome(tmp_path)
    try:
        driver.set_page_load_timeout(30)
        driver.get(gateway.http_url + "/")
        driver.find_element(By.ID, "category").send_keys("SOUP")
        driver.find_element(By.ID, "without").send_keys("basil, unobtainium")
        driver.find_element(By.ID, "photo").send_keys(str(world.images / "r002.jpg"))
        WebDriverWait(driver, 30).until(ec.presence_of_element_located((By.CSS_SELECTOR, "#results .card")))
        WebDriverWait(driver, 30).until(lambda d: "recipes in" in d.find_element(By.ID, "status").text)
        cards = driver.find_elements(By.CSS_SELECTOR, "#results .card")
        # Soups are recipes 2, 5, 8, ..., 23; of them 14 and 23 have basil: six are left, the default top-k.
        titles = [c.find_element(By.CSS_SELECTOR, ".card-title").text for c in cards]
        assert sorted(int(t.split()[-1]) for t in titles) == [2, 5, 8, 11, 17, 20]
        assert cards[0].find_element(By.CSS_SELECTOR, ".card-matched-name").text.endswith(".jpg")
        assert "unobtainium" in driver.find_element(By.ID, "status").text  # the warning is shown
    finally:
        driver.quit()
