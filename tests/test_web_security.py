"""`animegen serve` against other web pages and malformed requests (docs/web.md, Security):
what a page elsewhere can make the browser send changes nothing and computes nothing, every
malformed request is a 4xx with one line (security headers included), uploads are bounded in
pixels and the work folder in bytes, no link leads a write out of it, and no answer tells where
the server keeps its files."""

import dataclasses
import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from PIL import Image
from test_web import upload, wait_for

from animegen.cli import main
from animegen.errors import UserError
from animegen.web.app import BackgroundServer, create_app
from animegen.web.studio import MAX_DIRECTIONS, MAX_UPLOAD_PIXELS, Studio
from animegen.web.workfolder import WorkFolder

pytestmark = pytest.mark.usefixtures("one_thread")

UPLOAD = {"X-Animegen-Request": "1"}
JSON = {"Content-Type": "application/json"}
EVIL = "http://evil.com"
SECURITY_HEADERS = {"content-security-policy": "default-src 'none'", "x-content-type-options": "nosniff",
                    "referrer-policy": "no-referrer", "cache-control": "no-store",
                    "cross-origin-resource-policy": "same-origin", "x-frame-options": "DENY"}


@pytest.fixture(scope="module")
def served(tmp_path_factory, faces16):
    """The folder `serve` is started in; the run lies in runs/sg2 under it."""
    root = tmp_path_factory.mktemp("served")
    result = CliRunner().invoke(main, ["train", "stylegan2", "--data", str(faces16), "--out", str(root / "runs/sg2"),
                                       "--preset", "tiny", "--steps", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return root


def serve(served: Path, work: Path) -> Studio:
    """The studio as `serve runs/sg2 --work WORK` started in `served` makes it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(served)
        return Studio(["runs/sg2"], work=work)


@pytest.fixture(scope="module")
def studio(served):
    return serve(served, served / "animegen-studio")


@pytest.fixture(scope="module")
def url(studio):
    with BackgroundServer(create_app(studio)) as base:
        yield base


def face_png(side: int = 24, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (side, side), 90).save(buffer, format="PNG")  # flat: 8192² in L is 84 KB
    return buffer.getvalue()


def fingerprint(folder: Path) -> dict[str, str]:
    """Every file under `folder`: its path and a hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_line_refusal(answer: httpx.Response) -> None:
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text)
    message = answer.json()["error"]
    assert message and "\n" not in message and "Traceback" not in answer.text
    assert_security_headers(answer)


def assert_security_headers(answer: httpx.Response) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert value in answer.headers.get(name, ""), (answer.request.url, name, answer.headers)


# What a page elsewhere would send. A JSON route of the studio needs Content-Type:
# application/json and an upload the X-Animegen-Request header; with fetch(mode: "no-cors") or a
# form a page can send neither, so the first two shapes are all it can do. The others would need
# the server to approve a preflight (it never does) and are refused anyway.
CROSS_SITE = {
    "text/plain, as curl sends it": {"Content-Type": "text/plain"},
    "form post": {"Content-Type": "application/x-www-form-urlencoded"},
    "no-cors fetch": {"Content-Type": "text/plain", "Origin": EVIL, "Sec-Fetch-Site": "cross-site",
                      "Sec-Fetch-Mode": "no-cors"},
    "foreign Origin": {**JSON, **UPLOAD, "Origin": EVIL},
    "Sec-Fetch-Site cross-site": {**JSON, **UPLOAD, "Sec-Fetch-Site": "cross-site"},
    "another port of 127.0.0.1": {**JSON, **UPLOAD, "Origin": "http://127.0.0.1:1", "Sec-Fetch-Site": "same-site"},
    "Origin null (a sandboxed frame)": {**JSON, **UPLOAD, "Origin": "null"},
}
ROUTES = {  # each would compute, and fit would replace the saved direction sefa0
    "generate": ("/api/generate", b'{"run": 0, "seed": 1, "count": 4}'),
    "interpolate": ("/api/interpolate", b'{"run": 0, "seeds": [1, 2], "frames": 4}'),
    "fit": ("/api/directions/fit", b'{"run": 0, "name": "sefa0", "positive": [0,1,2,3,4,5,6,7,8,9], '
                                   b'"negative": [20,21,22,23,24,25,26,27,28,29]}'),
    "project": ("/api/project?run=0", face_png()),
}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("shape", CROSS_SITE)
def test_requests_from_other_pages_change_and_compute_nothing(url, served, route, shape):
    path, body = ROUTES[route]
    before = fingerprint(served / "animegen-studio")
    answer = httpx.post(url + path, content=body, headers=CROSS_SITE[shape], timeout=60)
    assert_one_line_refusal(answer)
    assert fingerprint(served / "animegen-studio") == before


@pytest.mark.parametrize("route", ROUTES)
def test_the_same_requests_from_the_studios_page_pass(url, route):
    """So the refusals above are the gate's, not the studio's (and a charset is fine)."""
    path, body = ROUTES[route]
    json_with_charset = {"Content-Type": "application/json; charset=utf-8"}
    kind = UPLOAD | {"Content-Type": "image/png"} if route == "project" else json_with_charset
    answer = httpx.post(url + path, content=body, headers={**kind, "Origin": url, "Sec-Fetch-Site": "same-origin"},
                        timeout=60)
    assert answer.status_code == 200, answer.text
    if route == "project":
        assert "error" not in wait_for(url, answer.json()["job"])


def test_the_page_opens_from_a_link_elsewhere_and_nothing_else_does(url):
    for site in ("none", "cross-site"):  # typed in the address bar; a link on another site
        page = httpx.get(url + "/", headers={"Sec-Fetch-Site": site, "Sec-Fetch-Mode": "navigate"})
        assert page.status_code == 200 and "<html" in page.text.lower()
        assert_security_headers(page)
    assert httpx.get(f"{url}/api/runs", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    preflight = httpx.options(f"{url}/api/generate", headers={"Origin": EVIL, "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 403 and "access-control-allow-origin" not in preflight.headers


def nested(depth: int) -> bytes:
    return b'{"run": ' + b"[" * depth + b"]" * depth + b"}"


MALFORMED = {
    "lone surrogate in a key": ("/api/generate", b'{"\\ud800": 1}'),
    "lone surrogate in a value": ("/api/generate", b'{"run": 0, "options": {"noise_mode": "\\udc00"}}'),
    "lone surrogate in a name": ("/api/directions/fit", b'{"run": 0, "name": "x\\ud83d", "positive": [1]}'),
    "30,000 nested brackets": ("/api/generate", nested(30_000)),
    "9 nested lists": ("/api/generate", nested(9)),
    "bad UTF-8": ("/api/generate", b'{"run": "\xff"}'),
    "UTF-16": ("/api/generate", '{"run": 0}'.encode("utf-16")),
    "5000-digit number": ("/api/generate", b'{"seed": ' + b"9" * 5000 + b"}"),
    "infinite run": ("/api/generate", b'{"run": 1e999}'),
    "NaN strength": ("/api/generate", b'{"run": 0, "edits": {"sefa0": NaN}}'),
    "not an object": ("/api/interpolate", b'"run"'),
    "empty": ("/api/directions/fit", b""),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_json_request_is_a_400_with_one_line(url, case, capfd):
    path, body = MALFORMED[case]
    answer = httpx.post(url + path, content=body, headers=JSON, timeout=60)
    assert answer.status_code == 400
    assert_one_line_refusal(answer)
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("query", ["?run=²", "?run=٣", "?run=" + "9" * 5000, "?run=%ff", "?run=-1", "?run=0x1", ""])
def test_a_malformed_run_number_is_a_400_with_one_line(url, query, capfd):
    answer = upload(url, face_png(), query)
    assert answer.status_code == 400 and answer.json()["error"] == "give the run as ?run=N."
    assert_one_line_refusal(answer)
    assert "Traceback" not in capfd.readouterr().err


WRONG = [None, True, "0", "²", -1, 1.5, 1e308, [], {}, [[0]], {"x": 0}, "\u0000"]
VALID = {"/api/generate": {"run": 0, "seed": 1, "count": 1, "view": "main", "plane": [1, 2], "options": {},
                           "edits": {"sefa0": 1}},
         "/api/interpolate": {"run": 0, "seeds": [1, 2], "frames": 2, "options": {}, "edits": {}},
         "/api/directions/fit": {"run": 0, "name": "x", "positive": [1], "negative": [2]}}


def test_a_value_of_any_wrong_type_is_a_4xx_with_one_line(url, capfd):
    with httpx.Client(timeout=60) as client:
        for path, valid in VALID.items():
            for key in valid:
                for wrong in WRONG:
                    answer = client.post(url + path, json={**valid, key: wrong})
                    if answer.status_code != 200:  # some are right for some keys ("0" is a name)
                        assert_one_line_refusal(answer)
    assert "Traceback" not in capfd.readouterr().err


def test_every_other_refusal_carries_the_headers_too(url):
    for answer, status in [(httpx.get(f"{url}/nope"), 404), (httpx.get(f"{url}/api/generate"), 405),
                           (httpx.post(f"{url}/api/generate", content=b" " * (65 * 1024), headers=JSON), 413),
                           (httpx.get(url + "/", headers={"Host": "attacker.example"}), 403),
                           (httpx.post(f"{url}/api/generate", content=b"{}"), 415),
                           (httpx.post(f"{url}/api/project?run=0", content=face_png()), 403)]:
        assert answer.status_code == status
        assert_one_line_refusal(answer)


class Failing:
    """A studio whose describe() fails: with a bug, or with a UserError holding a lone surrogate,
    which (as a request's "\\ud800" once did) makes writing the 400 itself fail, past the route's guard."""

    def __init__(self, failure: Exception):
        self.failure = failure

    def describe(self):
        raise self.failure


@pytest.mark.parametrize("failure", [RuntimeError("a bug"), UserError("name 'x\udc80' is refused")])
def test_an_internal_error_is_a_500_with_one_line_and_the_headers(failure, capfd):
    with BackgroundServer(create_app(Failing(failure))) as base:
        answer = httpx.get(f"{base}/api/runs")
    assert answer.status_code == 500 and answer.json() == {"error": "internal error"}
    assert_security_headers(answer)
    console = capfd.readouterr().err
    assert "Traceback" not in console and len([line for line in console.splitlines() if "internal error" in line]) == 1


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="measures the peak RSS in /proc (Linux)")
def test_an_8192_square_upload_is_refused_from_its_header(url, tmp_path):
    """A flat 8192² PNG is 84 KB; decoding and saving it as the studio did raised the peak RSS
    by 705 MB. Now its size is read from the header and it is refused (measured: +1 MB), while
    an upload at the cap (4096², MAX_UPLOAD_PIXELS) decodes in +225 MB."""
    bomb, largest = tmp_path / "bomb.png", tmp_path / "largest.png"
    bomb.write_bytes(face_png(8192, "L"))
    largest.write_bytes(face_png(4096))
    grown = {file: peak_rss_growth(file) for file in (bomb, largest)}
    assert grown[bomb][0] < 16 and "refused" in grown[bomb][1], grown
    assert grown[largest][0] < 300 and grown[largest][1] == "decoded", grown
    started = upload(url, bomb.read_bytes())
    assert started.status_code == 200
    job = wait_for(url, started.json()["job"])
    assert f"limit {MAX_UPLOAD_PIXELS} pixels" in job["error"] and "8192x8192" in job["error"], job


MEASURE = """
import sys
from animegen.data.images import BadImage
from animegen.data.prepare import decode_large_enough

def peak():  # this process's peak RSS in MB (ru_maxrss would start at the parent's)
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM:")).split()[1]) // 1024

data = open(sys.argv[1], "rb").read()
before = peak()
try:
    decode_large_enough(data, 16, int(sys.argv[2]))
    outcome = "decoded"
except BadImage as e:
    outcome = str(e)
print(peak() - before, outcome)
"""


def peak_rss_growth(file: Path) -> tuple[int, str]:
    """MB by which decoding `file` as the studio does raises the peak RSS of a fresh process, and
    the outcome. A fresh process: in this one, freed memory would be reused unseen."""
    out = subprocess.run([sys.executable, "-c", MEASURE, str(file), str(MAX_UPLOAD_PIXELS)], capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}).stdout
    grown, outcome = out.strip().split(" ", 1)
    return int(grown), outcome


def test_no_answer_tells_where_the_server_keeps_its_files(url, served, tmp_path_factory):
    base = str(tmp_path_factory.getbasetemp())
    card = httpx.get(f"{url}/api/runs").json()[0]["card"]
    assert card["dataset"].startswith("faces16 (content hash ")
    job = wait_for(url, upload(url, face_png()).json()["job"])
    projection = job["result"]["projection"]
    marked = {"run": 0, "name": "bright", "positive": list(range(10)), "negative": list(range(50, 60))}
    fit = httpx.post(f"{url}/api/directions/fit", json=marked, timeout=60)
    assert fit.json()["file"] == "animegen-studio/0-sg2/directions.safetensors"
    edited = {"run": 0, "projection": projection, "edits": {"bright": 1}}
    answers = [httpx.get(f"{url}/api/runs").text, job["result"]["command"], fit.text,
               httpx.post(f"{url}/api/generate", json=edited).text,
               httpx.post(f"{url}/api/interpolate", json={"run": 0, "seeds": [1, 2], "edits": {"bright": 1}}).text]
    assert not [text for text in answers if base in text]
    uploaded = f"animegen-studio/0-sg2/uploads/{projection}.png"
    assert job["result"]["command"].startswith(f"animegen project runs/sg2 {uploaded}")
    assert "--directions animegen-studio/0-sg2/directions.safetensors" in answers[3]


def test_uploads_go_oldest_first_when_the_work_folder_is_full(served, tmp_path):
    studio = serve(served, tmp_path / "work")
    first = studio.project(0, face_png())["projection"]
    studio.work.limit = sum(f.stat().st_size for f in tmp_path.rglob("*") if f.is_file()) - 1
    second = studio.project(0, face_png())["projection"]
    run = studio.work.root / "0-sg2"
    assert [p.stem for p in (run / "uploads").iterdir()] == [second]
    assert [p.name for p in (run / "projections").iterdir()] == [second]
    assert (run / "directions.safetensors").is_file()  # never deleted
    with pytest.raises(UserError, match="no such projected face"):  # forgotten with its files
        studio.generate({"run": 0, "projection": first})
    assert studio.generate({"run": 0, "projection": second})["images"]


def test_fits_cannot_grow_the_directions_of_a_run_without_bound(studio, monkeypatch):
    run = studio.runs[0]
    sefa0 = run.directions["sefa0"]
    full = {f"d{i}": dataclasses.replace(sefa0, name=f"d{i}", vector=sefa0.vector.clone())  # none shared, to be saved
            for i in range(MAX_DIRECTIONS)}
    monkeypatch.setattr(run, "directions", full)
    marked = {"run": 0, "positive": list(range(10)), "negative": list(range(50, 60))}
    with pytest.raises(UserError, match=f"this run has {MAX_DIRECTIONS} directions"):
        studio.fit({**marked, "name": "new"})
    assert studio.fit({**marked, "name": "d3"})["direction"]["name"] == "d3"  # refitting one still works


def make_upload(folder: Path, key: str, size: int, age: float) -> None:
    (folder / "uploads").mkdir(parents=True, exist_ok=True)
    (folder / "projections" / key).mkdir(parents=True)
    (folder / "uploads" / f"{key}.png").write_bytes(b"u" * size)
    (folder / "projections" / key / "latents.npz").write_bytes(b"p" * size)
    for path in (folder / "uploads" / f"{key}.png", folder / "projections" / key):
        os.utime(path, (age, age))


def test_cleaning_the_work_folder_follows_no_link(tmp_path):
    outside = tmp_path / "outside"
    (outside / "uploads").mkdir(parents=True)
    big = outside / "uploads" / f"{'f' * 16}.png"
    big.write_bytes(b"x" * 10_000)
    work = WorkFolder(tmp_path / "work", limit=3_000)
    run = work.root / "0-sg2"
    make_upload(run, "a" * 16, 500, 1000)
    make_upload(run, "b" * 16, 500, 2000)
    make_upload(run, "c" * 16, 500, 3000)
    (run / "directions.safetensors").write_bytes(b"d" * 1000)  # 4000 bytes in all
    link = run / "uploads" / f"{'e' * 16}.png"
    link.symlink_to(big)  # the oldest; it counts nothing and is deleted as a link
    os.utime(link, (500, 500), follow_symlinks=False)
    (work.root / "1-elsewhere").symlink_to(outside)  # never entered
    assert work.make_room() == {"a" * 16, "e" * 16}
    assert sorted(p.name for p in (run / "projections").iterdir()) == ["b" * 16, "c" * 16]
    assert big.read_bytes() == b"x" * 10_000 and (run / "directions.safetensors").exists()
    work.limit = 500
    with pytest.raises(UserError, match="holds 0 MB besides uploads, over its limit"):
        work.make_room()


def test_a_link_out_of_the_work_folder_is_refused(served, tmp_path):
    precious = tmp_path / "precious"
    precious.write_text("keep me")
    work = tmp_path / "work"
    (work / "0-sg2").mkdir(parents=True)
    (work / "0-sg2" / "directions.safetensors").symlink_to(precious)  # as a checked-out folder could hold
    with pytest.raises(UserError, match=r"0-sg2/directions.safetensors leads out of the work folder"):
        serve(served, work)
    assert precious.read_text() == "keep me"
    inside = WorkFolder(work)
    (work / "loop").symlink_to(work / "loop")
    (work / "here").symlink_to(work / "0-sg2")
    assert inside.inside(work / "here" / "x") == work / "here" / "x"
    for path in (work / "loop" / "x", work / ".." / "x", Path("/etc/passwd")):
        with pytest.raises(UserError, match="leads out of the work folder"):
            inside.inside(path)
