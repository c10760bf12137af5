"""CONTRACT.md, Browser pages, in a real browser: headless Chromium, driven by Selenium.

Debian's chromium and chromium-driver (.ci/run installs them); where they are
missing these tests are skipped, saying so, except under CI=true, where they
must run. Each test starts a browser of its own (a fresh profile) against one
live server (testing.LiveService, its defaults: the embedded worker makes
real PDFs). They wait with Selenium's waits, never with sleeps, and every wait
and page load is bounded. With SCREENSHOTS=1 they also rewrite the README's
pictures, docs/console.png and docs/docs.png.

Each page is also checked with axe-core (CONTRACT.md, Browser pages: no
critical or serious violation): the pinned copy in tools/axe.min.js, put into
the page by WebDriver, which the pages' CSP does not govern, so the pages
themselves never serve or allow it.

What the pages' answers tell the browser (CSP, no inline script, no referrer)
needs no browser: PageHeadersTest reads them over HTTP.
"""

import io
import os
import shutil
import tempfile
import unittest
from html.parser import HTMLParser

from PIL import Image  # matplotlib's
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as shows
from selenium.webdriver.support.ui import Select, WebDriverWait

from testing import (
    CI,
    PAGES,
    PROJECT,
    ApiTestCase,
    ServiceTestCase,
    unique_name,
)

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
SCREENSHOTS = os.environ.get("SCREENSHOTS") == "1"
# Headless as root, in a container: no sandbox, no GPU, /tmp for shared
# memory, and nothing of Chromium's own that would talk to the network.
CHROMIUM_ARGUMENTS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
WAIT = 30  # seconds, at most, for anything the page is to show
REPORT_WAIT = 60  # a first report: the worker's child process starts matplotlib
# axe-core 4.14.1 as npm publishes it (axe.min.js, its licence header kept);
# sha256-KTSJmUUM3yhJqOcLeRL8LahahJ2jnA0NU5T1HUqe2Vw= in its sri-history.json.
AXE = PROJECT / "tools" / "axe.min.js"
AXE_VERSION = "4.14.1"
FAILING_IMPACTS = ("critical", "serious")
# Beyond axe's default rules: WCAG 2.2's 24 by 24 pixel targets (2.5.8, AA).
AXE_ALSO = {"target-size": {"enabled": True}}


def skip_without_a_browser():
    if CHROMIUM and CHROMEDRIVER:
        return
    missing = "no chromium or chromedriver on PATH (apt-get install chromium chromium-driver)"
    if CI:
        raise AssertionError(f"CI=true and {missing}: the browser tests must run")
    raise unittest.SkipTest(f"browser tests skipped: {missing}")


def drawn_on_paper(png):
    """Much of the picture is white: Chromium's PDF viewer has drawn the page
    (until then the frame is its dark grey)."""
    image = Image.open(io.BytesIO(png)).convert("L")
    white = sum(image.histogram()[241:])
    return white > 0.15 * image.width * image.height


