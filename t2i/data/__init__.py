"""Training data: captioned image collections as users have them, the draws the trainer eats, the latent cache."""
