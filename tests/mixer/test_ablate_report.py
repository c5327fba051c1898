import base64
import io
import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from mixer.ablate import VariantResult, grid_variants, random_variants, write_report

SHARES = [0.1, 0.2, 0.4, 0.7]


def grid_results():
    """A synthetic OCR-share grid (a test input): OCR loss 3.0 - 10/6 × (share - 0.1), a failed variant, curves."""
    variants = grid_variants({"caps": 3, "ocr": 1}, "ocr", SHARES)
    out = []
    for i, v in enumerate(variants):
        ocr = v.mixture["ocr"]
        out.append(
            VariantResult(
                v.name,
                v.mixture,
                "ok",
                realised_shares=dict(v.mixture),
                eval_loss={"caps": 2.0 + 0.5 * ocr, "ocr": 3.0 - (ocr - 0.1) / 0.6},
                eval_accuracy={"caps": None, "ocr": 0.1 + ocr / 2},
                tokens_seen=4096 * (i + 1),
                wall_time_s=1.5,
                loss_curve=list(np.linspace(6.0, 2.0 + ocr, 30)),
            )
        )
    out[3] = VariantResult.failed(variants[3], "RuntimeError: out of memory", 0.25)
    return out


class Rows(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.images = [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and a.get("id"):
            self.ids.append(a["id"])
        if tag == "img":
            self.images.append(a["src"])


def assert_not_blank(png: bytes):
    img = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
    assert img.shape[0] > 200 and img.shape[1] > 300
    assert (img < 200).mean() > 0.01  # enough drawn (non-white) pixels
    assert img.var() > 0


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("ablations") / "ocr_share"
    results = grid_results()
    return results, write_report("ocr_share", results, out, varied="ocr")


def test_report_writes_every_file_and_non_blank_plots(report):
    _, paths = report
    assert set(paths) == {"markdown", "html", "results", "loss_vs_share", "loss_curves", "fit"}
    assert {p.name for p in paths.values()} == {
        "report.md",
        "report.html",
        "results.json",
        "loss_vs_share.png",
        "loss_curves.png",
        "fit.png",
    }
    for key in ("loss_vs_share", "loss_curves", "fit"):
        assert_not_blank(paths[key].read_bytes())


def test_html_is_self_contained_with_a_row_per_variant(report):
    results, paths = report
    parser = Rows()
    parser.feed(paths["html"].read_text())
    assert [i for i in parser.ids if i.startswith("variant-")] == [f"variant-{r.name}" for r in results]
    assert len(parser.images) == 3
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        assert_not_blank(base64.b64decode(src.split(",", 1)[1]))
    html = paths["html"].read_text()
    assert "ocr-0.4: RuntimeError: out of memory" in html
    assert "PREDICTION" in html and "not a measurement" in html


def test_markdown_table_trends_and_prediction(report):
    results, paths = report
    md = paths["markdown"].read_text()
    assert md.startswith("# Ablation ocr_share\n")
    assert (
        "| variant | status | share caps | share ocr | loss caps | loss ocr | acc ocr | mean loss | tokens | wall s |"
        in md
    )
    assert "| ocr-0.1 | ok | 90.0% | 10.0% | 2.0500 | 3.0000 | 15.0% | 2.5250 | 8,192 | 1.5 |" in md
    assert "| ocr-0.4 | failed | 60.0% | 40.0% | — | — | — | — | — | 0.2 |" in md
    assert len(re.findall(r"^\| (declared|ocr-[0-9.]+) \|", md, flags=re.M)) == len(results)
    # measured trend of the OCR loss over the ocr share: exact values of the synthetic law, slope -10/6 per unit
    assert "ocr: eval loss 3.0000 at ocr share 10.0% → 2.0000 at 70.0% (slope -0.1667 per +10 points" in md
    assert re.search(r"PREDICTION \((linear|loglinear) law, lowest leave-one-out error\)", md)
    for png in ("loss_vs_share.png", "loss_curves.png", "fit.png"):
        assert f"]({png})" in md


def test_results_json_holds_every_variant_and_the_labelled_prediction(report):
    results, paths = report
    data = json.loads(paths["results"].read_text())
    assert data["name"] == "ocr_share" and data["varied"] == "ocr"
    assert [v["name"] for v in data["variants"]] == [r.name for r in results]
    restored = [
        VariantResult.from_dict({k: v for k, v in d.items() if k != "mean_eval_loss"}) for d in data["variants"]
    ]
    assert restored == results
    assert data["variants"][3]["status"] == "failed" and data["variants"][3]["mean_eval_loss"] is None
    assert [f["law"] for f in data["fits"]] and data["fits"][0]["n_variants"] == 4
    pred = data["prediction"]
    assert pred["law"] == data["fits"][0]["law"] and "not a measurement" in pred["note"]
    assert sum(pred["mixture"].values()) == pytest.approx(1.0)
    assert 0.1 - 1e-9 <= pred["mixture"]["ocr"] <= 0.7 + 1e-9


def test_a_sweep_with_too_few_finished_variants_still_reports(tmp_path):
    vs = random_variants({"a": 1, "b": 1}, 2, 5.0, seed=0)
    results = [VariantResult(vs[0].name, vs[0].mixture, "ok", eval_loss={"a": 1.0, "b": 2.0})]
    results += [VariantResult.failed(v, "ValueError: no shards") for v in vs[1:]]
    paths = write_report("tiny", results, tmp_path, varied=None)
    assert "fit" not in paths
    md = paths["markdown"].read_text()
    assert "Not fitted: a fit needs at least 3 finished variants" in md
    assert json.loads(paths["results"].read_text())["prediction"] is None
    assert_not_blank(paths["loss_vs_share"].read_bytes())
