"""`animegen serve`: the studio's answers equal `animegen sample` byte for byte, every value
is checked on the server, nothing outside the page is served, and a real Chromium drives
the page with no console errors and no request leaving 127.0.0.1."""

import asyncio
import base64
import os
import resource
import shlex
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from click.testing import CliRunner

from animegen.cli import main
from animegen.errors import UserError
from animegen.generate import load_generator
from animegen.latent.directions import Direction, save_directions
from animegen.web.app import BackgroundServer, Renderer, create_app
from animegen.web.studio import Studio

pytestmark = pytest.mark.usefixtures("one_thread")

CHROMIUM = Path(os.environ.get("ANIMEGEN_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def train(data, out, family):
    result = CliRunner().invoke(main, ["train", family, "--data", str(data), "--out", str(out), "--preset", "tiny",
                                       "--steps", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, faces16):
    root = tmp_path_factory.mktemp("runs")
    sg2, ddpm = train(faces16, root / "sg2", "stylegan2"), train(faces16, root / "ddpm", "ddpm")
    model, _ = load_generator(sg2)
    vector = torch.nn.functional.normalize(torch.randn(model.mapping.w_avg.numel(), generator=torch.Generator().manual_seed(0)), dim=0)
    directions = save_directions(root / "dirs.safetensors", model, [Direction("hair", vector, "test", (0, 2), 3.0, {})])
    return {"sg2": sg2, "ddpm": ddpm, "directions": directions, "work": root / "studio"}


@pytest.fixture(scope="module")
def served(runs):
    """The folder `serve` was started in, the runs' own: the commands the studio shows name paths
    relative to it."""
    return runs["sg2"].parent


@pytest.fixture(scope="module")
def studio(runs, served):
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(served)
        return Studio([str(runs["sg2"]), str(runs["ddpm"])], [str(runs["directions"])], "cpu", runs["work"])


@pytest.fixture(scope="module")
def url(studio):
    with BackgroundServer(create_app(studio)) as base:
        yield base


def generate(url, **body):
    return httpx.post(f"{url}/api/generate", json=body, timeout=60)


def upload(url, data: bytes, query: str = "?run=0"):
    """POST an upload as the page does: with the header that a page elsewhere cannot send."""
    return httpx.post(f"{url}/api/project{query}", content=data, headers={"X-Animegen-Request": "1"}, timeout=60)


def run_command(command: str, served: Path) -> dict[str, bytes]:
    """Run the page's `animegen ...` command where `serve` was started; the bytes of the files it
    wrote there (samples/, *.gif), which are then deleted for the next command."""
    args = shlex.split(command)
    assert args[0] == "animegen"
    old = os.getcwd()
    os.chdir(served)
    try:
        result = CliRunner().invoke(main, args[1:])
        assert result.exit_code == 0, result.output
        return {p.name: p.read_bytes() for p in [*(served / "samples").glob("*.png"), *served.glob("*.gif")]}
    finally:
        os.chdir(old)
        shutil.rmtree(served / "samples", ignore_errors=True)
        for gif in served.glob("*.gif"):
            gif.unlink()


@pytest.mark.parametrize("body", [
    {"run": 0, "seed": 7, "count": 3, "options": {"truncation": 0.6, "noise_mode": "const"}, "edits": {"hair": 2.5}},
    {"run": 0, "plane": [3.25, 0.5], "options": {"mix_seed": 9}},
    {"run": 0, "seed": 3, "count": 2, "edits": {"hair": {"strength": -2, "layers": "fine"}}},
    {"run": 1, "seed": 2, "count": 2, "options": {"sampler": "ddim", "steps": 3, "eta": 0.5}},
])
def test_every_image_is_what_its_command_writes(url, body, served):
    answer = generate(url, **body)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    written = run_command(data["command"], served)
    assert {i["name"] for i in data["images"]} == set(written)
    for image in data["images"]:
        assert base64.b64decode(image["png"]) == written[image["name"]]


def test_the_interpolation_strip_is_what_its_command_writes(url, served):
    answer = httpx.post(f"{url}/api/interpolate", json={"run": 0, "seeds": [4, 9], "frames": 5,
                                                        "options": {"truncation": 0.8}, "edits": {"hair": 1}}, timeout=60)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert data["frames"] == 6 and "--seeds 4,9 --frames 5" in data["command"]
    assert base64.b64decode(data["gif"]) == run_command(data["command"], served)["interpolation.gif"]
    refused = httpx.post(f"{url}/api/interpolate", json={"run": 1, "seeds": [1, 2], "options": {"sampler": "ddpm"}})
    assert refused.status_code == 400 and "deterministic" in refused.json()["error"]


def test_a_few_shot_direction_is_fitted_saved_and_usable(url, served):
    marked = {"run": 0, "name": "bright", "positive": list(range(0, 12)), "negative": list(range(100, 112))}
    answer = httpx.post(f"{url}/api/directions/fit", json=marked, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["direction"]["method"] == "labels"
    assert "bright" in [d["name"] for d in httpx.get(f"{url}/api/runs").json()[0]["directions"]]
    file = httpx.get(f"{url}/api/runs/0/directions.safetensors")
    assert file.status_code == 200 and file.content == (served / answer.json()["file"]).read_bytes()
    assert generate(url, run=0, seed=1, edits={"bright": 2}).status_code == 200
    too_few = httpx.post(f"{url}/api/directions/fit", json={**marked, "positive": [1], "negative": [2]})
    assert too_few.status_code == 400 and "at least 10" in too_few.json()["error"]
    bad_name = httpx.post(f"{url}/api/directions/fit", json={**marked, "name": "../x"})
    assert bad_name.status_code == 400 and "direction name" in bad_name.json()["error"]
    assert httpx.get(f"{url}/api/runs/1/directions.safetensors").status_code == 404  # the DDPM has none
    assert httpx.get(f"{url}/api/runs/7/directions.safetensors").status_code == 400


def test_a_directions_file_that_fits_no_run_is_refused(runs, tmp_path):
    with pytest.raises(UserError, match="missing.safetensors fits none of the runs: directions file .* does not exist"):
        Studio([str(runs["sg2"])], [str(tmp_path / "missing.safetensors")], work=tmp_path)
    with pytest.raises(UserError, match="fits none of the runs: .*holds directions of a stylegan2 model"):
        Studio([str(runs["ddpm"])], [str(runs["directions"])], work=tmp_path)


def test_runs_without_a_directions_file_get_sefa_sliders(runs, tmp_path):
    studio = Studio([str(runs["sg2"]), str(runs["ddpm"])], work=tmp_path)
    sg2, ddpm = studio.describe()
    assert [d["name"] for d in sg2["directions"]] == [f"sefa{i}" for i in range(8)] and ddpm["directions"] == []
    assert Path(studio.runs[0].directions_file).is_file() and not Path(studio.runs[1].directions_file).exists()


def test_controls_change_the_image(url):
    def png(**change):
        return generate(url, **{"run": 0, "seed": 1, "count": 1, **change}).json()["images"][0]["png"]

    base = png()
    assert png() == base
    assert png(seed=2) != base
    assert png(options={"truncation": 0.5}) != base
    assert png(edits={"hair": 3}) != base and png(edits={"hair": 0}) == base


@pytest.mark.parametrize("body, message", [
    ({"run": 5}, "run must be an integer from 0 to 1"),
    ({"run": 0, "seed": -1}, "seed must be an integer"),
    ({"run": 0, "seed": 2**32}, "seed must be an integer"),
    ({"run": 0, "count": 17}, "count must be an integer from 1 to 16"),
    ({"run": 0, "options": {"truncation": 1e9}}, "--truncation"),
    ({"run": 0, "options": {"truncation": "x"}}, "truncation must be a finite number"),
    ({"run": 0, "options": {"steps": 3}}, "stylegan2 takes no option(s) steps"),
    ({"run": 1, "options": {"steps": 5000}}, "steps must be an integer from 1 to 1000"),
    ({"run": 0, "edits": {"nope": 1}}, "no direction 'nope'"),
    ({"run": 0, "edits": {"hair": 11}}, "strength must be in"),
    ({"run": 0, "plane": [1, -2]}, "seed plane point"),
    ({"run": 0, "path": "/etc/passwd"}, "unknown request field(s): path"),
    ({"run": 0, "view": "../x"}, "view must be"),
])
def test_bad_values_are_a_400_with_one_line(url, body, message):
    answer = generate(url, **body)
    assert answer.status_code == 400 and message in answer.json()["error"], answer.text
    assert "\n" not in answer.json()["error"] and "Traceback" not in answer.text


@pytest.mark.parametrize("path", ["/static/../../etc/passwd", "/static/%2e%2e%2fapp.py", "/static/..%2f..%2fcli.py",
                                  "/static/index.html/../app.py", "/static/studio.py", "//etc/passwd", "/nope",
                                  "/static/%00", "/api/runs/../../etc/passwd"])
def test_nothing_outside_the_page_is_served(url, path):
    answer = httpx.get(url + path)
    assert answer.status_code == 404 and answer.json() == {"error": "not found"}


def test_malformed_and_oversized_requests_are_refused(url):
    def post(body: bytes):
        return httpx.post(f"{url}/api/generate", content=body, headers={"Content-Type": "application/json"})

    assert post(b"{not json").json()["error"] == "the request body is not JSON."
    assert post(b"[1]").status_code == 400
    big = post(b" " * (65 * 1024))
    assert big.status_code == 413 and "larger than 64 KB" in big.json()["error"]
    assert httpx.get(f"{url}/api/generate").status_code == 405
    assert httpx.get(url + "/", headers={"Host": "attacker.example"}).status_code == 403  # DNS rebinding


def test_the_page_and_its_files_carry_a_strict_policy(url):
    page = httpx.get(url + "/")
    assert page.status_code == 200 and "default-src 'none'" in page.headers["content-security-policy"]
    for name in ("app.js", "style.css"):
        assert httpx.get(f"{url}/static/{name}").status_code == 200
    for text in (page.text, httpx.get(f"{url}/static/app.js").text, httpx.get(f"{url}/static/style.css").text):
        assert "http://" not in text and "https://" not in text  # no CDN, fonts or analytics


def test_a_token_is_required_on_every_request(studio):
    with BackgroundServer(create_app(studio, token="s3cret-token")) as base:
        assert httpx.get(f"{base}/api/runs").status_code == 401
        assert httpx.get(f"{base}/").status_code == 401
        assert httpx.get(f"{base}/api/runs", headers={"Authorization": "Bearer wrong-token"}).status_code == 401
        assert httpx.get(f"{base}/api/runs", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
        with httpx.Client() as client:  # the page's cookie then authorizes its own requests
            assert client.get(f"{base}/?token=s3cret-token").status_code == 200
            assert client.get(f"{base}/api/runs").status_code == 200


@pytest.mark.parametrize("args, message", [
    (["--host", "0.0.0.0"], "add --token SECRET"),
    (["--host", "0.0.0.0", "--token", "short"], "at least 8 characters"),
    (["--port", "0"], "Invalid value for '--port'"),
    (["--work-limit", "0"], "Invalid value for '--work-limit'"),
])
def test_serve_refuses_open_binds_without_a_token(runs, args, message):
    result = CliRunner().invoke(main, ["serve", str(runs["sg2"]), *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_only_the_newest_request_of_a_view_is_rendered():
    async def scenario():
        renderer = Renderer(limit=3)
        gate = threading.Event()
        busy = asyncio.ensure_future(renderer.run(None, gate.wait))
        await asyncio.sleep(0.05)
        older = asyncio.ensure_future(renderer.run("main", lambda: "old"))
        newer = asyncio.ensure_future(renderer.run("main", lambda: "new"))
        await asyncio.sleep(0.05)
        with pytest.raises(Exception, match="busy"):
            await renderer.run("other", lambda: "refused")
        gate.set()
        return await busy, await older, await newer

    assert asyncio.run(scenario()) == (True, {"stale": True}, "new")


def test_load_200_requests_from_20_clients(url):
    """No error and flat memory: 200 requests, 20 at a time, after a warm-up of 40."""

    def one(i):
        return generate(url, run=0, seed=i, count=1).status_code

    with ThreadPoolExecutor(20) as pool:
        assert set(pool.map(one, range(40))) == {200}
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert set(pool.map(one, range(200))) == {200}
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 50, grown_mb


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt install chromium, or set ANIMEGEN_CHROMIUM)")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, url):
    context = browser.new_context(viewport={"width": 1200, "height": 800})  # a fresh profile
    page = context.new_page()
    page.console_errors, page.foreign = [], []
    page.on("console", lambda m: page.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.console_errors.append(str(e)))

    def only_local(route):
        if route.request.url.startswith(url) or route.request.url.startswith("data:"):
            route.continue_()
        else:
            page.foreign.append(route.request.url)
            route.abort()

    page.route("**/*", only_local)
    page.goto(url + "/")
    page.wait_for_selector("#grid img")
    yield page
    context.close()


def first_image(page) -> str:
    return page.locator("#grid img").first.get_attribute("src")


def changed(page, before: str) -> str:
    page.wait_for_function("before => document.querySelector('#grid img').src !== before", arg=before)
    return first_image(page)


def test_the_page_drives_the_studio(page, url, served):
    assert page.locator("#grid img").count() == 4 and page.console_errors == [], page.console_errors
    start = first_image(page)
    page.fill("#seed", "5")
    page.dispatch_event("#seed", "change")
    at_seed = changed(page, start)
    page.locator("#truncation").fill("0.5")
    truncated = changed(page, at_seed)
    page.locator("[data-direction=hair]").fill("3")
    edited = changed(page, truncated)
    command = page.locator("#command").inner_text()
    assert "--seed 5" in command and "--truncation 0.5" in command and "--edit hair=3" in command
    written = run_command(command, served)
    assert base64.b64decode(edited.split(",", 1)[1]) == written["seed000005.png"]
    page.fill("#seed", "-4")
    page.dispatch_event("#seed", "change")
    page.wait_for_selector("#message.error")
    assert "seed must be an integer" in page.locator("#message").inner_text()
    assert page.console_errors == [] or all("400" in e for e in page.console_errors), page.console_errors
    assert page.foreign == []


def test_the_page_shows_images_large_while_saying_it_renders_and_the_planes_seeds(page):
    """16 px faces at 12x (192 px: a whole multiple, pixels as square blocks), a loading state
    while the newest request renders, and the seeds at the plane's grid points drawn on it."""
    image = page.locator("#grid img").first
    assert image.bounding_box()["width"] == 192 and image.evaluate("i => getComputedStyle(i).imageRendering") == "pixelated"
    gate = {"open": False, "held": []}  # the answers wait: the page must say it is rendering
    page.route("**/api/generate", lambda route: route.continue_() if gate["open"] else gate["held"].append(route))
    page.fill("#seed", "9")
    page.dispatch_event("#seed", "change")
    page.wait_for_selector("#busy:not([hidden])")
    assert page.locator("#view").get_attribute("aria-busy") == "true"
    # Dimmed: the opacity eases down over 0.15 s (a CSS transition), so it is waited for, not read at once.
    page.wait_for_function("() => parseFloat(getComputedStyle(document.querySelector('#grid')).opacity) < 1",
                           timeout=5000)
    gate["open"] = True
    for route in gate["held"]:
        route.continue_()
    page.wait_for_function("() => document.querySelector('#busy').hidden")
    assert page.locator("#grid img").first.get_attribute("data-seed") == "9"
    # Seed 9 puts the plane's first grid point at seed 9; its thumbnail covers the pixels around it.
    thumbnail = "([x, y]) => document.querySelector('#plane').getContext('2d').getImageData(x, y, 1, 1).data[3] === 255"
    for x, y in ((32, 32), (24 + 4 * 48 - 8, 24 + 4 * 48 - 8)):  # the first and last grid points' thumbnails
        page.wait_for_function(thumbnail, arg=[x, y])
    assert page.console_errors == [] and page.foreign == [], page.console_errors


def wait_for(url, job: str) -> dict:
    for _ in range(600):
        status = httpx.get(f"{url}/api/jobs/{job}").json()
        if status["done"]:
            return status
        time.sleep(0.1)
    raise AssertionError("the projection did not finish")


def test_upload_project_edit_and_the_commands_reproduce_it(url, faces16, served, tmp_path):
    from animegen.data.store import load_split
    from PIL import Image

    face = tmp_path / "face.png"
    Image.fromarray(load_split(faces16, "test")[0]).resize((48, 48)).save(face)
    started = upload(url, face.read_bytes())
    assert started.status_code == 200, started.text
    result = wait_for(url, started.json()["job"])
    assert "error" not in result and result["progress"] == 1.0, result
    projected = result["result"]
    assert projected["psnr"] > 5 and projected["command"].startswith("animegen project")
    again = shlex.split(projected["command"])[:-1] + [str(tmp_path / "projected")]  # the CLI, into a new folder
    run_command(shlex.join(again), served)
    assert (tmp_path / "projected" / "recon-000.png").read_bytes() == base64.b64decode(projected["recon"])
    edited = generate(url, run=0, projection=projected["projection"], edits={"hair": 2})
    assert edited.status_code == 200, edited.text
    data = edited.json()
    assert "--w" in data["command"] and "--edit hair=2" in data["command"]
    image = data["images"][0]
    assert base64.b64decode(image["png"]) == run_command(data["command"], served)[image["name"]]
    unedited = generate(url, run=0, projection=projected["projection"]).json()["images"][0]["png"]
    assert unedited == projected["recon"]
    second = wait_for(url, upload(url, face.read_bytes()).json()["job"])["result"]
    walk = httpx.post(f"{url}/api/interpolate", json={"run": 0, "frames": 3,
                                                      "projections": [projected["projection"], second["projection"]]})
    assert walk.status_code == 200, walk.text
    command = walk.json()["command"]
    assert command.count("--w ") == 2
    assert base64.b64decode(walk.json()["gif"]) == run_command(command, served)["interpolation.gif"]


@pytest.mark.parametrize("data, status, message", [
    (b"", 400, "at most 10 MB"),
    (b"not an image at all", 400, "not a usable image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, 400, "not a usable image"),
    (b"x" * (10 * 2**20 + 1), 413, "larger than 10 MB"),
])
def test_bad_uploads_are_refused(url, data, status, message):
    started = upload(url, data)
    if started.status_code == 200:  # refused when the job runs: the upload is read first
        started = wait_for(url, started.json()["job"])
        assert started["done"] and message in started["error"], started
    else:
        assert started.status_code == status and message in started.json()["error"], started.text


def test_projection_requests_are_checked(url):
    assert upload(url, b"x", "?run=9").status_code == 400
    assert upload(url, b"x", "").json()["error"] == "give the run as ?run=N."
    assert httpx.get(f"{url}/api/jobs/../../etc").status_code == 404
    assert httpx.get(f"{url}/api/jobs/0123456789abcdef").status_code == 404
    missing = generate(url, run=0, projection="0123456789abcdef")
    assert missing.status_code == 400 and "no such projected face" in missing.json()["error"]


def test_the_page_projects_an_upload_and_edits_it(page, faces16, tmp_path):
    from animegen.data.store import load_split
    from PIL import Image

    face = tmp_path / "face.png"
    Image.fromarray(load_split(faces16, "test")[1]).save(face)
    before = first_image(page)
    page.set_input_files("#upload", str(face))
    page.wait_for_selector("#projected:not([hidden])", timeout=120_000)
    projected = changed(page, before)
    assert page.locator("#grid img").count() == 1 and "dB" in page.locator("#psnr").inner_text()
    assert page.locator("#recon").get_attribute("src") == projected
    page.locator("[data-direction=hair]").fill("-3")
    changed(page, projected)
    assert "--w" in page.locator("#command").inner_text()
    (tmp_path / "junk.png").write_bytes(b"not an image")
    page.set_input_files("#upload", str(tmp_path / "junk.png"))
    page.wait_for_function("() => document.querySelector('#message').textContent.includes('not a usable image')")
    page.click("#interpolate")
    page.wait_for_selector("#strip-box:not([hidden])")
    assert "animegen interpolate" in page.locator("#strip-command").inner_text()
    assert page.foreign == [] and all("400" in e for e in page.console_errors), page.console_errors


def test_serve_shows_the_checkpoint_it_serves(faces16, served, tmp_path):
    """`serve --checkpoint` serves that checkpoint of each run, and its commands name it."""
    run = served / "sg2-two-steps"
    result = CliRunner().invoke(main, ["train", "stylegan2", "--data", str(faces16), "--out", str(run), "--preset", "tiny",
                                       "--steps", "2", "--device", "cpu", "--set", "ckpt_every=1", "--set", "keep=2"])
    assert result.exit_code == 0, result.output
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(served)
        first, last = (Studio([str(run)], device="cpu", work=tmp_path / w, checkpoint=c).generate({"run": 0, "seed": 4})
                       for w, c in (("a", "1"), ("b", "last")))
    assert "--checkpoint 1" in first["command"] and "--checkpoint" not in last["command"]
    assert first["images"][0]["png"] != last["images"][0]["png"]
    assert run_command(first["command"], served)["seed000004.png"] == first["images"][0]["png"]
