"""Regenerate regiontrt's demo model and region data, reproducibly.

    python scripts/make_demo.py          # regiontrt/demo/{digits,regions}.npz, digits_cnn.onnx
    python scripts/make_demo.py --check  # also prints the cross-region calibration-range matrix

Needs scikit-learn (a development tool only: the digits are then shipped as an NPZ, so nothing at
run time needs it), numpy, onnx and onnxruntime. The model is trained with plain numpy
(``scripts/_numpy_cnn.py`` and ``_numpy_train.py``), seeded: the data files are bit-identical on
every run and every machine; the weights are bit-identical on one machine (float32 BLAS results
may differ in the last bits between CPUs). Files are written atomically, NPZ members with fixed
timestamps.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _numpy_cnn as nc  # noqa: E402
import _numpy_train as nt  # noqa: E402

from regiontrt.demo import (  # noqa: E402
    DIGITS_FILE,
    DIGITS_MAX,
    MODEL_FILE,
    REGIONS,
    REGIONS_FILE,
    SHIFTS,
    apply_shift,
    describe_shift,
)

DEMO_DIR = ROOT / "regiontrt" / "demo"
SEED = 20240601
N_CALIBRATION = 256
N_VALIDATION = 360
SHIFT_KEYS = ("gain", "offset", "contrast", "noise_std")


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: never a partial file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; these files are shared data
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An NPZ archive whose bytes depend only on the arrays (np.savez stamps the current time)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def stratified_split(
    labels: np.ndarray, n_take: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (taken, rest) with ``n_take`` taken, each class in proportion."""
    order = rng.permutation(len(labels))
    # Interleave the classes (i-th of every class, then the (i+1)-th...) so any prefix is balanced.
    rank = np.empty(len(labels), np.int64)
    for c in np.unique(labels):
        members = order[labels[order] == c]
        rank[members] = np.arange(len(members)) * 1000 + c
    interleaved = order[np.argsort(rank[order], kind="stable")]
    return np.sort(interleaved[:n_take]), np.sort(interleaved[n_take:])


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits as sk_load
    except ImportError:
        sys.exit("make_demo.py needs scikit-learn (a dev-only tool): pip install scikit-learn")
    d = sk_load()
    x = d.images.astype(np.uint8)  # integer counts 0..16
    assert np.array_equal(x, d.images) and x.max() <= DIGITS_MAX
    return x, d.target.astype(np.int64)


def region_arrays(
    images: np.ndarray, labels: np.ndarray, cal_idx: np.ndarray, val_idx: np.ndarray
) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for number, region in enumerate(REGIONS):
        params = SHIFTS[region]
        rng = np.random.default_rng([SEED, 1 + number])
        arrays[f"{region}/calibration"] = apply_shift(images[cal_idx], rng=rng, **params)
        arrays[f"{region}/validation"] = apply_shift(images[val_idx], rng=rng, **params)
        arrays[f"{region}/labels"] = labels[val_idx].astype(np.int64)
        arrays[f"{region}/calibration_index"] = cal_idx.astype(np.int64)
        arrays[f"{region}/validation_index"] = val_idx.astype(np.int64)
        arrays[f"{region}/shift"] = np.array([params[k] for k in SHIFT_KEYS], np.float64)
    return arrays


