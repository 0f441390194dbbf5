"""Parameter names of the authors' released DegFlow weights, mapped onto degflow's models.

The authors (present091/DegFlow) release two ``torch.save`` files, written by their
checkpoint callbacks:

* the autoencoder file ``{"encoder": state_dict, "decoder": state_dict, "t_params":
  {"LR2": logit, "LR3": logit}}`` of their skip autoencoder (``Encoder_skip`` /
  ``Decoder_skip``); ``t_params`` hold the sigmoid-logits of the x2 and x3 knot times;
* the flow file ``{"model": state_dict}`` of score_sde's ``NCSNpp``: every layer lives in one
  flat ``all_modules`` list (``all_modules.{i}.…``) and the state dict also holds the
  buffer ``sigmas`` (the SMLD noise levels, unused with ``scale_by_sigma=False``).

``model/rae=paper`` and ``model/lfm=paper`` compute exactly the functions of those
architectures, so converting is a renaming: every tensor keeps its shape. This module only
knows names; reading and writing files is :mod:`degflow.jobs.convert_official`'s job.

A flat name here is ``"{top}.{key}"`` with ``top`` the key of the file's outer dict, e.g.
``"encoder.EB0.RB1.norm0.body.weight"``, ``"t_params.LR2"``, ``"model.all_modules.3.Conv_0.bias"``.
"""

from __future__ import annotations

import re

from degflow.models.rae import RAE
from degflow.models.unet import VelocityUNet

__all__ = [
    "AE_TOP_KEYS",
    "FLOW_TOP_KEYS",
    "T_PARAM_KEYS",
    "UNUSED_FLOW_KEYS",
    "rae_key_map",
    "velocity_key_map",
]

#: Outer keys of the authors' autoencoder file (``t_params`` holds the knot-time logits).
AE_TOP_KEYS: tuple[str, ...] = ("encoder", "decoder", "t_params")
#: Outer keys of the authors' flow file.
FLOW_TOP_KEYS: tuple[str, ...] = ("model",)
#: Flat names of the knot-time logits: x2 and x3 (x1 is t=0, x4 is t=1).
T_PARAM_KEYS: tuple[str, ...] = ("t_params.LR2", "t_params.LR3")
#: Flat names in the flow file that carry no weight of the velocity function.
UNUSED_FLOW_KEYS: tuple[str, ...] = ("model.sigmas",)

# ---------------------------------------------------------------- RAE (skip autoencoder)
# Authors' residual module: ``y = x + beta * RB0(x); out = y + gamma * RB1(y)``, i.e. our
# two gated units with gains beta, gamma. Their LayerNorm keeps its parameters under ``body``.
_GAIN_NAMES = ("beta", "gamma")


def _unit_rule(ours: str, theirs: str) -> str | None:
    """Rename the inside of one of our residual units (``ours`` starts at ``units.``)."""
    m = re.fullmatch(r"units\.(\d+)\.gain", ours)
    if m:
        return f"{theirs}.{_GAIN_NAMES[int(m.group(1))]}"
    m = re.fullmatch(r"units\.(\d+)\.block\.(norm\d)\.(weight|bias)", ours)
    if m:
        return f"{theirs}.RB{m.group(1)}.{m.group(2)}.body.{m.group(3)}"
    m = re.fullmatch(r"units\.(\d+)\.block\.(conv\d)\.weight", ours)
    if m:
        return f"{theirs}.RB{m.group(1)}.{m.group(2)}.weight"
    return None


def _rae_name(ours: str, levels: int) -> str | None:
    m = re.fullmatch(r"encoder\.(stem|conv_out)\.(weight|bias)", ours)
    if m:
        return ours
    m = re.fullmatch(r"encoder\.levels\.(\d+)\.down\.(weight|bias)", ours)
    if m:
        return f"encoder.EB{m.group(1)}.down.{m.group(2)}"
    m = re.fullmatch(r"encoder\.levels\.(\d+)\.(units\..*)", ours)
    if m:
        return _unit_rule(m.group(2), f"encoder.EB{m.group(1)}")
    if re.fullmatch(r"decoder\.conv_in\.(weight|bias)", ours):
        return ours
    # our decoder level i works at encoder level i's resolution; theirs count coarse -> fine
    m = re.fullmatch(r"decoder\.levels\.(\d+)\.up\.(\d)\.(weight|bias)", ours)
    if m:
        return f"decoder.DB{levels - 1 - int(m.group(1))}.up.{m.group(2)}.{m.group(3)}"
    m = re.fullmatch(r"decoder\.levels\.(\d+)\.(units\..*)", ours)
    if m:
        return _unit_rule(m.group(2), f"decoder.DB{levels - 1 - int(m.group(1))}")
    m = re.fullmatch(r"decoder\.fuse\.(\d+)\.(weight|bias)", ours)
    if m:
        return f"decoder.conv_cat{m.group(1)}.{m.group(2)}"
    m = re.fullmatch(r"decoder\.out\.1\.(weight|bias)", ours)
    if m:
        return f"decoder.refine.1.{m.group(1)}"
    return None


