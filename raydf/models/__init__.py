"""Plain PyTorch models (no Ray, no MLflow): content (slow_r50), style (pSp encoder), fusion classifier."""
