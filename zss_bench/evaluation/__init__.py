"""Evaluator stage: turn predictions + ground truth into one confusion matrix and a score."""

from zss_bench.evaluation.pred_dir import DirectoryEvaluation, EvaluationInputError, evaluate_directories
from zss_bench.evaluation.scoring import score

__all__ = ["DirectoryEvaluation", "EvaluationInputError", "evaluate_directories", "score"]
