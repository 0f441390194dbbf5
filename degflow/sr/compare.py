"""Downstream SR comparison (issue #16): do SR networks trained on degflow-generated pairs beat
those trained on bicubic, procedural (Real-ESRGAN) or only the real discrete-scale pairs?

One command, a Hydra multirun with one job per (training set, network, seed)::

    python -m degflow sr-compare -m sr_setup=realsr_x4 ckpt=<degflow lfm checkpoint> \\
        trainset=bicubic,procedural,real,degflow,degflow_photos seed=0,1
    python -m degflow sr-compare -m sr_setup=demo ckpt=<demo lfm checkpoint> \\
        trainset=bicubic,procedural,real,degflow,oracle,degflow_photos seed=0
    python -m degflow sr-compare -m ... trainset=degflow,degflow_stochastic,online_degflow_stochastic \
        stochastic.noise=<noise model of ckpt> seed=0,1            # many stochastic LR per HR (docs/STOCHASTIC.md)
    # on SLURM, one job per training set and seed: add hydra/launcher=cpu (or gpu)

Each job (``conf/sr_compare.yaml``):
1. prepares what its training set needs, cached under ``cache=`` and reused by every job and seed
   (a file lock serialises jobs that share a cache): the Canon split of ``experiments/reproduce/realsr_x4.py``
   or the demo photos with their real (procedural camera) LR, and ``synthesize.py``'s job
   (:func:`degflow.jobs.lr_dataset.write_lr_dataset`: degflow LR + bicubic + procedural baselines)
   on the training HR images and, for ``degflow_photos``, on the HR-only photos;
2. trains the SR network (:func:`degflow.sr.fit.train_sr`; resumes from its ``last.pt``);
3. scores it on every test set (:func:`degflow.sr.scoring.score_pairs`) and writes ``result.json``
   (metrics per test set and scale, per image, the training / generation wall seconds and threads).

The degflow checkpoint is an input: nothing here trains degflow. Nikon (``sr_setup=realsr_x4``) is
read only by scoring. When the multirun ends, :class:`CollectOnMultirunEnd` writes
``<out>/results.md``, ``results.json`` and ``results.png`` (mean ± sample SD over seeds);
``mode=collect`` does the same for the runs already under ``<out>/runs``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import time
from pathlib import Path
from typing import Any

from degflow.infra.files import atomic_write_json, atomic_write_text
from degflow.viz.tables import fmt, mean_sd

log = logging.getLogger(__name__)

METRICS = ("psnr_y", "ssim_y", "lpips")
NEEDS_GENERATION = ("bicubic", "procedural", "degflow", "degflow_photos", "kernel", "kernel_noise")
KERNEL_SETS = ("kernel", "kernel_noise")
#: training sets degraded on the fly (:mod:`degflow.sr.online`): trainset -> ``online.degradation``.
ONLINE_SETS: dict[str, str] = {"online_degflow": "degflow", "online_degflow_real": "degflow",
                               "online_procedural": "procedural", "online_bicubic": "bicubic",
                               "online_degflow_stochastic": "degflow",
                               "online_kernel": "kernel", "online_kernel_noise": "kernel_noise"}
#: online sets that mix in the real pairs of set ``degflow`` (at its share of real pairs).
ONLINE_WITH_REAL = ("online_degflow_real",)
#: what each online set holds (the table's legend).
ONLINE_DESCRIPTIONS: dict[str, str] = {
    **{name: f"the training HR images degraded on the fly by {deg}"
             + (" plus a new noise sample (stochastic.*)" if name.endswith("_stochastic") else "")
             + ", a new scale per batch from online.scale_range"
       for name, deg in ONLINE_SETS.items()},
    "online_degflow_real": "online_degflow, each batch drawn instead from the real pairs of set degflow with the "
                           "share those have in it (online.real_fraction)"}
#: the training sets that use the stochastic option (config node ``stochastic``).
STOCHASTIC_SETS = ("degflow_stochastic", "online_degflow_stochastic")
#: row order of the tables.
TABLE_ORDER = ("bicubic", "procedural", "real", "degflow", "oracle", "degflow_photos", "degflow_stochastic",
               *KERNEL_SETS, *ONLINE_SETS)


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on ``path`` (jobs sharing a cache build it once, one at a time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------- data preparation
def _prepare_demo(setup: dict, root: Path) -> None:
    """``root/{train,test,val}/HR`` + ``LR/x{s}``: the demo photos and their real LR (true LR size); ``val``
    (the bottom bands of the training photos, ``sr_setup.val_scales``) only when validation scales are set."""
    from degflow.core.resize import resize_to_lr
    from degflow.core.scales import scale_key
    from degflow.data import build_data
    from degflow.data.images import write_image

    done = root / "prepared.json"
    train_scales = sorted({1.0, *map(float, setup["real_scales"]), *map(float, setup["gen_scales"]),
                           *map(float, setup["test_scales"])})
    val_scales = [float(s) for s in setup.get("val_scales") or []]
    wanted = {"train_scales": train_scales[1:], "test_scales": [float(s) for s in setup["test_scales"]],
              "max_side": setup["max_side"], "data_seed": setup["data_seed"]}
    if val_scales:                  # the validation bands (bottom of the training photos) as a test set
        wanted["val_scales"] = val_scales
    if done.is_file():
        have = json.loads(done.read_text(encoding="utf-8"))
        if {k: have.get(k) for k in wanted} != wanted:
            raise ValueError(f"cache={root.parent} holds demo pairs prepared with other settings "
                             f"({ {k: have.get(k) for k in wanted} }, now {wanted}); use another cache=")
        return
    bundle = build_data("demo", train_scales=train_scales, val_scales=sorted({*train_scales, *val_scales}), crop_size=32,
                        samples_per_epoch=1, multiple_of=8, val_max_size=None, seed=setup["data_seed"],
                        max_side=setup["max_side"], val_fraction=setup["val_fraction"])
    for part, records, scales in (("train", bundle.train.records, train_scales[1:]),
                                  ("test", bundle.test.records, setup["test_scales"]),
                                  ("val", bundle.val.records if val_scales else [], val_scales)):
        for rec in records:
            write_image(root / part / "HR" / f"{rec.name}.png", rec.hr_image)
            for s in scales:
                write_image(root / part / "LR" / scale_key(s) / f"{rec.name}.png",
                            resize_to_lr(rec.lr_images[float(s)], float(s)))
    atomic_write_json(done, {"train": [r.name for r in bundle.train.records], "test": [r.name for r in bundle.test.records],
                      **wanted})


def _generate(cfg: dict, hr_dir: Path, out_dir: Path, baselines: list[str], stochastic: dict | None = None,
              kernel=None) -> float:
    """``synthesize.py``'s job on ``hr_dir`` at the generation scales (resumes; cached): the wall seconds
    this job spent on it once it held the cache's lock (the time another job held it, building the same
    set, is logged, not counted: a job that finds the set complete reports well under a second).
    ``stochastic``: the config's ``stochastic`` node (noise, samples, strength, seed) for set (g);
    ``kernel``: the fitted kernel baseline of the ``kernel`` / ``kernel_noise`` baselines."""
    from degflow.generation import Synthesizer
    from degflow.jobs.lr_dataset import write_lr_dataset

    setup = cfg["sr_setup"]
    asked = time.perf_counter()
    with _locked(out_dir.parent / f".{out_dir.name}.lock"):
        start = time.perf_counter()
        if start - asked > 1.0:
            log.info("waited %.0f s for another job building %s", start - asked, out_dir)
        synth = Synthesizer.from_checkpoint(cfg["ckpt"], device=cfg["device"])
        noise = {} if stochastic is None else {"noise": stochastic["noise"], "samples": stochastic["samples"],
                                               "strength": stochastic["strength"], "noise_seed": stochastic["seed"]}
        summary = write_lr_dataset(synth, hr_dir, out_dir, [float(s) for s in setup["gen_scales"]], size="lr",
                                   baselines=baselines, procedural_seed=cfg["procedural_seed"], progress=False,
                                   kernel=kernel, **noise)
    if summary.failed:
        raise RuntimeError(f"generation failed for {summary.failed} image(s) of {hr_dir}: see {out_dir}/failed.jsonl")
    seconds = time.perf_counter() - start
    record = out_dir / "generation_seconds.json"
    if summary.processed:   # the run that built it records its cost; later runs reuse it
        atomic_write_json(record, {"seconds": seconds, "images": summary.images, "scales": setup["gen_scales"],
                            "threads": _threads()})
    return seconds


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _kernel(cfg: dict, real, real_scales: list[float]):
    """The kernel baseline fitted on the real training pairs at ``sr_setup.real_scales`` (cached under the cache)."""
    from degflow.data.kernel_fit import folder_pairs, kernel_baseline
    from degflow.data.sr_pairs import PairFolder

    if real is None or any(float(s) not in real.lr_dirs for s in real_scales):
        raise ValueError(f"trainset={cfg['trainset']} fits its kernels on the real training pairs at "
                         f"sr_setup.real_scales={real_scales}; they are missing")
    folder = PairFolder(real.hr_dir, {float(s): real.lr_dirs[float(s)] for s in real_scales}, "real")
    with _locked(Path(cfg["cache"]) / ".kernel.lock"):
        return kernel_baseline(folder_pairs(folder), f"{cfg['sr_setup']['name']}: real training pairs",
                               cache_dir=Path(cfg["cache"]) / "kernel", noise=cfg["trainset"].endswith("kernel_noise"))


def prepare(cfg: dict) -> dict[str, Any]:
    """The training set's pair folders and the test pairs of ``cfg`` (building the cache as needed)."""
    from degflow.data.sr_pairs import lr_folder, pair_folder, training_set
    from degflow.infra.files import file_sha256

    setup, name = cfg["sr_setup"], cfg["trainset"]
    cache = Path(cfg["cache"])
    if setup["kind"] == "realsr_x4":
        from degflow.data.sr_pairs import make_split  # the fixed Canon split of the results

        canon, nikon = Path(setup["canon"]).resolve(), Path(setup["nikon"]).resolve()
        if canon == nikon:
            raise ValueError("sr_setup.canon and sr_setup.nikon are the same folder; Nikon is evaluation-only")
        with _locked(cache / ".split.lock"):
            make_split(canon, cache / "split", 4, "sr_setup.canon")
        src = cache / "split"
        tests = {"canon_test": [pair_folder(src / "test", setup["test_scales"], "canon_test")],
                 "nikon": [pair_folder(nikon, setup["test_scales"], "nikon")]}
    elif setup["kind"] == "demo":
        src = cache / "demo"
        with _locked(cache / ".demo.lock"):
            _prepare_demo(setup, src)
        tests = {"demo_test": [pair_folder(src / "test", setup["test_scales"], "demo_test")]}
    else:
        raise ValueError(f"sr_setup.kind={setup['kind']!r} is not one of ['realsr_x4', 'demo']")
    if setup.get("val_scales"):
        if setup["kind"] != "demo":
            raise ValueError("sr_setup.val_scales: a validation test set exists for the demo setup only")
        tests["demo_val"] = [pair_folder(src / "val", setup["val_scales"], "demo_val")]
    test_pairs = _test_pairs(cfg, tests)
    real_scales = sorted({float(s) for s in [*setup["real_scales"], *setup["gen_scales"], *setup["test_scales"]]
                          if lr_folder(src / "train", s).is_dir()})
    real = pair_folder(src / "train", real_scales, "real") if real_scales else None
    if name in ONLINE_SETS:
        # online_degflow_real: the real pairs of set degflow, at the real scales only
        beside = training_set("real", real=real, generated=None, hr_root=src, real_scales=setup["real_scales"],
                              gen_scales=setup["gen_scales"], test_scales=setup["test_scales"]) \
            if name in ONLINE_WITH_REAL else None
        kernel = _kernel(cfg, real, setup["real_scales"]) if ONLINE_SETS[name] in KERNEL_SETS else None
        return {"folders": None, "online_hr": src / "train" / "HR", "online_real": beside, "tests": test_pairs,
                "generation_seconds": {}, "generation_cache": None, "kernel": kernel}
    gen_seconds: dict[str, float] = {}
    generated, photos = None, []
    if name in NEEDS_GENERATION:
        gen_root = cache / f"gen-{file_sha256(cfg['ckpt'])[:12]}"
        generated = gen_root / "train"
        kernel = _kernel(cfg, real, setup["real_scales"]) if name in KERNEL_SETS else None
        gen_seconds["train"] = _generate(cfg, src / "train" / "HR", generated,
                                         ["bicubic", "procedural", *((name,) if kernel is not None else ())],
                                         kernel=kernel)
        if name == "degflow_photos":
            for p in setup["photos"]:
                out = gen_root / f"photos-{Path(p).name}"
                gen_seconds[out.name] = _generate(cfg, Path(p).resolve(), out, [])
                photos.append(out)
    samples = []
    if name == "degflow_stochastic":
        st = _stochastic(cfg)
        gen_root = cache / f"gen-{file_sha256(cfg['ckpt'])[:12]}"
        out = gen_root / (f"stochastic-{st['noise_sha256'][:12]}-strength{float(st['strength']):g}"
                          f"-n{st['samples']}-seed{st['seed']}")
        gen_seconds[out.name] = _generate(cfg, src / "train" / "HR", out, [], stochastic=st)
        samples = [out / "samples" / str(k) for k in range(int(st["samples"]))]
        generated = out
    folders = training_set(name, real=real, generated=generated, hr_root=generated, real_scales=setup["real_scales"],
                           gen_scales=setup["gen_scales"], test_scales=setup["test_scales"], photos=photos,
                           samples=samples)
    return {"folders": folders, "tests": test_pairs, "generation_seconds": gen_seconds,
            "generation_cache": str(generated.parent) if generated else None}


