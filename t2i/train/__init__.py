"""Fine-tuning an SD 1.x UNet (a peft LoRA or the whole UNet) under accelerate, with exact resume."""
