"""The GPU path on the CPU: batches off the critical path, frozen networks cast once, precision
switches that resume across each other, data-wait reporting."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from degflow.core.losses import LossSettings
from degflow.core.solvers import SolverSpec
from degflow.data.common import TrainCropDataset
from degflow.data.transforms import NUM_DIHEDRAL, crop, dihedral, random_crop_position
from degflow.infra.checkpoint import load_checkpoint
from degflow.infra.cluster import MAX_AUTO_WORKERS, resolve_workers
from degflow.infra.runtime import autocast
from degflow.models.unet import VelocityUNet
from degflow.training import train
from degflow.training.accel import held_for_precision
from degflow.training.latent_cache import load_or_build_latent_cache
from degflow.training.lfm import LFMStage, SplineSettings, aligned_training_set
from degflow.training.sampling import RowDraws

from test_throughput import SCALES, SquaredError, records, tiny_rae
from test_train import config as train_config


# ------------------------------------------------------------------ batches


def test_a_crop_of_an_image_held_in_memory_is_the_crop_of_the_loaded_image_and_owns_its_memory():
    recs = records(3, 40, 56)
    data = TrainCropDataset(recs, SCALES, 24, 64)
    for seed in range(40):
        item = data[(seed % 3, seed)]
        rec = recs[seed % 3]
        g = torch.Generator().manual_seed(seed)             # today's path: load everything, then crop
        hr, lr = rec.load(SCALES)
        top, left = random_crop_position(40, 56, 24, g)
        k = int(torch.randint(0, NUM_DIHEDRAL, (1,), generator=g))
        assert torch.equal(item["hr"], dihedral(crop(hr, top, left, 24, 24), k).contiguous())
        assert torch.equal(item["lr"], dihedral(crop(lr, top, left, 24, 24), k).contiguous())
    whole = TrainCropDataset(records(1, 24, 24), SCALES, 24, 4)              # the crop is the whole image
    before = whole.records[0].hr_image.clone()
    for seed in range(8):
        whole[(0, seed)]["hr"].fill_(5.0)                       # a caller may modify its item ...
    assert torch.equal(whole.records[0].hr_image, before)       # ... never the held image


def test_auto_workers_follow_the_allocation_on_a_gpu_and_are_none_on_the_cpu():
    assert resolve_workers("auto", "cpu", {}, affinity=16)[0] == 0
    assert resolve_workers("auto", "cuda", {}, affinity=16)[0] == MAX_AUTO_WORKERS
    assert resolve_workers("auto", "cuda", {"SLURM_CPUS_PER_TASK": "3"}, affinity=16) == (
        2, f"auto: SLURM_CPUS_PER_TASK=3, one core for the GPU process, at most {MAX_AUTO_WORKERS}")
    assert resolve_workers("auto", "cuda", {}, affinity=1)[0] == 0
    assert resolve_workers(3, "cpu", {}, affinity=1) == (3, "num_workers setting")
    for bad in (-1, "two", True, 1.5):
        with pytest.raises(ValueError, match="num_workers must be an integer >= 0 or 'auto' .*, got"):
            resolve_workers(bad, "cuda")


def test_the_device_resident_latent_cache_gathers_the_same_crops_as_the_host_one():
    rae = tiny_rae(0)
    recs = records(3, 40, 57)                                   # aligned parts 40 x 56: h != w
    host = load_or_build_latent_cache(rae, recs, SCALES, "a" * 64, torch.device("cpu"))
    table = load_or_build_latent_cache(rae, recs, SCALES, "a" * 64, torch.device("cpu"))
    table.make_resident(torch.device("cpu"))
    assert table.table.shape == (3, NUM_DIHEDRAL, 3, 4, 7, 7) and table.table_nbytes() == table.table.nbytes
    data = aligned_training_set(TrainCropDataset(recs, SCALES, 24, 64), rae.stride)
    where = torch.stack([data[(i % 3, i)]["where"] for i in range(64)])
    assert len(set(where[:, 3].tolist())) == NUM_DIHEDRAL        # every transform, odd ones with h, w swapped
    assert torch.equal(table.crops(where, 24), host.crops(where, 24))


# ------------------------------------------------------------------ precision


class CastCounter(TorchDispatchMode):
    """Counts dtype casts (``aten._to_copy``) of the watched tensors' storages."""

    def __init__(self, tensors):
        super().__init__()
        self.watched = {t.untyped_storage().data_ptr() for t in tensors}
        self.casts = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if (func is torch.ops.aten._to_copy.default and isinstance(args[0], torch.Tensor)
                and args[0].untyped_storage().data_ptr() in self.watched):
            self.casts += 1
        return func(*args, **(kwargs or {}))