def _stochastic(cfg: dict) -> dict[str, Any]:
    """The ``stochastic`` node of a stochastic training set, with the noise file's digest; ValueError
    naming ``stochastic.noise`` without one."""
    from degflow.baselines.noise import load_noise_model

    st = dict(cfg["stochastic"])
    if not st.get("noise"):
        raise ValueError(f"trainset={cfg['trainset']} needs stochastic.noise=<a noise model file of ckpt> "
                         "(python -m degflow fit-noise)")
    return {**st, "noise_sha256": load_noise_model(st["noise"], key="stochastic.noise", with_digest=True)[1]}


def _test_pairs(cfg: dict, tests: dict[str, list]) -> dict[str, list]:
    """The pairs of every test set (the first ``eval.max_images`` per scale when set)."""
    from degflow.data.sr_pairs import find_pairs

    test_pairs = {k: find_pairs(v) for k, v in tests.items()}
    if cfg["eval"]["max_images"]:
        n = int(cfg["eval"]["max_images"])
        test_pairs = {k: [p for s in sorted({q.scale for q in v}) for p in [q for q in v if q.scale == s][:n]]
                      for k, v in test_pairs.items()}
    for name, pairs in test_pairs.items():
        _check_scorable(name, pairs, cfg["sr"]["network"])
    return test_pairs


