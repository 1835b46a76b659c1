"""Deployment: exported models (ONNX, torch.export) that run without this package's model code, and a
web app (`cast-video serve`). See docs/DEPLOY.md."""
