"""Online SR training data (degflow/sr/online.py): scales, batches, the CPU-worker and in-step
paths, the degradation registry, resumable online SR training, and the comparison's online sets."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_sr import TINY_SR, _compare, _rand_image
from test_synthesis import _write_lfm_checkpoint

from degflow.core.solvers import SolverSpec
from degflow.data.images import write_image
from degflow.generation.degrade import Degrader
from degflow.models.sr import build_sr_model
from degflow.sr.fit import SRTrainSettings, load_sr_checkpoint, train_sr
from degflow.sr.online import (
    ONLINE_DEGRADATIONS,
    BicubicOnline,
    DegflowOnline,
    HRCropDataset,
    OnlineBatcher,
    OnlineCollate,
    ProceduralOnline,
    ScaleLog,
    ScaleSampler,
    build_online_degradation,
    context_lr,
    default_hr_crop,
    mixed_source,
    online_source,
    register_online_degradation,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SOLVER = SolverSpec.create("rk4", steps=2, output_mode="cubic")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return _write_lfm_checkpoint(tmp_path_factory.mktemp("ckpt") / "lfm.pt", SolverSpec.create("rk4", steps=2))


def _crops(n: int, side: int, seed: int = 0) -> torch.Tensor:
    return torch.stack([_rand_image(side, side, seed + i) for i in range(n)])


def _u8(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) * 127.5).round().to(torch.uint8)


# --------------------------------------------------------------------------- scales
def test_scales_are_seeded_uniform_and_one_per_batch_or_per_sample():
    batch = ScaleSampler(1.0, 4.0, "batch")
    a = batch.draw(5, torch.Generator().manual_seed(0))
    assert len(set(a)) == 1 and 1.0 <= a[0] <= 4.0
    assert a == batch.draw(5, torch.Generator().manual_seed(0))
    per = ScaleSampler(1.0, 4.0, "sample")
    draws = [s for k in range(200) for s in per.draw(4, torch.Generator().manual_seed(k))]
    assert len(set(draws)) > 700 and min(draws) >= 1.0 and max(draws) <= 4.0
    assert abs(sum(draws) / len(draws) - 2.5) < 0.1                            # uniform: mean 2.5
    assert all(round(s, 4) == s for s in draws)
    assert ScaleSampler(4.0, 4.0).draw(3, torch.Generator()) == [4.0, 4.0, 4.0]
    cell = [s for k in range(200) for s in ScaleSampler(1.0, 4.0, "sample", "cell").draw(4, torch.Generator().manual_seed(k))]
    assert min(cell) >= 1.0 and max(cell) <= 4.0
    assert abs(sum(1 / s for s in cell) / len(cell) - 0.625) < 0.02                 # 1/s uniform in [1/4, 1]
    assert 0.45 < sum(s < 1.6 for s in cell) / len(cell) < 0.55
    for bad, message in [((4.0, 2.0), "low <= high"), ((0.5, 2.0), ">= 1"), ((1.0, 2.0, "image"), "online.per"),
                         ((1.0, 2.0, "batch", "log"), "online.scale_law")]:
        with pytest.raises(ValueError, match=message):
            ScaleSampler(*bad)


def test_the_hr_crop_holds_an_lr_patch_at_the_largest_scale():
    assert default_hr_crop(24, 4.0) == 94 and default_hr_crop(24, 4.0, 32) == 96      # round(23.5) == 24
    assert default_hr_crop(24, 3.3) == 78 and default_hr_crop(24, 3.3, 32) == 96
    for p in (5, 8, 24, 48):
        for high in (1.0, 1.37, 2.5, 3.99, 4.0):
            q = default_hr_crop(p, high)
            assert round(q / high) >= p and round((q - 1) / high) < p or q == p


# --------------------------------------------------------------------------- batches
def test_a_batch_holds_aligned_patches_of_the_degraded_crop_and_logs_its_scales():
    log = ScaleLog()
    batcher = OnlineBatcher(BicubicOnline(), ScaleSampler(1.5, 3.5), lr_patch=12, log=log, context=0)
    assert batcher.hr_crop == 41
    g = torch.Generator().manual_seed(1)
    hr = _crops(3, batcher.hr_crop)
    batch = batcher(hr, g)
    s = batch.scales[0]
    assert batch.lr.shape == (3, 3, 12, 12) and batch.hr.shape[-1] == round(12 * 41 / round(41 / s))
    for b, (lr_p, hr_p, scale) in enumerate(batch.pairs()):
        assert scale == s
        # the LR patch is a window of the whole crop's LR, the HR patch the HR window over it
        full = BicubicOnline()(hr[b:b + 1], [s], [0])[0]
        h = full.shape[-1]
        (top, left), = [(i, j) for i in range(h - 11) for j in range(h - 11)
                        if torch.equal(full[:, i:i + 12, j:j + 12], lr_p)]
        size = round(12 * 41 / h)
        htop, hleft = min(round(top * 41 / h), 41 - size), min(round(left * 41 / h), 41 - size)
        assert torch.equal(hr_p, hr[b, :, htop:htop + size, hleft:hleft + size])
    assert log.records == [{"batch": 0, "scales": batch.scales, "seeds": batch.seeds}]
    second = batcher(hr, g)
    assert second.index == 1 and len(log.records) == 2
    summary = log.summary()
    assert summary["batches"] == 2 and summary["samples"] == 6 and sum(summary["counts"].values()) == 6
    with pytest.raises(ValueError, match=r"\[B, 3, 41, 41\] \(online.hr_crop\)"):
        batcher(_crops(2, 40), g)
    with pytest.raises(ValueError, match="online.hr_crop=30.*at least 41"):
        OnlineBatcher(BicubicOnline(), ScaleSampler(1.5, 3.5), lr_patch=12, hr_crop=30, context=0)


def test_one_integer_scale_gets_a_crop_divisible_by_it_so_the_hr_patch_is_exactly_s_times_the_lr_patch():
    """A fixed-scale network (edsr, online.scale_range [4, 4]) needs HR = 4 x LR exactly: the default crop
    of a degradation without a pad multiple (118 px here) is rounded up to a multiple of 4."""
    assert default_hr_crop(24, 4.0, context=12, low=4.0) == 118
    for deg in (BicubicOnline(), ProceduralOnline()):
        batcher = OnlineBatcher(deg, ScaleSampler(4.0, 4.0), lr_patch=24, context=12)
        assert batcher.hr_crop == 120
        batch = batcher(_crops(2, 120), torch.Generator().manual_seed(0))
        assert tuple(batch.lr.shape[-2:]) == (24, 24) and tuple(batch.hr.shape[-2:]) == (96, 96)
    assert OnlineBatcher(BicubicOnline(), ScaleSampler(3.5, 3.5), lr_patch=24).hr_crop == \
        default_hr_crop(24, 3.5, context=12, low=3.5)                    # a fractional scale: unchanged


def test_the_lr_patch_keeps_its_context_away_from_the_crop_edges():
    """online.context HR pixels (ceil(context / s) LR pixels) between the LR patch and the edges of
    the degraded crop, at every scale of the range; the default crop is just large enough."""
    batcher = OnlineBatcher(BicubicOnline(), ScaleSampler(1.0, 4.0, "sample"), lr_patch=8, context=12)
    assert batcher.hr_crop == default_hr_crop(8, 4.0, context=12, low=1.0)
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(30):
        hr = _crops(4, batcher.hr_crop, seed=int(torch.randint(100, (1,), generator=g)))
        batch = batcher(hr, g)
        for b, s in enumerate(batch.scales):
            full = BicubicOnline()(hr[b:b + 1], [s], [0])[0]
            h = full.shape[-1]
            c = context_lr(12, s)
            spots = [(i, j) for i in range(h - 7) for j in range(h - 7) if torch.equal(full[:, i:i + 8, j:j + 8],
                                                                                        batch.lr[b])]
            assert any(c <= i <= h - 8 - c and c <= j <= h - 8 - c for i, j in spots)
            seen.add(min(i for i, _ in spots) == c)
    assert True in seen                          # the innermost allowed position is drawn too
    assert context_lr(12, 4.0) == 3 and context_lr(12, 1.5) == 8 and context_lr(0, 2.0) == 0
    with pytest.raises(ValueError, match="online.context"):
        OnlineBatcher(BicubicOnline(), ScaleSampler(1.0, 4.0), lr_patch=8, context=-1)


@pytest.mark.parametrize("name", ["bicubic", "procedural"])
def test_the_same_seed_gives_the_same_batch_and_samples_do_not_depend_on_each_other(name):
    deg = build_online_degradation(name)
    hr = _crops(3, 48)
    a = deg(hr, [2.0, 3.1, 1.4], [5, 6, 7])
    b = deg(hr, [2.0, 3.1, 1.4], [5, 6, 7])
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert [tuple(x.shape) for x in a] == [(3, 24, 24), (3, 15, 15), (3, 34, 34)]
    other = deg(torch.cat([hr[:1], _crops(1, 48, seed=9)]), [2.0, 1.1], [5, 8])
    assert torch.equal(other[0], a[0])
    for x in a:                                                                 # 8-bit levels in [-1, 1]
        assert torch.equal(((x + 1) * 127.5).round(), (x + 1) * 127.5) or \
            float((((x + 1) * 127.5) - ((x + 1) * 127.5).round()).abs().max()) < 1e-4
    if name == "procedural":
        assert not torch.equal(deg(hr, [2.0] * 3, [1, 2, 3])[0], deg(hr, [2.0] * 3, [2, 2, 3])[0])


def test_degflow_online_is_the_degrader_and_uses_its_pad_multiple(ckpt):
    deg = Degrader.from_checkpoint(ckpt, solver=SOLVER)
    online = build_online_degradation("degflow", {"ckpt": ckpt, "solver": SOLVER.to_dict()})
    assert isinstance(online, DegflowOnline) and online.describe()["independent"]
    hr = _crops(2, 32)
    got = online(hr, [1.5, 3.0], [0, 1])
    ref = deg(hr, [1.5, 3.0]).lr
    assert all(torch.equal(x, y) for x, y in zip(got, ref))
    one = online(hr, [2.0, 2.0], [0, 1])
    assert torch.equal(torch.stack(one), deg(hr, 2.0).lr)
    batcher = OnlineBatcher(online, ScaleSampler(1.0, 2.5), lr_patch=10)
    assert batcher.hr_crop % deg.synth.pad_multiple == 0 and batcher.hr_crop >= default_hr_crop(10, 2.5)
    with pytest.raises(ValueError, match="needs ckpt="):
        build_online_degradation("degflow", {})


def test_one_config_key_chooses_the_degradation_and_a_new_one_registers_in_a_few_lines():
    assert {"degflow", "procedural", "bicubic"} <= set(ONLINE_DEGRADATIONS)
    with pytest.raises(ValueError, match=r"online.degradation='jpeg' is not one of \[.*'bicubic'"):
        build_online_degradation("jpeg")

    class Box:                                  # the interface: __call__(hr, scales, seeds), to, describe
        name = "box"

        def __call__(self, hr, scales, seeds):
            return [F.interpolate(x[None], size=(round(x.shape[-2] / s),) * 2, mode="area")[0]
                    for x, s in zip(hr, scales)]

        def to(self, device):
            return self

        def describe(self):
            return {"kind": "box"}

    try:
        register_online_degradation("box")(lambda options: Box())
        with pytest.raises(ValueError, match="registered twice"):
            register_online_degradation("box")(lambda options: Box())
        batcher = OnlineBatcher(build_online_degradation("box"), ScaleSampler(2.0, 2.0), lr_patch=8)
        assert batcher(_crops(2, batcher.hr_crop), torch.Generator()).lr.shape == (2, 3, 8, 8)
    finally:
        ONLINE_DEGRADATIONS.pop("box", None)


def test_per_sample_scales_give_a_list_of_hr_patches():
    batcher = OnlineBatcher(ProceduralOnline(), ScaleSampler(1.2, 3.8, "sample"), lr_patch=8, context=0)
    batch = batcher(_crops(4, batcher.hr_crop), torch.Generator().manual_seed(3))
    assert batch.lr.shape == (4, 3, 8, 8) and len(set(batch.scales)) == 4
    assert isinstance(batch.hr, list)
    assert [x.shape[-1] for x in batch.hr] == [round(8 * batcher.hr_crop / round(batcher.hr_crop / s))
                                               for s in batch.scales]


def test_a_mixed_source_draws_the_offline_batches_at_its_fraction():
    seen = []
    source = mixed_source(lambda g: seen.append("online") or [], lambda g: seen.append("real") or [], 0.25)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        source(g)
    assert 0.2 < seen.count("real") / 400 < 0.3
    with pytest.raises(ValueError, match="online.real_fraction"):
        mixed_source(None, None, 1.5)


@pytest.mark.slow
def test_cpu_workers_give_the_same_batches_whatever_their_number(tmp_path):
    images = [_u8(_rand_image(60, 70, i)) for i in range(3)]
    paths = []
    for i, x in enumerate(images):
        write_image(tmp_path / f"{i}.png", x.float() / 127.5 - 1)
        paths.append(tmp_path / f"{i}.png")
    batcher = OnlineBatcher(ProceduralOnline(), ScaleSampler(1.0, 4.0), lr_patch=8, context=0)

    def batches(workers: int, images) -> list:
        data = HRCropDataset(images, batcher.hr_crop, length=12, seed=4)
        loader = torch.utils.data.DataLoader(data, batch_size=4, num_workers=workers,
                                             collate_fn=OnlineCollate(batcher, seed=4))
        return list(loader)

    one, two = batches(0, paths), batches(2, images)
    assert [b.index for b in one] == [0, 4, 8]
    for a, b in zip(one, two):
        assert a.scales == b.scales and a.seeds == b.seeds and torch.equal(a.lr, b.lr) and torch.equal(a.hr, b.hr)
    assert len({b.scales[0] for b in one}) == 3
    log = ScaleLog()
    for b in one:
        log.add(b)
    log.write_jsonl(tmp_path / "scales.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "scales.jsonl").read_text().splitlines()]
    assert [x["scales"] for x in lines] == [b.scales for b in one]
    with pytest.raises(ValueError, match="log=None"):
        OnlineCollate(OnlineBatcher(ProceduralOnline(), ScaleSampler(1.0, 4.0), lr_patch=8, log=ScaleLog()))


# --------------------------------------------------------------------------- training
def _train_online(tmp_path: Path, ckpt: Path, steps: int, stop_after: int | None = None):
    images = [_u8(_rand_image(64, 64, i)) for i in range(2)]
    settings = SRTrainSettings(steps=steps, batch_size=2, lr_patch=8, query_pixels=16, ckpt_every=2, log_every=1)
    deg = DegflowOnline(Degrader.from_checkpoint(ckpt, solver=SOLVER))
    log = ScaleLog()
    batcher = OnlineBatcher(deg, ScaleSampler(1.0, 4.0), lr_patch=8, log=log, context=4)
    torch.manual_seed(0)
    model = build_sr_model("liif", None, n_feats=8, n_blocks=1, mlp_hidden=16)

    def stop(line):
        if stop_after is not None and line.startswith(f"step {stop_after}/"):
            raise KeyboardInterrupt("stopped")
    info = train_sr(model, None, settings, 0, tmp_path / "run", log=stop,
                    source=online_source(images, batcher, settings.batch_size), scale_log=log)
    return model, info, log


@pytest.mark.slow
def test_online_sr_training_resumes_exactly_with_its_scale_log(tmp_path, ckpt):
    whole, _info, log = _train_online(tmp_path / "whole", ckpt, 4)
    assert len(log.records) == 4 and len({r["scales"][0] for r in log.records}) == 4
    with pytest.raises(KeyboardInterrupt):
        _train_online(tmp_path / "cut", ckpt, 4, stop_after=3)
    assert load_sr_checkpoint(tmp_path / "cut" / "run" / "checkpoints" / "last.pt")["step"] == 2
    resumed, info2, log2 = _train_online(tmp_path / "cut", ckpt, 4)
    assert info2["resumed_from"] == 2 and log2.records == log.records
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="not both"):
        train_sr(whole, [], SRTrainSettings(), 0, tmp_path / "x", source=lambda g: [])


# --------------------------------------------------------------------------- the comparison
#: the comparison's tiny settings (tests/test_sr.py) with a validation test set
TINY = [*(a for a in TINY_SR if not a.startswith(("sr_setup.val_scales", "sr_setup.max_side"))),
        "sr_setup.val_scales=[1.25,2]", "sr_setup.max_side=96", "online.context=4"]


def test_a_test_pair_too_small_to_score_is_refused_before_any_training(tmp_path):
    from degflow.data.sr_pairs import find_pairs, pair_folder
    from degflow.sr.compare import _test_pairs

    root = tmp_path / "val"
    write_image(root / "HR" / "band.png", _rand_image(16, 64, 0))       # a 64x16 validation band
    write_image(root / "LR" / "x1.25" / "band.png", _rand_image(13, 51, 1))
    write_image(root / "LR" / "x2" / "band.png", _rand_image(8, 32, 2))
    cfg = {"eval": {"max_images": None}, "sr": {"network": "liif"}}
    ok = _test_pairs(cfg, {"demo_val": [pair_folder(root, [1.25, 2], "demo_val")]})   # 16 - 2 x 2 = 12 rows
    assert len(ok["demo_val"]) == 2
    write_image(root / "HR" / "band.png", _rand_image(14, 64, 0))       # 14 - 2 x 2 = 10 < 11 rows
    with pytest.raises(ValueError, match=r"demo_val: band.png at x1.25 is 64x14, too small .* sr_setup.max_side"):
        _test_pairs(cfg, {"demo_val": [pair_folder(root, [1.25, 2], "demo_val")]})
    edsr = {"eval": {"max_images": None}, "sr": {"network": "edsr"}}    # scored at 4 x LR: 4 x 3 = 12 < 19
    write_image(root / "HR" / "band.png", _rand_image(40, 64, 0))
    write_image(root / "LR" / "x4" / "band.png", _rand_image(3, 16, 3))
    assert [p.scale for p in find_pairs([pair_folder(root, [4], "t")])] == [4.0]
    with pytest.raises(ValueError, match=r"at x4 is 64x12"):
        _test_pairs(edsr, {"t": [pair_folder(root, [4], "t")]})


@pytest.mark.slow
def test_one_command_trains_the_online_sets_beside_an_offline_one_and_collects_the_table(tmp_path, ckpt):
    out = tmp_path / "out"
    proc = _compare("-m", "sr_setup=demo", f"ckpt={ckpt}", f"out={out}",
                    "trainset=degflow,online_degflow,online_degflow_real,online_procedural,online_bicubic", "seed=0",
                    *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "results.json").read_text())["aggregate"]["liif"]
    assert list(rows)[:5] == ["degflow", "online_degflow", "online_degflow_real", "online_procedural", "online_bicubic"]
    for name in ("online_degflow", "online_degflow_real", "online_procedural", "online_bicubic"):
        assert set(rows[name]["cells"]) == {"demo_test x1.5", "demo_test x3", "demo_val x1.25", "demo_val x2"}
        assert all(math.isfinite(c["psnr_y"][0]) for c in rows[name]["cells"].values())
        run = out / "runs" / "liif" / name / "seed-0"
        result = json.loads((run / "result.json").read_text())
        assert result["online"]["scale_range"] == [1.0, 4.0] and result["online"]["context"] == 4
        batches = result["online"]["scales"]["batches"]
        assert len((run / "online_scales.jsonl").read_text().splitlines()) == batches
        assert batches == 2 or name == "online_degflow_real"          # real batches are not online draws
    real = json.loads((out / "runs/liif/online_degflow_real/seed-0/result.json").read_text())
    assert real["online"]["real_fraction"] == pytest.approx(1 / 4)      # real x2 beside 3 generation scales
    assert real["training_pairs"]["real"] == {"x2": 5}
    assert json.loads((out / "runs/liif/online_degflow/seed-0/result.json").read_text())["online"]["degradation"][
        "kind"] == "degflow"
    table = (out / "results.md").read_text()
    assert "| online_degflow | 0 |" in table and "degraded on the fly by degflow" in table


@pytest.mark.slow
def test_the_slurm_launcher_runs_the_online_sets_as_jobs_in_a_dry_run(tmp_path):
    proc = _compare("-m", "sr_setup=demo", "ckpt=none.pt", f"out={tmp_path}", "hydra/launcher=cpu",
                    "hydra.launcher.dry_run=true", "trainset=degflow,online_degflow,online_procedural,online_bicubic",
                    "seed=0,1", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "DRY RUN, nothing submitted: 8 job(s)" in proc.stdout
    assert "trainset=online_procedural" in proc.stdout
