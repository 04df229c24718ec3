"""The trained model in MLflow: a pyfunc that loads the bundle's weights only, never a pickle.

MLflow's default ``pytorch`` flavour pickles the whole module, so whoever serves the model
unpickles code. raydf logs the model as a *models-from-code* pyfunc instead: the model
directory holds a short Python file (written by raydf, importing :class:`FusionPyfunc`),
the bundle file as an artifact (read with ``torch.load(weights_only=True)``), and
requirements that pin ``raydf==<this version>`` and ``torch``. Loading it runs no pickle.

Input: one float32 array (B, K*2048 + T*512 + T) -- content, style and the validity mask,
flattened and concatenated (:func:`pack`); output: (B,) fake probabilities.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from raydf import schema as S
from raydf.bundle import BUNDLE_ARTIFACT_DIR, ModelBundle

log = logging.getLogger(__name__)

__all__ = ["MODEL_NAME", "FusionPyfunc", "pack", "unpack", "log_model"]

MODEL_NAME = "model"  # the logged model's name in its run
_BUNDLE_KEY = "bundle"
_CODE = """\
# Written by raydf: the MLflow model of a raydf fusion classifier (models from code, no pickle).
from mlflow.models import set_model

from raydf.mlflow_model import FusionPyfunc

set_model(FusionPyfunc())
"""


def pack(content: np.ndarray, style: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(B, K, 2048), (B, T, 512), (B, T) -> (B, K*2048 + T*512 + T) float32."""
    b = content.shape[0]
    parts = [content.reshape(b, -1), style.reshape(b, -1), valid.reshape(b, -1).astype(np.float32)]
    return np.concatenate(parts, axis=1).astype(np.float32, copy=False)


def unpack(packed: np.ndarray, num_frames: int, num_clips: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of :func:`pack`: content (B, K, 2048), style (B, T, 512), valid (B, T) bool.

    Raises:
        ValueError: the width does not match T and K.
    """
    packed = np.asarray(packed, np.float32)
    b = packed.shape[0]
    c_end = num_clips * S.CONTENT_DIM
    s_end = c_end + num_frames * S.STYLE_DIM
    if packed.ndim != 2 or packed.shape[1] != s_end + num_frames:
        raise ValueError(f"expected (B, {s_end + num_frames}) packed features for T={num_frames}, K={num_clips}; got {packed.shape}")
    content = packed[:, :c_end].reshape(b, num_clips, S.CONTENT_DIM)
    style = packed[:, c_end:s_end].reshape(b, num_frames, S.STYLE_DIM)
    return content, style, packed[:, s_end:] > 0.5


try:  # a base class only where MLflow is installed (it always is with raydf; kept importable without)
    from mlflow.pyfunc import PythonModel as _PythonModel
except ImportError:  # pragma: no cover
    _PythonModel = object


class FusionPyfunc(_PythonModel):
    """MLflow pyfunc of a raydf bundle: packed features in, fake probabilities out."""

    def load_context(self, context: Any) -> None:
        self.bundle = ModelBundle.load(context.artifacts[_BUNDLE_KEY])
        self.model = self.bundle.model()

    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        """(B, K*2048 + T*512 + T) packed features -> (B,) fake probabilities.

        ``np.ndarray`` is a hint MLflow takes without inferring a schema (the logged signature fixes it).
        """
        import torch

        arr = model_input.to_numpy() if hasattr(model_input, "to_numpy") else np.asarray(model_input)
        content, style, valid = unpack(arr, self.bundle.num_frames, self.bundle.num_clips)
        with torch.inference_mode():
            logits = self.model(torch.from_numpy(content.copy()), torch.from_numpy(style.copy()), torch.from_numpy(valid.copy()))
            return torch.sigmoid(logits).numpy()


def log_model(bundle: ModelBundle, bundle_path: Path, out_dir: Path) -> None:
    """Log the bundle to the active MLflow run: as a plain artifact (``bundle/raydf_model.pt``, which
    ``raydf detect`` reads without MLflow) and as the pyfunc model ``model`` (no pickle)."""
    import mlflow
    import torch

    mlflow.log_artifact(str(bundle_path), BUNDLE_ARTIFACT_DIR)
    code = out_dir / "raydf_mlflow_model.py"
    code.write_text(_CODE)
    t, k = bundle.num_frames, bundle.num_clips
    example = pack(np.zeros((1, k, S.CONTENT_DIM), np.float32), np.zeros((1, t, S.STYLE_DIM), np.float32), np.ones((1, t), bool))
    model = bundle.model()
    with torch.inference_mode():
        content, style, valid = unpack(example, t, k)
        out = torch.sigmoid(model(torch.from_numpy(content.copy()), torch.from_numpy(style.copy()), torch.from_numpy(valid))).numpy()
    from mlflow.models import infer_signature

    import raydf

    mlflow.pyfunc.log_model(
        name=MODEL_NAME,
        python_model=str(code),
        artifacts={_BUNDLE_KEY: str(bundle_path)},
        signature=infer_signature(example, out),
        input_example=example,
        pip_requirements=[f"raydf=={raydf.__version__}", f"torch=={torch.__version__.split('+')[0]}"],
    )
