"""Training: the LightningModule, DataModules and callbacks (DESIGN.md section 1, layer 5)."""
