"""Tiny random-init text-to-image pipelines (SD 1.x, SDXL, SD3, Flux) saved as real diffusers
folders, shaped like the small configurations diffusers' own pipeline tests use (one or two
layers, widths of 8-32), with tokenizers built here because the hub is out of reach."""

from __future__ import annotations

import string
from pathlib import Path

import torch
from diffusers import AutoencoderKL

CHARS = list(string.ascii_lowercase + string.digits + string.punctuation)


def tiny_tokenizer(max_length=16):
    """A character-level CLIP tokenizer (no merges), enough to tell prompts apart."""
    from transformers import CLIPTokenizer

    vocab = {c: i for i, c in enumerate(CHARS + [c + "</w>" for c in CHARS] + ["<|startoftext|>", "<|endoftext|>"])}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    tokenizer.model_max_length = max_length
    return tokenizer


def tiny_text_config(tokenizer, hidden_size=16, **extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=len(tokenizer.get_vocab()), hidden_size=hidden_size, intermediate_size=32,
                          num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, **extra)


def tiny_t5():
    """A character-level T5 tokenizer (a unigram model built in memory) and a 2-layer T5 encoder."""
    import tokenizers
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)] + [(c, -1.0) for c in CHARS]
    model = tokenizers.Tokenizer(tokenizers.models.Unigram(pieces, unk_id=2))
    model.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace()
    model.decoder = tokenizers.decoders.Metaspace()
    tokenizer = T5TokenizerFast(tokenizer_object=model, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0)
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return tokenizer, T5EncoderModel(config)


def tiny_vae(latent_channels=4, **extra) -> AutoencoderKL:
    torch.manual_seed(1)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8),
                         latent_channels=latent_channels, norm_num_groups=4, sample_size=16, **extra)


def save_sdxl(folder: Path) -> Path:
    """SDXL: a text-time UNet (cross attention on both encoders' 32 + 32 features, added pooled text
    and six size ids) on SDXL's scaled-linear betas with its Euler scheduler."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = tiny_tokenizer()
    torch.manual_seed(5)
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                                use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
                                transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
                                cross_attention_dim=64, norm_num_groups=4)
    encoders = [CLIPTextModel(tiny_text_config(tokenizer, 32)),
                CLIPTextModelWithProjection(tiny_text_config(tokenizer, 32, projection_dim=32))]
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                                       timestep_spacing="leading")
    StableDiffusionXLPipeline(vae=tiny_vae(), text_encoder=encoders[0], text_encoder_2=encoders[1], tokenizer=tokenizer,
                              tokenizer_2=tokenizer, unet=unet, scheduler=scheduler).save_pretrained(folder)
    return folder


def save_sd3(folder: Path) -> Path:
    """SD3: an MMDiT on CLIP-L + CLIP-G + T5 states, 16 latent channels, flow matching with shift 3."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    tokenizer = tiny_tokenizer()
    t5_tokenizer, t5 = tiny_t5()
    torch.manual_seed(6)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=16, out_channels=16, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                        joint_attention_dim=32, pooled_projection_dim=64)
    encoders = [CLIPTextModelWithProjection(tiny_text_config(tokenizer, 32, projection_dim=32)) for _ in range(2)]
    StableDiffusion3Pipeline(transformer=transformer, vae=tiny_vae(16, shift_factor=0.0609, scaling_factor=1.5035),
                             text_encoder=encoders[0], tokenizer=tokenizer, text_encoder_2=encoders[1],
                             tokenizer_2=tokenizer, text_encoder_3=t5, tokenizer_3=t5_tokenizer,
                             scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0)).save_pretrained(folder)
    return folder


def save_flux(folder: Path, guidance_embeds: bool = True) -> Path:
    """Flux: an MMDiT with single-stream blocks on 2x2-packed 16-channel latents, a guidance
    embedding (FLUX.1-dev) or none (schnell), flow matching with Flux's dynamic shift."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    tokenizer = tiny_tokenizer()
    t5_tokenizer, t5 = tiny_t5()
    torch.manual_seed(7)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=guidance_embeds)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    FluxPipeline(transformer=transformer, vae=tiny_vae(16, shift_factor=0.0609, scaling_factor=1.5035),
                 text_encoder=CLIPTextModel(tiny_text_config(tokenizer, 32, projection_dim=32)), tokenizer=tokenizer,
                 text_encoder_2=t5, tokenizer_2=t5_tokenizer, scheduler=scheduler).save_pretrained(folder)
    return folder
