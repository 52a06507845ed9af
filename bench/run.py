#!/usr/bin/env python3
"""dino-rs benchmarks, side by side with the official algorithm in PyTorch (bench/peer.py).

One command:  python3 bench/run.py            (everything; installs the PyTorch peer if missing)
              python3 bench/run.py --only step,infer --quick
              python3 bench/run.py --ours_only --quick   (no torch needed: the CI smoke run)

Sections (each prints a table with our/PyTorch ratios; > 1 means dino-rs is faster or better):
  step     one DINO training step, images/s: the small preset and ViT-S/16 at 224/96
  infer    ViT-S/16 at 224 with the last layer's attention, batch 1 and 32
  matmul   the matrix product alone on the Linear layers' shapes (Burn's flex / gemm vs torch), GFLOP/s
  augment  the multi-crop augmentation alone, images/s on one core
  scaling  step time against batch size and number of local crops (small preset)
  quality  train the same config on Fashion-MNIST with both, then k-NN (k=20) and linear top-1
           (both models evaluated by the same `dino knn` / `dino linear`), with raw-pixel and
           random-init floors

Both sides get the same threads (--threads, default: all cores). Results: bench/results/
latest.md and latest.json (and printed).
"""
import argparse
import datetime
import gzip
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION = "/usr/share/datasets/fashion-mnist"
PHOTOS = os.path.join(REPO, "tests", "images")
PEER = os.path.join(REPO, "bench", "peer.py")
VENV = os.path.join(REPO, "bench", ".venv")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def peer_python():
    """A python with torch, torchvision, timm and safetensors: this one if it has them, else a
    virtual environment in bench/.venv installed from the Python package index."""
    probe = "import torch, torchvision, timm, safetensors, numpy, PIL"
    for py in (os.path.join(VENV, "bin", "python"), sys.executable):
        if os.path.exists(py) and subprocess.run([py, "-c", probe], capture_output=True).returncode == 0:
            return py
    log("installing the PyTorch peer (torch, torchvision, timm, safetensors) into bench/.venv")
    subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    py = os.path.join(VENV, "bin", "python")
    subprocess.run([py, "-m", "pip", "install", "-q", "torch", "torchvision", "timm", "safetensors", "numpy",
                    "pillow"], check=True)
    return py


def ensure_fashion_mnist():
    if os.path.exists(os.path.join(FASHION, "train-images-idx3-ubyte.gz")):
        return FASHION
    log("installing Debian's dataset-fashion-mnist")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"], check=True)
    return FASHION


class Runner:
    def __init__(self, args):
        self.args = args
        self.env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
        if args.dino:
            self.dino = os.path.abspath(args.dino)
        else:
            log("building dino (cargo build -p dino-trainer: the same dev profile as `cargo run`, dependencies at "
                "opt-level 3 without overflow checks)")
            subprocess.run(["cargo", "build", "-q", "-p", "dino-trainer"], cwd=REPO, check=True)
            meta = json.loads(subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=REPO,
                                             check=True, capture_output=True, text=True).stdout)
            self.dino = os.path.join(meta["target_directory"], "debug", "dino")
        self.py = None if args.ours_only else peer_python()

    def run(self, cmd, what):
        """Runs cmd; returns its stdout. self.peak_mib: the process's peak resident memory (MiB,
        the kernel's ru_maxrss of that child alone, read by wait4)."""
        log(f"  {what}: {' '.join(os.path.basename(c) if i == 0 else c for i, c in enumerate(cmd))}")
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            p = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=out, stderr=err, text=True)
            _, status, usage = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        self.peak_mib = usage.ru_maxrss / 1024
        if p.returncode != 0:
            sys.exit(f"{what} failed ({p.returncode}):\n{stderr[-3000:]}")
        return stdout

    def ours(self, *args):
        out = self.run([self.dino, "bench", *args], "dino-rs")
        return dict(json.loads(out.strip().splitlines()[-1]), peak_rss_mib=self.peak_mib)

    def peer(self, *args):
        if self.py is None:
            return None
        out = self.run([self.py, PEER, "--threads", str(self.args.threads), "--dino", self.dino, *args], "pytorch")
        return dict(json.loads(out.strip().splitlines()[-1]), peak_rss_mib=self.peak_mib)


def ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b else "–"


def fmt(v, digits=None):
    if v is None:
        return "–"
    return f"{v:.{digits if digits is not None else (2 if abs(v) < 10 else 1)}f}"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def median(values):
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else 0.5 * (v[len(v) // 2 - 1] + v[len(v) // 2])


def side_by_side(r, kind, args, label, key, higher_is_better, scale=1.0, device=True, memory=False, repeat=None):
    """Run one case on both sides, --repeat times, alternating (ours, PyTorch, ours, ...) so that
    each pair shares the machine's state of the moment; returns the table row and the raw results.
    The row gives each side's median and the median of the pairs' ratios (with their range when
    repeated): one run's ratio moves by 20-30% on a shared VM. memory: add both processes' peak
    resident memory (MiB, the largest over the repeats) to the row. repeat: pairs to run instead
    of --repeat."""
    runs = []
    for _ in range(repeat or r.args.repeat):
        o = r.ours(kind, *args, *(["--device", r.args.device] if device else []))
        p = r.peer(kind, *args)
        runs.append({"ours": o, "pytorch": p})
    ov = median([scale * x["ours"][key] for x in runs])
    pv = None if runs[0]["pytorch"] is None else median([scale * x["pytorch"][key] for x in runs])
    ratios = [] if pv is None else [
        (x["ours"][key] / x["pytorch"][key]) if higher_is_better else (x["pytorch"][key] / x["ours"][key])
        for x in runs]
    speedup = "–" if not ratios else f"{median(ratios):.2f}"
    if len(ratios) > 1:
        speedup += f" ({min(ratios):.2f}-{max(ratios):.2f})"
    row = [*label, fmt(ov), fmt(pv), speedup]
    if memory:
        row += [fmt(max(x["ours"]["peak_rss_mib"] for x in runs), 0),
                fmt(None if pv is None else max(x["pytorch"]["peak_rss_mib"] for x in runs), 0)]
    return row, {"ours": runs[0]["ours"], "pytorch": runs[0]["pytorch"], "repeats": runs,
                 "ratio_median": median(ratios) if ratios else None}


def section_step(r, q):
    rows, raw = [], []
    cases = [("small (ViT 96d x4, /4, 24+12 px, 2+4 crops), batch 64", ["--preset", "small", "--batch_size_per_gpu", "64"],
              10 if not q else 2),
             ("ViT-S/16, 224+96 px, 2+8 crops, batch 8", ["--preset", "imagenet", "--batch_size_per_gpu", "8"],
              3 if not q else 1)]
    for label, args, iters in cases:
        row, res = side_by_side(r, "step", [*args, "--iters", str(iters), "--warmup", "1"], [label],
                                "images_per_s", True, memory=True)
        rows.append(row)
        raw.append({"case": label, **res})
    # One profiled run of the small step: where the time goes.
    prof = r.ours("step", "--preset", "small", "--iters", str(5 if not q else 1), "--warmup", "1", "--profile",
                  "--device", r.args.device)["profile"]
    total = sum(prof.values())
    prof_rows = [[k, f"{1e3 * v:.1f}", f"{100 * v / total:.1f}%"] for k, v in prof.items()]
    md = ("### Training step (images/s; ratio = ours / PyTorch; peak resident memory of each process, MiB)\n\n"
          + table(["config", "dino-rs", "PyTorch", "ratio", "dino-rs MiB", "PyTorch MiB"], rows)
          + "\n\nProfile of one small step (dino-rs, synchronised after each phase):\n\n"
          + table(["phase", "ms", "share"], prof_rows))
    return md, {"cases": raw, "profile": prof}


def section_infer(r, q):
    rows, raw = [], []
    # Batch 1: 30 passes per process (2 s): with 10, one process's mean moved with this VM's slow
    # phases. It is the cheapest case and the noisiest ratio (a pair moves by 0.8-1.2 within
    # minutes), so it runs 2 x --repeat + 1 pairs (7 by default), a few seconds each.
    for batch, iters, pairs in ((1, 30 if not q else 1, 2 * r.args.repeat + 1 if not q else None),
                                (32, 3 if not q else 1, None)):
        args = ["--arch", "vit_small", "--patch_size", "16", "--image_size", "224", "--batch", str(batch),
                "--iters", str(iters), "--warmup", "1"]
        row, res = side_by_side(r, "infer", args, [f"ViT-S/16 224 px, batch {batch}"], "ms_mean", False,
                                memory=True, repeat=pairs)
        rows.append(row)
        raw.append({"batch": batch, **res})
    md = ("### Inference with last-layer attention (ms per batch; ratio = PyTorch time / ours; peak resident "
          "memory, MiB)\n\n"
          + table(["case", "dino-rs ms", "PyTorch ms", "ratio", "dino-rs MiB", "PyTorch MiB"], rows))
    return md, raw


MATMUL_SHAPES = [("ViT-S/16 batch 1: q, k, v, proj", "197x384x384"), ("ViT-S/16 batch 1: fc1", "197x384x1536"),
                 ("ViT-S/16 batch 1: fc2", "197x1536x384"), ("ViT-S/16 batch 32: fc1", "6304x384x1536"),
                 ("small step, one replica of batch 64: q, k, v, proj", "2368x96x96"),
                 ("small step: fc1", "2368x96x384"), ("small step: fc2", "2368x384x96")]


def section_matmul(r, q):
    """The matrix product alone (Burn's flex -> gemm against torch's oneDNN / MKL) on the shapes of
    the models' Linear layers: whether the products or the rest of a pass make the difference."""
    shapes = ",".join(s for _, s in MATMUL_SHAPES[:3 if q else None])
    args = ["--shapes", shapes, "--iters", "2" if q else "20", "--rounds", "2" if q else "15"]
    runs = []
    for _ in range(r.args.repeat):
        runs.append((r.ours("matmul", *args, "--device", r.args.device), r.peer("matmul", *args)))
    rows, raw = [], []
    for i, (label, shape) in enumerate(MATMUL_SHAPES[:3 if q else None]):
        ours = median([o["shapes"][i]["gflops_best"] for o, _ in runs])
        peer = None if runs[0][1] is None else median([p["shapes"][i]["gflops_best"] for _, p in runs])
        ratios = [] if peer is None else [o["shapes"][i]["gflops_best"] / p["shapes"][i]["gflops_best"] for o, p in runs]
        speedup = "–" if not ratios else f"{median(ratios):.2f}" + (
            f" ({min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else "")
        rows.append([label, shape, fmt(ours, 0), fmt(peer, 0), speedup])
        raw.append({"label": label, "shape": shape, "ours_gflops": ours, "pytorch_gflops": peer,
                    "ratio_median": median(ratios) if ratios else None})
    md = (f"### Matrix product alone (GFLOP/s of the best of {args[5]} rounds of {args[3]} products, median over the "
          "runs; ratio = ours / PyTorch)\n\n" + table(["Linear layer", "m x k x n", "dino-rs", "PyTorch", "ratio"], rows))
    return md, raw


def section_augment(r, q):
    rows, raw = [], []
    fashion = ensure_fashion_mnist()
    for label, args in (("ImageNet recipe (224+96, 2+8 crops) on photos", ["--preset", "imagenet",
                                                                         "--data_path", PHOTOS, "--count",
                                                                         "40" if not q else "4"]),
                        ("small recipe (24+12, 2+4 crops) on Fashion-MNIST", ["--preset", "small", "--data_path",
                                                                              fashion, "--count",
                                                                              "2000" if not q else "50"])):
        row, res = side_by_side(r, "augment", args, [label], "images_per_s", True, device=False)
        rows.append(row)
        raw.append({"case": label, **res})
    md = ("### Multi-crop augmentation, one core (pictures/s; ratio = ours / torchvision)\n\n"
          + table(["case", "dino-rs", "torchvision", "ratio"], rows))
    return md, raw


def section_scaling(r, q):
    rows, raw = [], []
    iters = ["--iters", "3" if not q else "1", "--warmup", "1"]
    cases = [(b, 4) for b in ((16, 32, 64, 128) if not q else (8, 16))]
    cases += [(64 if not q else 16, n) for n in ((0, 2, 8) if not q else (0,))]
    for b, n in cases:
        args = ["--preset", "small", "--batch_size_per_gpu", str(b), "--local_crops_number", str(n), *iters]
        row, res = side_by_side(r, "step", args, [b, n], "seconds_per_step", False, scale=1e3)
        rows.append(row)
        raw.append({"batch": b, "local_crops": n, **res})
    md = ("### Step time against batch size and local crops (small preset; ms per step; ratio = PyTorch / ours)\n\n"
          + table(["batch", "local crops", "dino-rs ms", "PyTorch ms", "ratio"], rows))
    return md, raw


def write_subset(src, dst, n):
    """The first n training pictures of an IDX set (and the whole test split) as a new IDX folder."""
    os.makedirs(dst, exist_ok=True)
    for kind, item in (("images", 28 * 28), ("labels", 1)):
        with gzip.open(os.path.join(src, f"train-{kind}-idx{3 if kind == 'images' else 1}-ubyte.gz")) as f:
            data = f.read()
        ndim = data[3]
        header = bytearray(data[:4 + 4 * ndim])
        header[4:8] = n.to_bytes(4, "big")
        body = data[4 + 4 * ndim:4 + 4 * ndim + n * item]
        with gzip.open(os.path.join(dst, f"train-{kind}-idx{3 if kind == 'images' else 1}-ubyte.gz"), "wb") as f:
            f.write(bytes(header) + body)
        name = f"t10k-{kind}-idx{3 if kind == 'images' else 1}-ubyte.gz"
        shutil.copy(os.path.join(src, name), os.path.join(dst, name))


def section_quality(r, q):
    """The main job's recipe (`dino train`'s default `small` preset) side by side: the same
    configuration (the peer reads `dino train --print_config`), data (the embedded Fashion-MNIST
    subset: 3000 training, 1000 held-out pictures), seed and threads; k-NN every 2 epochs on both
    sides (one plot), then both final teachers and the floors through the same `dino knn` /
    `dino linear`."""
    a = r.args
    work = tempfile.mkdtemp(prefix="dino-bench-")
    if q:
        data = os.path.join(work, "fashion")
        write_subset(os.path.join(REPO, "data", "fashion-mnist-mini"), data, 256)
    else:
        data = os.path.join(REPO, "data", "fashion-mnist-mini")
    extra = ["--epochs", "1"] if q else []
    ours_dir, peer_dir = os.path.join(work, "ours"), os.path.join(work, "pytorch")
    cfg_file = os.path.join(work, "config.json")
    with open(cfg_file, "w") as f:
        f.write(r.run([r.dino, "train", "--data_path", data, "--preset", "small", *extra, "--print_config"], "config"))
    t0 = time.perf_counter()
    r.run([r.dino, "train", "--preset", "small", "--data_path", data, "--output_dir", ours_dir, *extra,
           "--device", a.device, "--num_workers", str(a.threads)], "dino-rs train")
    ours_secs = time.perf_counter() - t0
    ours_log = [json.loads(l) for l in open(os.path.join(ours_dir, "log.txt"))]
    ours_floor = dict(json.load(open(os.path.join(ours_dir, "knn_init.json"))))
    peer_train = None
    if r.py:
        peer_train = r.peer("train", "--dino_config", cfg_file, "--data_path", data, "--output_dir", peer_dir,
                            "--eval_every", "2", "--num_workers", "0", "--seed", "0")

    def evaluate(weights, key="teacher"):
        common = ["--pretrained_weights", weights, "--num_heads", "3", "--checkpoint_key", key, "--data_path", data,
                  "--device", a.device]
        knn = r.run([r.dino, "knn", *common, "--nb_knn", "20"], "k-NN")
        lin = r.run([r.dino, "linear", *common, "--epochs", str(a.linear_epochs if not q else 1), "--lr",
                     str(a.linear_lr)], "linear probe")
        top1 = lambda pat, s: float(re.search(pat, s).group(1))
        return top1(r"20-NN classifier result: Top1: ([\d.]+)", knn), top1(r"Linear probe: Top1: ([\d.]+)", lin)

    rows, raw = [], {}
    ours_eval = evaluate(os.path.join(ours_dir, "checkpoint.safetensors"))
    ours_curve = [(0, ours_floor[20])] + [((l["epoch"] + 1) * len(l["iter_losses"]), dict(l["knn_top1"])[20])
                                         for l in ours_log if l.get("knn_top1")]
    rows.append(["dino-rs", *map(fmt, ours_eval), fmt(ours_secs, 0), fmt(ours_log[-1]["train_loss"], 3)])
    raw["ours"] = {"knn20": ours_eval[0], "linear": ours_eval[1], "seconds": ours_secs, "curve": ours_curve,
                   "epoch_losses": [l["train_loss"] for l in ours_log]}
    if peer_train:
        peer_eval = evaluate(os.path.join(peer_dir, "teacher.safetensors"))
        rows.append(["PyTorch (official algorithm, timm ViT)", *map(fmt, peer_eval), fmt(peer_train["seconds"], 0),
                     fmt(peer_train["epoch_losses"][-1], 3)])
        rows.append(["ratio dino-rs / PyTorch (time: PyTorch / dino-rs)", ratio(ours_eval[0], peer_eval[0]),
                     ratio(ours_eval[1], peer_eval[1]), ratio(peer_train["seconds"], ours_secs), ""])
        raw["pytorch"] = {"knn20": peer_eval[0], "linear": peer_eval[1], **peer_train}
        rand_eval = evaluate(os.path.join(peer_dir, "random_init.safetensors"))
        rows.append(["floor: random-init ViT", *map(fmt, rand_eval), "", ""])
        raw["random_init"] = {"knn20": rand_eval[0], "linear": rand_eval[1]}
        raw_px = r.run([r.py, PEER, "knn-raw", "--data_path", data, "--k", "20"], "raw-pixel k-NN")
        px = json.loads(raw_px.strip().splitlines()[-1])["top1"]
        rows.append(["floor: raw pixels (k-NN)", fmt(px), "", "", ""])
        raw["raw_pixels"] = {"knn20": px}
        peer_curve = [(0, peer_train["knn20_init"])] + [(l["iters"], l["knn20"]) for l in peer_train["log"]
                                                        if "knn20" in l]
        raw["pytorch"]["curve"] = peer_curve
        plot_curves(r, ours_curve, peer_curve, px, os.path.join(a.out, "quality-curves.png"))
    shutil.rmtree(work, ignore_errors=True)
    cfg = json.load(open(cfg_file)) if os.path.exists(cfg_file) else {}
    md = ("### Learning quality: the main job's recipe side by side (`small` preset, the embedded Fashion-MNIST "
          "subset: 3000 training pictures, top-1 on the 1000 held-out; k-NN k=20; linear probe "
          f"{a.linear_epochs if not q else 1} epochs at lr {a.linear_lr})\n\n"
          + table(["model", "k-NN top-1 (k=20)", "linear top-1", "train s", "last epoch loss"], rows))
    return md, raw


def plot_curves(r, ours, peer, pixels, path):
    """Both k-NN curves (k=20 against iterations) in one PNG, drawn by matplotlib in the peer's python."""
    script = (
        "import json, sys, matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
        "o, p, px, out = json.loads(sys.argv[1])\n"
        "fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)\n"
        "ax.plot(*zip(*o), 'o-', label='dino-rs')\n"
        "ax.plot(*zip(*p), 's--', label='PyTorch (official algorithm)') if p else None\n"
        "ax.axhline(px, color='grey', ls=':', label='raw pixels (k-NN)')\n"
        "ax.axhline(o[0][1], color='black', ls='-.', lw=0.8, label='initial teacher (floor)')\n"
        "ax.set_xlabel('iteration'); ax.set_ylabel('20-NN top-1 on the 1000 held-out pictures (%)')\n"
        "ax.set_title('DINO on Fashion-MNIST (3000 pictures): the main job side by side')\n"
        "ax.grid(alpha=0.3); ax.legend(); fig.tight_layout(); fig.savefig(out)\n")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    r.run([r.py, "-c", script, json.dumps([ours, peer, pixels, path])], "learning curves plot")


SECTIONS = {"step": section_step, "infer": section_infer, "matmul": section_matmul, "augment": section_augment,
            "scaling": section_scaling, "quality": section_quality}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that everything runs")
    p.add_argument("--ours_only", action="store_true", help="skip the PyTorch peer (no torch needed)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--repeat", type=int, default=3,
                   help="runs of each timed case per side, alternating; the tables give medians (--quick: 1); "
                        "inference at batch 1, the cheapest and noisiest case, runs 2 x REPEAT + 1")
    p.add_argument("--device", default="cpu", choices=["cpu", "wgpu"],
                   help="dino-rs device (the peer runs on the CPU)")
    p.add_argument("--train_images", type=int, default=6000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--linear_epochs", type=int, default=20)
    # Official eval_linear.py: lr 0.001 (x batch/256) for 100 epochs of ImageNet, ~500k steps.
    # A probe of a few thousand pictures gets ~1000 steps: the same lr would barely move it.
    p.add_argument("--linear_lr", type=float, default=0.05)
    p.add_argument("--out", default=os.path.join(REPO, "bench", "results"))
    p.add_argument("--dino", help="the dino binary to measure (default: build it with cargo, dev profile as `cargo "
                                  "run`); a copy keeps a long run independent of rebuilds meanwhile")
    a = p.parse_args()
    if a.repeat < 1:
        p.error(f"--repeat {a.repeat}: must be at least 1")
    if a.quick:
        a.repeat = 1
    r = Runner(a)
    started = datetime.datetime.now(datetime.timezone.utc)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    head = (f"Run {started:%Y-%m-%d %H:%M} UTC on {platform.node()}: {cpu}, {os.cpu_count()} cores, "
            f"{a.threads} threads for both sides; dino-rs device {a.device}; each timed case run {a.repeat}x per "
            f"side{'' if a.quick else f' ({2 * a.repeat + 1}x for inference at batch 1)'}, alternating (medians; ratio: median of the pairs' ratios, their range in brackets)"
            + ("" if r.py is None else "; peer: " + subprocess.run(
                [r.py, "-c", "import torch, timm; print(f'torch {torch.__version__}, timm {timm.__version__}')"],
                capture_output=True, text=True).stdout.strip())
            + f".\nCommand: python3 bench/run.py {' '.join(sys.argv[1:])}")
    parts, results = [head], {"started": started.isoformat(), "args": vars(a)}
    for name in a.only.split(","):
        t0 = time.perf_counter()
        log(f"== {name} ==")
        md, raw = SECTIONS[name](r, a.quick)
        results[name] = raw
        parts.append(md)
        print("\n" + md + "\n", flush=True)
        log(f"   ({time.perf_counter() - t0:.0f} s)")
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "latest.md"), "w") as f:
        f.write("\n\n".join(parts) + "\n")
    with open(os.path.join(a.out, "latest.json"), "w") as f:
        json.dump(results, f, indent=1)
    log(f"written {a.out}/latest.md and latest.json")


if __name__ == "__main__":
    main()
