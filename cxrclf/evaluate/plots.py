"""Evaluation figures as PNG files of fixed pixel size (no tight bounding box)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrclf.evaluate.result import Metrics

FIGSIZE = (6.0, 5.0)  # inches
DPI = 100             # -> 600 x 500 pixels


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    temporary = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(temporary, dpi=DPI)
    _pyplot().close(fig)
    temporary.replace(path)
    return path


def roc_curve_points(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-score, kind="mergesort")
    positive, score = positive[order], score[order]
    distinct = np.r_[np.nonzero(np.diff(score))[0], len(score) - 1]
    tps, fps = np.cumsum(positive)[distinct], np.cumsum(~positive)[distinct]
    tpr = np.r_[0, tps / max(positive.sum(), 1)]
    fpr = np.r_[0, fps / max((~positive).sum(), 1)]
    return fpr, tpr


def confusion_matrix_png(path: Path, matrix: list[list[int]], class_names: list[str]) -> Path:
    plt = _pyplot()
    matrix = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=FIGSIZE)
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", color="white" if value > matrix.max() / 2 else "black")
    ax.set_xticks(range(len(class_names)), class_names, rotation=30, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix")
    fig.subplots_adjust(left=0.25, bottom=0.25)
    return _save(fig, path)


# Curves that coincide (every perfect curve runs up the left edge and along the top) must stay
# visible: each class gets its own dash pattern and marker, and the earlier ones are drawn
# wider, so a curve lying on another shows as a stripe inside it.
ROC_STYLES = (("-", "o"), ((0, (5, 2)), "s"), ((0, (1, 1.5)), "^"), ((0, (6, 2, 1, 2)), "D"), ((0, (3, 3)), "v"), ((0, (1, 3)), "P"))


def roc_png(path: Path, labels: np.ndarray, probabilities: np.ndarray, class_names: list[str], per_class_auc: list[float]) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1, label="chance")
    drawn = [c for c in range(len(class_names)) if (labels == c).any() and (labels != c).any()]
    curves = {c: roc_curve_points(labels == c, probabilities[:, c]) for c in drawn}
    same: dict[bytes, list[str]] = {}
    for c, (fpr, tpr) in curves.items():
        same.setdefault(np.stack([fpr, tpr]).tobytes(), []).append(class_names[c])
    coinciding = [names for names in same.values() if len(names) > 1]
    if coinciding:
        ax.text(0.98, 0.35, "\n".join("on one curve: " + ", ".join(names) for names in coinciding), transform=ax.transAxes,
                ha="right", va="bottom", fontsize=8, color="0.3", bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85})
    for order, c in enumerate(drawn):
        fpr, tpr = curves[c]
        linestyle, marker = ROC_STYLES[c % len(ROC_STYLES)]
        width = 1.5 + 1.5 * (len(drawn) - 1 - order)
        ax.plot(fpr, tpr, color=f"C{c}", linestyle=linestyle, linewidth=width, marker=marker, markersize=4 + width,
                markevery=(0.04 * order, 0.25), fillstyle="none", markeredgewidth=1.5, label=f"{class_names[c]} (AUC {per_class_auc[c]:.3f})")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title("ROC, one class against the rest")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def reliability_png(path: Path, bins: list[dict], ece: float) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    filled = [b for b in bins if b["count"]]
    ax.bar([b["low"] for b in filled], [b["accuracy"] for b in filled], width=[b["high"] - b["low"] for b in filled], align="edge", edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], color="0.5", linestyle="--", label="perfect calibration")
    ax.set_xlabel("confidence (top-label probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability (ECE {ece:.3f})")
    ax.legend(loc="upper left")
    return _save(fig, path)


def training_curves_png(path: Path, history: pd.DataFrame) -> Path:
    plt = _pyplot()
    fig, (loss_ax, auc_ax) = plt.subplots(1, 2, figsize=FIGSIZE)
    loss_ax.plot(history["epoch"], history["train_loss"], label="train")
    loss_ax.plot(history["epoch"], history["val_loss"], label="val")
    loss_ax.set_title("loss")
    loss_ax.set_xlabel("epoch")
    loss_ax.legend()
    auc_ax.plot(history["epoch"], pd.to_numeric(history["val_auc"], errors="coerce"), color="C2")
    auc_ax.set_title("validation AUC")
    auc_ax.set_xlabel("epoch")
    fig.subplots_adjust(wspace=0.35)
    return _save(fig, path)


def write_all(folder: Path, predictions: pd.DataFrame, class_names: list[str], measured: Metrics, metrics_csv: Path) -> dict[str, str]:
    """The report's figures in ``folder``, by title: confusion matrix, ROC, reliability and (where the run logged them) training curves."""
    labels = np.array([class_names.index(c) for c in predictions["label"]])
    probabilities = predictions[[f"prob_{c}" for c in class_names]].to_numpy(dtype=float)
    overall = measured.overall
    figures = {
        "confusion matrix": confusion_matrix_png(folder / "confusion_matrix.png", overall["confusion_matrix"], class_names).name,
        "ROC": roc_png(folder / "roc.png", labels, probabilities, class_names, [m["auc"] for m in overall["per_class"]]).name,
        "reliability": reliability_png(folder / "reliability.png", measured.calibration.bins, measured.calibration.ece).name,
    }
    if Path(metrics_csv).is_file():
        figures["training curves"] = training_curves_png(folder / "training_curves.png", pd.read_csv(metrics_csv)).name
    return figures
