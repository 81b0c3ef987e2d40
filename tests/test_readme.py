"""The README's quickstart cannot rot: every `matryoshka` and `mexport` command shown under
"Quickstart" runs here, in the order shown, on test-sized data and models (a tiny BERT for
the pretrained encoder, a small CSV for the mails and reviews, one epoch), and must exit 0.
The README itself stays within 300 lines."""

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from matryoshka.cli import cli, mexport

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# what a quickstart line may be besides a matryoshka command: fetches and servers that CI
# runs elsewhere (scripts/test.sh fetches, tests/test_js_examples.py runs the JS examples)
OTHER = ("bash scripts/", "node examples/", "python -m http.server")
# test-sized runs: appended options win over the README's own (click keeps the last value)
SMALLER = {"train": ["--epochs", "1", "--no-progress"], "bench": ["--iters", "3", "--warmup",
                                                                 "0", "--no-progress"],
           "calibrate": ["--no-progress"]}
PRETRAINED_SIZE = ["--max-len", "32", "--train-rows", "200"]


def quickstart_commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" # ")[0].strip()
            if line:
                commands.append(line)
    return commands


def test_the_readme_is_a_front_door():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 300
    commands = quickstart_commands()
    assert sum(c.startswith(("matryoshka ", "mexport ")) for c in commands) >= 12
    assert all(c.startswith(("matryoshka ", "mexport ", *OTHER)) for c in commands), commands


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, demo_data):
    from tests.model.tiny_bert import labelled_csv, make_tiny_bert, texts
    from tests.test_text_pipeline import pets_csv

    d = tmp_path_factory.mktemp("readme")
    (d / "artifacts" / "data").mkdir(parents=True)
    (d / "artifacts" / "pretrained").mkdir()
    labelled_csv(d / "artifacts" / "data" / "spam.csv", n=700)
    make_tiny_bert(d / "artifacts" / "pretrained" / "all-MiniLM-L6-v2", hidden=384, heads=12,
                   ffn=768)  # MiniLM's width and heads: the README's levels are its widths
    reviews = pets_csv(d / "reviews.csv", n=700)
    reviews.write_text(reviews.read_text().replace("body,animal", "review,stars", 1))
    (d / "new-reviews.txt").write_text("\n".join(texts(30)) + "\n")
    (d / "mails.txt").write_text("\n".join(texts(5)) + "\n")
    np.save(d / "digits.npy", demo_data["test"][0][:20])
    return d


def run_line(line: str, d: Path):
    words = shlex.split(line)
    redirect = None
    if ">" in words:
        at = words.index(">")
        words, redirect = words[:at], d / words[at + 1]
    local = [str(d / w) if (d / w).exists() or w.startswith("artifacts/") else w
             for w in words]
    command, args = (mexport, local[1:]) if local[0] == "mexport" else (cli, local[1:])
    verb = "export" if command is mexport else args[0]
    extra = list(SMALLER.get(verb, []))
    if verb == "train" and ("--pretrained" in args or "--init-from" in args):
        extra += PRETRAINED_SIZE
    if command is mexport:
        extra += ["--no-progress"]
    r = CliRunner().invoke(command, [*args, *extra])
    assert r.exit_code == 0, f"{line}\n{r.output}"
    if redirect is not None:
        redirect.write_text(r.stdout)
    return r


def test_every_quickstart_command_runs(workspace):
    import json

    ran = 0
    for line in quickstart_commands():
        if line.startswith(OTHER):
            continue
        r = run_line(line, workspace)
        ran += 1
        if "--json" in line:
            assert len(json.loads((workspace / "answers.json").read_text())["labels"]) == 30
        if "predict" in line and "--text" in line:
            assert "rows answered by level" in r.stdout
    assert ran >= 12
    manifest = json.loads((workspace / "artifacts" / "minilm" / "export" /
                           "manifest.json").read_text())
    assert [lv["name"] for lv in manifest["levels"]] == ["96", "192", "288", "384"]
    assert "calibration" in manifest