def ort_session(model_bytes: bytes):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def range_matrix(model_bytes: bytes, arrays: dict[str, np.ndarray]) -> None:
    """Print, for calibration region A (rows) and validation region B (columns), the largest share
    over all activations of B's values beyond A's calibrated |max|: what a mismatch check sees."""
    import onnx

    model = onnx.load_from_string(model_bytes)
    names = [o for n in model.graph.node for o in n.output]
    outs = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in outs)
    names = ["input", *names]
    sess = ort_session(model.SerializeToString())

    def acts(x: np.ndarray) -> dict[str, np.ndarray]:
        res = dict(zip(names[1:], sess.run(names[1:], {"input": x}), strict=True))
        res["input"] = x
        return res

    amax = {
        r: {k: float(np.abs(v).max()) for k, v in acts(arrays[f"{r}/calibration"]).items()}
        for r in REGIONS
    }
    val = {r: acts(arrays[f"{r}/validation"]) for r in REGIONS}
    print(
        "\nshare of validation values beyond the calibrated |max| (worst tensor), "
        "calibration rows x validation columns"
    )
    print(f"{'':>10}" + "".join(f"{r:>10}" for r in REGIONS))
    for a in REGIONS:
        row = [
            max(float((np.abs(v) > amax[a][k]).mean()) for k, v in val[b].items()) for b in REGIONS
        ]
        print(f"{a:>10}" + "".join(f"{x:>10.2%}" for x in row))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--check", action="store_true", help="print the cross-region range matrix")
    args = parser.parse_args(argv)

    x_raw, y = load_digits()
    rng = np.random.default_rng(SEED)
    heldout, train_idx = stratified_split(y, N_CALIBRATION + N_VALIDATION, rng)
    cal_pos, val_pos = stratified_split(y[heldout], N_CALIBRATION, rng)
    cal_idx, val_idx = heldout[cal_pos], heldout[val_pos]
    digits = {
        "X": x_raw,
        "y": y,
        "train_index": train_idx,
        "calibration_index": cal_idx,
        "validation_index": val_idx,
    }
    images = (x_raw.astype(np.float32) / np.float32(DIGITS_MAX))[:, None]

    print(
        f"digits: {len(y)} images; train {len(train_idx)}, held out {len(heldout)} "
        f"(calibration {len(cal_idx)}, validation {len(val_idx)})"
    )
    net = nc.resnet((16, 32), 1, seed=SEED)
    cfg = nt.TrainConfig(
        epochs=args.epochs,
        batch=64,
        lr=3e-3,
        seed=SEED,
        augment=nt.jitter,
        log=lambda s: print(s, flush=True),
    )
    print(f"training the demo CNN with numpy for {cfg.epochs} epochs...")
    seconds = nt.train(net, images[train_idx], y[train_idx], cfg)
    print(f"trained in {seconds:.1f} s")

    clean_acc = float((net.predict(images[heldout]).argmax(1) == y[heldout]).mean())
    model = nc.to_onnx(
        net,
        height=8,
        width=8,
        graph_name="digits_cnn",
        producer="regiontrt-demo",
        doc="Residual CNN for scikit-learn's 8x8 digits; regenerate with scripts/make_demo.py.",
        metadata={
            "description": "regiontrt demo: residual CNN (Conv-BN-ReLU, Conv-BN, Add, ReLU) "
            "classifying scikit-learn's 8x8 handwritten digits",
            "dataset": "sklearn.datasets.load_digits (UCI optdigits), pixel/16, NCHW [N,1,8,8]",
            "training": f"numpy AdamW, {cfg.epochs} epochs, seed {SEED}, {len(train_idx)} images",
            "heldout_top1": f"{clean_acc:.4f}",
            "labels": "0,1,2,3,4,5,6,7,8,9",
        },
    )
    model_bytes = model.SerializeToString(deterministic=True)
    regions = region_arrays(images, y, cal_idx, val_idx)

    sess = ort_session(model_bytes)
    ref = sess.run(["logits"], {"input": images[heldout]})[0]
    diff = float(np.abs(ref - net.predict(images[heldout])).max())
    assert diff < 1e-3, f"ONNX export disagrees with the numpy model (max |diff| {diff})"
    print(
        f"\nheld-out top-1 (clean, {len(heldout)} images): {clean_acc:.2%}; "
        f"ONNX vs numpy max |diff| {diff:.2e}"
    )
    print(f"{'region':<10} {'top-1':>7}  {'calib range':>15}  camera")
    for region in REGIONS:
        logits = sess.run(["logits"], {"input": regions[f"{region}/validation"]})[0]
        acc = float((logits.argmax(1) == regions[f"{region}/labels"]).mean())
        cal = regions[f"{region}/calibration"]
        print(
            f"{region:<10} {acc:>7.2%}  [{cal.min():>6.2f},{cal.max():>6.2f}]  "
            f"{describe_shift(region)}"
        )

    write_atomic(DEMO_DIR / DIGITS_FILE, npz_bytes(digits))
    write_atomic(DEMO_DIR / MODEL_FILE, model_bytes)
    write_atomic(DEMO_DIR / REGIONS_FILE, npz_bytes(regions))
    for name in (DIGITS_FILE, MODEL_FILE, REGIONS_FILE):
        print(f"wrote {DEMO_DIR / name} ({(DEMO_DIR / name).stat().st_size / 1024:.0f} KiB)")
    if args.check:
        range_matrix(model_bytes, regions)
    return 0


if __name__ == "__main__":
    started = time.perf_counter()
    rc = main()
    print(f"total {time.perf_counter() - started:.1f} s")
    sys.exit(rc)