def bf16_stage(precision: str) -> tuple[LFMStage, dict]:
    rae = tiny_rae(0)
    recs = records(3, 32, 32)
    cache = load_or_build_latent_cache(rae, recs, SCALES, "a" * 64, torch.device("cpu"))
    torch.manual_seed(3)
    velocity = VelocityUNet(in_channels=4, nf=16, ch_mult=(1, 2), num_res_blocks=1, image_size=4, init_scale=1.0,
                            dropout=0.0)
    lpips = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.GroupNorm(2, 8)).requires_grad_(False)

    class Perceptual(torch.nn.Module):          # a frozen conv net standing in for LPIPS: [B] per sample
        def __init__(self):
            super().__init__()
            self.net = lpips

        def forward(self, x, y):
            return (self.net(x) - self.net(y)).pow(2).flatten(1).mean(1)

    stage = LFMStage(rae, velocity, (1.0, *SCALES), SplineSettings(), LossSettings(lpips_weight=0.5),
                     SolverSpec.create(method="euler", steps=2), None, (1.0, *SCALES), torch.device("cpu"),
                     rae_source={}, lpips_loss=Perceptual(), lpips_metric=None, latent_cache=cache,
                     precision=precision)
    data = aligned_training_set(TrainCropDataset(recs, SCALES, 32, 64), rae.stride)
    batch = torch.utils.data.default_collate([data[(i, i)] for i in range(4)])
    return stage, batch


def bf16_step(stage: LFMStage, batch: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
    stage.velocity.zero_grad(set_to_none=True)
    batch["draws"] = RowDraws(11, 0)
    with autocast(torch.device("cpu"), "bf16"):
        loss, _ = stage.loss(batch)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in stage.velocity.parameters()]


def test_frozen_networks_are_cast_to_bf16_once_not_at_every_step():
    # before: the step runs the fp32-held frozen networks under bf16 autocast (precision="fp32"
    # holds them as they are), and autocast casts their weights again at every call
    for precision, expect_casts in (("fp32", True), ("bf16", False)):
        stage, batch = bf16_stage(precision)
        frozen = [*stage.rae.parameters(), *stage.rae_step.parameters(), *stage.lpips_loss.parameters()]
        bf16_step(stage, batch)                                  # warm-up
        with CastCounter(frozen) as counter:
            for _ in range(3):
                bf16_step(stage, batch)
        if expect_casts:
            assert counter.casts >= 3 * 10, counter.casts        # every conv weight, every step
        else:
            assert counter.casts == 0
    held = stage.rae_step
    assert held is not stage.rae and held.encoder.stem.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in stage.rae.parameters())        # checkpoints stay fp32
    norms = [m for m in held.modules() if type(m).__name__ == "ChannelLayerNorm"]
    assert norms and all(p.dtype == torch.float32 for m in norms for p in m.parameters())  # fp32 ops keep fp32


def test_holding_frozen_weights_in_bf16_computes_the_same_step_as_autocast_casting_them():
    results = [bf16_step(*bf16_stage(precision)) for precision in ("fp32", "bf16")]
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b)
    for a, b in zip(grads_a, grads_b):
        assert torch.equal(a, b)


def test_fp32_holds_the_frozen_networks_as_they_are():
    rae = tiny_rae(0)
    assert held_for_precision(rae, "fp32") is rae
    with pytest.raises(ValueError, match="precision='fp16' is not one of"):
        held_for_precision(rae, "fp16")


@pytest.mark.slow
def test_a_bf16_checkpoint_resumes_in_fp32_and_an_fp32_one_in_bf16(tmp_path):
    common = [f"output_root={tmp_path}", "stage.val_every=100", "stage.ckpt_every=2", "loss.lpips_weight=0",
              "eval.lpips=false"]
    train(train_config(["stage=rae", *common, "stage.steps=2"]), tmp_path / "rae")
    rae_ckpt = f"rae_ckpt={tmp_path / 'rae' / 'checkpoints' / 'last.pt'}"
    for first, then in (("bf16", "fp32"), ("fp32", "bf16")):
        for stage in ("rae", "lfm"):
            run = tmp_path / f"{stage}-{first}-then-{then}"
            extra = [rae_ckpt] if stage == "lfm" else []
            train(train_config([f"stage={stage}", *common, *extra, "stage.steps=2", f"precision={first}"]), run)
            metrics = train(train_config([f"stage={stage}", *common, *extra, "stage.steps=4", f"precision={then}"]),
                            run)
            assert metrics["step"] == 4
            ckpt = load_checkpoint(run / "checkpoints" / "last.pt", kind=stage)
            assert ckpt["step"] == 4 and ckpt["config"]["precision"] == then
            weights = [v for entry in ckpt["models"].values() for v in entry["state_dict"].values()
                       if v.is_floating_point()]
            assert weights and all(v.dtype == torch.float32 for v in weights)
            rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
            losses = [r["train/loss"] for r in rows if "train/loss" in r]
            assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]
            assert all(torch.isfinite(torch.tensor(losses)))