def _check_scorable(test: str, pairs: list, network: str) -> None:
    """ValueError before any training when a test pair is too small for SSIM's 11x11 window after the
    border shave ceil(s) (the scored size: HR for liif, scale x LR for edsr)."""
    from degflow.data.images import read_image_size
    from degflow.sr.scoring import sr_shave

    for p in pairs:
        w, h = read_image_size(p.hr_path)
        if network == "edsr":
            lw, lh = read_image_size(p.lr_path)
            w, h = min(w, round(lw * p.scale)), min(h, round(lh * p.scale))
        shave = sr_shave(p.scale)
        if min(w, h) - 2 * shave < 11:
            raise ValueError(f"test set {test}: {p.hr_path.name} at x{p.scale:g} is {w}x{h}, too small to score "
                             f"(SSIM needs 11x11 pixels after a {shave}-pixel border shave: at least "
                             f"{11 + 2 * shave} per side); raise sr_setup.max_side or drop the scale from "
                             f"sr_setup.test_scales / sr_setup.val_scales")


# ----------------------------------------------------------------------------- one job
def _summary(rows: list[dict]) -> dict[str, dict[str, float | None]]:
    """``{x{s}: {metric: mean}, "all": ...}`` of per-image rows."""
    from degflow.core.scales import scale_key

    out = {}
    for key, sel in [(scale_key(s), [r for r in rows if r["scale"] == s]) for s in sorted({r["scale"] for r in rows})] \
            + [("all", rows)]:
        out[key] = {m: mean_sd([r[m] for r in sel])[0] for m in METRICS}
        out[key]["images"] = len(sel)
    return out


