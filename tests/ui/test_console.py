"""The console, used as a person would in chromium: log in, see and open a sandbox, a
terminal, files, charts, command history, the operators' pages; another tenant's
sandboxes stay invisible and a bad key is refused."""

from __future__ import annotations

import base64
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from corral import Sandbox

from tests.conftest import WORKING

from .conftest import Console, Server

expect = pytest.importorskip("playwright.sync_api").expect

#: A 2x2 PNG (red, green / blue, white).
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGP4z8DAwMDAxMDAwMDAAAANHQEDasKb"
    "6QAAAABJRU5ErkJggg==")
#: A file name that would be markup if the page ever treated names as HTML.
HOSTILE_NAME = '<img src=x onerror="document.title=1">.txt'


def test_a_bad_key_is_refused(console: Console) -> None:
    console.open()
    console.page.get_by_label("API key").fill("crl_" + "x" * 43)
    console.page.get_by_role("button", name="Log in").click()
    expect(console.page.get_by_role("alert")).to_contain_text("refused")
    expect(console.page.get_by_role("button", name="Log out")).to_have_count(0)
    assert [c for c in console.context.cookies() if c["name"] == "corral_session"] == []
    console.shot("refused")


def test_log_in_see_a_sandbox_open_it_by_keyboard_and_log_out(console: Console,
                                                              sandbox: Sandbox) -> None:
    page = console.page
    console.log_in(console.server.key)
    row = page.locator(f'tr[data-id="{sandbox.id}"]')
    expect(row).to_contain_text("running")
    expect(row).to_contain_text("python")
    # The key is nowhere the page could leak it: not stored, not in the URL; the session
    # is a cookie the page's scripts cannot read.
    stored = page.evaluate("() => JSON.stringify([{...localStorage}, {...sessionStorage},"
                           " document.cookie, location.href])")
    assert console.server.key not in stored and "corral_session" not in stored, stored
    [cookie] = [c for c in console.context.cookies() if c["name"] == "corral_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
    console.shot("list")
    # Keyboard: focus the first row, arrow to ours, Enter opens it.
    rows = page.locator("tr[data-id]")
    rows.first.focus()
    for _ in range(rows.count()):
        if page.evaluate("() => document.activeElement.dataset.id") == sandbox.id:
            break
        page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name=sandbox.id)).to_be_visible()
    assert page.url.endswith(f"#/sandboxes/{sandbox.id}"), page.url
    # A reload keeps the session (the cookie; the CSRF token is asked for again).
    page.reload()
    expect(page.get_by_role("heading", name=sandbox.id)).to_be_visible()
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_label("API key")).to_be_visible()
    page.reload()
    expect(page.get_by_label("API key")).to_be_visible()
    assert [c for c in console.context.cookies() if c["name"] == "corral_session"] == []


def test_a_tenant_sees_none_of_another_tenants_sandboxes(console: Console,
                                                          sandbox: Sandbox) -> None:
    page = console.page
    with Sandbox.create("python", timeout=600, url=console.server.url,
                        api_key=console.server.other_key) as theirs:
        console.log_in(console.server.other_key)
        expect(page.locator(f'tr[data-id="{theirs.id}"]')).to_be_visible()
        expect(page.locator(f'tr[data-id="{sandbox.id}"]')).to_have_count(0)
        console.shot("other-tenant-list")
        console.open(f"/sandboxes/{sandbox.id}")
        expect(page.get_by_role("alert").first).to_contain_text("not_found")
        expect(page.get_by_role("alert").first).to_contain_text("go back to the list")
        console.open(f"/sandboxes/{sandbox.id}/files")
        expect(page.get_by_role("alert").first).to_contain_text("not_found")
        expect(page.locator("table")).to_have_count(0)


def test_a_command_typed_in_the_terminal_shows_its_output(console: Console,
                                                          sandbox: Sandbox) -> None:
    page = console.page
    console.log_in(console.server.key)
    console.open(f"/sandboxes/{sandbox.id}/terminal")
    expect(page.locator(".term-status")).to_have_attribute("data-state", "connected")
    rows = page.locator(".xterm-rows")
    expect(rows).to_contain_text(re.compile(r"[#$]"))  # the shell's prompt
    page.locator(".term-box").click()
    page.keyboard.type("echo $((6 * 7))-from-$(hostname | wc -c)-chars; tty\n")
    expect(rows).to_contain_text(re.compile(r"42-from-\d+-chars"))
    expect(rows).to_contain_text("/dev/pts/")
    console.shot("terminal")
    page.keyboard.type("exit 3\n")
    expect(page.locator(".term-status")).to_contain_text("exited with code 3")


