"""cnnrt-run on folders and many files: batches, --out CSV/JSONL, bad images skipped."""
import csv
import json
import os
import shutil

import numpy as np
import pytest

import cnnrt
from cnnrt.cli import main_run

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.join(os.path.dirname(HERE), "models")
DIGITS = os.path.join(MODELS, "digits.h5")


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    for i in range(10):
        shutil.copy(os.path.join(MODELS, "samples", f"digit_{i}.png"),
                    (root / "sub" if i % 3 == 0 else root) / f"d{i}.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (root / "notes.txt").write_text("not an image, not listed")
    return root


def expected_paths(root):
    found = []
    for r, dirs, files in os.walk(root):
        dirs.sort()
        found += [os.path.join(r, f) for f in files if f.endswith(".png")]
    return sorted(found)


@pytest.mark.parametrize("batch", [1, 3, 64])
def test_csv_rows_in_order(folder, tmp_path, capsys, batch):
    out = tmp_path / "res.csv"
    code = main_run([DIGITS, str(folder), "--batch", str(batch), "--out", str(out), "--top", "2"])
    assert code == 1  # one bad image
    err = capsys.readouterr().err
    assert "broken.png" in err and "wrote 10 row(s)" in err
    rows = list(csv.reader(open(out)))
    assert rows[0] == ["path", "label", "score", "index", "label_2", "score_2", "index_2"]
    paths = [p for p in expected_paths(folder) if not p.endswith("broken.png")]
    assert [r[0] for r in rows[1:]] == paths
    model = cnnrt.load(DIGITS)
    for r in rows[1:]:
        probs = model.predict_image(r[0])
        assert int(r[3]) == int(np.argmax(probs)) and r[1] == model.labels[int(r[3])]
        assert float(r[2]) == pytest.approx(float(probs.max()), rel=1e-5)


def test_jsonl_and_files_and_dirs_mixed(folder, tmp_path):
    out = tmp_path / "res.jsonl"
    one = os.path.join(MODELS, "samples", "digit_5.png")
    assert main_run([DIGITS, one, str(folder / "sub"), "--out", str(out)]) == 0
    recs = [json.loads(line) for line in open(out)]
    assert [r["path"] for r in recs] == [one] + expected_paths(folder / "sub")
    assert recs[0]["top"][0]["label"] == "5"


def test_print_mode_accepts_folders(folder, capsys):
    assert main_run([DIGITS, str(folder / "sub"), "--batch", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [l.split(":")[0] for l in lines] == expected_paths(folder / "sub")
    assert lines[0].endswith(")") and ": 0 (" in lines[0]


def test_bad_out_and_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main_run([DIGITS, str(tmp_path / "empty")]) == 1
    assert "no image files" in capsys.readouterr().err
    assert main_run([DIGITS, os.path.join(MODELS, "samples"), "--out", str(tmp_path / "r.txt")]) == 1
    assert ".csv or .jsonl" in capsys.readouterr().err
    assert not (tmp_path / "r.txt").exists()
    assert main_run([DIGITS, os.path.join(MODELS, "samples"), "--batch", "0"]) == 2


def test_existing_out_untouched_when_interrupted(tmp_path, monkeypatch):
    out = tmp_path / "res.csv"
    out.write_text("old results\n")
    import cnnrt.model as model_mod

    def boom(self, x, threads=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(model_mod.Model, "predict", boom)
    assert main_run([DIGITS, os.path.join(MODELS, "samples"), "--out", str(out)]) == 130
    assert out.read_text() == "old results\n"
    assert sorted(os.listdir(tmp_path)) == ["res.csv"]