def _bicubic_reference(cache: Path, test: str, pairs: list, lpips, device) -> dict:
    """The scores of bicubic interpolation (no network) on ``pairs``, computed once per cache."""
    from degflow.sr.scoring import score_pairs

    path = cache / "bicubic_reference" / f"{test}-{len(pairs)}-lpips{int(lpips is not None)}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    summary = _summary(score_pairs(None, pairs, lpips, device))
    atomic_write_json(path, summary)
    return summary


def run_job(cfg: dict, run_dir: Path) -> dict:
    import torch

    from degflow.data.sr_pairs import find_pairs, load_pairs
    from degflow.infra.runtime import resolve_device, seed_everything
    from degflow.metrics.perceptual import load_lpips
    from degflow.models.sr import build_sr_model
    from degflow.sr.fit import SRTrainSettings, train_sr
    from degflow.sr.scoring import score_pairs

    setup, sr = cfg["sr_setup"], cfg["sr"]
    device = resolve_device(cfg["device"])
    prep = prepare(cfg)
    settings = SRTrainSettings(**{k: sr[k] for k in SRTrainSettings.__dataclass_fields__})
    counts: dict[str, dict[str, int]] = {}
    data, online = None, None
    if prep["folders"] is not None:
        pairs = find_pairs(prep["folders"])
        for p in pairs:
            counts.setdefault(p.source, {}).setdefault(f"x{p.scale:g}", 0)
            counts[p.source][f"x{p.scale:g}"] += 1
        log.info("training set %s: %d pairs %s", cfg["trainset"], len(pairs), counts)
        data = load_pairs(pairs)
    else:
        online = _online(cfg, prep["online_hr"], prep["online_real"], settings, device, prep["kernel"])
    scale = None
    if sr["network"] == "edsr":
        if len(setup["test_scales"]) != 1:
            raise ValueError(f"sr.network=edsr is a fixed-scale network: sr_setup.test_scales must be one scale, "
                             f"got {setup['test_scales']}")
        scale = setup["test_scales"][0]
    seed_everything(cfg["seed"])
    model = build_sr_model(sr["network"], scale, **{k: v for k, v in sr.items() if k != "network"})
    if online is None:
        training = train_sr(model, data, settings, cfg["seed"], run_dir, log=log.info)
    else:
        training = train_sr(model, None, settings, cfg["seed"], run_dir, log=log.info, source=online["source"],
                            scale_log=online["log"])
        online["log"].write_jsonl(run_dir / "online_scales.jsonl")
        counts = {"online": {"images": online["images"], "batches": len(online["log"].records)},
                  **({"real": online["real_pairs"]} if online["real_pairs"] else {})}
    model.to(device).eval()
    lpips = load_lpips("alex", cfg["lpips_weights"], device=device, config_key="lpips_weights") \
        if cfg["eval"]["lpips"] else None
    start = time.perf_counter()
    scores, reference = {}, {}
    for test, tpairs in prep["tests"].items():
        rows = score_pairs(model, tpairs, lpips, device)
        scores[test] = {"summary": _summary(rows), "images": rows}
        reference[test] = _bicubic_reference(Path(cfg["cache"]), test, tpairs, lpips, device)
    return {
        "setup": setup["name"], "trainset": cfg["trainset"], "network": sr["network"], "seed": cfg["seed"],
        "training_pairs": counts, "training": training, "threads": torch.get_num_threads(), "device": str(device),
        "generation_seconds": prep["generation_seconds"], "generation_cache": prep["generation_cache"],
        "eval_seconds": time.perf_counter() - start, "scores": scores, "bicubic_interpolation": reference,
        "ckpt": str(cfg["ckpt"]), "settings": sr,
        **({"stochastic": _stochastic(cfg)} if cfg["trainset"] in STOCHASTIC_SETS else {}),
        "online": None if online is None else {"degradation": online["degradation"].describe(),
                                               "scales": online["log"].summary(), "hr_crop": online["hr_crop"],
                                               "context": online["context"], "scale_range": online["scale_range"],
                                               "per": online["per"], "scale_law": online["scale_law"],
                                               "real_fraction": online["real_fraction"]},
    }


