"""Converting the authors' released weights (present091/DegFlow) into degflow checkpoints.

The authors' files are rebuilt here from ``tests/data/official_keys_*.json``: the names, shapes
and dtypes of every tensor in their two files, dumped once from their models (no code of
theirs is used here). Structure tests use the same key layout with every channel count
divided by 16 (``_reduced``); one module-scoped fixture converts a paper-size pair.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

from degflow.infra.checkpoint import load_checkpoint
from degflow.cli.app import run_tool
from degflow.cli.convert_official import main
from degflow.jobs.convert_official import ConversionError, convert_official
from degflow.models.official import rae_key_map, velocity_key_map
from degflow.models.rae import RAE
from degflow.models.unet import VelocityUNet
from degflow.core.solvers import SolverSpec

DATA = Path(__file__).resolve().parent / "data"
AUTHORS_T_PARAMS = {"LR2": -0.693, "LR3": 0.693}  # their initial (and, frozen, released) logits

# our architectures for the reduced layout (paper widths / 16)
SMALL_RAE = {"widths": [8, 8, 16, 32]}
SMALL_LFM = {"nf": 8}
SMALL_OVERRIDES = ["model.rae.widths=[8,8,16,32]", "model.lfm.nf=8"]



def _status(main, argv: list[str]) -> int:
    """Exit status of a tool run through the one CLI wrapper (:func:`degflow.cli.app.run_tool`)."""
    with pytest.raises(SystemExit) as exited:
        run_tool(main, argv)
    return exited.value.code

def _entries(name: str) -> dict[str, list[tuple[str, tuple[int, ...], str]]]:
    """``{top: [(name, shape, dtype), ...]}`` of the authors' ``autoencoder`` or ``flow`` file."""
    raw = json.loads((DATA / f"official_keys_{name}.json").read_text())["entries"]
    return {top: [(n, tuple(s), d) for n, s, d in rows] for top, rows in raw.items()}


