import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

import mixer.inspect as inspect_mod
from mixer.cli import app
from mixer.inspect import coverage, inspect_build, scan_lengths, usable_samples
from mixer.inspect.plots import write_plots
from mixer.inspect.text import pct, render
from mixer.lengths import LENGTH_SCHEMA
from mixer.plan import PlanSpec, SourceInput, plan_stage
from mixer.planning import UNUSABLE

CHAT_ERRORS = [5, 50, 70, 130, 150, 190, 199]  # rows whose tokenisation failed (row groups of 64 rows)


def lengths_of(name):
    """(lengths, turn_ends per sample, images) of a synthetic source; failed rows have length 0 like the real index."""
    if name == "caps":
        lens = [20 + (i * 7) % 41 for i in range(300)]
    elif name == "chat":
        lens = [0 if i in CHAT_ERRORS else 100 + (i * 37) % 500 for i in range(200)]
    else:
        lens = [300] * 40
    ends = [[] if n == 0 else [n // 2, n] for n in lens]
    images = [0 if name == "chat" and i % 3 == 0 else 1 for i in range(len(lens))]
    return np.array(lens, dtype=np.int32), ends, np.array(images, dtype=np.int8)


def write_lengths(path, name):
    lens, ends, images = lengths_of(name)
    errors = [f"tokenization mismatch in {name}-{i:05d}" if n == 0 else None for i, n in enumerate(lens)]
    table = pa.table(
        {
            "key": [f"{name}-{i:05d}" for i in range(len(lens))],
            "length": lens,
            "n_images": images,
            "turn_ends": ends,
            "error": errors,
        },
        schema=LENGTH_SCHEMA,
    )
    path.parent.mkdir(parents=True)
    pq.write_table(table, path, row_group_size=64)


def source_input(name, weight, max_epochs=None):
    lens, ends, images = lengths_of(name)
    offsets = np.concatenate([[0], np.cumsum([len(e) for e in ends])]).astype(np.int64)
    values = np.array([v for e in ends for v in e], dtype=np.int32)
    usable = np.where(lens > 0, lens, UNUSABLE).astype(np.int32)
    return SourceInput(name, weight, usable, turn_ends=(offsets, values), images=images, max_epochs=max_epochs)


STAGES = {  # name -> (index, sources with weights, spec); "zeta" comes first although it sorts last
    "zeta": (
        0,
        [("caps", 0.5, None), ("chat", 0.3, None), ("ocr", 0.2, 1.0)],
        PlanSpec(seq_len=512, weight_by="tokens", seed=3, num_sequences=200, window=16),
    ),
    "alpha": (
        1,
        [("caps", 1.0, None), ("chat", 1.0, None)],
        PlanSpec(seq_len=1024, weight_by="samples", seed=4, num_sequences=20, window=8),
    ),
}


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    out = tmp_path_factory.mktemp("inspect") / "run"
    lengths = {}
    for name in ("caps", "chat", "ocr"):
        lengths[name] = str(out / "lengths" / "plain-16-abc" / name / "lengths.parquet")
        write_lengths(out / "lengths" / "plain-16-abc" / name / "lengths.parquet", name)
    summaries = {}
    for stage, (index, srcs, spec) in STAGES.items():
        inputs = [source_input(n, w, e) for n, w, e in srcs]
        summaries[stage] = plan_stage(inputs, spec, out / "stages" / stage / "plan").to_dict()
        meta = {
            "stage": stage,
            "index": index,
            "sources": [n for n, _, _ in srcs],
            "lengths": {n: lengths[n] for n, _, _ in srcs},
            "template": "plain",
            "image_tokens": 16,
            "seq_len": spec.seq_len,
        }
        (out / "stages" / stage / "stage.json").write_text(json.dumps(meta))
    counts = {"success": 299, "failed_to_download": 1}
    build_json = {"manifest": "t", "manifest_hash": "ab12", "seconds": 1.5, "sources": {}}
    build_json["sources"]["caps"] = {"input_rows": 300, "shards": 2, "counts": counts}
    (out / "build.json").write_text(json.dumps(build_json))
    sweep = {
        "stage": "zeta",
        "variants": [
            {"name": "ocr-10", "mixture": {"caps": 0.6, "ocr": 0.1}, "eval_loss": {"caps": 2.5, "ocr": 3.25}},
            {"name": "ocr-30", "mixture": {"caps": 0.4, "ocr": 0.3}, "status": "failed", "error": "rank 0 died"},
        ],
    }
    (out / "ablations" / "sweep").mkdir(parents=True)
    (out / "ablations" / "sweep" / "results.json").write_text(json.dumps(sweep))
    (out / "ablations" / "zbroken").mkdir(parents=True)
    (out / "ablations" / "zbroken" / "results.json").write_text(json.dumps({"variants": [{"name": "x"}]}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(inspect_mod, "BATCH_ROWS", 16)  # several batches per row group: chunk boundaries are exercised
        report = inspect_build(out)
    return out, summaries, report


def test_stages_in_manifest_order_and_json_able(build):
    _, _, report = build
    assert list(report["stages"]) == ["zeta", "alpha"]
    assert json.loads(json.dumps(report)) == report


def test_shares_and_counts_equal_the_plan_summary(build):
    _, summaries, report = build
    for stage, s in summaries.items():
        st = report["stages"][stage]
        assert list(st["sources"]) == s["sources"]
        for i, name in enumerate(s["sources"]):
            got = st["sources"][name]
            assert got["declared_share"] == s["declared_shares"][i]
            assert got["realised_share"] == {by: s["realised_shares"][by][i] for by in ("samples", "tokens", "images")}
            for key in ("epochs", "samples", "tokens", "images", "truncated", "dropped"):
                assert got[key] == s[key][i], (stage, name, key)
        for key in ("packing_efficiency", "worst_window_deviation_pp", "num_sequences", "num_tokens", "exhausted"):
            assert st[key] == s[key]
    zeta = report["stages"]["zeta"]
    assert zeta["sources"]["ocr"]["exhausted"] and not zeta["sources"]["caps"]["exhausted"]
    assert sum(zeta["sources"]["chat"][k] for k in ("truncated", "dropped")) > 0  # the fixture does exercise both


def test_length_statistics_match_numpy(build):
    _, _, report = build
    for stage, (_, srcs, spec) in STAGES.items():
        for name, _, _ in srcs:
            lens = lengths_of(name)[0]
            valid = lens[lens > 0]
            got = report["stages"][stage]["lengths"][name]
            edges = got["histogram"]["edges"]
            assert got["rows"] == len(lens)
            assert sum(got["histogram"]["counts"]) == got["tokenised"] == len(valid)
            assert got["histogram"]["counts"] == np.histogram(valid, bins=edges)[0].tolist()
            assert edges[-1] > valid.max()
            assert got["deciles"] == [int(np.percentile(valid, q, method="lower")) for q in range(0, 101, 10)]
            assert got["mean"] == pytest.approx(valid.mean())
            assert got["over_seq_len"] == int((valid > spec.seq_len).sum())
    # every source of a stage shares the edges (the plot overlays them); they span the stage's longest sample
    zeta = report["stages"]["zeta"]["lengths"]
    assert zeta["caps"]["histogram"]["edges"] == zeta["chat"]["histogram"]["edges"]
    assert zeta["caps"]["histogram"]["edges"][-1] > 599


def test_tokenisation_errors_counted_with_first_keys(build):
    _, _, report = build
    chat = report["stages"]["zeta"]["lengths"]["chat"]
    assert chat["errors"] == len(CHAT_ERRORS) == report["stages"]["zeta"]["tokenisation_errors"]
    assert [e["key"] for e in chat["error_examples"]] == [f"chat-{i:05d}" for i in CHAT_ERRORS[:5]]
    assert [e["row"] for e in chat["error_examples"]] == CHAT_ERRORS[:5]
    assert chat["error_examples"][2]["error"] == "tokenization mismatch in chat-00070"
    assert report["stages"]["zeta"]["lengths"]["caps"]["errors"] == 0


def test_scan_reads_whole_file_whatever_the_batch_size(build, monkeypatch):
    out, _, _ = build
    path = str(out / "lengths" / "plain-16-abc" / "chat" / "lengths.parquet")
    monkeypatch.setattr(inspect_mod, "BATCH_ROWS", 7)
    small = scan_lengths(path)
    monkeypatch.setattr(inspect_mod, "BATCH_ROWS", 100_000)
    large = scan_lengths(path)
    assert small.counts.tolist() == large.counts.tolist()
    assert (small.rows, small.errors, small.examples) == (large.rows, large.errors, large.examples)


def test_text_shows_the_table_rows_and_findings(build):
    _, summaries, report = build
    text = render(report)
    rows = [line.split() for line in text.splitlines()]
    s = summaries["zeta"]
    for i, name in enumerate(s["sources"]):
        real = [pct(s["realised_shares"][by][i]) for by in ("samples", "tokens", "images")]
        expected = [name, pct(s["declared_shares"][i]), *real, f"{s['epochs'][i]:.2f}", f"{s['samples'][i]:,}"]
        expected += [f"{s['tokens'][i]:,}", str(s["truncated"][i]), str(s["dropped"][i])]
        assert expected in rows
    assert ["caps", "300", "2", "299", "1"] in rows  # build status: input rows, shards, success, failed_to_download
    assert f"packing efficiency {pct(s['packing_efficiency'])}" in text
    assert f"worst windowed deviation {s['worst_window_deviation_pp']:.2f} pp" in text
    assert "exhausted: ocr (window " in text
    keys = ", ".join(f"chat-{i:05d}" for i in CHAT_ERRORS[:5])
    assert f"    chat: {len(CHAT_ERRORS)} (keys {keys}, …); first: tokenization mismatch in chat-00005" in text
    deciles = report["stages"]["zeta"]["lengths"]["caps"]["deciles"]
    assert any(r[:2] == ["caps", "300"] and r[2:13] == [str(d) for d in deciles] for r in rows)
    assert text.index("stage zeta:") < text.index("stage alpha:")
    assert ["ocr-10", "ok", "60.00%", "10.00%", "2.5000", "3.2500", "2.8750"] in rows  # sources caps, ocr
    assert "ablation zbroken: unreadable results:" in text and "variants.0.mixture: Field required" in text


def test_plot_per_stage_is_written_and_not_blank(build):
    out, _, report = build
    paths = write_plots(report)
    assert paths == {s: str(out / "stages" / s / "inspect.png") for s in ("zeta", "alpha")}
    for path in paths.values():
        img = np.asarray(Image.open(path).convert("RGB")).astype(int)
        assert img.shape[0] > 300 and img.shape[1] > 800
        # bars and histogram lines are coloured; axes, text and background are grey levels
        coloured = (img.max(axis=2) - img.min(axis=2)) > 60
        assert coloured.sum() > 2000
        assert (img.sum(axis=2) < 600).mean() > 0.02 and img.std() > 20


def test_cli_text_json_and_errors(build, tmp_path):
    out, _, report = build
    runner = CliRunner()
    res = runner.invoke(app, ["inspect", str(out), "--no-plots", "--no-html"])
    assert res.exit_code == 0, res.output
    assert res.stdout == render(report)
    res = runner.invoke(app, ["inspect", str(out), "--stage", "alpha", "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert list(got["stages"]) == ["alpha"] and got["stages"]["alpha"] == report["stages"]["alpha"]
    assert got["plots"] == {"alpha": str(out / "stages" / "alpha" / "inspect.png")}
    for args, message in [
        ([str(tmp_path / "nope")], "no such build folder"),
        ([str(tmp_path)], "no stages"),
        ([str(out), "--stage", "beta"], "--stage: no stage 'beta'"),
    ]:
        res = runner.invoke(app, ["inspect", *args])
        assert res.exit_code == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, args


def test_inspect_reads_what_mixer_ablate_writes(tmp_path):
    from mixer.ablate import ablation_dir
    from mixer.ablate.report import write_report
    from mixer.ablate.sweep import VariantResult
    from mixer.inspect import read_ablations

    results = [
        VariantResult(
            f"ocr-{s}",
            {"caps": 1 - s, "ocr": s},
            "ok",
            eval_loss={"caps": 2.0 + s, "ocr": 3.0 - s},
            loss_curve=[3.0, 2.5],
        )
        for s in (0.1, 0.2, 0.3)
    ]
    results.append(VariantResult("ocr-0.4", {"caps": 0.6, "ocr": 0.4}, "failed", error="boom\ntrace"))
    write_report("sweep", results, ablation_dir(tmp_path, "sweep"), varied="ocr")
    (ab,) = read_ablations(tmp_path)
    assert "error" not in ab, ab
    assert [v["name"] for v in ab["variants"]] == ["ocr-0.1", "ocr-0.2", "ocr-0.3", "ocr-0.4"]
    assert ab["variants"][2]["eval_loss"] == {"caps": 2.3, "ocr": 2.7} and ab["varied"] == "ocr"


def test_coverage_counts_the_plans_placements_and_keeps_to_the_epochs(build):
    out, summaries, report = build
    from mixer.plan import PlanReader

    for stage, (_, srcs, _) in STAGES.items():
        segs = np.concatenate(list(PlanReader(out / "stages" / stage / "plan").sequences(0)))
        for i, (name, _, _) in enumerate(srcs):
            lens = lengths_of(name)[0]
            placed = np.bincount(segs["sample"][segs["source"] == i], minlength=len(lens))[lens > 0]
            got = report["stages"][stage]["sources"][name]["coverage"]
            assert got["usable"] == int((lens > 0).sum()) and got["placements"] == summaries[stage]["samples"][i]
            assert (got["min"], got["median"], got["max"]) == (placed.min(), np.median(placed), placed.max())
            assert got["never"] == int((placed == 0).sum()) and got["unusable_placed"] == 0
            assert got["max"] - got["min"] <= 1 and got["warning"] is None, (stage, name, got)
    text = render(report)
    caps = report["stages"]["zeta"]["sources"]["caps"]["coverage"]
    dist = f"{caps['min']} / {caps['median']:g} / {caps['max']}".split()
    assert ["caps", "300", f"{caps['placements'] / 300:.2f}", *dist, str(caps["never"])] in [
        line.split() for line in text.splitlines()
    ]
    assert "warning:" not in text


def test_coverage_warns_when_placements_depart_from_the_epochs(build):
    _, _, report = build
    usable = np.array([True, True, True, True, False])
    # 4 placements over 4 usable samples is one epoch: 2/0/1/1 starves sample 1 and repeats sample 0
    bad = coverage(np.array([2, 0, 1, 1, 0], np.uint32), usable)
    assert (bad["min"], bad["median"], bad["max"], bad["never"]) == (0, 1.0, 2, 1)
    assert bad["warning"] == (
        "placements per sample 0..2 depart from its 1.00 epochs (expected 1..1); 1 of 4 usable samples never placed"
    )
    assert coverage(np.array([2, 1, 2, 1, 0], np.uint32), usable)["warning"] is None  # 1.5 epochs: 1 or 2 each
    assert "cannot be" in coverage(np.array([1, 1, 1, 1, 1], np.uint32), usable)["warning"]
    doctored = json.loads(json.dumps(report))
    doctored["stages"]["alpha"]["sources"]["chat"]["coverage"] = bad
    assert f"  warning: chat: {bad['warning']}" in render(doctored).splitlines()


def test_usable_samples_follow_the_planners_overlong_rule(tmp_path):
    path = tmp_path / "l" / "lengths.parquet"
    table = pa.table(
        {
            "key": ["a", "b", "c", "e", "d"],
            "length": [10, 0, 40, 12, 40],
            "n_images": [0, 0, 0, 0, 0],
            "turn_ends": [[10], [], [15, 40], [6, 12], [30, 40]],  # c can be cut at 15 <= 20, d has no cut that fits
            "error": [None, "mismatch", None, None, None],
        },
        schema=LENGTH_SCHEMA,
    )
    path.parent.mkdir()
    pq.write_table(table, path)
    assert usable_samples(str(path), 20, "truncate").tolist() == [True, False, True, True, False]
    assert usable_samples(str(path), 20, "drop").tolist() == [True, False, False, True, False]