def _online(cfg: dict, hr_dir: Path, real: list | None, settings, device, kernel=None) -> dict[str, Any]:
    """The batch source of an ``online_*`` training set (:mod:`degflow.sr.online`); with ``real`` (pair
    folders), each batch comes from those pairs with probability ``online.real_fraction`` (null: their
    share in set ``degflow``, real scales / (real + generation scales)); ``kernel``: the kernel baseline
    of ``online_kernel`` / ``online_kernel_noise``."""
    import torch

    from degflow.data.images import find_images, read_image
    from degflow.data.sr_pairs import find_pairs, load_pairs, sample_patches
    from degflow.sr.online import (
        OnlineBatcher,
        ScaleLog,
        ScaleSampler,
        build_online_degradation,
        mixed_source,
        online_source,
    )

    on, setup = cfg["online"], cfg["sr_setup"]
    name = ONLINE_SETS[cfg["trainset"]]
    low, high = (float(v) for v in on["scale_range"])
    if cfg["sr"]["network"] == "edsr" and low != high:
        raise ValueError(f"sr.network=edsr is a fixed-scale network: online.scale_range must be one scale "
                         f"[s, s], got {on['scale_range']}")
    noise = {}
    if cfg["trainset"] in STOCHASTIC_SETS:
        st = _stochastic(cfg)
        noise = {"noise": st["noise"], "strength": st["strength"]}
    degradation = build_online_degradation(name, {"ckpt": cfg["ckpt"], "device": device, "max_scale": on["max_scale"],
                                                  "solver": on["solver"], "kernel": kernel, **noise})
    sampler = ScaleSampler(low, high, on["per"], on["scale_law"])
    scale_log = ScaleLog()
    batcher = OnlineBatcher(degradation, sampler, settings.lr_patch, on["hr_crop"], log=scale_log,
                            context=on["context"])
    images = [((read_image(p) + 1.0) * 127.5).round().to(torch.uint8) for p in find_images(hr_dir)]
    source = online_source(images, batcher, settings.batch_size, device)
    fraction, real_pairs = 0.0, {}
    if real:
        pairs = find_pairs(real)
        for p in pairs:
            real_pairs[f"x{p.scale:g}"] = real_pairs.get(f"x{p.scale:g}", 0) + 1
        data = load_pairs(pairs)
        n_real, n_gen = len(setup["real_scales"]), len(setup["gen_scales"])
        fraction = float(on["real_fraction"]) if on["real_fraction"] is not None else n_real / (n_real + n_gen)
        source = mixed_source(source, lambda g: sample_patches(data, settings.batch_size, settings.lr_patch, g),
                              fraction)
    log.info("training set %s: %d HR images degraded on the fly by %s, scales U(%s, %s) per %s, HR crops %d px, "
             "context %d px%s", cfg["trainset"], len(images), name, low, high, on["per"], batcher.hr_crop,
             batcher.context, f"; real pairs {real_pairs} in {fraction:.3f} of the batches" if real else "")
    return {"source": source, "log": scale_log, "degradation": degradation, "images": len(images),
            "hr_crop": batcher.hr_crop, "context": batcher.context, "scale_range": [low, high], "per": on["per"],
            "scale_law": on["scale_law"],
            "real_fraction": fraction, "real_pairs": real_pairs}