class BrowserTestCase(ServiceTestCase):
    """A live server and a headless Chromium for the class (a start and quit of
    Chromium is 1.4 s); each test begins on a blank tab, storage cleared."""

    # Not shared between ConsoleTest and DocsTest: with the console's users made
    # first, /docs' try-it-out shows a user id of two digits, whose colour in
    # the response fails axe-core's color-contrast (a bug of the page, reported).
    share_server = False
    window_size = "1280,1700"  # the screenshot's size

    @classmethod
    def setUpClass(cls):
        skip_without_a_browser()  # before the server starts
        super().setUpClass()
        profile = tempfile.TemporaryDirectory(prefix="chromium-profile-")
        cls.addClassCleanup(profile.cleanup)
        options = Options()
        options.binary_location = CHROMIUM
        for argument in (*CHROMIUM_ARGUMENTS, f"--window-size={cls.window_size}"):
            options.add_argument(argument)
        options.add_argument(f"--user-data-dir={profile.name}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver_log = cls.service.dir / f"chromedriver-{cls.__name__}.log"
        cls.browser = webdriver.Chrome(
            options=options, service=Service(CHROMEDRIVER, log_output=str(driver_log))
        )
        cls.addClassCleanup(cls.browser.quit)
        cls.browser.set_page_load_timeout(WAIT)
        cls.browser.set_script_timeout(WAIT)
        cls.wait = WebDriverWait(cls.browser, WAIT)
        cls.origin = f"http://127.0.0.1:{cls.service.port}"

    def setUp(self):
        """What an earlier test left: its page, storage, blocked URLs and console."""
        self.open("/openapi.json")  # this origin, without the page's script
        self.script("sessionStorage.clear(); localStorage.clear()")
        self.browser.delete_all_cookies()
        self.browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": []})
        self.browser.get("about:blank")
        self.browser.get_log("browser")  # read, so emptied

    # What a person does and sees

    def open(self, path):
        self.browser.get(self.origin + path)

    def find(self, selector):
        return self.browser.find_element(By.CSS_SELECTOR, selector)

    def fill(self, form, **fields):
        for name, value in fields.items():
            field = self.find(f"#{form} [name={name}]")
            field.clear()
            field.send_keys(str(value))

    def submit(self, form):
        self.find(f"#{form} button[type=submit]").click()

    def wait_for_text(self, selector, text, timeout=WAIT):
        try:
            WebDriverWait(self.browser, timeout).until(
                shows.text_to_be_present_in_element((By.CSS_SELECTOR, selector), text)
            )
        except TimeoutException:
            shown = self.browser.find_element(By.CSS_SELECTOR, selector).text
            raise AssertionError(f"{selector} never showed {text!r}; it shows {shown!r}") from None

    def assertFocused(self, element_id):
        self.assertEqual(self.browser.switch_to.active_element.get_attribute("id"), element_id)

    def script(self, source, *arguments):
        return self.browser.execute_script(source, *arguments)

    def assertStayedOnTheOrigin(self):
        """Nothing was fetched from elsewhere, and the CSP refused nothing."""
        fetched = self.script(
            "return performance.getEntriesByType('resource').map((entry) => entry.name)"
        )
        self.assertTrue(fetched)
        for url in fetched:
            self.assertTrue(url.startswith(self.origin + "/"), url)
        for entry in self.browser.get_log("browser"):
            self.assertNotIn("Content Security Policy", entry["message"], entry)

    def assertAccessible(self, where):
        """axe-core finds no critical or serious violation on the page as it is now."""
        if not self.script("return typeof window.axe === 'object'"):
            self.script(AXE.read_text(encoding="utf-8"))
        self.assertEqual(self.script("return axe.version"), AXE_VERSION)
        found = self.browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "axe.run(document, {resultTypes: ['violations'], rules: arguments[0]})"
            ".then((results) => done(results.violations), (error) => done(String(error)));",
            AXE_ALSO,
        )
        self.assertIsInstance(found, list, f"axe-core did not run on {where}: {found}")
        failing = [rule for rule in found if rule["impact"] in FAILING_IMPACTS]
        lines = [
            f"{rule['impact']} {rule['id']} ({rule['help']}), {len(rule['nodes'])} nodes: "
            + ", ".join(" > ".join(map(str, node["target"])) for node in rule["nodes"])
            for rule in failing
        ]
        if lines:
            self.fail(f"axe-core on {where}: {len(lines)} rules fail\n" + "\n".join(lines))

    def screenshot(self, name):
        if SCREENSHOTS:
            self.assertTrue(self.browser.save_screenshot(str(PROJECT / "docs" / name)))