# ------------------------------------------------------------------ data wait


@pytest.mark.slow
def test_the_data_wait_share_of_a_step_is_logged_with_the_losses(tmp_path):
    train(train_config(["stage=rae", f"output_root={tmp_path}", "stage.steps=3", "stage.val_every=100"]),
          tmp_path / "rae")
    rows = [json.loads(line) for line in (tmp_path / "rae" / "history.jsonl").read_text().splitlines()]
    waits = [r["train/data_wait"] for r in rows if "train/loss" in r]
    assert len(waits) == 3 and all(0.0 <= w < 1.0 for w in waits)
    assert "data_wait=" in (tmp_path / "rae" / "train.log").read_text()


def test_tf32_switches_matrix_products_and_convolutions_together():
    from degflow.infra.runtime import set_tf32

    try:
        set_tf32(False)
        assert torch.backends.cuda.matmul.fp32_precision == "ieee" and torch.backends.cudnn.conv.fp32_precision == "ieee"
        set_tf32(True)
        assert torch.backends.cuda.matmul.fp32_precision == "tf32" and torch.backends.cudnn.conv.fp32_precision == "tf32"
        with pytest.raises(ValueError, match="tf32 must be true or false, got 'yes'"):
            set_tf32("yes")
    finally:  # torch's defaults
        torch.backends.cuda.matmul.fp32_precision = "none"
        torch.backends.cudnn.conv.fp32_precision = "tf32"


# ------------------------------------------------------------------ synthesis in batches


@pytest.fixture(scope="module")
def lfm_ckpt(tmp_path_factory):
    from test_synthesis import _write_lfm_checkpoint

    return _write_lfm_checkpoint(tmp_path_factory.mktemp("accel") / "lfm.pt", SolverSpec.create("rk4", steps=4))


def synthesizer(ckpt, **kwargs):
    from degflow.generation import Synthesizer

    return Synthesizer.from_checkpoint(ckpt, solver=SolverSpec.create("rk4", steps=4), **kwargs)


#: Batched synthesis (several tiles per encoder call, several scales per decoder call) agrees
#: with one tile and one scale at a time to this relative tolerance: max |a - b| / max |b|.
BATCHED_RTOL = 1e-5


@pytest.mark.parametrize("tile_size,tile_overlap", [(None, 0), (64, 32)])
def test_batched_tiles_and_scales_give_todays_images_within_1e_5_relative(lfm_ckpt, tile_size, tile_overlap):
    torch.manual_seed(5)
    hr = torch.rand(2, 3, 150, 230) * 2 - 1
    scales = [1.5, 2.25, 3.0, 4.0]
    one = synthesizer(lfm_ckpt, tile_size=tile_size, tile_overlap=tile_overlap)
    assert (one.decode_batch, one.tile_batch) == (1, 1)                    # auto on the CPU: today's path
    batched = synthesizer(lfm_ckpt, tile_size=tile_size, tile_overlap=tile_overlap, decode_batch=3, tile_batch=4)
    a, b = one.generate(hr, scales), batched.generate(hr, scales)
    assert a.tiles == b.tiles == (1 if tile_size is None else 28) and a.nfe == b.nfe
    for s in scales:
        err = float((b.images[s] - a.images[s]).abs().max()) / float(a.images[s].abs().max())
        assert err <= BATCHED_RTOL, (s, err)


def test_an_out_of_memory_decode_halves_the_batch_and_gives_the_same_images(lfm_ckpt, monkeypatch, caplog):
    torch.manual_seed(6)
    hr = torch.rand(1, 3, 64, 96) * 2 - 1
    scales = [1.5, 2.0, 3.0, 4.0, 2.5]
    want = synthesizer(lfm_ckpt, decode_batch=1).generate(hr, scales).images
    synth = synthesizer(lfm_ckpt, decode_batch=4, tile_batch=4)
    decode = synth.rae.decode

    def small_memory(z, feats):
        if z.shape[0] > 2:
            raise torch.OutOfMemoryError("simulated")
        return decode(z, feats)

    monkeypatch.setattr(synth.rae, "decode", small_memory)
    got = synth.generate(hr, scales).images
    assert synth.decode_batch == 2 and "decode_batch: out of memory with 4 per call" in caplog.text
    for s in scales:
        assert float((got[s] - want[s]).abs().max()) <= BATCHED_RTOL * float(want[s].abs().max())


