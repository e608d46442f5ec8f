"""What the stages share of learning: the VAE, models built from the data's shape, the resumable
training run, image and success metrics."""
