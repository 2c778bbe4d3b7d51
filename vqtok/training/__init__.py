"""Training with Lightning: the tokenizer and decoder LightningModules, the tokenizer's
objectives, the DataModules, the callbacks (checkpoints, weight average, codebook history),
the shared optimiser helper and the one LightningCLI base (docs/architecture.md). The only
layer besides the apps that imports Lightning."""