def test_batch_settings_are_auto_or_positive_integers(lfm_ckpt):
    for bad in (0, -2, "many", 1.5, True):
        with pytest.raises(ValueError, match="decode_batch must be an integer >= 1 or 'auto' .*, got"):
            synthesizer(lfm_ckpt, decode_batch=bad)
    with pytest.raises(ValueError, match="tile_batch must be an integer >= 1 or 'auto'"):
        synthesizer(lfm_ckpt, tile_batch=0)


def test_the_writer_thread_writes_the_same_files_and_manifest(lfm_ckpt, tmp_path):
    from test_synthesis import _folder, _manifest

    from degflow.jobs.lr_dataset import write_lr_dataset

    src = _folder(tmp_path / "in", 5)
    synth = synthesizer(lfm_ckpt)
    outs = {}
    for threaded in (False, True):
        out = tmp_path / f"out-{threaded}"
        summary = write_lr_dataset(synth, src, out, [1.5, 3.0], size="both", baseline=["bicubic"], batch_size=2,
                                   progress=False, writer_thread=threaded)
        assert (summary.processed, summary.failed) == (5, 0)
        lines = sorted(_manifest(out / "manifest.jsonl"), key=lambda e: e["output"])
        outs[threaded] = (out, [{k: v for k, v in e.items() if k not in ("seconds", "check")} for e in lines])
    (a, lines_a), (b, lines_b) = outs[False], outs[True]
    assert lines_a == lines_b
    files = sorted(p.relative_to(a) for p in a.rglob("*.png") if "logs" not in p.parts)
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.png") if "logs" not in p.parts)
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def test_a_kill_during_threaded_writing_leaves_whole_images_and_resumes(lfm_ckpt, tmp_path):
    from test_synthesis import _folder, _manifest

    from degflow.jobs.lr_dataset import write_lr_dataset

    src = _folder(tmp_path / "in", 5)
    out = tmp_path / "out"
    synth = synthesizer(lfm_ckpt)
    done = []

    def killer(source: str) -> None:
        done.append(source)
        if len(done) == 2:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        write_lr_dataset(synth, src, out, [1.5, 3.0], progress=False, after_image=killer, writer_thread=True)
    recorded = {e["output"] for e in _manifest(out / "manifest.jsonl")}
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
    assert recorded == on_disk and len(on_disk) % 3 == 0 and len(on_disk) >= 2 * 3   # whole images only
    summary = write_lr_dataset(synth, src, out, [1.5, 3.0], progress=False, writer_thread=True)
    assert summary.processed + summary.skipped == 5 and summary.failed == 0
    assert len(_manifest(out / "manifest.jsonl")) == 5 * 3


# ------------------------------------------------------------------ the prepared GPU check


@pytest.mark.slow
def test_the_gpu_check_runs_its_cpu_path_and_reports_every_figure(tmp_path):
    from experiments.tools.gpu_check import main

    report = main(["--device", "cpu", "--tiny", "--steps", "2", "--out", str(tmp_path / "check")])
    assert json.loads((tmp_path / "check" / "gpu_check.json").read_text()) == report
    bench = report["bench"]
    assert set(bench["configurations"]) == {"ours fp32", "ours fp32+channels_last", "ours bf16",
                                            "ours bf16+channels_last", "reference"}
    assert all(v > 0 for v in bench["reference_over_ours"].values())
    best = bench["fastest_ours"]
    assert set(report["training"]) == {f"{stage} {v}" for stage in ("rae", "lfm") for v in dict.fromkeys(["fp32", best])}
    for run in report["training"].values():
        assert run["steps"] == 2 and run["seconds_per_step"] > 0 and 0 <= run["data_wait_share"] < 1
    synth = report["synthesis"]
    assert synth["scales"] == 3 and synth["job_outputs"] == 4 and synth["job_failed"] == 0
    assert synth["generate_seconds_per_scale"] > 0 and synth["batched_vs_one_scale_max_rel_diff"] <= 1e-5
    assert report["checks"]["training_steps"] == {k: 2 for k in report["training"]}
    assert report["env"]["num_workers_auto"] == 0 and report["env"]["gpus"] == 0
