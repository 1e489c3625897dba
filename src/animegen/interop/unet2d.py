"""Our U-Net (models.unet) as diffusers' `UNet2DModel`, and back, weight for weight.

The two are the same network when UNet2DModel is configured as DDPM's U-Net: positional time
embedding with cos before sin (`flip_sin_to_cos`, `freq_shift` 0), conv down- and up-samplers,
GroupNorm everywhere, the middle block resnet-attention-resnet, and the time conditioning of ours
("scale_shift", or "add": diffusers' "default"). The only difference in the weights is the
attention's: our one 1x1 conv makes q, k and v (3C channels, heads-major within each), diffusers'
has three linear maps, so the conv is split in three and squeezed, and the output 1x1 conv is a
linear map too. Anything else in a UNet2DModel config (other blocks, class embeddings, another
activation...) is something our U-Net cannot express: `unet_settings` refuses it naming the field.
"""

from __future__ import annotations

import re

import torch

from animegen.errors import UserError
from animegen.models.unet import UNet, UNetConfig

# The UNet2DModel settings that our U-Net fixes, with the one value it can take. Missing from a
# config.json means diffusers' default, which is this value for each of them.
FIXED = {
    "center_input_sample": False, "time_embedding_type": "positional", "flip_sin_to_cos": True, "freq_shift": 0,
    "mid_block_type": "UNetMidBlock2D", "mid_block_scale_factor": 1, "downsample_padding": 1,
    "downsample_type": "conv", "upsample_type": "conv", "act_fn": "silu", "norm_eps": 1e-5, "add_attention": True,
    "class_embed_type": None, "num_class_embeds": None, "num_train_timesteps": None,
}
# The settings that vary, with diffusers' defaults for a config.json that leaves them out.
DEFAULTS = {
    "sample_size": None, "in_channels": 3, "out_channels": 3, "block_out_channels": [224, 448, 672, 896],
    "layers_per_block": 2, "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D",
                                                "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "attention_head_dim": 8, "norm_num_groups": 32, "attn_norm_num_groups": None, "dropout": 0.0,
    "resnet_time_scale_shift": "default", "time_embedding_dim": None,
}
TIME_SCALE_SHIFT = {"scale_shift": "scale_shift", "add": "default"}  # ours -> diffusers'
BLOCKS = {False: ("DownBlock2D", "UpBlock2D"), True: ("AttnDownBlock2D", "AttnUpBlock2D")}  # by attention


def unet2d_config(config: UNetConfig) -> dict:
    """config.json of the UNet2DModel that is our U-Net of `config`."""
    attention = [res in config.attention_resolutions for res in config.level_resolutions()]
    return {
        "_class_name": "UNet2DModel", **FIXED,
        "sample_size": config.resolution, "in_channels": config.in_channels, "out_channels": config.in_channels,
        "block_out_channels": [config.base_channels * m for m in config.channel_mults],
        "layers_per_block": config.num_res_blocks,
        "down_block_types": [BLOCKS[a][0] for a in attention],
        "up_block_types": [BLOCKS[a][1] for a in reversed(attention)],
        "attention_head_dim": _head_dim(config), "norm_num_groups": config.num_groups,
        # Set, not left null: under scale_shift diffusers would build the middle attention without a norm.
        "attn_norm_num_groups": config.num_groups, "dropout": config.dropout,
        "resnet_time_scale_shift": TIME_SCALE_SHIFT[config.time_conditioning],
        "time_embedding_dim": config.time_embed_dim,
    }


