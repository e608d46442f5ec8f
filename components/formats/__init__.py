"""Our files and configs: params.yaml, datasets, latents, the policy bundle, plots; atomic writes."""