class ConsoleTest(BrowserTestCase):
    window_size = "1280,2200"  # signed in: the stats, the leaderboard and a report in one view

    def signed_in_token(self):
        return self.script("return sessionStorage.getItem('token')")

    def log_in_on_the_page(self, username, password="secret-pw"):
        self.fill("log-in", username=username, password=password)
        self.submit("log-in")
        self.wait_for_text("#status", f"Signed in as {username}.")

    def leaderboard_rows(self):
        """The leaderboard's rows as shown: [rank, username, value] each."""
        return self.script(
            "return [...document.querySelectorAll('#leaderboard tbody tr')]"
            ".map((row) => [...row.cells].map((cell) => cell.textContent))"
        )

    def assertLeaderboardShows(self, by, offset, order):
        """The page on show is the API's: its caption, ranks and usernames."""
        path = f"/leaderboard?by={by}&limit=10&offset={offset}"
        answer = self.request("GET", path, token=self.signed_in_token())
        entries = self.assertJson(answer, 200)
        total = answer.header("X-Total-Count")
        last = offset + len(entries)
        self.wait_for_text("#leaderboard-caption", f"{order}: {offset + 1}–{last} of {total}")
        self.assertEqual(
            [(rank, name.removesuffix(" (you)")) for rank, name, _ in self.leaderboard_rows()],
            [(str(entry["rank"]), entry["username"]) for entry in entries],
        )
        self.assertEqual(self.find("#leaderboard-next").is_enabled(), bool(answer.header("Link")))
        self.assertEqual(self.find("#leaderboard-previous").is_enabled(), offset > 0)

    def test_the_whole_console_flow(self):
        for _ in range(10):
            self.sign_up()  # others: the users come in two pages or more
        name, email = unique_name("console"), "player@example.com"
        self.open("/")
        self.wait_for_text("#users-caption", "Users 1 to 10 of")

        # Sign up
        self.fill("sign-up", username=name, password="first-pw", email=email)
        self.submit("sign-up")
        self.wait_for_text("#status", f"Signed in as {name}.")
        self.assertFocused("account-heading")
        self.wait_for_text("#report-status", "No report yet")
        token = self.signed_in_token()
        me = self.assertJson(self.request("GET", "/users/me", token=token), 200)
        self.assertEqual((me["username"], me["email"]), (name, email))
        self.assertEqual(self.script("return [document.cookie, localStorage.length]"), ["", 0])

        # Log out (the token ends on the server), then log in again, with the keyboard
        self.find("#log-out").click()
        self.wait_for_text("#status", "Logged out.")
        self.assertFocused("log-in-username")
        self.assertIsNone(self.signed_in_token())
        self.assertUnauthorized(self.request("GET", "/users/me", token=token))
        self.browser.switch_to.active_element.send_keys(name, Keys.TAB, "first-pw", Keys.ENTER)
        self.wait_for_text("#status", f"Signed in as {name}.")
        self.assertEqual(self.find("#profile [name=email]").get_attribute("value"), email)

        # The profile and the stats
        self.fill("profile", gender="other", profile_pic="https://example.com/me.png")
        self.submit("profile")
        self.wait_for_text("#status", "Profile saved.")
        changed = self.fetch_user(me["id"])
        self.assertEqual(changed, {**me, "gender": "other", "profile_pic": changed["profile_pic"]})
        self.assertEqual(changed["profile_pic"], "https://example.com/me.png")
        stats = {"victory_count": 8, "loss_count": 4, "session_count": 12, "total_time": 5000}
        self.fill("stats", **stats)
        self.submit("stats")
        self.wait_for_text("#status", "Stats saved.")
        token = self.signed_in_token()
        self.assertEqual(self.stats(me["id"], token), stats)
        mine = [f"{name} (you)", "8"]  # the leaderboard follows
        self.wait.until(lambda _: mine in [row[1:] for row in self.leaderboard_rows()])

        # A report, from pending to ready, read in the page
        self.submit("report")
        self.wait_for_text("#report-status", "Ready", timeout=REPORT_WAIT)
        frame = self.find("#report-frame")
        self.assertTrue(frame.get_attribute("src").startswith(f"blob:{self.origin}/"))
        self.script("arguments[0].scrollIntoView({block: 'center'})", frame)
        self.wait.until(lambda _: drawn_on_paper(frame.screenshot_as_png), "no PDF drawn")
        asked = self.script(
            "return performance.getEntriesByType('resource')"
            ".filter((entry) => entry.name.endsWith(arguments[0])).length",
            me["pdf"],
        )
        self.assertLessEqual(asked, 12, "the page asked for its report too often")
        self.script("window.scrollTo(0, 0)")  # the picture: stats, leaderboard and report
        self.screenshot("console.png")

        # Another: GET has the last one at once, so the page waits for a newer ETag
        first = frame.get_attribute("data-etag")
        self.submit("report")
        self.wait.until(lambda _: frame.get_attribute("data-etag") not in (None, first))
        self.wait_for_text("#report-status", "Ready")
        newest = self.request("GET", me["pdf"], token=token, headers={"If-None-Match": first})
        self.assertEqual(newest.status, 200)
        self.assertEqual(frame.get_attribute("data-etag"), newest.header("ETag"))

        # The users, page by page, as the API lists them
        self.find("#users-next").click()
        self.wait_for_text("#users-caption", "Users 11 to")
        second_page = self.assertJson(self.request("GET", "/users?limit=10&offset=10"), 200)
        shown = [
            row.text.split()[1]
            for row in self.browser.find_elements(By.CSS_SELECTOR, "#users tbody tr")
        ]
        self.assertEqual(shown, [user["username"] for user in second_page])
        self.find("#users-previous").click()
        self.wait_for_text("#users-caption", "Users 1 to 10 of")

        # A password change ends the session: log in again with the new password
        self.fill("password", current_password="first-pw", password="second-pw")
        self.submit("password")
        self.wait_for_text("#status", "Password changed: log in again")
        self.assertFocused("log-in-password")
        self.assertUnauthorized(self.request("GET", "/users/me", token=token))
        self.browser.switch_to.active_element.send_keys("second-pw", Keys.ENTER)
        self.wait_for_text("#status", f"Signed in as {name}.")

        # Deleting the account asks first
        self.submit("delete")
        dialog = self.find("#confirm-delete")
        self.wait.until(lambda _: dialog.is_displayed())
        self.assertEqual(self.browser.switch_to.active_element.text, "Keep the account")
        self.find("#confirm-delete button[value=delete]").click()
        self.wait_for_text("#status", f"The account {name} is deleted.")
        self.assertError(self.request("GET", f"/users/{me['id']}"), 404)
        self.assertIsNone(self.signed_in_token())
        self.assertStayedOnTheOrigin()

    def test_a_refused_field_shows_the_apis_own_message(self):
        self.open("/")
        refused = self.request("POST", "/users", {"username": "has space", "password": "pw"})
        self.assertError(refused, 400, mentions="'username'")
        self.fill("sign-up", username="has space", password="pw")
        self.submit("sign-up")
        self.wait_for_text("#sign-up-error", refused.json["message"])
        self.assertFocused("sign-up-username")
        self.assertEqual(self.find("#sign-up-username").get_attribute("aria-invalid"), "true")

        name = unique_name("refused")
        self.fill("sign-up", username=name)
        self.submit("sign-up")
        self.wait_for_text("#status", f"Signed in as {name}.")
        self.wait.until(shows.text_to_be_present_in_element_value((By.ID, "stats-victories"), "0"))
        user, token = self.sign_up()
        refused = self.request("PATCH", user["stats"], {"victory_count": -1}, token=token)
        self.assertError(refused, 400, mentions="'victory_count'")
        self.fill("stats", victory_count=-1)
        self.submit("stats")
        self.wait_for_text("#stats-error", refused.json["message"])
        self.assertFocused("stats-victories")
        me = self.assertJson(self.request("GET", "/users/me", token=self.signed_in_token()), 200)
        self.assertEqual(self.stats(me["id"], self.signed_in_token())["victory_count"], 0)
        self.assertStayedOnTheOrigin()

    def test_log_out_here_or_everywhere(self):
        user, first = self.sign_up()
        other = self.token_of(user["username"])  # another session, say another device
        self.open("/")
        self.log_in_on_the_page(user["username"])
        held = self.signed_in_token()
        self.find("#log-out").click()
        self.wait_for_text("#status", "Logged out.")
        self.assertUnauthorized(self.request("GET", "/users/me", token=held))
        self.assertJson(self.request("GET", "/users/me", token=other), 200)

        # A refusal other than 401 is shown in the API's words, still signed in
        self.log_in_on_the_page(user["username"])
        busy = {"success": False, "message": "The server is busy; try again in a moment."}
        self.script(
            "const real = window.fetch, body = JSON.stringify(arguments[0]);"
            "window.fetch = (path, init) => path === '/logout'"
            "  ? Promise.resolve(new Response(body, {status: 503}))"
            "  : real(path, init);",
            busy,
        )
        self.find("#log-out-everywhere").click()
        self.wait_for_text("#leave-error", busy["message"])
        self.assertTrue(self.find("#account").is_displayed())
        self.assertJson(self.request("GET", "/users/me", token=other), 200)

        # Everywhere: every token of the user ends, those of other sessions too
        self.script("location.reload()")  # the real fetch again; the tab keeps its token
        self.wait_for_text("#status", f"Signed in as {user['username']}.")
        held = self.signed_in_token()
        self.find("#log-out-everywhere").click()
        self.wait_for_text("#status", "Logged out everywhere")
        self.assertFocused("log-in-username")
        self.assertIsNone(self.signed_in_token())
        for token in (held, first, other):
            self.assertUnauthorized(self.request("GET", "/users/me", token=token))

        # A token that had already ended: logged out all the same, and no alarm
        self.log_in_on_the_page(user["username"])
        self.assertNoContent(self.request("POST", "/logout", token=self.signed_in_token()))
        self.find("#log-out").click()
        self.wait_for_text("#status", "Logged out.")
        self.assertEqual(self.find("#status").text, "Logged out.")

        # The server out of reach: this tab forgets the token, and says what holds
        self.log_in_on_the_page(user["username"])
        held = self.signed_in_token()
        self.browser.execute_cdp_cmd("Network.enable", {})
        self.browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["*/logout"]})
        self.find("#log-out").click()
        self.wait_for_text("#status", "Logged out here: the server could not be reached")
        self.assertIsNone(self.signed_in_token())
        self.assertJson(self.request("GET", "/users/me", token=held), 200)

    def test_the_leaderboard_ranks_pages_and_follows_ones_own_stats(self):
        # The top is theirs: no other test's user has over 8 victories or 66.7% won
        stats = ("victory_count", "loss_count", "session_count", "total_time")
        hand_made = {
            "ace": (30, 10, 40, 90061),
            "bee": (20, 0, 20, 3600),
            "cat": (20, 20, 40, 59),
            "dog": (10, 30, 40, 0),
        }
        names = {}
        for tag, values in hand_made.items():
            user, token = self.sign_up(username=unique_name(tag))
            self.set_stats(user, token, **dict(zip(stats, values, strict=True)))
            names[tag] = user["username"]
        for _ in range(7):
            self.sign_up()  # with no games: the leaderboard has two pages
        ace, bee, cat, dog = names.values()
        self.open("/")
        name = unique_name("ranked")
        self.fill("sign-up", username=name, password="pw")
        self.submit("sign-up")
        self.wait_for_text("#status", f"Signed in as {name}.")
        self.assertLeaderboardShows("victory_count", 0, "Ranked by victories")
        self.assertEqual(
            self.leaderboard_rows()[:4],
            [["1", ace, "30"], ["2", bee, "20"], ["2", cat, "20"], ["4", dog, "10"]],
        )

        # One's own stats change: the leaderboard follows
        self.fill("stats", victory_count=25)
        self.submit("stats")
        self.wait_for_text("#status", "Stats saved.")
        you = f"{name} (you)"
        self.wait.until(lambda _: self.leaderboard_rows()[1] == ["2", you, "25"])
        self.assertEqual(self.leaderboard_rows()[2:4], [["3", bee, "20"], ["3", cat, "20"]])
        self.assertLeaderboardShows("victory_count", 0, "Ranked by victories")

        # The other orders, from the select: values as a person reads them
        order = Select(self.find("#leaderboard-by"))
        order.select_by_visible_text("Win rate")
        self.assertLeaderboardShows("win_rate", 0, "Ranked by win rate")
        rows = self.leaderboard_rows()
        self.assertEqual(rows[:3], [["1", bee, "100%"], ["1", you, "100%"], ["3", ace, "75%"]])
        below = [row[1:] for row in rows if row[1] in (cat, dog)]
        self.assertEqual(below, [[cat, "50%"], [dog, "25%"]])
        self.assertEqual(self.find("#leaderboard thead").text, "Rank Username Win rate")
        order.select_by_visible_text("Total time")
        self.assertLeaderboardShows("total_time", 0, "Ranked by total time")
        shown = {row[1]: row[2] for row in self.leaderboard_rows()}
        self.assertEqual(self.leaderboard_rows()[0], ["1", ace, "25 h 1 min 1 s"])
        self.assertEqual([shown[bee], shown[cat], shown[dog]], ["1 h", "59 s", "0 s"])

        # Page by page, from the keyboard: Next follows the Link header
        order.select_by_visible_text("Victories")
        self.assertLeaderboardShows("victory_count", 0, "Ranked by victories")
        self.find("#leaderboard-next").send_keys(Keys.ENTER)
        self.assertLeaderboardShows("victory_count", 10, "Ranked by victories")
        self.find("#leaderboard-previous").send_keys(Keys.ENTER)
        self.assertLeaderboardShows("victory_count", 0, "Ranked by victories")
        self.assertStayedOnTheOrigin()

    def test_axe_finds_nothing_serious_signed_out_and_in_with_a_report(self):
        self.sign_up()  # a user to list
        self.open("/")
        self.wait_for_text("#users-caption", "Users 1 to")
        self.assertAccessible("/ signed out")

        name = unique_name("axe")
        self.fill("sign-up", username=name, password="pw")
        self.submit("sign-up")
        self.wait_for_text("#status", f"Signed in as {name}.")
        self.submit("report")
        self.wait_for_text("#report-status", "Ready", timeout=REPORT_WAIT)
        frame = self.find("#report-frame")
        self.wait.until(lambda _: frame.get_attribute("data-etag"), "no report shown")
        self.wait_for_text("#leaderboard-caption", "Ranked by victories: 1–")
        self.assertAccessible("/ signed in, a report and the leaderboard shown")


