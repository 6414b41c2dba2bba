"""EchoMimicV3 training on accelerate: preprocessing cache, SFT with phase-specific modality drop,
Diffusion-DPO alternated with SFT, optional LoRA. See docs/TRAINING.md."""