def rae_key_map(rae: RAE) -> dict[str, str]:
    """``{authors' flat name: our state-dict key}`` for every tensor of ``rae``.

    Needs the authors' layout: ``num_res_blocks=2`` (their beta/gamma pair) and
    ``norm="layer"``. Widths are free (the paper's are ``(128, 128, 256, 512)``); shapes
    are checked against the file by the converter, not here.

    Raises:
        ValueError: ``rae`` has a layout the authors' autoencoder cannot have.
    """
    cfg = rae.config
    if cfg["num_res_blocks"] != 2 or cfg["norm"] != "layer":
        raise ValueError(
            "the authors' autoencoder has 2 residual units per level (beta, gamma) and "
            f"per-pixel LayerNorm; got model.rae.num_res_blocks={cfg['num_res_blocks']} and "
            f"model.rae.norm={cfg['norm']!r} (use model/rae=paper)"
        )
    out: dict[str, str] = {}
    for key in rae.state_dict():
        theirs = _rae_name(key, len(rae.widths))
        if theirs is None:  # a layer the authors' autoencoder does not have
            raise ValueError(f"RAE parameter {key!r} has no counterpart in the authors' autoencoder")
        out[theirs] = key
    return out


# ---------------------------------------------------------------- velocity net (NCSN++)
_RESBLOCK = {"GroupNorm_0": "norm1", "Conv_0": "conv1", "Dense_0": "temb_proj",
             "GroupNorm_1": "norm2", "Conv_1": "conv2", "Conv_2": "skip"}
_ATTN = {"GroupNorm_0": "norm", "NIN_0": "q", "NIN_1": "k", "NIN_2": "v", "NIN_3": "proj"}
_NIN_PARAMS = {"weight": "W", "bias": "b"}  # ours -> theirs


def _ncsnpp_layers(net: VelocityUNet) -> list[tuple[str, dict[str, str] | None]]:
    """Our module prefixes in the order of NCSN++'s ``all_modules`` list, each with the
    renaming of its children (``None``: a plain layer with ``weight``/``bias``)."""
    layers: list[tuple[str, dict[str, str] | None]] = [
        ("time_embed.0", None), ("time_embed.2", None), ("conv_in", None)]
    for lvl, level in enumerate(net.down):
        for i in range(len(level.blocks)):
            layers.append((f"down.{lvl}.blocks.{i}", _RESBLOCK))
            if len(level.attn):
                layers.append((f"down.{lvl}.attn.{i}", _ATTN))
        if level.resample is not None:
            layers.append((f"down.{lvl}.resample", _RESBLOCK))
    layers.append(("mid_block1", _RESBLOCK))
    if net.mid_attn is None:
        raise ValueError("the authors' NCSN++ always has middle self-attention; got "
                         "model.lfm.mid_attention=false (use model/lfm=paper)")
    layers += [("mid_attn", _ATTN), ("mid_block2", _RESBLOCK)]
    for k, level in enumerate(net.up):
        layers += [(f"up.{k}.blocks.{i}", _RESBLOCK) for i in range(len(level.blocks))]
        layers += [(f"up.{k}.attn.{i}", _ATTN) for i in range(len(level.attn))]
        if level.resample is not None:
            layers.append((f"up.{k}.resample", _RESBLOCK))
    layers += [("norm_out", None), ("conv_out", None)]
    return layers


def velocity_key_map(net: VelocityUNet) -> dict[str, str]:
    """``{authors' flat name: our state-dict key}`` for every tensor of ``net``.

    The authors' flags are fixed (BigGAN blocks, ``fir=False``, ``skip_rescale``,
    positional embedding of ``999 t``, no progressive paths); ``nf``, ``ch_mult``,
    ``num_res_blocks`` and ``attn_resolutions`` are free. Their extra buffer ``sigmas`` is
    not part of the map (see :data:`UNUSED_FLOW_KEYS`).

    Raises:
        ValueError: ``net`` has a layout the authors' NCSN++ configuration cannot have.
    """
    cfg = net.config
    if not cfg["skip_rescale"] or cfg["time_embedding_scale"] != 999.0:
        raise ValueError(
            "the authors' NCSN++ rescales skips by 1/sqrt(2) and embeds 999 * t; got "
            f"model.lfm.skip_rescale={cfg['skip_rescale']} and model.lfm.time_embedding_scale="
            f"{cfg['time_embedding_scale']:g} (use model/lfm=paper)"
        )
    ours = list(net.state_dict())
    out: dict[str, str] = {}
    for index, (prefix, children) in enumerate(_ncsnpp_layers(net)):
        for key in (k for k in ours if k.startswith(prefix + ".")):
            rest = key[len(prefix) + 1:]
            if children is None:
                theirs = rest
            else:
                child, param = rest.split(".", 1)
                inverse = {v: k for k, v in children.items()}
                if child not in inverse:
                    raise ValueError(f"velocity parameter {key!r} has no counterpart in NCSN++")
                if inverse[child].startswith("NIN_"):  # NIN keeps W [in, out] and b [out]
                    param = _NIN_PARAMS[param]
                theirs = f"{inverse[child]}.{param}"
            out[f"model.all_modules.{index}.{theirs}"] = key
    unmapped = set(ours) - set(out.values())
    if unmapped:  # a layer the authors' network does not have
        raise ValueError(f"velocity parameters without an NCSN++ counterpart: {sorted(unmapped)}")
    return out