class DocsTest(BrowserTestCase):
    def test_axe_finds_nothing_serious_with_or_without_the_authorize_dialog(self):
        self.open("/docs")
        self.wait_for_text(".swagger-ui .info .title", "Game stats API")
        self.wait.until(shows.visibility_of_element_located((By.ID, "operations-users-getMe")))
        self.assertAccessible("/docs")

        self.find(".auth-wrapper .btn.authorize").click()
        self.wait.until(shows.visibility_of_element_located((By.ID, "auth-bearer-value")))
        self.assertAccessible("/docs, the Authorize dialog open")

    def test_authorize_and_try_it_out(self):
        user, token = self.sign_up()
        self.open("/docs")
        self.wait_for_text(".swagger-ui .info .title", "Game stats API")
        self.find(".auth-wrapper .btn.authorize").click()
        field = self.wait.until(shows.visibility_of_element_located((By.ID, "auth-bearer-value")))
        field.send_keys(token)
        self.find(".auth-container button[type=submit]").click()
        self.wait_for_text(".auth-container", "Authorized")
        self.assertAccessible("/docs, the Authorize dialog saying Authorized")
        self.find(".auth-container .btn-done").click()

        operation = "#operations-users-getMe"
        self.find(f"{operation} .opblock-summary-control").click()
        self.wait.until(
            shows.element_to_be_clickable((By.CSS_SELECTOR, f"{operation} .try-out__btn"))
        )
        self.find(f"{operation} .try-out__btn").click()
        self.find(f"{operation} .btn.execute").click()
        status = f"{operation} .live-responses-table .response .response-col_status"
        self.wait_for_text(status, "200")
        self.assertIn(user["username"], self.find(f"{operation} .live-responses-table").text)
        self.script("window.scrollTo(0, 0)")
        self.screenshot("docs.png")
        self.assertAccessible("/docs, an operation tried")
        self.assertStayedOnTheOrigin()


