"""raydf: Ray-based distributed feature extraction, training and tuning for video deepfake detection."""

__version__ = "0.1.0"