def test_a_file_is_uploaded_downloaded_and_previewed(console: Console, sandbox: Sandbox,
                                                     tmp_path: Path) -> None:
    page = console.page
    sandbox.files.write(f"/work/{HOSTILE_NAME}", b"plain text\n")
    sandbox.files.write("/work/dot.png", PNG)
    sandbox.files.write("/work/big.log", b"0123456789abcde\n" * (128 * 1024))  # 2 MiB
    console.log_in(console.server.key)
    console.open(f"/sandboxes/{sandbox.id}/files")
    table = page.get_by_role("table", name="Files in /work")
    # The name is shown as text, never parsed as markup.
    expect(table.get_by_text(HOSTILE_NAME, exact=True)).to_be_visible()
    assert table.locator("img").count() == 0
    local = tmp_path / "notes.txt"
    local.write_bytes("héllo from the browser\n".encode() * 100)
    page.get_by_label("Upload to this folder").set_input_files(str(local))
    page.get_by_role("button", name="Upload", exact=True).click()
    expect(page.get_by_role("status").filter(has_text="Uploaded notes.txt")).to_be_visible()
    expect(table.locator('tr[data-name="notes.txt"]')).to_contain_text("2.3 KiB")
    assert sandbox.files.read("/work/notes.txt") == local.read_bytes()
    with page.expect_download() as downloading:
        page.get_by_role("button", name="Download notes.txt").click()
    download = downloading.value
    assert download.suggested_filename == "notes.txt"
    assert Path(download.path()).read_bytes() == local.read_bytes()
    page.get_by_role("button", name=f"Preview {HOSTILE_NAME}").click()
    expect(page.locator("pre.file-text")).to_have_text("plain text\n")
    page.get_by_role("button", name="Preview big.log").click()
    expect(page.locator(".preview")).to_contain_text("Only the first 1 MiB is shown")
    assert len(page.locator("pre.file-text").inner_text()) == 1024 * 1024
    page.get_by_role("button", name="Preview dot.png").click()
    image = page.get_by_role("img", name="dot.png")
    expect(image).to_have_attribute("src", re.compile(r"^blob:"))
    page.wait_for_function("() => document.querySelector('.preview img').naturalWidth === 2")
    assert page.title() == "Corral console"  # no markup of the hostile name ran
    console.shot("files")


def test_the_charts_update_as_samples_arrive(console: Console, sandbox: Sandbox) -> None:
    page = console.page
    sandbox.commands.run_background("timeout 300 python3 -c 'while True: pass'")
    console.log_in(console.server.key)
    console.open(f"/sandboxes/{sandbox.id}/metrics")
    metrics = page.locator(".metrics")
    expect(metrics).not_to_have_attribute("data-last", "")
    first = metrics.get_attribute("data-last")
    expect(page.locator(".chart canvas").first).to_be_visible()
    expect(metrics).not_to_have_attribute("data-last", first or "")
    expect(page.get_by_role("img", name=re.compile(r"^CPU: \d"))).to_be_visible()
    console.shot("metrics")
    # The list's sparklines come from the same samples.
    console.open("/sandboxes")
    row = page.locator(f'tr[data-id="{sandbox.id}"]')
    expect(row.locator(".spark svg")).to_have_count(2)
    console.shot("list")


def test_command_history_shows_exit_codes_and_output(console: Console,
                                                     sandbox: Sandbox) -> None:
    page = console.page
    sandbox.commands.run("echo out-text; echo err-text >&2; exit 7")
    console.log_in(console.server.key)
    console.open(f"/sandboxes/{sandbox.id}/commands")
    entry = page.locator(".commands li").filter(has_text="echo out-text")
    expect(entry).to_contain_text("exit 7")
    entry.locator("summary").click()
    expect(entry.locator("pre").first).to_have_text("out-text\n")
    expect(entry.locator("pre.stderr")).to_have_text("err-text\n")
    console.shot("history")