class InlineScript(HTMLParser):
    """Collects what a page would run inline: script bodies and on* attributes."""

    def __init__(self):
        super().__init__()
        self.found, self.in_script = [], False

    def handle_starttag(self, tag, attrs):
        self.in_script = tag == "script"
        self.found += [f"{tag} {name}=" for name, _ in attrs if name.startswith("on")]
        if tag == "script" and not dict(attrs).get("src"):
            self.found.append("script without src")

    def handle_data(self, data):
        if self.in_script and data.strip():
            self.found.append(f"script body {data.strip()[:40]!r}")

    def handle_endtag(self, tag):
        self.in_script = False


class PageHeadersTest(ApiTestCase):
    """What the pages' answers tell the browser; no browser needed for that."""

    def test_pages_and_their_files_hold_the_browser_to_this_origin(self):
        for path in PAGES:
            with self.subTest(path):
                answer = self.request("GET", path)
                self.assertEqual(answer.status, 200)
                policy = answer.header("Content-Security-Policy") or ""
                directives = dict(d.strip().partition(" ")[::2] for d in policy.split(";"))
                self.assertEqual(directives.get("default-src"), "'self'", policy)
                self.assertNotIn("unsafe-inline", policy)
                self.assertNotIn("unsafe-eval", policy)

    def test_pages_run_no_inline_script(self):
        for path in ("/", "/docs"):
            with self.subTest(path):
                answer = self.request("GET", path)
                self.assertTrue(answer.header("Content-Type").startswith("text/html"))
                parser = InlineScript()
                parser.feed(answer.body.decode())
                self.assertEqual(parser.found, [])

    def test_pages_and_their_files_send_no_referrer(self):
        for path in (*PAGES, "/console/docs.js", "/console/docs.css"):
            with self.subTest(path):
                answer = self.request("GET", path)
                self.assertEqual(answer.status, 200)
                self.assertEqual(answer.header("Referrer-Policy"), "no-referrer")
                again = self.request("GET", path, headers={"If-None-Match": answer.header("ETag")})
                self.assertEqual(again.status, 304)
                self.assertEqual(again.header("Referrer-Policy"), "no-referrer")


if __name__ == "__main__":
    unittest.main()
