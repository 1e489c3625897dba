"""`animegen serve` on a run of every registered family: the studio starts (whatever the family
can do: a family without SeFa gets no sliders, not a refusal), describes each run's controls
from the family's own option spec, renders its default images and the image its command writes,
and the page (headless Chromium) builds every run's controls and shows its images."""

import base64
import os
import shlex
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from animegen.cli import main
from animegen.models import registry
from animegen.training.loop import Target, train
from animegen.web.app import BackgroundServer, create_app
from animegen.web.studio import Studio

FAMILIES = registry.names()
# Smaller networks where a family's tiny preset is slow at 16 px (the rest: the tiny preset).
SMALLER = {"ddpm": {"base_channels": 8, "channel_mults": [1, 2], "attention_resolutions": [8], "num_groups": 4,
                    "time_embed_dim": 16, "timesteps": 50, "sample_steps": 4}}
CHROMIUM = Path(os.environ.get("ANIMEGEN_CHROMIUM", "/usr/bin/chromium"))

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, faces16):
    root = tmp_path_factory.mktemp("runs")
    for family in FAMILIES:
        train(str(root / family), model=family, data=str(faces16), target=Target(steps=1), device="cpu",
              sets={"batch": 4, "sample_every": "0", "tensorboard": False, "grid_seeds": 1, **SMALLER.get(family, {})},
              echo=lambda line: None)
    return root


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Where `serve` is started: the studio shows its paths relative to here, so its commands run here."""
    return tmp_path_factory.mktemp("served")


@pytest.fixture(scope="module")
def url(runs, served):
    old = os.getcwd()
    os.chdir(served)
    try:
        studio = Studio([str(runs / f) for f in FAMILIES], device="cpu", work="animegen-studio")
    finally:
        os.chdir(old)
    with BackgroundServer(create_app(studio)) as base:
        yield base


@pytest.mark.parametrize("index, family", list(enumerate(FAMILIES)))
def test_every_family_is_described_and_rendered_as_its_command_writes(url, served, index, family, monkeypatch):
    described = httpx.get(f"{url}/api/runs").json()[index]
    assert described["card"]["family"] == family
    options = {o["name"]: o for o in described["controls"]["options"]}
    assert options.keys() == {o.name for o in registry.model_class(family).options}
    answer = httpx.post(f"{url}/api/generate", json={"run": index, "seed": 3, "count": 2}, timeout=120)
    assert answer.status_code == 200, answer.text
    images = answer.json()["images"]
    assert [i["seed"] for i in images] == [3, 4]
    command = shlex.split(answer.json()["command"])
    out = command[command.index("--out") + 1] = f"samples-{index}"  # one folder per family
    monkeypatch.chdir(served)
    result = CliRunner().invoke(main, [*command[1:], "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert base64.b64decode(images[0]["png"]) == (served / out / "seed000003.png").read_bytes()


def test_the_page_builds_every_familys_controls(url):
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt install chromium, or set ANIMEGEN_CHROMIUM)")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                          "--no-first-run"])
        page = browser.new_context().new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        page.wait_for_selector("#grid img")
        for index, family in enumerate(FAMILIES):
            before = page.locator("#grid img").first.get_attribute("src") if index else None
            page.select_option("#run", str(index))
            if index:
                page.wait_for_function("b => document.querySelector('#grid img').src !== b", arg=before,
                                       timeout=120_000)
            for option in registry.model_class(family).options:
                assert page.locator(f"#{option.name}").count() == 1, (family, option.name)
        browser.close()
    assert errors == [], errors