def test_operator_pages(console: Console, server: Server) -> None:
    page = console.page
    console.log_in(server.key)
    expect(page.get_by_role("link", name="Pools")).to_have_count(0)
    console.open("/pools")  # by hand: refused, and the page says what would do
    expect(page.get_by_role("alert")).to_contain_text("permission_denied")
    expect(page.get_by_role("alert")).to_contain_text("corral keys create --operator")
    page.get_by_role("link", name="Audit").click()
    expect(page.get_by_role("table", name="Audit records")).to_contain_text("ui.login")
    page.get_by_role("button", name="Log out").click()
    operator = server.keys.create("ops", operator=True)  # type: ignore[call-arg]
    console.log_in(operator.key)
    expect(page.locator(".who")).to_contain_text("(operator)")
    page.get_by_role("link", name="Pools").click()
    expect(page.get_by_role("heading", name="Warm pools")).to_be_visible()
    page.get_by_role("link", name="Images").click()
    expect(page.get_by_role("table", name="Images")).to_contain_text("python")
    page.get_by_role("link", name="Audit").click()
    audit = page.get_by_role("table", name="Audit records")
    expect(audit).to_contain_text("alpha")  # another tenant's record, for an operator
    console.shot("audit")


def test_create_pause_resume_and_kill_from_the_console(console: Console) -> None:
    page = console.page
    console.log_in(console.server.key)
    form = page.get_by_role("form", name="Create a sandbox")
    form.get_by_label("Image").fill("python")
    form.get_by_role("button", name="Create sandbox").click()
    expect(page).to_have_url(re.compile(r"#/sandboxes/sbx-[0-9a-f]+$"))
    sandbox_id = page.url.rsplit("/", 1)[1]
    try:
        state = page.locator(".page-head .state")
        expect(state).to_have_text("running")
        page.get_by_role("button", name="Pause").click()
        expect(state).to_have_text("paused")
        page.get_by_role("button", name="Resume").click()
        expect(state).to_have_text("running")
        page.get_by_role("tab", name="Network").click()
        expect(page.locator(".egress")).to_contain_text("Nothing yet")
        page.once("dialog", lambda dialog: dialog.accept())
        page.get_by_role("button", name="Kill").click()
        expect(state).to_have_text(re.compile("stopp"))
        console.shot("killed")
    finally:
        with console.server.http(console.server.key) as http:
            http.delete(f"/v1/sandboxes/{sandbox_id}")


def test_the_list_is_paged(console: Console, server: Server) -> None:
    """One more sandbox than a page holds (50): two pages, each drawn alone, and a filter
    that finds one on the other page. (500 read alike: 10 pages of 50 rows.)"""
    key = server.keys.create("paging").key
    runtime = "namespaces" if "namespaces" in WORKING else None  # the fastest to start

    def create(_: int) -> Sandbox:
        return Sandbox.create("python", runtime=runtime, timeout=600, url=server.url,
                              api_key=key)

    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(create, range(51)))
    try:
        page = console.page
        console.log_in(key)
        expect(page.get_by_text("51 in all")).to_be_visible()
        expect(page.get_by_text("Page 1 of 2")).to_be_visible()
        expect(page.locator("tr[data-id]")).to_have_count(50)
        expect(page.locator("tr[data-id]").first.locator(".spark svg")).to_have_count(2)
        console.shot("page-1", full_page=False)
        page.get_by_role("button", name="Next page").click()
        expect(page.get_by_text("Page 2 of 2")).to_be_visible()
        expect(page.locator("tr[data-id]")).to_have_count(1)
        last = page.locator("tr[data-id]").get_attribute("data-id")
        page.get_by_role("button", name="Previous page").click()
        expect(page.locator(f'tr[data-id="{last}"]')).to_have_count(0)
        page.get_by_label("Filter").fill(str(last))
        expect(page.locator("tr[data-id]")).to_have_count(1)
        expect(page.locator(f'tr[data-id="{last}"]')).to_be_visible()
    finally:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda sb: sb.kill(), made))


def test_watching_a_sandbox_is_not_activity(console: Console, server: Server) -> None:
    """Its page (state, charts, history) reads what is not activity: an idle sandbox
    pauses on its idle timeout (longer than the page's 5 s between two reads) while its
    page is open, and the page shows it."""
    with Sandbox.create("python", timeout=600, idle_timeout=8, on_idle="pause",
                        **server.sdk()) as sb:
        page = console.page
        console.log_in(server.key)
        console.open(f"/sandboxes/{sb.id}/metrics")
        expect(page.locator(".page-head .state")).to_have_text("paused")
        page.get_by_role("tab", name="Commands").click()
        page.get_by_role("tab", name="Network").click()
        expect(page.locator("#tab-panel")).to_contain_text("resume it to see its egress log")
        page.get_by_role("tab", name="Files").click()
        expect(page.get_by_role("button", name="Resume and show its files")).to_be_visible()
        with server.http(server.key) as http:  # the list, which is not activity either
            listed = http.get("/v1/sandboxes").json()["sandboxes"]
        assert [x["state"] for x in listed if x["id"] == sb.id] == ["paused"]
        console.shot("paused")