def _head_dim(config: UNetConfig) -> int | None:
    """Channels per head, which diffusers has once for all attention blocks (ours: per block,
    max(1, channels // head_channels) heads); None, diffusers' "one head per block", when every
    block has one."""
    widths = {config.base_channels * m for m, res in zip(config.channel_mults, config.level_resolutions())
              if res in config.attention_resolutions} | {config.base_channels * config.channel_mults[-1]}
    heads = {w: max(1, w // config.head_channels) for w in widths}
    if set(heads.values()) == {1}:
        return None
    dims = {w // h for w, h in heads.items()}
    if len(dims) > 1:
        raise UserError(f"head_channels {config.head_channels} gives heads of {sorted(dims)} channels in this U-Net's "
                        "attention blocks; diffusers' UNet2DModel has one attention_head_dim for all of them.")
    return dims.pop()


def unet_settings(config: dict) -> dict:
    """The UNetConfig settings (without `resolution`'s checks) of a UNet2DModel config.json; a
    UserError naming the field for anything our U-Net cannot express."""
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise UserError(f"_class_name: {config['_class_name']!r} is not a UNet2DModel; animegen imports UNet2DModel.")
    unknown = sorted(k for k in config if not k.startswith("_") and k not in FIXED and k not in DEFAULTS)
    if unknown:
        raise UserError(f"{unknown[0]}: a UNet2DModel setting animegen does not know; it cannot vouch for the network.")
    c = {**DEFAULTS, **config}
    for key, value in FIXED.items():
        if config.get(key, value) != value:
            raise UserError(f"{key}: {config[key]!r}; animegen's U-Net has only {key} = {value!r}.")
    channels, size = c["block_out_channels"], c["sample_size"]
    if isinstance(size, (list, tuple)):
        size = size[0] if len(set(size)) == 1 else size
    if not isinstance(size, int):
        raise UserError(f"sample_size: {c['sample_size']!r}; animegen's U-Net makes square images of one size.")
    if c["in_channels"] != c["out_channels"]:
        raise UserError(f"out_channels: {c['out_channels']} against in_channels {c['in_channels']}; animegen's U-Net "
                        "predicts as many channels as it takes.")
    if c["resnet_time_scale_shift"] not in TIME_SCALE_SHIFT.values():
        raise UserError(f"resnet_time_scale_shift: {c['resnet_time_scale_shift']!r}; animegen's U-Net has "
                        f"{' or '.join(map(repr, TIME_SCALE_SHIFT.values()))}.")
    if not channels or any(not isinstance(w, int) or w <= 0 or w % channels[0] for w in channels):
        raise UserError(f"block_out_channels: {channels}; animegen's U-Net needs multiples of the first.")
    attention = _attention_levels(c["down_block_types"], c["up_block_types"], len(channels))
    groups = c["norm_num_groups"]
    _check_attention_norm(c["attn_norm_num_groups"], groups, c["resnet_time_scale_shift"])
    if any(w % groups for w in channels):
        raise UserError(f"norm_num_groups: {groups} does not divide block_out_channels {channels}.")
    head_dim = _imported_head_dim(c["attention_head_dim"], [w for w, a in zip(channels, attention) if a]
                                  + [channels[-1]])
    return {
        "resolution": size, "in_channels": c["in_channels"], "base_channels": channels[0],
        "channel_mults": tuple(w // channels[0] for w in channels), "num_res_blocks": c["layers_per_block"],
        "attention_resolutions": tuple(size // 2**i for i, a in enumerate(attention) if a),
        "dropout": float(c["dropout"]), "num_groups": groups,
        "time_embed_dim": c["time_embedding_dim"] or 4 * channels[0], "head_channels": head_dim,
        "time_conditioning": {v: k for k, v in TIME_SCALE_SHIFT.items()}[c["resnet_time_scale_shift"]],
    }


def _attention_levels(down: list, up: list, levels: int) -> list[bool]:
    """Which levels attend, from the block types, the same on the way up as on the way down."""
    for name, types, known in (("down_block_types", down, 0), ("up_block_types", up, 1)):
        if len(types) != levels:
            raise UserError(f"{name}: {len(types)} blocks for {levels} block_out_channels.")
        strange = [t for t in types if t not in (BLOCKS[False][known], BLOCKS[True][known])]
        if strange:
            raise UserError(f"{name}: {strange[0]!r}; animegen's U-Net has {BLOCKS[False][known]} and "
                            f"{BLOCKS[True][known]}.")
    attention = [t == BLOCKS[True][0] for t in down]
    if [t == BLOCKS[True][1] for t in reversed(up)] != attention:
        raise UserError(f"up_block_types: {up} do not attend at the levels down_block_types {down} do; "
                        "animegen's U-Net attends at the same resolutions both ways.")
    return attention


def _check_attention_norm(attn_groups, groups: int, time_shift: str) -> None:
    if attn_groups is None and time_shift == "scale_shift":
        raise UserError("attn_norm_num_groups: null with resnet_time_scale_shift 'scale_shift' builds the middle "
                        "attention without GroupNorm, which animegen's U-Net always has.")
    if attn_groups is not None and attn_groups != groups:
        raise UserError(f"attn_norm_num_groups: {attn_groups} against norm_num_groups {groups}; animegen's U-Net "
                        "has one number of groups.")


def _imported_head_dim(head_dim, widths: list[int]) -> int:
    """Our head_channels for diffusers' attention_head_dim (null: one head per block)."""
    if head_dim is None:
        return max(widths)
    bad = [w for w in widths if not isinstance(head_dim, int) or head_dim <= 0 or w % head_dim]
    if bad:
        raise UserError(f"attention_head_dim: {head_dim!r} does not divide the {bad[0]} channels of an attention "
                        "block into whole heads.")
    return head_dim


# ---------------------------------------------------------------- weights
_BLOCK_PATHS = [  # our module path -> diffusers', applied in order
    (r"^time_mlp\.0\.", "time_embedding.linear_1."), (r"^time_mlp\.2\.", "time_embedding.linear_2."),
    (r"^norm_out\.", "conv_norm_out."),
    (r"^(down|up)\.(\d+)\.blocks\.(\d+)\.res\.", r"\1_blocks.\2.resnets.\3."),
    (r"^(down|up)\.(\d+)\.blocks\.(\d+)\.attn\.", r"\1_blocks.\2.attentions.\3."),
    (r"^down\.(\d+)\.resample\.", r"down_blocks.\1.downsamplers.0.conv."),
    (r"^up\.(\d+)\.resample\.conv\.", r"up_blocks.\1.upsamplers.0.conv."),
    (r"^mid\.res\.", "mid_block.resnets.0."), (r"^mid\.attn\.", "mid_block.attentions.0."),
    (r"^mid_res\.", "mid_block.resnets.1."),
    (r"\.time_proj\.", ".time_emb_proj."), (r"\.skip\.", ".conv_shortcut."),
    (r"(attentions\.\d+)\.norm\.", r"\1.group_norm."), (r"(attentions\.\d+)\.proj\.", r"\1.to_out.0."),
]
# Attention weights as diffusers saved them before 0.15 (its loader renames them the same way).
_DEPRECATED = [(".query.", ".to_q."), (".key.", ".to_k."), (".value.", ".to_v."), (".proj_attn.", ".to_out.0.")]


def diffusers_name(ours: str) -> str:
    for pattern, replacement in _BLOCK_PATHS:
        ours = re.sub(pattern, replacement, ours)
    return ours


def to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A UNet2DModel state dict of our U-Net's; q, k and v split from the one qkv conv."""
    out = {}
    for key, tensor in state.items():
        name = diffusers_name(key)
        if ".qkv." in name:
            for part, chunk in zip("qkv", tensor.chunk(3, dim=0)):
                out[name.replace(".qkv.", f".to_{part}.")] = _as_linear(chunk)
        else:
            out[name] = _as_linear(tensor) if ".to_out.0.weight" in name else tensor
    return {k: v.detach().contiguous() for k, v in out.items()}


def _as_linear(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.flatten(1) if tensor.ndim == 4 else tensor


def from_diffusers(tensors: dict[str, torch.Tensor], config: UNetConfig) -> dict[str, torch.Tensor]:
    """Our U-Net's state dict from a UNet2DModel's tensors, every name and shape checked: a
    UserError names the first missing, surplus or misshapen tensor."""
    for old, new in _DEPRECATED:
        tensors = {k.replace(old, new): v for k, v in tensors.items()}
    state, used = {}, set()
    with torch.device("meta"):  # shapes only
        expected = UNet(config).state_dict()
    for key, like in expected.items():
        parts = to_diffusers({key: like})  # the tensors diffusers has for it, with their shapes
        for name, needed in parts.items():
            if name not in tensors:
                raise UserError(f"the weights lack {name}, which this config's UNet2DModel has.")
            if tensors[name].shape != needed.shape:
                raise UserError(f"{name} has shape {tuple(tensors[name].shape)}; this config's UNet2DModel needs "
                                f"{tuple(needed.shape)}.")
        state[key] = torch.cat([tensors[name].float() for name in parts]).reshape(like.shape)
        used.update(parts)
    surplus = sorted(set(tensors) - used)
    if surplus:
        raise UserError(f"{surplus[0]}: a tensor this config's UNet2DModel does not have.")
    return state