# ----------------------------------------------------------------------------- collect
def _label(test: str, scale_key: str) -> str:
    return f"{test} {scale_key}"


def aggregate(results: list[dict]) -> dict:
    """``{network: {trainset: {"cells": {test x{s}: {metric: [mean, sd, n]}}, "train_seconds": [...],
    "generation_seconds", "threads", "seeds"}}}`` plus the bicubic-interpolation reference row."""
    out: dict[str, dict[str, dict]] = {}
    for net in sorted({r["network"] for r in results}):
        out[net] = {}
        rows = [r for r in results if r["network"] == net]
        order = [t for t in TABLE_ORDER if any(r["trainset"] == t for r in rows)]
        for t in order:
            runs = sorted((r for r in rows if r["trainset"] == t), key=lambda r: r["seed"])
            cells = {}
            for test, sc in runs[0]["scores"].items():
                for key in sc["summary"]:
                    if key == "all":
                        continue
                    cells[_label(test, key)] = {m: list(mean_sd([r["scores"][test]["summary"][key][m] for r in runs]))
                                                for m in METRICS}
            out[net][t] = {"cells": cells, "seeds": [r["seed"] for r in runs], "stochastic": runs[0].get("stochastic"),
                           "train_seconds": list(mean_sd([r["training"]["seconds_total"] for r in runs])),
                           "generation_seconds": runs[0]["generation_seconds"],
                           "threads": sorted({r["threads"] for r in runs}), "pairs": runs[0]["training_pairs"]}
        ref = rows[0]["bicubic_interpolation"]
        out[net]["(bicubic interpolation, no network)"] = {
            "cells": {_label(test, k): {m: [v[m], None, 1] for m in METRICS} for test, s in ref.items()
                      for k, v in s.items() if k != "all"},
            "seeds": [], "train_seconds": [None, None, 0], "generation_seconds": {}, "threads": [], "pairs": {}}
    return out


