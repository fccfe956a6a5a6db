"""Report objects, notebook HTML, rt.inspect's accessors and ``regiontrt report``."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser

import pytest
from _engines import build_engines

import regiontrt as rt
from regiontrt.cli import main
from regiontrt.precision.validation import PrecisionTrial, ValidationReport
from regiontrt.report.page import collect, summary_html
from regiontrt.report.text import (
    figure_html,
    html_fragment,
    html_table,
    plots_available,
)
from regiontrt.runtime.inspection import EngineInfo


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    na, eu, strict = build_engines(tmp_path_factory.mktemp("engines"))
    return {"NA": na, "EU": eu, "STRICT": strict}


class _Collect(HTMLParser):
    """Tags, text and <img> sources of an HTML document (a real parser, not regexes)."""

    def __init__(self):
        super().__init__()
        self.tags, self.text, self.images = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def parse(html):
    p = _Collect()
    p.feed(html)
    return p


def test_engine_report_round_trips_and_reads_well(engines):
    engine = rt.load_engine(engines["STRICT"])
    report = engine.report
    assert isinstance(report, ValidationReport)
    assert report.to_dict() == engine.metadata["validation"]
    assert ValidationReport.from_dict(report.to_dict()) == report
    assert [t.precision for t in report.trials] == ["int8", "fp16", "fp32"]
    assert [t.accepted for t in report.trials] == [False, False, True]
    assert report.chosen == "fp32" and report.chosen_trial is report.trials[-1]
    assert report.loss == report.trials[-1].loss < report.budget
    text = repr(report)
    lines = text.splitlines()
    assert lines[0].startswith("ValidationReport(chosen='fp32', metric='relative_l2'")
    assert "int8: loss" in lines[1] and "rejected" in lines[1] and "2 layers kept" in lines[1]
    assert "fp32: loss" in lines[3] and "accepted" in lines[3]
    html = report._repr_html_()
    parsed = parse(html)
    assert parsed.tags.count("tr") == 4  # header + one row per trial
    assert "chosen fp32: metric relative_l2, budget 1e-06, 360 validation samples" in parsed.text
    cells = [t for t in parsed.text if t in ("accepted", "rejected")]
    assert cells == ["accepted", "rejected", "rejected", "accepted"]  # the header, then each trial


def test_report_from_partial_dict_is_tolerant():
    report = ValidationReport.from_dict({"chosen": "fp32", "trials": [{"precision": "fp32"}, 3]})
    assert report.trials == (PrecisionTrial("fp32", None, 0.0, False),)
    assert "fp32: loss –" in repr(report)


def test_html_views_escape_hostile_text(engines):
    # The STRICT region's description holds markup; the HTML must show it as text.
    info = rt.inspect(engines["STRICT"])
    assert info["region"]["description"] == "<b>strict</b> & co"
    parsed = parse(info._repr_html_())
    assert "b" not in parsed.tags
    html = rt.load_engine(engines["STRICT"])._repr_html_()
    assert html == info._repr_html_()
    parsed = parse(html)
    assert parsed.tags.count("table") == 2
    # the loss-against-budget plot is inline where matplotlib is installed
    assert len(parsed.images) == (1 if plots_available() else 0)
    text = "".join(parsed.text)
    assert "Engine for region STRICT: fp32" in text and "rejected" in text
    assert "compliance: pass" in text
    table = html_table([{"a": "<script>x</script>", "b": 1.23456789}, {"a": None}])
    assert "<script>" not in table and "&lt;script&gt;" in table and "1.235" in table
    assert parse(table).tags.count("tr") == 3


def test_inspect_keeps_the_dict_and_adds_accessors(engines):
    info = rt.inspect(engines["EU"])
    assert isinstance(info, dict) and isinstance(info, EngineInfo)
    assert info["region"]["name"] == "EU" == info.region_name  # existing callers unchanged
    assert info.region_rules == info["region"] and info.region_rules["forbidden"] == ["int8"]
    assert info.precision == "fp16" and info.compliant is True
    assert info.report.chosen == "fp16"
    assert json.loads(json.dumps(info)) == dict(info)


def test_compliance_flags_a_forbidden_precision(engines):
    info = rt.inspect(engines["EU"])
    assert info["compliance_check"]["compliant"] is True
    tampered = EngineInfo(info, precision="int8")  # what a hostile header could claim
    assert tampered.compliant is False
    assert "VIOLATION" not in tampered._repr_html_() and "fail" in tampered._repr_html_()
    # the payload checker's verdict comes first, with its reasons
    flagged = EngineInfo(info, compliance_check={"compliant": False, "reasons": ["Q/DQ found"]})
    assert flagged.compliant is False and "Q/DQ found" in flagged._repr_html_()


def test_figure_html_embeds_a_decodable_png():
    pytest.importorskip("matplotlib", reason="needs matplotlib (pip install 'regiontrt[plot]')")
    import base64

    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 1))
    fig.subplots().plot([0, 1], [1, 0])
    src = parse(figure_html(fig, "a <line>")).images[0]
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    assert base64.b64decode(src[len(prefix):]).startswith(b"\x89PNG\r\n\x1a\n")
    assert html_fragment("<p>x</p>").startswith('<div class="regiontrt"><style>')


def test_cli_report_text(engines, capsys):
    folder = engines["NA"].parent
    assert main(["report", str(folder), "--bench", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["region", "target", "precision"]
    rows = {line.split()[0]: line.split() for line in out[2:]}
    assert set(rows) == {"NA", "EU", "STRICT"}
    assert rows["EU"][1:3] == ["cpu", "fp16"] and rows["STRICT"][2] == "fp32"
    assert float(rows["NA"][-1]) > 0  # a measured p99


def test_cli_report_html_bundle_with_manifest_and_a_bad_file(engines, tmp_path, capsys):
    bundle = tmp_path / "dist" / "digits" / "1.0" / "EU"
    bundle.mkdir(parents=True)
    shutil.copy(engines["EU"], bundle / "cpu.engine")
    manifest = {"name": "digits", "version": "1.0", "region": {"name": "EU"},
                "precision": "fp16", "future_key": {"nested": [1, 2]},
                "variants": [{"target": "cpu-x86", "backend": "onnxruntime", "file": "cpu.engine"},
                             {"target": "dc-h100", "status": "deferred: rebuild on node"}],
                "deferred": [{"name": "dc-b200", "reason": "rebuild on node: no TensorRT"}, 3]}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    bad = tmp_path / "dist" / "broken.engine"
    bad.write_bytes(engines["NA"].read_bytes()[:200])  # truncated
    (tmp_path / "dist" / "x" / "manifest.json").parent.mkdir()
    (tmp_path / "dist" / "x" / "manifest.json").write_text("[1, 2")  # not JSON
    out = tmp_path / "report.html"
    status = main(["report", str(tmp_path / "dist"), "--html", str(out), "--bench", "0",
                   "--no-plots"])
    assert status == 1  # problems are reported and make the exit status non-zero
    assert "1 engine(s), 1 manifest(s), 2 problem(s)" in capsys.readouterr().out
    page = out.read_text()
    parsed = parse(page)
    text = " ".join(parsed.text)
    # the matrix: the manifest's target names label the columns; the deferred cell is shown
    matrix = page.split("<table>", 2)[1]
    head = parse(matrix.split("</thead>")[0]).text
    assert head == ["precision chosen per region (rows) and target (columns)", "region",
                    "cpu-x86", "dc-h100", "dc-b200"]
    assert "deferred: rebuild on node" in matrix and "compliant" in matrix
    assert "deferred: rebuild on node: no TensorRT" in matrix
    assert "deferred: rebuild on node" in text and "future_key" in text
    assert "ArtifactError" in text and "not JSON" in text
    assert parsed.images == []


def test_collect_refuses_missing_or_empty(tmp_path):
    with pytest.raises(rt.errors.DataError, match="no such file"):
        collect(tmp_path / "nope")
    with pytest.raises(rt.errors.DataError, match=r"no \.engine file"):
        collect(tmp_path)
    assert main(["report", str(tmp_path)]) == 2


def test_summary_html_for_engines_in_memory(engines):
    metas = [(rt.inspect(engines[r]), t) for r, t in (("NA", "cpu"), ("EU", "rtx-sm89"))]
    html = summary_html(metas, figures=False)
    assert html.startswith('<div class="regiontrt"><style>')
    matrix = html.split("<table>", 2)[1]
    assert parse(matrix.split("</thead>")[0]).text[1:] == ["region", "cpu", "rtx-sm89"]
    assert "file" not in parse(html.split("<h2>Provenance</h2>")[1]).text
    assert parse(html).images == []


def test_engine_that_cannot_run_here_is_reported_not_fatal(engines, tmp_path, capsys):
    # A TensorRT engine on a machine without TensorRT: listed with its reason, no latency.
    from regiontrt.backends import get_backend
    from regiontrt.runtime import artifact

    try:
        get_backend("tensorrt")
    except rt.errors.BackendUnavailable:
        pass
    else:
        pytest.skip("needs a machine without TensorRT (here it would try to run the plan)")

    meta = artifact.read(engines["NA"])[0]
    meta.update(backend={"name": "tensorrt", "version": "10.13"}, target="sm90",
                payload_format="tensorrt-plan")
    artifact.write(tmp_path / "digits.NA.sm90.engine", meta, b"\x00a plan's opaque bytes")
    shutil.copy(engines["NA"], tmp_path / "digits.NA.engine")
    assert main(["report", str(tmp_path), "--bench", "3"]) == 0
    rows = {line.split()[1]: line.split() for line in capsys.readouterr().out.splitlines()[2:]}
    assert set(rows) == {"cpu", "sm90"}
    assert rows["sm90"][-1] == "-" and float(rows["cpu"][-1]) > 0
    out = tmp_path / "r.html"
    assert main(["report", str(tmp_path), "--html", str(out), "--bench", "2", "--no-plots"]) == 0
    text = " ".join(parse(out.read_text()).text)
    assert "not run here: backend 'tensorrt' is not installed here" in text


def test_report_on_a_real_fleet_output(tmp_path, capsys):
    # The bundles regiontrt.deploy writes: manifest.json + cpu.engine per region.
    import concurrent.futures as cf

    from fleet_support import write_fleet

    from regiontrt import deploy

    fleet = write_fleet(tmp_path / "src", regions=("NA", "EU"))
    with cf.ThreadPoolExecutor(2) as pool:
        result = deploy.build_fleet(fleet, tmp_path / "dist", executor=pool)
    assert result.ok
    out = tmp_path / "fleet.html"
    assert main(["report", str(tmp_path / "dist"), "--html", str(out), "--bench", "2",
                 "--no-plots"]) == 0
    assert "2 engine(s), 2 manifest(s), 0 problem(s)" in capsys.readouterr().out
    page = out.read_text()
    matrix = page.split("<table>", 2)[1]
    rows = [parse(r).text for r in matrix.split("<tr>")[2:]]
    assert {r[0]: r[1].split()[0] for r in rows} == {"NA": "int8", "EU": "fp16"}
    assert "checked on the onnx payload" in page  # the payload compliance scan ran
    for region in ("NA", "EU"):
        assert f"digits/1.0.0/{region}/manifest.json" in page