def _reduced(entries):
    """The same layout with every channel count (a multiple of 128) divided by 16."""
    return {top: [(n, tuple(d // 16 if d % 128 == 0 else d for d in s), t) for n, s, t in rows]
            for top, rows in entries.items()}


def _authors_files(tmp: Path, reduced: bool = True, seed: int = 0, t_params=AUTHORS_T_PARAMS):
    """Random tensors in the authors' exact format; returns the two paths and their tensors."""
    g = torch.Generator().manual_seed(seed)
    files = {}
    for name in ("autoencoder", "flow"):
        entries = _entries(name)
        entries = _reduced(entries) if reduced else entries
        obj = {}
        for top, rows in entries.items():
            obj[top] = {}
            for n, shape, dtype in rows:
                if top == "t_params":
                    obj[top][n] = torch.tensor(t_params[n])
                else:
                    # small values: paper-size networks stay finite on random weights
                    obj[top][n] = (0.02 * torch.randn(shape, generator=g)).to(getattr(torch, dtype))
        path = tmp / f"{name}.pth"
        torch.save(obj, path)
        files[name] = (path, obj)
    return files["autoencoder"], files["flow"]


def _convert_small(tmp: Path, ae: Path, flow: Path, **kw):
    return convert_official(ae, flow, tmp / "lfm.pt", rae_config=SMALL_RAE, velocity_config=SMALL_LFM, **kw)


def _flat(obj) -> dict[str, torch.Tensor]:
    return {f"{top}.{n}": v for top, sd in obj.items() for n, v in sd.items()}


# ---------------------------------------------------------------------------- the mapping
def test_paper_presets_have_exactly_the_tensor_names_and_shapes_of_the_authors_files():
    with torch.device("meta"):
        rae, net = RAE(), VelocityUNet()
    ours = {**{t: tuple(rae.state_dict()[o].shape) for t, o in rae_key_map(rae).items()},
            **{t: tuple(net.state_dict()[o].shape) for t, o in velocity_key_map(net).items()}}
    theirs = {f"{top}.{n}": s for name in ("autoencoder", "flow")
              for top, rows in _entries(name).items() for n, s, _ in rows}
    # the two knot-time logits and NCSN++'s unused noise-level buffer carry no weight of ours
    assert set(theirs) - set(ours) == {"t_params.LR2", "t_params.LR3", "model.sigmas"}
    assert set(ours) <= set(theirs)
    assert {n: theirs[n] for n in ours} == ours
    assert len(ours) == len(rae.state_dict()) + len(net.state_dict()) == 144 + 514
    assert sum(math.prod(s) for n, s in ours.items() if n.startswith(("encoder", "decoder"))) == 29_397_767
    assert sum(math.prod(s) for n, s in ours.items() if n.startswith("model")) == 60_488_324


def test_the_mapping_is_one_to_one_and_follows_the_authors_module_order():
    with torch.device("meta"):
        net = VelocityUNet()
    vmap = velocity_key_map(net)
    assert len(set(vmap.values())) == len(vmap)
    assert vmap["model.all_modules.0.weight"] == "time_embed.0.weight"
    assert vmap["model.all_modules.2.weight"] == "conv_in.weight"
    assert vmap["model.all_modules.3.Dense_0.weight"] == "down.0.blocks.0.temb_proj.weight"
    assert vmap["model.all_modules.7.Conv_2.weight"] == "down.0.resample.skip.weight"
    # 3-21 down path, then the middle: resblock 22, attention 23 (NIN weights [in, out]), resblock 24
    assert vmap["model.all_modules.21.Conv_1.weight"] == "down.3.blocks.3.conv2.weight"
    assert vmap["model.all_modules.23.NIN_0.W"] == "mid_attn.q.weight"
    assert vmap["model.all_modules.23.NIN_3.b"] == "mid_attn.proj.bias"
    assert vmap["model.all_modules.30.GroupNorm_1.bias"] == "up.0.resample.norm2.bias"
    assert vmap["model.all_modules.48.weight"] == "norm_out.weight"
    assert vmap["model.all_modules.49.weight"] == "conv_out.weight"
    with torch.device("meta"):
        rae = RAE()
    rmap = rae_key_map(rae)
    assert rmap["encoder.EB2.beta"] == "encoder.levels.2.units.0.gain"
    assert rmap["encoder.EB2.gamma"] == "encoder.levels.2.units.1.gain"
    assert rmap["encoder.EB1.RB1.norm0.body.bias"] == "encoder.levels.1.units.1.block.norm0.bias"
    assert rmap["decoder.DB0.up.0.weight"] == "decoder.levels.3.up.0.weight"  # coarsest first
    assert rmap["decoder.conv_cat2.weight"] == "decoder.fuse.2.weight"
    assert rmap["decoder.refine.1.bias"] == "decoder.out.1.bias"


def test_architectures_the_authors_cannot_have_are_refused():
    with torch.device("meta"):
        with pytest.raises(ValueError, match="num_res_blocks"):
            rae_key_map(RAE(num_res_blocks=1))
        with pytest.raises(ValueError, match="mid_attention"):
            velocity_key_map(VelocityUNet(mid_attention=False))
        with pytest.raises(ValueError, match="999"):
            velocity_key_map(VelocityUNet(time_embedding_scale=1.0))


# ---------------------------------------------------------------------------- paper size
@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("paper")
    (ae, ae_obj), (flow, flow_obj) = _authors_files(tmp, reduced=False)
    report = convert_official(ae, flow, tmp / "lfm.pt", rae_out=tmp / "rae.pt")
    return tmp, ae, ae_obj, flow, flow_obj, report


@pytest.mark.slow
def test_paper_size_round_trip_keeps_every_source_tensor_exactly(paper):
    tmp, ae, ae_obj, flow, flow_obj, _ = paper
    ckpt = load_checkpoint(tmp / "lfm.pt", kind="lfm")
    rae, net = ckpt["models"]["rae"], ckpt["models"]["velocity"]
    with torch.device("meta"):
        assert rae["config"] == RAE().config and net["config"] == VelocityUNet().config
        rae_map, net_map = rae_key_map(RAE()), velocity_key_map(VelocityUNet())
    src = {**_flat(ae_obj), **_flat(flow_obj)}
    assert len(rae["state_dict"]) == len(rae_map) and len(net["state_dict"]) == len(net_map)
    for theirs, ours in rae_map.items():
        assert torch.equal(rae["state_dict"][ours], src[theirs]), theirs
    for theirs, ours in net_map.items():
        assert torch.equal(net["state_dict"][ours], src[theirs]), theirs


def test_converted_checkpoint_records_sources_knot_times_and_the_fields_of_a_trained_one(paper):
    tmp, ae, _, flow, _, report = paper
    ckpt = load_checkpoint(tmp / "lfm.pt", kind="lfm")
    official = ckpt["extra"]["official"]
    for key, path in (("ae", ae), ("flow", flow)):
        assert official["sources"][key]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert report.sources[key]["sha256"] == official["sources"][key]["sha256"]
    t2, t3 = (1 / (1 + math.exp(-v)) for v in (-0.693, 0.693))
    assert ckpt["train_scales"] == [1.0, 2.0, 4.0]
    assert ckpt["time_map"]["scales"] == [1.0, 2.0, 3.0, 4.0]
    assert ckpt["time_map"]["times"] == pytest.approx([0.0, t2, t3, 1.0], abs=1e-7)
    assert ckpt["extra"]["spline"]["knot_times"] == pytest.approx([0.0, t2, 1.0], abs=1e-7)
    assert ckpt["extra"]["solver"] == SolverSpec.create("dopri5").to_dict()
    assert {"models", "train_scales", "time_map", "knot_state", "extra", "step", "config"} <= set(ckpt)
    assert {"spline", "loss", "solver", "rae_source", "val_scales"} <= set(ckpt["extra"])
    assert any("model.sigmas" in n for n in official["notes"])
    rae_ckpt = load_checkpoint(tmp / "rae.pt", kind="rae")
    assert rae_ckpt["train_scales"] == [1.0, 2.0, 4.0]
    for k, v in rae_ckpt["models"]["rae"]["state_dict"].items():
        assert torch.equal(v, ckpt["models"]["rae"]["state_dict"][k])


@pytest.mark.slow
def test_synthesizer_loads_the_converted_checkpoint_and_generates_on_cpu(paper):
    from degflow.generation import Synthesizer

    tmp = paper[0]
    synth = Synthesizer.from_checkpoint(tmp / "lfm.pt", device="cpu", solver=SolverSpec.create("euler", steps=2))
    assert synth.scale_times([3.0])[3.0] == pytest.approx(1 / (1 + math.exp(-0.693)), abs=1e-7)
    hr = torch.rand(1, 3, 48, 40) * 2 - 1
    with torch.no_grad():
        out = synth(hr, [2.5, 4.0])
    assert set(out) == {2.5, 4.0}
    for lr in out.values():
        assert lr.shape == hr.shape and bool(torch.isfinite(lr).all()) and float(lr.abs().max()) <= 1.0


# ---------------------------------------------------------------------------- strictness
def test_every_missing_unexpected_and_misshaped_tensor_is_listed_and_nothing_is_written(tmp_path):
    (ae, ae_obj), (flow, flow_obj) = _authors_files(tmp_path)
    del ae_obj["encoder"]["EB1.beta"], ae_obj["decoder"]["conv_cat0.bias"], ae_obj["t_params"]["LR3"]
    ae_obj["decoder"]["DB3.RB0.conv1.weight"] = torch.zeros(8, 8, 1, 1)
    flow_obj["model"]["all_modules.99.weight"] = torch.zeros(3)
    flow_obj["model"]["all_modules.5.Conv_0.bias"] = torch.zeros(7)
    flow_obj["extra_entry"] = {}
    torch.save(ae_obj, ae)
    torch.save(flow_obj, flow)
    with pytest.raises(ConversionError) as err:
        _convert_small(tmp_path, ae, flow, rae_out=tmp_path / "rae.pt")
    text = str(err.value)
    for needle in ("missing tensor encoder.EB1.beta", "missing tensor decoder.conv_cat0.bias",
                   "missing tensor t_params.LR3", "shape mismatch for decoder.DB3.RB0.conv1.weight",
                   "unexpected tensor model.all_modules.99.weight",
                   "shape mismatch for model.all_modules.5.Conv_0.bias", "unexpected entry 'extra_entry'",
                   "7 problem(s)"):
        assert needle in text, needle
    assert not (tmp_path / "lfm.pt").exists() and not (tmp_path / "rae.pt").exists()


def test_a_file_missing_a_whole_entry_or_holding_bad_values_is_refused(tmp_path):
    (ae, ae_obj), (flow, flow_obj) = _authors_files(tmp_path)
    del ae_obj["decoder"]
    ae_obj["encoder"]["stem.bias"] = torch.full_like(ae_obj["encoder"]["stem.bias"], float("nan"))
    ae_obj["encoder"]["stem.weight"] = ae_obj["encoder"]["stem.weight"].long()
    torch.save(ae_obj, ae)
    with pytest.raises(ConversionError) as err:
        _convert_small(tmp_path, ae, flow)
    text = str(err.value)
    assert "missing entry 'decoder'" in text and "missing tensor decoder.conv_in.weight" in text
    assert "encoder.stem.bias holds NaN" in text and "encoder.stem.weight is torch.int64" in text
    assert not (tmp_path / "lfm.pt").exists()


class _NotAWeight:
    """Any pickled object: weights_only loading must refuse it."""


def test_sources_are_loaded_with_weights_only(tmp_path):
    (ae, _), (flow, flow_obj) = _authors_files(tmp_path)
    flow_obj["model"]["payload"] = _NotAWeight()
    torch.save(flow_obj, flow)
    with pytest.raises(ConversionError, match=r"weights_only=True"):
        _convert_small(tmp_path, ae, flow)
    assert not (tmp_path / "lfm.pt").exists()


def test_a_saved_download_page_is_recognised_as_html(tmp_path):
    (ae, _), (flow, _) = _authors_files(tmp_path)
    flow.write_text("<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title>")
    with pytest.raises(ConversionError, match="HTML page"):
        _convert_small(tmp_path, ae, flow)


def test_a_lightning_training_checkpoint_is_refused_with_an_explanation(tmp_path):
    (ae, _), (flow, flow_obj) = _authors_files(tmp_path)
    torch.save({"state_dict": {f"model.{k}": v for k, v in flow_obj["model"].items()}}, flow)
    with pytest.raises(ConversionError, match="Lightning"):
        _convert_small(tmp_path, ae, flow)


def test_compile_and_data_parallel_prefixes_are_stripped_and_reported(tmp_path):
    (ae, ae_obj), (flow, flow_obj) = _authors_files(tmp_path)
    ae_obj["encoder"] = {f"module.{k}": v for k, v in ae_obj["encoder"].items()}
    flow_obj["model"] = {f"_orig_mod.{k}": v for k, v in flow_obj["model"].items()}
    torch.save(ae_obj, ae)
    torch.save(flow_obj, flow)
    report = _convert_small(tmp_path, ae, flow)
    assert any("'module.'" in n and "'encoder'" in n for n in report.notes)
    assert any("'_orig_mod.'" in n for n in report.notes)
    ckpt = load_checkpoint(tmp_path / "lfm.pt", kind="lfm")
    assert torch.equal(ckpt["models"]["velocity"]["state_dict"]["conv_out.bias"],
                       flow_obj["model"]["_orig_mod.all_modules.49.bias"])


def test_half_precision_sources_are_cast_to_float32_and_reported(tmp_path):
    (ae, ae_obj), (flow, flow_obj) = _authors_files(tmp_path)
    flow_obj["model"] = {k: v.half() if v.dtype == torch.float32 else v for k, v in flow_obj["model"].items()}
    torch.save(flow_obj, flow)
    report = _convert_small(tmp_path, ae, flow)
    assert any("cast float16" in n for n in report.notes)
    sd = load_checkpoint(tmp_path / "lfm.pt", kind="lfm")["models"]["velocity"]["state_dict"]
    assert sd["conv_in.weight"].dtype == torch.float32
    assert torch.equal(sd["conv_in.weight"], flow_obj["model"]["all_modules.2.weight"].float())


def test_existing_outputs_are_kept_unless_overwrite_is_set(tmp_path):
    (ae, _), (flow, _) = _authors_files(tmp_path)
    (tmp_path / "lfm.pt").write_bytes(b"precious")
    with pytest.raises(ValueError, match="overwrite=true"):
        _convert_small(tmp_path, ae, flow)
    assert (tmp_path / "lfm.pt").read_bytes() == b"precious"
    _convert_small(tmp_path, ae, flow, overwrite=True)
    assert load_checkpoint(tmp_path / "lfm.pt", kind="lfm")["kind"] == "lfm"
    source = ae.read_bytes()
    with pytest.raises(ValueError, match="source files"):
        convert_official(ae, flow, tmp_path / "other.pt", rae_out=ae, overwrite=True,
                         rae_config=SMALL_RAE, velocity_config=SMALL_LFM)
    assert ae.read_bytes() == source


# ---------------------------------------------------------------------------- knot times
def test_knot_times_are_the_sigmoids_of_t_params_or_nominal_on_request(tmp_path):
    (ae, _), (flow, _) = _authors_files(tmp_path, t_params={"LR2": -0.4, "LR3": 1.1})
    report = _convert_small(tmp_path, ae, flow)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    assert report.time_map.times == pytest.approx((0.0, sig(-0.4), sig(1.1), 1.0), abs=1e-7)
    assert report.time_map.scale_to_time(2.0) == pytest.approx(sig(-0.4), abs=1e-7)
    report = _convert_small(tmp_path, ae, flow, time_map="nominal", overwrite=True)
    assert report.time_map.knot_times([1.0, 2.0, 3.0, 4.0]) == pytest.approx((0.0, 1 / 3, 2 / 3, 1.0))


def test_knot_logits_out_of_order_are_refused(tmp_path):
    (ae, _), (flow, _) = _authors_files(tmp_path, t_params={"LR2": 0.9, "LR3": 0.2})
    with pytest.raises(ConversionError, match=r"0 < t\(x2\) < t\(x3\) < 1"):
        _convert_small(tmp_path, ae, flow)


# ---------------------------------------------------------------------------- CLI
def test_cli_converts_with_overrides_and_reports_usage_errors_with_exit_code_2(tmp_path, capsys):
    (ae, _), (flow, _) = _authors_files(tmp_path)
    out, rae_out = tmp_path / "cli_lfm.pt", tmp_path / "cli_rae.pt"
    code = _status(main, [f"ae={ae}", f"flow={flow}", f"out={out}", f"rae_out={rae_out}", *SMALL_OVERRIDES])
    printed = capsys.readouterr().out
    assert code == 0 and out.is_file() and rae_out.is_file()
    assert hashlib.sha256(ae.read_bytes()).hexdigest() in printed
    ckpt = load_checkpoint(out, kind="lfm")
    assert ckpt["config"]["ae"] == str(ae) and ckpt["models"]["rae"]["config"]["widths"] == [8, 8, 16, 32]
    assert _status(main, [f"ae={ae}", f"flow={flow}"]) == 2
    assert "out=..." in capsys.readouterr().err
    assert _status(main, [f"ae={ae}", f"flow={flow}", f"out={tmp_path / 'y.pt'}", "+model.rae.depth=3"]) == 2
    assert "model.rae" in capsys.readouterr().err
    # the paper preset does not fit the reduced files: refused, every tensor named, nothing written
    assert _status(main, [f"ae={ae}", f"flow={flow}", f"out={tmp_path / 'x.pt'}"]) == 2
    assert "shape mismatch for encoder.stem.weight" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