def markdown(agg: dict, generation: dict[str, float]) -> str:
    from degflow.data.sr_pairs import TRAINING_SETS

    lines = []
    for net, sets in agg.items():
        cols = list(next(iter(sets.values()))["cells"])
        lines += [f"### {net}", "", "| training set | seeds | " + " | ".join(f"{c} PSNR-Y / SSIM-Y / LPIPS" for c in cols)
                  + " | train s (mean) | threads |", "|" + "---|" * (len(cols) + 4)]
        best = {c: max((s["cells"][c]["psnr_y"][0] for s in sets.values() if c in s["cells"]
                        and s["cells"][c]["psnr_y"][0] is not None), default=None) for c in cols}
        for t, s in sets.items():
            cells = []
            for c in cols:
                v = s["cells"].get(c)
                if v is None:
                    cells.append("–")
                    continue
                p = fmt(v["psnr_y"][0], v["psnr_y"][1], "psnr_y")
                p = f"**{p}**" if v["psnr_y"][0] is not None and v["psnr_y"][0] == best[c] else p
                cells.append(f"{p} / {fmt(v['ssim_y'][0], v['ssim_y'][1], 'ssim_y')} / "
                             f"{fmt(v['lpips'][0], v['lpips'][1], 'lpips')}")
            secs = s["train_seconds"][0]
            lines.append(f"| {t} | {','.join(map(str, s['seeds'])) or '–'} | " + " | ".join(cells)
                         + f" | {'–' if secs is None else f'{secs:.0f}'} | {','.join(map(str, s['threads'])) or '–'} |")
        lines.append("")
    shown = {t for sets in agg.values() for t in sets}
    lines.append("Training sets: " + "; ".join(f"`{k}` {v}" for k, v in {**TRAINING_SETS, **ONLINE_DESCRIPTIONS}.items()
                                               if k in shown) + ".")
    for net, sets in agg.items():
        for t in STOCHASTIC_SETS:
            st = (sets.get(t) or {}).get("stochastic")
            if st:
                many = f"{st['samples']} samples per HR image and scale, " if t == "degflow_stochastic" else ""
                lines.append(f"{t} ({net}): {many}strength {st['strength']:g}, noise_seed {st['seed']}, noise model "
                             f"sha256 {st['noise_sha256'][:12]}.")
    lines.append("Mean ± sample SD over the seeds listed (SR training seeds; the data and the degflow model are "
                 "the same for every seed); bold = best PSNR-Y per column. Y channel BT.601 in [16, 235], "
                 "data range 255, border shave = ceil(scale), SSIM on Y, LPIPS AlexNet on RGB.")
    if generation:
        lines.append("Generation (cached, shared by the sets that use it, wall seconds when built): "
                     + ", ".join(f"{k} {v:.0f} s" for k, v in generation.items()) + ".")
    return "\n".join(lines) + "\n"


