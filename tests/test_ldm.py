"""The latent-diffusion teachers: CompVis checkpoints read safely and converted onto diffusers modules.

Checkpoints are written here in the real LDM layout from tiny random diffusers modules, by a
diffusers -> LDM renaming written independently of gasbench's LDM -> diffusers one; that renaming
is anchored to the real checkpoints by key names and shapes worked out by hand from the LDM code
(configs/latent-diffusion/*.yaml, openaimodel.py, model.py), and its legacy qkv layout by
openaimodel's attention computed from its definition.
"""

from __future__ import annotations

import json
import math
import re
import zipfile
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel, UNet2DModel, VQModel

from gasbench.core.errors import GasbenchError
from gasbench.core.registry import TEACHERS
from gasbench.teachers import ldm, ldm_checkpoint
from gasbench.teachers.diffusers_teacher import DiffusersTeacher
from gasbench.teachers.ldm import (IMAGENET256, LSUN_BEDROOM, imagenet256_dit, ImageNet256Teacher,
                                   LSUNBedroomTeacher)
from gasbench.core.weights import gasbench_home
from helpers import Payload, write_lightning_checkpoint

TINY_VQ = dict(ldm.VQ_F4, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
               block_out_channels=(8, 16), num_vq_embeddings=32, norm_num_groups=4, sample_size=16)
