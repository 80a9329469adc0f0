"""Peak memory of `mim.py` as its image folder grows, on one process and on two.

It writes N and 4N JPEGs of 224 px (random crops of scikit-learn's two sample photographs, as in
bench/mim_throughput.py) and runs recipes/mim.py on each with the ViT-small preset for a few steps,
every run in a fresh process with a fresh image cache. Each process reports its own peak resident memory
(VmHWM), which counts every page it ever held, file-backed pages included. The evaluation batch is 32 like
the training batch, so that it is full at N and at 4N (with the recipe's default of 256, 10% held out of a
small N fills less of it, and the activations differ). It measures:

- hfssl as it is: images decoded once into the on-disk cache and read per batch;
- the same recipe holding every decoded image in one in-memory tensor (how hfssl held images before its
  cache), for contrast;
- 4N images on two processes (`accelerate launch`, gloo on CPU): each process's peak beside the one-process
  run's; a process that held the decoded images would show the cache's size on top.

The last line reads `rss_growth_4x=X in_ram_growth_4x=Y two_process_rss_ratio=Z cache_mb=C`: X and Y are
peak RSS at 4N over N, Z is the larger peak of the two processes over the one-process peak at 4N.

    python bench/image_memory.py [--quick] [--images N]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(argv: list[str]) -> None:
    """Run mim.py with `argv` in this process; print this process's peak RSS as a JSON line."""
    in_ram, argv = argv[0] == "--in_ram", argv[1:]
    from hfssl.registry import load_recipe

    recipe = load_recipe("mim")
    if in_ram:
        from mim_throughput import held_in_ram

        original = recipe.decode_images
        recipe.decode_images = lambda *args, **kwargs: held_in_ram(original(*args, **kwargs))
    recipe.main(argv)
    rank = int(os.environ.get("RANK", "0"))
    print("PEAK " + json.dumps({"rank": rank, "peak_rss_mb": peak_rss_mb()}), flush=True)


def run(folder: Path, cache: Path, out: Path, steps: int, processes: int = 1, in_ram: bool = False) -> list[float]:
    """Peak RSS (MB) of each process of one mim.py run."""
    options = dict(
        train_dir=folder,
        model_preset="small",
        per_device_train_batch_size=32 // processes,
        per_device_eval_batch_size=32 // processes,  # full at N and at 4N: the peaks then differ by data, not by batch
        max_steps=steps,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=10_000,
        disable_tqdm="true",
        image_cache_dir=cache,
        output_dir=out,
    )
    args = (["--in_ram"] if in_ram else ["--plain"]) + [f"--{k}={v}" for k, v in options.items()]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if processes == 1:
        cmd = [sys.executable, __file__, "--_child", *args]
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env.update(OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1")
        config = ROOT / "recipes" / "configs" / "accelerate" / "cpu_2proc.yaml"
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
        cmd += ["--main_process_port", str(port), __file__, "--_child", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(proc.stdout[-3000:] + proc.stderr[-3000:])
    peaks = [json.loads(line[5:]) for line in proc.stdout.splitlines() if line.startswith("PEAK ")]
    return [p["peak_rss_mb"] for p in sorted(peaks, key=lambda p: p["rank"])]


def main() -> None:
    from mim_throughput import write_photo_crops

    from hfssl.runtime import hardware_name

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 500 images, 4 steps")
    parser.add_argument("--images", type=int, default=None, help="N (default 2,000; 500 with --quick)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    n = args.images or (500 if args.quick else 2_000)
    steps = args.steps or (4 if args.quick else 8)
    work = Path(tempfile.mkdtemp(prefix="hfssl-image-memory-"))
    for count in (n, 4 * n):
        write_photo_crops(work / f"images{count}", count)
    print(f"machine: {hardware_name()}; {n:,} and {4 * n:,} JPEGs of 224 px; ViT-small MAE, {steps} steps x 32 images")
    results: dict[str, float] = {}
    for label, in_ram in (("cache", False), ("in_ram", True)):
        for count in (n, 4 * n):
            tag = f"{label}_{count}"
            (peak,) = run(work / f"images{count}", work / f"cache-{tag}", work / f"out-{tag}", steps, in_ram=in_ram)
            results[tag] = peak
            where = "on-disk cache" if label == "cache" else "all images in RAM"
            print(f"  1 process, {where}, {count:,} images: peak RSS {peak:,.0f} MB", flush=True)
    cache_mb = sum(f.stat().st_size for f in (work / f"cache-cache_{4 * n}").rglob("pixels.u8")) / 2**20
    two = run(work / f"images{4 * n}", work / "cache-two", work / "out-two", steps, processes=2)
    print(f"  2 processes, on-disk cache, {4 * n:,} images: peak RSS " + " / ".join(f"{p:,.0f} MB" for p in two))
    growth = results[f"cache_{4 * n}"] / results[f"cache_{n}"]
    in_ram_growth = results[f"in_ram_{4 * n}"] / results[f"in_ram_{n}"]
    two_ratio = max(two) / results[f"cache_{4 * n}"]
    print(
        f"peak RSS from {n:,} to {4 * n:,} images: {growth:.3f}x with the cache, {in_ram_growth:.3f}x in RAM; "
        f"the decoded images take {cache_mb:,.0f} MB on disk; with 2 processes each peaks at {two_ratio:.3f}x "
        "the 1-process run"
    )
    if args.json:
        summary = dict(machine=hardware_name(), images=n, steps=steps, peak_rss_mb=results, two_processes_mb=two)
        summary.update(rss_growth_4x=growth, in_ram_growth_4x=in_ram_growth, two_process_rss_ratio=two_ratio, cache_mb=cache_mb)
        Path(args.json).write_text(json.dumps(summary, indent=2))
    print(
        f"rss_growth_4x={growth:.3f} in_ram_growth_4x={in_ram_growth:.3f} "
        f"two_process_rss_ratio={two_ratio:.3f} cache_mb={cache_mb:.0f}"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_child":
        child(sys.argv[2:])
    else:
        main()