def collect(out: Path) -> dict:
    """Tables of every ``result.json`` under ``out/runs`` -> ``out/results.{md,json,png}``."""
    from degflow.viz.plots import plot_method_bars

    results = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((out / "runs").rglob("result.json"))]
    if not results:
        raise ValueError(f"no result.json under {out / 'runs'}: run the jobs first")
    agg = aggregate(results)
    generation = {}
    for cache in sorted({r["generation_cache"] for r in results if r["generation_cache"]}):
        for rec in sorted(Path(cache).glob("*/generation_seconds.json")):
            generation[rec.parent.name] = json.loads(rec.read_text(encoding="utf-8"))["seconds"]
    table = markdown(agg, generation)
    atomic_write_text(out / "results.md", f"# Downstream SR: {results[0]['setup']}\n\n" + table)
    atomic_write_json(out / "results.json", {"aggregate": agg, "generation_seconds": generation,
                                      "runs": [{k: v for k, v in r.items() if k != "scores"} | {
                                          "scores": {t: s["summary"] for t, s in r["scores"].items()}}
                                               for r in results]})
    cells = [c for sets in agg.values() for c in next(iter(sets.values()))["cells"]]
    one_test = len({c.rsplit(" ", 1)[0] for c in cells}) == 1      # then the scale alone labels a bar group

    def group(net: str, c: str) -> str:
        c = c.rsplit(" ", 1)[1] if one_test else c
        return c if len(agg) == 1 else f"{net} {c}"
    plot = {m: {group(net, c): {t: tuple(s["cells"][c][m][:2]) for t, s in sets.items() if c in s["cells"]}
                for net, sets in agg.items() for c in next(iter(sets.values()))["cells"]} for m in METRICS}
    plot_method_bars(plot, out / "results.png")
    print(table, flush=True)
    print(f"table: {out / 'results.md'}\njson: {out / 'results.json'}\nplot: {out / 'results.png'}", flush=True)
    return agg