TINY_UNET = dict(sample_size=8, block_out_channels=(8, 16, 24), norm_num_groups=4)
TINY_LSUN = replace(LSUN_BEDROOM, vae=TINY_VQ, unet=dict(
    LSUN_BEDROOM.unet, **TINY_UNET, attention_head_dim=4,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")))
TINY_IMAGENET = replace(IMAGENET256, vae=TINY_VQ, num_classes=5, unet=dict(
    IMAGENET256.unet, **TINY_UNET, cross_attention_dim=12,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")))


class TinyLSUN(LSUNBedroomTeacher):
    config = TINY_LSUN


class TinyImageNet(ImageNet256Teacher):
    config = TINY_IMAGENET


# --- a Lightning checkpoint in the LDM layout ---------------------------------------------------

UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
UNET_TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
            "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}


def merged_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """openaimodel's qkv conv1d parameter from diffusers' q, k, v: outputs head by head, [q_h, k_h, v_h]."""
    stacked = torch.stack([t.reshape(heads, t.shape[0] // heads, *t.shape[1:]) for t in (q, k, v)], dim=1)
    merged = stacked.reshape(3 * q.shape[0], *q.shape[1:])
    return merged[..., None] if merged.dim() == 2 else merged


def ldm_unet_state(unet: torch.nn.Module, legacy: bool) -> dict[str, torch.Tensor]:
    """The state of a diffusers UNet under openaimodel's names (``model.diffusion_model.*``)."""
    layers = unet.config.layers_per_block
    up_attention = {i for i, kind in enumerate(unet.config.up_block_types) if "Attn" in kind}
    out = {}
    for key, value in unet.state_dict().items():
        module, param = key.rsplit(".", 1)
        if module in UNET_TOP:
            out[f"{UNET_TOP[module]}.{param}"] = value
            continue
        side, level, kind, index, inner = re.fullmatch(
            r"(down_blocks|up_blocks|mid_block)\.(\d+\.)?(\w+)\.(\d+)\.?(.*)", module).groups()
        level = int(level[:-1]) if level else 0
        if kind == "downsamplers":
            out[f"input_blocks.{(level + 1) * (layers + 1)}.0.op.{param}"] = value
            continue
        if kind == "upsamplers":
            out[f"output_blocks.{level * (layers + 1) + layers}.{2 if level in up_attention else 1}.conv.{param}"] = value
            continue
        child = 0 if kind == "resnets" else 1
        block = {"down_blocks": f"input_blocks.{1 + level * (layers + 1) + int(index)}.{child}",
                 "up_blocks": f"output_blocks.{level * (layers + 1) + int(index)}.{child}",
                 "mid_block": f"middle_block.{1 if child else 2 * int(index)}"}[side]
        if kind == "resnets":
            out[f"{block}.{UNET_RESNET[inner]}.{param}"] = value
        elif not legacy:
            out[f"{block}.{inner}.{param}"] = value
        elif inner == "group_norm":
            out[f"{block}.norm.{param}"] = value
        elif inner == "to_out.0":
            out[f"{block}.proj_out.{param}"] = value[..., None] if param == "weight" else value
        elif inner == "to_q":
            prefix = f"{side}.{level}.{kind}.{index}." if side != "mid_block" else f"mid_block.{kind}.{index}."
            q, k, v = (unet.state_dict()[f"{prefix}to_{n}.{param}"] for n in "qkv")
            out[f"{block}.qkv.{param}"] = merged_qkv(q, k, v, q.shape[0] // unet.config.attention_head_dim)
    return {"model.diffusion_model." + k: v for k, v in out.items()}


VQ_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
VQ_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def ldm_vq_state(vq: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state of a diffusers VQModel under the LDM VQModel's names (``first_stage_model.*``)."""
    levels = len(vq.config.block_out_channels)
    out = {}
    for key, value in vq.state_dict().items():
        module, param = key.rsplit(".", 1)
        m = re.fullmatch(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(resnets\.(\d+)\.(\w+)|\w+samplers\.0\.conv)", module)
        if m:
            coder, stage, level, _, resnet, inner = m.groups()
            level = int(level) if coder == "encoder" else levels - 1 - int(level)
            tail = f"block.{resnet}.{VQ_RESNET[inner]}" if resnet else f"{stage}sample.conv"
            out[f"{coder}.{stage}.{level}.{tail}.{param}"] = value
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(\w+)", module):
            out[f"{m[1]}.mid.block_{int(m[2]) + 1}.{VQ_RESNET[m[3]]}.{param}"] = value
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", module):
            conv = value[..., None, None] if param == "weight" and m[2] != "group_norm" else value
            out[f"{m[1]}.mid.attn_1.{VQ_ATTENTION[m[2]]}.{param}"] = conv
        else:
            out[key.replace("conv_norm_out", "norm_out")] = value
    return {"first_stage_model." + k: v for k, v in out.items()}


def schedule_buffers(config) -> dict[str, torch.Tensor]:
    """DDPM buffers a LatentDiffusion state dict carries (register_schedule), alphas_cumprod real."""
    abar = config.alphas_cumprod()
    return {"betas": 1 - abar / torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]]), "alphas_cumprod": abar,
            **{name: torch.rand(config.timesteps) for name in ("sqrt_alphas_cumprod", "posterior_variance",
                                                                "posterior_mean_coef1", "posterior_mean_coef2")}}


def perturbed(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights everywhere (diffusers initialises some norms to exact ones and zeros)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module.eval()


def tiny_networks(config, seed: int = 0):
    unet_class = UNet2DConditionModel if config.unet.get("cross_attention_dim") else UNet2DModel
    unet, vq = perturbed(unet_class(**config.unet), seed), perturbed(VQModel(**config.vae), seed + 1)
    return unet, vq


# --- the tests ----------------------------------------------------------------------------------

def openai_legacy_attention(x, attention, qkv_w, qkv_b, proj_w, proj_b, heads):
    """openaimodel's AttentionBlock with QKVAttentionLegacy, from its definition: the qkv conv's
    output is split into heads first, then each head's channels into q, k, v."""
    b, c, h, w = x.shape
    flat = x.reshape(b, c, h * w)
    qkv = F.conv1d(attention.group_norm(flat), qkv_w, qkv_b)
    ch = c // heads
    q, k, v = qkv.reshape(b * heads, 3 * ch, h * w).split(ch, dim=1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
    mixed = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, h * w)
    return (flat + F.conv1d(mixed, proj_w, proj_b)).reshape(b, c, h, w)


def test_merged_qkv_is_openaimodel_legacy_attention():
    unet, _ = tiny_networks(TINY_LSUN)
    attention = unet.down_blocks[2].attentions[0]  # 24 channels, 6 heads of 4
    heads = attention.heads
    assert heads == 6
    qkv_w = merged_qkv(attention.to_q.weight, attention.to_k.weight, attention.to_v.weight, heads)
    qkv_b = merged_qkv(attention.to_q.bias, attention.to_k.bias, attention.to_v.bias, heads)
    x = torch.randn(2, 24, 3, 3)
    expected = openai_legacy_attention(x, attention, qkv_w, qkv_b, attention.to_out[0].weight[..., None],
                                       attention.to_out[0].bias, heads)
    with torch.no_grad():
        torch.testing.assert_close(attention(x), expected, atol=1e-5, rtol=1e-5)
        wrong = merged_qkv(attention.to_q.weight, attention.to_k.weight, attention.to_v.weight, 1)
        swapped = openai_legacy_attention(x, attention, wrong, qkv_b, attention.to_out[0].weight[..., None],
                                          attention.to_out[0].bias, heads)
    assert not torch.allclose(swapped, expected, atol=1e-3)  # the head ordering matters


# Real entries, worked out from the yamls and ldm's openaimodel.py / model.py: lsun has attention
# at ds 2, 4, 8 (input_blocks 4-5, 7-8, 10-11), Downsample at input_blocks 3, 6, 9, Upsample
# closing output_blocks 2, 5, 8 after the attention; the VQ decoder's up.0 runs last at 128 channels.
REAL_ENTRIES = {
    "lsun": {
        "model.diffusion_model.input_blocks.0.0.weight": (224, 3, 3, 3),
        "model.diffusion_model.time_embed.0.weight": (896, 224),
        "model.diffusion_model.input_blocks.3.0.op.weight": (224, 224, 3, 3),
        "model.diffusion_model.input_blocks.4.0.skip_connection.weight": (448, 224, 1, 1),
        "model.diffusion_model.input_blocks.4.1.qkv.weight": (1344, 448, 1),
        "model.diffusion_model.input_blocks.11.1.proj_out.weight": (896, 896, 1),
        "model.diffusion_model.middle_block.1.qkv.bias": (2688,),
        "model.diffusion_model.middle_block.2.emb_layers.1.weight": (896, 896),
        "model.diffusion_model.output_blocks.0.0.in_layers.2.weight": (896, 1792, 3, 3),
        "model.diffusion_model.output_blocks.2.2.conv.weight": (896, 896, 3, 3),
        "model.diffusion_model.output_blocks.8.2.conv.weight": (448, 448, 3, 3),
        "model.diffusion_model.output_blocks.11.0.skip_connection.weight": (224, 448, 1, 1),
        "model.diffusion_model.out.2.weight": (3, 224, 3, 3),
        "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "first_stage_model.encoder.down.1.downsample.conv.weight": (256, 256, 3, 3),
        "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "first_stage_model.decoder.up.2.upsample.conv.weight": (512, 512, 3, 3),
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        "first_stage_model.decoder.up.0.block.2.conv2.weight": (128, 128, 3, 3),
        "first_stage_model.quantize.embedding.weight": (8192, 3),
        "first_stage_model.post_quant_conv.weight": (3, 3, 1, 1),
    },
    "imagenet": {
        "model.diffusion_model.time_embed.2.weight": (768, 768),
        "model.diffusion_model.input_blocks.4.1.norm.weight": (384,),
        "model.diffusion_model.input_blocks.4.1.proj_in.weight": (384, 384, 1, 1),
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (384, 512),
        "model.diffusion_model.input_blocks.10.1.transformer_blocks.0.attn1.to_out.0.bias": (960,),
        "model.diffusion_model.middle_block.1.transformer_blocks.0.ff.net.0.proj.weight": (7680, 960),
        "model.diffusion_model.middle_block.1.transformer_blocks.0.ff.net.2.weight": (960, 3840),
        "model.diffusion_model.output_blocks.2.2.conv.weight": (960, 960, 3, 3),
        "model.diffusion_model.output_blocks.8.1.proj_out.weight": (384, 384, 1, 1),
        "cond_stage_model.embedding.weight": (1001, 512),
    },
}


@pytest.mark.parametrize("kind", ["lsun", "imagenet"])
def test_real_size_key_names_and_shapes_round_trip(kind):
    config = LSUN_BEDROOM if kind == "lsun" else IMAGENET256
    with torch.device("meta"):
        unet_class = UNet2DConditionModel if kind == "imagenet" else UNet2DModel
        unet, vq = unet_class(**config.unet), VQModel(**config.vae)
        state = {**ldm_unet_state(unet, config.legacy_attention), **ldm_vq_state(vq)}
        if kind == "imagenet":
            state["cond_stage_model.embedding.weight"] = torch.empty(1001, 512)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert {k: shapes.get(k) for k in REAL_ENTRIES[kind]} == REAL_ENTRIES[kind]
    converted, metadata = ldm_checkpoint.ldm_to_diffusers(state, config)
    expected = {**{f"unet.{k}": v.shape for k, v in unet.state_dict().items()},
                **{f"vae.{k}": v.shape for k, v in vq.state_dict().items()}}
    if kind == "imagenet":
        expected["class_embedding.weight"] = (1001, 512)
    assert {k: v.shape for k, v in converted.items()} == expected
    assert metadata["weights"] == "model" and metadata["scale_factor"] == 1.0


def reference_teacher(config, unet, vq, embedding=None) -> DiffusersTeacher:
    """The same networks handed to DiffusersTeacher directly, without any checkpoint."""
    kwargs = {}
    if embedding is not None:
        kwargs = dict(num_classes=config.num_classes, guidance_scale=config.guidance_scale,
                      null_condition=torch.tensor([config.num_classes]),
                      condition_kwargs=lambda c: {"encoder_hidden_states": embedding(c)[:, None]})
    return DiffusersTeacher("reference", unet, config.scheduler_config, config.shape, vae=vq, latent_scale=1.0, **kwargs)


def assert_same_teacher(loaded, reference, cond=None):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, *loaded.shape, generator=g) * 5
    with torch.no_grad():
        torch.testing.assert_close(loaded.denoise(x, torch.tensor(2.0), cond), reference.denoise(x, torch.tensor(2.0), cond),
                                   atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(loaded.decode(x / 5), reference.decode(x / 5), atol=1e-6, rtol=1e-5)


def test_lsun_release_zip_loads_the_ema_weights_and_is_converted_once(tmp_path, monkeypatch):
    unet, vq = tiny_networks(TINY_LSUN)
    raw_unet, _ = tiny_networks(TINY_LSUN, seed=7)  # the training weights the EMA supersedes
    ema = {"model_ema." + ("diffusion_model." + k[len("model.diffusion_model."):]).replace(".", ""): v
           for k, v in ldm_unet_state(unet, legacy=True).items()}
    state = {**ldm_unet_state(raw_unet, legacy=True), **ema, **ldm_vq_state(vq), **schedule_buffers(TINY_LSUN),
             "model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(5, dtype=torch.int32)}
    write_lightning_checkpoint(tmp_path / "model.ckpt", state)
    with pytest.raises(Exception, match="Weights only load failed"):  # the case the restricted reader exists for
        torch.load(tmp_path / "model.ckpt", weights_only=True)
    with zipfile.ZipFile(tmp_path / "lsun_bedrooms.zip", "w") as release:
        release.write(tmp_path / "model.ckpt", "model.ckpt")

    teacher = TinyLSUN(weights=tmp_path / "lsun_bedrooms.zip")
    assert (teacher.name, teacher.shape, teacher.num_classes) == ("lsun-bedroom", (3, 8, 8), 0)
    assert teacher.reference.to_dict() == {"solver": "unipc-bh2", "nfe": 20, "schedule": "time-uniform", "order": 3}
    assert_same_teacher(teacher, reference_teacher(TINY_LSUN, unet, vq))
    assert teacher.decode(torch.zeros(1, 3, 8, 8)).shape == (1, 3, 16, 16)

    cached = list((gasbench_home() / "converted").glob(f"ldm1-lsun-bedroom-{teacher.weights_sha256}.safetensors"))
    assert len(cached) == 1
    monkeypatch.setattr(ldm_checkpoint, "read_lightning_checkpoint", lambda path: pytest.fail("the checkpoint was read again"))
    assert_same_teacher(TinyLSUN(weights=tmp_path / "lsun_bedrooms.zip"), teacher)


def test_imagenet_checkpoint_conditions_on_the_class_token_with_guidance(tmp_path):
    unet, vq = tiny_networks(TINY_IMAGENET)
    embedding = perturbed(torch.nn.Embedding(6, 12), seed=9)
    state = {**ldm_unet_state(unet, legacy=False), **ldm_vq_state(vq), **schedule_buffers(TINY_IMAGENET),
             "cond_stage_model.embedding.weight": embedding.weight.detach()}
    write_lightning_checkpoint(tmp_path / "cin256-v2.ckpt", state)

    teacher = TinyImageNet(weights=tmp_path / "cin256-v2.ckpt")
    assert (teacher.num_classes, teacher.guidance_scale, int(teacher.null_condition)) == (5, 2.0, 5)
    assert teacher.reference.to_dict() == {"solver": "unipc-bh2", "nfe": 10, "schedule": "time-quadratic", "order": 3}
    assert teacher.class_embedding in teacher.modules()
    cond = torch.tensor([0, 4])
    assert_same_teacher(teacher, reference_teacher(TINY_IMAGENET, unet, vq, embedding), cond)
    x = torch.randn(2, *teacher.shape)
    with torch.no_grad():
        assert not torch.allclose(teacher.denoise(x, torch.tensor(1.0), cond),
                                  teacher.denoise(x, torch.tensor(1.0), torch.tensor([1, 2])), atol=1e-4)


def test_unplaced_entries_and_foreign_schedules_are_refused(tmp_path):
    unet, vq = tiny_networks(TINY_LSUN)
    state = {**ldm_unet_state(unet, legacy=True), **ldm_vq_state(vq)}
    write_lightning_checkpoint(tmp_path / "extra.ckpt", {**state, "model.diffusion_model.label_emb.weight": torch.ones(3)})
    with pytest.raises(GasbenchError, match=r"not the lsun-bedroom checkpoint.*label_emb"):
        TinyLSUN(weights=tmp_path / "extra.ckpt")
    write_lightning_checkpoint(tmp_path / "other.ckpt", {**state, "alphas_cumprod": torch.linspace(0.99, 0.01, 1000)})
    with pytest.raises(GasbenchError, match="another noise schedule"):
        TinyLSUN(weights=tmp_path / "other.ckpt")
    write_lightning_checkpoint(tmp_path / "no-vq.ckpt", ldm_unet_state(unet, legacy=True))
    with pytest.raises(GasbenchError, match="does not fit the lsun-bedroom vae"):
        TinyLSUN(weights=tmp_path / "no-vq.ckpt")


@pytest.mark.parametrize("call, named",
                         [("posix.system", r"(posix|nt)\.system"), ("builtins.exec", r"builtins\.exec"),
                          ("subprocess.Popen", r"subprocess\.Popen")])
def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(tmp_path, call, named):
    marker = tmp_path / "pwned"
    unet, vq = tiny_networks(TINY_LSUN)
    write_lightning_checkpoint(tmp_path / "evil.ckpt", {**ldm_unet_state(unet, True), **ldm_vq_state(vq)},
                               payload=Payload(call, marker))
    with pytest.raises(GasbenchError, match=rf"evil.ckpt asks to load '{named}'.*refusing it.*Nothing .* was executed"):
        TinyLSUN(weights=tmp_path / "evil.ckpt")
    assert not marker.exists()


def test_truncated_checkpoint_gives_one_message(tmp_path):
    write_lightning_checkpoint(tmp_path / "whole.ckpt", {"betas": torch.ones(3)})
    (tmp_path / "cut.ckpt").write_bytes((tmp_path / "whole.ckpt").read_bytes()[:400])
    with pytest.raises(GasbenchError, match="cut.ckpt is not a readable torch checkpoint"):
        TinyLSUN(weights=tmp_path / "cut.ckpt")


@pytest.mark.parametrize("teacher, filename, url", [
    (LSUNBedroomTeacher, "lsun_bedrooms.zip", "https://ommer-lab.com/files/latent-diffusion/lsun_bedrooms.zip"),
    (ImageNet256Teacher, "cin256-v2.ckpt", "https://ommer-lab.com/files/latent-diffusion/nitro/cin/model.ckpt"),
])
def test_missing_weights_offline_name_the_file_its_url_and_the_flag(monkeypatch, teacher, filename, url):
    monkeypatch.setenv("GASBENCH_OFFLINE", "1")
    with pytest.raises(GasbenchError) as error:
        teacher()
    message = str(error.value)
    assert filename in message and url in message and "--weights" in message


def test_teachers_are_registered():
    assert TEACHERS.get("lsun-bedroom") is LSUNBedroomTeacher
    assert TEACHERS.get("imagenet256") is ImageNet256Teacher
    assert TEACHERS.get("imagenet256-dit") is imagenet256_dit


def test_dit_variant_reads_a_local_pipeline_on_imagenet256s_protocol(tmp_path):
    from diffusers import AutoencoderKL, DiTTransformer2DModel

    DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1,
                          sample_size=4, patch_size=2, num_embeds_ada_norm=10).save_pretrained(tmp_path / "transformer")
    vae = AutoencoderKL(block_out_channels=(8,), latent_channels=4, norm_num_groups=4, sample_size=8)
    vae.save_pretrained(tmp_path / "vae")
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "DDIMScheduler", "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
         "num_train_timesteps": 1000}))
    (tmp_path / "model_index.json").write_text(json.dumps(
        {"_class_name": "DiTPipeline", "transformer": ["diffusers", "DiTTransformer2DModel"],
         "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "DDIMScheduler"]}))

    teacher = imagenet256_dit(weights=tmp_path)
    assert (teacher.name, teacher.guidance_scale, teacher.num_classes) == ("imagenet256-dit", 2.0, 10)
    assert teacher.shape == (4, 4, 4)
    assert teacher.reference == IMAGENET256.reference
    with torch.no_grad():
        assert teacher.denoise(torch.randn(2, 4, 4, 4), torch.tensor(1.0), torch.tensor([1, 3])).shape == (2, 4, 4, 4)

