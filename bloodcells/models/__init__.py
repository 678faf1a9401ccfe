"""Models: timm backbones (with offline weights), heads, losses and the LightningModule."""
